"""Byte-budget allocation: per-layer sparsity, bit-width and encoding under a size target.

Each layer gets a list of candidate settings priced by the real encoder's byte model and by
the squared error they cause (relative to the layer's energy, scaled by the layer's measured
sensitivity). A Lagrangian relaxation picks, for a multiplier lambda, each layer's setting that
minimises distortion + lambda * bytes; bisection on lambda meets the budget, and a greedy
knapsack step then spends the slack the convex hull leaves on the best distortion-per-byte
upgrades.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from onnxcomp import encoding
from onnxcomp.quantize import Quantization, SortedWeights, grouped_quantize, prune_mask

logger = logging.getLogger(__name__)

SPARSITIES = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
BITS = (1, 2, 3, 4, 5, 6, 7, 8)
# Grouped lookup (one codebook per group of rows or columns) is priced for big weights only, where
# rows or columns of different scales make one codebook too coarse and G codebooks cost little.
GROUPED_MIN_PARAMS = 65536
GROUPED_BITS = (2, 3, 4, 5, 6)


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One way to store one weight: dense, or pruned + clustered + encoded."""

    kind: str  # dense | lookup | sparse | grouped
    bytes: int
    distortion: float  # squared error / weight energy
    sparsity: float = 0.0
    bits: int = 32
    quant: Quantization | None = None


@dataclasses.dataclass
class LayerOptions:
    name: str
    shape: tuple[int, ...]
    role: str
    candidates: list[Candidate]  # Pareto front, ascending bytes, descending distortion
    sensitivity: float = 1.0
    importance: np.ndarray | None = None

    @property
    def dense(self) -> Candidate:
        return self.candidates[-1]

    @property
    def smallest(self) -> Candidate:
        return self.candidates[0]


def layer_options(name: str, values: np.ndarray, role: str, importance: np.ndarray | None = None,
                  keep_zeros: bool = False, grouped: bool = True) -> LayerOptions:
    """Price every (sparsity, bits) setting of one weight; keep the Pareto front.

    `importance` (broadcastable to the weight) weights squared errors, e.g. the mean squared
    input activation per input feature; None means plain squared error. `keep_zeros` prices
    only the weight's own zero pattern (no further pruning), for weights retrained with a mask.
    `grouped` adds grouped-lookup candidates (one codebook per group of rows or of columns, no
    pruning: zeros are clustered like any value) for weights of at least GROUPED_MIN_PARAMS entries.
    """
    values = np.asarray(values, dtype=np.float32)
    rank = values.ndim
    count = values.size
    sorted_weights = SortedWeights(values, importance)
    energy = max(sorted_weights.energy, 1e-30)
    dense = Candidate("dense", encoding.dense_bytes(count, rank), 0.0)
    candidates = [dense]
    sparsities = SPARSITIES if role != "bias" else (0.0,)
    if keep_zeros:
        sparsities = (float(np.mean(values == 0)),)
    for sparsity in sparsities:
        threshold = sorted_weights.saliency_threshold(sparsity)
        positions = None
        for bits in BITS:
            quant = sorted_weights.quantize(sparsity, 1 << bits)
            has_zero = quant.nonzeros < count
            if has_zero and bits > 1:
                quant = sorted_weights.quantize(sparsity, (1 << bits) - 1)
            distortion = quant.sse / energy
            table = quant.codebook.size + (1 if has_zero else 0)
            best = Candidate("lookup", encoding.lookup_bytes(count, encoding.bits_for(table), table, rank),
                             distortion, sparsity, encoding.bits_for(table), quant)
            if has_zero and sparsity >= 0.3:
                if positions is None:
                    positions = encoding.gap_histogram(np.flatnonzero(prune_mask(values, importance, threshold).ravel()))
                price = encoding.price_sparse(positions, quant.codebook.size, rank)
                if price is not None and price.bytes < best.bytes:
                    best = Candidate("sparse", price.bytes, distortion, sparsity, price.value_bits, quant)
            candidates.append(best)
    if grouped and not keep_zeros and role != "bias" and count >= GROUPED_MIN_PARAMS and np.isfinite(values).all():
        candidates.extend(grouped_candidates(values, importance, energy))
    return LayerOptions(name, tuple(values.shape), role, pareto(candidates), importance=importance)


