"""Remove whole neurons and channels so the dense graph really shrinks.

The pass reads the channel groups of :mod:`onnxcomp.channels`, chooses channels to drop in
each group that is not blocked, and cuts them everywhere at once: the producers' weight rows
and biases, BatchNorm and other per-channel parameters, depthwise ``group`` attributes,
Concat offsets, Reshape/Resize shape constants, Flatten blocks in the next weight, and the
input slices of every layer that reads them. Model input features are dropped by a Gather
inside the graph, so the model's inputs and outputs keep their names, dtypes and shapes.

A removed channel is replaced by a constant whose contribution moves into the bias of every
layer that read it (mean replacement, :mod:`onnxcomp.passes._compensate`): the value it is
known to have where that is computable without data (zero incoming weights: the producer's
bias, through ReLU, BatchNorm, residual Adds, pooling, Flatten, ...), else its mean activation
on sample inputs when the pass is given some, else the value it would have with zero incoming
weights. Only a known constant makes this exact, and only where no zero padding surrounds it;
the lossless ``select="dead"`` rule removes constant channels only there. Before a padded Conv
the contribution is averaged over the output positions: the best constant bias in least
squares, exact on average though not at any one position (the kernel's full sum would be exact
in the interior and wrong at the borders; on the MNIST ResNet the two choices differ by 0.01
points of accuracy).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import CheckerPass

from onnxcomp.channels import (
    ChannelAnalysis,
    ChannelGroup,
    Layout,
    Segment,
    Tracked,
    analyze_channels,
    constant,
    layout_length,
    layout_units,
    segment_offsets,
)
from onnxcomp.errors import OnnxcompError
from onnxcomp.passes._compensate import conv_bias_shift, measure_means, measure_moments
from onnxcomp.passes._stats import StatsPassResult

logger = logging.getLogger(__name__)

__all__ = ["EliminateNeuronsPass", "EliminateNeuronsResult", "LayerChange", "replacement_errors"]

_WEIGHT_LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclasses.dataclass(frozen=True)
class LayerChange:
    """How one weight layer's weight shrank."""

    node: str
    op_type: str
    tensor: str
    before: tuple[int, ...]
    after: tuple[int, ...]


@dataclasses.dataclass
class EliminateNeuronsResult(StatsPassResult):
    """What the pass removed; ``rows`` has one row per weight layer that shrank.

    Attributes:
        removed: Channels removed per group name.
        sizes: (before, after) channel count per group name.
        layers: Weight layers whose weights changed shape.
        blocked: Reason per group name for groups left untouched.
        params_before: Number of constant parameters before the pass.
        params_after: Number of constant parameters after the pass.
        rounds: Rounds of analysis and removal that changed the model.
    """

    removed: dict[str, int] = dataclasses.field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    layers: list[LayerChange] = dataclasses.field(default_factory=list)
    blocked: dict[str, str] = dataclasses.field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    rounds: int = 0

    @property
    def neurons_removed(self) -> int:
        return sum(self.removed.values())

    def summary(self) -> str:
        return (
            f"{self.neurons_removed} channels removed in {len(self.removed)} groups, "
            f"{len(self.blocked)} groups blocked; parameters {self.params_before} -> "
            f"{self.params_after}"
        )


