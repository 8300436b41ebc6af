"""model.weights: which initializers are compressible weights and in what role (weight, bias,
embedding), the storage of float16 and already-quantized integer weights (working values, stored
values, restore cost), the refusal of NaN weights, and the reports of kept initializers and
already-quantized weights. Weights read through Slice/Concat/Split are in tests/test_weight_roles.py."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxcomp.encodings import encoding
from onnxcomp.errors import OnnxcompError
from onnxcomp.model.weights import (Storage, check_finite, find_weights, kept_initializers, no_weights_error,
                                    quantized_weights)
from tests.conftest import build_model


def _roles(model: ir.Model) -> dict[str, tuple[str, list[str]]]:
    return {w.name: (w.role, w.consumers) for w in find_weights(model)}


def test_roles_of_gemm_matmul_and_gather_inputs(rng):
    model = build_model("""
<ir_version: 10, opset_import: ["" : 17]>
g (int64[N] ids, float[N, 16] x) => (float[N, 8] y, float[N, 16] e) {
  h = Gemm <transB = 1> (x, w1, b1)
  y = MatMul(h, w2)
  e = Gather(table, ids)
}
""", {"w1": rng.standard_normal((32, 16)).astype(np.float32), "b1": rng.standard_normal(32).astype(np.float32),
      "w2": rng.standard_normal((32, 8)).astype(np.float32), "table": rng.standard_normal((300, 16)).astype(np.float32)})
    assert _roles(model) == {"w1": ("weight", ["Gemm"]), "b1": ("bias", ["Gemm"]), "w2": ("weight", ["MatMul"]),
                             "table": ("embedding", ["Gather"])}
    weights = {w.name: w for w in find_weights(model)}
    assert weights["w1"].shape == (32, 16) and weights["w1"].size == 512 and weights["w1"].prunable
    assert not weights["b1"].prunable and weights["b1"].storage.plain and weights["b1"].itemsize == 4


def test_small_tensors_and_other_uses_are_not_weights(rng):
    model = build_model("""
<ir_version: 10, opset_import: ["" : 17]>
g (int64[N] ids, float[4, 4] x) => (float[4, 2] y, float[4, 4] e, float[4, 4] z, float[N, 4] g) {
  y = MatMul(x, tiny)
  e = Add(x, w)
  z = MatMul(x, w)
  g = Gather(codebook, ids)
}
""", {"tiny": np.ones((4, 2), np.float32),  # 12 < MIN_WEIGHT_ELEMENTS
      "w": rng.standard_normal((4, 4)).astype(np.float32),  # also added to an activation
      "codebook": rng.standard_normal((64, 4)).astype(np.float32),  # 256 entries: too small for a table
      "unused": rng.standard_normal((8, 8)).astype(np.float32)})
    assert _roles(model) == {}


def test_float16_weight_storage_rounds_to_its_own_type(rng):
    weight = rng.standard_normal((8, 8)).astype(np.float16)
    model = build_model("""
