"""onnxcomp.stages.options: what a run asks for (CompressOptions, with the CLI's defaults) and what
it returns (CompressResult)."""

from __future__ import annotations

import dataclasses

import numpy as np

from onnxcomp.pipeline import compress_model
from onnxcomp.reporting.compression_report import CompressionReport
from onnxcomp.stages.options import CompressOptions, CompressResult


def test_defaults_compress_data_free_with_the_guards_on():
    options = CompressOptions(target_bytes=5000)
    assert dataclasses.asdict(options) == {
        "target_bytes": 5000, "keep_metadata": False, "sensitivity": True, "seed": 0, "min_fidelity": None,
        "max_accuracy_drop": None, "force": False, "epochs": 0, "batch_size": 64, "lr": 1e-3, "patience": None,
        "epochs_given": True, "method": "auto", "vib_gamma": 1.6e-4, "input_shapes": {}, "input_values": {},
        "equalize": False,
    }


def test_pinned_inputs_are_not_shared_between_runs():
    first, second = CompressOptions(1000), CompressOptions(1000)
    first.input_shapes["x"] = (1, 16)
    first.input_values["scale"] = np.float32(2.0)
    assert second.input_shapes == {} and second.input_values == {}
    smaller = dataclasses.replace(first, target_bytes=500)  # how the quality floor asks for smaller targets
    assert smaller.target_bytes == 500 and smaller.input_shapes == {"x": (1, 16)} and first.target_bytes == 1000


def test_result_holds_the_model_its_bytes_and_the_report(mlp_model):
    result = compress_model(mlp_model, CompressOptions(target_bytes=1500, sensitivity=False))
    assert isinstance(result, CompressResult)
    assert [field.name for field in dataclasses.fields(result)] == ["model", "data", "report"]
    assert isinstance(result.report, CompressionReport)
    assert len(result.data) == result.report.output_bytes <= 1500
    assert result.report.target_bytes == 1500
    assert [v.name for v in result.model.graph.inputs] == ["x"]
