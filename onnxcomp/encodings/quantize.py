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
# Tensors of at least PRICE_SAMPLE_ABOVE entries are priced on a seeded uniform sample of
# PRICE_SAMPLE entries: the 1-D k-means centres and relative errors of a 1M-entry sample match
# the full tensor's closely, while sorting and prefix sums over hundreds of millions of entries
# would dominate time and memory (a float64 copy per prefix sum). Errors, energy and non-zero
# counts are scaled back to the whole tensor.
PRICE_SAMPLE_ABOVE = 1 << 24
PRICE_SAMPLE = 1 << 20
MASK_CHUNK = 1 << 20  # entries per slice in prune_mask


@dataclasses.dataclass(frozen=True)
class Quantization:
    """How one tensor is pruned and clustered, and what that costs in (weighted) squared error."""

    saliency_threshold: float  # entries with importance * w**2 < threshold -> exact zero
    codebook: np.ndarray  # float32 non-zero cluster centres, sorted; [groups, K] (rows sorted) when grouped
    sse: float
    nonzeros: int
    groups: int = 1  # > 1: one codebook per group of the weight's entries (see group_view)
    group_axis: int = 0  # 0: groups of consecutive rows (flat blocks); 1: groups of consecutive columns
    vector_dim: int = 1  # > 1: vector quantization, codebook [K, vector_dim] (see vector_quantize)
    outlier_threshold: float | None = None  # entries with |w| above stay exact (onnxcomp.encodings.outliers)


def sample_positions(size: int, count: int) -> np.ndarray:
    """`count` sorted distinct positions in [0, size), seeded: one at a random offset in each
    of `count` equal strides (O(count), where a random choice without replacement permutes all
    `size` positions)."""
    if count >= size:
        return np.arange(size, dtype=np.int64)
    stride = size // count
    return np.arange(count, dtype=np.int64) * stride + np.random.default_rng(0).integers(0, stride, count)


