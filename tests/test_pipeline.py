"""onnxcomp.pipeline: compress_model leaves the caller's model alone and returns a model that fits,
verified in ONNX Runtime, with its report; data may come as an iterable of batches, held-out
data goes to the report's accuracy; compress_file checks the output path first and writes the
file whole. Full runs on the models in models/: tests/test_cli.py, tests/test_models.py."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxcomp import modelfile
from onnxcomp.errors import OnnxcompError
from onnxcomp.pipeline import CompressOptions, CompressResult, compress_file, compress_model
from tests.conftest import run

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


def test_compress_model_fits_verifies_and_leaves_the_input_alone(mlp_model, rng):
    before = {name: value.const_value.numpy().copy() for name, value in mlp_model.graph.initializers.items()}
    lines = []
    result = compress_model(mlp_model, CompressOptions(1500, sensitivity=False), progress=lines.append)
    assert isinstance(result, CompressResult) and len(result.data) <= 1500
    after = {name: value.const_value.numpy() for name, value in mlp_model.graph.initializers.items()}
    assert after.keys() == before.keys() and all(np.array_equal(after[n], before[n]) for n in before)
    report = result.report
    assert report.verified and report.input_bytes == len(modelfile.serialized_bytes(mlp_model))
    assert report.fidelity["generated_inputs"] and report.fidelity["samples"] > 0
    assert {"canonicalize", "price", "allocate_and_encode", "verify", "total"} <= set(report.seconds)
    assert "sensitivity" not in report.seconds and report.peak_rss_bytes > 0
    assert lines[0] == "canonicalize" and "verify in ONNX Runtime" in lines
    feeds = {"x": rng.standard_normal((3, 16)).astype(np.float32)}
    assert run(result.data, feeds)[0].shape == (3, 8)
    assert [(v.name, v.dtype) for v in result.model.graph.inputs] == [("x", mlp_model.graph.inputs[0].dtype)]


def test_compress_model_takes_batches_and_reports_held_out_accuracy(mlp_model, rng):
    batches = [{"x": rng.standard_normal((10, 16)).astype(np.float32), "labels": rng.integers(0, 8, 10)} for _ in range(3)]
    evaluation = [{"x": rng.standard_normal((7, 16)).astype(np.float32), "labels": rng.integers(0, 8, 7)}]
    options = CompressOptions(1500, sensitivity=False, min_fidelity=0)  # the quality floor off: 7 samples
    result = compress_model(mlp_model, options, samples=iter(batches),
                            eval_samples=evaluation, input_bytes=9999)
    report = result.report
    assert report.input_bytes == 9999 and report.ratio == 9999 / len(result.data)
    assert not report.fidelity["generated_inputs"] and report.fidelity["samples"] == 7
    assert report.accuracy["samples"] == 7 and report.accuracy["held_out"] is True
    reference = run(mlp_model, {"x": evaluation[0]["x"]})[0]
    assert report.accuracy["original"] == float(np.mean(reference.argmax(1) == evaluation[0]["labels"]))
    assert report.quality_floor == {"checked": False, "reason": report.quality_floor["reason"]}


def test_compress_file_writes_the_output_whole(mlp_model, tmp_path):
    source, output = tmp_path / "mlp.onnx", tmp_path / "small.onnx"
    modelfile.save_model(mlp_model, source)
    report = compress_file(source, output, CompressOptions(1500, sensitivity=False))
    assert report.output_bytes == output.stat().st_size <= 1500
    assert report.input == str(source) and report.output == str(output) and report.input_bytes == source.stat().st_size
    assert report.opset is None  # the decode ops need no newer opset than 17
    onnx.checker.check_model(str(output), full_check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx", "small.onnx"]  # no temporary left
    with pytest.raises(OnnxcompError, match=f"^{output} exists; pass --force to overwrite it$"):
        compress_file(source, output, CompressOptions(1500, sensitivity=False))
    assert compress_file(source, output, CompressOptions(1400, sensitivity=False), overwrite=True).output_bytes <= 1400


def test_compress_file_records_an_opset_raised_for_the_decode_ops(tmp_path, rng):
    proto = onnx.parser.parse_model("""
    <ir_version: 7, opset_import: ["" : 10]>
    g (float[N, 16] x) => (float[N, 8] y) { y = MatMul(x, w) }
    """)
    proto.graph.initializer.append(ir.serde.serialize_tensor(ir.tensor(rng.standard_normal((16, 8)).astype(np.float32), name="w")))
    source = tmp_path / "old.onnx"
    onnx.save(proto, str(source))
    report = compress_file(source, tmp_path / "out.onnx", CompressOptions(600, sensitivity=False))
    assert report.opset["input"] == 10 and report.opset["output"] >= 11


def test_compress_file_refuses_to_write_over_its_input_before_any_work(mlp_model, tmp_path):
    source = tmp_path / "mlp.onnx"
    modelfile.save_model(mlp_model, source)
    data = source.read_bytes()
    with pytest.raises(OnnxcompError, match=f"^the output model {source} is the input model; onnxcomp never writes over"):
        compress_file(source, source, CompressOptions(1500), overwrite=True)
    assert source.read_bytes() == data
