"""Which channels are constant, and what constant: a NumPy evaluator of ONNX ops, channel by channel.

`EliminateNeuronsPass` asks, for every value the channel analysis tracks, which of its channels
have one known value everywhere (a producer whose incoming weights are zero outputs its bias;
ReLU, BatchNorm, residual Adds, pooling, Flatten, ... carry that value on). NaN means not known;
an op this module does not evaluate gives NaN for all its channels, which is always safe.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx_ir as ir

from onnxcomp.channels import ChannelAnalysis, Layout, Segment, Tracked, constant, layout_length, layout_units, segment_offsets

logger = logging.getLogger(__name__)


def channel_blocks(array: np.ndarray, axis: int, offset: int, size: int, inner: int):
    """The slices of ``size`` channels on ``axis``, one row per channel."""
    moved = np.moveaxis(array, axis, 0)[offset : offset + size * inner]
    return moved.reshape(size, -1)


def _per_unit(array: np.ndarray, axis: int, layout: Layout) -> np.ndarray:
    """One value per channel where the array is uniform over the channel's block, else NaN."""
    values = []
    for segment, offset, _ in segment_offsets(layout):
        rows = channel_blocks(array.astype(np.float64), axis, offset, segment.size,
                               segment.inner)
        uniform = rows.min(axis=1) == rows.max(axis=1)
        values.append(np.where(uniform, rows[:, 0], np.nan))
    return np.concatenate(values) if values else np.zeros(0)


def channel_constants(
    analysis: ChannelAnalysis, zero_in: dict[int, np.ndarray]
) -> dict[ir.Value, np.ndarray]:
    """Per tracked value and channel: the channel's constant activation, or NaN."""
    origins = analysis.origin_of_value()
    consts: dict[ir.Value, np.ndarray] = {}
    for value, tracked in analysis.tracked.items():
        if value.producer() is None:
            consts[value] = np.full(layout_units(tracked.layout), np.nan)
    for node in analysis.model.graph:
        outputs = [o for o in node.outputs if o in analysis.tracked]
        if not outputs:
            continue
        tracked = analysis.tracked[outputs[0]]
        origin = origins.get(outputs[0])
        with np.errstate(all="ignore"):
            if origin is not None and origin.kind == "producer":
                vector = _producer_constants(node, origin.size, zero_in[origin.id])
            elif origin is not None:
                vector = np.full(origin.size, np.nan)
            else:
                try:
                    vector = _node_constants(node, tracked, consts, analysis)
                except (ValueError, IndexError, TypeError):  # unknown is always safe
                    logger.debug("No channel constants for %s", node, exc_info=True)
                    vector = np.full(layout_units(tracked.layout), np.nan)
        for output in outputs:
            consts[output] = vector
    return consts


def _producer_constants(node: ir.Node, size: int, zero: np.ndarray) -> np.ndarray:
    """A producer channel with zero incoming weights outputs its bias everywhere."""
    bias = constant(node.inputs[2]) if len(node.inputs) > 2 else None
    if bias is None:
        value = np.zeros(size)
    elif node.op_type == "Gemm":
        rows = np.broadcast_to(bias.astype(np.float64), (1, size) if bias.ndim < 2 else
                               (bias.shape[0], size)).reshape(-1, size)
        beta = node.attributes.get_float("beta", 1.0)
        value = np.where((rows == rows[0]).all(axis=0), beta * rows[0], np.nan)
    else:
        value = bias.astype(np.float64).reshape(-1)
    return np.where(zero, value, np.nan)


def _keep_nan(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(x), np.nan, y)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda v: math.erf(v) if not math.isnan(v) else math.nan)(x)


