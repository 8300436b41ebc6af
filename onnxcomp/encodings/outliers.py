"""Dense-and-sparse weights: the few largest-magnitude entries kept exact, the rest clustered.

Already-quantized integer weights often have a narrow bulk and rare large values, since a
per-tensor scale is set by the extremes: ddddocr's 1024x8210 uint8 classifier holds 98.8% of its
entries within 3 of the zero point and the rest out to 136. One codebook either spends its levels
on the outliers or loses them. Storing the entries with |w| > t exactly as a sparse stream
(relative position deltas, values coded over their few distinct values) and the bulk as a small
codebook lookup codes the bulk exactly in few bits: the dense-and-sparse decomposition of
SqueezeLLM (Kim et al. 2023), outlier-aware quantization (Park et al. 2018).

Decode (folded at load like the others): codes -> GatherElements(codebook) -> ScatterElements(the
outliers, positions from CumSum) -> Reshape. Sparse filler entries (gaps longer than a delta can
span) rewrite the bulk's own value at their position.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from onnxcomp.encodings import encoding
from onnxcomp.encodings.quantize import Quantization, SortedWeights

logger = logging.getLogger(__name__)

OUTLIER_SHARES = (0.001, 0.003, 0.01, 0.02, 0.05)  # share of the entries kept exact
OUTLIER_BITS = (2, 3, 4, 5)  # code width of the bulk
OUTLIER_MIN_PARAMS = 65536


@dataclasses.dataclass(frozen=True)
class Priced:
    """One dense-and-sparse setting of a weight: bytes, relative squared error, bulk code width."""

    bytes: int
    distortion: float
    bits: int
    quant: Quantization  # the bulk's codebook; `outlier_threshold` set
    load: int


def _threshold(magnitudes: np.ndarray, share: float) -> float | None:
    """The magnitude above which at most `share` of the entries lie, or None for none."""
    count = int(share * magnitudes.size)
    if count <= 0:
        return None
    return float(np.partition(magnitudes, magnitudes.size - count - 1)[magnitudes.size - count - 1])


def price(values: np.ndarray, importance: np.ndarray | None, energy: float) -> list[Priced]:
    """Dense-and-sparse settings (OUTLIER_SHARES x OUTLIER_BITS) of one weight's working values,
    priced by the encoder's byte model; none when the kept entries have more than
    `encoding.MAX_CODEBOOK` distinct values (float weights usually do)."""
    flat = np.asarray(values, np.float32).ravel()
    magnitudes = np.abs(flat)
    spread = None if importance is None else np.broadcast_to(np.asarray(importance), np.shape(values)).ravel()
    priced: list[Priced] = []
    for share in OUTLIER_SHARES:
        threshold = _threshold(magnitudes, share)
        if threshold is None or threshold <= 0:
            continue
        outliers = magnitudes > threshold
        kept = int(np.count_nonzero(outliers))
        distinct = np.unique(flat[outliers]).size
        if kept == 0 or distinct > encoding.MAX_CODEBOOK - 32:  # room for the bulk's values (sparse fillers)
            continue
        bulk = SortedWeights(flat[~outliers], None if spread is None else spread[~outliers])
        gaps = encoding.gap_histogram(np.flatnonzero(outliers))
        for bits in OUTLIER_BITS:
            quant = bulk.quantize(0.0, 1 << bits)
            has_zero = quant.nonzeros < bulk.size
            if has_zero and bits > 1:  # exact zeros keep a level of their own (as in allocate)
                quant = bulk.quantize(0.0, (1 << bits) - 1)
            table = quant.codebook.size + (1 if has_zero else 0)
            sparse = encoding.price_sparse(gaps, distinct + table, values.ndim)
            if sparse is None:
                continue
            size = encoding.lookup_bytes(flat.size, encoding.bits_for(table), table, values.ndim) + sparse.bytes
            load = encoding.fold_cost("lookup", flat.size, bits) + int(encoding.SPARSE_ENTRY_NS * sparse.entries)
            quant = dataclasses.replace(quant, nonzeros=quant.nonzeros + kept, outlier_threshold=threshold)
            priced.append(Priced(size, quant.sse / max(energy, 1e-30), encoding.bits_for(table), quant, load))
        del bulk  # before the next share's: two sorted copies with prefix sums at once double the peak
    return priced


def snap(values: np.ndarray, clustered: np.ndarray, threshold: float) -> np.ndarray:
    """`clustered` with the entries beyond `threshold` put back to their exact values."""
    keep = np.abs(values) > threshold
    result = np.array(clustered, np.float32, copy=True)
    result[keep] = np.asarray(values, np.float32)[keep]
    return result


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a dense-and-sparse weight stores: bulk codes over `levels`, and the sparse entries
    (relative position deltas, codes over `table`)."""

    shape: tuple[int, ...]
    codes: np.ndarray
    levels: np.ndarray
    bits: int
    deltas: np.ndarray
    delta_bits: int
    entry_codes: np.ndarray
    table: np.ndarray
    outliers: int

    @property
    def bytes(self) -> int:
        rank = len(self.shape)
        return (encoding.lookup_bytes(int(self.codes.size), self.bits, self.levels.size, rank)
                + encoding.sparse_bytes(int(self.deltas.size), encoding.bits_for(self.table.size), self.delta_bits,
                                        self.table.size, rank))


def layout(values: np.ndarray, threshold: float) -> Layout | None:
    """Split clustered working values whose entries beyond `threshold` are exact; None when the
    bulk has more than 256 distinct values or the kept entries cannot be coded."""
    flat = np.asarray(values, np.float32).ravel()
    outliers = np.abs(flat) > threshold
    positions = np.flatnonzero(outliers)
    levels = np.unique(flat[~outliers])
    if positions.size == 0 or levels.size == 0 or levels.size > encoding.MAX_CODEBOOK:
        return None
    codes = np.zeros(flat.size, np.int64)
    codes[~outliers] = np.searchsorted(levels, flat[~outliers])
    sparse = encoding.price_sparse(positions, np.unique(flat[positions]).size + levels.size, np.ndim(values))
    if sparse is None or sparse.delta_bits == 0:
        return None
    deltas, owners = encoding.sparse_deltas(positions, sparse.delta_bits)
    at = np.cumsum(deltas.astype(np.int64))  # each entry's position; fillers land on bulk entries
    entries = np.where(owners >= 0, flat[at], levels[codes[at]]).astype(np.float32)
    table = np.unique(entries)
    if table.size > encoding.MAX_CODEBOOK:
        return None
    return Layout(tuple(int(d) for d in np.shape(values)), codes, levels, encoding.bits_for(levels.size), deltas,
                  sparse.delta_bits, np.searchsorted(table, entries), table, int(positions.size))


def build(builder, plan: Layout, stem: str) -> ir.Value:
    """The decode subgraph of a `layout`: lookup -> ScatterElements(outliers) -> Reshape."""
    bulk = builder.lookup(plan.codes, plan.levels, plan.bits, (int(plan.codes.size),), stem)
    return builder.sparse(plan.deltas, plan.delta_bits, plan.entry_codes, encoding.bits_for(plan.table.size),
                          plan.table, plan.shape, stem + "_o", into=bulk)
