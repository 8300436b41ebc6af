"""Values crossing into If/Loop/Scan bodies: the body input a loop-carried weight becomes (and
when it is handed on unchanged), which node holds each body, and which body op reads a value."""

from __future__ import annotations

from onnxcomp.model.subgraphs import body_owners, loop_body_value, reading_body_op
from tests.test_weights import loop_model


def loop_of(model):
    return next(node for node in model.graph if node.op_type == "Loop")


def test_a_weight_the_body_hands_on_unchanged_is_found_with_its_identity():
    model = loop_model()
    loop = loop_of(model)
    inner, handed_on = loop_body_value(loop, 3)  # inputs: steps, go, x, w
    body = loop.attributes["body"].as_graph()
    assert inner is body.inputs[3] and handed_on.op_type == "Identity" and handed_on.outputs[0] is body.outputs[2]
    assert loop_body_value(loop, 2) is None  # x: the body returns Tanh(x @ w), not x


def test_a_weight_changed_each_step_or_used_after_the_loop_is_not_carried_unchanged():
    assert loop_body_value(loop_of(loop_model(hand_on="Neg")), 3) is None
    model = loop_model()
    loop = loop_of(model)
    model.graph.outputs.append(loop.outputs[1])  # the Loop's final value of w leaves the graph
    assert loop_body_value(loop, 3) is None


def test_body_owners_and_the_body_op_that_reads_a_value():
    model = loop_model()
    loop = loop_of(model)
    assert body_owners(model) == {id(loop.attributes["body"].as_graph()): "Loop"}
    weight = model.graph.initializers["w"]
    assert reading_body_op(weight, model.graph, body_owners(model)) == "Loop"
    assert reading_body_op(model.graph.inputs[0], model.graph, body_owners(model)) == "Loop"  # x enters it too
