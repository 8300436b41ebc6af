"""The Python API's data: Samples or an iterable of batches, checked like an .npz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxcomp.samples.data import as_samples, load_samples
from onnxcomp.errors import OnnxcompError
from onnxcomp.modelfile import load_model
from onnxcomp.pipeline import CompressOptions, compress_model

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "lenet300.onnx"
TRAIN = ROOT / "models" / "data" / "mnist_train_2k.npz"


@pytest.fixture(scope="module")
def model():
    return load_model(MODEL)


def _batches(count: int, size: int, labels: bool = True):
    data = np.load(TRAIN)
    for start in range(0, count, size):
        batch = {"input": data["input"][start:start + size]}
        if labels:
            batch["labels"] = data["labels"][start:start + size]
        yield batch


def test_batches_join_into_the_same_samples_as_the_npz(model):
    whole = load_samples(TRAIN, model)
    joined = as_samples(_batches(whole.count, 300), model)
    assert joined.count == whole.count
    np.testing.assert_array_equal(joined.inputs["input"], whole.inputs["input"])
    np.testing.assert_array_equal(joined.labels, whole.labels)
    assert as_samples(whole, model) is whole and as_samples(None, model) is None


@pytest.mark.parametrize("data, fragment", [
    ([], "empty"),
    ({"input": np.zeros((4, 784), np.float32)}, "not one dict"),
    ([np.zeros((4, 784), np.float32)], "batch 0 is a ndarray"),
    ([{"input": np.zeros((4, 784), np.float32)}, {"x": np.zeros((4, 784), np.float32)}], "batch 1 has arrays"),
    ([{"input": np.zeros((4, 1, 28, 28), np.float32)}, {"input": np.zeros((4, 10), np.float32)}], "batch 1: .* expects"),
    ([{"input": np.zeros((4, 10), np.float32)}], "expects"),
    ([{"input": np.full((4, 1, 28, 28), np.nan, np.float32)}], "NaN"),
    ([{"input": np.zeros((4, 1, 28, 28), np.float32), "labels": np.zeros(3, np.int64)}], "labels"),
])
def test_bad_batches_are_clear_errors(model, data, fragment):
    with pytest.raises(OnnxcompError, match=fragment):
        as_samples(data, model, "samples")


def test_compress_model_takes_a_generator_of_batches(model):
    from_npz = compress_model(load_model(MODEL), CompressOptions(target_bytes=100_000), samples=load_samples(TRAIN, model))
    from_batches = compress_model(load_model(MODEL), CompressOptions(target_bytes=100_000), samples=_batches(2000, 256))
    assert len(from_batches.data) <= 100_000
    assert from_batches.data == from_npz.data  # the same samples, the same calibration
