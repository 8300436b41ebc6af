"""PruneWeightsPass: magnitude pruning with per-layer thresholds or sparsities (Han et al. 2015)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxcomp.passes.weight_pass import StatsPassResult, WeightPass
from onnxcomp.model.weights import find_weights

logger = logging.getLogger(__name__)


class PruneWeightsPass(WeightPass):
    """Set the smallest-magnitude entries of each prunable weight to exactly zero.

    Args:
        sparsity: fraction of entries to zero, one number for all weights or per weight name.
        thresholds: per weight name, zero every entry with |w| < threshold (wins over sparsity).
        masks: per weight name, a boolean keep-mask of the weight's shape (wins over both); the
            allocator uses it for importance-weighted (saliency) pruning.

    Biases are never pruned. Weights not named in a mapping are left alone. Preserves the
    graph structure; only initializer values change. Idempotent for a given setting.
    """

    def __init__(self, sparsity: float | Mapping[str, float] | None = None,
                 thresholds: Mapping[str, float] | None = None, masks: Mapping[str, np.ndarray] | None = None):
        super().__init__()
        self.masks = dict(masks or {})
        if sparsity is None and thresholds is None and masks is None:
            raise ValueError("PruneWeightsPass needs sparsity or thresholds")
        if isinstance(sparsity, (int, float)) and not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
        self.sparsity = sparsity
        self.thresholds = dict(thresholds or {})

    def _threshold(self, name: str, values: np.ndarray) -> float | None:
        if name in self.thresholds:
            return float(self.thresholds[name])
        if isinstance(self.sparsity, Mapping):
            sparsity = self.sparsity.get(name)
        else:
            sparsity = self.sparsity
        if sparsity is None or sparsity <= 0:
            return None
        count = int(round(sparsity * values.size))
        if count == 0:
            return None
        magnitudes = np.abs(values).ravel()
        return float(np.nextafter(np.partition(magnitudes, count - 1)[count - 1], np.float32(np.inf)))

    def call(self, model: ir.Model) -> StatsPassResult:
        rows = []
        for weight in find_weights(model):
            if not weight.prunable:
                continue
            values = weight.numpy()  # float32 working values (integer weights: minus their zero point)
            if weight.name in self.masks:
                threshold = None
                small = ~np.asarray(self.masks[weight.name], dtype=bool).reshape(values.shape)
            else:
                threshold = self._threshold(weight.name, values)
                if threshold is None:
                    continue
                small = np.abs(values) < threshold
            newly = int(np.count_nonzero(small & (values != 0)))
            if newly == 0:
                logger.debug("%s: nothing under threshold %g", weight.name, threshold)
                continue
            pruned = np.where(small, np.float32(0), values).astype(np.float32)
            weight.store(pruned)  # an integer weight's 0 is stored as its zero point
            rows.append({"name": weight.name, "threshold": threshold, "pruned": newly,
                         "sparsity": float(np.count_nonzero(pruned == 0) / pruned.size)})
        return StatsPassResult(model, modified=bool(rows), rows=rows)
