"""Rules for weight layers: each starts an origin (its output channels) and reads channels."""

from __future__ import annotations

import onnx_ir as ir

from onnxcomp.channels.tracer import Tracer
from onnxcomp.channels.types import AttributeEdit, Tracked, constant, layout_length


def conv(tracer: Tracer, node: ir.Node, inputs: list[Tracked | None]) -> None:
    weight = constant(node.inputs[1])
    group = node.attributes.get_int("group", 1)
    tracer.only(node, inputs, (0,))
    t = inputs[0]
    if weight is None:
        if t is not None:
            tracer.block(t.layout, f"{tracer.name(node)} has no constant weight")
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
        layout = tracer.new_origin(
            "producer", node.outputs[0], 1, weight.shape[0], node.name or "Conv", node
        )
        tracer.edit(node, 1, 0, layout, "weight")
        tracer.edit(node, 2, 0, layout, "bias")


def conv_transpose(tracer: Tracer, node: ir.Node, inputs: list[Tracked | None]) -> None:
    weight = constant(node.inputs[1])
    group = node.attributes.get_int("group", 1)
    tracer.only(node, inputs, (0,))
    t = inputs[0]
    if weight is None or group != 1:
        if t is not None:
            tracer.block(t.layout, f"{tracer.name(node)} is grouped or has no constant weight")
        return
    if t is not None:
        if t.axis == 1:
            tracer.edit(node, 1, 0, t.layout, "consumer")
        else:
            tracer.block(t.layout, f"channel axis is not axis 1 at {tracer.name(node)}")
    layout = tracer.new_origin(
        "producer", node.outputs[0], 1, weight.shape[1], node.name or "ConvTranspose", node
    )
    tracer.edit(node, 1, 1, layout, "weight")
    tracer.edit(node, 2, 0, layout, "bias")


def gemm(tracer: Tracer, node: ir.Node, inputs: list[Tracked | None]) -> None:
    weight = constant(node.inputs[1])
    trans_a = node.attributes.get_int("transA", 0)
    trans_b = node.attributes.get_int("transB", 0)
    tracer.only(node, inputs, (0,))
    t = inputs[0]
    if weight is None or weight.ndim != 2:
        if t is not None:
            tracer.block(t.layout, f"{tracer.name(node)} has no constant weight")
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
    layout = tracer.new_origin("producer", node.outputs[0], 1, size, node.name or "Gemm", node)
    tracer.edit(node, 1, 0 if trans_b else 1, layout, "weight")
    tracer.edit(node, 2, -1, layout, "bias")


def matmul(tracer: Tracer, node: ir.Node, inputs: list[Tracked | None]) -> None:
    weight = constant(node.inputs[1])
    tracer.only(node, inputs, (0,))
    t = inputs[0]
    if weight is None or weight.ndim != 2:
        if t is not None:
            tracer.block(t.layout, f"{tracer.name(node)} has no constant 2-D weight")
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
    layout = tracer.new_origin(
        "producer", node.outputs[0], out_rank - 1, weight.shape[1], node.name or "MatMul", node
    )
    tracer.edit(node, 1, 1, layout, "weight")
