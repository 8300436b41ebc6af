"""channels.tracer: the driver of the channel analysis, run with small rule tables. Model inputs
that start origins, channels blocked by ops without a rule, by a rule that fails, by graph
outputs, subgraph uses, shared weights and unused extra outputs; origins linked by `unify` into
one group; unique group names; dims from the model and from shape inference; axes read from
attributes or constant inputs."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxcomp.channels.rules import RULES
from onnxcomp.channels.tracer import Tracer
from onnxcomp.channels.types import Segment
from tests.conftest import build_model


def _model(body: str, inputs: str, outputs: str, arrays=None) -> ir.Model:
    return build_model(f"""
<ir_version: 10, opset_import: ["" : 17]>
g ({inputs}) => ({outputs}) {{
{body}
}}
""", arrays or {})


def _reasons(analysis) -> dict[str, str | None]:
    return {group.name: group.blocked_reason for group in analysis.groups}


def test_model_inputs_start_origins_on_their_feature_axis():
    model = _model("""
  a = MatMul(x, w)
  c = Conv(img, k)
  e = Add(ids, ids)
  f = Relu(v)
""", "float[N, 5, 4] x, float[N, 3, 6, 6] img, int64[N, 4] ids, float[7] v",
        "float[N, 5, 2] a, float[N, 2, 4, 4] c, int64[N, 4] e, float[7] f",
        {"w": np.ones((4, 2), np.float32), "k": np.ones((2, 3, 3, 3), np.float32)})
    analysis = Tracer(model, {}).run()
    assert [(o.label, o.kind, o.axis, o.size) for o in analysis.origins] == [("input:x", "input", 2, 4), ("input:img", "input", 1, 3)]
    assert _reasons(analysis) == {"input:x": "channels are consumed by unsupported MatMul ''",
                                  "input:img": "channels are consumed by unsupported Conv ''"}
    (ref,) = analysis.group("input:x").producers
    assert (ref.role, ref.op_type, ref.tensor, ref.axis) == ("input", "Input", "x", 2)


def test_a_rule_that_fails_blocks_the_channels_it_saw():
    def broken(tracer, node, inputs):
        raise ValueError("boom")

    model = _model("  r = Relu(x)\n  y = MatMul(r, w)", "float[N, 4] x", "float[N, 2] y", {"w": np.ones((4, 2), np.float32)})
    analysis = Tracer(model, {**RULES, "Relu": broken}).run()
    assert _reasons(analysis)["input:x"] == "could not analyze Relu '': boom"
    assert not Tracer(model, RULES).run().group("input:x").blocked


def test_graph_output_and_subgraph_use_block():
    model = _model("""
  h = MatMul(x, w)
  r = Relu(h)
  y = If (c) <then_branch = t () => (float[N, 3] o) { o = Identity(r) },
              else_branch = e () => (float[N, 3] o2) { o2 = Identity(r) }>
  z = Relu(h)
""", "float[N, 4] x, bool c", "float[N, 3] y, float[N, 3] z", {"w": np.ones((4, 3), np.float32)})
    reason = _reasons(Tracer(model, RULES).run())["MatMul"]
    assert reason == "channels reach graph output 'z'; 'r' is used inside a subgraph"


def test_shared_weight_blocks_both_layers_and_unify_links_them():
    model = _model("""
  a = MatMul(x, w)
  b = MatMul(x, w)
  s = Add(a, b)
  y = MatMul(s, v)
""", "float[N, 4] x", "float[N, 2] y", {"w": np.ones((4, 3), np.float32), "v": np.ones((3, 2), np.float32)})
    analysis = Tracer(model, RULES).run()
    # the Add links both MatMuls' channels into one group; its name is the first origin's
    assert [(g.name, g.origins) for g in analysis.groups] == [("input:x", (0,)), ("MatMul", (1, 2)), ("MatMul#1", (3,))]
    assert analysis.links.has_edge(1, 2)
    assert analysis.group("MatMul").blocked_reason == "weight 'w' is shared by 2 uses"
    assert analysis.group("input:x").blocked_reason == "weight 'w' is shared by 2 uses"
    assert analysis.group("MatMul#1").blocked_reason == "channels reach graph output 'y'"


def test_unify_links_equal_layouts_and_refuses_different_ones():
    model = _model("  y = Relu(x)", "float[N, 4] x", "float[N, 4] y")
    tracer = Tracer(model, {})
    node = next(iter(model.graph))
    for size in (4, 4, 4):
        tracer.links.add_node(len(tracer.links), size=size)
    assert tracer.unify((Segment(0, 4),), (Segment(1, 4),), node) and tracer.links.has_edge(0, 1)
    assert not tracer.unify((Segment(0, 4),), (Segment(2, 2), Segment(2, 2)), node)
    assert not tracer.unify((Segment(0, 4),), (Segment(None, 4),), node)
    assert not tracer.links.has_edge(0, 2)


def test_dims_from_the_model_and_from_shape_inference_and_axes():
    model = _model("""
  h = MatMul(x, w)
  s = ReduceSum <keepdims = 0> (h, axes)
  y = Unsqueeze(s, axes)
""", "float[N, 4] x", "float[N, 1] y", {"w": np.ones((4, 3), np.float32), "axes": np.array([1], np.int64)})
    tracer = Tracer(model, {})
    reduce_node, unsqueeze_node = [n for n in model.graph][1:]
    h = reduce_node.inputs[0]
    assert h.shape is None and tracer.dims(h) == ("N", 3)  # inferred
    assert tracer.dims(model.graph.inputs[0]) == ("N", 4) and tracer.rank(h) == 2
    assert tracer.dims(model.graph.initializers["w"]) == (4, 3) and tracer.dims(None) is None
    assert tracer.axes_of(reduce_node, 1) == [1] and tracer.axes_of(unsqueeze_node, 5) == []
    opset11 = build_model("""
<ir_version: 10, opset_import: ["" : 11]>
g (float[N, 4] x) => (float[N, 1] y) { y = ReduceSum <axes = [-1]> (x) }
""", {})
    assert Tracer(opset11, {}).axes_of(next(iter(opset11.graph)), 1) == [-1]
