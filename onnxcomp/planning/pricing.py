"""Pricing one weight's storage options: every (sparsity, bits, encoding) setting the encoder can
write, priced by its byte model and by the squared error it causes (relative to the weight's
energy); `layer_options` keeps the Pareto front that `onnxcomp.planning.allocate` chooses from.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from onnxcomp.encodings import encoding, row_lookup
from onnxcomp.encodings.channel_scales import ChannelMeasure, ChannelScales, channel_scales, int8_reference, scale_axes, scale_bytes
from onnxcomp.encodings.outliers import OUTLIER_MIN_PARAMS, price as outlier_prices
from onnxcomp.encodings.quantize import (Quantization, SortedWeights, apply_quantization, grouped_quantize, prune_mask,
                               snap_to_codebook, vector_quantize)
from onnxcomp.encodings.quantize import PRICE_SAMPLE, PRICE_SAMPLE_ABOVE

logger = logging.getLogger(__name__)

SPARSITIES = (0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)
BITS = (1, 2, 3, 4, 5, 6, 7, 8)
# Grouped lookup (one codebook per group of rows or columns) is priced for big weights only, where
# rows or columns of different scales make one codebook too coarse and G codebooks cost little.
GROUPED_MIN_PARAMS = 65536
GROUPED_BITS = (2, 3, 4, 5, 6)
# Vector lookup (one code per `dim` consecutive entries) for the same big weights: (dim, codebook
# sizes), i.e. 2.5-4 bits per weight in pairs, 1-2 in fours, 1 in eights. Not for embedding
# tables: their rows are read one at a time (and usually normalised), so what matters is each
# row's error relative to its own scale, which per-row grouped codebooks keep and squared error
# over the whole table does not see.
VECTOR_SHAPES = ((2, (32, 64, 128, 256)), (4, (16, 64, 256)), (8, (256,)))
# Per-channel-scaled lookups (kind "scaled", onnxcomp.encodings.channel_scales) at these code widths, and
# the symmetric uniform grid of per-channel int8 (255 levels).
SCALED_BITS = (3, 4, 5, 6, 7, 8)
# ...and symmetric uniform grids at these widths (8: the 255 levels of per-channel int8). 9-12 bits
# serve budgets over 8 bits a weight; no 11: it packs like 12 (five codes to a 64-bit word).
UNIFORM_BITS_SCALED = (4, 5, 6, 7, 8, 9, 10, 12)
# The int8 guard (see `allocate`) applies to weights of at least this many entries (smaller ones
# cost little to keep near-exact, and the allocator's squared error already prices them).
GUARD_MIN_PARAMS = 16


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One way to store one weight: dense, or pruned + clustered + encoded."""

    kind: str  # dense | lookup | sparse | grouped | vector
    bytes: int
    distortion: float  # squared error / weight energy
    sparsity: float = 0.0
    bits: int = 32
    quant: Quantization | None = None
    load: int = 0  # estimated ns ONNX Runtime spends decoding it at session creation (encoding.fold_cost)
    # kind "scaled": the weight is divided by these per-channel scales before `quant` codes it
    scales: ChannelScales | None = dataclasses.field(default=None, compare=False)
    channel: float = 0.0  # channel_scales.channel_distortion (mean per-channel relative error)


@dataclasses.dataclass
class LayerOptions:
    name: str
    shape: tuple[int, ...]
    role: str
    candidates: list[Candidate]  # Pareto front, ascending bytes, descending distortion
    sensitivity: float = 1.0
    importance: np.ndarray | None = None
    itemsize: int = 4  # bytes per value of the weight's own type (float16: 2, int8: 1)
    int8_channel: float | None = None  # channel distortion of per-channel int8 (None: no guard)
    channel_objective: bool = False  # charge max(distortion, channel) (`channel_aware`)

    def cost(self, candidate: Candidate) -> float:
        """The weighted distortion the allocator minimises for `candidate`."""
        error = max(candidate.distortion, candidate.channel) if self.channel_objective else candidate.distortion
        return self.sensitivity * error

    @property
    def dense(self) -> Candidate:
        return self.candidates[-1]

    @property
    def smallest(self) -> Candidate:
        return self.candidates[0]


