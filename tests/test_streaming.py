"""onnxcomp.streaming: compressing one weight at a time without running the model (models too
large to hold, and models no input runs): what it refuses, the per-weight check of each decoded
weight against the original, and the unverified path's weight-error guard. Large files
end to end: tests/test_large_model.py."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.errors import FidelityError, OnnxcompError
from onnxcomp.samples.data import NoRunnableInputError, Samples
from onnxcomp.stages.analyze import canonical_weights
from onnxcomp.stages.options import CompressOptions
from onnxcomp.streaming import MAX_UNVERIFIED_WEIGHT_ERROR, compress_streamed, compress_unverified, refuse_data, verify_weights
from tests.conftest import run, to_proto

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


def test_refuse_data_names_what_needs_the_whole_model():
    refuse_data(CompressOptions(1000), None, None)
    refuse_data(CompressOptions(1000, epochs=5, epochs_given=False), None, None)  # the CLI default, not asked for
    for args in ((CompressOptions(1000), Samples({"x": np.zeros((1, 2))}), None),
                 (CompressOptions(1000), None, Samples({"x": np.zeros((1, 2))})),
                 (CompressOptions(1000, epochs=5), None, None)):
        with pytest.raises(OnnxcompError, match=r"^models with more than 1 GiB of external-data weights are compressed "
                                                r"data-free, one weight at a time .*; --data, --eval-data and --epochs are not"):
            refuse_data(*args)
    for options in (CompressOptions(1000, min_fidelity=0.9), CompressOptions(1000, max_accuracy_drop=1.0)):
        with pytest.raises(OnnxcompError, match="; --min-fidelity and --max-accuracy-drop need model outputs"):
            refuse_data(options, None, None)


def test_compress_streamed_fits_and_checks_each_decoded_weight(mlp_model, rng):
    weights = {name: value.const_value.numpy().copy() for name, value in mlp_model.graph.initializers.items()}
    lines = []
    result = compress_streamed(mlp_model.clone(), CompressOptions(1500), 4000, lines.append)
    report = result.report
    assert len(result.data) == report.output_bytes <= 1500 and report.input_bytes == 4000
    assert report.streamed and not report.verified and report.seconds["total"] >= 0
    assert lines[0] == "canonicalize (weights stay memory-mapped: compressing one weight at a time, data-free)"
    assert lines[-1] == "verify: decode each weight in ONNX Runtime and compare with the original (3 weights)"
    fidelity = report.fidelity
    assert fidelity["mode"] == "weights" and fidelity["weights"] == 2 and fidelity["cosine"] is None  # the bias is dense
    # the measured errors are those of the decoded weights the saved model computes
    feeds = {"x": rng.standard_normal((2, 16)).astype(np.float32)}
    rows = {row.name: row for row in report.layers}
    decoded = {}
    for node in result.model.graph:
        if node.op_type in ("Gemm", "MatMul"):
            decoded[node.inputs[1].name] = "w1" if node.op_type == "Gemm" else "w2"
    values = run(result.model, feeds, extra_outputs=list(decoded))[1:]
    squared = energy = 0.0
    for (name, original), got in zip(decoded.items(), values):
        want = weights[original]
        error = float(np.sqrt(np.sum((got - want) ** 2) / np.sum(want ** 2)))
        assert rows[original].measured_relative_error == pytest.approx(error, rel=1e-5)
        squared, energy = squared + np.sum((got - want) ** 2), energy + np.sum(want ** 2)
    assert fidelity["relative_error"] == pytest.approx(np.sqrt(squared / energy), rel=1e-5)
    assert fidelity["max_relative_error"] == pytest.approx(max(row.measured_relative_error for row in rows.values()
                                                               if row.measured_relative_error is not None))


def test_verify_weights_skips_dense_weights(mlp_model):
    model, _ = canonical_weights(mlp_model)
    identical = {"b1": model.graph.initializers["b1"]}  # stored dense: the original tensor itself
    assert verify_weights(model, to_proto(model), identical) == {}


def test_compress_streamed_below_the_smallest_plan_is_unreachable(mlp_model):
    with pytest.raises(OnnxcompError, match=r"^target 100 B \(100 B\) is below the smallest size") as caught:
        compress_streamed(mlp_model, CompressOptions(100))
    assert caught.value.exit_code == 3


def no_input_runs():
    return NoRunnableInputError("shapes do not fit", last_error="", why="no generated input ran in ONNX Runtime")


def test_compress_unverified_reports_why_and_judges_the_decoded_weights(mlp_model):
    result = compress_unverified(mlp_model.clone(), CompressOptions(1500), 4000, None, no_input_runs())
    report = result.report
    assert not report.streamed and not report.verified
    assert report.unverified_reason == "no generated input ran in ONNX Runtime (shapes do not fit)"
    assert report.fidelity["relative_error"] < MAX_UNVERIFIED_WEIGHT_ERROR == 0.3
    with pytest.raises(OnnxcompError, match=r"^--min-fidelity needs the model's outputs, but no generated input ran in "
                                            r"ONNX Runtime \(shapes do not fit\); give sample inputs with --data$"):
        compress_unverified(mlp_model.clone(), CompressOptions(1500, min_fidelity=0.9), 4000, None, no_input_runs())


def test_unverified_weights_that_are_mostly_noise_are_not_written_without_force(mlp_model):
    with pytest.raises(FidelityError, match=r"^the outputs could not be run, and the decoded weights' relative error at "
                                            r"1\.1 KB is 0\.[3-9]\d\d \(worst weight .*; nothing written$"):
        compress_unverified(mlp_model.clone(), CompressOptions(1100), 4000, None, no_input_runs())
    forced = compress_unverified(mlp_model.clone(), CompressOptions(1100, force=True), 4000, None, no_input_runs())
    assert forced.report.fidelity["relative_error"] > 0.3 and len(forced.data) <= 1100
