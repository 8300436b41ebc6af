"""Which initializers are compressible weights, and what role each plays."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

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
FLOAT_TYPES = (ir.DataType.FLOAT,)  # float16/bfloat16 weights are left as they are for now
# Codebooks (<= 256 entries) feed Gather too; embedding tables are far larger than that.
MIN_EMBEDDING_ELEMENTS = 257
MIN_WEIGHT_ELEMENTS = 16


@dataclasses.dataclass
class Weight:
    """A compressible initializer and the roles it plays (it may be shared by several nodes)."""

    value: ir.Value
    role: str  # "weight" | "embedding" | "bias"
    consumers: list[str]

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

    def numpy(self) -> np.ndarray:
        return self.value.const_value.numpy()  # type: ignore[union-attr]


# Layout-only ops exporters put between a weight and its consumer (e.g. a tied embedding read
# through Transpose). A weight read through them keeps its role; the decoded tensor feeds them
# just as the initializer did, and ONNX Runtime folds them at load.
PASS_THROUGH_OPS = {"Transpose", "Identity", "Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}
FLOAT_CAST_TARGETS = {int(ir.DataType.FLOAT), int(ir.DataType.FLOAT16), int(ir.DataType.BFLOAT16), int(ir.DataType.DOUBLE)}
MAX_PASS_THROUGH_DEPTH = 4


def _role(node: ir.Node, index: int) -> str | None:
    if node.domain not in ("", "ai.onnx"):
        return None
    return WEIGHT_SLOTS.get(node.op_type, {}).get(index)


def _passes_through(node: ir.Node, index: int) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type not in PASS_THROUGH_OPS or index != 0 or len(node.outputs) != 1:
        return False
    if node.op_type == "Cast":
        target = node.attributes.get("to")
        return target is not None and int(target.value) in FLOAT_CAST_TARGETS
    return True


def _slot_uses(value: ir.Value, depth: int = 0) -> list[tuple[ir.Node, str]] | None:
    """(consumer, role) for every use of a value, looking through layout-only ops; None when
    some use is not a weight slot (or the value escapes as a graph output)."""
    if depth and value.is_graph_output():
        return None
    found: list[tuple[ir.Node, str]] = []
    for node, index in value.uses():
        role = _role(node, index)
        if role is not None:
            found.append((node, role))
            continue
        if depth >= MAX_PASS_THROUGH_DEPTH or not _passes_through(node, index):
            return None
        below = _slot_uses(node.outputs[0], depth + 1)
        if below is None:
            return None
        found.extend(below)
    return found


def find_weights(model: ir.Model) -> list[Weight]:
    """Float initializers of the main graph consumed in weight/bias slots of compute ops.

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
        if size < MIN_WEIGHT_ELEMENTS:
            continue
        found.append(Weight(value, role, consumers))
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
            from onnxcomp.io import release

            release(weight.value.const_value)  # memory-mapped: unmap, read again when needed


# Ops that read already-quantized (integer) weights, and the input slots that hold them (not
# the scales or zero points).
QUANTIZED_SLOTS: dict[str, tuple[int, ...]] = {
    "MatMulInteger": (0, 1), "ConvInteger": (0, 1), "QLinearMatMul": (0, 3), "QLinearConv": (0, 3),
    "DequantizeLinear": (0,), "QGemm": (0, 3), "MatMulNBits": (1,), "DynamicQuantizeMatMul": (1,),
    "GatherBlockQuantized": (0,),
}
INTEGER_TYPES = {ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT4, ir.DataType.UINT4, ir.DataType.INT16,
                 ir.DataType.UINT16}


def quantized_weights(model: ir.Model) -> list[dict]:
    """Integer initializers that already-quantized ops read as weights (MatMulInteger, QLinear*,
    DequantizeLinear, ...): onnxcomp leaves them as they are. One row per weight: name, dtype,
    shape, bytes and the ops that read it."""
    found = []
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None or tensor.dtype not in INTEGER_TYPES:
            continue
        ops = sorted({node.op_type for node, index in value.uses() if index in QUANTIZED_SLOTS.get(node.op_type, ())})
        if ops:
            found.append({"name": value.name, "dtype": tensor.dtype.name.lower(), "shape": [int(d) for d in tensor.shape],
                          "bytes": int(tensor.nbytes), "ops": ops})
    return found


def no_weights_error(model: ir.Model):
    """The refusal for a model with nothing to compress, naming already-quantized weights."""
    from onnxcomp.errors import OnnxcompError

    quantized = quantized_weights(model)
    if quantized:
        ops = sorted({op for row in quantized for op in row["ops"]})
        dtypes = sorted({row["dtype"] for row in quantized})
        return OnnxcompError(
            f"the model is already quantized: its {len(quantized)} weights are {'/'.join(dtypes)} "
            f"({sum(row['bytes'] for row in quantized)} B, read by {', '.join(ops)}) and it has no compressible weights "
            "left (float initializers used by Conv, Gemm, MatMul, Gather, LSTM/GRU/RNN); onnxcomp leaves quantized "
            "weights as they are, so there is nothing to compress further"
        )
    return OnnxcompError("the model has no compressible weights (float initializers used by Conv, Gemm, MatMul, Gather, LSTM/GRU/RNN)")
