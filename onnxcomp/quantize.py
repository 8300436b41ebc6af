"""Magnitude pruning and 1-D k-means weight sharing, optionally importance-weighted.

One sort per tensor serves every (sparsity, bits) candidate: Lloyd iterations on sorted data need
only prefix sums (O(K log n) per iteration), so the allocator can price dozens of candidates per
layer cheaply, even for embedding tables with millions of entries.

Importance (optional, same shape as the weight) weights each entry's squared error: with the
mean squared input activation of the entry's input feature it turns squared weight error into
the expected squared output error of the layer (the diagonal approximation used by Optimal Brain
Damage). Pruning then removes the entries with the smallest saliency importance * w**2, which
for uniform importance is plain magnitude pruning (Han et al. 2015).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

logger = logging.getLogger(__name__)

KMEANS_ITERATIONS = 30


@dataclasses.dataclass(frozen=True)
class Quantization:
    """How one tensor is pruned and clustered, and what that costs in (weighted) squared error."""

    saliency_threshold: float  # entries with importance * w**2 < threshold -> exact zero
    codebook: np.ndarray  # float32 non-zero cluster centres, sorted
    sse: float
    nonzeros: int


class SortedWeights:
    """A weight tensor sorted once, with importance-weighted prefix sums per sparsity level."""

    def __init__(self, values: np.ndarray, importance: np.ndarray | None = None):
        flat = np.asarray(values, dtype=np.float32).ravel()
        self.size = flat.size
        order = np.argsort(flat, kind="stable")
        self.sorted = flat[order].astype(np.float64)
        if importance is None:
            self.importance = np.ones(self.size)
        else:
            self.importance = np.broadcast_to(np.asarray(importance, np.float64), np.shape(values)).ravel()[order]
            self.importance = np.maximum(self.importance, 1e-12 * max(float(self.importance.max()), 1e-30))
        self.saliency = self.importance * self.sorted * self.sorted
        self.energy = float(self.saliency.sum())
        self._sorted_saliency = np.sort(self.saliency)
        self._cache: dict[float, tuple] = {}

    def saliency_threshold(self, sparsity: float) -> float:
        """Entries with saliency below this are pruned (exact zeros always are)."""
        count = int(round(sparsity * self.size))
        if count <= 0:
            return float(np.nextafter(0.0, 1.0))
        if count >= self.size:
            return float(self._sorted_saliency[-1]) * 2 + 1.0
        return float(np.nextafter(self._sorted_saliency[count - 1], np.inf))

    def _prefix(self, threshold: float):
        cached = self._cache.get(threshold)
        if cached is None:
            keep = self.saliency >= threshold
            weight = np.where(keep, self.importance, 0.0)
            survivors = self.sorted[keep]
            negative = survivors[survivors < 0]
            positive = survivors[survivors > 0]
            bounds = (
                (float(survivors[0]), float(survivors[-1])) if survivors.size else (0.0, 0.0),
                float(negative[-1]) if negative.size else None,
                float(positive[0]) if positive.size else None,
                float(np.sum(self.saliency[~keep])),
            )
            cached = (
                bounds,
                keep,
                np.concatenate([[0.0], np.cumsum(keep)]),
                np.concatenate([[0.0], np.cumsum(weight)]),
                np.concatenate([[0.0], np.cumsum(weight * self.sorted)]),
                np.concatenate([[0.0], np.cumsum(weight * self.sorted * self.sorted)]),
            )
            self._cache = {threshold: cached}  # one level at a time keeps memory flat
        return cached

    def quantize(self, sparsity: float, clusters: int) -> Quantization:
        """Prune the `sparsity` fraction of least salient entries, k-means the rest into `clusters`."""
        threshold = self.saliency_threshold(sparsity)
        bounds, keep, count_prefix, w_prefix, wx_prefix, wxx_prefix = self._prefix(threshold)
        nonzeros = int(count_prefix[-1])
        if nonzeros == 0:
            return Quantization(threshold, np.zeros(0, np.float32), self.energy, 0)
        (low, high), gap_low, gap_high, pruned_sse = bounds
        k = max(1, min(clusters, nonzeros))
        # Linear initialisation over the surviving range (Han et al. 2016 found it best: it keeps
        # centres on the rare large weights that matter most), skipping the pruned gap.
        centres = _linear_init(low, high, k, gap_low, gap_high)
        for _ in range(KMEANS_ITERATIONS):
            a, b = self._cluster_ranges(centres)
            weights = w_prefix[b] - w_prefix[a]
            sums = wx_prefix[b] - wx_prefix[a]
            counts = count_prefix[b] - count_prefix[a]
            filled = (counts > 0) & (weights > 0)
            updated = centres.copy()
            updated[filled] = sums[filled] / weights[filled]
            updated = np.sort(updated)
            converged = bool(np.max(np.abs(updated - centres)) <= 1e-12)
            centres = updated
            if converged:
                break
        a, b = self._cluster_ranges(centres)
        counts = count_prefix[b] - count_prefix[a]
        weights = w_prefix[b] - w_prefix[a]
        sums = wx_prefix[b] - wx_prefix[a]
        sums2 = wxx_prefix[b] - wxx_prefix[a]
        centres32 = centres.astype(np.float32).astype(np.float64)
        sse = float(np.sum(sums2 - 2 * centres32 * sums + weights * centres32 * centres32))
        codebook = np.unique(centres[counts > 0].astype(np.float32))
        return Quantization(threshold, codebook, max(sse, 0.0) + pruned_sse, nonzeros)

    def _cluster_ranges(self, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bounds = (centres[1:] + centres[:-1]) / 2
        cuts = np.searchsorted(self.sorted, bounds, side="left")
        return np.concatenate([[0], cuts]), np.concatenate([cuts, [self.size]])


def prune_mask(values: np.ndarray, importance: np.ndarray | None, saliency_threshold: float) -> np.ndarray:
    """Boolean keep-mask (same shape as values): saliency >= threshold and not already zero."""
    values = np.asarray(values, dtype=np.float64)
    weight = np.ones_like(values) if importance is None else np.broadcast_to(importance, values.shape)
    weight = np.maximum(weight, 1e-12 * max(float(np.max(weight)), 1e-30))
    return (weight * values * values >= saliency_threshold) & (values != 0)


def apply_quantization(values: np.ndarray, quant: Quantization, importance: np.ndarray | None = None) -> np.ndarray:
    """Prune by saliency, then snap every kept weight to its nearest codebook centre."""
    values = np.asarray(values, dtype=np.float32)
    result = snap_to_codebook(values, quant.codebook)
    result[~prune_mask(values, importance, quant.saliency_threshold)] = 0.0
    return result


def snap_to_codebook(values: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Nearest-centre assignment for a sorted 1-D codebook."""
    values = np.asarray(values, dtype=np.float32)
    if codebook.size == 0:
        return np.zeros_like(values)
    if codebook.size == 1:
        return np.full_like(values, codebook[0])
    bounds = (codebook[1:].astype(np.float64) + codebook[:-1]) / 2
    index = np.searchsorted(bounds, values.astype(np.float64), side="left")
    return codebook[index].astype(np.float32)


def _linear_init(low: float, high: float, k: int, gap_low: float | None, gap_high: float | None) -> np.ndarray:
    """Linearly spaced centres over [low, high], skipping the pruned gap (gap_low, gap_high)."""
    if gap_low is None or gap_high is None or k < 2 or gap_high - gap_low <= 0:
        return np.linspace(low, high, k)
    negative_span = gap_low - low
    positive_span = high - gap_high
    negative = int(round(k * negative_span / max(negative_span + positive_span, 1e-30)))
    negative = min(max(negative, 1), k - 1)
    return np.concatenate([np.linspace(low, gap_low, negative), np.linspace(gap_high, high, k - negative)])
