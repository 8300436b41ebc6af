"""encodings.stored: weights as a saved model stores them. Dense and decoded weights found by the
op that reads them, in first-use order, with their encoding kind, decoded values (run in ONNX
Runtime) and stored bytes; the names map a compressed model keeps (NAMES_KEY), written and read."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxcomp.encodings.stored import NAMES_KEY, StoredWeight, record_weight_names, stored_weights, weight_names, weight_uses
from onnxcomp.passes.insert_dequantize_lookup import InsertDequantizeLookupPass
from onnxcomp.passes.substitute_sparse_ops import SubstituteSparseOpsPass
from tests.conftest import build_model, single_matmul
from tests.pass_helpers import prune_and_cluster

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

TWO_LAYERS = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 16] x) => (float[N, 8] y) {
  h = Gemm <transB = 1> (x, w1, b1)
  r = Relu(h)
  y = MatMul(r, w2)
}
"""


def _two_layers(rng):
    return build_model(TWO_LAYERS, {"w1": rng.standard_normal((32, 16)).astype(np.float32),
                                    "b1": rng.standard_normal(32).astype(np.float32),
                                    "w2": rng.standard_normal((32, 8)).astype(np.float32)})


def test_dense_weights_in_first_use_order(rng):
    model = _two_layers(rng)
    weights = stored_weights(model)
    assert [(w.name, w.role, w.encoding, w.use) for w in weights] == [
        ("w1", "weight", "dense", ("Gemm", 0, 1)), ("b1", "bias", "dense", ("Gemm", 0, 2)),
        ("w2", "weight", "dense", ("MatMul", 0, 1))]
    assert [w.stored_bytes for w in weights] == [32 * 16 * 4, 32 * 4, 32 * 8 * 4]
    np.testing.assert_array_equal(weights[2].array, model.graph.initializers["w2"].const_value.numpy())
    assert [(value.name, use) for value, use in weight_uses(model)] == [(w.name, w.use) for w in weights]


@pytest.mark.parametrize(("sparsity", "pass_type", "kind"), [(0.0, InsertDequantizeLookupPass, "lookup"),
                                                             (0.9, SubstituteSparseOpsPass, "sparse")])
def test_encoded_weight_is_decoded_and_priced_by_its_stored_initializers(rng, sparsity, pass_type, kind):
    model = prune_and_cluster(single_matmul(rng.standard_normal((64, 64)).astype(np.float32)), sparsity, 4)
    clustered = model.graph.initializers["w"].const_value.numpy().copy()
    pass_type()(model)
    (weight,) = stored_weights(model)
    matmul = next(node for node in model.graph if node.op_type == "MatMul")
    assert weight.encoding == kind and weight.name == matmul.inputs[1].name and weight.use == ("MatMul", 0, 1)
    np.testing.assert_array_equal(weight.array, clustered)
    sources = {v.name for v in weight.sources}
    assert "w" not in model.graph.initializers and sources <= set(model.graph.initializers)
    assert weight.stored_bytes == sum(model.graph.initializers[name].const_value.nbytes for name in sources)
    assert 0 < weight.stored_bytes < clustered.nbytes


def test_initializer_read_by_two_decodes_belongs_to_neither(rng):
    shared = build_model("""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 8] x) => (float[N, 8] y) {
  a = Add(w, zero)
  b = Sub(v, zero)
  h = MatMul(x, a)
  y = MatMul(h, b)
}
""", {"w": np.eye(8, dtype=np.float32), "v": np.ones((8, 8), np.float32), "zero": np.zeros((8, 8), np.float32)})
    first, second = stored_weights(shared)
    assert (first.name, first.encoding, first.stored_bytes) == ("a", "decoded", 256)  # w only, not zero
    assert (second.name, second.stored_bytes) == ("b", 256)
    np.testing.assert_array_equal(second.array, np.ones((8, 8), np.float32))


def test_names_map_written_and_read(rng):
    original = _two_layers(rng)
    compressed = _two_layers(rng)
    located = weight_uses(compressed)
    for value, short in zip(list(compressed.graph.initializers.values()), ("a", "b1", "c")):
        value.name = short
    record_weight_names(compressed, located, original)
    assert json.loads(compressed.graph.metadata_props[NAMES_KEY]) == {"a": "w1", "c": "w2"}  # b1 kept its name
    assert weight_names(compressed) == {"a": "w1", "c": "w2"}
    labels = {w.name: w.label for w in stored_weights(compressed)}
    assert labels == {"a": "w1", "b1": "b1", "c": "w2"}
    # compressed again: the names map on to the first model's
    again = _two_layers(rng)
    located = weight_uses(again)
    for value, short in zip(list(again.graph.initializers.values()), ("p", "q", "r")):
        value.name = short
    record_weight_names(again, located, compressed)
    assert weight_names(again) == {"p": "w1", "q": "b1", "r": "w2"}
    # no renames: no map, and a stale one is dropped
    plain = _two_layers(rng)
    plain.graph.metadata_props[NAMES_KEY] = '{"old": "w1"}'
    record_weight_names(plain, weight_uses(plain), original)
    assert NAMES_KEY not in plain.graph.metadata_props


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"a": 3, "b": "x"}'])
def test_unreadable_names_map(rng, text):
    model = _two_layers(rng)
    model.graph.metadata_props[NAMES_KEY] = text
    assert weight_names(model) == ({"b": "x"} if text.startswith("{") else {})