_UNARY = {
    "Relu": lambda x, a: np.maximum(x, 0),
    "LeakyRelu": lambda x, a: np.where(x < 0, a.get_float("alpha", 0.01) * x, x),
    "Sigmoid": lambda x, a: 1 / (1 + np.exp(-x)),
    "Tanh": lambda x, a: np.tanh(x),
    "Identity": lambda x, a: x,
    "Dropout": lambda x, a: x,
    "Neg": lambda x, a: -x,
    "Abs": lambda x, a: np.abs(x),
    "Exp": lambda x, a: np.exp(x),
    "Sqrt": lambda x, a: np.sqrt(x),
    "Elu": lambda x, a: np.where(x < 0, a.get_float("alpha", 1.0) * np.expm1(x), x),
    "Softplus": lambda x, a: np.log1p(np.exp(x)),
    "Softsign": lambda x, a: x / (1 + np.abs(x)),
    "HardSigmoid": lambda x, a: np.clip(
        a.get_float("alpha", 0.2) * x + a.get_float("beta", 0.5), 0, 1
    ),
    "HardSwish": lambda x, a: x * np.clip(x / 6 + 0.5, 0, 1),
    "Erf": lambda x, a: _erf(x),
    "Gelu": lambda x, a: 0.5 * x * (1 + _erf(x / math.sqrt(2)))
    if a.get_string("approximate", "none") == "none"
    else np.full_like(x, np.nan),
    "ThresholdedRelu": lambda x, a: np.where(x > a.get_float("alpha", 1.0), x, 0),
}


_BINARY = {
    "Add": np.add,
    "Sub": np.subtract,
    "Div": np.divide,
    "Pow": np.power,
    "Max": np.maximum,
    "Min": np.minimum,
    "Mul": lambda a, b: np.where((a == 0) | (b == 0), 0.0, a * b),  # x * 0 = 0 for any x
    "PRelu": lambda a, b: np.where(a < 0, a * b, a),
}

_SAME_VALUE_OPS = frozenset(
    "Flatten Reshape Transpose Squeeze Unsqueeze Slice Resize MaxPool GlobalMaxPool "
    "GlobalAveragePool ReduceMean ReduceMax ReduceMin".split()
)
_ZERO_ONLY_OPS = frozenset("ReduceSum ReduceL1 ReduceL2 ReduceSumSquare LpPool GlobalLpPool".split())


def _node_constants(
    node: ir.Node, tracked: Tracked, consts: dict[ir.Value, np.ndarray], analysis: ChannelAnalysis
) -> np.ndarray:
    units = layout_units(tracked.layout)
    unknown = np.full(units, np.nan)
    op = node.op_type
    x = consts.get(node.inputs[0]) if node.inputs and node.inputs[0] is not None else None
    if op in ("Concat",) and _concat_axis(node, analysis) == tracked.axis:
        parts = []
        for value in node.inputs:
            part = consts.get(value)
            parts.append(part if part is not None and len(part) else
                         np.full(layout_units(_width_layout(value, tracked, analysis)), np.nan))
        return np.concatenate(parts)
    if op in _BINARY or op in ("Sum", "Mean", "Where", "Concat"):
        operands = [_operand(node, i, tracked, consts, analysis) for i in range(len(node.inputs))]
        if op in _BINARY:
            return _BINARY[op](operands[0], operands[1])
        if op == "Where":
            cond, a, b = operands
            return np.where(np.isnan(cond), np.nan, np.where(cond != 0, a, b))
        stacked = np.stack([np.broadcast_to(o, (units,)) for o in operands])
        if op == "Concat":
            return np.where((stacked == stacked[0]).all(axis=0), stacked[0], np.nan)
        return stacked.sum(axis=0) / (len(operands) if op == "Mean" else 1)
    if x is None:
        return unknown
    if op in _UNARY:
        return _keep_nan(x, _UNARY[op](x, node.attributes))
    if op == "Clip":
        low, high = _clip_bounds(node)
        return np.clip(x, low, high)
    if op == "Cast":
        to = ir.DataType(node.attributes.get_int("to", 1))
        return x if to.is_floating_point() else unknown
    if op in _SAME_VALUE_OPS:
        return x
    if op in _ZERO_ONLY_OPS:
        return np.where(x == 0, 0.0, np.nan)
    if op == "AveragePool":
        return x if no_padding(node) or node.attributes.get_int("count_include_pad", 0) == 0 \
            else np.where(x == 0, 0.0, np.nan)
    if op == "Pad":
        mode = node.attributes.get_string("mode", "constant")
        pad_value = constant(node.inputs[2]) if len(node.inputs) > 2 else None
        fill = float(pad_value) if pad_value is not None else node.attributes.get_float("value", 0.0)
        return x if mode != "constant" else np.where(x == fill, x, np.nan)
    if op == "BatchNormalization":
        layout = analysis.tracked[node.inputs[0]].layout
        scale, bias, mean, var = (_per_unit(constant(node.inputs[i]), 0, layout) for i in (1, 2, 3, 4))
        eps = node.attributes.get_float("epsilon", 1e-5)
        return (x - mean) / np.sqrt(var + eps) * scale + bias
    if op == "InstanceNormalization":
        bias = _per_unit(constant(node.inputs[2]), 0, analysis.tracked[node.inputs[0]].layout)
        return _keep_nan(x, bias)
    if op == "Conv":  # depthwise
        layout = analysis.tracked[node.inputs[0]].layout
        weight = constant(node.inputs[1]).astype(np.float64)
        sums = _per_unit(weight.reshape(weight.shape[0], -1).sum(axis=1), 0, layout)
        bias = constant(node.inputs[2]) if len(node.inputs) > 2 else None
        bias = np.zeros(units) if bias is None else _per_unit(bias, 0, layout)
        if no_padding(node):
            return _keep_nan(x, np.where(x == 0, bias, x * sums + bias))
        return np.where(x == 0, bias, np.nan)
    return unknown


