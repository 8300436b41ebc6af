"""onnxcomp.stages.verify: the original model run on given or generated samples (whole batches for
a fixed batch, refusing outputs that are never finite), which samples verification runs on, the
compressed model's fidelity and the report built from it, and the accuracy guard."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from onnxcomp import modelfile
from onnxcomp.errors import FidelityError, OnnxcompError
from onnxcomp.reporting.compression_report import CompressionReport
from onnxcomp.runtime.inference import session
from onnxcomp.samples.data import NoRunnableInputError, Samples
from onnxcomp.stages.analyze import canonical_model, price
from onnxcomp.stages.build import fixed_bytes
from onnxcomp.stages.fit import Plan, fit_plan
from onnxcomp.stages.options import CompressOptions
from onnxcomp.stages.steps import Steps
from onnxcomp.stages.verify import (check_guards, control_fidelity, held_out, make_report, run_original, verify_outputs,
                                    whole_batches)
from onnxcomp.training.retrain import TrainingData
from tests.conftest import build_model, run

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

FIXED_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[4, 16] x) => (float[4, 8] y) {
  y = MatMul(x, w)
}
"""

NAN_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 16] x) => (float[N, 8] y) {
  h = MatMul(x, w)
  z = Mul(h, inf)
  y = Sub(z, z)
}
"""


def original(model):
    return session(modelfile.to_proto(model), arena=False)


def test_run_original_on_given_samples_matches_onnx_runtime(mlp_model, rng):
    samples = Samples({"x": rng.standard_normal((10, 16)).astype(np.float32)})
    lines = []
    reference = run_original(mlp_model, original(mlp_model), samples, CompressOptions(1000), lines.append)
    assert reference.samples is samples and reference.batch_size == 256
    np.testing.assert_allclose(reference.outputs[0], run(mlp_model, samples.inputs)[0], rtol=1e-6)
    assert lines == ["run the original model on 10 samples"]
    assert set(reference.sizes.per_sample) >= {"x", "y"}


def test_run_original_generates_samples_and_keeps_whole_fixed_batches(rng):
    model = build_model(FIXED_TEXT, {"w": rng.standard_normal((16, 8)).astype(np.float32)})
    lines = []
    reference = run_original(model, original(model), None, CompressOptions(1000), lines.append)
    assert reference.samples.generated and reference.batch_size == 4
    assert reference.samples.count % 4 == 0 and reference.outputs[0].shape == (reference.samples.count, 8)
    assert lines == [f"run the original model on {reference.samples.count} generated samples"]
    given = Samples({"x": rng.standard_normal((10, 16)).astype(np.float32)})
    cut = run_original(model, original(model), given, CompressOptions(1000), None)
    assert cut.samples.count == 8  # 10 given, whole batches of 4


def test_whole_batches_needs_at_least_one_batch(rng):
    few = Samples({"x": rng.standard_normal((3, 16)).astype(np.float32)})
    with pytest.raises(OnnxcompError, match="^the model runs exactly 4 samples at a time and only 3 were given; give at "
                                            "least that many with --data$"):
        whole_batches(few, 4)
    with pytest.raises(OnnxcompError, match="only 3 were generated; pin a smaller batch with --input-shape$"):
        whole_batches(dataclasses.replace(few, generated=True), 4)
    assert whole_batches(Samples({"x": np.zeros((9, 16), np.float32)}), 4).count == 8


def test_outputs_never_finite_on_generated_inputs_are_no_runnable_input(rng):
    model = build_model(NAN_TEXT, {"w": rng.standard_normal((16, 8)).astype(np.float32),
                                   "inf": np.array(np.inf, np.float32)})
    with pytest.raises(NoRunnableInputError) as caught:
        run_original(model, original(model), None, CompressOptions(1000), None)
    assert caught.value.why == "the original model's output 'y' is NaN or infinite on every generated input"
    given = Samples({"x": rng.standard_normal((5, 16)).astype(np.float32)})  # given samples: the user's outputs
    assert np.isnan(run_original(model, original(model), given, CompressOptions(1000), None).outputs[0]).all()


def test_held_out_prefers_evaluation_samples_then_the_training_split():
    samples, evaluation, split = (Samples({"x": np.zeros((n, 2), np.float32)}) for n in (10, 3, 4))
    training = TrainingData(samples, split, None, None)
    assert held_out(samples, evaluation, training) is evaluation
    assert held_out(samples, None, training) is split
    assert held_out(samples, None, TrainingData(samples, None, None, None)) is samples
    assert held_out(samples, None, None) is samples


def test_verify_outputs_and_make_report(mlp_model, rng):
    options = CompressOptions(1500)
    canonical = canonical_model(mlp_model.clone(), options, None)
    model = canonical.model
    samples = Samples({"x": rng.standard_normal((20, 16)).astype(np.float32)}, labels=rng.integers(0, 8, 20))
    reference = run_original(model, original(model), samples, options, None)
    layers = price(model, {}, {})
    plan = Plan(model, layers, {}, fixed_bytes(model, layers, False))
    result = fit_plan(plan, options, None)
    measured, expected, got = verify_outputs(model, original(model), reference, samples, result.data)
    assert expected is reference.outputs
    np.testing.assert_allclose(got[0], run(result.data, samples.inputs)[0], rtol=1e-6)
    assert measured["samples"] == 20 and measured["generated_inputs"] is False and "note" not in measured
    assert list(measured["outputs"]) == ["y"]
    assert 0.5 < measured["outputs"]["y"]["cosine"] < 1.0  # close, not equal: the weights were quantized

    report = make_report(result, layers, options, 4000, measured, Steps(), canonical.defaults, None, [], None,
                         samples, samples, (expected, got))
    assert isinstance(report, CompressionReport)
    assert (report.input_bytes, report.output_bytes, report.target_bytes) == (4000, len(result.data), 1500)
    assert report.ratio == 4000 / len(result.data) and report.verified and report.attempts == result.attempts
    assert [row.name for row in report.layers] == ["w1", "b1", "w2"]
    assert report.training is None and report.initializer_inputs is None and report.quantized_left is None
    labels = samples.labels
    assert report.accuracy == {"original": float(np.mean(expected[0].argmax(1) == labels)),
                               "compressed": float(np.mean(got[0].argmax(1) == labels)), "samples": 20, "held_out": False}


def test_accuracy_guard():
    report = CompressionReport(input_bytes=1, output_bytes=1, target_bytes=1, ratio=1.0, layers=[], fidelity={},
                               attempts=1, verified=True, metadata_bytes=0, seconds={})
    report.accuracy = {"original": 0.90, "compressed": 0.87}
    check_guards(report, CompressOptions(1, max_accuracy_drop=3.5))
    with pytest.raises(FidelityError, match=r"^accuracy drops by 3\.00 points, more than --max-accuracy-drop 2\.5; "
                                            r"nothing written \(use --allow-low-fidelity to write anyway\)$"):
        check_guards(report, CompressOptions(1, max_accuracy_drop=2.5))
    check_guards(report, CompressOptions(1, max_accuracy_drop=2.5, force=True))
    check_guards(report, CompressOptions(1))  # no guard asked for
    report.accuracy = None
    check_guards(report, CompressOptions(1, max_accuracy_drop=0.0))  # no labels: nothing to judge


def test_control_moves_outputs_by_about_a_tenth_of_a_percent(mlp_model, rng):
    samples = Samples({"x": rng.standard_normal((32, 16)).astype(np.float32)}, generated=True)
    reference = run_original(mlp_model, original(mlp_model), samples, CompressOptions(1000), None)
    control = control_fidelity(mlp_model, samples, reference.outputs, 32)
    assert control["generated_inputs"] is True
    assert 0.9999 < control["cosine"] < 1.0  # moved, but far less than any compression would
    assert 0 < control["max_abs_error"] < 0.01 * np.abs(reference.outputs[0]).max()
