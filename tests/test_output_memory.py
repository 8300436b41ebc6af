"""Memory bounded by the data where weights or outputs are large: integer-valued (already
quantized) weights are priced over their distinct values, the original's outputs on generated
samples stay within a budget, and fidelity compares outputs a slice of rows at a time.

ddddocr's common_old.onnx (13.6 MB, uint8 weights, [T, N, 8210] logits) peaked at 2.9 GB data-free:
sorted float64 copies and prefix sums of its 8.4M-entry classifier (~80 bytes per entry, two at
once in the dense-and-sparse pricing) and 256 samples of 0.9 MB logits held several times over."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxcomp.reporting import verify
from onnxcomp.encodings.quantize import SortedWeights
from onnxcomp.stages import verify as stages_verify
from onnxcomp.stages.options import CompressOptions

RNG = np.random.default_rng(0)


def _codes(size: int) -> np.ndarray:
    """uint8 codes less their zero point, as `weights.Storage` hands integer weights to pricing:
    a narrow bulk and a few large values."""
    codes = np.round(RNG.standard_normal(size) * 3)
    outliers = RNG.random(size) < 0.01
    codes[outliers] = RNG.integers(-119, 137, int(outliers.sum()))
    return codes.clip(-119, 136).astype(np.float32)


def test_integer_weights_are_held_as_distinct_values():
    values = _codes(1 << 20)
    held = SortedWeights(values)
    assert held.sorted.size <= 256  # was one float64 per entry, with four prefix sums each
    assert held.size == values.size


@pytest.mark.parametrize("shape", [(300, 700), (5000,), (64, 3, 3)])
def test_distinct_values_price_exactly_as_every_entry(shape):
    """Unit importance takes the per-entry path with the same weights: every threshold, squared
    error, non-zero count and codebook must be equal, not close."""
    values = _codes(int(np.prod(shape))).reshape(shape)
    distinct, every = SortedWeights(values), SortedWeights(values, np.ones(shape))
    assert distinct.counts is not None and every.counts is None
    assert distinct.energy == every.energy
    for sparsity in (0.0, 0.1, 0.3, 0.5, 0.9):
        assert distinct.saliency_threshold(sparsity) == every.saliency_threshold(sparsity)
        for clusters in (1, 3, 4, 7, 16, 31, 256):
            a, b = distinct.quantize(sparsity, clusters), every.quantize(sparsity, clusters)
            assert (a.sse, a.nonzeros, a.saliency_threshold) == (b.sse, b.nonzeros, b.saliency_threshold)
            np.testing.assert_array_equal(a.codebook, b.codebook)


def test_float_and_huge_integer_weights_keep_one_entry_each():
    assert SortedWeights(RNG.standard_normal(1000).astype(np.float32)).counts is None
    # squares summed over the tensor would pass 2**52: not exact in float64, so not merged
    assert SortedWeights(np.full(1000, 2.0 ** 24, np.float32)).counts is None
    assert SortedWeights(np.array([1.0, np.inf, 2.0], np.float32)).counts is None


def _wide_output_model() -> ir.Model:
    """x [N, 8] -> y [N, 8, 16384]: 512 KB of float output per sample from 32 bytes of input."""
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    wide (float[N, 8] x) => (float[N, 8, 16384] y) {
      u = Unsqueeze(x, axes)
      y = Mul(u, w)
    }
    """)
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array(np.array([2], np.int64), "axes"),
        onnx.numpy_helper.from_array(RNG.standard_normal((1, 1, 16384)).astype(np.float32), "w")])
    return ir.serde.deserialize_model(proto)


def test_reference_outputs_on_generated_samples_stay_within_the_budget(monkeypatch):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")
    from onnxcomp.runtime.inference import session

    monkeypatch.setattr(stages_verify, "GENERATED_OUTPUT_BYTES", 16 << 20)
    model = _wide_output_model()
    reference = stages_verify.run_original(model, session(ir.serde.serialize_model(model)), None,
                                           CompressOptions(target_bytes=1 << 20), None)
    held = sum(output.nbytes for output in reference.outputs)
    assert reference.samples.count == 32  # 256 generated, 512 KB of output each: 128 MB held before
    assert held <= 16 << 20
    assert reference.samples.generated


