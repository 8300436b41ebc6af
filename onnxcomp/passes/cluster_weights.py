"""ClusterWeightsPass: per-layer 1-D k-means weight sharing (Han et al. 2016, Deep Compression)."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping

import numpy as np
import onnx_ir as ir

from onnxcomp.encodings import outliers
from onnxcomp.passes.weight_pass import StatsPassResult, WeightPass
from onnxcomp.encodings.quantize import SortedWeights, snap_to_codebook, snap_to_grouped_codebooks, snap_to_vectors
from onnxcomp.model.weights import find_weights

logger = logging.getLogger(__name__)


class ClusterWeightsPass(WeightPass):
    """Replace each weight's values by their nearest of a few shared values (a codebook).

    Args:
        bits: codes per weight are `bits` wide: 2**bits shared values, one of them exact zero
            when the weight has zeros (pruned entries stay exactly zero). One number for all
            weights or per weight name; weights not named are left alone.
        codebooks: per weight name, an explicit sorted codebook of non-zero values to snap to
            (the allocator's k-means result); wins over `bits`. A 2-D codebook [G, K] is one
            codebook per group (grouped lookup, `onnxcomp.encodings.quantize.group_view`): group g snaps
            to codebook row g; zeros are snapped like any value (grouped codebooks never prune).
        group_axes: per weight name with a 2-D codebook, 0 (groups of rows, the default) or 1
            (groups of columns).
        vectors: weight names whose 2-D codebook [K, dim] holds vectors (vector quantization,
            `onnxcomp.encodings.quantize.vector_quantize`): each run of `dim` consecutive entries (flat
            order) snaps to its nearest codebook row; zeros are snapped like any value.
        names: process only these weights (None: every weight). Large models are encoded one
            weight at a time with this, so only one weight's float values are in memory.
        outliers: per weight name with a 1-D codebook, a magnitude threshold: entries beyond it
            keep their exact values (dense-and-sparse, `onnxcomp.encodings.outliers`).

    Centres are initialised linearly over the weight range (Deep Compression found linear
    initialisation best). Idempotent: a weight that already has at most 2**bits distinct
    values is left unchanged. Preserves graph structure; only initializer values change.
    """

    def __init__(self, bits: int | Mapping[str, int] | None = 4,
                 codebooks: Mapping[str, np.ndarray] | None = None, group_axes: Mapping[str, int] | None = None,
                 vectors: set[str] | frozenset[str] | None = None, names: Collection[str] | None = None,
                 outliers: Mapping[str, float] | None = None):
        super().__init__()
        self.outliers = dict(outliers or {})
        self.names = None if names is None else frozenset(names)
        self.vectors = frozenset(vectors or ())
        self.group_axes = dict(group_axes or {})
        if isinstance(bits, int) and not 1 <= bits <= 8:
            raise ValueError(f"bits must be in 1..8, got {bits}")
        self.bits = bits
        self.codebooks = dict(codebooks or {})

    def _bits(self, name: str) -> int | None:
        if isinstance(self.bits, Mapping):
            return self.bits.get(name)
        return self.bits

    def call(self, model: ir.Model) -> StatsPassResult:
        rows = []
        for weight in find_weights(model):
            if self.names is not None and weight.name not in self.names:
                continue
            values = weight.numpy().astype(np.float32)
            zeros = values == 0
            codebook = self.codebooks.get(weight.name)
            bits = self._bits(weight.name)
            if codebook is None:
                if bits is None:
                    continue
                has_zero = bool(zeros.any())
                levels = (1 << bits) - (1 if has_zero else 0)
                if np.unique(values).size <= (1 << bits):
                    logger.debug("%s already has <= %d distinct values", weight.name, 1 << bits)
                    continue
                nonzero = values[~zeros]
                codebook = SortedWeights(nonzero).quantize(0.0, levels).codebook
            if weight.name in self.vectors:
                codebook = np.asarray(codebook, np.float32)
                if codebook.ndim != 2 or values.size % codebook.shape[1]:
                    logger.debug("%s: %s does not split into vectors of the codebook's width", weight.name, values.shape)
                    continue
                clustered = _representable(weight, snap_to_vectors(values, codebook))
                if np.array_equal(clustered, values):
                    continue
                weight.store(clustered)
                rows.append({"name": weight.name, "clusters": int(codebook.shape[0]),
                             "sse": float(np.sum((clustered.astype(np.float64) - values) ** 2))})
                continue
            codebook = np.sort(np.asarray(codebook, np.float32), axis=-1)
            if codebook.ndim == 2:
                axis = self.group_axes.get(weight.name, 0)
                if (values.size if axis == 0 else values.shape[-1]) % codebook.shape[0]:
                    logger.debug("%s: %s does not split into %d groups", weight.name, values.shape, codebook.shape[0])
                    continue
                clustered = snap_to_grouped_codebooks(values, codebook, axis)
            else:
                clustered = snap_to_codebook(values, codebook)
                clustered[zeros] = 0.0
                if weight.name in self.outliers:
                    clustered = outliers.snap(values, clustered, self.outliers[weight.name])
            clustered = _representable(weight, clustered)
            if np.array_equal(clustered, values):
                continue
            weight.store(clustered)
            rows.append({"name": weight.name, "clusters": int(codebook.size),
                         "sse": float(np.sum((clustered.astype(np.float64) - values) ** 2))})
        return StatsPassResult(model, modified=bool(rows), rows=rows)


def _representable(weight, clustered: np.ndarray) -> np.ndarray:
    """The clustered values as the weight's own type stores them (float16 rounding; integer
    weights: whole numbers), so a second run finds nothing to change."""
    if weight.storage.plain:
        return clustered
    return weight.storage.working(weight.storage.stored(clustered))