def layer_options(name: str, values: np.ndarray, role: str, importance: np.ndarray | None = None,
                  keep_zeros: bool = False, grouped: bool = True, itemsize: int = 4,
                  restore_bytes: int = 0, outliers: bool = False) -> LayerOptions:
    """Price every (sparsity, bits) setting of one weight; keep the Pareto front.

    `importance` (broadcastable to the weight) weights squared errors, e.g. the mean squared
    input activation per input feature; None means plain squared error. `keep_zeros` prices
    only the weight's own zero pattern (no further pruning), for weights retrained with a mask.
    `grouped` adds grouped-lookup candidates (one codebook per group of rows or of columns, no
    pruning: zeros are clustered like any value) and, for matrix weights (not embedding
    tables), vector-lookup candidates (VECTOR_SHAPES) for weights of at least
    GROUPED_MIN_PARAMS entries. `itemsize` prices the dense weight in its own type (2 bytes per
    float16 value, 1 per int8); `restore_bytes` is added to every encoded candidate (the decode's
    Add/Cast back to that type, `onnxcomp.model.weights.Storage`). `outliers` adds dense-and-sparse
    candidates (`onnxcomp.encodings.outliers`) for weights of at least OUTLIER_MIN_PARAMS entries.
    """
    values = np.asarray(values, dtype=np.float32)
    rank = values.ndim
    count = values.size
    sorted_weights = SortedWeights(values, importance)
    energy = max(sorted_weights.energy, 1e-30)
    dense = Candidate("dense", encoding.dense_bytes(count, rank, itemsize), 0.0)
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
                             distortion, sparsity, encoding.bits_for(table), quant,
                             encoding.fold_cost("lookup", count, encoding.bits_for(table)))
            if has_zero and sparsity >= 0.3:
                if positions is None:
                    positions = _gap_histogram(values, importance, threshold)
                price = encoding.price_sparse(positions, quant.codebook.size, rank, count)
                if price is not None and price.bytes < best.bytes:
                    best = Candidate("sparse", price.bytes, distortion, sparsity, price.value_bits, quant,
                                     encoding.fold_cost("sparse", count, entries=int(1.05 * quant.nonzeros)))
            candidates.append(best)
    # The sorted copy and its prefix sums take ~60 bytes an entry (8.4M entries: 520 MB); nothing
    # below reads them, and the scaled candidates build their own.
    del sorted_weights
    if grouped and not keep_zeros and role != "bias" and count >= GROUPED_MIN_PARAMS and np.isfinite(values).all():
        candidates.extend(grouped_candidates(values, importance, energy))
        if role == "weight":
            candidates.extend(vector_candidates(values, importance, energy))
    if outliers and not keep_zeros and role == "weight" and count >= OUTLIER_MIN_PARAMS:
        candidates.extend(Candidate("outliers", p.bytes, p.distortion, 0.0, p.bits, p.quant, p.load)
                          for p in outlier_prices(values, importance, energy))
    # Per-channel-scaled candidates keep exact zeros (the zero code), so trained zero patterns
    # (`keep_zeros`) may take them too: a weight retrained towards a scaled projection (ADMM) must
    # find it again (without them LeNet-300-100 at 100x fell from 97.6% held-out to 94.6%).
    # The int8 guard is for untrained weights only.
    scalable = (role == "weight" and itemsize == 4 and not restore_bytes and count >= GUARD_MIN_PARAMS
                and np.isfinite(values).all())
    guarded = scalable and not keep_zeros
    if role == "embedding" and rank == 2 and itemsize == 4 and not restore_bytes:
        candidates = [_row_priced(c, values.shape) for c in candidates]  # other types decode whole at load
    if restore_bytes:
        candidates = [c if c.kind == "dense" else dataclasses.replace(c, bytes=c.bytes + restore_bytes) for c in candidates]
    front = pareto(candidates)
    int8_channel = None
    if scalable:
        # The plain front stays as it is (sensitivity probes and GPTQ discounts pick from it); the
        # scaled candidates form their own front on bytes, distortion, load and channel error.
        channel_error = ChannelErrors(values, importance)
        front = [dataclasses.replace(c, channel=channel_error(c)) for c in front]
        scaled = [dataclasses.replace(c, channel=channel_error(c))
                  for c in scaled_candidates(values, importance, energy) if c.bytes < front[-1].bytes]
        front = sorted(front + pareto(scaled), key=lambda c: (c.bytes, c.distortion, c.load, c.channel))
    if guarded:
        int8_channel = int8_reference(values, importance)
    return LayerOptions(name, tuple(values.shape), role, front, importance=importance, itemsize=itemsize,
                        int8_channel=int8_channel)