def test_stored_weight_label():
    weight = StoredWeight("a", "weight", np.zeros(2), "dense", 8, [], ("MatMul", 0, 1))
    assert weight.label == "a"
    weight.original_name = "encoder.w"
    assert weight.label == "encoder.w"


def test_a_weight_a_loop_carries_is_compressed_and_listed():
    """A Keras LSTM exported by tf2onnx carries its weights into a Loop: the decoded weight feeds
    the Loop, the body's MatMul reads it, and the saved file lists it as that MatMul's weight."""
    import onnx
    from onnx_ir.serde import deserialize_model, serialize_model

    from onnxcomp.pipeline import CompressOptions, compress_model
    from onnxcomp.reporting.report import inspect_model
    from onnxcomp.runtime.inference import session
    from tests.conftest import run
    from tests.test_weights import loop_model

    original = loop_model()
    original_bytes = serialize_model(original).ByteSize()
    result = compress_model(loop_model(), CompressOptions(target_bytes=original_bytes // 4, sensitivity=False))
    assert len(result.data) <= original_bytes // 4
    rows = inspect_model(deserialize_model(onnx.ModelProto.FromString(result.data)))
    assert [(row.name, row.shape) for row in rows] == [("w", [64, 64])] and rows[0].encoding != "dense"
    x = np.random.default_rng(1).standard_normal((16, 64)).astype(np.float32)
    (expected,), (got,) = run(original, {"x": x}), session(result.data).run(None, {"x": x})
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 0.1


def test_a_one_value_constant_is_listed_as_stored_dense():
    """silero-vad's If branches keep a one-value Conv bias as a Constant node: it is stored (4 B),
    not a decoded 1-bit weight of 0 B."""
    from onnx import TensorProto, helper, numpy_helper
    import onnx_ir as ir

    from onnxcomp.reporting.report import inspect_model

    rng = np.random.default_rng(0)
    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
         helper.make_node("Conv", ["x", "w", "b"], ["y_then"])], "then", [],
        [helper.make_tensor_value_info("y_then", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y_else"])], "else", [],
                              [helper.make_tensor_value_info("y_else", TensorProto.FLOAT, None)])
    graph = helper.make_graph([helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=other)], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8]),
                               helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(rng.standard_normal((1, 2, 3, 3)).astype(np.float32), "w")])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    rows = {row.name: row for row in inspect_model(model)}
    bias = next(row for name, row in rows.items() if name.endswith("b"))
    assert (bias.encoding, bias.bytes_after, bias.params) == ("dense", 4, 1), bias


def test_inspect_of_a_model_without_tensors_says_where_its_bytes_are():
    from onnx import TensorProto, helper
    import onnx_ir as ir

    from onnxcomp.reporting.report import inspect_model, inspect_summary

    node = helper.make_node("TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=1,
                            nodes_featureids=[0], nodes_modes=["LEAF"], nodes_nodeids=[0], nodes_treeids=[0],
                            nodes_values=[0.0], target_ids=[0], target_nodeids=[0], target_treeids=[0],
                            target_weights=[1.5], nodes_falsenodeids=[0], nodes_truenodeids=[0])
    graph = helper.make_graph([node], "trees", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx.ml", 3)]))
    rows = inspect_model(model)
    assert rows == []
    assert "no weights: the bytes are graph structure, other tensors or operator attributes" in inspect_summary(rows, 1000)


def test_a_table_sliced_and_added_is_listed_and_small_added_constants_are_not(rng):
    """`onnxcomp inspect` listed 17 of khmersm's weights: not its positional encoding read by Slice -> Add."""
    model = build_model("""
<ir_version: 10, opset_import: ["" : 17]>
g (float[1, S, 64] x) => (float[1, S, 64] y) {
  shape = Shape(x)
  ends = Slice(shape, axes, two)
  part = Slice(pe, starts, ends, axes)
  h = Add(x, part)
  m = MatMul(h, w)
  y = Add(m, b)
}
""", {"pe": rng.standard_normal((1, 256, 64)).astype(np.float32), "starts": np.array([0], np.int64),
      "two": np.array([2], np.int64), "axes": np.array([1], np.int64),
      "w": rng.standard_normal((64, 64)).astype(np.float32), "b": rng.standard_normal(64).astype(np.float32)})
    listed = {weight.name: weight.role for weight in stored_weights(model)}
    assert listed == {"pe": "bias", "w": "weight"}


def test_scalar_constants_multiplied_in_are_not_weights(rng):
    """Paddle2ONNX writes hard-swish's 1/6 as a Constant node: listed as a table, its name went into
    the names map of every output and took bytes from the weights (rapidocr's classifier at 1/4
    then misread a rotated line)."""
    model = build_model("""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 64] x) => (float[N, 64] y) {
  sixth = Constant <value = float {0.1666}> ()
  m = MatMul(x, w)
  y = Mul(m, sixth)
}
""", {"w": rng.standard_normal((64, 64)).astype(np.float32)})
    assert [value.name for value, _ in weight_uses(model)] == ["w"]
    assert [weight.name for weight in stored_weights(model)] == ["w"]
