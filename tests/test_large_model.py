"""Large models (external data over modelfile.IN_MEMORY_EXTERNAL_BYTES) take the streamed path: one
weight at a time, data-free, each decoded weight checked in ONNX Runtime. Here the threshold is
lowered so a small generated model (bench.large_model's builder) exercises that path in CI; the
3 GB measurement is `python -m bench.large_model` (bench/results/large_model.md)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from bench.large_model import generate
from onnxcomp import modelfile
from onnxcomp.pipeline import CompressOptions, compress_file
from tests.conftest import run

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


@pytest.fixture
def streamed_model(tmp_path, monkeypatch):
    monkeypatch.setattr(modelfile, "IN_MEMORY_EXTERNAL_BYTES", 1 << 16)
    folder = tmp_path / "in"
    path = generate(folder, 0.00016, hidden=64, ffn=128)  # 2 blocks + head: ~0.4 MB of external data
    return path


def test_streamed_compression_fits_verifies_and_runs(streamed_model, tmp_path):
    before = {p.name: p.read_bytes() for p in streamed_model.parent.iterdir()}
    assert modelfile.is_streamed(modelfile.load_model(streamed_model))
    input_bytes = modelfile.file_bytes(streamed_model)
    output = tmp_path / "out.onnx"

    report = compress_file(streamed_model, output, CompressOptions(target_bytes=input_bytes // 6))

    assert report.streamed and report.output_bytes <= input_bytes // 6
    assert output.stat().st_size == report.output_bytes
    assert {p.name: p.read_bytes() for p in streamed_model.parent.iterdir()} == before  # input untouched
    saved = onnx.load(str(output), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in saved.graph.initializer)
    fidelity = report.fidelity
    assert fidelity["mode"] == "weights" and fidelity["weights"] >= 4
    assert 0 < fidelity["relative_error"] < 0.3
    x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
    want, got = run(str(streamed_model), {"x": x})[0], run(str(output), {"x": x})[0]
    cosine = float(np.sum(want * got) / (np.linalg.norm(want) * np.linalg.norm(got)))
    assert cosine > 0.95


def test_streamed_model_refuses_data_options_with_a_reason(streamed_model, tmp_path, capsys):
    from onnxcomp.cli import main

    np.savez(tmp_path / "d.npz", x=np.zeros((4, 64), np.float32))
    code = main(["compress", str(streamed_model), "--target-size", "50KB", "-o", str(tmp_path / "o.onnx"),
                 "--data", str(tmp_path / "d.npz"), "--epochs", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "one weight at a time" in err and "Traceback" not in err
    assert not (tmp_path / "o.onnx").exists()