def test_fidelity_in_slices_equals_the_whole(monkeypatch):
    original = [RNG.standard_normal((40, 3, 7)).astype(np.float32), RNG.standard_normal(9), np.float32(2.0)]
    compressed = [a + np.asarray(0.01 * RNG.standard_normal(np.shape(a)), np.asarray(a).dtype) for a in original]
    whole = verify.fidelity(original, compressed)
    distortion = verify.output_distortion(original, compressed)
    monkeypatch.setattr(verify, "FIDELITY_CHUNK_BYTES", 200)  # a few rows per slice
    sliced = verify.fidelity(original, compressed)
    for name, entry in whole["outputs"].items():
        assert sliced["outputs"][name]["max_abs_error"] == entry["max_abs_error"]
        assert sliced["outputs"][name]["cosine"] == pytest.approx(entry["cosine"], rel=1e-12)
        assert sliced["outputs"][name]["mean_abs_error"] == pytest.approx(entry["mean_abs_error"], rel=1e-12)
    assert verify.output_distortion(original, compressed) == pytest.approx(distortion, rel=1e-12)
    infinite = [np.array([[1.0, np.inf, 4.0, 5.0], [2.0, 3.0, 4.0, 5.0]])]  # what the original cannot give is left out
    measured = verify.fidelity(infinite, [np.array([[1.0, np.inf, 4.0, 5.0], [2.0, 3.5, 4.0, 5.0]])])
    assert measured["max_abs_error"] == 0.5 and measured["outputs"]["output_0"]["nonfinite_original"] == 1


def test_a_row_wider_than_a_slice_is_compared_a_slice_of_columns_at_a_time(monkeypatch):
    """Feeds of different shapes join into one flattened row (`join_outputs`); it is compared in
    slices too, not copied whole to float64 (the PP-OCRv4 recognizer's 264 MB row peaked at 3.1 GB)."""
    original = [RNG.standard_normal(1000).astype(np.float32), RNG.standard_normal((3, 400)).astype(np.float32)]
    compressed = [a + (0.1 * RNG.standard_normal(a.shape)).astype(np.float32) for a in original]
    compressed[1][1] = 0.0  # collapsed to zeros: cosine 0, not 1
    whole = verify.fidelity(original, compressed)
    monkeypatch.setattr(verify, "FIDELITY_CHUNK_BYTES", 200)  # 25 float64 values: every row is wider
    sliced = verify.fidelity(original, compressed)
    for name, entry in whole["outputs"].items():
        assert sliced["outputs"][name]["max_abs_error"] == entry["max_abs_error"]
        assert sliced["outputs"][name]["cosine"] == pytest.approx(entry["cosine"], rel=1e-12)
        assert sliced["outputs"][name]["mean_abs_error"] == pytest.approx(entry["mean_abs_error"], rel=1e-12)
    a = original[0].astype(np.float64)
    b = compressed[0].astype(np.float64)
    assert sliced["outputs"]["output_0"]["cosine"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), rel=1e-12)
    assert sliced["outputs"]["output_1"]["cosine"] < 0.67
    zeros = [np.zeros((2, 3)), np.zeros(4)]
    assert verify.fidelity(zeros, zeros)["cosine"] == 1.0  # both zero: the same output
    assert verify.fidelity([np.ones(4)], [np.zeros(4)])["cosine"] == 0.0
    row = RNG.standard_normal(2_000_000).astype(np.float32)  # 8 MB: 16 MB a float64 copy
    monkeypatch.setattr(verify, "FIDELITY_CHUNK_BYTES", 1 << 20)
    tracemalloc.start()
    try:
        verify.fidelity([row], [row + np.float32(0.01)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < (8 << 20) + (8 << 20)  # the compressed row itself and a few 1 MB slices; whole copies: 48 MB
