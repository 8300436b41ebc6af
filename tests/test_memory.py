"""Memory bounded by the data: per-sample activation bytes from shape inference, batches sized
from a budget, statistics streamed over batches, and the peak RSS of a whole compression of a
CNN with large activations, measured in a child process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxcomp.model import memory
from onnxcomp.planning import sensitivity
from onnxcomp.stages import analyze
from onnxcomp.planning.compensation import input_hessians
from onnxcomp.model.memory import activation_sizes, batch_size
from onnxcomp.model.weights import find_weights

RNG = np.random.default_rng(0)
CHANNELS = 32

# Dynamic batch, height and width; 32 channels at full resolution: ~0.5 MB per value and sample
# at 64x64, against 16 KB of input.
CNN_TEXT = f"""
<ir_version: 8, opset_import: ["" : 17]>
cnn (float[N, 1, H, W] x) => (float[N, 10] y) {{
  a1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
  r1 = Relu(a1)
  a2 = Conv <pads = [1, 1, 1, 1]> (r1, w2, b2)
  r2 = Relu(a2)
  a3 = Conv <pads = [1, 1, 1, 1]> (r2, w3, b3)
  r3 = Relu(a3)
  p = GlobalAveragePool(r3)
  f = Flatten(p)
  y = Gemm(f, w4, b4)
}}
"""


def _cnn(height: int | None = None) -> onnx.ModelProto:
    text = CNN_TEXT if height is None else CNN_TEXT.replace("float[N, 1, H, W]", f"float[N, 1, {height}, {height}]")
    proto = onnx.parser.parse_model(text)
    arrays = {"w1": RNG.standard_normal((CHANNELS, 1, 3, 3)) * 0.3, "b1": RNG.standard_normal(CHANNELS) * 0.1,
              "w2": RNG.standard_normal((CHANNELS, CHANNELS, 3, 3)) * 0.06, "b2": RNG.standard_normal(CHANNELS) * 0.1,
              "w3": RNG.standard_normal((CHANNELS, CHANNELS, 3, 3)) * 0.06, "b3": RNG.standard_normal(CHANNELS) * 0.1,
              "w4": RNG.standard_normal((CHANNELS, 10)) * 0.2, "b4": RNG.standard_normal(10) * 0.1}
    for name, array in arrays.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array.astype(np.float32), name))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def test_activation_sizes_follow_the_concrete_input_shape():
    model = ir.serde.deserialize_model(_cnn())
    sizes = activation_sizes(model, {"x": np.zeros((5, 1, 40, 24), np.float32)})
    value = CHANNELS * 40 * 24 * 4  # one sample of a1 .. r3
    assert sizes.unknown == frozenset()
    assert sizes.per_sample["x"] == 40 * 24 * 4
    assert all(sizes.per_sample[name] == value for name in ("a1", "r1", "a2", "r2", "a3", "r3"))
    assert sizes.per_sample["y"] == 10 * 4
    assert sizes.total == 40 * 24 * 4 + 6 * value + CHANNELS * 4 * 2 + 10 * 4
    assert sizes.of(["a1", "r1"]) == 2 * value
    # The weights are not activations; the model is not changed.
    assert "w2" not in sizes.per_sample and len(model.graph.initializers) == 8


def test_multiply_adds_count_each_output_times_what_it_reduces_over():
    model = ir.serde.deserialize_model(_cnn())
    sizes = activation_sizes(model, {"x": np.zeros((5, 1, 40, 24), np.float32)})
    pixels = 40 * 24
    expected = pixels * CHANNELS * 1 * 9 + 2 * pixels * CHANNELS * CHANNELS * 9 + 10 * CHANNELS  # three Convs and the Gemm
    assert memory.multiply_adds(model, sizes) == expected


def test_generated_sensitivity_samples_stay_within_the_compute_budget(monkeypatch):
    """Activation bytes alone let a compute-heavy model (RivaGAN's 11x11 3-D convolutions) probe
    19 samples; the multiply-adds cap takes fewer, at least one."""
    from onnxcomp.samples.generated import generate_samples

    model = ir.serde.deserialize_model(_cnn(32))
    samples = generate_samples(model, 64)
    sizes = activation_sizes(model, samples.inputs)
    assert analyze.sensitivity_samples(samples, sizes, 3, model)[0].count == 64  # neither budget binds
    per_sample = memory.multiply_adds(model, sizes)
    monkeypatch.setattr(analyze, "SENSITIVITY_WORK_MACS", 10 * per_sample * 4)  # 4 runs a sample: 3 probes + reference
    assert analyze.sensitivity_samples(samples, sizes, 3, model)[0].count == 10
    monkeypatch.setattr(analyze, "SENSITIVITY_WORK_MACS", 1)
    assert analyze.sensitivity_samples(samples, sizes, 3, model)[0].count == 1


def test_unknown_sizes_count_at_the_mean():
    sizes = memory.ActivationSizes({"a": 100, "b": 300}, frozenset({"c"}))
    assert sizes.total == 600 and sizes.of(["a", "c", "zzz"]) == 500


def test_batch_size_from_the_budget():
    assert batch_size(1 << 20, budget=64 << 20) == 64
    assert batch_size(1 << 30, budget=64 << 20) == 1  # one sample larger than the budget still runs
    assert batch_size(10, budget=1 << 30) == memory.MAX_BATCH
    assert batch_size(0) == memory.MAX_BATCH


def test_pipeline_batch_follows_activation_bytes_not_a_constant():
    model = ir.serde.deserialize_model(_cnn())
    big = activation_sizes(model, {"x": np.zeros((1, 1, 256, 256), np.float32)})  # ~8 MB a value
    small = activation_sizes(model, {"x": np.zeros((1, 1, 4, 4), np.float32)})
    assert analyze.batch_size(model, big) == memory.ACTIVATION_BUDGET // big.total < 256
    assert analyze.batch_size(model, small) == memory.MAX_BATCH
    fixed = ir.serde.deserialize_model(_cnn())
    fixed.graph.inputs[0].shape = ir.Shape([3, 1, 8, 8])
    assert analyze.batch_size(fixed, big) == 3  # a declared batch is the batch the model takes


def test_statistics_are_streamed_and_equal_to_one_batch(monkeypatch):
    model = ir.serde.deserialize_model(_cnn())
    weights = find_weights(model)
    inputs = {"x": RNG.standard_normal((12, 1, 16, 16)).astype(np.float32)}
    whole = sensitivity.activation_importance(model, weights, inputs, 256)
    seen = []
    real_batches = sensitivity.batches

    def counting(feeds, size):
        seen.append(size)
        return real_batches(feeds, size)

    monkeypatch.setattr(sensitivity, "batches", counting)
    monkeypatch.setattr(memory, "ACTIVATION_BUDGET", activation_sizes(model, inputs).total * 3)
    streamed = sensitivity.activation_importance(model, weights, inputs, 256)
    assert seen == [1]  # the fetched activations count too: 3 per-sample totals hold one sample
    assert set(whole) == set(streamed) == {"w1", "w2", "w3", "w4"}
    for name in whole:
        np.testing.assert_allclose(streamed[name], whole[name], rtol=1e-5)
    monkeypatch.setattr(sensitivity, "SQUARES_CHUNK_BYTES", 64)  # float64 squares a few rows at a time
    sliced = sensitivity.activation_importance(model, weights, inputs, 256)
    for name in whole:
        np.testing.assert_allclose(sliced[name], whole[name], rtol=1e-12)


def test_hessians_batch_within_the_budget(monkeypatch):
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    mlp (float[N, 64] x) => (float[N, 8] y) {
      h = MatMul(x, w1)
      r = Relu(h)
      y = MatMul(r, w2)
    }
    """
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.extend([onnx.numpy_helper.from_array(RNG.standard_normal((64, 32)).astype(np.float32), "w1"),
                                    onnx.numpy_helper.from_array(RNG.standard_normal((32, 8)).astype(np.float32), "w2")])
    model = ir.serde.deserialize_model(proto)
    inputs = {"x": RNG.standard_normal((40, 64)).astype(np.float32)}
    whole = input_hessians(model, find_weights(model), inputs, 256)
    monkeypatch.setattr(memory, "ACTIVATION_BUDGET", activation_sizes(model, inputs).total * 8)
    streamed = input_hessians(model, find_weights(model), inputs, 256)
    for name in ("w1", "w2"):
        np.testing.assert_allclose(streamed[name], whole[name], rtol=1e-5, atol=1e-6 * np.abs(whole[name]).max())


RSS_BOUND = 1200 << 20


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="peak RSS comes from the resource module (POSIX)")
def test_compress_of_a_cnn_with_large_activations_stays_bounded(tmp_path: Path):
    """256 generated 64x64 images (16 KB each) through 32-channel full-resolution convolutions:
    ~4 MB of activations per sample, ~1 GB per pass over all samples. Holding every sample's
    activations (squared in float64) took several GB; batches within the budget stay under
    RSS_BOUND. Measured in a child process (the CLI, as users run it)."""
    path = tmp_path / "cnn.onnx"
    onnx.save(_cnn(64), path)
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "onnxcomp.cli", "compress", str(path), "--target-size",
                           str(path.stat().st_size // 4), "-o", str(tmp_path / "out.onnx"), "--report", str(report)],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr
    peak = json.loads(report.read_text())["peak_rss_bytes"]
    assert "peak memory" in done.stdout
    assert 0 < peak < RSS_BOUND, f"peak RSS {peak / 2**20:.0f} MiB"


def test_feeds_of_different_shapes_are_sized_by_the_largest():
    from onnxcomp.samples.data import Feeds

    model = ir.serde.deserialize_model(_cnn())
    small = Feeds({"x": np.zeros((3, 1, 8, 8), np.float32)})
    large = Feeds({"x": np.zeros((2, 1, 32, 16), np.float32)})
    sizes = activation_sizes(model, Feeds(small, groups=[small, large]))
    assert sizes.per_sample["a1"] == CHANNELS * 32 * 16 * 4


def test_long_lived_sessions_run_without_the_arena():
    """The reference session lives through a compression; without ONNX Runtime's CPU arena it does
    not hold its peak (one forward pass at the largest feed) all that time."""
    from onnxcomp.runtime.inference import session

    proto = _cnn()
    assert session(proto).get_session_options().enable_cpu_mem_arena
    assert not session(proto, arena=False).get_session_options().enable_cpu_mem_arena


def test_pricing_a_weight_holds_one_sorted_copy_at_a_time():
    """Pricing sorts the weight with prefix sums (~60 bytes an entry) for the plain codebooks and
    again for each axis of the scaled ones; a copy that is no longer read is let go before the
    next is built. A 54 MB OCR model's 8.4M-entry classifier peaked at 2.44 GB RSS holding them
    all, 1.79 GB without (same candidates)."""
    import tracemalloc

    from onnxcomp.planning.pricing import layer_options

    values = RNG.standard_normal((192, 192, 3, 3)).astype(np.float32)  # two scaled axes
    importance = (RNG.random((1, 192, 1, 1)) + 0.1).astype(np.float32)
    tracemalloc.start()
    try:
        options = layer_options("w", values, "weight", importance)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert any(c.kind == "scaled" for c in options.candidates)
    assert peak / values.size < 180, peak / values.size  # holding every sorted copy: ~220 bytes an entry


def test_only_the_largest_weights_are_probed_when_one_sample_exceeds_the_compute_budget(monkeypatch):
    from types import SimpleNamespace

    layers = [SimpleNamespace(name=f"w{i}", dense=SimpleNamespace(bytes=size)) for i, size in enumerate([10, 500, 40, 900, 70] * 8)]
    assert analyze.largest_within_budget(layers, 10**6) == layers  # 41 runs of 1 M: within 10^12
    monkeypatch.setattr(analyze, "MIN_PROBED_LAYERS", 2)
    chosen = analyze.largest_within_budget(layers, analyze.SENSITIVITY_WORK_MACS // 21)  # 20 probes fit
    assert len(chosen) == 20 and {layer.dense.bytes for layer in chosen} == {500, 900, 70}
    assert [layer.name for layer in chosen] == [layer.name for layer in layers if layer in chosen]  # in model order
    assert len(analyze.largest_within_budget(layers, analyze.SENSITIVITY_WORK_MACS)) == 2  # at least the minimum
