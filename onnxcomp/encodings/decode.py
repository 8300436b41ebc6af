"""Builders for decode subgraphs (codes in initializers -> dense float weight).

The subgraphs use only standard ops available from opset 11 on and INT32
indices (half the transient memory of INT64 while ONNX Runtime folds them at load).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxcomp.encodings import encoding

DECODE_OPSET = 11


def ensure_opset(model: ir.Model, version: int) -> None:
    """Raise the default-domain opset to `version` if lower (decode ops need opset 11)."""
    current = model.opset_imports.get("", 1)
    if current < version:
        model.opset_imports[""] = version


def _names_in(graph: ir.Graph) -> set[str]:
    """Every node and value name of `graph` and its subgraphs (ONNX wants each unique)."""
    names = {v.name for v in (*graph.inputs, *graph.initializers.values()) if v.name}
    for node in ir.traversal.RecursiveGraphIterator(graph):
        if node.name:
            names.add(node.name)
        names.update(o.name for o in node.outputs if o.name)
    return names


class DecodeBuilder:
    """Collects decode nodes and shared constants for one graph; insert them with `flush`."""

    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self.nodes: list[ir.Node] = []
        self._constants: dict[tuple, ir.Value] = {}
        self._counter = 0
        # Several builders (and passes) add nodes to one graph: a name already there would make
        # two nodes (or values) of the same name, which ONNX Runtime refuses when names are kept.
        self._taken = _names_in(graph)

    def _name(self, stem: str) -> str:
        while True:
            self._counter += 1
            name = f"{stem}_{self._counter}"
            if name not in self._taken:
                self._taken.add(name)
                return name

    def initializer(self, array: np.ndarray, stem: str) -> ir.Value:
        name = self.graph_unique(stem)
        value = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                         const_value=ir.tensor(array, name=name))
        self.graph.register_initializer(value)
        return value

    def graph_unique(self, stem: str) -> str:
        name = self._name(stem)
        while name in self.graph.initializers:
            name = self._name(stem)
        return name

    def constant(self, array: np.ndarray, stem: str) -> ir.Value:
        """A small initializer shared by every decode subgraph that needs the same content."""
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.initializer(array, stem)
        return self._constants[key]

    def op(self, op_type: str, inputs: list[ir.Value], into: list[ir.Node] | None = None, **attributes) -> ir.Value:
        """A new node's output; the node joins the load-time decode nodes, or `into` (nodes the
        caller inserts itself, e.g. run-time decodes that read graph inputs)."""
        node = ir.Node("", op_type, inputs, attributes=ir.convenience.convert_attributes(attributes), num_outputs=1,
                       name=self._name(op_type))
        node.outputs[0].name = self._name(op_type.lower())
        (self.nodes if into is None else into).append(node)
        return node.outputs[0]

    def flush(self) -> None:
        """Insert the collected nodes at the start of the graph (their inputs are all initializers)."""
        if not self.nodes:
            return
        first = next(iter(self.graph), None)
        if first is None:
            self.graph.extend(self.nodes)
        else:
            self.graph.insert_before(first, self.nodes)
        self.nodes = []

    # -- pieces ---------------------------------------------------------------------------

    def unpacked_codes(self, codes: np.ndarray, bits: int, stem: str, flat: bool) -> ir.Value:
        """Store codes packed; return the value of the unpacked integer codes.

        The result is [per_word, words] (planar, see `encoding.pack_codes`; or [count] when `flat`,
        or when padding had to be cut); its row-major order is the codes' order.
        """
        count = int(codes.size)
        words, packing = encoding.pack_codes(codes, bits)
        np_word = encoding.WORD_DTYPES[packing.word_bits][0]
        if packing.per_word == 1:
            return self.initializer(words.reshape(-1).astype(np_word), stem)
        packed = self.initializer(words, stem)
        # Shift each field to the bottom of its word, narrow to UINT8 (codes of <= 8 bits; UINT16
        # for 9-16 bits) and drop the bits above the field with Mod: every full-size intermediate
        # after the shift is one (two) byte(s) per code. ONNX Runtime folds node by node, copying
        # each output several times, so session creation pays for the bytes of every intermediate
        # (facts note).
        narrow_bits = encoding.narrow_bits(bits)
        narrow, np_narrow = (ir.DataType.UINT8, np.uint8) if narrow_bits == 8 else (ir.DataType.UINT16, np.uint16)
        rights = (bits * np.arange(packing.per_word, dtype=np.uint64)).astype(np_word).reshape(-1, 1)  # planar
        fields = self.op("BitShift", [packed, self.constant(rights, "sr")], direction="RIGHT")
        if packing.word_bits > narrow_bits:
            fields = self.op("Cast", [fields], to=narrow)
        unpacked = fields if bits == narrow_bits else self.op("Mod", [fields, self.constant(np.array(1 << bits, np_narrow), "mod")])
        padded = packing.words * packing.per_word != count
        if not (flat or padded):
            return unpacked
        flat_value = self.op("Reshape", [unpacked, self.constant(np.array([-1], np.int64), "m1")])
        if padded:
            flat_value = self.op("Slice", [flat_value, self.constant(np.array([0], np.int64), "z"),
                                           self.constant(np.array([count], np.int64), "n")])
        return flat_value

    def reshape_to(self, value: ir.Value, shape: tuple[int, ...]) -> ir.Value:
        return self.op("Reshape", [value, self.constant(np.array(shape, np.int64), "shp")])

    # -- encodings ------------------------------------------------------------------------

    def lookup(self, codes: np.ndarray, codebook: np.ndarray, bits: int, shape: tuple[int, ...], stem: str) -> ir.Value:
        """Flat codes + codebook -> GatherElements -> Reshape.

        GatherElements, not Gather: ONNX Runtime's Gather copies each index's slice separately
        (~8 ns per scalar), GatherElements runs one tight loop (~0.6 ns), which matters for the
        load time of layers with 10^5-10^7 weights.
        """
        if bits == 8 or encoding.choose_packing(codes.size, bits).per_word == 1:
            indices = self.op("Cast", [self.initializer(codes.ravel().astype(np.uint8), stem)], to=ir.DataType.INT32)
        else:
            indices = self.op("Cast", [self.unpacked_codes(codes, bits, stem, flat=True)], to=ir.DataType.INT32)
        looked_up = self.gather_elements(self.initializer(codebook.astype(np.float32), stem + "_cb"), indices)
        return looked_up if len(shape) == 1 else self.reshape_to(looked_up, shape)

    def gather_elements(self, table: ir.Value, indices: ir.Value) -> ir.Value:
        """table[indices] for a 1-D table and 1-D INT32 indices."""
        return self.op("GatherElements", [table, indices], axis=0)

    def vector_lookup(self, codes: np.ndarray, codebook: np.ndarray, bits: int, shape: tuple[int, ...],
                      stem: str) -> ir.Value:
        """One code per `dim` consecutive entries -> Gather(rows of the [K, dim] codebook) -> Reshape.

        Where `encoding.vector_pair_bits` allows (same payload bytes or fewer), two consecutive codes
        a, b are stored as one code a + K * b and gathered from a [K * K, 2 * dim] table of vector
        pairs that the graph builds from the stored codebook at load (Expand, Concat: a few KB).
        ONNX Runtime's Gather pays ~8 ns per index while folding, so half the indices (and half
        the INT32 index bytes) take ~1 ms off LeNet-5's session creation."""
        codebook = np.asarray(codebook, np.float32)
        pair_bits = encoding.vector_pair_bits(int(codes.size), bits, *codebook.shape)
        if pair_bits:
            return self._vector_pairs(np.asarray(codes).ravel(), codebook, pair_bits, shape, stem)
        table = self.initializer(codebook, stem + "_cb")
        if bits == 8 or encoding.choose_packing(codes.size, bits).per_word == 1:
            indices = self.op("Cast", [self.initializer(codes.ravel().astype(np.uint8), stem)], to=ir.DataType.INT32)
        else:
            indices = self.op("Cast", [self.unpacked_codes(codes, bits, stem, flat=False)], to=ir.DataType.INT32)
        return self.reshape_to(self.op("Gather", [table, indices], axis=0), shape)

    def _vector_pairs(self, codes: np.ndarray, codebook: np.ndarray, pair_bits: int, shape: tuple[int, ...],
                      stem: str) -> ir.Value:
        """Codes a, b (even, odd index) -> pair code a + K * b -> Gather([K * K, 2 * dim] pair table) -> Reshape."""
        rows, dim = codebook.shape
        codes = codes.astype(np.int64)
        pairs = codes[0::2] + rows * codes[1::2]
        table = self.initializer(codebook, stem + "_cb")
        cube = self.constant(np.array([rows, rows, dim], np.int64), "kkd")
        firsts = self.op("Expand", [table, cube])  # [b, a] -> codebook[a]
        seconds = self.op("Expand", [self.reshape_to(table, (rows, 1, dim)), cube])  # [b, a] -> codebook[b]
        pair_table = self.reshape_to(self.op("Concat", [firsts, seconds], axis=2), (rows * rows, 2 * dim))
        indices = self.op("Cast", [self.unpacked_codes(pairs, pair_bits, stem, flat=True)], to=ir.DataType.INT32)
        return self.reshape_to(self.op("Gather", [pair_table, indices], axis=0), shape)

    def grouped_lookup(self, codes: np.ndarray, codebooks: np.ndarray, bits: int, shape: tuple[int, ...],
                       stem: str, axis: int = 0) -> ir.Value:
        """Codes (weight layout) of group g index codebook row g of the [G, K] codebooks.

        axis 0 (G groups of consecutive entries): Reshape [G, M] -> Cast(INT32) ->
        GatherElements(codebooks, axis 1) -> Reshape. axis 1 (G groups of consecutive columns):
        Reshape [size / D, D] -> Cast(INT32) -> Add(INT32 offsets [1, D] into the flattened
        codebooks) -> Reshape [-1] -> GatherElements -> Reshape. Reshapes run on the one-byte
        codes, before the Cast widens them.
        """
        groups, size = codebooks.shape
        if axis == 0:
            layout = (groups, int(codes.size) // groups)
        else:
            columns = int(shape[-1])
            layout = (int(codes.size) // columns, columns)
        if bits == 8 or encoding.choose_packing(codes.size, bits).per_word == 1:
            narrow = self.initializer(codes.reshape(layout).astype(np.uint8), stem)
        else:
            narrow = self.reshape_to(self.unpacked_codes(codes, bits, stem, flat=False), layout)
        indices = self.op("Cast", [narrow], to=ir.DataType.INT32)
        if axis == 0:
            table = self.initializer(codebooks.astype(np.float32), stem + "_cb")
            return self.reshape_to(self.op("GatherElements", [table, indices], axis=1), shape)
        offsets = (np.arange(columns, dtype=np.int32) // (columns // groups) * size).reshape(1, columns)
        offsets_value = self.initializer(offsets, stem + "_o")
        flat_codebook = self.initializer(codebooks.astype(np.float32).ravel(), stem + "_cb")
        flat_indices = self.op("Reshape", [self.op("Add", [indices, offsets_value]), self.constant(np.array([-1], np.int64), "m1")])
        return self.reshape_to(self.gather_elements(flat_codebook, flat_indices), shape)

    def linear(self, codes: np.ndarray, zero: float, scale: float, bits: int, shape: tuple[int, ...], stem: str) -> ir.Value:
        """Uniform codebook: (float(code) - zero) * scale."""
        if encoding.choose_packing(codes.size, bits).per_word == 1:
            unpacked = self.initializer(codes.reshape(shape).astype(np.uint8), stem)
            reshape = False
        else:
            unpacked = self.unpacked_codes(codes, bits, stem, flat=False)
            reshape = True
        as_float = self.op("Cast", [unpacked], to=ir.DataType.FLOAT)
        centred = self.op("Sub", [as_float, self.initializer(np.array(zero, np.float32), stem + "_z")])
        scaled = self.op("Mul", [centred, self.initializer(np.array(scale, np.float32), stem + "_s")])
        return self.reshape_to(scaled, shape) if reshape else scaled

    def sparse_mask(self, mask: np.ndarray, value_codes: np.ndarray, value_bits: int, codebook: np.ndarray,
                    shape: tuple[int, ...], stem: str) -> ir.Value:
        """1-bit mask -> Cast(BOOL) -> Compress(Range(size)) positions; codes ->
        GatherElements(codebook); ScatterElements into zeros.

        Compress over an INT32 Range, not NonZero: one pass over the mask either way, but ONNX
        Runtime's NonZero is ~1.5x slower and returns INT64 [1, m] coordinates (twice the bytes,
        plus a Reshape) - this runs at every session creation.
        """
        size = int(np.prod(shape))
        flags = self.op("Cast", [self.unpacked_codes(np.asarray(mask, np.uint8).ravel(), 1, stem + "_m", flat=True)],
                        to=ir.DataType.BOOL)
        every = self.op("Range", [self.constant(np.array(0, np.int32), "i0"), self.constant(np.array(size, np.int32), "isz"),
                                  self.constant(np.array(1, np.int32), "i1")])
        positions = self.op("Compress", [every, flags], axis=0)
        if encoding.choose_packing(value_codes.size, value_bits).per_word == 1:
            codes = self.initializer(np.asarray(value_codes).ravel().astype(np.uint8), stem + "_v")
        else:
            codes = self.unpacked_codes(value_codes, value_bits, stem + "_v", flat=True)
        values = self.gather_elements(self.initializer(codebook.astype(np.float32), stem + "_cb"),
                                      self.op("Cast", [codes], to=ir.DataType.INT32))
        zeros = self.op("ConstantOfShape", [self.constant(np.array([size], np.int64), "n")],
                        value=ir.tensor(np.array([0.0], np.float32)))
        dense = self.op("ScatterElements", [zeros, positions, values], axis=0)
        return self.reshape_to(dense, shape)

    def sparse(self, deltas: np.ndarray, delta_bits: int, value_codes: np.ndarray, value_bits: int,
               codebook: np.ndarray, shape: tuple[int, ...], stem: str, into: ir.Value | None = None) -> ir.Value:
        """Relative positions -> CumSum; codes -> GatherElements(codebook); ScatterElements into zeros
        (or into the flat float32 tensor `into`: the outliers of a dense-and-sparse weight).

        From SPLIT_CUMSUM_MIN entries both streams are stored in `encoding.grid_order` and the
        prefix sum runs in two levels (see `encoding.cumsum_layout`)."""
        size = int(np.prod(shape))
        layout = encoding.cumsum_layout(int(deltas.size))
        if layout is not None:
            deltas = encoding.grid_order(deltas, layout, steps=True)
            value_codes = encoding.grid_order(value_codes, layout, steps=False)
        raw_steps = self.unpacked_codes(deltas, delta_bits, stem + "_d", flat=True)
        codes = self.op("Cast", [self.unpacked_codes(value_codes, value_bits, stem + "_v", flat=True)], to=ir.DataType.INT32)
        if layout is None:
            positions = self.op("CumSum", [self.op("Cast", [raw_steps], to=ir.DataType.INT32), self.constant(np.array(0, np.int32), "ax")])
        else:
            rows, width, _ = layout
            # Reshape the one-byte steps, then widen: the grid copy costs a quarter of an INT32 one.
            grid = self.op("Reshape", [raw_steps, self.constant(np.array([rows, width], np.int64), "grid")])
            within = self.op("CumSum", [self.op("Cast", [grid], to=ir.DataType.INT32), self.constant(np.array(0, np.int32), "ax")])
            totals = self.op("Slice", [within, self.constant(np.array([-1], np.int64), "m1"),
                                       self.constant(np.array([np.iinfo(np.int64).max], np.int64), "end"),
                                       self.constant(np.array([0], np.int64), "z")])
            before = self.op("CumSum", [totals, self.constant(np.array(1, np.int32), "ax1")], exclusive=1)
            positions = self.op("Reshape", [self.op("Add", [within, before]), self.constant(np.array([-1], np.int64), "m1")])
        values = self.gather_elements(self.initializer(codebook.astype(np.float32), stem + "_cb"), codes)
        if into is None:
            into = self.op("ConstantOfShape", [self.constant(np.array([size], np.int64), "n")],
                           value=ir.tensor(np.array([0.0], np.float32)))
        dense = self.op("ScatterElements", [into, positions, values], axis=0)
        return self.reshape_to(dense, shape)


def restore(builder: DecodeBuilder, decoded: ir.Value, storage, stem: str) -> ir.Value:
    """The decoded float32 working values -> the weight's own type: Add(zero point) for integer
    weights with a non-zero zero point, Cast to float16/bfloat16/int8/uint8/... Both fold at load
    with the rest of the decode. `storage` is the weight's `onnxcomp.model.weights.Storage`."""
    if storage.offset is not None:
        decoded = builder.op("Add", [decoded, builder.constant(np.asarray(storage.offset, np.float32), stem + "_zp")])
    if not storage.plain:
        decoded = builder.op("Cast", [decoded], to=storage.dtype)
    return decoded


# Ops a decoded value passes through unchanged in kind (moved, copied or scattered, never
# computed on), with the inputs that carry values (Concat: all); restoring every float32 table
# and filler at the ends of these paths gives the same tensor as restoring the decoded one.
CARRIERS = {"Reshape": (0,), "Expand": (0,), "Gather": (0,), "GatherElements": (0,), "ScatterElements": (0, 2),
            "Concat": None}


def restore_tables(builder: DecodeBuilder, decoded: ir.Value, storage, stem: str) -> bool:
    """Restore the weight's own type on the codebooks its decode gathers from, not on the decoded
    tensor: `restore` on each float32 initializer at the end of a value path (`CARRIERS`) and the restored zero in each ConstantOfShape filler. Exactly the same tensor (Add and
    Cast are elementwise, gathers only move values), but ONNX Runtime keeps every intermediate of
    a folded decode until folding ends, and a full-size float32 tensor plus its Add costs 8 bytes
    per weight where an int8 weight is 1. False (nothing changed) where a path computes on the
    values (linear codes, per-channel scales) or the zero point is not one value."""
    if storage.offset is not None and np.asarray(storage.offset).size != 1:
        return False
    uses, fillers, stack, seen = [], [], [decoded], set()
    while stack:
        node = stack.pop().producer()
        if node is None:
            return False  # the decoded value is itself an initializer
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type == "ConstantOfShape":
            fillers.append(node)
            continue
        if node.op_type not in CARRIERS:
            return False
        slots = CARRIERS[node.op_type] or range(len(node.inputs))
        for index in slots:
            value = node.inputs[index]
            if value is None:
                return False
            if value.producer() is None:
                if value.const_value is None or value.const_value.dtype != ir.DataType.FLOAT:
                    return False
                uses.append((node, index, value))
            else:
                stack.append(value)
    restored: dict[int, ir.Value] = {}
    first = len(builder.nodes)
    for node, index, table in uses:
        if id(table) not in restored:
            restored[id(table)] = restore(builder, table, storage, stem)
        node.replace_input_with(index, restored[id(table)])
    # The restoring nodes read only initializers: put first, the nodes stay in topological order.
    added = builder.nodes[first:]
    del builder.nodes[first:]
    builder.nodes[:0] = added
    zero = np.zeros(1, np.float32) + (0 if storage.offset is None else np.asarray(storage.offset, np.float32).ravel())
    for node in fillers:
        node.attributes["value"] = ir.AttrTensor("value", ir.tensor(zero.astype(storage.dtype.numpy())))
    return True


def rewire(model: ir.Model, weight, decoded: ir.Value, builder: DecodeBuilder | None = None) -> None:
    """Point every reader of `weight`'s initializer at its decoded value and drop the initializer.

    A weight stored in another type than float32 (`weight.storage`) is given its own type back
    on its codebooks (`restore_tables`), else with `restore` on the decoded tensor; both need
    the `builder` that built the decode."""
    if not weight.storage.plain or weight.storage.offset is not None:
        if builder is None:
            raise ValueError(f"{weight.name}: a {weight.storage.dtype.name} weight needs the decode builder to restore its type")
        if not restore_tables(builder, decoded, weight.storage, weight.name):
            decoded = restore(builder, decoded, weight.storage, weight.name)
    decoded.shape = ir.Shape(weight.shape)
    decoded.type = ir.TensorType(weight.storage.dtype)
    weight.value.replace_all_uses_with(decoded)
    model.graph.initializers.pop(weight.name)
