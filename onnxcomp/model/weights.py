"""Which initializers are compressible weights, and what role each plays."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection

import numpy as np
import onnx_ir as ir

from onnxcomp.encodings import encoding
from onnxcomp.model.subgraphs import body_owners, loop_body_value, reading_body_op

logger = logging.getLogger(__name__)

# op_type -> {input index: role}. "weight" may be pruned and clustered; "bias" is only clustered
# (pruning a bias shifts every activation) and only when encoding it saves bytes.
WEIGHT_SLOTS: dict[str, dict[int, str]] = {
    "Conv": {1: "weight", 2: "bias"},
    "ConvTranspose": {1: "weight", 2: "bias"},
    "Gemm": {0: "weight", 1: "weight", 2: "bias"},
    "MatMul": {0: "weight", 1: "weight"},
    "Gather": {0: "embedding"},
    "LSTM": {1: "weight", 2: "weight", 3: "bias"},
    "GRU": {1: "weight", 2: "weight", 3: "bias"},
    "RNN": {1: "weight", 2: "weight", 3: "bias"},
    "Einsum": {0: "weight", 1: "weight"},
}
# Large float tables read by elementwise arithmetic (a transformer's positional encodings sliced
# and added, an audio front end's window and filterbank values) are compressed like biases
# (clustered, never pruned); smaller ones (a bias, a normalization constant) stay as they are.
TABLE_OPS = {"Add", "Sub", "Mul", "Div"}
MIN_TABLE_ELEMENTS = 4096
FLOAT_TYPES = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16)
# Codebooks (<= 256 entries) feed Gather too; embedding tables are far larger than that.
MIN_EMBEDDING_ELEMENTS = 257
MIN_WEIGHT_ELEMENTS = 16


@dataclasses.dataclass(frozen=True, eq=False)
class Storage:
    """How a weight's stored tensor maps to the float32 values the planner works on.

    float32 weights are worked on as they are. float16/bfloat16 weights are worked on as
    float32 copies and stored back rounded to their own type. Integer weights of quantized ops
    are worked on as ``stored - zero_point`` (so a pruned entry, 0, is stored as the zero point)
    and stored back rounded and clipped to their type; `scale` is the dequantization scale
    where the consumer names one (broadcastable to the weight). The decode subgraph adds the
    zero point back and casts to `dtype` (`onnxcomp.encodings.decode.DecodeBuilder.restore`), so the
    consumers read the weight's own type.
    """

    dtype: ir.DataType = ir.DataType.FLOAT
    zero_point: np.ndarray | None = None  # float32, broadcastable to the weight; integer weights only
    scale: np.ndarray | None = None  # float32, broadcastable to the weight

    @property
    def plain(self) -> bool:
        return self.dtype == ir.DataType.FLOAT

    @property
    def integer(self) -> bool:
        return self.dtype in INTEGER_TYPES

    @property
    def itemsize(self) -> int:
        return int(self.dtype.itemsize)

    @property
    def offset(self) -> np.ndarray | None:
        """The zero point the decode adds back, or None where it is zero everywhere."""
        if self.zero_point is None or not np.any(self.zero_point):
            return None
        return self.zero_point

    @property
    def importance(self) -> np.ndarray | None:
        """Per-channel squared scales: squared errors of the integer values weighted by this are
        squared errors of the dequantized weight. None for one scale per tensor (relative errors,
        which the allocator compares, do not depend on it)."""
        if self.scale is None or self.scale.size <= 1:
            return None
        return np.square(self.scale.astype(np.float64)).astype(np.float32)

    def restore_nodes(self) -> int:
        """Nodes the decode appends to give the weight back its own type (Add, Cast)."""
        return (0 if self.offset is None else 1) + (0 if self.plain else 1)

    def restore_bytes(self) -> int:
        """Serialized bytes of the restoring nodes (and the zero-point constant)."""
        offset = 0 if self.offset is None else 4 * self.offset.size + encoding.INITIALIZER_BYTES + 3 * self.offset.ndim
        return self.restore_nodes() * encoding.NODE_BYTES + offset

    def working(self, stored: np.ndarray) -> np.ndarray:
        """float32 working values of a stored array."""
        if self.plain:
            return stored
        values = np.asarray(stored).astype(np.float32)
        if self.zero_point is not None:
            values = values - self.zero_point
        return values

    def stored(self, working: np.ndarray) -> np.ndarray:
        """The array to store for float32 working values (rounded to the weight's own type)."""
        working = np.asarray(working, np.float32)
        if self.plain:
            return working
        np_dtype = self.dtype.numpy()
        if not self.integer:
            return working.astype(np_dtype)
        info = np.iinfo(np_dtype)
        shifted = working if self.zero_point is None else working + self.zero_point
        return np.clip(np.rint(shifted), info.min, info.max).astype(np_dtype)


@dataclasses.dataclass
class Weight:
    """A compressible initializer and the roles it plays (it may be shared by several nodes)."""

    value: ir.Value
    role: str  # "weight" | "embedding" | "bias" (biases and elementwise tables, `TABLE_OPS`)
    consumers: list[str]
    storage: Storage = dataclasses.field(default_factory=Storage)

    @property
    def name(self) -> str:
        return self.value.name or ""

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.value.const_value.shape)  # type: ignore[union-attr]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    @property
    def prunable(self) -> bool:
        return self.role != "bias"

    @property
    def itemsize(self) -> int:
        """Bytes per stored value (2 for float16, 1 for int8)."""
        return self.storage.itemsize

    def numpy(self) -> np.ndarray:
        """The working values: float32 (see `Storage`); the stored array itself for float32 weights."""
        return self.storage.working(self.value.const_value.numpy())  # type: ignore[union-attr]

    def store(self, values: np.ndarray) -> None:
        """Replace the initializer's content by float32 working values, in the weight's own type."""
        self.value.const_value = ir.tensor(self.storage.stored(values), name=self.name)


