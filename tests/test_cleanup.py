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
