"""Prune/retrain through the pipeline on the ONNX Runtime training backend (small data, fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxcomp.data import load_samples
from onnxcomp.errors import OnnxcompError
from onnxcomp.io import load_model
from onnxcomp.pipeline import CompressOptions, compress_file
from onnxcomp.runtime.inference import session

pytest.importorskip("onnxruntime.training", reason="the ONNX Runtime training build is not installed")

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "lenet300.onnx"
TRAIN = ROOT / "models" / "data" / "mnist_train_2k.npz"
TEST = ROOT / "models" / "data" / "mnist_test_1k.npz"


def _accuracy(path: Path) -> float:
    data = np.load(TEST)
    scores = session(str(path)).run(None, {"input": data["input"]})[0]
    return float(np.mean(scores.argmax(1) == data["labels"]))


def test_retraining_meets_budget_and_beats_calibration_only(tmp_path):
    target = 30_000
    samples = load_samples(TRAIN, load_model(MODEL))
    plain = compress_file(MODEL, tmp_path / "plain.onnx", CompressOptions(target_bytes=target), samples=samples)
    tuned = compress_file(MODEL, tmp_path / "tuned.onnx", CompressOptions(target_bytes=target, epochs=3), samples=samples)
    assert plain["output_bytes"] <= target and tuned["output_bytes"] <= target
    assert (tmp_path / "tuned.onnx").stat().st_size == tuned["output_bytes"]
    assert _accuracy(tmp_path / "tuned.onnx") > _accuracy(tmp_path / "plain.onnx")


def test_retraining_without_labels_distills_from_original(tmp_path):
    samples = load_samples(TRAIN, load_model(MODEL))
    samples.labels = None
    report = compress_file(MODEL, tmp_path / "out.onnx", CompressOptions(target_bytes=40_000, epochs=1), samples=samples)
    assert report["output_bytes"] <= 40_000
    assert _accuracy(tmp_path / "out.onnx") > 0.85


def test_epochs_without_data_is_a_clear_error(tmp_path):
    with pytest.raises(OnnxcompError, match="--data"):
        compress_file(MODEL, tmp_path / "out.onnx", CompressOptions(target_bytes=80_000, epochs=2))
    assert not (tmp_path / "out.onnx").exists()
