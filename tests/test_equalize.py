"""Cross-layer equalization: per-channel ranges of consecutive layers evened out, the float
model's outputs unchanged (ONNX Runtime, 1e-5 relative), per-tensor quantization error lower."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxcomp.passes.equalize import EqualizeCrossLayerPass
from tests.conftest import build_model, run, to_proto

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

# Conv -> Relu -> depthwise Conv -> Clip(0, 6) (ReLU6) -> grouped Conv -> LeakyRelu -> Conv
CNN_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
cnn (float[N, 3, 12, 12] x) => (float[N, 4, 8, 8] y) {
  a = Conv<pads = [1, 1, 1, 1]>(x, w1, b1)
  ar = Relu(a)
  d = Conv<group = 8, pads = [1, 1, 1, 1]>(ar, w2, b2)
  dr = Clip(d, zero, six)
  g = Conv<group = 2>(dr, w3, b3)
  gr = LeakyRelu<alpha = 0.1>(g)
  y = Conv(gr, w4)
}
"""
# MatMul -> Add -> Relu -> Gemm(transB) -> PRelu -> MatMul
MLP_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
mlp (float[N, 16] x) => (float[N, 5] y) {
  h = MatMul(x, w1)
  hb = Add(h, b1)
  r = Relu(hb)
  g = Gemm<transB = 1>(r, w2, b2)
  p = PRelu(g, slope)
  y = MatMul(p, w3)
}
"""


def channel_scaled(rng, shape, axis, low=-3.0, high=3.0):
    """Random weights whose slices along `axis` span 10**low .. 10**high."""
    scales = 10.0 ** np.linspace(low, high, shape[axis])
    rng.shuffle(scales)
    view = [1] * len(shape)
    view[axis] = -1
    return (rng.standard_normal(shape) * scales.reshape(view)).astype(np.float32)


def cnn_model(rng) -> ir.Model:
    return build_model(CNN_TEXT, {
        "w1": channel_scaled(rng, (8, 3, 3, 3), 0), "b1": rng.standard_normal(8).astype(np.float32),
        "w2": channel_scaled(rng, (8, 1, 3, 3), 0, -1, 1), "b2": rng.standard_normal(8).astype(np.float32),
        "zero": np.array(0, np.float32), "six": np.array(6, np.float32),
        "w3": channel_scaled(rng, (6, 4, 3, 3), 0, -2, 2), "b3": rng.standard_normal(6).astype(np.float32),
        "w4": rng.standard_normal((4, 6, 3, 3)).astype(np.float32),
    })


def mlp_model(rng) -> ir.Model:
    return build_model(MLP_TEXT, {
        "w1": channel_scaled(rng, (16, 32), 1), "b1": rng.standard_normal(32).astype(np.float32),
        "w2": channel_scaled(rng, (24, 32), 0, -2, 2), "b2": rng.standard_normal(24).astype(np.float32),
        "slope": np.full(24, 0.25, np.float32), "w3": rng.standard_normal((24, 5)).astype(np.float32),
    })


def assert_same_outputs(before: onnx.ModelProto, after: ir.Model, feeds: dict[str, np.ndarray]) -> None:
    expected, actual = run(before, feeds)[0], run(after, feeds)[0]
    scale = np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale)


def per_tensor_error(model: ir.Model, feeds, reference, bits: int = 4) -> float:
    """Relative output error after rounding every weight to a symmetric per-tensor grid."""
    quantized = ir.serde.deserialize_model(to_proto(model))
    for value in quantized.graph.initializers.values():
        array = value.const_value.numpy()
        if array.ndim < 2:
            continue
        step = np.abs(array).max() / (2 ** (bits - 1) - 1)
        value.const_value = ir.tensor((np.round(array / step) * step).astype(np.float32), name=value.name)
    output = run(quantized, feeds)[0]
    return float(np.linalg.norm(output - reference) / np.linalg.norm(reference))


@pytest.mark.parametrize("build, shape, pairs", [(cnn_model, (4, 3, 12, 12), 3), (mlp_model, (32, 16), 2)])
def test_outputs_unchanged_and_ranges_evened(build, shape, pairs, rng):
    model = build(rng)
    before = to_proto(model)
    feeds = {"x": rng.standard_normal(shape).astype(np.float32)}
    result = EqualizeCrossLayerPass()(model)
    assert result.modified
    assert len(result.rows) == pairs  # every pair of the chain
    for row in result.rows:
        assert row["spread_after"] < row["spread_before"], row
    assert result.rows[0]["spread_after"] < result.rows[0]["spread_before"] / 100  # w1's 1e-3..1e3 channels
    onnx.checker.check_model(to_proto(model), full_check=True)
    assert_same_outputs(before, model, feeds)
    assert [v.name for v in model.graph.outputs] == [o.name for o in before.graph.output]


def test_relu6_becomes_per_channel_bounds(rng):
    model = cnn_model(rng)
    EqualizeCrossLayerPass()(model)
    ops = [node.op_type for node in model.graph]
    assert "Clip" not in ops and ops.count("Min") == 1
    bound = next(node for node in model.graph if node.op_type == "Min").inputs[1].const_value.numpy()
    assert bound.shape == (8, 1, 1) and np.ptp(bound) > 0  # 6 / s per channel


def test_idempotent(rng):
    model = mlp_model(rng)
    EqualizeCrossLayerPass()(model)
    weights = {name: value.const_value.numpy().copy() for name, value in model.graph.initializers.items()}
    again = EqualizeCrossLayerPass()(model)
    assert not again.modified
    for name, value in model.graph.initializers.items():
        np.testing.assert_array_equal(value.const_value.numpy(), weights[name])


def test_per_tensor_quantization_error_drops(rng):
    model = mlp_model(rng)
    feeds = {"x": rng.standard_normal((256, 16)).astype(np.float32)}
    reference = run(model, feeds)[0]
    before = per_tensor_error(model, feeds, reference)
    EqualizeCrossLayerPass()(model)
    after = per_tensor_error(model, feeds, reference)
    assert after < before / 2, (before, after)  # measured 0.31 -> 0.12 at 4 bits


def test_not_applied_where_it_would_change_the_function(rng):
    # Sigmoid is not positively homogeneous; the first weight is shared; h is also a graph output
    text = """
    <ir_version: 10, opset_import: ["" : 17]>
    m (float[N, 8] x) => (float[N, 8] y, float[N, 8] h) {
      a = MatMul(x, w1)
      s = Sigmoid(a)
      b = MatMul(s, w2)
      c = Relu(b)
      h = MatMul(c, w3)
      r = Relu(h)
      y = MatMul(r, w4)
    }"""
    weights = {name: channel_scaled(rng, (8, 8), 1) for name in ("w1", "w2", "w3", "w4")}
    model = build_model(text, weights)
    result = EqualizeCrossLayerPass()(model)
    assert [(row["first"], row["second"]) for row in result.rows] == [("w2", "w3")]
    for name in ("w1", "w4"):
        np.testing.assert_array_equal(model.graph.initializers[name].const_value.numpy(), weights[name])
