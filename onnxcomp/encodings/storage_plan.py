"""Which encoding stores each weight, decided once: the contract between the plan and the encode passes.

The allocator chooses per weight a codebook and a layout (`StoragePlan`: groups, vector width,
outlier threshold). Once the weights are pruned and clustered, `decide` prices the encodings that
apply to the final values and picks one (`Decision`); `SubstituteSparseOpsPass` builds the
`sparse` decisions and `InsertDequantizeLookupPass` the others, neither choosing again. The order
of preference is the passes' historical order: sparse where it is smaller than every plain
encoding, then a planned dense-and-sparse split, a row-decoded embedding table, a planned vector or
grouped lookup (each only where smaller than every plain encoding), then the smaller of a lookup
and a uniform grid, where smaller than dense.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping

import numpy as np
import onnx_ir as ir

from onnxcomp.encodings import encoding, outliers, row_lookup
from onnxcomp.encodings.quantize import Quantization
from onnxcomp.model.weights import Weight, find_weights

KINDS = frozenset({"sparse", "outliers", "rows", "vector", "grouped", "lookup", "linear"})


@dataclasses.dataclass(frozen=True)
class StoragePlan:
    """The allocator's layout for one weight (`onnxcomp.encodings.quantize.Quantization`)."""

    groups: int = 1  # > 1: one codebook per group (`group_axis` 0: of rows, 1: of columns)
    group_axis: int = 0
    vector_dim: int = 1  # > 1: codes of runs of this many entries
    outlier_threshold: float | None = None  # entries beyond stay exact (dense-and-sparse)

    @classmethod
    def of(cls, quant: Quantization) -> StoragePlan:
        return cls(quant.groups, quant.group_axis, quant.vector_dim, quant.outlier_threshold)


@dataclasses.dataclass(frozen=True)
class Decision:
    """One weight's encoding: `kind` (one of KINDS), the plan it follows, and the plain encodings
    priced on its final values (`encoding.encoding_choices`; "dense" always present)."""

    kind: str
    plan: StoragePlan
    choices: dict[str, encoding.Choice]


def plans_of(quantizations: Mapping[str, Quantization]) -> dict[str, StoragePlan]:
    return {name: StoragePlan.of(quant) for name, quant in quantizations.items()}


def decide_all(model: ir.Model, plans: Mapping[str, StoragePlan], names: Collection[str] | None = None,
               kinds: Collection[str] = KINDS) -> dict[str, Decision]:
    """`decide` for every weight of `model` (of `names`, default all); weights left as they are
    (no encoding smaller) have no entry."""
    decisions = {}
    for weight in find_weights(model):
        if names is not None and weight.name not in names:
            continue
        decision = decide(weight, np.asarray(weight.numpy(), np.float32), plans.get(weight.name, StoragePlan()), kinds)
        if decision is not None:
            decisions[weight.name] = decision
    return decisions


def decide(weight: Weight, values: np.ndarray, plan: StoragePlan, kinds: Collection[str] = KINDS) -> Decision | None:
    """The encoding of one pruned, clustered weight (`values`: its working float32 values), among
    `kinds`; None when none applies or none is smaller than what it replaces."""
    restore = weight.storage.restore_bytes()
    choices = encoding.encoding_choices(values, weight.itemsize, restore)
    smallest = min(c.bytes for c in choices.values())
    if "sparse" in kinds and plan.outlier_threshold is None and "sparse" in choices:
        if choices["sparse"].bytes < min(c.bytes for k, c in choices.items() if k != "sparse"):
            return Decision("sparse", plan, choices)
    for kind in _preferred(kinds):
        if kind == "outliers" and plan.outlier_threshold is not None:
            split = outliers.layout(values, plan.outlier_threshold)
            fits = split is not None and split.bytes + restore < smallest
        elif kind == "rows":
            fits = row_table(weight, values, plan) is not None
        elif kind == "vector":
            vector = vector_codes(values, plan.vector_dim)
            fits = vector is not None and vector[3] + restore < smallest
        elif kind == "grouped":
            grouped = grouped_codes(values, plan.groups, plan.group_axis)
            fits = grouped is not None and grouped[1] + restore < smallest
        else:
            fits = False
        if fits:
            return Decision(kind, plan, choices)
    options = [choices[k] for k in ("lookup", "linear") if k in choices and k in kinds]
    if options:
        choice = min(options, key=lambda c: c.bytes)
        if choice.bytes < choices["dense"].bytes:
            return Decision(choice.kind, plan, choices)
    return None


