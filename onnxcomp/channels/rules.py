"""Rules for the ops that pass channels on, and the table from op type to rule."""

from __future__ import annotations

import functools
from collections.abc import Callable

import onnx_ir as ir

from onnxcomp.channels.layers import conv, conv_transpose, gemm, matmul
from onnxcomp.channels.tracer import Rule, Tracer
from onnxcomp.channels.types import (
    Segment,
    ShapeEdit,
    Tracked,
    constant,
    layout_length,
    scale_inner,
    static_product,
)

# Ops that act on each element alone: output channel c depends on input channel c only.
_UNARY_OPS = frozenset(
    "Abs Acos Acosh Asin Asinh Atan Atanh Cast Ceil Celu Clip Cos Cosh Dropout Elu Erf Exp "
    "Floor Gelu HardSigmoid HardSwish Identity IsInf IsNaN LeakyRelu Log Mish Neg Not "
    "Reciprocal Relu Round Selu Shrink Sigmoid Sign Sin Sinh Softplus Softsign Sqrt Tan Tanh "
    "ThresholdedRelu".split()
)
_ELEMENTWISE_OPS = frozenset(
    "Add And BitShift Div Equal Greater GreaterOrEqual Less LessOrEqual Max Mean Min Mod Mul "
    "Or PRelu Pow Sub Sum Where Xor".split()
)
_POOL_OPS = frozenset(
    "AveragePool GlobalAveragePool GlobalLpPool GlobalMaxPool LpPool MaxPool".split()
)
_REDUCE_OPS = frozenset(
    "ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd "
    "ReduceSum ReduceSumSquare".split()
)
_SOFTMAX_OPS = frozenset({"Softmax", "LogSoftmax", "Hardmax"})


def through_input_0(rule: Callable[[Tracer, ir.Node, Tracked], None]) -> Rule:
    """The rule of an op that passes channels through its input 0 only: channels that enter any
    other input are blocked (`Tracer.only`), and ``rule`` runs with input 0's channels, if any."""

    @functools.wraps(rule)
    def checked(tracer: Tracer, node: ir.Node, inputs: list[Tracked | None]) -> None:
        if tracer.only(node, inputs, (0,)) and inputs[0] is not None:
            rule(tracer, node, inputs[0])

    return checked


def _blocks(tracer: Tracer, t: Tracked, condition: bool, reason: str) -> bool:
    """Block ``t``'s channels, saying why, when ``condition`` holds; returns ``condition``."""
    if condition:
        tracer.block(t.layout, reason)
    return condition


def _pass_unless(tracer: Tracer, node: ir.Node, t: Tracked, condition: bool, reason: str,
                 axis: int | None = None) -> None:
    """Pass ``t``'s channels on (to ``axis``: by default the same), unless ``condition`` holds:
    then block them, saying why."""
    if not _blocks(tracer, t, condition, reason):
        tracer.pass_through(node, t, axis=axis)


@through_input_0
def unary(tracer: Tracer, node: ir.Node, t: Tracked) -> None:
    tracer.pass_through(node, t, outputs=len(node.outputs) if node.op_type == "Dropout" else 1)


@through_input_0
def pool(tracer: Tracer, node: ir.Node, t: Tracked) -> None:
    _pass_unless(tracer, node, t, t.axis != 1, f"channel axis is not axis 1 at {tracer.name(node)}")


@through_input_0
def batch_normalization(tracer: Tracer, node: ir.Node, t: Tracked) -> None:
    _normalization(tracer, node, t, (1, 2, 3, 4))


@through_input_0
def instance_normalization(tracer: Tracer, node: ir.Node, t: Tracked) -> None:
    _normalization(tracer, node, t, (1, 2))


def _normalization(tracer: Tracer, node: ir.Node, t: Tracked, params) -> None:
    if _blocks(tracer, t, t.axis != 1, f"channel axis is not axis 1 at {tracer.name(node)}"):
        return
    for index in params:
        if constant(node.inputs[index]) is None:
            tracer.block(t.layout, f"{tracer.name(node)} has a non-constant input {index}")
            return
    for index in params:
        tracer.edit(node, index, 0, t.layout, "param")
    tracer.pass_through(node, t)