# Layout-only ops exporters put between a weight and its consumer (e.g. a tied embedding read
# through Transpose). A weight read through them keeps its role; the decoded tensor feeds them
# just as the initializer did, and ONNX Runtime folds them at load.
# Slice, Split and Concat also count: exporters reorder recurrent gates (slice the gate blocks out
# of one stacked weight and concatenate them again) or unroll the cell into MatMuls.
PASS_THROUGH_OPS = {"Transpose", "Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Split", "Concat"}
FLOAT_CAST_TARGETS = {int(ir.DataType.FLOAT), int(ir.DataType.FLOAT16), int(ir.DataType.BFLOAT16), int(ir.DataType.DOUBLE)}
MAX_PASS_THROUGH_DEPTH = 4


def _role(node: ir.Node, index: int) -> str | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type in TABLE_OPS and index < 2:
        return "table"
    return WEIGHT_SLOTS.get(node.op_type, {}).get(index)


def _passes_through(node: ir.Node, index: int) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type not in PASS_THROUGH_OPS:
        return False
    if index != 0 and node.op_type != "Concat":
        return False
    if len(node.outputs) != 1 and node.op_type != "Split":
        return False
    if node.op_type == "Cast":
        target = node.attributes.get("to")
        return target is not None and int(target.value) in FLOAT_CAST_TARGETS
    return True


def _slot_uses(value: ir.Value, depth: int = 0, carried: bool = False,
               handed_on: ir.Node | None = None) -> list[tuple[ir.Node, str]] | None:
    """(consumer, role) for every use of a value, looking through layout-only ops and into the
    bodies of Loops it enters unchanged (`loop_body_value`); None when some use is not a weight
    slot (or the value escapes as a graph output). `carried`: a Loop body's input that the body
    returns as it came, itself or through the Identity `handed_on` (neither is a use)."""
    if depth and value.is_graph_output() and not carried:
        return None
    found: list[tuple[ir.Node, str]] = []
    for node, index in value.uses():
        if node is handed_on:
            continue
        role = _role(node, index)
        if role is not None:
            found.append((node, role))
            continue
        if depth < MAX_PASS_THROUGH_DEPTH and node.op_type == "Loop" and node.domain in ("", "ai.onnx") and index >= 2:
            inner = loop_body_value(node, index)
            below = None if inner is None else _slot_uses(inner[0], depth + 1, carried=True, handed_on=inner[1])
            if below is None:
                return None
            found.extend(below)
            continue
        if depth >= MAX_PASS_THROUGH_DEPTH or not _passes_through(node, index):
            return None
        for output in node.outputs:
            below = _slot_uses(output, depth + 1)
            if below is None:
                return None
            found.extend(below)
    return found