def scaled_candidates(values: np.ndarray, importance: np.ndarray | None, energy: float) -> list[Candidate]:
    """Per-channel-scaled lookups (`onnxcomp.encodings.channel_scales`): the weight divided by its per-channel
    max-abs scales along each axis of `scale_axes` (output channels; a kernel's input channels),
    k-means at SCALED_BITS on the normalised values weighted so that their error is the original's, plus symmetric uniform grids at
    UNIFORM_BITS_SCALED (8 bits: per-channel int8). Priced as a lookup of the normalised weight plus the scales and a Mul."""
    candidates = []
    rank, count = values.ndim, values.size
    has_zero = bool(np.any(values == 0))
    for axis in scale_axes(values):
        scales = channel_scales(values, axis)
        normalized = scales.normalize(values)
        spread = scales.importance(values.shape, importance)
        extra = scale_bytes(scales.scales.size, rank, scales.half)
        sorted_weights = SortedWeights(normalized, spread)
        for bits in SCALED_BITS:
            quant = sorted_weights.quantize(0.0, (1 << bits) - (1 if has_zero else 0))
            table = quant.codebook.size + (1 if has_zero else 0)
            table_bits = encoding.bits_for(table)
            candidates.append(Candidate("scaled", encoding.lookup_bytes(count, table_bits, table, rank) + extra,
                                        quant.sse / energy, 0.0, table_bits, quant,
                                        encoding.fold_cost("lookup", count, table_bits) + count, scales))
        for bits in UNIFORM_BITS_SCALED:
            # Symmetric uniform grids (2**bits - 1 levels): decoded arithmetically, no codebook to store,
            # which on small layers saves more bytes than k-means' better levels are worth.
            half = (1 << (bits - 1)) - 1
            grid = (np.arange(-half, half + 1, dtype=np.float32) / half).astype(np.float32)
            sse = _uniform_sse(normalized, spread, half)
            quant = Quantization(float(np.nextafter(0.0, 1.0)), grid, sse, int(np.count_nonzero(values)))
            candidates.append(Candidate("scaled", encoding.lookup_bytes(count, bits, grid.size, rank, uniform=True) + extra,
                                        sse / energy, 0.0, bits, quant, encoding.fold_cost("lookup", count, bits) + count,
                                        scales))
        del sorted_weights, normalized, spread  # one axis's sorted copy at a time, not two
    return candidates


UNIFORM_CHUNK = 1 << 20  # entries rounded at once: a few float64 copies of a slice, not of the weight


def _uniform_sse(normalized: np.ndarray, spread: np.ndarray, half: int) -> float:
    """Squared error of `normalized` (in [-1, 1]) rounded to the grid k / `half`, k = -half..half,
    weighted by `spread` (same shape): arithmetic rounding, not a search over the 2 * half + 1
    levels (4095 at 12 bits)."""
    flat, weights = normalized.reshape(-1), spread.reshape(-1)
    sse = 0.0
    for start in range(0, flat.size, UNIFORM_CHUNK):
        part = flat[start:start + UNIFORM_CHUNK].astype(np.float64)
        error = (np.clip(np.rint(part * half), -half, half) / half).astype(np.float32) - part
        error *= error
        sse += float(np.sum(weights[start:start + UNIFORM_CHUNK] * error))
    return sse


