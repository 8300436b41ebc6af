"""channels.layers: the rules of the weight layers (Conv, ConvTranspose, Gemm, MatMul). Each starts
an origin for its output channels with its weight (and bias) edits, reads the channels of input 0
as a consumer edit on the right weight axis, and blocks channels it cannot handle, saying why."""

from __future__ import annotations

import numpy as np

from onnxcomp.channels import analyze_channels
from tests.conftest import build_model


def _analyze(body: str, inputs: str, outputs: str, arrays: dict[str, np.ndarray]):
    model = build_model(f"""
<ir_version: 10, opset_import: ["" : 17]>
g ({inputs}) => ({outputs}) {{
{body}
}}
""", {name: np.ones(shape, np.float32) for name, shape in arrays.items()})
    return analyze_channels(model)


def _edits(analysis) -> list[tuple[str, int, int, str, tuple]]:
    return [(e.node.name, e.input_index, e.axis, e.role, tuple((s.origin, s.size) for s in e.layout))
            for e in analysis.tensor_edits]


def test_gemm_transposed_weight_and_bias():
    analysis = _analyze("""
  h = Gemm <transB = 1> (x, w1, b1)
  r = Relu(h)
  y = Gemm (r, w2, b2)
""", "float[N, 4] x", "float[N, 2] y", {"w1": (6, 4), "b1": (6,), "w2": (6, 2), "b2": (2,)})
    # nodes are unnamed: the origins are labelled by op type
    gemm1, gemm2 = [n.name for n in analysis.model.graph if n.op_type == "Gemm"]
    assert _edits(analysis) == [
        (gemm1, 1, 1, "consumer", ((0, 4),)),  # transB: input features on the weight's axis 1
        (gemm1, 1, 0, "weight", ((1, 6),)), (gemm1, 2, -1, "bias", ((1, 6),)),
        (gemm2, 1, 0, "consumer", ((1, 6),)),
        (gemm2, 1, 1, "weight", ((2, 2),)), (gemm2, 2, -1, "bias", ((2, 2),)),
    ]
    assert [(o.label, o.axis, o.size) for o in analysis.origins] == [("input:x", 1, 4), ("Gemm", 1, 6), ("Gemm", 1, 2)]


def test_gemm_transa_and_computed_bias():
    analysis = _analyze("""
  h = MatMul(x, w0)
  t = Gemm <transA = 1> (h, w1)
  b = Relu(c)
  y = Gemm (t, w2, b)
""", "float[4, 3] x, float[2] c", "float[5, 2] y", {"w0": (3, 5), "w1": (4, 6), "w2": (6, 2)})
    reasons = {g.name: g.blocked_reason for g in analysis.groups}
    assert reasons["MatMul"] == "Gemm '' reads channels transposed (transA)"
    assert [o.label for o in analysis.origins] == ["input:x", "MatMul", "Gemm"]  # the last Gemm's bias is computed: no origin


def test_matmul_needs_a_constant_2d_weight_and_the_last_axis():
    analysis = _analyze("""
  h = MatMul(x, w)
  y = MatMul(h, v)
""", "float[N, 4] x, float[6, 2] v", "float[N, 2] y", {"w": (4, 6)})
    reasons = {g.name: g.blocked_reason for g in analysis.groups}
    assert reasons["MatMul"] == "MatMul '' has no constant 2-D weight"
    assert reasons["input:v"] == "channels enter input 1 of MatMul ''"
    assert [o.label for o in analysis.origins] == ["input:x", "input:v", "MatMul"]  # the second MatMul starts none
    transposed = _analyze("""
  h = MatMul(x, w)
  t = Transpose <perm = [1, 0]> (h)
  y = MatMul(t, v)
""", "float[3, 4] x", "float[6, 2] y", {"w": (4, 6), "v": (3, 2)})
    assert {g.name: g.blocked_reason for g in transposed.groups}["MatMul"] == "channel axis is not the last axis at MatMul ''"


def test_conv_consumer_and_origin_edits():
    analysis = _analyze("  y = Conv(x, k, b)\n  z = Relu(y)", "float[N, 3, 5, 5] x", "float[N, 8, 3, 3] z", {"k": (8, 3, 3, 3), "b": (8,)})
    conv = next(iter(analysis.model.graph)).name
    assert _edits(analysis) == [(conv, 1, 1, "consumer", ((0, 3),)), (conv, 1, 0, "weight", ((1, 8),)),
                                (conv, 2, 0, "bias", ((1, 8),))]


def test_depthwise_conv_passes_channels_and_grouped_conv_blocks_them():
    depthwise = _analyze("""
  a = Conv(x, k1)
  d = Conv <group = 4> (a, dw, db)
  y = Conv(d, k2)
""", "float[N, 3, 5, 5] x", "float[N, 2, 1, 1] y", {"k1": (4, 3, 3, 3), "dw": (4, 1, 3, 3), "db": (4,), "k2": (2, 4, 1, 1)})
    assert [o.label for o in depthwise.origins] == ["input:x", "Conv", "Conv"]  # the depthwise conv starts none
    roles = [(e.input_index, e.axis, e.role) for e in depthwise.tensor_edits if e.node.attributes.get_int("group", 1) == 4]
    assert roles == [(1, 0, "depthwise"), (2, 0, "param")]
    (attribute,) = depthwise.attribute_edits
    assert attribute.name == "group" and attribute.layout[0].size == 4
    assert not depthwise.group(1).blocked
    grouped = _analyze("""
  a = Conv(x, k1)
  y = Conv <group = 2> (a, gw)
""", "float[N, 3, 5, 5] x", "float[N, 4, 3, 3] y", {"k1": (4, 3, 1, 1), "gw": (4, 2, 3, 3)})
    assert grouped.group(1).blocked_reason == "grouped Conv '' mixes channels within groups"
    assert [o.label for o in grouped.origins] == ["input:x", "Conv"]  # grouped convs start no origin


def test_conv_transpose_edits_and_grouped_refusal():
    analysis = _analyze("""
  a = ConvTranspose(x, k, b)
  y = Conv(a, c)
""", "float[N, 3, 4, 4] x", "float[N, 2, 6, 6] y", {"k": (3, 5, 3, 3), "b": (5,), "c": (2, 5, 1, 1)})
    first = next(iter(analysis.model.graph))
    transposed = [(e.input_index, e.axis, e.role) for e in analysis.tensor_edits if e.node is first]
    assert transposed == [(1, 0, "consumer"), (1, 1, "weight"), (2, 0, "bias")]
    assert analysis.origins[1].size == 5
    grouped = _analyze("  y = ConvTranspose <group = 3> (x, k)", "float[N, 3, 4, 4] x", "float[N, 3, 6, 6] y", {"k": (3, 1, 3, 3)})
    assert grouped.group("input:x").blocked_reason == "ConvTranspose '' is grouped or has no constant weight"