@through_input_0
def layer_normalization(tracer: Tracer, node: ir.Node, t: Tracked) -> None:
    rank = tracer.rank(node.inputs[0])
    _pass_unless(tracer, node, t, rank is None or t.axis >= node.attributes.get_int("axis", -1) % rank,
                 f"{tracer.name(node)} normalizes over the channel axis")


@through_input_0
def softmax(tracer: Tracer, node: ir.Node, t: Tracked) -> None:
    rank = tracer.rank(node.inputs[0])
    if _blocks(tracer, t, rank is None, f"rank unknown at {tracer.name(node)}"):
        return
    axis = node.attributes.get_int("axis", -1 if tracer.opset >= 13 else 1) % rank
    _pass_unless(tracer, node, t, t.axis == axis or (tracer.opset < 13 and t.axis >= axis),
                 f"{tracer.name(node)} normalizes over the channel axis")


def elementwise(tracer: Tracer, node: ir.Node, inputs: list[Tracked | None]) -> None:
    out_rank = tracer.rank(node.outputs[0])
    tracked = [(i, t) for i, t in enumerate(inputs) if t is not None]
    if out_rank is None:
        for _, t in tracked:
            tracer.block(t.layout, f"rank unknown at {tracer.name(node)}")
        return
    main: list[tuple[int, Tracked, int]] = []
    for i, t in tracked:
        in_rank = tracer.rank(node.inputs[i])
        if in_rank is None:
            tracer.block(t.layout, f"rank unknown at {tracer.name(node)}")
            return
        if layout_length(t.layout) > 1:
            main.append((i, t, t.axis + out_rank - in_rank))
    if not main:
        for _, t in tracked:
            tracer.block(t.layout, f"a single channel is broadcast by {tracer.name(node)}")
        return
    axis, layout = main[0][2], main[0][1].layout
    for _, t, a in main[1:]:
        if a != axis or not tracer.unify(layout, t.layout, node):
            for _, t2, _ in main:
                tracer.block(t2.layout, f"{tracer.name(node)} joins differently laid out channels")
            return
    length = layout_length(layout)
    main_indices = {i for i, _, _ in main}
    for i, value in enumerate(node.inputs):
        if value is None or i in main_indices:
            continue
        dims = tracer.dims(value)
        if dims is None:
            tracer.block(layout, f"shape of '{value.name}' unknown at {tracer.name(node)}")
            return
        in_axis = axis - (out_rank - len(dims))
        if in_axis < 0 or dims[in_axis] == 1:
            continue  # broadcast over the channels
        if constant(value) is not None and dims[in_axis] == length:
            tracer.edit(node, i, in_axis, layout, "param")
            continue
        tracer.block(layout, f"'{value.name}' varies over the channels at {tracer.name(node)}")
        return
    tracer.pass_through(node, Tracked(axis, layout))


def concat(tracer: Tracer, node: ir.Node, inputs: list[Tracked | None]) -> None:
    rank = tracer.rank(node.outputs[0])
    tracked = [t for t in inputs if t is not None]
    if rank is None:
        for t in tracked:
            tracer.block(t.layout, f"rank unknown at {tracer.name(node)}")
        return
    axis = node.attributes.get_int("axis", 0) % rank
    if all(t.axis != axis for t in tracked):
        elementwise(tracer, node, inputs)  # concatenated along another axis
        return
    segments: list[Segment] = []
    for value, t in zip(node.inputs, inputs):
        dims = tracer.dims(value)
        if t is not None and t.axis == axis:
            segments.extend(t.layout)
        elif t is None and dims is not None and isinstance(dims[axis], int):
            segments.append(Segment(None, dims[axis]))
        else:
            for t2 in tracked:
                tracer.block(t2.layout, f"{tracer.name(node)} has an input of unknown width")
            return
    tracer.set(node.outputs[0], axis, tuple(segments))