def grouped_candidates(values: np.ndarray, importance: np.ndarray | None, energy: float) -> list[Candidate]:
    """Grouped-lookup candidates: k-means per group of rows, then of columns, at GROUPED_BITS."""
    candidates = []
    for axis in (0, 1):
        for groups in encoding.group_counts(values.shape, axis):
            quants = grouped_quantize(values, importance, groups, tuple(1 << bits for bits in GROUPED_BITS), axis)
            offsets = groups if axis == 0 else values.shape[-1]
            for bits, quant in zip(GROUPED_BITS, quants):
                price = encoding.grouped_lookup_bytes(values.size, bits, groups, 1 << bits, values.ndim, offsets)
                candidates.append(Candidate("grouped", price, quant.sse / energy, 0.0, bits, quant))
    return candidates


def pareto(candidates: list[Candidate]) -> list[Candidate]:
    """Keep candidates not beaten on both bytes and distortion; ascending bytes."""
    front: list[Candidate] = []
    for candidate in sorted(candidates, key=lambda c: (c.bytes, c.distortion)):
        if not front or candidate.distortion < front[-1].distortion:
            front.append(candidate)
    return front


@dataclasses.dataclass
class Allocation:
    choices: dict[str, Candidate]
    estimated_bytes: int
    distortion: float


def _pick(layers: list[LayerOptions], lam: float) -> list[Candidate]:
    return [min(layer.candidates, key=lambda c: layer.sensitivity * c.distortion + lam * c.bytes) for layer in layers]


def allocate(layers: list[LayerOptions], budget: int) -> Allocation | None:
    """Choose one candidate per layer minimising weighted distortion with total bytes <= budget.

    Returns None when even the smallest candidates exceed the budget.
    """
    if not layers:
        return Allocation({}, 0, 0.0)
    minimum = sum(layer.smallest.bytes for layer in layers)
    if minimum > budget:
        return None
    picks = _pick(layers, 0.0)
    if sum(c.bytes for c in picks) > budget:
        low, high = 0.0, 1.0
        while sum(c.bytes for c in _pick(layers, high)) > budget:
            high *= 4
            if high > 1e30:
                picks = [layer.smallest for layer in layers]
                break
        else:
            for _ in range(60):
                middle = (low + high) / 2
                if sum(c.bytes for c in _pick(layers, middle)) > budget:
                    low = middle
                else:
                    high = middle
            picks = _pick(layers, high)
    picks = _spend_slack(layers, picks, budget)
    total = sum(c.bytes for c in picks)
    distortion = sum(layer.sensitivity * c.distortion for layer, c in zip(layers, picks))
    return Allocation({layer.name: c for layer, c in zip(layers, picks)}, total, distortion)


def _spend_slack(layers: list[LayerOptions], picks: list[Candidate], budget: int) -> list[Candidate]:
    """Greedy knapsack: take the upgrade with the best distortion saved per byte that still fits."""
    picks = list(picks)
    slack = budget - sum(c.bytes for c in picks)
    while slack > 0:
        best = None
        for index, (layer, current) in enumerate(zip(layers, picks)):
            for candidate in layer.candidates:
                extra = candidate.bytes - current.bytes
                gain = layer.sensitivity * (current.distortion - candidate.distortion)
                if 0 < extra <= slack and gain > 0:
                    score = gain / extra
                    if best is None or score > best[0]:
                        best = (score, index, candidate)
        if best is None:
            break
        _, index, candidate = best
        slack -= candidate.bytes - picks[index].bytes
        picks[index] = candidate
    return picks
