"""channels.types: the data of the channel analysis. Segments and layouts (lengths, channel
counts, offsets, widening after Flatten), products of known dims, which values are constants, the
edits' inputs, and looking groups up in an analysis."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.channels import analyze_channels
from onnxcomp.channels.types import (ChannelGroup, Segment, TensorEdit, constant, layout_length, layout_units, scale_inner,
                                     segment_offsets, static_product)
from tests.conftest import build_model

LAYOUT = (Segment(0, 3), Segment(None, 2, inner=4), Segment(1, 5, inner=2))


def test_layout_lengths_units_and_offsets():
    assert [segment.length for segment in LAYOUT] == [3, 8, 10]
    assert layout_length(LAYOUT) == 21 and layout_units(LAYOUT) == 10
    assert list(segment_offsets(LAYOUT)) == [(LAYOUT[0], 0, 0), (LAYOUT[1], 3, 3), (LAYOUT[2], 11, 5)]
    assert layout_length(()) == 0 and list(segment_offsets(())) == []


def test_scale_inner_widens_every_channel():
    assert scale_inner(LAYOUT, 3) == (Segment(0, 3, 3), Segment(None, 2, 12), Segment(1, 5, 6))
    assert layout_units(scale_inner(LAYOUT, 3)) == layout_units(LAYOUT)


@pytest.mark.parametrize(("dims", "product"), [((2, 3, 4), 24), ((), 1), ((2, "N"), None), ((None, 3), None)])
def test_static_product(dims, product):
    assert static_product(dims) == product


def test_constant_reads_initializers_and_constant_nodes_only():
    model = build_model("""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] x, float[4, 4] d) => (float[N, 4] y) {
  c = Constant <value = float[4] {1, 2, 3, 4}> ()
  s = Add(d, c)
  h = MatMul(x, w)
  y = Mul(h, s)
}
""", {"w": np.eye(4, dtype=np.float32), "d": np.ones((4, 4), np.float32)})
    values = {v.name: v for node in model.graph for v in node.inputs}
    assert np.array_equal(constant(values["w"]), np.eye(4))
    assert constant(values["c"]).tolist() == [1, 2, 3, 4]
    assert constant(values["d"]) is None  # an initializer the caller may feed
    assert constant(values["s"]) is None and constant(values["x"]) is None and constant(None) is None


def test_analysis_groups_by_id_or_name_and_edit_values():
    model = build_model("""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 2] y) {
  h = Gemm (x, w1, b1)
  r = Relu(h)
  y = MatMul(r, w2)
}
""", {"w1": np.ones((4, 6), np.float32), "b1": np.ones(6, np.float32), "w2": np.ones((6, 2), np.float32)})
    analysis = analyze_channels(model)
    assert [g.name for g in analysis.groups] == ["input:x", "Gemm", "MatMul"]
    gemm = analysis.group("Gemm")
    assert analysis.group(gemm.id) is gemm and gemm.size == 6 and not gemm.blocked
    assert analysis.group("MatMul").blocked and "graph output 'y'" in analysis.group("MatMul").blocked_reason
    with pytest.raises(KeyError):
        analysis.group("nope")
    assert {o.value.name: o.label for o in analysis.origin_of_value().values()} == {"x": "input:x", "h": "Gemm", "y": "MatMul"}
    gemm_node = next(node for node in model.graph if node.op_type == "Gemm")
    assert TensorEdit(gemm_node, 2, 0, (Segment(1, 6),), "bias").value.name == "b1"
    assert TensorEdit(gemm_node, 3, 0, (Segment(1, 6),), "bias").value is None


def test_channel_group_blocked_follows_its_reason():
    group = ChannelGroup(0, "g", 4, [], [], None)
    assert not group.blocked and group.origins == ()
    group.blocked_reason = "shared"
    assert group.blocked