def flatten(tracer: Tracer, node: ir.Node, inputs: list[Tracked | None]) -> None:
    t = inputs[0]
    dims = tracer.dims(node.inputs[0])
    if t is None:
        return
    if _blocks(tracer, t, dims is None, f"shape unknown at {tracer.name(node)}"):
        return
    axis = node.attributes.get_int("axis", 1)
    axis = axis + len(dims) if axis < 0 else axis
    inner = static_product(dims[t.axis + 1 :])
    if _blocks(tracer, t, t.axis != axis or inner is None,
               f"{tracer.name(node)} does not keep channels in contiguous blocks"):
        return
    tracer.set(node.outputs[0], 1, scale_inner(t.layout, inner))


@through_input_0
def reshape(tracer: Tracer, node: ir.Node, t: Tracked) -> None:
    target = constant(node.inputs[1])
    in_dims, out_dims = tracer.dims(node.inputs[0]), tracer.dims(node.outputs[0])
    reason = f"{tracer.name(node)} reshapes the channel axis to an unknown shape"
    if _blocks(tracer, t, target is None or in_dims is None or out_dims is None,
               f"{reason} (computed or unknown shape)"):
        return
    c = t.axis
    suffix = static_product(in_dims[c + 1 :])
    length = layout_length(t.layout)
    # What each output axis is, read from the shape constant where it says.
    out_eff = [
        int(e) if e > 0 else (in_dims[k] if e == 0 and k < len(in_dims) else out_dims[k])
        for k, e in enumerate(target.reshape(-1))
    ]
    j, layout = None, None
    for k in range(len(out_eff)):
        if suffix is None or static_product(out_eff[k:]) != length * suffix:
            continue
        if out_eff[k] == length and static_product(out_eff[k + 1 :]) == suffix:
            j, layout = k, t.layout
        elif k == len(out_eff) - 1 and out_eff[k] == length * suffix:
            j, layout = k, scale_inner(t.layout, suffix)
    if j is None or layout is None:
        tracer.block(t.layout, reason)
        return
    entries = [int(e) for e in target.reshape(-1)]
    if node.attributes.get_int("allowzero", 0) and 0 in entries:
        tracer.block(t.layout, reason)
        return
    entry = entries[j]
    copies_channels = c < len(entries) and entries[c] == 0 and c != j
    if copies_channels or (entry == 0 and (j != c or layout is not t.layout)):
        tracer.block(t.layout, reason)
        return
    if entry > 0:
        tracer.shape_edits.append(ShapeEdit(node, 1, j, layout))
    tracer.set(node.outputs[0], j, layout)


def transpose(tracer: Tracer, node: ir.Node, inputs: list[Tracked | None]) -> None:
    t = inputs[0]
    rank = tracer.rank(node.inputs[0])
    if t is None or rank is None:
        if t is not None:
            tracer.block(t.layout, f"rank unknown at {tracer.name(node)}")
        return
    perm = list(node.attributes.get_ints("perm", list(reversed(range(rank)))))
    tracer.pass_through(node, t, axis=perm.index(t.axis))


@through_input_0
def squeeze(tracer: Tracer, node: ir.Node, t: Tracked) -> None:
    rank = tracer.rank(node.inputs[0])
    axes = tracer.axes_of(node, 1)
    if _blocks(tracer, t, rank is None or not axes, f"{tracer.name(node)} squeezes unknown axes"):
        return
    axes = [a % rank for a in axes]
    _pass_unless(tracer, node, t, t.axis in axes,
                 f"{tracer.name(node)} squeezes the channel axis", axis=t.axis - sum(a < t.axis for a in axes))


@through_input_0
def unsqueeze(tracer: Tracer, node: ir.Node, t: Tracked) -> None:
    rank, axes = tracer.rank(node.outputs[0]), tracer.axes_of(node, 1)  # the output's rank: axes index it
    if _blocks(tracer, t, rank is None or axes is None, f"{tracer.name(node)} inserts unknown axes"):
        return
    kept = [a for a in range(rank) if a not in {x % rank for x in axes}]
    tracer.pass_through(node, t, axis=kept[t.axis])


