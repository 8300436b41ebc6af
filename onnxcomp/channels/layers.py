"""Rules for weight layers: each starts an origin (its output channels) and reads channels."""

from __future__ import annotations

import onnx_ir as ir

from onnxcomp.channels.tracer import Tracer
from onnxcomp.channels.types import AttributeEdit, Tracked, constant, layout_length


def _read_input(tracer: Tracer, node: ir.Node, inputs: list[Tracked | None], unusable: str | None
                ) -> tuple[bool, Tracked | None]:
    """Input 0's channels, if any, and whether the layer can be handled. Channels that enter any
    other input are blocked (`Tracer.only`); when ``unusable`` says why the layer cannot be
    handled (no constant weight, ...), input 0's channels are blocked too."""
    tracer.only(node, inputs, (0,))
    t = inputs[0]
    if unusable is not None:
        if t is not None:
            tracer.block(t.layout, f"{tracer.name(node)} {unusable}")
        return False, None
    return True, t


def _start_origin(tracer: Tracer, node: ir.Node, axis: int, size: int, weight_axis: int, bias_axis: int | None) -> None:
    """The layer's output channels (``size`` of them, on ``axis``) start an origin; its weight
    (input 1) holds them on ``weight_axis`` and its bias (input 2), if any, on ``bias_axis``."""
    layout = tracer.new_origin("producer", node.outputs[0], axis, size, node.name or node.op_type, node)
    tracer.edit(node, 1, weight_axis, layout, "weight")
    if bias_axis is not None:
        tracer.edit(node, 2, bias_axis, layout, "bias")


def conv(tracer: Tracer, node: ir.Node, inputs: list[Tracked | None]) -> None:
    weight = constant(node.inputs[1])
    group = node.attributes.get_int("group", 1)
    usable, t = _read_input(tracer, node, inputs, "has no constant weight" if weight is None else None)
    if not usable:
        return
    if t is not None:
        if t.axis != 1:
            tracer.block(t.layout, f"channel axis is not axis 1 at {tracer.name(node)}")
            t = None
        elif group == 1:
            tracer.edit(node, 1, 1, t.layout, "consumer")
        elif group == weight.shape[0] == layout_length(t.layout) and weight.shape[1] == 1:
            tracer.edit(node, 1, 0, t.layout, "depthwise")
            tracer.edit(node, 2, 0, t.layout, "param")
            tracer.attribute_edits.append(AttributeEdit(node, "group", t.layout))
            tracer.pass_through(node, t)
            return
        else:
            tracer.block(t.layout, f"grouped {tracer.name(node)} mixes channels within groups")
    if group == 1:
        _start_origin(tracer, node, 1, weight.shape[0], weight_axis=0, bias_axis=0)


def conv_transpose(tracer: Tracer, node: ir.Node, inputs: list[Tracked | None]) -> None:
    weight = constant(node.inputs[1])
    group = node.attributes.get_int("group", 1)
    unusable = "is grouped or has no constant weight" if weight is None or group != 1 else None
    usable, t = _read_input(tracer, node, inputs, unusable)
    if not usable:
        return
    if t is not None:
        if t.axis == 1:
            tracer.edit(node, 1, 0, t.layout, "consumer")
        else:
            tracer.block(t.layout, f"channel axis is not axis 1 at {tracer.name(node)}")
    _start_origin(tracer, node, 1, weight.shape[1], weight_axis=1, bias_axis=0)


def gemm(tracer: Tracer, node: ir.Node, inputs: list[Tracked | None]) -> None:
    weight = constant(node.inputs[1])
    trans_a = node.attributes.get_int("transA", 0)
    trans_b = node.attributes.get_int("transB", 0)
    unusable = "has no constant weight" if weight is None or weight.ndim != 2 else None
    usable, t = _read_input(tracer, node, inputs, unusable)
    if not usable:
        return
    if t is not None:
        if trans_a or t.axis != 1:
            tracer.block(t.layout, f"{tracer.name(node)} reads channels transposed (transA)")
        else:
            tracer.edit(node, 1, 1 if trans_b else 0, t.layout, "consumer")
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if bias is not None and constant(bias) is None:
        return  # a computed bias cannot be sliced: these channels stay
    size = weight.shape[0] if trans_b else weight.shape[1]
    _start_origin(tracer, node, 1, size, weight_axis=0 if trans_b else 1, bias_axis=-1)


def matmul(tracer: Tracer, node: ir.Node, inputs: list[Tracked | None]) -> None:
    weight = constant(node.inputs[1])
    unusable = "has no constant 2-D weight" if weight is None or weight.ndim != 2 else None
    usable, t = _read_input(tracer, node, inputs, unusable)
    if not usable:
        return
    if t is not None:
        rank = tracer.rank(node.inputs[0])
        if rank is None or t.axis != rank - 1:
            tracer.block(t.layout, f"channel axis is not the last axis at {tracer.name(node)}")
        else:
            tracer.edit(node, 1, 0, t.layout, "consumer")
    out_rank = tracer.rank(node.outputs[0])
    if out_rank is None:
        return
    _start_origin(tracer, node, out_rank - 1, weight.shape[1], weight_axis=1, bias_axis=None)