class SortedWeights:
    """A weight tensor sorted once, with importance-weighted prefix sums per sparsity level.

    Integer-valued tensors without importance (already-quantized weights: uint8/int8 codes) are
    held as their distinct values with counts: every prefix sum the k-means reads is then an
    exact integer both ways, so the results are the same, in memory of the distinct values
    rather than ~80 bytes per entry (8.4M uint8 entries: ~700 MB of sorted copies and sums)."""

    def __init__(self, values: np.ndarray, importance: np.ndarray | None = None):
        flat = np.asarray(values, dtype=np.float32).ravel()
        picked = None
        self.scale = 1.0  # entries of the tensor per entry held here (> 1 when sampled)
        if flat.size >= PRICE_SAMPLE_ABOVE:
            picked = sample_positions(flat.size, PRICE_SAMPLE)
            self.scale = flat.size / PRICE_SAMPLE
            flat = flat[picked]
        self.size = flat.size  # entries held (counted with their multiplicity)
        self.counts = None  # entries per held value, where distinct values are held
        if importance is None and _exact_integers(flat):
            sorted_values, self.counts = np.unique(flat, return_counts=True)
            self.sorted = sorted_values.astype(np.float64)
            self.importance = self.counts.astype(np.float64)  # weight of each held value: its count
        else:
            order = np.argsort(flat, kind="stable")
            self.sorted = flat[order].astype(np.float64)
            if importance is None:
                self.importance = np.ones(self.size)
            else:
                spread = np.broadcast_to(np.asarray(importance, np.float64), np.shape(values))
                # Index the broadcast view: never materialise the importance at the weight's size.
                self.importance = (spread.ravel() if picked is None else spread[np.unravel_index(picked, spread.shape)])[order]
                self.importance = np.maximum(self.importance, 1e-12 * max(float(self.importance.max()), 1e-30))
        # Saliency of one entry of each held value (prunes), and of all its entries (sums errors).
        self.mass = self.importance * self.sorted * self.sorted
        self.saliency = self.mass if self.counts is None else self.sorted * self.sorted
        self.energy = float(self.mass.sum()) * self.scale
        if self.counts is None:
            self._sorted_saliency = np.sort(self.saliency)
            self._saliency_rank = None
        else:
            by_saliency = np.argsort(self.saliency, kind="stable")
            self._sorted_saliency = self.saliency[by_saliency]
            self._saliency_rank = np.cumsum(self.counts[by_saliency])  # entries at or below each
        self._cache: dict[float, tuple] = {}

    def saliency_threshold(self, sparsity: float) -> float:
        """Entries with saliency below this are pruned (exact zeros always are)."""
        count = int(round(sparsity * self.size))
        if count <= 0:
            return float(np.nextafter(0.0, 1.0))
        if count >= self.size:
            return float(self._sorted_saliency[-1]) * 2 + 1.0
        at = count - 1 if self._saliency_rank is None else int(np.searchsorted(self._saliency_rank, count, side="left"))
        return float(np.nextafter(self._sorted_saliency[at], np.inf))

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
                float(np.sum(self.mass[~keep])) * self.scale,
            )
            kept = keep if self.counts is None else np.where(keep, self.counts, 0)
            cached = (
                bounds,
                keep,
                np.concatenate([[0.0], np.cumsum(kept)]),
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
        whole = int(round(nonzeros * self.scale))  # non-zeros of the whole tensor
        (low, high), gap_low, gap_high, pruned_sse = bounds
        k = max(1, min(clusters, nonzeros))
        # Linear initialisation over the surviving range (Han et al. 2016 found it best: it keeps
        # centres on the rare large weights that matter most), skipping the pruned gap.
        centres = _linear_init(low, high, k, gap_low, gap_high)
        edges = np.empty(k + 1, dtype=np.intp)  # cluster i holds sorted entries edges[i]:edges[i + 1]
        edges[0], edges[-1] = 0, self.sorted.size
        for _ in range(KMEANS_ITERATIONS):
            edges[1:-1] = np.searchsorted(self.sorted, (centres[1:] + centres[:-1]) / 2, side="left")
            weights = np.diff(w_prefix[edges])
            # a cluster with weight holds kept entries (every kept entry has importance > 0)
            filled = weights > 0
            updated = centres.copy()
            updated[filled] = np.diff(wx_prefix[edges])[filled] / weights[filled]
            updated.sort()
            converged = bool(np.max(np.abs(updated - centres)) <= 1e-12)
            centres = updated
            if converged:
                break
        edges[1:-1] = np.searchsorted(self.sorted, (centres[1:] + centres[:-1]) / 2, side="left")
        counts = np.diff(count_prefix[edges])
        weights = np.diff(w_prefix[edges])
        sums = np.diff(wx_prefix[edges])
        sums2 = np.diff(wxx_prefix[edges])
        centres32 = centres.astype(np.float32).astype(np.float64)
        sse = float(np.sum(sums2 - 2 * centres32 * sums + weights * centres32 * centres32))
        codebook = np.unique(centres[counts > 0].astype(np.float32))
        return Quantization(threshold, codebook, max(sse, 0.0) * self.scale + pruned_sse, whole)


def _exact_integers(flat: np.ndarray) -> bool:
    """Whether every value is an integer small enough that any sum of squares over the tensor is
    exact in float64 (so summing per distinct value or per entry gives the same number)."""
    if not flat.size:
        return False
    largest = float(np.max(np.abs(flat)))
    if not np.isfinite(largest) or largest * largest * flat.size >= 2.0 ** 52:
        return False
    return bool(np.array_equal(flat, np.round(flat)))


def group_view(values: np.ndarray, groups: int, axis: int = 0) -> np.ndarray:
    """The weight's entries as [groups, size / groups], one row per group.

    axis 0: the flat weight cut into `groups` consecutive blocks (whole rows when `groups`
    divides the first dimension). axis 1: the weight as [size / D, D] (D = last dimension) and
    its columns cut into `groups` blocks of D / groups consecutive columns.
    """
    values = np.asarray(values)
    if axis == 0:
        return values.reshape(groups, -1)
    columns = values.shape[-1]
    return values.reshape(-1, columns).T.reshape(groups, -1)


def from_group_view(rows: np.ndarray, shape: tuple[int, ...], axis: int = 0) -> np.ndarray:
    """Inverse of group_view: back to the weight's layout."""
    if axis == 0:
        return rows.reshape(shape)
    columns = shape[-1]
    return rows.reshape(columns, -1).T.reshape(shape)


def grouped_quantize(values: np.ndarray, importance: np.ndarray | None, groups: int,
                     clusters: tuple[int, ...], axis: int = 0) -> list[Quantization]:
    """K-means with one codebook per group of the weight's entries (no pruning).

    Groups are the rows of `group_view(values, groups, axis)` (`groups` must divide the size, or
    the last dimension for axis 1); every group gets its own `k`-entry codebook for each k in
    `clusters`. All groups are clustered at once: each is sorted and shifted by a row offset so
    that one global searchsorted finds every group's cluster boundaries. Returns one Quantization
    per k, with codebook [groups, k] and the squared error summed over the groups.
    """
    values = np.asarray(values, dtype=np.float32)
    total = values.size
    scale = 1.0  # entries of the tensor per entry clustered here (> 1 when sampled)
    spread = None if importance is None else np.broadcast_to(np.asarray(importance, np.float64), values.shape)
    if total >= PRICE_SAMPLE_ABOVE:
        # Every group keeps the same seeded random positions (see PRICE_SAMPLE).
        picked = _group_sample(values.shape, groups, axis)
        scale = (total // groups) / picked.shape[1]
        flat = np.ascontiguousarray(values).reshape(-1)[picked].astype(np.float64).ravel()
        importance_rows = None if spread is None else spread[np.unravel_index(picked, values.shape)]
    else:
        flat = group_view(values, groups, axis).astype(np.float64).ravel()
        importance_rows = None if spread is None else group_view(spread, groups, axis)
    size = flat.size
    width = size // groups
    if importance_rows is None:
        data = np.sort(flat.reshape(groups, width), axis=1)
        weight = np.ones_like(data)
    else:
        order = np.argsort(flat.reshape(groups, width), axis=1, kind="stable")
        data = np.take_along_axis(flat.reshape(groups, width), order, axis=1)
        weight = np.take_along_axis(importance_rows, order, axis=1)
        weight = np.maximum(weight, 1e-12 * max(float(weight.max()), 1e-30))
    del flat
    reach = float(np.max(np.abs(data))) if size else 0.0
    stride = 4 * reach + 1.0  # rows live in disjoint ranges once shifted by row * stride
    row_offsets = np.arange(groups, dtype=np.float64)[:, None] * stride
    shifted = (data + row_offsets).ravel()
    first = np.arange(groups)[:, None] * width

    def prefix(array):
        return np.concatenate([np.zeros((groups, 1)), np.cumsum(array, axis=1)], axis=1)

    w_prefix = prefix(weight)
    wx_prefix = prefix(weight * data)
    wxx_prefix = prefix(weight * data * data)
    low, high = data[:, :1], data[:, -1:]
    # Same initialisation as SortedWeights.quantize: linear over each side of zero.
    zero_at = np.searchsorted(shifted, row_offsets.ravel(), side="left") - first.ravel()
    positive_at = np.searchsorted(shifted, row_offsets.ravel(), side="right") - first.ravel()
    gap_low = [float(row[i - 1]) if i > 0 else None for row, i in zip(data, zero_at)]
    gap_high = [float(row[i]) if i < width else None for row, i in zip(data, positive_at)]

    def ranges(centres):
        bounds = (centres[:, 1:] + centres[:, :-1]) / 2 + row_offsets
        cuts = np.searchsorted(shifted, bounds.ravel(), side="left").reshape(groups, -1) - first
        cuts = np.clip(cuts, 0, width)
        return (np.concatenate([np.zeros((groups, 1), np.int64), cuts], axis=1),
                np.concatenate([cuts, np.full((groups, 1), width, np.int64)], axis=1))

    def between(prefix_sums, a, b):
        return np.take_along_axis(prefix_sums, b, axis=1) - np.take_along_axis(prefix_sums, a, axis=1)

    results = []
    for k in clusters:
        k = max(1, min(k, width))
        centres = np.stack([_linear_init(float(lo), float(hi), k, gl, gh)
                            for lo, hi, gl, gh in zip(low.ravel(), high.ravel(), gap_low, gap_high)])
        for _ in range(KMEANS_ITERATIONS):
            a, b = ranges(centres)
            weights = between(w_prefix, a, b)
            sums = between(wx_prefix, a, b)
            filled = (b > a) & (weights > 0)
            updated = np.where(filled, sums / np.where(filled, weights, 1.0), centres)
            updated = np.sort(updated, axis=1)
            converged = bool(np.max(np.abs(updated - centres)) <= 1e-12)
            centres = updated
            if converged:
                break
        a, b = ranges(centres)
        centres32 = centres.astype(np.float32)
        c = centres32.astype(np.float64)
        sse = np.sum(between(wxx_prefix, a, b) - 2 * c * between(wx_prefix, a, b) + between(w_prefix, a, b) * c * c)
        results.append(Quantization(float(np.nextafter(0.0, 1.0)), np.sort(centres32, axis=1),
                                    max(float(sse), 0.0) * scale, total, groups, axis))
    return results


def _group_sample(shape: tuple[int, ...], groups: int, axis: int) -> np.ndarray:
    """Flat indices [groups, m] of PRICE_SAMPLE entries: the same positions in every row of
    `group_view(values, groups, axis)`, found without building that view."""
    total = int(np.prod(shape))
    width = total // groups
    count = max(1, min(width, PRICE_SAMPLE // groups))
    positions = sample_positions(width, count)
    group = np.arange(groups, dtype=np.int64)[:, None]
    if axis == 0:
        return group * width + positions[None, :]
    columns = int(shape[-1])
    rows = total // columns
    # group_view's row g is the weight's columns g*per .. (g+1)*per - 1, each column whole.
    per = columns // groups
    return (positions % rows)[None, :] * columns + group * per + (positions // rows)[None, :]


def snap_to_grouped_codebooks(values: np.ndarray, codebooks: np.ndarray, axis: int = 0) -> np.ndarray:
    """Nearest-centre assignment per group (row of `group_view`) to that group's codebook row."""
    values = np.asarray(values, dtype=np.float32)
    rows = group_view(values, codebooks.shape[0], axis)
    snapped = np.stack([snap_to_codebook(row, np.sort(codebook)) for row, codebook in zip(rows, codebooks)])
    return from_group_view(snapped, values.shape, axis)


def prune_mask(values: np.ndarray, importance: np.ndarray | None, saliency_threshold: float) -> np.ndarray:
    """Boolean keep-mask (same shape as values): saliency >= threshold and not already zero."""
    values = np.asarray(values)
    if values.ndim == 0:
        values = values.reshape(1)
        return prune_mask(values, importance, saliency_threshold).reshape(())
    spread = None if importance is None else np.broadcast_to(np.asarray(importance, np.float64), values.shape)
    floor = 1e-12 * max(1.0 if spread is None else float(np.max(importance)), 1e-30)
    mask = np.empty(values.shape, dtype=bool)
    # In slices of the first axis: float64 temporaries stay a few MB, whatever the weight's size.
    step = max(1, MASK_CHUNK // max(values.size // max(values.shape[0], 1), 1))
    for start in range(0, values.shape[0], step):
        part = values[start:start + step].astype(np.float64)
        weight = 1.0 if spread is None else np.maximum(spread[start:start + step], floor)
        mask[start:start + step] = (weight * part * part >= saliency_threshold) & (part != 0)
    return mask


def apply_quantization(values: np.ndarray, quant: Quantization, importance: np.ndarray | None = None) -> np.ndarray:
    """Prune by saliency, then snap every kept weight to its nearest codebook centre."""
    values = np.asarray(values, dtype=np.float32)
    if quant.vector_dim > 1:
        return snap_to_vectors(values, quant.codebook)  # never pruned: zeros are coded like any value
    if quant.groups > 1:
        result = snap_to_grouped_codebooks(values, quant.codebook, quant.group_axis)
    else:
        result = snap_to_codebook(values, quant.codebook)
    result[~prune_mask(values, importance, quant.saliency_threshold)] = 0.0
    if quant.outlier_threshold is not None:
        keep = np.abs(values) > quant.outlier_threshold
        result[keep] = values[keep]
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


VECTOR_TRAIN = 32  # k-means trains on at most this many vectors per centre (a seeded sample)
VECTOR_EVAL = 8192  # ... and prices its squared error on at most this many, scaled to the weight
VECTOR_ITERATIONS = 8


def vector_quantize(values: np.ndarray, importance: np.ndarray | None, dim: int,
                    clusters: tuple[int, ...], seed: int = 0) -> list[Quantization]:
    """Vector quantization: the weight's consecutive `dim` entries (flat order) share one code
    that indexes a codebook of `k` vectors [k, dim], for each k in `clusters` (no pruning).

    Several weights per code capture what scalar codebooks cannot - correlated neighbours and
    the shape of the joint distribution - so at 1-4 bits per weight the error is far smaller
    than a scalar codebook's at the same bits (Gersho & Gray 1992; Stock et al. 2020, "And the
    bit goes down"). Assignment is plain nearest centre (what `snap_to_vectors` does); centres
    are importance-weighted means. k-means trains on a seeded sample of VECTOR_TRAIN vectors per
    centre and prices its error on a sample of VECTOR_EVAL vectors, scaled to the whole weight.
    """
    vectors = np.asarray(values, dtype=np.float32).reshape(-1, dim)
    if importance is None:
        weight = None  # uniform: ones for the sampled rows only, never at the weight's size
    else:
        weight = np.broadcast_to(np.asarray(importance, np.float32), np.shape(values)).reshape(-1, dim)
        weight = np.maximum(weight, np.float32(1e-12 * max(float(weight.max()), 1e-30)))
    count = vectors.shape[0]
    rng = np.random.default_rng(seed)
    # A permutation of millions of vectors costs more than the k-means; large weights draw only the rows used.
    order = rng.permutation(count) if count <= 1 << 20 else \
        rng.choice(count, min(count, VECTOR_EVAL + VECTOR_TRAIN * max(clusters)), replace=False)
    evaluate = np.sort(order[:VECTOR_EVAL])
    ev = vectors[evaluate].astype(np.float64)
    ew = np.ones_like(ev) if weight is None else weight[evaluate].astype(np.float64)
    scale = count / evaluate.size
    results = []
    for k in clusters:
        train = np.sort(order[-min(count, VECTOR_TRAIN * k):])
        x = vectors[train]
        w = np.ones(x.shape, np.float32) if weight is None else weight[train]
        k = max(1, min(k, x.shape[0]))
        centres = _plus_plus(x, k, rng)
        for _ in range(VECTOR_ITERATIONS):
            updated = _weighted_means(x, w, nearest_rows(x, centres), centres)
            moved = float(np.max(np.abs(updated - centres)))
            centres = updated
            if moved <= 1e-9:
                break
        centres = centres.astype(np.float32)
        error = ev - centres[nearest_rows(ev, centres)].astype(np.float64)
        sse = float(np.sum(ew * error * error)) * scale
        results.append(Quantization(float(np.nextafter(0.0, 1.0)), centres, sse, int(vectors.size), 1, 0, dim))
    return results


def _plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) on a sample of at most 8k (<= 4096) vectors."""
    size = min(x.shape[0], 4096, 8 * k)
    pool = np.asarray(x if x.shape[0] <= size else x[rng.choice(x.shape[0], size, replace=False)], np.float64)
    picks = [int(rng.integers(pool.shape[0]))]
    distance = np.sum((pool - pool[picks[0]]) ** 2, axis=1)
    for _ in range(1, k):
        cumulative = np.cumsum(distance)
        pick = int(rng.integers(pool.shape[0])) if cumulative[-1] <= 0 else \
            min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")), pool.shape[0] - 1)
        picks.append(pick)
        np.minimum(distance, np.sum((pool - pool[pick]) ** 2, axis=1), out=distance)
    return pool[picks]


def nearest_rows(x: np.ndarray, centres: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Index of the nearest centre (Euclidean) for each row of x."""
    # float32 halves the memory traffic of the [chunk, K] distance block, which dominates; a
    # near-tie may then pick the other of two almost equally near centres, which costs nothing.
    centres = np.asarray(centres, np.float32)
    half_norms = 0.5 * np.sum(centres * centres, axis=1)
    out = np.empty(x.shape[0], dtype=np.int64)
    for start in range(0, x.shape[0], chunk):
        part = np.asarray(x[start:start + chunk], np.float32)
        scores = part @ centres.T
        scores -= half_norms
        out[start:start + chunk] = np.argmax(scores, axis=1)
    return out


def _weighted_means(x: np.ndarray, w: np.ndarray, assigned: np.ndarray, centres: np.ndarray) -> np.ndarray:
    k, dim = centres.shape
    updated = np.array(centres, np.float64)
    for j in range(dim):
        mass = np.bincount(assigned, weights=w[:, j], minlength=k)
        total = np.bincount(assigned, weights=w[:, j] * x[:, j], minlength=k)
        filled = mass > 0
        updated[filled, j] = total[filled] / mass[filled]
    return updated


def snap_to_vectors(values: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Each run of `dim` consecutive entries (flat order) replaced by its nearest codebook row."""
    values = np.asarray(values, dtype=np.float32)
    codebook = np.asarray(codebook, dtype=np.float32)
    vectors = values.reshape(-1, codebook.shape[1])
    return codebook[nearest_rows(vectors, codebook)].reshape(values.shape)  # nearest_rows works in float32 chunks
