"""channels.rules: how channels pass through the ops between weight layers. Which ops pass a
Conv's channels on and which block them (with the reason), the axis they land on after
Transpose/Squeeze/Unsqueeze/Reduce, the per-channel params and shape constants they record, the
offsets Concat gives and the width Flatten gives each channel."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.channels import analyze_channels
from onnxcomp.channels.rules import RULES, concat, elementwise, gather, unary
from tests.conftest import build_model


def _conv_then(body: str, out: str, arrays=None, reader: str = "y = Relu(z)"):
    """x -> Conv (4 channels on axis 1 of [N, 4, 5, 5]) -> `body` (reads c, writes z) -> `reader`."""
    arrays = {"k": np.ones((4, 3, 1, 1), np.float32), **(arrays or {})}
    model = build_model(f"""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 3, 5, 5] x) => ({out} y) {{
  c = Conv(x, k)
{body}
  {reader}
}}
""", arrays)
    return analyze_channels(model)


def _conv_reason(analysis) -> str | None:
    return analysis.group("Conv").blocked_reason


def test_rule_table():
    assert RULES["Relu"] is unary and RULES["Add"] is elementwise and RULES["Concat"] is concat and RULES["Gather"] is gather
    assert {"Conv", "ConvTranspose", "Gemm", "MatMul", "Reshape", "Flatten", "Resize"} <= set(RULES)
    assert "Softmax" in RULES and "Einsum" not in RULES


@pytest.mark.parametrize(("body", "arrays", "reason"), [
    ("  z = Softmax <axis = 1> (c)", {}, "Softmax '' normalizes over the channel axis"),
    ("  z = ReduceSum <keepdims = 1> (c, axes)", {"axes": np.array([1], np.int64)}, "ReduceSum '' reduces over the channel axis"),
    ("  z = Pad(c, pads)", {"pads": np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64)}, "Pad '' pads the channel axis"),
    ("  z = Resize(c, , scales)", {"scales": np.array([1, 2, 1, 1], np.float32)}, "Resize '' resizes the channel axis"),
    ("  z = Add(c, bias)", {"bias": np.ones((1, 4, 5, 5), np.float32)}, None),
    ("  o = Relu(other)\n  z = Add(c, o)", {"other": np.ones((1, 4, 1, 1), np.float32)},
     "'o' varies over the channels at Add ''"),
    ("  s = Slice(c, starts, ends, axes)\n  z = Relu(s)",
     {"starts": np.array([0], np.int64), "ends": np.array([2], np.int64), "axes": np.array([1], np.int64)},
     "Slice '' may slice the channel axis"),
    ("  z = Gather(c, ids)", {"ids": np.array([0, 1], np.int64)}, "channels are consumed by Gather ''"),
    ("  z = LayerNormalization <axis = 1> (c, scale)", {"scale": np.ones((4, 5, 5), np.float32)},
     "LayerNormalization '' normalizes over the channel axis"),
])
def test_ops_that_block_channels_say_why(body, arrays, reason):
    arrays = {**arrays, "k2": np.ones((2, 4, 1, 1), np.float32)}
    analysis = _conv_then(body, "float[N, 2, 5, 5]", arrays, reader="y = Conv(z, k2)") if reason is None else \
        _conv_then(body, "float", arrays, reader="y = ReduceSum <keepdims = 0> (z)")
    assert _conv_reason(analysis) == reason


def test_transpose_and_pooling_keep_the_channels_on_their_new_axis():
    analysis = _conv_then("""
  p = MaxPool <kernel_shape = [2, 2]> (c)
  t = Transpose <perm = [0, 2, 3, 1]> (p)
  z = MatMul(t, w)
""", "float[N, 4, 4, 2]", {"w": np.ones((4, 2), np.float32)})
    tracked = {value.name: t.axis for value, t in analysis.tracked.items()}
    assert tracked["p"] == 1 and tracked["t"] == 3
    assert not analysis.group("Conv").blocked
    matmul = [e for e in analysis.tensor_edits if e.role == "consumer" and e.node.op_type == "MatMul"]
    assert [(e.input_index, e.axis) for e in matmul] == [(1, 0)]


def test_reduce_and_unsqueeze_move_the_channel_axis():
    analysis = _conv_then("""
  m = ReduceSum <keepdims = 0> (c, first)
  u = Unsqueeze(m, first)
  z = Squeeze(u, first)
""", "float[4, 5, 5]", {"first": np.array([0], np.int64)})
    tracked = {value.name: t.axis for value, t in analysis.tracked.items()}
    assert (tracked["m"], tracked["u"], tracked["z"]) == (0, 1, 0)


def test_elementwise_records_per_channel_params_and_links_residuals():
    analysis = _conv_then("""
  s = Mul(c, scale)
  d = Conv(x, k2)
  z = Add(s, d)
""", "float[N, 4, 5, 5]", {"scale": np.ones((4, 1, 1), np.float32), "k2": np.ones((4, 3, 1, 1), np.float32)})
    (param,) = [e for e in analysis.tensor_edits if e.role == "param"]
    assert param.value.name == "scale" and param.axis == 0
    conv = analysis.group("Conv")
    assert len(conv.origins) == 2  # the two convs meet in the Add: one group
    assert conv.blocked_reason == "channels reach graph output 'y'"


def test_concat_offsets_and_flatten_widths():
    analysis = _conv_then("""
  d = Conv(x, k2)
  cat = Concat <axis = 1> (c, x, d)
  z = Flatten(cat)
""", "float[N, 2]", {"k2": np.ones((2, 3, 1, 1), np.float32), "fc": np.ones((225, 2), np.float32)},
        reader="y = MatMul(z, fc)")
    layout = next(t.layout for v, t in analysis.tracked.items() if v.name == "cat")
    assert [o.label for o in analysis.origins][:3] == ["input:x", "Conv", "Conv"]
    assert [(s.origin, s.size, s.inner) for s in layout] == [(1, 4, 1), (0, 3, 1), (2, 2, 1)]
    flat = next(t for v, t in analysis.tracked.items() if v.name == "z")
    assert flat.axis == 1 and [(s.size, s.inner) for s in flat.layout] == [(4, 25), (3, 25), (2, 25)]
    offsets = sorted(r.offset for g in analysis.groups for r in g.consumers if r.op_type == "MatMul")
    assert offsets == [0, 100, 175]  # the first conv's channels, the input's after 4 * 25, the second conv's


def test_reshape_and_resize_record_shape_edits():
    analysis = _conv_then("""
  r = Resize(c, , , sizes)
  z = Reshape(r, shape)
""", "float[N, 2]", {"sizes": np.array([1, 4, 10, 10], np.int64), "shape": np.array([-1, 400], np.int64),
                     "fc": np.ones((400, 2), np.float32)}, reader="y = MatMul(z, fc)")
    edits = sorted((e.node.op_type, e.input_index, e.position) for e in analysis.shape_edits)
    assert edits == [("Reshape", 1, 1), ("Resize", 3, 1)]
    assert not analysis.group("Conv").blocked