def decoded_values(values: np.ndarray, importance: np.ndarray | None, candidate: Candidate) -> np.ndarray:
    """The weight as `candidate` would decode it (float32 working values)."""
    if candidate.quant is None:
        return np.asarray(values, np.float32)
    if candidate.scales is None:
        return apply_quantization(values, candidate.quant, importance)
    normalized = candidate.scales.normalize(values)
    spread = candidate.scales.importance(np.shape(values), importance)
    return candidate.scales.restore(apply_quantization(normalized, candidate.quant, spread))


class ChannelErrors:
    """Channel errors (`channel_scales.channel_distortion`) of one weight's candidates, the same
    numbers `decoded_values` and `channel_distortion` give. What every candidate's decode needs
    (float64 values, saliencies, sort order; per-channel energies) is computed once per weight,
    and once per set of channel scales for the scaled candidates, not once per candidate."""

    def __init__(self, values: np.ndarray, importance: np.ndarray | None):
        self.values, self.importance = values, importance
        self.measure = ChannelMeasure(values, importance)
        self.plain = _Snapper(values, importance, self.measure.values)
        # The snapper of the latest scaled candidates' scales: candidates come axis by axis, so the
        # previous axis's sorted copy (~30 bytes an entry) goes when the next axis starts.
        self.scaled: tuple[ChannelScales, _Snapper] | None = None

    def __call__(self, candidate: Candidate) -> float:
        quant = candidate.quant
        if quant is None:
            return 0.0
        if quant.vector_dim > 1 or quant.groups > 1 or quant.outlier_threshold is not None or self.values.ndim == 0:
            return self.measure.of(decoded_values(self.values, self.importance, candidate))
        scales = candidate.scales
        if scales is None:
            return self.measure.of(self.plain.decode(quant))
        if self.scaled is None or self.scaled[0] is not scales:  # one axis's candidates share its scales
            self.scaled = (scales, _Snapper(scales.normalize(self.values),
                                            scales.importance(np.shape(self.values), self.importance)))
        return self.measure.of(scales.restore(self.scaled[1].decode(quant)))


class _Snapper:
    """`quantize.apply_quantization` of one tensor with per-tensor codebooks (no groups, vectors or
    outliers), for many codebooks: prune by saliency, snap to the nearest centre by cutting the
    sorted values at the codebook's midpoints (one binary search per centre, not per entry)."""

    def __init__(self, values: np.ndarray, importance: np.ndarray | None, wide: np.ndarray | None = None):
        self.values = np.asarray(values, np.float32)
        self.importance = importance
        self.wide = self.values.astype(np.float64) if wide is None else wide
        self._saliency = self._order = self._sorted = None  # on first use

    def decode(self, quant: Quantization) -> np.ndarray:
        decoded = self._snapped(quant.codebook)
        decoded[~((self._saliencies() >= quant.saliency_threshold) & (self.wide != 0))] = 0.0
        return decoded

    def _saliencies(self) -> np.ndarray:
        if self._saliency is None:  # as `quantize.prune_mask` computes them
            if self.importance is None:
                self._saliency = self.wide * self.wide
            else:
                floor = 1e-12 * max(float(np.max(self.importance)), 1e-30)
                spread = np.broadcast_to(np.asarray(self.importance, np.float64), self.wide.shape)
                self._saliency = np.maximum(spread, floor) * self.wide * self.wide
        return self._saliency

    def _snapped(self, codebook: np.ndarray) -> np.ndarray:
        if codebook.size < 2:
            return snap_to_codebook(self.values, codebook)
        if self._order is None:
            flat = self.wide.reshape(-1)
            self._order = np.argsort(flat, kind="stable")
            self._sorted = flat[self._order]
        bounds = (codebook[1:].astype(np.float64) + codebook[:-1]) / 2
        # snap_to_codebook's code of x counts the bounds below x: the sorted values up to
        # bound j (inclusive) have codes <= j
        cuts = np.searchsorted(self._sorted, bounds, side="right")
        counts = np.diff(np.concatenate(([0], cuts, [self._sorted.size])))
        flat = np.empty(self._sorted.size, np.float32)
        flat[self._order] = np.repeat(codebook, counts).astype(np.float32)
        return flat.reshape(self.values.shape)