def _preferred(kinds: Collection[str]) -> Iterable[str]:
    return (kind for kind in ("outliers", "rows", "vector", "grouped") if kind in kinds)


def row_table(weight: Weight, values: np.ndarray, plan: StoragePlan):
    """(the table's row Gathers, its `row_lookup.RowCodes`, bytes, dense bytes) for an embedding
    table read only by row Gathers whose row-decoded form is smaller than dense, else None."""
    if weight.role != "embedding" or plan.vector_dim > 1 or not weight.storage.plain:
        return None  # row decoding yields float32 rows; other types are decoded whole at load
    gathers = row_lookup.row_gathers(weight.value)
    if gathers is None:
        return None
    groups, axis = plan.groups, plan.group_axis
    if groups > 1 and (values.size if axis == 0 else values.shape[-1]) % groups:
        groups = 1
    table = row_lookup.row_codes(values, groups, axis)
    if table is None:
        return None
    size = row_lookup.row_lookup_bytes(values.shape, table.bits, table.codebooks.size, table.groups, table.axis == 1)
    dense = encoding.dense_bytes(values.size, values.ndim)
    return None if size >= dense else (gathers, table, size, dense)


def vector_codes(values: np.ndarray, dim: int):
    """(codes, codebook [K, dim], bits, bytes) of a vector lookup over runs of `dim` entries, or
    None when `dim` <= 1, does not divide the weight, or there are more than 256 distinct runs."""
    if dim <= 1 or values.size % dim:
        return None
    codebook, codes = unique_rows(values.reshape(-1, dim))
    if codebook.shape[0] > encoding.MAX_CODEBOOK:
        return None
    bits = encoding.bits_for(codebook.shape[0])
    price = encoding.vector_lookup_bytes(values.size, dim, bits, codebook.shape[0], values.ndim)
    return codes.ravel(), codebook, bits, price


def grouped_codes(values: np.ndarray, groups: int, axis: int):
    """(`row_lookup.RowCodes`, bytes) of a grouped lookup, or None when `groups` <= 1, the groups
    do not divide the weight, or a group has more than 256 distinct values."""
    if groups <= 1 or (axis == 1 and values.ndim < 2) or (values.size if axis == 0 else values.shape[-1]) % groups:
        return None
    table = row_lookup.row_codes(values, groups, axis)
    if table is None:
        return None
    columns = None if axis == 0 else values.shape[-1]
    return table, encoding.grouped_lookup_bytes(values.size, table.bits, groups, table.codebooks.shape[1], values.ndim,
                                                columns)


def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`np.unique(rows, axis=0, return_inverse=True)` for a 2-D array, much faster on millions of
    rows: each column is ranked with a 1-D unique and the ranks folded into one dense integer
    key, most significant column first, so the rows come out in the same lexicographic order."""
    rows = np.asarray(rows)
    if rows.shape[0] == 0 or rows.ndim != 2:
        unique, inverse = np.unique(rows, axis=0, return_inverse=True)
        return unique, inverse.ravel()
    key = np.zeros(rows.shape[0], dtype=np.int64)
    bound = 1  # key < bound
    for column in range(rows.shape[1]):
        levels = np.unique(rows[:, column])
        if bound * levels.size >= 1 << 62:  # re-rank densely before the mixed-radix key overflows
            _, key = np.unique(key, return_inverse=True)
            key = key.ravel()
            bound = int(key.max()) + 1
        key = key * levels.size + np.searchsorted(levels, rows[:, column])
        bound *= levels.size
    _, key = np.unique(key, return_inverse=True)
    key = key.ravel()
    first = np.zeros(int(key.max()) + 1, dtype=np.int64)
    first[key[::-1]] = np.arange(rows.shape[0] - 1, -1, -1)  # first row holding each key
    return rows[first], key
