"""Values that cross into the bodies of If, Loop and Scan nodes.

Exporters put weights there: tf2onnx writes a Keras LSTM as a Loop whose body multiplies by
weights the Loop carries from step to step unchanged; an If branch may read an outer weight.
`onnxcomp.model.weights` finds such weights with these, and `onnxcomp.encodings.stored` lists them
in a saved file.
"""

from __future__ import annotations

import onnx_ir as ir

BODY_OPS = ("Loop", "Scan", "If")


def loop_body_value(loop: ir.Node, index: int) -> tuple[ir.Value, ir.Node | None] | None:
    """The body input that Loop input `index` (a loop-carried value) becomes, and the Identity that
    returns it unchanged (None where the body returns the input itself), if the body hands it on
    unchanged every iteration and the Loop's final value of it is unused; else None. A Keras LSTM
    exported by tf2onnx carries its weights so (Loop inputs read by MatMuls in the body)."""
    body = loop.attributes.get("body")
    if body is None or body.type != ir.AttributeType.GRAPH:
        return None
    body = body.as_graph()
    # Loop inputs (M, cond, carried...) become body inputs (iteration, cond, carried...); the
    # body returns (cond, carried..., scan outputs) and the Loop (carried..., scans).
    if index >= len(body.inputs) or index - 1 >= len(body.outputs) or index - 2 >= len(loop.outputs):
        return None
    inner, returned, final = body.inputs[index], body.outputs[index - 1], loop.outputs[index - 2]
    if final.uses() or final.is_graph_output():
        return None
    if returned is inner:
        return inner, None
    producer = returned.producer()
    if producer is not None and producer.op_type == "Identity" and producer.inputs[0] is inner and not returned.uses():
        return inner, producer
    return None


def body_owners(model: ir.Model) -> dict[int, str]:
    """The op type of the node holding each body graph (If branches, Loop/Scan bodies), by id."""
    owners = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for attribute in node.attributes.values():
            bodies = [attribute.value] if attribute.type == ir.AttributeType.GRAPH else \
                list(attribute.value) if attribute.type == ir.AttributeType.GRAPHS else []
            owners.update((id(body), node.op_type) for body in bodies)
    return owners


def reading_body_op(value: ir.Value, main: ir.Graph, owners: dict[int, str]) -> str | None:
    """The op type of the If/Loop/Scan that reads `value` (a value of `main`) as an input or from
    inside its body (`owners`: `body_owners`), or None."""
    for node, _ in value.uses():
        op = node.op_type if node.graph is main else owners.get(id(node.graph), node.op_type)
        if op in BODY_OPS:
            return op
    return None
