"""Embedding tables decoded per looked-up row at run time, not at session creation.

A table read only by Gather (axis 0) never needs all its rows at once: the packed codes stay
packed in the session and each run decodes just the rows its indices select. Decoding the
whole table at load would cost far more than the file saves: MiniLM-L3's 30522 x 384 word
embeddings took ~0.5 s to fold at every session creation, the original model loads in 0.09 s.

Layout: row r's D codes are packed on their own (planar within the row, see
`encoding.pack_codes`) into a [V, 1, W] word tensor (or [V, D] bytes for 8-bit codes), so a
Gather of whole rows by the indices yields the rows' words; the [G, K] codebooks are flattened
at load. Per use:

    Gather(words, ids) -> BitShift([K, 1] shifts) -> Cast(UINT8) -> Mod(2^bits)
        -> Reshape [..., K*W] -> Slice [..., :D] -> Cast(INT32)
        [+ group offset: ((Mod(ids, V) * D + column) // M) * K, or the column group's offset]
        -> Gather(flat codebooks) -> [..., D]

The decode ends in a Gather on a float codebook; `decoded_tables` finds these subgraphs again
(for `onnxcomp inspect` and the mobile export) by that shape.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import onnx_ir as ir

from onnxcomp.encodings import encoding

WORD_TYPES = {8: np.uint8, 32: np.uint32, 64: np.uint64}
INDEX_TYPES = (ir.DataType.INT32, ir.DataType.INT64)


def row_gathers(value: ir.Value) -> list[ir.Node] | None:
    """The Gather nodes reading a 2-D table by rows, when they are its only readers and their
    indices have a known rank; else None (the table is then decoded at load)."""
    shape = value.shape
    if value.is_graph_output() or shape is None or len(shape) != 2:
        return None
    gathers = []
    for node, index in value.uses():
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or index != 0 or node.attributes.get_int("axis", 0) not in (0, -2):
            return None
        ids = node.inputs[1]
        if ids is None or ids.shape is None or ids.const_value is not None:
            return None
        if ids.dtype is not None and ids.dtype not in INDEX_TYPES:
            return None
        gathers.append(node)
    return gathers or None


def row_lookup_bytes(shape: tuple[int, ...], bits: int, codebook_entries: int, groups: int = 1,
                     column_groups: bool = False) -> int:
    """Serialized bytes of a row-decoded table: V rows of packed words, the float codebooks,
    and the per-use decode nodes with their small constants (one use)."""
    rows, columns = int(shape[0]), int(shape[1])
    packing = encoding.choose_packing(columns, bits)
    payload = rows * packing.payload_bytes
    nodes = 4  # Gather(words), Cast, Gather(codebook); Reshape of the [G, K] codebooks at load
    if packing.per_word > 1:
        nodes += encoding.unpack_nodes(packing) + 1 + (1 if packing.words * packing.per_word != columns else 0)
    if groups > 1:
        # Add(offsets) | Cast, Mod, Reshape, Mul, Add, Div, Mul + Add: 8 nodes, priced as 6 (68 B
        # short; the fit loop measures the file and absorbs it)
        nodes += 1 if column_groups else 6
    constants = 6 * encoding.INITIALIZER_BYTES + 64 + (4 * columns if groups > 1 else 0)
    return payload + 4 * codebook_entries + nodes * encoding.NODE_BYTES + constants


@dataclasses.dataclass
class RowCodes:
    """A clustered weight's codes (its layout) and codebooks [G, K]: group g is row g of
    `quantize.group_view(weight, G, axis)` (axis 0: consecutive flat entries; axis 1: consecutive
    columns)."""

    codes: np.ndarray
    codebooks: np.ndarray
    bits: int
    axis: int = 0

    @property
    def groups(self) -> int:
        return int(self.codebooks.shape[0])


def pack_rows(codes: np.ndarray, bits: int) -> np.ndarray:
    """[V, D] codes -> [V, 1, W] words, each row packed planar on its own ([V, D] bytes when a
    word holds one code)."""
    rows, columns = codes.shape
    packing = encoding.choose_packing(columns, bits)
    if packing.per_word == 1:
        return codes.astype(np.uint8)
    padded = np.zeros((rows, packing.per_word * packing.words), dtype=np.uint64)
    padded[:, :columns] = codes
    grid = padded.reshape(rows, packing.per_word, packing.words)
    shifts = (np.arange(packing.per_word, dtype=np.uint64) * np.uint64(bits)).reshape(1, -1, 1)
    words = np.bitwise_or.reduce(grid << shifts, axis=1)
    return words.astype(WORD_TYPES[packing.word_bits]).reshape(rows, 1, packing.words)


def unpack_rows(words: np.ndarray, bits: int, columns: int) -> np.ndarray:
    """Numpy reference of the per-row unpacking (tests)."""
    packing = encoding.choose_packing(columns, bits)
    if packing.per_word == 1:
        return np.asarray(words).astype(np.int64)
    words = np.asarray(words).astype(np.uint64)
    shifts = (np.arange(packing.per_word, dtype=np.uint64) * np.uint64(bits)).reshape(-1, 1)
    fields = (words >> shifts) & np.uint64((1 << bits) - 1)  # [V, K, W]
    return fields.reshape(words.shape[0], -1)[:, :columns].astype(np.int64)


class RowDecoder:
    """Replaces every row Gather of one table by a run-time decode of the gathered rows."""

    def __init__(self, graph: ir.Graph, builder):
        self.graph = graph
        self.builder = builder  # a decode.DecodeBuilder: names and shared constants

    def replace(self, gathers: list[ir.Node], table: RowCodes, stem: str) -> None:
        rows, columns = table.codes.shape
        words = self.builder.initializer(pack_rows(table.codes, table.bits), stem)
        # Stored [G, K] (so `inspect` reads K off the shape), flattened by a Reshape folded at load.
        codebooks = self.builder.initializer(np.ascontiguousarray(table.codebooks, np.float32), stem + "_cb")
        flat_codebooks = self.builder.op("Reshape", [codebooks, self.builder.constant(np.array([-1], np.int64), "m1")])
        packing = encoding.choose_packing(columns, table.bits)
        for gather in gathers:
            nodes: list[ir.Node] = []  # read the ids: inserted before the Gather, not at load
            op = functools.partial(self.builder.op, into=nodes)
            ids = gather.inputs[1]
            rank = len(ids.shape)
            picked = op("Gather", [words, ids], axis=0)
            if packing.per_word > 1:
                rights = (table.bits * np.arange(packing.per_word, dtype=np.uint64)).astype(WORD_TYPES[packing.word_bits])
                fields = op("BitShift", [picked, self.builder.constant(rights.reshape(-1, 1), "sr")],
                                  direction="RIGHT")
                if packing.word_bits > 8:
                    fields = op("Cast", [fields], to=ir.DataType.UINT8)
                if table.bits < 8:
                    fields = op("Mod", [fields, self.builder.constant(np.array(1 << table.bits, np.uint8), "mod")])
                picked = op("Reshape", [fields, self.builder.constant(np.array([0] * rank + [-1], np.int64),
                                                                                    f"rs{rank}")])
                if packing.words * packing.per_word != columns:
                    picked = op("Slice", [picked, self.builder.constant(np.array([0], np.int64), "z"),
                                                       self.builder.constant(np.array([columns], np.int64), "n"),
                                                       self.builder.constant(np.array([-1], np.int64), "m1")])
            # INT32 while the flat entry index fits: the full-size index arithmetic runs on every
            # call, and half the bytes of INT64 is half its memory traffic.
            codes = op("Cast", [picked], to=ir.DataType.INT32 if rows * columns < 2**31 else ir.DataType.INT64)
            if table.groups > 1:
                codes = op("Add", [codes, self._offsets(op, table, ids, rows, columns, stem)])
            decoded = op("Gather", [flat_codebooks, codes], axis=0)
            self.graph.insert_before(gather, nodes)
            decoded.type = gather.outputs[0].type or ir.TensorType(ir.DataType.FLOAT)
            _take_over(self.graph, gather, decoded)

    def _offsets(self, op, table: RowCodes, ids: ir.Value, rows: int, columns: int,
                 stem: str) -> ir.Value:
        """Each gathered code's offset into the flat codebooks: group * K."""
        size = int(table.codebooks.shape[1])
        wide = np.int32 if rows * columns < 2**31 else np.int64
        if table.axis == 1:  # column groups: the same offset for a column in every row
            per = columns // table.groups
            offsets = (np.arange(columns, dtype=wide) // per * size)
            return self.builder.initializer(offsets, stem + "_o")
        entries = rows * columns // table.groups
        index = op("Cast", [ids], to=ir.DataType.from_numpy(np.dtype(wide)))
        row = op("Mod", [index, self.builder.constant(np.array(rows, wide), "nr")])  # negative ids count from the end
        row = op("Reshape", [row, self.builder.constant(np.array([0] * len(ids.shape) + [1], np.int64),
                                                                      f"rs{len(ids.shape)}u")])
        flat = op("Add", [op("Mul", [row, self.builder.constant(np.array(columns, wide), "nc")]),
                                       self.builder.constant(np.arange(columns, dtype=wide), "col")])
        group = op("Div", [flat, self.builder.constant(np.array(entries, wide), "ge")])
        return op("Mul", [group, self.builder.constant(np.array(size, wide), "gk")])


def _take_over(graph: ir.Graph, gather: ir.Node, value: ir.Value) -> None:
    """Make `value` stand for the Gather's output everywhere (a graph output keeps its name) and
    remove the Gather."""
    output = gather.outputs[0]
    value.shape = output.shape
    if output.is_graph_output():
        outputs = graph.outputs
        outputs[outputs.index(output)] = value
        name = output.name
        output.name = None
        value.name = name
    output.replace_all_uses_with(value)
    graph.remove(gather, safe=True)


def row_codes(values: np.ndarray, groups: int = 1, axis: int = 0) -> RowCodes | None:
    """Codes and codebooks of a clustered weight (each group <= 256 distinct values), or None.
    Groups as in `onnxcomp.encodings.quantize.group_view`; used for row-decoded tables and for grouped
    lookups decoded at load."""
    from onnxcomp.encodings.quantize import from_group_view, group_view

    if groups <= 1:
        unique, codes = np.unique(values, return_inverse=True)
        if unique.size > encoding.MAX_CODEBOOK:
            return None
        return RowCodes(codes.reshape(values.shape), unique[None, :], encoding.bits_for(unique.size), 0)
    parts = group_view(values, groups, axis)
    tables = [np.unique(part) for part in parts]
    size = max(table.size for table in tables)
    if size > encoding.MAX_CODEBOOK:
        return None
    codebooks = np.stack([np.pad(table, (0, size - table.size), mode="edge") for table in tables])
    codes = from_group_view(np.stack([np.searchsorted(table, part) for table, part in zip(tables, parts)]),
                            values.shape, axis)
    return RowCodes(codes, codebooks, encoding.bits_for(size), axis)


def decoded_tables(graph: ir.Graph) -> list[tuple[ir.Node, ir.Node, ir.Value]]:
    """(first Gather, last Gather, ids) of every run-time row decode in a graph: a Gather of
    rows of an integer initializer by non-constant indices, followed (through unpacking and
    offset nodes) by a Gather on a float initializer (or its load-time Reshape)."""
    found = []
    for node in graph:
        if node.op_type != "Gather" or len(node.inputs) < 2:
            continue
        table, ids = node.inputs[0], node.inputs[1]
        if table is None or table.const_value is None or ids is None or ids.const_value is not None:
            continue
        if table.const_value.dtype not in (ir.DataType.UINT8, ir.DataType.UINT32, ir.DataType.UINT64):
            continue
        current, last = node.outputs[0], None
        for _ in range(12):
            uses = list(current.uses())
            if len(uses) != 1:
                break
            consumer, index = uses[0]
            if consumer.op_type == "Gather" and index == 1:
                codebook = consumer.inputs[0]
                producer = codebook.producer() if codebook is not None else None
                if producer is not None and producer.op_type == "Reshape":  # [G, K] codebooks flattened at load
                    codebook = producer.inputs[0]
                if codebook is not None and codebook.const_value is not None and codebook.const_value.dtype == ir.DataType.FLOAT:
                    last = consumer
                break
            current = consumer.outputs[0]
        if last is not None:
            found.append((node, last, ids))
    return found


# A table is split only when the samples read a small part of it often: at most this share of
# its rows, and at least this many rows in all.
SPLIT_MAX_HOT_SHARE = 0.5
SPLIT_MIN_ROWS = 1024
# Graph bytes the split adds besides the row map: ~10 nodes and 5 small constants per use.
SPLIT_GRAPH_BYTES = 10 * encoding.NODE_BYTES + 5 * encoding.INITIALIZER_BYTES + 64


def split_table(model: ir.Model, name: str, hot: np.ndarray) -> tuple[str, str] | None:
    """Split a row-read table into the rows in `hot` (a boolean per row) and the rest, as two
    tables each read by row Gathers, so each can get its own bits.

    Per use: idx = Cast(Gather(row map, ids)); rows idx < H come from the hot table (index
    idx), the others from the cold one (index idx - H); both are gathered with their index
    wrapped into range (Mod) and Where picks. The row map is a [V] uint16 (int32 above 65,535
    rows) initializer. Returns the two tables' names, or None when the table is not read by row
    Gathers only.
    """
    value = model.graph.initializers.get(name)
    gathers = row_gathers(value) if value is not None else None
    if gathers is None or value.const_value is None:
        return None
    table = value.const_value.numpy()
    hot = np.asarray(hot, bool)
    count, hot_count = table.shape[0], int(hot.sum())
    if not 0 < hot_count < count:
        return None
    order = np.concatenate([np.flatnonzero(hot), np.flatnonzero(~hot)])
    mapping = np.empty(count, np.int64)
    mapping[order] = np.arange(count)
    mapping = mapping.astype(np.uint16 if count <= 65535 else np.int32)

    def register(array: np.ndarray, stem: str) -> ir.Value:
        unique = stem
        while unique in model.graph.initializers:
            unique += "_"
        result = ir.Value(name=unique, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                          const_value=ir.tensor(array, name=unique))
        model.graph.register_initializer(result)
        return result

    hot_table = register(np.ascontiguousarray(table[hot]), name + "_hot")
    cold_table = register(np.ascontiguousarray(table[~hot]), name + "_cold")
    row_map = register(mapping, name + "_map")
    constant = {key: register(np.array(v, np.int64), f"{name}_{key}") for key, v in
                (("h", hot_count), ("c", count - hot_count))}
    for gather in gathers:
        ids = gather.inputs[1]
        rank = len(ids.shape)
        nodes: list[ir.Node] = []

        def op(op_type, inputs, shape=None, **attributes):
            node = ir.Node("", op_type, inputs, attributes=ir.convenience.convert_attributes(attributes), num_outputs=1)
            nodes.append(node)
            out = node.outputs[0]
            if shape is not None:
                out.shape = shape
                out.type = ir.TensorType(ir.DataType.INT64)
            return out

        index = op("Cast", [op("Gather", [row_map, ids], axis=0)], ids.shape, to=ir.DataType.INT64)
        hot_rows = op("Gather", [hot_table, op("Mod", [index, constant["h"]], ids.shape)], axis=0)
        cold_rows = op("Gather", [cold_table, op("Mod", [op("Sub", [index, constant["h"]]), constant["c"]], ids.shape)], axis=0)
        shape = register(np.array([0] * rank + [1], np.int64), f"{name}_rs{rank}")
        pick = op("Reshape", [op("Less", [index, constant["h"]]), shape])
        picked = op("Where", [pick, hot_rows, cold_rows])
        model.graph.insert_before(gather, nodes)
        picked.type = gather.outputs[0].type
        _take_over(model.graph, gather, picked)
    model.graph.initializers.pop(name)
    return hot_table.name, cold_table.name
