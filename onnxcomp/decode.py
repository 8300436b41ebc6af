"""Builders for decode subgraphs (codes in initializers -> dense float weight).

The subgraphs use only standard ops available from opset 11 on and INT32
indices (half the transient memory of INT64 while ONNX Runtime folds them at load).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxcomp import encoding

DECODE_OPSET = 11


class DecodeBuilder:
    """Collects decode nodes and shared constants for one graph; insert them with `flush`."""

    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self.nodes: list[ir.Node] = []
        self._constants: dict[tuple, ir.Value] = {}
        self._counter = 0

    def _name(self, stem: str) -> str:
        self._counter += 1
        return f"{stem}_{self._counter}"

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

    def op(self, op_type: str, inputs: list[ir.Value], **attributes) -> ir.Value:
        node = ir.Node("", op_type, inputs, attributes=ir.convenience.convert_attributes(attributes), num_outputs=1,
                       name=self._name(op_type))
        node.outputs[0].name = self._name(op_type.lower())
        self.nodes.append(node)
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

        The result is [words, per_word] (or [count] when `flat`, or when padding had to be cut).
        """
        count = int(codes.size)
        words, packing = encoding.pack_codes(codes, bits)
        np_word = encoding.WORD_DTYPES[packing.word_bits][0]
        if packing.per_word == 1:
            return self.initializer(words.reshape(-1).astype(np_word), stem)
        packed = self.initializer(words, stem)
        # Shift each code to the top of the word, then down to the bottom: two BitShifts extract
        # a field without BitwiseAnd, so decoding works from opset 11 on.
        word_bits = packing.word_bits
        lefts = (word_bits - bits * (np.arange(packing.per_word, dtype=np.uint64) + 1)).astype(np_word)
        raised = self.op("BitShift", [packed, self.constant(lefts, "sl")], direction="LEFT")
        unpacked = self.op("BitShift", [raised, self.constant(np.array(word_bits - bits, np_word), "sr")], direction="RIGHT")
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
        """codes (int, weight-shaped) + codebook -> Gather -> Reshape."""
        if bits == 8 or encoding.choose_packing(codes.size, bits).per_word == 1:
            stored = self.initializer(codes.reshape(shape).astype(np.uint8), stem)
            indices = self.op("Cast", [stored], to=ir.DataType.INT32)
            return self.op("Gather", [self.initializer(codebook.astype(np.float32), stem + "_cb"), indices], axis=0)
        unpacked = self.unpacked_codes(codes, bits, stem, flat=False)
        indices = self.op("Cast", [unpacked], to=ir.DataType.INT32)
        gathered = self.op("Gather", [self.initializer(codebook.astype(np.float32), stem + "_cb"), indices], axis=0)
        return self.reshape_to(gathered, shape)

    def grouped_lookup(self, codes: np.ndarray, codebooks: np.ndarray, bits: int, shape: tuple[int, ...],
                       stem: str, axis: int = 0) -> ir.Value:
        """Codes (weight layout) of group g index codebook row g of the flattened [G, K] codebooks.

        axis 0 (G groups of consecutive entries): Cast -> Reshape [G, M] -> Add(offsets [G, 1]).
        axis 1 (G groups of consecutive columns): Cast -> Reshape [size / D, D] -> Add(offsets
        [1, D]). Then Gather(codebooks) -> Reshape(shape).
        """
        groups, size = codebooks.shape
        if axis == 0:
            layout = (groups, int(codes.size) // groups)
            offsets = (np.arange(groups, dtype=np.int32) * size).reshape(groups, 1)
        else:
            columns = int(shape[-1])
            layout = (int(codes.size) // columns, columns)
            offsets = (np.arange(columns, dtype=np.int32) // (columns // groups) * size).reshape(1, columns)
        offsets_value = self.initializer(offsets, stem + "_o")
        flat_codebook = self.initializer(codebooks.astype(np.float32).ravel(), stem + "_cb")
        if bits == 8 or encoding.choose_packing(codes.size, bits).per_word == 1:
            indices = self.op("Cast", [self.initializer(codes.reshape(layout).astype(np.uint8), stem)],
                              to=ir.DataType.INT32)
        else:
            unpacked = self.op("Cast", [self.unpacked_codes(codes, bits, stem, flat=False)], to=ir.DataType.INT32)
            indices = self.reshape_to(unpacked, layout)
        gathered = self.op("Gather", [flat_codebook, self.op("Add", [indices, offsets_value])], axis=0)
        return self.reshape_to(gathered, shape)

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

    def sparse(self, deltas: np.ndarray, delta_bits: int, value_codes: np.ndarray, value_bits: int,
               codebook: np.ndarray, shape: tuple[int, ...], stem: str) -> ir.Value:
        """Relative positions -> CumSum; codes -> Gather(codebook); ScatterElements into zeros."""
        size = int(np.prod(shape))
        steps = self.unpacked_codes(deltas, delta_bits, stem + "_d", flat=True)
        positions = self.op("CumSum", [self.op("Cast", [steps], to=ir.DataType.INT32),
                                       self.constant(np.array(0, np.int32), "ax")])
        codes = self.unpacked_codes(value_codes, value_bits, stem + "_v", flat=True)
        values = self.op("Gather", [self.initializer(codebook.astype(np.float32), stem + "_cb"),
                                    self.op("Cast", [codes], to=ir.DataType.INT32)], axis=0)
        zeros = self.op("ConstantOfShape", [self.constant(np.array([size], np.int64), "n")],
                        value=ir.tensor(np.array([0.0], np.float32)))
        dense = self.op("ScatterElements", [zeros, positions, values], axis=0)
        return self.reshape_to(dense, shape)
