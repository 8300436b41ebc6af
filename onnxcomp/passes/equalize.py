"""EqualizeCrossLayerPass: cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization").

Two layers joined by a positively homogeneous activation f (f(x / s) = f(x) / s for s > 0)
compute the same function when output channel i of the first is divided by s_i and input
channel i of the second multiplied by s_i. With s_i = sqrt(r1_i / r2_i), where r1_i is the
largest |weight| of the first layer's output channel i and r2_i that of the second layer's
input channel i, both become sqrt(r1_i * r2_i): per-channel ranges are evened out, so one
codebook (or grid) per tensor wastes fewer levels on a few wide channels. Chains are equalized
by sweeping over all pairs until the scales settle (the paper's iteration).

Pairs found (each intermediate value used once, not a graph output, weights unshared float32
initializers):
- Conv -> [Add(per-channel constant)] -> f -> Conv, the second possibly grouped or depthwise
  (its input channel c scales the rows of group c // (C / group));
- Gemm/MatMul -> [Add(per-channel constant)] -> f -> Gemm/MatMul (2-D weights).
f is Relu, LeakyRelu, PRelu, nothing (identity), or Clip(a, b) with constant bounds. Clip (e.g.
ReLU6) is not positively homogeneous: clip(x, a, b) / s = clip(x / s, a / s, b / s), so a
scaled Clip is rewritten as Max/Relu + Min against per-channel bounds, which keeps the float
model's outputs unchanged. HardSwish, Sigmoid and other activations end a pair.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from onnxcomp.passes.weight_pass import StatsPassResult, WeightPass

logger = logging.getLogger(__name__)

HOMOGENEOUS = {"Relu", "LeakyRelu", "PRelu"}
LINEAR_OPS = {"Conv", "Gemm", "MatMul"}
MAX_SWEEPS = 50
TOLERANCE = 1e-3  # stop when every scale of a sweep is within this of 1 (relative)
SCALE_LIMIT = 1e6  # a channel is never scaled by more than this (or less than its inverse) in all


@dataclasses.dataclass
class _Pair:
    first: ir.Node
    bias: ir.Value | None  # the first layer's per-channel additive constant (Conv/Gemm bias or a following Add)
    activation: ir.Node | None
    second: ir.Node
    channels: int
    scale: np.ndarray  # accumulated s per channel (first layer divided, second multiplied)


class EqualizeCrossLayerPass(WeightPass):
    """Even out per-channel weight ranges of consecutive layers without changing the outputs.

    Args:
        max_sweeps: passes over all pairs at most (chains need several to settle).

    Preserves the graph's inputs, outputs and (up to float rounding) the function it computes;
    only weight and bias values change, plus a Clip between a scaled pair becoming Max/Relu +
    Min with per-channel bounds. Idempotent: a second run finds every scale within tolerance of
    1 and changes nothing. Statistics: one row per pair (first and second layer, channels, the
    ratio of largest to smallest channel range of the first layer before and after), named by
    the two weights.
    """

    def __init__(self, max_sweeps: int = MAX_SWEEPS):
        super().__init__()
        self.max_sweeps = max_sweeps

    def call(self, model: ir.Model) -> StatsPassResult:
        pairs = _find_pairs(model.graph)
        if not pairs:
            return StatsPassResult(model, modified=False)
        arrays = {value.name: value.const_value.numpy().astype(np.float64)
                  for pair in pairs for value in _weights(pair)}
        spread_before = {id(pair): _spread(_out_ranges(pair.first, arrays)) for pair in pairs}
        for sweep in range(self.max_sweeps):
            largest = 0.0
            for pair in pairs:
                r1, r2 = _out_ranges(pair.first, arrays), _in_ranges(pair.second, arrays, pair.channels)
                with np.errstate(divide="ignore", invalid="ignore"):
                    step = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / r2), 1.0)
                total = np.clip(pair.scale * step, 1 / SCALE_LIMIT, SCALE_LIMIT)
                step = total / pair.scale
                pair.scale = total
                _scale_out(pair, arrays, 1 / step)
                _scale_in(pair.second, arrays, step, pair.channels)
                largest = max(largest, float(np.max(np.abs(np.log(step)))))
            if largest < TOLERANCE:
                break
        changed = [pair for pair in pairs if np.max(np.abs(np.log(pair.scale))) >= TOLERANCE]
        if not changed:
            return StatsPassResult(model, modified=False)
        for value in {value.name: value for pair in changed for value in _weights(pair)}.values():
            value.const_value = ir.tensor(arrays[value.name].astype(np.float32), name=value.name)
        rows = []
        for pair in changed:
            if pair.activation is not None and pair.activation.op_type == "Clip":
                _rescale_clip(model.graph, pair)
            rows.append({"first": pair.first.inputs[1].name, "second": pair.second.inputs[1].name, "channels": pair.channels,
                         "spread_before": spread_before[id(pair)],
                         "spread_after": _spread(_out_ranges(pair.first, arrays))})
            logger.debug("equalized %s -> %s (%d channels): range spread %.3g -> %.3g", rows[-1]["first"],
                         rows[-1]["second"], pair.channels, rows[-1]["spread_before"], rows[-1]["spread_after"])
        return StatsPassResult(model, modified=True, rows=rows)


def _find_pairs(graph: ir.Graph) -> list[_Pair]:
    pairs = []
    for node in graph:
        if node.op_type not in LINEAR_OPS or node.domain not in ("", "ai.onnx"):
            continue
        pair = _pair_from(node)
        if pair is not None:
            pairs.append(pair)
    return pairs


def _pair_from(first: ir.Node) -> _Pair | None:
    channels = _out_channels(first)
    if channels is None:
        return None
    bias = first.inputs[2] if first.op_type in ("Conv", "Gemm") and len(first.inputs) > 2 else None
    if bias is not None and not _per_channel_constant(bias, channels):
        return None
    value = first.outputs[0]
    node = _only_consumer(value)
    if node is not None and node.op_type == "Add" and bias is None:
        other = node.inputs[1] if node.inputs[0] is value else node.inputs[0]
        output_rank = len(first.inputs[1].const_value.shape) if first.op_type == "Conv" else 2
        if not _broadcast_per_channel(other, channels, output_rank, 1 if first.op_type == "Conv" else output_rank - 1):
            return None
        bias, value = other, node.outputs[0]
        node = _only_consumer(value)
    activation = None
    if node is not None and (node.op_type in HOMOGENEOUS or node.op_type == "Clip" and _clip_bounds(node) is not None):
        if node.op_type == "PRelu" and node.inputs[0] is not value:
            return None
        activation, value = node, node.outputs[0]
        node = _only_consumer(value)
    if node is None or node.op_type not in LINEAR_OPS or node.inputs[0] is not value:
        return None
    if (first.op_type == "Conv") != (node.op_type == "Conv") or _in_channels(node) != channels:
        return None
    pair = _Pair(first, bias, activation, node, channels, np.ones(channels))
    if any(not _own_float_initializer(weight) for weight in _weights(pair)):
        return None
    return pair


def _only_consumer(value: ir.Value) -> ir.Node | None:
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0].node


def _own_float_initializer(value: ir.Value) -> bool:
    return (value.const_value is not None and value.is_initializer() and value.dtype == ir.DataType.FLOAT
            and len(list(value.uses())) == 1 and not value.is_graph_input())


def _per_channel_constant(value: ir.Value | None, channels: int) -> bool:
    """A Conv/Gemm bias input: [C] (Gemm also [1, C])."""
    if value is None or value.const_value is None:
        return False
    dims = list(value.const_value.shape)
    return dims[-1:] == [channels] and all(dim == 1 for dim in dims[:-1])


def _broadcast_per_channel(value: ir.Value, channels: int, output_rank: int, axis: int) -> bool:
    """A constant that, broadcast against an output of `output_rank`, varies along `axis` only."""
    if value.const_value is None:
        return False
    dims = list(value.const_value.shape)
    position = len(dims) - (output_rank - axis)  # numpy broadcasting aligns trailing dims
    if position < 0 or len(dims) > output_rank or dims[position] != channels:
        return False
    return all(dim == 1 for index, dim in enumerate(dims) if index != position)


def _weights(pair: _Pair) -> list[ir.Value]:
    values = [pair.first.inputs[1], pair.second.inputs[1]]
    if pair.bias is not None:
        values.append(pair.bias)
    return values


def _attribute(node: ir.Node, name: str, default: int) -> int:
    attribute = node.attributes.get(name)
    return default if attribute is None else attribute.as_int()


def _weight_shape(node: ir.Node) -> tuple[int, ...] | None:
    if len(node.inputs) < 2 or node.inputs[1] is None or node.inputs[1].const_value is None:
        return None
    return tuple(node.inputs[1].const_value.shape)


def _out_axis(node: ir.Node) -> int:
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if _attribute(node, "transB", 0) else 1
    return 1  # MatMul [K, N]


def _out_channels(node: ir.Node) -> int | None:
    shape = _weight_shape(node)
    if shape is None or (node.op_type != "Conv" and len(shape) != 2) or (node.op_type == "Conv" and len(shape) < 3):
        return None
    return shape[_out_axis(node)]


def _in_channels(node: ir.Node) -> int | None:
    shape = _weight_shape(node)
    if shape is None:
        return None
    if node.op_type == "Conv":
        return shape[1] * _attribute(node, "group", 1) if len(shape) >= 3 else None
    if len(shape) != 2 or (node.op_type == "Gemm" and _attribute(node, "transA", 0)):
        return None
    return shape[1] if node.op_type == "Gemm" and _attribute(node, "transB", 0) else shape[0]


def _out_ranges(node: ir.Node, arrays: dict[str, np.ndarray]) -> np.ndarray:
    weight = np.moveaxis(arrays[node.inputs[1].name], _out_axis(node), 0)
    return np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)


def _in_view(node: ir.Node, weight: np.ndarray, channels: int) -> np.ndarray:
    """The second layer's weight as [input channel, ...] (a view for Conv groups: [C, O/g, ...])."""
    if node.op_type == "Conv":
        groups = _attribute(node, "group", 1)
        per_group = channels // groups
        out = weight.shape[0] // groups
        grouped = weight.reshape(groups, out, per_group, *weight.shape[2:])  # [g, O/g, C/g, k...]
        return np.moveaxis(grouped, 2, 1).reshape(channels, out, *weight.shape[2:])  # copy: channel c = g * C/g + j
    axis = 1 if node.op_type == "Gemm" and _attribute(node, "transB", 0) else 0
    return np.moveaxis(weight, axis, 0)


