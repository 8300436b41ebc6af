"""InsertDequantizeLookupPass: store clustered weights as bit-packed codes plus a codebook."""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping

import numpy as np
import onnx_ir as ir

from onnxcomp.encodings import encoding, outliers, row_lookup
from onnxcomp.encodings.decode import DECODE_OPSET, DecodeBuilder, ensure_opset, rewire
from onnxcomp.passes.weight_pass import StatsPassResult, WeightPass
from onnxcomp.model.weights import find_weights

logger = logging.getLogger(__name__)


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
    """

    def __init__(self, groups: Mapping[str, int | tuple[int, int]] | None = None,
                 vectors: Mapping[str, int] | None = None, names: Collection[str] | None = None,
                 outliers: Mapping[str, float] | None = None):
        super().__init__()
        self.outliers = dict(outliers or {})
        self.names = None if names is None else frozenset(names)
        self.vectors = dict(vectors or {})
        self.groups = {name: plan if isinstance(plan, tuple) else (plan, 0) for name, plan in (groups or {}).items()}

    def call(self, model: ir.Model) -> StatsPassResult:
        builder = DecodeBuilder(model.graph)
        rows = []
        for weight in find_weights(model):
            if self.names is not None and weight.name not in self.names:
                continue
            values = np.asarray(weight.numpy(), np.float32)
            if self._outliers(model, builder, weight, values, rows):
                continue
            if self._rows(model, builder, weight, values, rows):
                continue
            vector = self._vector(weight.name, values)
            if vector is not None:
                codes, codebook, bits, size = vector
                plain = encoding.encoding_choices(values, weight.itemsize, weight.storage.restore_bytes())
                if size + weight.storage.restore_bytes() < min(c.bytes for c in plain.values()):
                    decoded = builder.vector_lookup(codes, codebook, bits, weight.shape, weight.name)
                    rewire(model, weight, decoded, builder)
                    rows.append({"name": weight.name, "encoding": "vector", "bits": bits, "vector_dim": codebook.shape[1],
                                 "levels": int(codebook.shape[0]), "bytes_before": plain["dense"].bytes, "bytes_after": size})
                    continue
            grouped = self._grouped(weight.name, values)
            if grouped is not None:
                codes, codebooks, bits, size, axis = grouped
                dense = encoding.dense_bytes(values.size, values.ndim, weight.itemsize)
                plain = encoding.encoding_choices(values, weight.itemsize, weight.storage.restore_bytes())
                if size + weight.storage.restore_bytes() < min(c.bytes for c in plain.values()):
                    decoded = builder.grouped_lookup(codes, codebooks, bits, weight.shape, weight.name, axis)
                    rewire(model, weight, decoded, builder)
                    rows.append({"name": weight.name, "encoding": "grouped", "bits": bits, "groups": len(codebooks),
                                 "group_axis": axis,
                                 "levels": int(codebooks.size), "bytes_before": dense, "bytes_after": size})
                    continue
            choices = encoding.encoding_choices(values, weight.itemsize, weight.storage.restore_bytes())
            options = [choices[k] for k in ("lookup", "linear") if k in choices]
            if not options:
                logger.debug("%s: %s has too many distinct values to encode", weight.name, weight.shape)
                continue
            choice = min(options, key=lambda c: c.bytes)
            if choice.bytes >= choices["dense"].bytes:
                logger.debug("%s: encoding would not save bytes", weight.name)
                continue
            unique, codes = np.unique(values, return_inverse=True)
            stem = weight.name
            if choice.kind == "linear":
                zero, scale, grid_codes = encoding.uniform_grid(unique, encoding.MAX_GRID_BITS)  # type: ignore[misc]
                decoded = builder.linear(grid_codes[codes], zero, scale, choice.bits, weight.shape, stem)
            else:
                decoded = builder.lookup(codes, unique, choice.bits, weight.shape, stem)
            rewire(model, weight, decoded, builder)
            rows.append({"name": weight.name, "encoding": choice.kind, "bits": choice.bits,
                         "levels": choice.levels, "bytes_before": choices["dense"].bytes,
                         "bytes_after": choice.bytes})
        builder.flush()
        if rows:
            ensure_opset(model, DECODE_OPSET)
        return StatsPassResult(model, modified=bool(rows), rows=rows)

    def _outliers(self, model: ir.Model, builder: DecodeBuilder, weight, values: np.ndarray, report: list[dict]) -> bool:
        """Encode a planned dense-and-sparse weight; False when not planned or not smaller."""
        threshold = self.outliers.get(weight.name)
        if threshold is None:
            return False
        plain = encoding.encoding_choices(values, weight.itemsize, weight.storage.restore_bytes())
        plan = outliers.layout(values, threshold)
        if plan is None or plan.bytes + weight.storage.restore_bytes() >= min(c.bytes for c in plain.values()):
            logger.debug("%s: dense-and-sparse storage would not be the smallest", weight.name)
            return False
        rewire(model, weight, outliers.build(builder, plan, weight.name), builder)
        report.append({"name": weight.name, "encoding": "outliers", "bits": plan.bits, "outliers": plan.outliers,
                       "bytes_before": plain["dense"].bytes, "bytes_after": plan.bytes})
        return True

    def _rows(self, model: ir.Model, builder: DecodeBuilder, weight, values: np.ndarray, report: list[dict]) -> bool:
        """Encode an embedding table read only by row Gathers for run-time row decoding
        (`onnxcomp.encodings.row_lookup`); False when it is not such a table or the encoding saves nothing."""
        if weight.role != "embedding" or weight.name in self.vectors or not weight.storage.plain:
            return False  # row decoding yields float32 rows; other types are decoded whole at load
        gathers = row_lookup.row_gathers(weight.value)
        if gathers is None:
            return False
        groups, axis = self.groups.get(weight.name, (1, 0))
        if groups > 1 and (values.size if axis == 0 else values.shape[-1]) % groups:
            groups = 1
        table = row_lookup.row_codes(values, groups, axis)
        if table is None:
            return False
        size = row_lookup.row_lookup_bytes(values.shape, table.bits, table.codebooks.size, table.groups, table.axis == 1)
        dense = encoding.dense_bytes(values.size, values.ndim)
        if size >= dense:
            return False
        row_lookup.RowDecoder(model.graph, builder).replace(gathers, table, weight.name)
        model.graph.initializers.pop(weight.name)
        report.append({"name": weight.name, "encoding": "grouped" if table.groups > 1 else "lookup", "bits": table.bits,
                       "groups": table.groups, "group_axis": table.axis, "levels": int(table.codebooks.size),
                       "rows": "run time", "bytes_before": dense, "bytes_after": size})
        return True

    def _vector(self, name: str, values: np.ndarray):
        """(codes, codebook [K, dim], bits, estimated bytes) for a planned vector lookup, else None."""
        dim = self.vectors.get(name, 1)
        if dim <= 1 or values.size % dim:
            return None
        codebook, codes = unique_rows(values.reshape(-1, dim))
        if codebook.shape[0] > encoding.MAX_CODEBOOK:
            logger.debug("%s: more than %d distinct vectors", name, encoding.MAX_CODEBOOK)
            return None
        bits = encoding.bits_for(codebook.shape[0])
        price = encoding.vector_lookup_bytes(values.size, dim, bits, codebook.shape[0], values.ndim)
        return codes.ravel(), codebook, bits, price

    def _grouped(self, name: str, values: np.ndarray):
        """(codes in weight layout, codebooks [G, K], bits, estimated bytes, axis) for a planned
        grouped lookup, else None."""
        groups, axis = self.groups.get(name, (1, 0))
        if groups <= 1 or (axis == 1 and values.ndim < 2) or (values.size if axis == 0 else values.shape[-1]) % groups:
            return None
        table = row_lookup.row_codes(values, groups, axis)
        if table is None:
            logger.debug("%s: a group has more than %d distinct values", name, encoding.MAX_CODEBOOK)
            return None
        columns = None if axis == 0 else values.shape[-1]
        price = encoding.grouped_lookup_bytes(values.size, table.bits, groups, table.codebooks.shape[1], values.ndim, columns)
        return table.codes, table.codebooks, table.bits, price, axis
