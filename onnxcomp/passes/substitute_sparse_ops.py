"""SubstituteSparseOpsPass: store sparse weights as codes plus relative positions (Han et al.)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import onnx_ir as ir

from onnxcomp.encodings import encoding
from onnxcomp.encodings.storage_plan import Decision, StoragePlan, decide
from onnxcomp.encodings.decode import DECODE_OPSET, DecodeBuilder, ensure_opset, rewire
from onnxcomp.passes.weight_pass import StatsPassResult, WeightPass
from onnxcomp.model.weights import find_weights


class SubstituteSparseOpsPass(WeightPass):
    """Store a sparse, clustered weight as non-zero codes plus narrow relative position deltas.

    Positions are deltas of 1-8 bits (width chosen per weight) with filler entries (delta =
    max, value = 0) for gaps too long to encode, as in Han et al. 2015; the decode subgraph is
    Cast -> CumSum (two levels for long streams) -> ScatterElements into ConstantOfShape zeros ->
    Reshape, with values from GatherElements(codebook). Where smaller (denser weights), the
    positions are a packed 1-bit mask instead, decoded by Cast(BOOL) -> Compress(Range). Applied only where this is smaller than both the dense weight and the
    dense code lookup, so running InsertDequantizeLookupPass afterwards gives every weight its
    smallest encoding. Decoding is exact. Graph inputs and outputs are untouched.

    Args:
        names: process only these weights (None: every weight). Large models are encoded one
            weight at a time with this, so only one weight's float values are in memory.
        exclude: weights planned for another encoding that keeps zeros (dense-and-sparse).
        decisions: per weight name, its encoding as `onnxcomp.encodings.storage_plan.decide_all`
            chose it; the pass builds the `sparse` ones and decides nothing. Without it each
            weight is decided here.
    """

    def __init__(self, names: Collection[str] | None = None, exclude: Collection[str] = (),
                 decisions: Mapping[str, Decision] | None = None):
        super().__init__()
        self.names = None if names is None else frozenset(names)
        self.exclude = frozenset(exclude)
        self.decisions = None if decisions is None else dict(decisions)

    def call(self, model: ir.Model) -> StatsPassResult:
        builder = DecodeBuilder(model.graph)
        rows = []
        for weight in find_weights(model):
            if (self.names is not None and weight.name not in self.names) or weight.name in self.exclude:
                continue
            values = np.asarray(weight.numpy(), np.float32)
            if self.decisions is None:
                decision = decide(weight, values, StoragePlan(), {"sparse"})
            else:
                decision = self.decisions.get(weight.name)
            if decision is None or decision.kind != "sparse":
                continue
            choices = decision.choices
            sparse = choices["sparse"]
            flat = values.ravel()
            positions = np.flatnonzero(flat)
            if sparse.delta_bits == 0:  # positions as a 1-bit mask
                codebook = np.unique(flat[positions])
                codes = np.searchsorted(codebook, flat[positions])
                decoded = builder.sparse_mask(flat != 0, codes, sparse.bits, codebook, weight.shape, weight.name)
                rewire(model, weight, decoded, builder)
                rows.append({"name": weight.name, "encoding": "sparse", "bits": sparse.bits, "delta_bits": 0,
                             "positions": "mask", "sparsity": sparse.sparsity,
                             "bytes_before": choices["dense"].bytes, "bytes_after": sparse.bytes})
                continue
            deltas, owners = encoding.sparse_deltas(positions, sparse.delta_bits)
            nonzero = np.unique(flat[positions])
            fillers = bool(np.any(owners < 0))
            codebook = np.unique(np.concatenate([[0.0], nonzero]).astype(np.float32)) if fillers else nonzero
            entry_values = np.where(owners >= 0, flat[positions][np.maximum(owners, 0)], 0.0)
            codes = np.searchsorted(codebook, entry_values.astype(np.float32))
            decoded = builder.sparse(deltas, sparse.delta_bits, codes, sparse.bits, codebook, weight.shape, weight.name)
            rewire(model, weight, decoded, builder)
            rows.append({"name": weight.name, "encoding": "sparse", "bits": sparse.bits,
                         "delta_bits": sparse.delta_bits, "positions": "deltas", "sparsity": sparse.sparsity,
                         "bytes_before": choices["dense"].bytes, "bytes_after": sparse.bytes})
        builder.flush()
        if rows:
            ensure_opset(model, DECODE_OPSET)
        return StatsPassResult(model, modified=bool(rows), rows=rows)