class EliminateNeuronsPass(ir.passes.InPlacePass):
    """Remove neurons/channels structurally, keeping the model's interface.

    Args:
        keep: Explicit keep masks, by group id or name (from
            :func:`onnxcomp.channels.analyze_channels` on the same model). Removes exactly the
            masked-out channels, in one round.
        select: ``"dead"`` (lossless: channels whose outgoing weights are all zero or whose
            activation is a constant that can be folded into the next layer) or ``"norm"``
            (also channels whose outgoing weights have an L2 norm at most ``threshold``, and
            channels whose incoming-norm times outgoing-norm is at most ``threshold``: their
            activation is taken as the constant the bias gives and folded like a dead one).
        threshold: Norm threshold for ``select="norm"``.
        max_rounds: Removing channels can make others dead; selection repeats until nothing
            changes or this many rounds ran.
        samples: Model input name -> sample inputs (first axis: samples). Removed channels
            that are not a known constant are replaced by their mean activation on these
            (measured in ONNX Runtime), folded into the next layers' biases.

    Preserves: graph inputs and outputs (names, dtypes, shapes), at least one channel per
    group, and every blocked group.
    """

    def __init__(
        self,
        keep: Mapping[int | str, np.ndarray] | None = None,
        *,
        select: str = "dead",
        threshold: float = 0.0,
        max_rounds: int = 16,
        samples: Mapping[str, np.ndarray] | None = None,
    ):
        super().__init__()
        if select not in ("dead", "norm"):
            raise OnnxcompError(f"select must be 'dead' or 'norm', not {select!r}")
        if threshold < 0:
            raise OnnxcompError(f"threshold must be >= 0, not {threshold}")
        if max_rounds < 1:
            raise OnnxcompError(f"max_rounds must be >= 1, not {max_rounds}")
        self.keep = dict(keep) if keep is not None else None
        self.select = select
        self.threshold = threshold if select == "norm" else 0.0
        self.max_rounds = max_rounds
        self.samples = dict(samples) if samples is not None else None

    def requires(self, model: ir.Model) -> None:
        if "" not in model.opset_imports and "ai.onnx" not in model.opset_imports:
            raise ir.passes.PreconditionError("the model imports no ONNX opset")

    def ensures(self, model: ir.Model) -> None:
        CheckerPass()(model)

    def call(self, model: ir.Model) -> EliminateNeuronsResult:
        interface = _interface(model)
        shapes_before = _weight_shapes(model)
        params_before = _parameter_count(model)
        result = EliminateNeuronsResult(model, modified=False, params_before=params_before)
        removed: collections.Counter[str] = collections.Counter()
        first: ChannelAnalysis | None = None
        for _ in range(self.max_rounds if self.keep is None else 1):
            analysis = analyze_channels(model)
            first = first or analysis
            masks, consts, estimates = self._masks(analysis)
            if not masks:
                break
            means = _consumer_means(analysis, masks, self.samples) if self.samples else {}
            _remove_channels(analysis, masks, consts, estimates, means)
            for group_id, mask in masks.items():
                removed[analysis.groups[group_id].name] += int((~mask).sum())
            result.rounds += 1
        assert first is not None
        if _interface(model) != interface:
            raise ir.passes.PostconditionError("neuron elimination changed the model interface")
        result.modified = bool(removed)
        result.removed = dict(removed)
        result.sizes = {g.name: (g.size, g.size - removed[g.name]) for g in first.groups}
        result.blocked = {g.name: g.blocked_reason for g in first.groups if g.blocked_reason}
        shapes_after = _weight_shapes(model)
        result.layers = [
            LayerChange(name, op_type, tensor, before, shapes_after[name][2])
            for name, (op_type, tensor, before) in shapes_before.items()
            if name in shapes_after and shapes_after[name][2] != before
        ]
        result.rows = [
            {"name": c.tensor, "node": c.node, "op_type": c.op_type, "before": list(c.before),
             "after": list(c.after)}
            for c in result.layers
        ]
        result.params_after = _parameter_count(model)
        if removed:
            logger.info(
                "Removed %d channels in %d groups; parameters %d -> %d",
                result.neurons_removed, len(removed), params_before, result.params_after,
            )
        return result

    # -- selection ---------------------------------------------------------------------------

    def _masks(self, analysis: ChannelAnalysis):
        """Keep masks of the groups that lose channels this round, and channel constants.

        Returns the masks, the known channel constants and the estimates that take every
        removed channel's incoming weights as zero.
        """
        out_norms = _outgoing_norms(analysis)
        zero_in = _zero_incoming(analysis, out_norms, self.threshold)
        consts = _channel_constants(analysis, zero_in)
        if self.keep is not None:
            masks = self._explicit_masks(analysis)
        else:
            masks = {
                group.id: _select(analysis, group, consts, out_norms[group.id], self.threshold)
                for group in analysis.groups
                if not group.blocked
            }
        masks = {g: m for g, m in masks.items() if not m.all()}
        origin_masks = {o: masks[g] for o, g in analysis.group_of_origin.items() if g in masks}
        removed_in = {o: zero | ~origin_masks[o] if o in origin_masks else zero for o, zero in zero_in.items()}
        return masks, consts, _channel_constants(analysis, removed_in)

    def _explicit_masks(self, analysis: ChannelAnalysis) -> dict[int, np.ndarray]:
        masks = {}
        for key, mask in self.keep.items():  # type: ignore[union-attr]
            try:
                group = analysis.group(key)
            except KeyError:
                raise OnnxcompError(f"no channel group {key!r} in the model") from None
            mask = np.asarray(mask, dtype=bool).reshape(-1)
            if mask.size != group.size:
                raise OnnxcompError(
                    f"keep mask for group {group.name!r} has {mask.size} entries, "
                    f"the group has {group.size} channels"
                )
            if not mask.any():
                raise OnnxcompError(f"keep mask for group {group.name!r} keeps no channel")
            if group.blocked:
                logger.warning("Group %r is blocked (%s); left unchanged",
                               group.name, group.blocked_reason)
                continue
            masks[group.id] = mask
        return masks