@through_input_0
def slice_(tracer: Tracer, node: ir.Node, t: Tracked) -> None:
    rank = tracer.rank(node.inputs[0])
    axes = tracer.axes_of(node, 3)
    _pass_unless(tracer, node, t, rank is None or not axes or t.axis in [a % rank for a in axes],
                 f"{tracer.name(node)} may slice the channel axis")


@through_input_0
def reduction(tracer: Tracer, node: ir.Node, t: Tracked) -> None:
    rank = tracer.rank(node.inputs[0])
    axes = tracer.axes_of(node, 1)
    if _blocks(tracer, t, rank is None or axes is None, f"{tracer.name(node)} reduces unknown axes"):
        return
    if not axes and node.attributes.get_int("noop_with_empty_axes", 0):
        tracer.pass_through(node, t)
        return
    axes = [a % rank for a in axes] or list(range(rank))
    if _blocks(tracer, t, t.axis in axes, f"{tracer.name(node)} reduces over the channel axis"):
        return
    keep = node.attributes.get_int("keepdims", 1)
    tracer.pass_through(node, t, axis=t.axis if keep else t.axis - sum(a < t.axis for a in axes))


@through_input_0
def pad(tracer: Tracer, node: ir.Node, t: Tracked) -> None:
    rank = tracer.rank(node.inputs[0])
    pads = tracer.axes_of(node, 1, "pads")
    axes = tracer.axes_of(node, 3)
    if _blocks(tracer, t, rank is None or not pads or axes is None, f"{tracer.name(node)} has unknown pads"):
        return
    axes = [a % rank for a in axes] or list(range(rank))
    if t.axis in axes:
        k = axes.index(t.axis)
        if pads[k] != 0 or pads[k + len(axes)] != 0:
            tracer.block(t.layout, f"{tracer.name(node)} pads the channel axis")
            return
    tracer.pass_through(node, t)


@through_input_0
def resize(tracer: Tracer, node: ir.Node, t: Tracked) -> None:
    rank = tracer.rank(node.inputs[0])
    scales_index = 1 if tracer.opset < 11 else 2
    scales = constant(node.inputs[scales_index]) if len(node.inputs) > scales_index else None
    sizes = constant(node.inputs[3]) if len(node.inputs) > 3 else None
    axes = list(node.attributes.get_ints("axes", range(rank or 0)))
    if _blocks(tracer, t, rank is None, f"rank unknown at {tracer.name(node)}"):
        return
    axes = [a % rank for a in axes]
    if t.axis not in axes:
        tracer.pass_through(node, t)
    elif scales is not None and scales.size:
        if scales[axes.index(t.axis)] != 1:
            tracer.block(t.layout, f"{tracer.name(node)} resizes the channel axis")
            return
        tracer.pass_through(node, t)
    elif sizes is not None and sizes.size:
        tracer.shape_edits.append(ShapeEdit(node, 3, axes.index(t.axis), t.layout))
        tracer.pass_through(node, t)
    else:
        tracer.block(t.layout, f"{tracer.name(node)} has computed scales or sizes")


def gather(tracer: Tracer, node: ir.Node, inputs: list[Tracked | None]) -> None:
    for t in inputs:
        if t is not None:
            tracer.block(t.layout, f"channels are consumed by {tracer.name(node)}")


RULES: dict[str, Rule] = {
    **dict.fromkeys(_UNARY_OPS, unary),
    **dict.fromkeys(_ELEMENTWISE_OPS, elementwise),
    **dict.fromkeys(_POOL_OPS, pool),
    **dict.fromkeys(_REDUCE_OPS, reduction),
    **dict.fromkeys(_SOFTMAX_OPS, softmax),
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": matmul,
    "BatchNormalization": batch_normalization,
    "InstanceNormalization": instance_normalization,
    "LayerNormalization": layer_normalization,
    "Concat": concat,
    "Flatten": flatten,
    "Reshape": reshape,
    "Transpose": transpose,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Slice": slice_,
    "Pad": pad,
    "Resize": resize,
    "Gather": gather,
}
"""Op type (default ONNX domain) -> rule. Channels reaching any other op are blocked."""