def find_weights(model: ir.Model) -> list[Weight]:
    """Float initializers of the main graph consumed in weight/bias slots of compute ops, and
    large finite tables read by elementwise arithmetic (`TABLE_OPS`, compressed as biases).

    A weight used anywhere else as well (e.g. also as a graph output, or in a non-weight slot)
    keeps its role as long as every use is a recognised slot, directly or through layout-only
    ops (Transpose, Reshape, float Cast, ...); otherwise it is left alone, since the decoded
    tensor must be identical for every consumer anyway.
    """
    found: list[Weight] = []
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None or value.is_graph_output() or value.is_graph_input():
            continue
        if tensor.dtype in INTEGER_TYPES:
            weight = _quantized_weight(value)
            if weight is not None:
                found.append(weight)
            continue
        if tensor.dtype not in FLOAT_TYPES:
            continue
        uses = _slot_uses(value)
        if not uses:
            continue
        roles = {role for _, role in uses}
        consumers = [node.name or node.op_type for node, _ in uses]
        role = "weight" if "weight" in roles else ("embedding" if "embedding" in roles else "bias")
        size = int(np.prod([int(d) for d in tensor.shape])) if len(tensor.shape) else 1
        if role == "embedding" and size < MIN_EMBEDDING_ELEMENTS:
            continue
        if "table" in roles and (size < MIN_TABLE_ELEMENTS or not np.isfinite(tensor.numpy()).all()):
            continue  # a small constant, or a mask holding -inf: kept as it is
        if size < MIN_WEIGHT_ELEMENTS:
            continue
        found.append(Weight(value, role, consumers, Storage(tensor.dtype)))
    return found


def check_finite(weights: list[Weight]) -> None:
    """Refuse weights holding NaN or infinity: clustering and error measures are meaningless
    for them, and such a model computes NaN already."""
    from onnxcomp.errors import OnnxcompError

    for weight in weights:
        values = weight.numpy()
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            bad = int(values.size - np.count_nonzero(np.isfinite(values)))
            raise OnnxcompError(
                f"weight {weight.name!r} ({'x'.join(map(str, weight.shape))}, used by {', '.join(weight.consumers)}) contains {bad} NaN or "
                "infinite values; onnxcomp compresses only finite weights (fix or re-export the model)"
            )
        del values
        if isinstance(weight.value.const_value, ir.ExternalTensor):
            from onnxcomp.modelfile import release

            release(weight.value.const_value)  # memory-mapped: unmap, read again when needed


# Ops that read already-quantized (integer) weights: per weight input slot, the input slots of its
# dequantization scale and zero point (None: the op has none; a missing optional zero point is 0).
QUANTIZED_SLOTS: dict[str, dict[int, tuple[int | None, int | None]]] = {
    "MatMulInteger": {0: (None, 2), 1: (None, 3)},
    "ConvInteger": {0: (None, 2), 1: (None, 3)},
    "QLinearMatMul": {0: (1, 2), 3: (4, 5)},
    "QLinearConv": {0: (1, 2), 3: (4, 5)},
    "DequantizeLinear": {0: (1, 2)},
    "QGemm": {0: (1, 2), 3: (4, 5)},
    "DynamicQuantizeMatMul": {1: (2, 3)},
    "DynamicQuantizeLSTM": {1: (8, 9), 2: (10, 11)},
    "MatMulNBits": {1: (2, 3)},
    "GatherBlockQuantized": {0: (2, 3)},
}
# Ops whose packed or blocked integer weights onnxcomp reports but does not re-code.
PACKED_QUANTIZED_OPS = {"MatMulNBits", "GatherBlockQuantized"}
INTEGER_TYPES = {ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT16, ir.DataType.UINT16}
REPORTED_INTEGER_TYPES = INTEGER_TYPES | {ir.DataType.INT4, ir.DataType.UINT4}


def _channel_axis(node: ir.Node, index: int, rank: int) -> int | None:
    """The weight axis that a 1-D per-channel scale or zero point runs along."""
    op = node.op_type
    if op == "DequantizeLinear":
        return node.attributes.get_int("axis", 1) % max(rank, 1)
    if op in ("ConvInteger", "QLinearConv") and index != 0:
        return 0
    if op == "QGemm" and index == 3:
        return 0 if node.attributes.get_int("transB", 0) else rank - 1
    if op == "DynamicQuantizeLSTM":
        return 0  # [num_directions]; a [num_directions, 4*hidden] scale is handled by _broadcast
    if index == 0:  # the left operand of a matrix product: per row
        return max(rank - 2, 0)
    return rank - 1