def replacement_errors(
    model: ir.Model, samples: Mapping[str, np.ndarray], analysis: ChannelAnalysis | None = None
) -> dict[str, np.ndarray]:
    """Per unblocked channel group (by name): what replacing each channel by its mean costs.

    For every layer that reads the group, the channel's variance around its per-position mean
    on ``samples`` (ONNX Runtime) times the squared norm of the weights that read it; the
    square root of the sum over the layers. A score for explicit keep masks: the channels with
    the smallest values lose least under the pass's mean replacement. Unlike weight norms it
    sees what BatchNorm folding hides (a channel whose BatchNorm scale is near zero can have
    large folded weights yet almost no variance).
    """
    analysis = analysis or analyze_channels(model)
    edits = [e for e in analysis.tensor_edits if e.role == "consumer"]
    moments = measure_moments(model, {e.node.inputs[0] for e in edits}, samples)
    errors = {group.id: np.zeros(group.size) for group in analysis.groups}
    for edit in edits:
        source = edit.node.inputs[0]
        axis = analysis.tracked[source].axis
        if source not in moments or axis == 0:  # moments drop the sample axis 0
            continue
        first, second = moments[source]
        variance = np.moveaxis(np.maximum(second - first * first, 0), axis - 1, 0)
        variance = variance.reshape(variance.shape[0], -1).mean(axis=1)
        weight = np.moveaxis(constant(edit.node.inputs[edit.input_index]).astype(np.float64), edit.axis, 0)
        cost = variance * (weight.reshape(weight.shape[0], -1) ** 2).sum(axis=1)
        for segment, offset, _ in segment_offsets(edit.layout):
            if segment.origin is not None:
                block = cost[offset : offset + segment.length].reshape(segment.size, segment.inner)
                errors[analysis.group_of_origin[segment.origin]] += block.sum(axis=1)
    return {group.name: np.sqrt(errors[group.id]) for group in analysis.groups if not group.blocked}


# -- analysis of channel values ------------------------------------------------------------


def _channel_blocks(array: np.ndarray, axis: int, offset: int, size: int, inner: int):
    """The slices of ``size`` channels on ``axis``, one row per channel."""
    moved = np.moveaxis(array, axis, 0)[offset : offset + size * inner]
    return moved.reshape(size, -1)


def _outgoing_norms(analysis: ChannelAnalysis) -> dict[int, np.ndarray]:
    """Per group: L2 norm of each channel's weights in all layers that read it."""
    norms2 = {group.id: np.zeros(group.size) for group in analysis.groups}
    for edit in analysis.tensor_edits:
        if edit.role != "consumer":
            continue
        weight = constant(edit.node.inputs[edit.input_index]).astype(np.float64)
        for segment, offset, _ in segment_offsets(edit.layout):
            if segment.origin is not None:
                rows = _channel_blocks(weight, edit.axis, offset, segment.size, segment.inner)
                norms2[analysis.group_of_origin[segment.origin]] += (rows**2).sum(axis=1)
    return {group_id: np.sqrt(n) for group_id, n in norms2.items()}


