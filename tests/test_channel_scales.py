"""Per-output-channel scales and the per-channel int8 guard (onnxcomp.encodings.channel_scales, allocate).

A convolution whose output channels span 1e-3..1e3 (as BatchNorm folding leaves them), followed
by a convolution that undoes the scales (so every channel matters downstream equally): one
codebook per tensor rounds the narrow channels away; at 8 bits per weight the compressed model
must be at least as close to the original as per-channel int8 of the same weights.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp import modelfile
from onnxcomp.planning.allocate import allocate, layer_options
from onnxcomp.encodings.encoding import NODE_BYTES
from onnxcomp.encodings.channel_scales import (ChannelScales, channel_distortion, channel_scales, insert_scale, int8_reference,
                                     normalize_weights, scale_bytes)
from onnxcomp.pipeline import CompressOptions, compress_model
from onnxcomp.runtime.inference import session

OUT, IN = 32, 32


def ranged_weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """W [OUT, IN, 3, 3] with output channel c scaled by 10**(-3..3), as BatchNorm folding leaves
    them, and the folded bias at the same scale."""
    rng = np.random.default_rng(seed)
    scales = (10.0 ** np.linspace(-3, 3, OUT)).astype(np.float32)
    rng.shuffle(scales)
    weight = (rng.standard_normal((OUT, IN, 3, 3)) * scales[:, None, None, None]).astype(np.float32)
    bias = (rng.standard_normal(OUT) * scales * 0.1).astype(np.float32)
    return weight, bias


def ranged_model(weight: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """Conv -> HardSwish: every output channel is read downstream (a normalisation or the next
    layer's folded BatchNorm makes each one count), so each must keep its own relative precision."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "ranged", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, IN, 12, 12])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, OUT, 12, 12])],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def per_channel_int8(values: np.ndarray) -> np.ndarray:
    """Symmetric max-abs int8 per output channel (axis 0): what per-channel quantizers store."""
    peak = np.max(np.abs(values.reshape(values.shape[0], -1)), axis=1).reshape(-1, *([1] * (values.ndim - 1)))
    step = np.where(peak > 0, peak, 1.0) / 127
    return (np.round(values / step) * step).astype(np.float32)


def run(model: onnx.ModelProto, feed: np.ndarray) -> np.ndarray:
    return session(model).run(None, {"x": feed})[0]


def relative_error(reference: np.ndarray, output: np.ndarray) -> float:
    """Mean over output channels of each channel's relative error."""
    axes = tuple(a for a in range(reference.ndim) if a != 1)
    per_channel = np.sqrt(np.sum((output - reference) ** 2, axis=axes) / np.sum(reference ** 2, axis=axes))
    return float(np.mean(per_channel))


@pytest.fixture(scope="module")
def ranged():
    weight, bias = ranged_weights()
    model = ranged_model(weight, bias)
    feed = np.random.default_rng(1).standard_normal((1, IN, 12, 12)).astype(np.float32)
    return weight, bias, model, feed


def test_channel_distortion_sees_what_tensor_error_hides(ranged):
    first, *_ = ranged
    zeroed = first.copy()
    narrow = np.argsort(np.abs(first).reshape(OUT, -1).max(axis=1))[: OUT // 2]
    zeroed[narrow] = 0.0  # half the channels gone: the tensor's squared error barely moves
    tensor_error = float(np.sum((zeroed - first) ** 2) / np.sum(first ** 2))
    assert tensor_error < 1e-6
    assert channel_distortion(first, zeroed, axes=(0,)) == pytest.approx(0.5, rel=1e-6)
    assert channel_distortion(first, per_channel_int8(first), axes=(0,)) < 1e-4
    assert int8_reference(first) <= channel_distortion(first, per_channel_int8(first), axes=(0,)) * (1 + 1e-9)


def test_scales_round_trip_and_importance(rng):
    values = (rng.standard_normal((6, 5)) * np.array([1e-3, 1, 10, 0, 5, 1e3])[:, None]).astype(np.float32)
    scales = channel_scales(values, 0)
    assert scales.scales[3] == 1.0  # an all-zero channel keeps scale 1 and its zeros
    normalized = scales.normalize(values)
    assert np.max(np.abs(normalized)) <= 1.0 + 1e-6
    np.testing.assert_allclose(scales.restore(normalized), values, rtol=1e-6)
    columns = channel_scales(values, 1)
    assert columns.view(2).shape == (1, 5)
    importance = np.full((1, 5), 2.0)
    error = rng.standard_normal(values.shape).astype(np.float32) * 1e-3
    weighted = columns.importance(values.shape, importance)
    lhs = np.sum(weighted * error ** 2)
    rhs = np.sum(importance * (columns.restore(error)) ** 2)
    assert lhs == pytest.approx(rhs, rel=1e-5)


def test_allocator_prices_scaled_candidates_and_guards(ranged):
    weight, bias, *_ = ranged
    layers = [layer_options("w", weight, "weight"), layer_options("b", bias, "bias")]
    scaled = [c for c in layers[0].candidates if c.kind == "scaled"]
    assert scaled and layers[1].int8_channel is None
    assert all(c.bytes > weight.size * c.bits / 8 + 4 * OUT for c in scaled)  # codes + scales, priced
    budget = (weight.nbytes + bias.nbytes) // 4 + 1024
    plan = allocate(layers, budget)
    assert plan is not None and plan.estimated_bytes <= budget
    chosen = plan.choices["w"]
    assert chosen.kind == "scaled" and chosen.channel <= layers[0].int8_channel * 1.01, (chosen.kind, chosen.bits)
    per_tensor = [c for c in layers[0].candidates if c.kind == "lookup" and c.bits == 8 and c.sparsity == 0]
    assert all(c.channel > 10 * layers[0].int8_channel for c in per_tensor)
    tight = allocate(layers, (weight.nbytes + bias.nbytes) // 16)  # 2 bits per weight: the guard gives way
    assert tight is not None and tight.estimated_bytes <= (weight.nbytes + bias.nbytes) // 16


def test_compressed_at_a_quarter_matches_per_channel_int8(ranged):
    weight, bias, model, feed = ranged
    reference = run(model, feed)
    int8_error = relative_error(reference, run(ranged_model(per_channel_int8(weight), bias), feed))
    target = len(model.SerializeToString()) // 4 + 600  # 8 bits per weight plus the graph's own bytes
    result = compress_model(ir.serde.deserialize_model(model), CompressOptions(target_bytes=target))
    assert len(result.data) <= target
    compressed = onnx.load_from_string(result.data)
    onnx.checker.check_model(compressed)
    error = relative_error(reference, run(compressed, feed))
    assert error <= 1.5 * int8_error, (error, int8_error)


def test_insert_scale_rescales_every_reader(rng):
    values = (rng.standard_normal((8, 64)) * np.array([1e-2, 1, 1e2, 3, 1e-3, 5, 0.1, 1e3])[:, None]).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1), helper.make_node("Gemm", ["x", "w"], ["z"], transB=1)],
        "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8]), helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 8])],
        [numpy_helper.from_array(values, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    feed = rng.standard_normal((2, 64)).astype(np.float32)
    expected = session(proto).run(None, {"x": feed})
    model = ir.serde.deserialize_model(proto)
    scales = channel_scales(values, 0)
    normalize_weights(model, {"w": scales})
    assert np.max(np.abs(model.graph.initializers["w"].const_value.numpy())) <= 1.0 + 1e-6
    insert_scale(model, model.graph.initializers["w"], scales, "w")
    rebuilt = modelfile.to_proto(model)
    onnx.checker.check_model(rebuilt)
    got = session(rebuilt).run(None, {"x": feed})
    for want, have in zip(expected, got):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6)
    assert [n.op_type for n in rebuilt.graph.node].count("Mul") == 1
    assert isinstance(scales, ChannelScales)


def test_scales_store_as_float16_where_they_fit(rng):
    """Scales inside float16's normal range are rounded up to float16 values (2 bytes per channel,
    one Cast at load): the normalised weight still spans at most [-1, 1], the rebuilt weight is
    exact, and the scaled candidates are priced 2 bytes per channel less. Out-of-range scales
    stay float32."""
    values = (rng.standard_normal((200, 32)) * np.logspace(-3, 3, 200)[:, None]).astype(np.float32)
    scales = channel_scales(values, 0)
    assert scales.half and np.array_equal(scales.scales.astype(np.float16).astype(np.float32), scales.scales)
    exact = channel_scales(values, 0, half=False)
    assert np.all(scales.scales >= exact.scales) and np.all(scales.scales <= exact.scales * (1 + 2.0 ** -10))
    normalized = scales.normalize(values)
    assert np.max(np.abs(normalized)) <= 1.0 and np.max(np.abs(normalized)) >= 1 - 2.0 ** -10
    assert scale_bytes(200, 2, half=True) <= scale_bytes(200, 2) - 2 * 200 + NODE_BYTES
    assert not channel_scales(values * np.float32(1e-6), 0).half  # 1e-9 is below float16's normal range
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "mm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 200])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 32])],
                              [numpy_helper.from_array(values, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    feed = rng.standard_normal((3, 200)).astype(np.float32)
    expected = session(proto).run(None, {"x": feed})[0]
    model = ir.serde.deserialize_model(proto)
    normalize_weights(model, {"w": scales})
    insert_scale(model, model.graph.initializers["w"], scales, "w")
    rebuilt = modelfile.to_proto(model)
    onnx.checker.check_model(rebuilt)
    stored = {t.name: t for t in rebuilt.graph.initializer}["w_scale"]
    assert stored.data_type == TensorProto.FLOAT16
    assert [n.op_type for n in rebuilt.graph.node] == ["Cast", "Mul", "MatMul"]
    np.testing.assert_allclose(session(rebuilt).run(None, {"x": feed})[0], expected, rtol=1e-5, atol=1e-4)
