"""InsertDequantizeLookupPass: store clustered weights as bit-packed codes plus a codebook."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import onnx_ir as ir

from onnxcomp.encodings import encoding, outliers, row_lookup
from onnxcomp.encodings.storage_plan import Decision, StoragePlan, decide, grouped_codes, row_table, vector_codes
from onnxcomp.encodings.decode import DECODE_OPSET, DecodeBuilder, ensure_opset, rewire
from onnxcomp.passes.weight_pass import StatsPassResult, WeightPass
from onnxcomp.model.weights import find_weights


class InsertDequantizeLookupPass(WeightPass):
    """Replace each weight with few distinct values by packed codes and a decode subgraph.

    Codes of 1-8 bits are packed into uint8/uint32/uint64 words (whichever is smallest) and
    decoded with BitShift(RIGHT) -> Cast(UINT8) -> Mod -> Cast(INT32) -> Gather(codebook) -> Reshape, or, for a
    uniform codebook, Cast(FLOAT) -> Sub(zero) -> Mul(scale) -> Reshape. The decoded tensor is
    bit-identical to the weight (linear form: within float rounding). Every consumer of the
    weight is rewired to the decoded value; graph inputs and outputs are untouched. A weight is
    only replaced when the encoding is smaller than storing it dense. Weights with more than 256
    distinct values are skipped (cluster them first). Needs opset >= 11.

    Args:
        groups: per weight name, a planned grouped lookup: a group count G (groups of rows) or
            (G, axis) with axis 0 (rows) or 1 (columns), see `onnxcomp.encodings.quantize.group_view`.
            Each group has its own codebook of at most 2**bits values (Cast -> Reshape -> Add(code
            offsets) -> Gather(G codebooks) -> Reshape). Used when every group has at most 256
            distinct values and it is the smallest encoding.
        vectors: per weight name, a planned vector lookup: the vector width `dim`. Each run of
            `dim` consecutive entries (flat order) is one code into a [K, dim] codebook of the
            weight's distinct runs (Cast -> Gather(codebook rows) -> Reshape). Used when there
            are at most 256 distinct runs and it is the smallest encoding.
        names: process only these weights (None: every weight). Large models are encoded one
            weight at a time with this, so only one weight's float values are in memory.
        outliers: per weight name, a planned dense-and-sparse lookup (`onnxcomp.encodings.outliers`): the
            magnitude beyond which entries are stored exactly as a sparse stream, the rest as
            codes of at most 256 values. Used when smaller than every plain encoding.
        decisions: per weight name, its encoding as `onnxcomp.encodings.storage_plan.decide_all`
            chose it; the pass builds those of its kinds and decides nothing (groups, vectors and
            outliers are then ignored). Without it each weight is decided here, sparse storage
            left out (`SubstituteSparseOpsPass`).
    """

    def __init__(self, groups: Mapping[str, int | tuple[int, int]] | None = None,
                 vectors: Mapping[str, int] | None = None, names: Collection[str] | None = None,
                 outliers: Mapping[str, float] | None = None, decisions: Mapping[str, Decision] | None = None):
        super().__init__()
        self.names = None if names is None else frozenset(names)
        self.decisions = None if decisions is None else dict(decisions)
        planned = set(groups or {}) | set(vectors or {}) | set(outliers or {})
        self.plans = {name: StoragePlan(*_grouping((groups or {}).get(name, 1)), (vectors or {}).get(name, 1),
                                        (outliers or {}).get(name)) for name in planned}

    def call(self, model: ir.Model) -> StatsPassResult:
        builder = DecodeBuilder(model.graph)
        rows = []
        for weight in find_weights(model):
            if self.names is not None and weight.name not in self.names:
                continue
            values = np.asarray(weight.numpy(), np.float32)
            if self.decisions is None:
                decision = decide(weight, values, self.plans.get(weight.name, StoragePlan()), LOOKUP_KINDS)
            else:
                decision = self.decisions.get(weight.name)
            if decision is None or decision.kind not in LOOKUP_KINDS:
                continue
            rows.append(_ENCODERS[decision.kind](model, builder, weight, values, decision))
        builder.flush()
        if rows:
            ensure_opset(model, DECODE_OPSET)
        return StatsPassResult(model, modified=bool(rows), rows=rows)


def _grouping(plan: int | tuple[int, int]) -> tuple[int, int]:
    return plan if isinstance(plan, tuple) else (plan, 0)


def _outliers(model: ir.Model, builder: DecodeBuilder, weight, values: np.ndarray, decision: Decision) -> dict:
    split = outliers.layout(values, decision.plan.outlier_threshold)
    rewire(model, weight, outliers.build(builder, split, weight.name), builder)
    return {"name": weight.name, "encoding": "outliers", "bits": split.bits, "outliers": split.outliers,
            "bytes_before": decision.choices["dense"].bytes, "bytes_after": split.bytes}


def _rows(model: ir.Model, builder: DecodeBuilder, weight, values: np.ndarray, decision: Decision) -> dict:
    """An embedding table read only by row Gathers, decoded row by row at run time
    (`onnxcomp.encodings.row_lookup`)."""
    gathers, table, size, dense = row_table(weight, values, decision.plan)
    row_lookup.RowDecoder(model.graph, builder).replace(gathers, table, weight.name)
    model.graph.initializers.pop(weight.name)
    return {"name": weight.name, "encoding": "grouped" if table.groups > 1 else "lookup", "bits": table.bits,
            "groups": table.groups, "group_axis": table.axis, "levels": int(table.codebooks.size),
            "rows": "run time", "bytes_before": dense, "bytes_after": size}


def _vector(model: ir.Model, builder: DecodeBuilder, weight, values: np.ndarray, decision: Decision) -> dict:
    codes, codebook, bits, size = vector_codes(values, decision.plan.vector_dim)
    rewire(model, weight, builder.vector_lookup(codes, codebook, bits, weight.shape, weight.name), builder)
    return {"name": weight.name, "encoding": "vector", "bits": bits, "vector_dim": codebook.shape[1],
            "levels": int(codebook.shape[0]), "bytes_before": decision.choices["dense"].bytes, "bytes_after": size}


def _grouped(model: ir.Model, builder: DecodeBuilder, weight, values: np.ndarray, decision: Decision) -> dict:
    axis = decision.plan.group_axis
    table, size = grouped_codes(values, decision.plan.groups, axis)
    decoded = builder.grouped_lookup(table.codes, table.codebooks, table.bits, weight.shape, weight.name, axis)
    rewire(model, weight, decoded, builder)
    return {"name": weight.name, "encoding": "grouped", "bits": table.bits, "groups": len(table.codebooks),
            "group_axis": axis, "levels": int(table.codebooks.size),
            "bytes_before": decision.choices["dense"].bytes, "bytes_after": size}


def _plain(model: ir.Model, builder: DecodeBuilder, weight, values: np.ndarray, decision: Decision) -> dict:
    """A code lookup into the weight's distinct values, or codes on a uniform grid (`linear`)."""
    choice = decision.choices[decision.kind]
    unique, codes = np.unique(values, return_inverse=True)
    if choice.kind == "linear":
        zero, scale, grid_codes = encoding.uniform_grid(unique, encoding.MAX_GRID_BITS)  # type: ignore[misc]
        decoded = builder.linear(grid_codes[codes], zero, scale, choice.bits, weight.shape, weight.name)
    else:
        decoded = builder.lookup(codes, unique, choice.bits, weight.shape, weight.name)
    rewire(model, weight, decoded, builder)
    return {"name": weight.name, "encoding": choice.kind, "bits": choice.bits, "levels": choice.levels,
            "bytes_before": decision.choices["dense"].bytes, "bytes_after": choice.bytes}


_ENCODERS = {"outliers": _outliers, "rows": _rows, "vector": _vector, "grouped": _grouped, "lookup": _plain,
             "linear": _plain}
LOOKUP_KINDS = frozenset(_ENCODERS)