def _zero_incoming(
    analysis: ChannelAnalysis, out_norms: dict[int, np.ndarray], threshold: float
) -> dict[int, np.ndarray]:
    """Per producer origin: channels whose incoming weights count as zero.

    Exactly zero, or (with a threshold) so small that incoming norm times outgoing norm, a
    bound on the signal the channel passes per unit of input, is at most the threshold.
    """
    zero: dict[int, np.ndarray] = {}
    for edit in analysis.tensor_edits:
        if edit.role != "weight":
            continue
        (segment,) = edit.layout
        weight = constant(edit.node.inputs[edit.input_index]).astype(np.float64)
        rows = _channel_blocks(weight, edit.axis, 0, segment.size, 1)
        in_norm = np.sqrt((rows**2).sum(axis=1))
        zero[segment.origin] = in_norm == 0
        if threshold > 0:
            out_norm = out_norms[analysis.group_of_origin[segment.origin]]
            zero[segment.origin] |= in_norm * out_norm <= threshold
    return zero


def _per_unit(array: np.ndarray, axis: int, layout: Layout) -> np.ndarray:
    """One value per channel where the array is uniform over the channel's block, else NaN."""
    values = []
    for segment, offset, _ in segment_offsets(layout):
        rows = _channel_blocks(array.astype(np.float64), axis, offset, segment.size,
                               segment.inner)
        uniform = rows.min(axis=1) == rows.max(axis=1)
        values.append(np.where(uniform, rows[:, 0], np.nan))
    return np.concatenate(values) if values else np.zeros(0)


