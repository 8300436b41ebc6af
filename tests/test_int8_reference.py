"""The per-channel int8 yardstick of the HTML report's size/quality figure."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp import modelfile
from onnxcomp.reporting.int8_reference import compare_with_int8, int8_codes, int8_model, rounded, rounded_model
from tests.conftest import run

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


def test_int8_codes_are_symmetric_per_channel(rng):
    weight = rng.standard_normal((6, 40)).astype(np.float32) * np.arange(1, 7, dtype=np.float32)[:, None]
    codes, scale, axis = int8_codes(weight)
    assert codes.dtype == np.int8 and codes.shape == weight.shape
    assert np.abs(codes.astype(int)).max() == 127 and codes.min() >= -127
    decoded = codes.astype(np.float32) * scale
    # each code step is the channel's max-abs / 127: rounding errs by at most half a step
    step = np.broadcast_to(scale, weight.shape)
    assert np.all(np.abs(decoded - weight) <= 0.5 * step + 1e-7)
    assert axis == 0  # rows of very different ranges: their own scales beat the columns'


def test_rounding_to_8_bits_is_the_int8_decode_and_10_bits_errs_a_quarter_as_much(rng):
    weight = rng.standard_normal((6, 40)).astype(np.float32) * np.arange(1, 7, dtype=np.float32)[:, None]
    codes, scale, _ = int8_codes(weight)
    np.testing.assert_array_equal(rounded(weight, 8), codes.astype(np.float32) * scale)
    errors = {bits: np.linalg.norm(rounded(weight, bits) - weight) for bits in (8, 10)}
    assert 0.15 < errors[10] / errors[8] < 0.35  # a step 255/1023 as wide: about a quarter of the error
    assert np.linalg.norm(rounded(weight, 10) - weight) / np.linalg.norm(weight) < 0.002  # ~0.1% of each channel's range


def test_rounded_model_keeps_float_weights_rounded_and_the_interface(mlp_model, rng):
    control = rounded_model(mlp_model, 10)
    assert all(value.const_value.dtype.name == "FLOAT" for value in control.graph.initializers.values())
    assert [node.op_type for node in control.graph] == [node.op_type for node in mlp_model.graph]  # no decode nodes
    x = rng.standard_normal((32, 16)).astype(np.float32)
    (expected,), (actual,) = run(mlp_model, {"x": x}), run(control, {"x": x})
    assert 0 < np.linalg.norm(actual - expected) / np.linalg.norm(expected) < 0.003


def test_rounded_model_moves_integer_weights_one_step_to_even_codes():
    from onnx import numpy_helper
    from onnx_ir.serde import deserialize_model

    from tests.test_zoo import int8_dynamic_quantized

    proto = int8_dynamic_quantized()
    for tensor in proto.graph.initializer:  # codes count from the zero point: give one a non-zero one
        if tensor.name == "w1_zp":
            tensor.CopyFrom(numpy_helper.from_array(np.array(3, np.int8), "w1_zp"))
    model = deserialize_model(proto)

    def weights_and_zero_points(graph):  # per MatMulInteger: its weight and zero point (names change)
        return [(node.inputs[1].const_value.numpy().copy(), node.inputs[3].const_value.numpy().copy())
                for node in graph if node.op_type == "MatMulInteger"]

    before = weights_and_zero_points(model.graph)
    after = weights_and_zero_points(rounded_model(model, 10).graph)
    assert [int(zero) for _, zero in after] == [int(zero) for _, zero in before] == [3, 0]
    for (old, zero), (new, _) in zip(before, after):
        assert new.dtype == np.int8 and np.abs(new.astype(int) - old).max() == 1
        new = new.astype(int)
        assert np.all(((new - zero) % 2 == 0) | (new == 127))  # even codes, but for 127 clipped back from 128
        assert 0.4 < np.mean(new != old) < 0.6  # the odd half moved
    kept = weights_and_zero_points(rounded_model(model, 10, integers=False).graph)
    assert all(np.array_equal(new, old) for (new, _), (old, _) in zip(kept, before))


def test_int8_model_stores_weights_as_int8_and_keeps_outputs(mlp_model, rng):
    reference = modelfile.serialized_bytes(mlp_model)
    quantized = int8_model(mlp_model)
    stored = sorted((value.const_value.dtype.name, tuple(value.const_value.shape))
                    for value in quantized.graph.initializers.values())  # names are shortened, as in the compressor's output
    # weights as int8 with a float scale per channel (w1 feeds Gemm: either axis may win); the bias stays float
    assert [entry for entry in stored if entry[0] == "INT8"] == [("INT8", (16, 32)), ("INT8", (32, 8))]
    assert ("FLOAT", (32,)) in stored and len(stored) == 5
    assert [node.op_type for node in quantized.graph].count("Cast") == 2
    assert [v.name for v in quantized.graph.inputs] == ["x"] and [v.name for v in quantized.graph.outputs] == ["y"]
    assert {value.name for value in mlp_model.graph.initializers.values()} == {"w1", "b1", "w2"}  # input untouched
    x = rng.standard_normal((32, 16)).astype(np.float32)
    (expected,), (actual,) = run(mlp_model, {"x": x}), run(quantized, {"x": x})
    assert np.linalg.norm(actual - expected) / np.linalg.norm(expected) < 0.01
    data = modelfile.serialized_bytes(quantized)
    # 16x32 + 32x8 float weights -> one byte each plus a scale per channel
    assert len(data) < len(reference) - 3 * (16 * 32 + 32 * 8) + 400


def test_compare_runs_three_models_on_the_same_inputs(mlp_model):
    original = modelfile.serialized_bytes(mlp_model)
    comparison = compare_with_int8(mlp_model, original)  # the "compressed" model is the original itself
    models = comparison["models"]
    assert comparison["generated"] and comparison["samples"] == 256
    assert models["compressed"]["cosine"] == pytest.approx(1.0) and models["original"]["cosine"] == pytest.approx(1.0)
    assert 0.99 < models["int8"]["cosine"] < 1.0
    assert models["int8"]["bytes"] < models["original"]["bytes"] == len(original)
