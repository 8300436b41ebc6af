"""onnxcomp's graph passes (onnx_ir passes; compose them with `onnx_ir.passes.Sequential`)."""

from __future__ import annotations

from onnxcomp.passes.cluster_weights import ClusterWeightsPass
from onnxcomp.passes.eliminate_neurons import EliminateNeuronsPass
from onnxcomp.passes.insert_dequantize_lookup import InsertDequantizeLookupPass
from onnxcomp.passes.prune_weights import PruneWeightsPass
from onnxcomp.passes.substitute_sparse_ops import SubstituteSparseOpsPass

__all__ = [
    "ClusterWeightsPass",
    "EliminateNeuronsPass",
    "InsertDequantizeLookupPass",
    "PruneWeightsPass",
    "SubstituteSparseOpsPass",
]