def _channel_constants(
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
        return x if _no_padding(node) or node.attributes.get_int("count_include_pad", 0) == 0 \
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
        if _no_padding(node):
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


def _no_padding(node: ir.Node) -> bool:
    auto_pad = node.attributes.get_string("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        return False
    return not any(node.attributes.get_ints("pads", ()))


# -- choosing channels ---------------------------------------------------------------------


def _occurrences(analysis: ChannelAnalysis, group: ChannelGroup, layout: Layout):
    """(element offset, unit offset, inner) of each run of the group's channels in a layout."""
    for segment, offset, unit in segment_offsets(layout):
        if segment.origin is not None and analysis.group_of_origin[segment.origin] == group.id:
            yield offset, unit, segment.inner


def _select(
    analysis: ChannelAnalysis,
    group: ChannelGroup,
    consts: dict[ir.Value, np.ndarray],
    out_norm: np.ndarray,
    threshold: float,
) -> np.ndarray:
    """Keep mask of one group under the dead/norm rules."""
    removable = np.ones(group.size, dtype=bool)
    for edit in analysis.tensor_edits:
        if edit.role != "consumer":
            continue
        weight = constant(edit.node.inputs[edit.input_index])
        data = consts[edit.node.inputs[0]]
        for offset, unit, inner in _occurrences(analysis, group, edit.layout):
            rows = _channel_blocks(weight, edit.axis, offset, group.size, inner)
            value = data[unit : unit + group.size]
            foldable = np.isfinite(value) & _foldable(edit.node)
            removable &= (rows == 0).all(axis=1) | (value == 0) | foldable
    if threshold > 0:
        removable |= out_norm <= threshold
    if removable.all():
        removable[int(np.argmax(out_norm))] = False
    return ~removable


def _foldable(node: ir.Node) -> bool:
    """Whether a constant input channel of this weight layer can move into its bias exactly."""
    if node.op_type == "Conv":
        return _no_padding(node)
    if node.op_type == "Gemm":
        return node.attributes.get_float("beta", 1.0) != 0
    if node.op_type == "MatMul":
        return _matmul_bias(node) is not None
    return False


def _matmul_bias(node: ir.Node) -> tuple[ir.Node, int] | None:
    """The Add that adds a constant bias to this MatMul's output, if there is one."""
    out = node.outputs[0]
    uses = list(out.uses())
    if len(uses) != 1 or out.is_graph_output() or uses[0].node.op_type != "Add":
        return None
    add, index = uses[0].node, 1 - uses[0].idx
    bias = constant(add.inputs[index])
    width = constant(node.inputs[1]).shape[1]  # type: ignore[union-attr]
    if bias is None or bias.ndim == 0 or bias.shape[-1] != width or bias.size != width:
        return None
    return add, index


# -- editing -------------------------------------------------------------------------------


class _Namer:
    def __init__(self, graph: ir.Graph):
        self.taken = {v.name for v in graph.inputs} | set(graph.initializers)
        self.taken |= {v.name for node in graph for v in node.outputs}
        self.taken |= {node.name for node in graph}

    def __call__(self, base: str) -> str:
        name, count = base, 0
        while name in self.taken:
            count += 1
            name = f"{base}_{count}"
        self.taken.add(name)
        return name


def _write(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, namer: _Namer) -> None:
    """Give input ``index`` of ``node`` a new constant; copies a constant that is shared."""
    value = node.inputs[index] if index < len(node.inputs) else None
    if (
        value is not None
        and value.is_initializer()
        and not value.is_graph_output()
        and len(value.uses()) == 1
    ):
        value.const_value = ir.tensor(array, name=value.name)
        value.shape = ir.Shape(array.shape)
        return
    base = value.name if value is not None else f"{node.name or node.op_type}_bias"
    new = ir.Value(
        name=namer(base),
        shape=ir.Shape(array.shape),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
    )
    new.const_value = ir.tensor(array, name=new.name)
    graph.register_initializer(new)
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    node.replace_input_with(index, new)
    producer = value.producer() if value is not None else None
    if producer is not None and producer.op_type == "Constant" and not value.uses():
        graph.remove(producer, safe=True)


def _keep_indices(layout: Layout, masks: dict[int, np.ndarray]) -> np.ndarray | None:
    """Element indices kept along an axis laid out as ``layout``; None if nothing changes."""
    parts, changed = [], False
    for segment, offset, _ in segment_offsets(layout):
        mask = masks.get(segment.origin) if segment.origin is not None else None
        if mask is None:
            parts.append(np.arange(offset, offset + segment.length))
            continue
        changed |= not mask.all()
        kept = np.flatnonzero(mask)
        parts.append((offset + kept[:, None] * segment.inner + np.arange(segment.inner)).ravel())
    return np.concatenate(parts).astype(np.int64) if changed else None


def _remove_channels(
    analysis: ChannelAnalysis,
    group_masks: dict[int, np.ndarray],
    consts: dict[ir.Value, np.ndarray],
    estimates: dict[ir.Value, np.ndarray],
    means: dict[ir.Value, np.ndarray],
) -> None:
    """Cut the masked-out channels everywhere the analysis found them."""
    graph = analysis.model.graph
    namer = _Namer(graph)
    masks = {o: group_masks[g] for o, g in analysis.group_of_origin.items() if g in group_masks}
    _fold_constants(analysis, group_masks, consts, estimates, means, namer)

    for edit in analysis.tensor_edits:
        keep = _keep_indices(edit.layout, masks)
        array = constant(edit.node.inputs[edit.input_index]) if keep is not None and \
            edit.input_index < len(edit.node.inputs) else None
        if array is None:
            continue
        axis = edit.axis
        if axis < 0:  # a Gemm bias is cut only where it does not broadcast
            if array.ndim == 0 or array.shape[-1] != layout_length(edit.layout):
                continue
            axis = array.ndim - 1
        _write(graph, edit.node, edit.input_index, np.take(array, keep, axis=axis), namer)
    for edit in analysis.shape_edits:
        keep = _keep_indices(edit.layout, masks)
        if keep is None:
            continue
        array = constant(edit.node.inputs[edit.input_index]).copy()  # type: ignore[union-attr]
        if array[edit.position] > 0:
            array[edit.position] = len(keep)
            _write(graph, edit.node, edit.input_index, array, namer)
    for edit in analysis.attribute_edits:
        keep = _keep_indices(edit.layout, masks)
        if keep is not None:
            edit.node.attributes[edit.name] = ir.AttrInt64(edit.name, len(keep))

    gathered: set[ir.Value] = set()
    for origin in analysis.origins:
        if origin.kind == "input" and origin.id in masks:
            keep = _keep_indices(analysis.tracked[origin.value].layout, masks)
            if keep is not None and _gather_input(graph, origin.value, origin.node,
                                                  origin.axis, keep, namer):
                gathered.add(origin.value)

    for value, tracked in analysis.tracked.items():
        keep = _keep_indices(tracked.layout, masks)
        if keep is None or value in gathered or value.is_graph_input() or value.shape is None:
            continue
        dims = list(value.shape.dims)
        if tracked.axis < len(dims):
            dims[tracked.axis] = len(keep)
            value.shape = ir.Shape(dims)


def _gather_input(
    graph: ir.Graph,
    value: ir.Value,
    node: ir.Node | None,
    axis: int,
    keep: np.ndarray,
    namer: _Namer,
) -> bool:
    """Drop input features: rewrite an existing Gather's indices or insert a new Gather.

    Returns whether a new Gather now reads ``value`` (whose own shape then stays).
    """
    if node is not None and node.op_type == "Gather":
        indices = constant(node.inputs[1])
        _write(graph, node, 1, indices[keep], namer)  # type: ignore[index]
        return False
    indices = ir.Value(name=namer(f"{value.name}_kept_index"), shape=ir.Shape(keep.shape),
                       type=ir.TensorType(ir.DataType.INT64))
    indices.const_value = ir.tensor(keep, name=indices.name)
    graph.register_initializer(indices)
    gather = ir.node("Gather", [value, indices], {"axis": axis}, name=namer(f"{value.name}_keep"))
    out = gather.outputs[0]
    out.name = namer(f"{value.name}_kept")
    out.type = value.type
    if value.shape is not None:
        dims = list(value.shape.dims)
        dims[axis] = len(keep)
        out.shape = ir.Shape(dims)
    for use in list(value.uses()):
        if use.node is not gather:
            use.node.replace_input_with(use.idx, out)
    producer = value.producer()
    if producer is None:
        graph.insert_before(graph[0], gather)
    else:
        graph.insert_after(producer, gather)
    return True


def _consumer_means(
    analysis: ChannelAnalysis, group_masks: dict[int, np.ndarray], samples: Mapping[str, np.ndarray]
) -> dict[ir.Value, np.ndarray]:
    """Mean activations (per position) of the inputs of layers that lose input channels."""
    values = {
        edit.node.inputs[0]
        for edit in analysis.tensor_edits
        if edit.role == "consumer" and _takes_bias(edit.node)
        and any(True for g in group_masks for _ in _occurrences(analysis, analysis.groups[g], edit.layout))
    }
    return measure_means(analysis.model, values, samples)


def _fold_constants(
    analysis: ChannelAnalysis,
    group_masks: dict[int, np.ndarray],
    consts: dict[ir.Value, np.ndarray],
    estimates: dict[ir.Value, np.ndarray],
    means: dict[ir.Value, np.ndarray],
    namer: _Namer,
) -> None:
    """Add the removed channels' contribution to the biases of the layers that read them.

    Each removed channel counts as its known constant (``consts``), else its mean activation
    (``means``, per position over the samples), else its estimate with zero incoming weights.
    """
    contributions: dict[ir.Node, np.ndarray] = {}
    for edit in analysis.tensor_edits:
        if edit.role != "consumer" or not _takes_bias(edit.node):
            continue
        node, source = edit.node, edit.node.inputs[0]
        length = layout_length(edit.layout)
        removed = np.zeros(length, dtype=bool)
        known, estimate = np.full(length, np.nan), np.full(length, np.nan)
        for group_id, mask in group_masks.items():
            group = analysis.groups[group_id]
            for offset, unit, inner in _occurrences(analysis, group, edit.layout):
                span = slice(offset, offset + group.size * inner)
                removed[span] = np.repeat(~mask, inner)
                known[span] = np.repeat(consts[source][unit : unit + group.size], inner)
                estimate[span] = np.repeat(estimates[source][unit : unit + group.size], inner)
        if not removed.any():
            continue
        weight = constant(node.inputs[edit.input_index]).astype(np.float64)  # type: ignore[union-attr]
        axis = analysis.tracked[source].axis
        mean = means.get(source) if axis > 0 else None  # means drop the sample axis 0
        constants = np.where(np.isfinite(known), known, np.nan if mean is not None else estimate)
        contribution = _contribution(node, weight, edit.axis, axis, removed, constants, mean, analysis)
        if contribution is not None and contribution.any():
            contributions[node] = contributions.get(node, 0) + contribution
    for node, contribution in contributions.items():
        _add_to_bias(analysis.model.graph, node, contribution, namer)


def _contribution(node, weight, weight_axis, axis, removed, constants, mean, analysis) -> np.ndarray | None:
    """Output-channel contribution of the removed input elements to ``node``.

    ``constants`` has one value per element along the channel axis (NaN: use ``mean``, the
    per-position mean input without the sample axis, or nothing if there is none).
    """
    if mean is not None:
        mean = np.moveaxis(mean, axis - 1, 0)
    if node.op_type == "Conv":
        dims = analysis.dims(node.inputs[0])
        spatial = mean.shape[1:] if mean is not None else (
            tuple(dims[2:]) if dims is not None and all(isinstance(d, int) for d in dims[2:]) else None)
        if spatial is None:  # full kernel window: exact without padding, in the interior with it
            per_element = np.where(removed, np.nan_to_num(constants), 0.0)
            summed = np.tensordot(per_element, np.moveaxis(weight, weight_axis, 0), axes=(0, 0))
            return summed.reshape(summed.shape[0], -1).sum(axis=1)
        image = np.zeros((len(removed), *spatial))
        image[:] = np.nan_to_num(constants).reshape(-1, *([1] * len(spatial)))
        if mean is not None:
            use_mean = removed & np.isnan(constants)
            image[use_mean] = mean[use_mean]
        image[~removed] = 0.0
        return conv_bias_shift(node, weight, image)
    if mean is not None:  # Gemm/MatMul: linear, the mean over positions is enough
        mean = mean.reshape(mean.shape[0], -1).mean(axis=1)
        constants = np.where(np.isnan(constants), mean, constants)
    per_element = np.where(removed, np.nan_to_num(constants), 0.0)
    summed = np.tensordot(per_element, np.moveaxis(weight, weight_axis, 0), axes=(0, 0))
    if node.op_type == "Gemm":
        return node.attributes.get_float("alpha", 1.0) * summed
    return summed


def _takes_bias(node: ir.Node) -> bool:
    """Whether a constant can be added to this weight layer's output through a bias."""
    if node.op_type == "Conv":
        return node.attributes.get_int("group", 1) == 1
    return node.op_type != "ConvTranspose" and _foldable(node)


def _add_to_bias(graph: ir.Graph, node: ir.Node, contribution: np.ndarray, namer: _Namer):
    dtype = constant(node.inputs[1]).dtype  # type: ignore[union-attr]
    if node.op_type == "MatMul":
        node, index = _matmul_bias(node)  # type: ignore[misc]
    else:
        index = 2
        if node.op_type == "Gemm":
            contribution = contribution / node.attributes.get_float("beta", 1.0)
    current = constant(node.inputs[index]) if index < len(node.inputs) else None
    if current is None:
        updated = contribution
    else:
        updated = current.astype(np.float64) + contribution.reshape(
            (1,) * max(current.ndim - 1, 0) + (-1,)
        )
    _write(graph, node, index, np.asarray(updated, dtype=dtype), namer)


# -- bookkeeping ---------------------------------------------------------------------------


def _interface(model: ir.Model) -> list[tuple]:
    return [
        (v.name, v.dtype, None if v.shape is None else tuple(v.shape.dims))
        for v in [*model.graph.inputs, *model.graph.outputs]
    ]


def _weight_shapes(model: ir.Model) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    shapes = {}
    for node in model.graph:
        if node.op_type in _WEIGHT_LAYERS and len(node.inputs) > 1:
            weight = constant(node.inputs[1])
            if weight is not None and node.name:
                shapes[node.name] = (node.op_type, node.inputs[1].name or "", weight.shape)
    return shapes


def _parameter_count(model: ir.Model) -> int:
    return sum(
        v.const_value.size for v in model.graph.initializers.values() if v.const_value is not None
    )