<ir_version: 10, opset_import: ["" : 17]>
g (float16[N, 8] x) => (float16[N, 8] y) {
  y = MatMul(x, w)
}
""", {"w": weight})
    (found,) = find_weights(model)
    assert found.storage.dtype == ir.DataType.FLOAT16 and found.itemsize == 2 and not found.storage.plain
    assert found.numpy().dtype == np.float32 and np.array_equal(found.numpy(), weight.astype(np.float32))
    assert found.storage.restore_nodes() == 1 and found.storage.restore_bytes() == encoding.NODE_BYTES
    found.store(np.full((8, 8), 0.1, np.float32))
    stored = model.graph.initializers["w"].const_value.numpy()
    assert stored.dtype == np.float16 and stored[0, 0] == np.float16(0.1)


def test_integer_weight_of_dequantize_linear_with_channel_scales():
    codes = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    model = build_model("""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) {
  wf = DequantizeLinear <axis = 1> (q, scale, zero)
  y = MatMul(x, wf)
}
""", {"q": codes, "scale": np.array([0.5, 1.0, 2.0, 4.0], np.float32), "zero": np.array([1, 0, 0, -2], np.int8)})
    (weight,) = find_weights(model)
    storage = weight.storage
    assert weight.name == "q" and weight.role == "weight" and storage.integer and storage.itemsize == 1
    assert storage.zero_point.shape == (1, 4) and storage.zero_point.tolist() == [[1, 0, 0, -2]]
    assert storage.importance.tolist() == [[0.25, 1.0, 4.0, 16.0]]
    assert np.array_equal(weight.numpy(), codes.astype(np.float32) - [[1, 0, 0, -2]])
    # stored back: zero point added, rounded and clipped to int8
    working = np.array([[0.4, 200.0, -300.0, 0.0]] * 4, np.float32)
    assert storage.stored(working)[0].tolist() == [1, 127, -128, -2]
    assert storage.restore_nodes() == 2  # Add the zero point, Cast to int8
    assert storage.restore_bytes() == 2 * encoding.NODE_BYTES + 16 + encoding.INITIALIZER_BYTES + 6


def test_storage_without_zero_point_or_channel_scale():
    storage = Storage(ir.DataType.UINT8, np.zeros(()), np.array(0.1, np.float32))
    assert storage.offset is None and storage.importance is None and storage.restore_nodes() == 1
    plain = Storage()
    values = np.array([1.5], np.float32)
    assert plain.working(values) is values and plain.stored(values) is not None and plain.restore_bytes() == 0


def test_integer_weight_read_with_different_scales_is_left_alone():
    model = build_model("""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) {
  a = DequantizeLinear(q, s1)
  b = DequantizeLinear(q, s2)
  h = MatMul(x, a)
  y = MatMul(h, b)
}
""", {"q": np.ones((4, 4), np.int8), "s1": np.array(0.5, np.float32), "s2": np.array(0.25, np.float32)})
    assert find_weights(model) == []
    assert quantized_weights(model) == [{"name": "q", "dtype": "int8", "shape": [4, 4], "bytes": 16,
                                         "ops": ["DequantizeLinear"]}]
    assert quantized_weights(model, exclude={"q"}) == []
    message = str(no_weights_error(model))
    assert message.startswith("the model has no weights onnxcomp can compress: its 1 already-quantized weights are int8 "
                              "(16 B, read by DequantizeLinear)")


def test_cast_then_scale_is_a_weight_only_quantized_weight():
    model = build_model("""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 8] y) {
  wf = Cast <to = 1> (q)
  ws = Mul(wf, scale)
  y = MatMul(x, ws)
}
""", {"q": np.ones((4, 8), np.int8), "scale": np.full((4, 1), 0.5, np.float32)})
    (weight,) = find_weights(model)
    assert weight.storage.zero_point is None and weight.storage.scale.tolist() == [[0.5]] * 4


def test_check_finite_names_the_weight_and_its_readers(rng):
    array = rng.standard_normal((4, 8)).astype(np.float32)
    array[1, 2], array[3, 3] = np.nan, np.inf
    model_text = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 8] y) {
  y = MatMul(x, w)
}
"""
    model = build_model(model_text, {"w": array})
    with pytest.raises(OnnxcompError, match=r"weight 'w' \(4x8, used by MatMul\) contains 2 NaN or infinite values"):
        check_finite(find_weights(model))
    array[1, 2], array[3, 3] = 0, 0
    check_finite(find_weights(build_model(model_text, {"w": array})))


def test_kept_initializers_and_the_plain_refusal(rng):
    model = build_model("""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 16] x) => (float[N, 16] y) {
  h = MatMul(x, w)
  y = Add(h, shift)
}
""", {"w": rng.standard_normal((16, 16)).astype(np.float32), "shift": np.ones((1, 16), np.float32)})
    assert kept_initializers(model) == (0, [])  # 64 B of shift: under 1 KiB
    big = build_model("""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 512] x) => (float[N, 512] y) {
  y = Add(x, shift)
}
""", {"shift": np.ones((1, 512), np.float32)})
    assert kept_initializers(big) == (2048, ["Add"])
    assert str(no_weights_error(big)).startswith("the model has no compressible weights (float32/float16/bfloat16")