def _broadcast(node: ir.Node, index: int, slot: int | None, shape: tuple[int, ...]) -> np.ndarray | None | bool:
    """The scale or zero point at input `slot`, as float32 broadcastable to the weight; None when
    absent; False when it is not a constant or its layout is not understood."""
    if slot is None or slot >= len(node.inputs) or node.inputs[slot] is None:
        return None
    source = node.inputs[slot]
    if source.const_value is None:
        return False
    array = source.const_value.numpy().astype(np.float32)
    if array.size == 1:
        return array.reshape(())
    rank = len(shape)
    if node.op_type == "DynamicQuantizeLSTM" and array.ndim == 2 and rank == 3 and array.shape == (shape[0], shape[2]):
        return array.reshape(shape[0], 1, shape[2])
    axis = _channel_axis(node, index, rank)
    if array.ndim != 1 or axis is None or rank == 0 or array.size != shape[axis]:
        return False
    return array.reshape([-1 if i == axis else 1 for i in range(rank)])


def _same_dequantization(a: Storage, b: Storage) -> bool:
    return _same(a.zero_point, b.zero_point) and _same(a.scale, b.scale)


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _quantized_weight(value: ir.Value) -> Weight | None:
    """An integer initializer read only in weight slots of quantized ops, with its zero point
    and scale (identical for every reader), or None."""
    tensor = value.const_value
    shape = tuple(int(d) for d in tensor.shape)  # type: ignore[union-attr]
    size = int(np.prod(shape)) if shape else 1
    uses = list(value.uses())
    if not uses or size < MIN_WEIGHT_ELEMENTS:
        return None
    storage = None
    for node, index in uses:
        if node.op_type == "Cast" and node.domain in ("", "ai.onnx"):
            found = _cast_and_scale(node, tensor.dtype, shape)  # type: ignore[union-attr]
            if found is None or (storage is not None and not _same(storage.scale, found.scale)):
                return None
            storage = found
            continue
        if node.op_type == "Gather" and node.domain in ("", "ai.onnx") and index == 0:
            found = _gathered_and_dequantized(node, tensor.dtype)  # type: ignore[union-attr]
            if found is None or (storage is not None and not _same_dequantization(storage, found)):
                return None
            storage = found
            continue
        slots = QUANTIZED_SLOTS.get(node.op_type, {}) if node.domain in ("", "ai.onnx", "com.microsoft") else {}
        if index not in slots or node.op_type in PACKED_QUANTIZED_OPS:
            return None
        if node.op_type == "DequantizeLinear" and node.attributes.get_int("block_size", 0):
            return None
        scale_slot, zero_slot = slots[index]
        scale, zero = _broadcast(node, index, scale_slot, shape), _broadcast(node, index, zero_slot, shape)
        if scale is False or zero is False:
            logger.debug("%s: scale or zero point of %s is not a constant of a known layout", value.name, node.name)
            return None
        found = Storage(tensor.dtype, zero, scale)  # type: ignore[union-attr,arg-type]
        if storage is not None and not _same_dequantization(storage, found):
            logger.debug("%s: its readers dequantize it differently", value.name)
            return None
        storage = found
    return Weight(value, "weight", [node.name or node.op_type for node, _ in uses], storage)


def _gathered_and_dequantized(gather: ir.Node, dtype: ir.DataType) -> Storage | None:
    """An integer table whose looked-up rows are dequantized with one constant scale and zero
    point (ONNX Runtime's `quantize_dynamic` writes embeddings so: Gather -> DequantizeLinear):
    its Storage, when every reader of the Gather is such a DequantizeLinear."""
    found = None
    for node, index in gather.outputs[0].uses():
        if node.op_type != "DequantizeLinear" or index != 0 or node.attributes.get_int("block_size", 0):
            return None
        scale, zero = _broadcast(node, 0, 1, ()), _broadcast(node, 0, 2, ())
        if scale is None or scale is False or zero is False:
            return None
        storage = Storage(dtype, zero, scale)
        if found is not None and not _same_dequantization(found, storage):
            return None
        found = storage
    return found


def _cast_and_scale(cast: ir.Node, dtype: ir.DataType, shape: tuple[int, ...]) -> Storage | None:
    """A weight-only quantized weight dequantized by hand: int8 -> Cast(float) -> Mul(a constant
    scale broadcastable to it), as some exporters write it (a MiniLM with int8 weights and a
    scale per row). The Storage (no zero point) when every reader of the Cast is such a Mul."""
    target = cast.attributes.get_int("to", 0)
    if target not in (ir.DataType.FLOAT, ir.DataType.FLOAT16) or not cast.outputs[0].uses():
        return None
    scale = None
    for node, index in cast.outputs[0].uses():
        other = node.inputs[1 - index] if node.op_type == "Mul" and len(node.inputs) == 2 else None
        if other is None or other.const_value is None:
            return None
        array = other.const_value.numpy().astype(np.float32)
        if array.ndim > len(shape) or any(d not in (1, s) for d, s in zip(array.shape[::-1], shape[::-1])):
            return None
        array = array.reshape((1,) * (len(shape) - array.ndim) + array.shape)
        if scale is not None and not _same(scale, array):
            return None
        scale = array
    return Storage(dtype, None, scale)


