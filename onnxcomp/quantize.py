"""Magnitude pruning and 1-D k-means weight sharing on sorted weights.

One sort per tensor serves every (sparsity, bits) candidate: magnitude pruning removes a
contiguous band of the sorted values around zero, and Lloyd iterations on sorted data need only
prefix sums (O(K log n) per iteration), so the allocator can price dozens of candidates per layer
cheaply, even for embedding tables with millions of entries.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

logger = logging.getLogger(__name__)

KMEANS_ITERATIONS = 30


@dataclasses.dataclass(frozen=True)
class Quantization:
    """How one tensor is pruned and clustered, and what that costs in squared error."""

    threshold: float  # |w| < threshold -> exact zero
    codebook: np.ndarray  # float32 non-zero cluster centres, sorted
    sse: float  # sum of squared errors against the original weight
    nonzeros: int


class SortedWeights:
    """A weight tensor sorted once, with prefix sums for fast range statistics."""

    def __init__(self, values: np.ndarray):
        flat = np.asarray(values, dtype=np.float64).ravel()
        self.size = flat.size
        self.sorted = np.sort(flat)
        self._sum = np.concatenate([[0.0], np.cumsum(self.sorted)])
        self._sum2 = np.concatenate([[0.0], np.cumsum(self.sorted * self.sorted)])
        self.energy = float(self._sum2[-1])
        # Exact zeros stay zero whatever the sparsity (they cost nothing to keep as zeros).
        self._zero_lo = int(np.searchsorted(self.sorted, 0.0, side="left"))
        self._zero_hi = int(np.searchsorted(self.sorted, 0.0, side="right"))

    def prune_band(self, sparsity: float) -> tuple[int, int, float]:
        """Index band [lo, hi) of the sorted values that magnitude pruning zeroes, and the threshold."""
        count = int(round(sparsity * self.size))
        count = max(count, self._zero_hi - self._zero_lo)
        if count <= 0:
            return self._zero_lo, self._zero_lo, 0.0
        if count >= self.size:
            return 0, self.size, float(np.abs(self.sorted).max()) * 2 + 1.0
        magnitudes = np.abs(self.sorted)
        # The band of the `count` smallest magnitudes is contiguous in sorted order.
        threshold = float(np.partition(magnitudes, count - 1)[count - 1])
        lo = int(np.searchsorted(self.sorted, -threshold, side="left"))
        hi = int(np.searchsorted(self.sorted, threshold, side="right"))
        # Strict '<' keeps ties at the threshold; use the next representable value.
        return lo, hi, float(np.nextafter(np.float32(threshold), np.float32(np.inf)))

    def _range(self, prefix: np.ndarray, a: np.ndarray, b: np.ndarray, lo: int, hi: int) -> np.ndarray:
        inner_a = np.clip(a, lo, hi)
        inner_b = np.clip(b, lo, hi)
        return (prefix[b] - prefix[a]) - (prefix[inner_b] - prefix[inner_a])

    def quantize(self, sparsity: float, clusters: int) -> Quantization:
        """Prune the smallest `sparsity` fraction, then k-means the rest into `clusters` centres."""
        lo, hi, threshold = self.prune_band(sparsity)
        x = self.sorted
        pruned_sse = float(self._sum2[hi] - self._sum2[lo])
        nonzeros = self.size - (hi - lo)
        if nonzeros == 0:
            return Quantization(threshold, np.zeros(0, np.float32), pruned_sse, 0)
        survivors_min = x[0] if lo > 0 else x[hi]
        survivors_max = x[-1] if hi < self.size else x[lo - 1]
        k = max(1, min(clusters, nonzeros))
        # Linear initialisation over the surviving range (Han et al. 2016 found it best: it keeps
        # centres on the rare large weights that matter most).
        centres = _linear_init(survivors_min, survivors_max, k, threshold if hi > lo else None)
        for _ in range(KMEANS_ITERATIONS):
            a, b = self._cluster_ranges(centres)
            counts = self._range_count(a, b, lo, hi)
            sums = self._range(self._sum, a, b, lo, hi)
            filled = counts > 0
            updated = centres.copy()
            updated[filled] = sums[filled] / counts[filled]
            updated = np.sort(updated)
            if np.allclose(updated, centres, rtol=0, atol=1e-12):
                centres = updated
                break
            centres = updated
        a, b = self._cluster_ranges(centres)
        counts = self._range_count(a, b, lo, hi)
        sums = self._range(self._sum, a, b, lo, hi)
        sums2 = self._range(self._sum2, a, b, lo, hi)
        centres32 = centres.astype(np.float32).astype(np.float64)
        sse = float(np.sum(sums2 - 2 * centres32 * sums + counts * centres32 * centres32))
        used = counts > 0
        codebook = np.unique(centres[used].astype(np.float32))
        return Quantization(threshold, codebook, max(sse, 0.0) + pruned_sse, nonzeros)

    def _cluster_ranges(self, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bounds = (centres[1:] + centres[:-1]) / 2
        cuts = np.searchsorted(self.sorted, bounds, side="left")
        a = np.concatenate([[0], cuts])
        b = np.concatenate([cuts, [self.size]])
        return a, b

    @staticmethod
    def _range_count(a: np.ndarray, b: np.ndarray, lo: int, hi: int) -> np.ndarray:
        return (b - a) - (np.clip(b, lo, hi) - np.clip(a, lo, hi))


def apply_quantization(values: np.ndarray, quant: Quantization) -> np.ndarray:
    """Snap every weight to its nearest codebook centre; weights under the threshold become 0."""
    values = np.asarray(values, dtype=np.float32)
    result = snap_to_codebook(values, quant.codebook)
    result[np.abs(values) < quant.threshold] = 0.0
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


def _linear_init(low: float, high: float, k: int, gap: float | None) -> np.ndarray:
    """Linearly spaced centres over [low, high], skipping the pruned gap (-gap, gap)."""
    if gap is None or gap <= 0 or low >= 0 or high <= 0 or k < 2:
        return np.linspace(low, high, k)
    negative_span = -gap - low
    positive_span = high - gap
    negative = int(round(k * negative_span / max(negative_span + positive_span, 1e-30)))
    negative = min(max(negative, 1), k - 1)
    return np.concatenate([np.linspace(low, -gap, negative), np.linspace(gap, high, k - negative)])
