"""onnxcomp.stages.finetune, the decisions before any training: whether a run fine-tunes or
calibrates, the training and held-out split, when neuron elimination (VIB) runs, how the epochs
are shared out, and the noise allowed when comparing held-out scores. The training itself runs
in tests/test_retrain.py and tests/test_vib.py (ONNX Runtime training build)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from onnxcomp.errors import OnnxcompError
from onnxcomp.samples.data import Samples
from onnxcomp.stages.analyze import canonical_weights
from onnxcomp.stages.finetune import (HOLD_OUT_MAX, is_classifier, score_error, split_epochs, training_data,
                                      training_or_calibration, vib_epochs, wants_vib)
from onnxcomp.stages.options import CompressOptions
from onnxcomp.training.retrain import TrainingData
from tests.conftest import build_model

MISSING = "fine-tuning needs the ONNX Runtime training build: pip install onnxruntime-training"


@pytest.fixture
def no_training(monkeypatch):
    monkeypatch.setattr("onnxcomp.stages.finetune.training_unavailable_reason", lambda: MISSING)


def test_without_the_training_build_auto_calibrates_and_explicit_requests_are_refused(no_training):
    lines = []
    default = CompressOptions(1000, epochs=10, epochs_given=False)
    assert training_or_calibration(default, True, lines.append) == dataclasses.replace(default, epochs=0)
    assert lines == ["--method auto calibrates without fine-tuning here (as --epochs 0): fine-tuning needs the ONNX "
                     "Runtime training build"]
    for asked in (CompressOptions(1000, epochs=10), CompressOptions(1000, epochs=10, epochs_given=False, method="prune")):
        with pytest.raises(OnnxcompError, match=f"^{MISSING}$"):
            training_or_calibration(asked, True, None)
    nothing = CompressOptions(1000, epochs=10)
    assert training_or_calibration(nothing, False, None) is nothing  # no data: nothing to train on
    assert training_or_calibration(CompressOptions(1000), True, None) == CompressOptions(1000)


def test_with_the_training_build_options_pass_through(monkeypatch):
    monkeypatch.setattr("onnxcomp.stages.finetune.training_unavailable_reason", lambda: None)
    options = CompressOptions(1000, epochs=10)
    assert training_or_calibration(options, True, None) is options


def samples(rng, count, labels=True):
    return Samples({"x": rng.standard_normal((count, 16)).astype(np.float32)},
                   labels=rng.integers(0, 8, count) if labels else None)


def test_training_data_holds_out_a_tenth_of_large_data(mlp_model, rng):
    model, _ = canonical_weights(mlp_model)
    data = samples(rng, 1200)
    teacher = np.arange(1200 * 8, dtype=np.float32).reshape(1200, 8)
    training = training_data(CompressOptions(1000, epochs=2, seed=3), data, None, teacher, model, 64)
    assert (training.train.count, training.held_out.count) == (1080, 120)
    order = np.random.default_rng(3).permutation(1200)
    np.testing.assert_array_equal(training.train.inputs["x"], data.inputs["x"][order[120:]])
    np.testing.assert_array_equal(training.teacher, teacher[order[120:]])
    np.testing.assert_array_equal(training.held_out.labels, data.labels[order[:120]])
    assert training.held_out_teacher is None  # labelled: the labels are the targets
    assert HOLD_OUT_MAX == 5000


def test_training_data_keeps_small_data_whole_and_teaches_unlabelled_held_out_data(mlp_model, rng):
    model, _ = canonical_weights(mlp_model)
    data, evaluation = samples(rng, 200), samples(rng, 30, labels=False)
    training = training_data(CompressOptions(1000, epochs=2), data, evaluation, np.zeros((200, 8), np.float32), model, 16)
    assert training.train is data and training.held_out is evaluation
    assert training.held_out_teacher.shape == (30, 8)  # the original model's outputs
    assert training_data(CompressOptions(1000, epochs=2), data, None, None, model, 16).held_out is None
    assert training_data(CompressOptions(1000), data, None, None, model, 16) is None  # epochs 0


def test_training_data_refusals(mlp_model, rng):
    model, _ = canonical_weights(mlp_model)
    generated = dataclasses.replace(samples(rng, 100), generated=True)
    with pytest.raises(OnnxcompError, match="^--epochs needs training data: pass --data"):
        training_data(CompressOptions(1000, epochs=2), generated, None, None, model, 16)
    assert training_data(CompressOptions(1000, epochs=2, epochs_given=False), generated, None, None, model, 16) is None
    with pytest.raises(OnnxcompError, match="^--data has 40 training samples, fewer than one batch of 64; lower --batch-size"):
        training_data(CompressOptions(1000, epochs=2), samples(rng, 40), None, None, model, 16)
    half = build_model("""
    <ir_version: 10, opset_import: ["" : 17]>
    g (float[N, 16] x) => (float[N, 8] y) { w = Cast<to = 1>(w16)
    y = MatMul(x, w) }
    """, {"w16": rng.standard_normal((16, 8)).astype(np.float16)})
    half, _ = canonical_weights(half)
    with pytest.raises(OnnxcompError, match="^fine-tuning needs float32 weights and this model stores float16 ones"):
        training_data(CompressOptions(1000, epochs=2), samples(rng, 100), None, None, half, 16)
    assert training_data(CompressOptions(1000, epochs=2, epochs_given=False), samples(rng, 100), None, None, half, 16) is None


def test_is_classifier_looks_at_the_first_output(mlp_model, rng):
    assert is_classifier(mlp_model)
    image = build_model("""
    <ir_version: 10, opset_import: ["" : 17]>
    g (float[N, 3, 8, 8] x) => (float[N, 4, 6, 6] y) { y = Conv(x, w) }
    """, {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32)})
    assert not is_classifier(image)


def test_wants_vib_at_tight_targets_with_labels(mlp_model, rng):
    _, weights = canonical_weights(mlp_model)  # 768 prunable weights
    labelled = TrainingData(samples(rng, 10), None, None, None)
    unlabelled = TrainingData(samples(rng, 10, labels=False), None, None, None)
    lines = []
    assert wants_vib(CompressOptions(768 // 8), labelled, weights)  # 1 bit a weight
    assert not wants_vib(CompressOptions(768 // 4), labelled, weights, lines.append)  # exactly 2 bits
    assert lines == ["target allows 2.0 bits per weight (>= 2.0): auto prunes without neuron elimination"]
    assert not wants_vib(CompressOptions(10, method="prune"), labelled, weights)
    assert not wants_vib(CompressOptions(10), unlabelled, weights)
    assert wants_vib(CompressOptions(10**6, method="vib"), labelled, weights)
    with pytest.raises(OnnxcompError, match="^--method vib needs labels in --data"):
        wants_vib(CompressOptions(10, method="vib"), unlabelled, weights)


@pytest.mark.parametrize(("epochs", "vib", "split"), [
    (1, (1, 4, 1), (1, 1)), (2, (1, 4, 1), (1, 1)), (8, (3, 12, 1), (6, 2)), (10, (3, 12, 1), (8, 2)),
    (40, (15, 60, 5), (30, 10)),
])
def test_epochs_are_shared_out(epochs, vib, split):
    assert vib_epochs(epochs) == vib
    assert split_epochs(epochs) == split


def test_score_error_is_the_standard_error_of_a_difference():
    assert score_error(0.9, 1000) == pytest.approx(np.sqrt(2 * 0.9 * 0.1 / 1000))
    assert score_error(1.0, 500) == 0.0
    assert score_error(0.5, 0) == pytest.approx(np.sqrt(0.5))  # no samples: counted as one