def loop_model(hand_on: str = "Identity"):
    """A Keras LSTM as tf2onnx exports it: the weight enters a Loop as a carried value, the body
    multiplies by it and hands it on (`hand_on`: Identity, unchanged; Neg: changed each step)."""
    from onnx import TensorProto, helper, numpy_helper
    from onnx_ir.serde import deserialize_model

    rng = np.random.default_rng(0)
    value = lambda name, kind, shape: helper.make_tensor_value_info(name, kind, shape)  # noqa: E731
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "w_in"], ["h_mm"]), helper.make_node("Tanh", ["h_mm"], ["h_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node(hand_on, ["w_in"], ["w_out"])], "body",
        [value("i", TensorProto.INT64, []), value("cond_in", TensorProto.BOOL, []),
         value("h_in", TensorProto.FLOAT, ["N", 64]), value("w_in", TensorProto.FLOAT, [64, 64])],
        [value("cond_out", TensorProto.BOOL, []), value("h_out", TensorProto.FLOAT, ["N", 64]),
         value("w_out", TensorProto.FLOAT, [64, 64])])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["steps", "go", "x", "w"], ["h", "w_last"], body=body)], "g",
        [value("x", TensorProto.FLOAT, ["N", 64])], [value("h", TensorProto.FLOAT, ["N", 64])],
        [numpy_helper.from_array((rng.standard_normal((64, 64)) / 8).astype(np.float32), "w"),
         numpy_helper.from_array(np.array(3, np.int64), "steps"), numpy_helper.from_array(np.array(True), "go")])
    return deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))


def test_a_weight_a_loop_carries_unchanged_is_a_weight_of_the_body_reader():
    weights = find_weights(loop_model())
    assert [(w.name, w.role, w.consumers) for w in weights] == [("w", "weight", ["MatMul"])]


def test_weights_that_a_loop_changes_are_named_in_the_refusal():
    model = loop_model(hand_on="Neg")  # carried but changed every step: not a constant weight of the body
    assert find_weights(model) == []
    message = str(no_weights_error(model))
    assert message.startswith("the model has no compressible weights: its 1 float weight (4,096 parameters) is read "
                              "by Loop nodes or inside their bodies"), message


def test_an_integer_table_dequantized_after_its_gather_is_a_weight():
    """ONNX Runtime's quantize_dynamic writes embeddings so: uint8 table -> Gather -> DequantizeLinear."""
    text = """
<ir_version: 10, opset_import: ["" : 17]>
g (int64[N, 4] ids) => (float[N, 4, 8] y) {
  rows = Gather(table, ids)
  y = DequantizeLinear(rows, scale, zero)
}
"""
    table = np.random.default_rng(0).integers(0, 256, (64, 8)).astype(np.uint8)
    arrays = {"table": table, "scale": np.array(0.05, np.float32), "zero": np.array(128, np.uint8)}
    (weight,) = find_weights(build_model(text, arrays))
    assert weight.name == "table" and weight.storage.dtype == ir.DataType.UINT8
    assert float(weight.storage.scale) == pytest.approx(0.05) and float(weight.storage.zero_point) == 128
    np.testing.assert_array_equal(weight.numpy(), table.astype(np.float32) - 128)
    other = build_model(text.replace("y = DequantizeLinear(rows, scale, zero)", "y = Cast <to = 1> (rows)"),
                        {"table": table})
    assert find_weights(other) == []  # read as raw integers: not a quantized weight


def test_large_tables_read_by_elementwise_arithmetic_are_compressed_as_biases(rng):
    """khmersm's positional encoding [1, 2048, 192] is sliced to the sequence and added (22% of the
    file, kept whole before); a bias added after a MatMul and a mask holding -inf stay as they are."""
    model = build_model("""
<ir_version: 10, opset_import: ["" : 17]>
g (float[1, S, 64] x) => (float[1, S, 64] y, float[1, S, 64] z) {
  part = Slice(pe, starts, ends, axes)
  h = Add(x, part)
  m = MatMul(h, w)
  y = Add(m, b)
  z = Add(x, mask)
}
""", {"pe": rng.standard_normal((1, 256, 64)).astype(np.float32), "starts": np.array([0], np.int64),
      "ends": np.array([8], np.int64), "axes": np.array([1], np.int64),
      "w": rng.standard_normal((64, 64)).astype(np.float32), "b": rng.standard_normal(64).astype(np.float32),
      "mask": np.where(rng.random((1, 128, 64)) < 0.5, -np.inf, 0).astype(np.float32)})  # 8192 entries
    assert _roles(model) == {"pe": ("bias", ["Add"]), "w": ("weight", ["MatMul"])}
    assert not {w.name: w for w in find_weights(model)}["pe"].prunable