def kept_initializers(model: ir.Model) -> tuple[int, list[str]]:
    """Bytes of the initializers of at least 1 KiB that are not weights onnxcomp compresses, and
    the ops that read them (e.g. a decoder's weights fed straight into a `Loop`), for messages."""
    weights = {w.name for w in find_weights(model)}
    total, ops = 0, set()
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None or value.name in weights or tensor.nbytes < 1024:
            continue
        total += int(tensor.nbytes)
        ops.update(node.op_type for node, _ in value.uses())
    return total, sorted(ops)


def quantized_weights(model: ir.Model, exclude: Collection[str] = ()) -> list[dict]:
    """Integer initializers that already-quantized ops read as weights (MatMulInteger, QLinear*,
    DequantizeLinear, DynamicQuantizeLSTM, ...), except the names in `exclude` (those re-coded).
    One row per weight: name, dtype, shape, bytes and the ops that read it."""
    found = []
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None or tensor.dtype not in REPORTED_INTEGER_TYPES or value.name in exclude:
            continue
        ops = sorted({node.op_type for node, index in value.uses() if index in QUANTIZED_SLOTS.get(node.op_type, {})})
        if ops:
            found.append({"name": value.name, "dtype": tensor.dtype.name.lower(), "shape": [int(d) for d in tensor.shape],
                          "bytes": int(tensor.nbytes), "ops": ops})
    return found


def no_weights_error(model: ir.Model):
    """The refusal for a model with nothing to compress, naming already-quantized weights."""
    from onnxcomp.errors import OnnxcompError

    kinds = ("float32/float16/bfloat16 initializers used by Conv, Gemm, MatMul, Gather, LSTM/GRU/RNN, and "
             "8- or 16-bit integer weights of quantized ops or of Cast -> Mul(scale)")
    quantized = quantized_weights(model)
    if quantized:
        ops = sorted({op for row in quantized for op in row["ops"]})
        dtypes = sorted({row["dtype"] for row in quantized})
        return OnnxcompError(
            f"the model has no weights onnxcomp can compress: its {len(quantized)} already-quantized weights are "
            f"{'/'.join(dtypes)} ({sum(row['bytes'] for row in quantized)} B, read by {', '.join(ops)}), packed, "
            f"blocked or too small to re-code; onnxcomp compresses {kinds}"
        )
    looped = _weights_in_subgraphs(model)
    if looped:
        ops, many = "/".join(sorted({op for _, _, op in looped})), len(looped) != 1
        return OnnxcompError(
            f"the model has no compressible weights: its {len(looped)} float weight{'s' if many else ''} "
            f"({sum(size for _, size, _ in looped):,} parameters) {'are' if many else 'is'} read by {ops} nodes or "
            "inside their bodies (e.g. a Keras LSTM that tf2onnx exports as a Loop), which onnxcomp does not "
            f"compress yet; it compresses {kinds}")
    attributed = sorted({node.op_type for node in model.graph.all_nodes() if node.domain == "ai.onnx.ml"})
    if attributed:  # scikit-learn converters: coefficients, trees and support vectors live in attributes
        return OnnxcompError(f"the model has no compressible weights: its {', '.join(attributed)} operators (ai.onnx.ml) "
                             f"hold their parameters in attributes, which onnxcomp does not compress; it compresses {kinds}")
    return OnnxcompError(f"the model has no compressible weights ({kinds})")


def _weights_in_subgraphs(model: ir.Model) -> list[tuple[str, int, str]]:
    """(name, size, op) of float initializers of the main graph that a Loop/Scan/If reads, as an
    input or from inside its body."""
    owners = body_owners(model)
    found = []
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None or tensor.dtype not in FLOAT_TYPES:
            continue
        size = int(np.prod([int(d) for d in tensor.shape])) if len(tensor.shape) else 1
        op = reading_body_op(value, model.graph, owners) if size >= MIN_WEIGHT_ELEMENTS else None
        if op is not None:
            found.append((value.name or "", size, op))
    return found