def _row_priced(candidate: Candidate, shape: tuple[int, ...]) -> Candidate:
    """An embedding table's lookup as `onnxcomp.encodings.row_lookup` stores it (rows packed one by one and
    decoded per looked-up row at run time); other kinds as they are."""
    quant = candidate.quant
    if quant is None or candidate.kind not in ("lookup", "grouped"):
        return candidate
    if candidate.kind == "lookup":
        entries = quant.codebook.size + (1 if quant.nonzeros < int(np.prod(shape)) else 0)
        price = row_lookup.row_lookup_bytes(shape, candidate.bits, entries)
    else:
        price = row_lookup.row_lookup_bytes(shape, candidate.bits, quant.groups << candidate.bits, quant.groups, quant.group_axis == 1)
    return dataclasses.replace(candidate, bytes=price, load=0)  # decoded per looked-up row at run time


def _gap_histogram(values: np.ndarray, importance: np.ndarray | None, threshold: float):
    """Gaps between kept positions and their counts. Tensors of PRICE_SAMPLE_ABOVE entries or
    more are measured on their leading PRICE_SAMPLE entries (whole rows, so gaps keep their
    layout) with counts scaled to the whole tensor; the saved file corrects any misestimate."""
    if values.size < PRICE_SAMPLE_ABOVE or values.ndim == 0:
        return encoding.gap_histogram(np.flatnonzero(prune_mask(values, importance, threshold).ravel()))
    rows = max(1, PRICE_SAMPLE // max(values.size // values.shape[0], 1))
    part = values[:rows]
    spread = None if importance is None else np.broadcast_to(np.asarray(importance), values.shape)[:rows]
    gaps, counts = encoding.gap_histogram(np.flatnonzero(prune_mask(part, spread, threshold).ravel()))
    return gaps, np.maximum(1, np.round(counts * (values.size / part.size))).astype(np.int64)


def grouped_candidates(values: np.ndarray, importance: np.ndarray | None, energy: float) -> list[Candidate]:
    """Grouped-lookup candidates: k-means per group of rows, then of columns, at GROUPED_BITS."""
    candidates = []
    for axis in (0, 1):
        for groups in encoding.group_counts(values.shape, axis):
            quants = grouped_quantize(values, importance, groups, tuple(1 << bits for bits in GROUPED_BITS), axis)
            columns = None if axis == 0 else values.shape[-1]
            for bits, quant in zip(GROUPED_BITS, quants):
                price = encoding.grouped_lookup_bytes(values.size, bits, groups, 1 << bits, values.ndim, columns)
                candidates.append(Candidate("grouped", price, quant.sse / energy, 0.0, bits, quant,
                                            encoding.fold_cost("grouped", values.size, bits)))
    return candidates


def vector_candidates(values: np.ndarray, importance: np.ndarray | None, energy: float) -> list[Candidate]:
    """Vector-lookup candidates: k-means on runs of `dim` consecutive entries (VECTOR_SHAPES)."""
    candidates = []
    for dim, sizes in VECTOR_SHAPES:
        sizes = tuple(k for k in sizes if values.size % dim == 0 and values.size // dim >= 16 * k)
        if not sizes:
            continue
        for k, quant in zip(sizes, vector_quantize(values, importance, dim, sizes)):
            bits = encoding.bits_for(k)
            price = encoding.vector_lookup_bytes(values.size, dim, bits, k, values.ndim)
            candidates.append(Candidate("vector", price, quant.sse / energy, 0.0, bits, quant,
                                        encoding.fold_cost("vector", values.size, bits, dim=dim, codebook_rows=k)))
    return candidates


def pareto(candidates: list[Candidate]) -> list[Candidate]:
    """Keep candidates not beaten on bytes, distortion, load cost and channel error at once;
    ascending bytes (a candidate only cheaper to load stays, for plans under a load budget; one
    only better per channel stays, for the int8 guard)."""
    front: list[Candidate] = []
    for candidate in sorted(candidates, key=lambda c: (c.bytes, c.distortion, c.load, c.channel)):
        if not any(kept.distortion <= candidate.distortion and kept.load <= candidate.load
                   and kept.channel <= candidate.channel for kept in front):
            front.append(candidate)
    return front
