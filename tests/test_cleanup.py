"""clean_up and ShortenNamesPass: docs, metadata and names."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxcomp.passes.cleanup import ShortenNamesPass, clean_up
from tests.conftest import build_model, run, to_proto
from tests.pass_helpers import check_valid, interface

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


@pytest.fixture
def decorated_proto(rng) -> onnx.ModelProto:
    text = """
    <ir_version: 10, opset_import: ["" : 17], producer_name: "tests", producer_version: "9.9">
    decorated (float[N, 16] x) => (float[N, 8] y) {
      a_rather_long_hidden_activation_name = Gemm(x, first_layer_weight_with_a_long_name, first_layer_bias)
      another_long_activation_name_after_relu = Relu(a_rather_long_hidden_activation_name)
      y = MatMul(another_long_activation_name_after_relu, second_layer_weight_with_a_long_name)
      dead_end_value_nobody_reads = Relu(x)
    }
    """
    proto = onnx.parser.parse_model(text)
    for name, shape in (("first_layer_weight_with_a_long_name", (16, 32)), ("first_layer_bias", (32,)),
                        ("second_layer_weight_with_a_long_name", (32, 8)), ("unused_initializer", (5,))):
        proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    proto.doc_string = "model documentation " * 20
    proto.graph.doc_string = "graph documentation"
    for index, node in enumerate(proto.graph.node):
        node.name = f"a_descriptive_node_name_{index}"
        node.doc_string = "node documentation"
    onnx.helper.set_model_props(proto, {"author": "someone", "license": "text " * 30})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def deserialize(proto: onnx.ModelProto) -> ir.Model:
    # onnx_ir tensors keep pointing into the proto they came from; renames would write back.
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return ir.serde.deserialize_model(copy)


def test_clean_up_strips_docs_metadata_and_shortens_names(decorated_proto, rng):
    model = clean_up(deserialize(decorated_proto))
    proto = check_valid(model)
    assert interface(model) == (["x"], ["y"])
    assert not proto.doc_string and not proto.graph.doc_string
    # applications read label maps and dictionaries from the model's metadata_props: kept
    assert {p.key: p.value for p in proto.metadata_props} == {p.key: p.value for p in decorated_proto.metadata_props}
    assert proto.producer_name == "onnxcomp"
    assert [node.op_type for node in proto.graph.node] == ["Gemm", "Relu", "MatMul"]
    assert all(not node.doc_string for node in proto.graph.node)
    assert len(proto.graph.initializer) == 3
    internal = [t.name for t in proto.graph.initializer] + [o for n in proto.graph.node for o in n.output if o != "y"]
    assert len(set(internal)) == len(internal)
    assert all(name.startswith("_") and len(name) <= 3 for name in internal)
    assert proto.ByteSize() < decorated_proto.ByteSize()
    feeds = {"x": rng.standard_normal((4, 16)).astype(np.float32)}
    assert np.array_equal(run(proto, feeds)[0], run(decorated_proto, feeds)[0])


def test_clean_up_keep_metadata_keeps_docs(decorated_proto):
    proto = to_proto(clean_up(deserialize(decorated_proto), keep_metadata=True))
    assert proto.doc_string == decorated_proto.doc_string
    assert {p.key: p.value for p in proto.metadata_props} == {p.key: p.value for p in decorated_proto.metadata_props}
    assert proto.producer_name == "tests"


def test_clean_up_is_idempotent_on_unnamed_nodes(mlp_model):
    once = to_proto(clean_up(mlp_model.clone())).SerializeToString()
    twice = to_proto(clean_up(clean_up(mlp_model.clone()))).SerializeToString()
    assert once == twice


def test_clean_up_is_idempotent(decorated_proto):
    once = to_proto(clean_up(deserialize(decorated_proto))).SerializeToString()
    twice = to_proto(clean_up(clean_up(deserialize(decorated_proto)))).SerializeToString()
    assert once == twice


def test_clean_up_leaves_nodes_unnamed(decorated_proto):
    proto = to_proto(clean_up(deserialize(decorated_proto)))
    assert [node.name for node in proto.graph.node] == ["", "", ""]


def test_slices_keep_unique_names_so_onnx_runtime_loads_the_model(rng):
    """Two Reshapes each read by Gather(0), Gather(1) and Slice(2:): ONNX Runtime's
    GatherSliceToSplitFusion names each Split after its Slice, so with unnamed Slices both are
    "/GatherSliceToSplitFusion/" and the session fails ("two nodes with same node name")."""
    ort = pytest.importorskip("onnxruntime")
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    twice (float[12] x0, float[12] x1) => (float[3] y0, float[3] y1) {
      r0 = Reshape(x0, shape)
      a0 = Gather <axis = 0> (r0, zero)
      b0 = Gather <axis = 0> (r0, one)
      s0 = Slice(r0, start, end, axis, step)
      t0 = ReduceSum <keepdims = 0> (s0, axis)
      c0 = Add(a0, b0)
      y0 = Add(c0, t0)
      r1 = Reshape(x1, shape)
      a1 = Gather <axis = 0> (r1, zero)
      b1 = Gather <axis = 0> (r1, one)
      s1 = Slice(r1, start, end, axis, step)
      t1 = ReduceSum <keepdims = 0> (s1, axis)
      c1 = Add(a1, b1)
      y1 = Add(c1, t1)
    }
    """
    constants = {"shape": np.array([4, 3], np.int64), "zero": np.array(0, np.int64), "one": np.array(1, np.int64),
                 "start": np.array([2], np.int64), "end": np.array([4], np.int64), "axis": np.array([0], np.int64),
                 "step": np.array([1], np.int64)}
    proto = to_proto(clean_up(build_model(text, constants)))
    names = [node.name for node in proto.graph.node if node.op_type == "Slice"]
    assert len(set(names)) == 2 and all(names)
    assert {node.name for node in proto.graph.node if node.op_type != "Slice"} == {""}  # the rest stay unnamed
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = rng.standard_normal(12).astype(np.float32)
    y0, _ = session.run(None, {"x0": x, "x1": x})
    grid = x.reshape(4, 3)
    np.testing.assert_allclose(y0, grid[0] + grid[1] + grid[2:].sum(0), rtol=1e-6)


def test_shorten_names_second_run_not_modified(decorated_proto):
    model = clean_up(deserialize(decorated_proto))
    assert not ShortenNamesPass()(model).modified


def test_shorten_names_avoid_interface_names(rng):
    text = """
    <ir_version: 10, opset_import: ["" : 17]>
    clash (float[N, 16] _0, float[N, 16] _2) => (float[N, 16] _1) {
      s = Add(_0, _2)
      h = MatMul(s, w)
      _1 = Relu(h)
    }
    """
    original = build_model(text, {"w": rng.standard_normal((16, 16)).astype(np.float32)})
    reference = to_proto(original)
    model = clean_up(original)
    proto = check_valid(model)
    assert interface(model) == (["_0", "_2"], ["_1"])
    internal = [t.name for t in proto.graph.initializer] + [o for n in proto.graph.node for o in n.output if o != "_1"]
    assert len(set(internal)) == len(internal)
    assert not set(internal) & {"_0", "_1", "_2"}
    feeds = {"_0": rng.standard_normal((3, 16)).astype(np.float32), "_2": rng.standard_normal((3, 16)).astype(np.float32)}
    assert np.array_equal(run(proto, feeds)[0], run(reference, feeds)[0])