def _concat_axis(node: ir.Node, analysis: ChannelAnalysis) -> int | None:
    dims = analysis.dims(node.outputs[0])
    return None if dims is None else node.attributes.get_int("axis", 0) % len(dims)


def _width_layout(value: ir.Value, tracked: Tracked, analysis: ChannelAnalysis) -> Layout:
    dims = analysis.dims(value)
    return (Segment(None, int(dims[tracked.axis])),)  # type: ignore[index]


def _operand(
    node: ir.Node, index: int, tracked: Tracked, consts, analysis: ChannelAnalysis
) -> np.ndarray:
    """Per-channel constant of one input of an element-wise op (NaN where not constant)."""
    units = layout_units(tracked.layout)
    value = node.inputs[index]
    own = consts.get(value)
    if own is not None:
        return own if len(own) == units else np.full(units, own[0])
    array = constant(value)
    if array is None:
        return np.full(units, np.nan)
    out_dims = analysis.dims(node.outputs[0])
    in_axis = tracked.axis - (len(out_dims) - array.ndim) if out_dims is not None else -1
    length = layout_length(tracked.layout)
    if 0 <= in_axis < array.ndim and array.shape[in_axis] == length and length > 1:
        return _per_unit(array, in_axis, tracked.layout)
    flat = array.astype(np.float64).reshape(-1)
    uniform = flat.size > 0 and (flat == flat[0]).all()
    return np.full(units, flat[0] if uniform else np.nan)


def _clip_bounds(node: ir.Node) -> tuple[float, float]:
    bounds = []
    for index, name, default in ((1, "min", -np.inf), (2, "max", np.inf)):
        if name in node.attributes:
            bounds.append(node.attributes.get_float(name))
        elif len(node.inputs) > index and node.inputs[index] is not None:
            array = constant(node.inputs[index])
            bounds.append(float(array) if array is not None else np.nan)
        else:
            bounds.append(default)
    return bounds[0], bounds[1]


def no_padding(node: ir.Node) -> bool:
    auto_pad = node.attributes.get_string("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        return False
    return not any(node.attributes.get_ints("pads", ()))
