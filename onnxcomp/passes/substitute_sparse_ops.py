"""SubstituteSparseOpsPass: store sparse weights as codes plus relative positions (Han et al.)."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxcomp import encoding
from onnxcomp.decode import DECODE_OPSET, DecodeBuilder
from onnxcomp.passes._stats import StatsPassResult
from onnxcomp.passes.insert_dequantize_lookup import ensure_opset
from onnxcomp.weights import find_weights

logger = logging.getLogger(__name__)


class SubstituteSparseOpsPass(ir.passes.InPlacePass):
    """Store a sparse, clustered weight as non-zero codes plus narrow relative position deltas.

    Positions are deltas of 1-8 bits (width chosen per weight) with filler entries (delta =
    max, value = 0) for gaps too long to encode, as in Han et al. 2015; the decode subgraph is
    Cast -> CumSum -> ScatterElements into ConstantOfShape zeros -> Reshape, with values from
    Gather(codebook). Applied only where this is smaller than both the dense weight and the
    dense code lookup, so running InsertDequantizeLookupPass afterwards gives every weight its
    smallest encoding. Decoding is exact. Graph inputs and outputs are untouched.
    """

    def call(self, model: ir.Model) -> StatsPassResult:
        builder = DecodeBuilder(model.graph)
        rows = []
        for weight in find_weights(model):
            values = weight.numpy().astype(np.float32)
            choices = encoding.encoding_choices(values)
            if "sparse" not in choices:
                continue
            sparse = choices["sparse"]
            if sparse.bytes >= min(c.bytes for k, c in choices.items() if k != "sparse"):
                logger.debug("%s: sparse storage would not be the smallest", weight.name)
                continue
            flat = values.ravel()
            positions = np.flatnonzero(flat)
            deltas, owners = encoding.sparse_deltas(positions, sparse.delta_bits)
            nonzero = np.unique(flat[positions])
            fillers = bool(np.any(owners < 0))
            codebook = np.unique(np.concatenate([[0.0], nonzero]).astype(np.float32)) if fillers else nonzero
            entry_values = np.where(owners >= 0, flat[positions][np.maximum(owners, 0)], 0.0)
            codes = np.searchsorted(codebook, entry_values.astype(np.float32))
            decoded = builder.sparse(deltas, sparse.delta_bits, codes, sparse.bits, codebook, weight.shape, weight.name)
            decoded.shape = ir.Shape(weight.shape)
            decoded.type = ir.TensorType(ir.DataType.FLOAT)
            weight.value.replace_all_uses_with(decoded)
            model.graph.initializers.pop(weight.name)
            rows.append({"name": weight.name, "encoding": "sparse", "bits": sparse.bits,
                         "delta_bits": sparse.delta_bits, "sparsity": sparse.sparsity,
                         "bytes_before": choices["dense"].bytes, "bytes_after": sparse.bytes})
        builder.flush()
        if rows:
            ensure_opset(model, DECODE_OPSET)
        return StatsPassResult(model, modified=bool(rows), rows=rows)
