"""onnxcomp.samples.crop and the sensitivity probes' samples (onnxcomp.stages.analyze.sensitivity_samples):
real images of any size give probes of a bounded size."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.model.memory import ActivationSizes
from onnxcomp.samples.crop import cropped, spatial_axes, spread
from onnxcomp.samples.data import Samples, samples_from_feeds
from onnxcomp.samples.feeds import feed_groups, sample_count
from onnxcomp.stages import analyze


def conv_model(height="H", width="W", stride: int = 2) -> ir.Model:
    """x [N, 3, H, W] -> Conv 3x3 (stride) -> Relu -> Conv 3x3 (stride): a stride product of stride**2."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
               numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], strides=[stride, stride], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], strides=[stride, stride], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, height, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return ir.serde.deserialize_model(model)


def page_feeds(model: ir.Model, shapes) -> Samples:
    rng = np.random.default_rng(1)
    feeds = [{"x": rng.standard_normal((1, 3, h, w)).astype(np.float32)} for h, w in shapes]
    return samples_from_feeds(feeds, model, "test feeds")


def shapes_of(samples: Samples) -> list[tuple[int, ...]]:
    return [part["x"].shape for part in feed_groups(samples.inputs)]


def test_spread_keeps_samples_from_every_group():
    model = conv_model()
    samples = page_feeds(model, [(64, 64)] * 6 + [(32, 96)] * 6)
    picked = spread(samples, 4)
    assert sample_count(picked.inputs) == 4
    assert sorted({shape[2:] for shape in shapes_of(picked)}) == [(32, 96), (64, 64)]
    assert spread(samples, 20) is samples


def test_spread_takes_the_first_and_the_last_sample():
    model = conv_model()
    feeds = [{"x": np.full((1, 3, 8, 8), index, np.float32)} for index in range(10)]
    picked = spread(samples_from_feeds(feeds, model, "test feeds"), 3)
    assert [float(v) for v in picked.inputs["x"][:, 0, 0, 0]] == [0.0, 4.0, 9.0]  # linspace(0, 9, 3) rounded


def test_crops_are_centred_multiples_of_the_stride_product():
    model = conv_model()
    assert spatial_axes(model) == {"x": [2, 3]}
    samples = page_feeds(model, [(96, 400)])
    bytes_per_sample = 3 * 96 * 400 * 4
    smaller = cropped(samples, model, limit=bytes_per_sample / 4, per_input_byte=1.0)  # a quarter of the area
    (shape,) = shapes_of(smaller)
    assert shape[:2] == (1, 3)
    assert shape[2] % 4 == 0 and shape[3] % 4 == 0  # two stride-2 convolutions
    assert 0.2 <= shape[2] * shape[3] / (96 * 400) <= 0.25
    top, left = (96 - shape[2]) // 2, (400 - shape[3]) // 2
    np.testing.assert_array_equal(smaller.inputs["x"], samples.inputs["x"][:, :, top:top + shape[2], left:left + shape[3]])


def test_fixed_dims_are_not_cropped():
    model = conv_model(height=64, width=64)
    assert spatial_axes(model) == {"x": []}
    assert cropped(page_feeds(model, [(64, 64)]), model, limit=1.0, per_input_byte=1.0) is None


def test_small_samples_are_probed_whole():
    model = conv_model()
    samples = page_feeds(model, [(32, 32)] * 8)
    probed, note = analyze.sensitivity_samples(samples, ActivationSizes({"x": 100_000}), 10, model)
    assert probed.count == 8 and note == ""


def test_large_samples_are_spread_and_cropped(monkeypatch):
    monkeypatch.setattr(analyze, "SENSITIVITY_RUN_BYTES", 4 << 20)
    monkeypatch.setattr(analyze, "SENSITIVITY_WORK_BYTES", 4 << 20)
    model = conv_model()
    samples = page_feeds(model, [(256, 512)] * 3 + [(512, 256)] * 9)
    sizes = ActivationSizes({"x": 3 * 256 * 512 * 4, "a": 4 * 128 * 256 * 4, "r": 4 * 128 * 256 * 4})
    probed, note = analyze.sensitivity_samples(samples, sizes, 10, model)
    assert probed.count == analyze.MIN_GIVEN_SENSITIVITY_SAMPLES
    assert "centre crops" in note
    for shape in shapes_of(probed):
        assert shape[2] * shape[3] < 256 * 512 / 2


def test_crops_that_do_not_run_fall_back_to_whole_samples(monkeypatch):
    monkeypatch.setattr(analyze, "SENSITIVITY_RUN_BYTES", 1 << 20)
    monkeypatch.setattr(analyze, "SENSITIVITY_WORK_BYTES", 1 << 20)
    monkeypatch.setattr(analyze, "runs_isolated", lambda model, samples: False)
    model = conv_model()
    samples = page_feeds(model, [(256, 512)] * 8)
    probed, note = analyze.sensitivity_samples(samples, ActivationSizes({"x": 8 << 20}), 10, model)
    assert note == "" and shapes_of(probed) == [(4, 3, 256, 512)]


@pytest.mark.parametrize("size, factor, expected", [(736, 0.5, 352), (1000, 0.5, 496), (1000, 0.05, 128), (100, 0.5, 100),
                                                    (48, 0.1, 48)])
def test_shorter_sides_keep_the_stride(size, factor, expected):
    from onnxcomp.samples.crop import shorter_side
    assert shorter_side(size, factor, 32) == expected  # multiples of gcd(size, 32), at least 4 strides


def test_crops_are_checked_in_a_child():
    model = conv_model()
    assert analyze.runs_isolated(model, page_feeds(model, [(64, 96), (32, 32)]))
    # a model that takes one size only: x + a constant [1, 3, 64, 64]
    graph = helper.make_graph([helper.make_node("Add", ["x", "c"], ["y"])], "fixed",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.ones((1, 3, 64, 64), np.float32), "c")])
    fixed = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    fixed.ir_version = 8
    fixed = ir.serde.deserialize_model(fixed)
    assert analyze.runs_isolated(fixed, page_feeds(fixed, [(64, 64)]))
    assert not analyze.runs_isolated(fixed, page_feeds(fixed, [(32, 32)]))