def _in_ranges(node: ir.Node, arrays: dict[str, np.ndarray], channels: int) -> np.ndarray:
    view = _in_view(node, arrays[node.inputs[1].name], channels)
    return np.abs(view).reshape(channels, -1).max(axis=1)


def _scale_out(pair: _Pair, arrays: dict[str, np.ndarray], factor: np.ndarray) -> None:
    name = pair.first.inputs[1].name
    shape = [1] * arrays[name].ndim
    shape[_out_axis(pair.first)] = -1
    arrays[name] = arrays[name] * factor.reshape(shape)
    if pair.bias is not None:
        bias = arrays[pair.bias.name]
        arrays[pair.bias.name] = (bias.reshape(-1) * factor).reshape(bias.shape)


def _scale_in(node: ir.Node, arrays: dict[str, np.ndarray], factor: np.ndarray, channels: int) -> None:
    name = node.inputs[1].name
    weight = arrays[name]
    if node.op_type == "Conv":
        groups = _attribute(node, "group", 1)
        grouped = weight.reshape(groups, weight.shape[0] // groups, channels // groups, *weight.shape[2:])
        shape = [groups, 1, channels // groups] + [1] * (weight.ndim - 2)
        arrays[name] = (grouped * factor.reshape(shape)).reshape(weight.shape)
        return
    shape = [1, 1]
    shape[1 if node.op_type == "Gemm" and _attribute(node, "transB", 0) else 0] = -1
    arrays[name] = weight * factor.reshape(shape)


def _spread(ranges: np.ndarray) -> float:
    alive = ranges[ranges > 0]
    return float(alive.max() / alive.min()) if alive.size else 1.0


def _clip_bounds(node: ir.Node) -> tuple[float | None, float | None] | None:
    """A Clip's constant (min, max) (None: that side open), or None when a bound is not constant."""
    if node.attributes.get("min") is not None or node.attributes.get("max") is not None:
        return None  # opset < 11 attributes: not produced by canonicalize (opset >= 11)
    bounds = []
    for index in (1, 2):
        value = node.inputs[index] if len(node.inputs) > index else None
        if value is None:
            bounds.append(None)
        elif value.const_value is None or value.const_value.size != 1:
            return None
        else:
            bounds.append(float(value.const_value.numpy().reshape(())))
    return bounds[0], bounds[1]


def _rescale_clip(graph: ir.Graph, pair: _Pair) -> None:
    """clip(y, a, b) -> Min(Max(y', a / s), b / s) on y' = y / s (Relu for a == 0)."""
    clip = pair.activation
    low, high = _clip_bounds(clip)
    rank = len(pair.first.inputs[1].const_value.shape) - 1 if pair.first.op_type == "Conv" else 1
    shape = (pair.channels,) + (1,) * (rank - 1)
    name = clip.name or clip.outputs[0].name
    value = clip.inputs[0]
    nodes = []
    if low is not None:
        if low == 0:
            nodes.append(ir.node("Relu", [value], name=f"{name}_relu"))
        else:
            bound = _constant(graph, f"{name}_low", (low / pair.scale).reshape(shape))
            nodes.append(ir.node("Max", [value, bound], name=f"{name}_max"))
        value = nodes[-1].outputs[0]
    if high is not None:
        bound = _constant(graph, f"{name}_high", (high / pair.scale).reshape(shape))
        nodes.append(ir.node("Min", [value, bound], name=f"{name}_min"))
        value = nodes[-1].outputs[0]
    if not nodes:
        nodes.append(ir.node("Identity", [value], name=f"{name}_identity"))
        value = nodes[-1].outputs[0]
    graph.insert_after(clip, nodes)
    value.name = clip.outputs[0].name
    value.type, value.shape = clip.outputs[0].type, clip.outputs[0].shape
    clip.outputs[0].replace_all_uses_with(value)
    clip.outputs[0].name = None
    graph.remove(clip, safe=True)


def _constant(graph: ir.Graph, name: str, array: np.ndarray) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(array.astype(np.float32), name=name))
    graph.register_initializer(value)
    return value


def equalize(model: ir.Model) -> StatsPassResult:
    """Run `EqualizeCrossLayerPass` on `model` in place; returns its result (rows per pair)."""
    return EqualizeCrossLayerPass()(model)
