"""The cross-version check itself: the collector saves compressed models, run_compat.py flags
models that fail to load or whose outputs differ (here run with the installed onnxruntime)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from onnxcomp import pipeline
from onnxcomp.pipeline import CompressOptions
from tests.compat import collect, run_compat

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


@pytest.fixture
def saved(tmp_path, mlp_model):
    """One compressed MLP saved by the collector into tmp_path / 'compat'."""
    folder = tmp_path / "compat"
    before = pipeline.compress_model
    undo = collect.install(folder)
    try:
        # force: a tight target on a random MLP (below the quality floor); the collector is tested, not quality
        result = pipeline.compress_model(mlp_model, CompressOptions(target_bytes=1200, sensitivity=False, force=True))
    finally:
        undo()
    assert pipeline.compress_model is before
    return folder, result


def test_collector_saves_model_inputs_outputs(saved, mlp_model):
    folder, result = saved
    (entry,) = folder.glob("*.json")
    assert entry.with_suffix(".onnx").read_bytes() == result.data
    arrays = np.load(entry.with_suffix(".npz"))
    assert sorted(arrays.files) == ["in:x", "out:y"]
    assert arrays["in:x"].shape == (collect.SAMPLES, 16)
    assert json.loads(entry.read_text())["test"].endswith("test_collector_saves_model_inputs_outputs")


def test_run_compat_passes_and_flags_mismatch(saved, capsys):
    folder, _ = saved
    assert run_compat.main([str(folder)]) == 0
    assert "1/1 compressed models match" in capsys.readouterr().out

    (entry,) = folder.glob("*.npz")
    arrays = dict(np.load(entry))
    arrays["out:y"] = arrays["out:y"] + 1.0
    np.savez(entry, **arrays)
    assert run_compat.main([str(folder)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_run_compat_flags_unloadable_model_and_empty_folder(saved, tmp_path, capsys):
    folder, _ = saved
    (entry,) = folder.glob("*.onnx")
    entry.write_bytes(b"not a model")
    assert run_compat.main([str(folder)]) == 1
    assert "cannot load/run" in capsys.readouterr().out
    assert run_compat.main([str(tmp_path / "empty")]) == 1


def test_a_model_with_extension_operators_is_skipped_where_the_package_is_missing(saved, capsys, monkeypatch):
    """A compressed model with onnxruntime-extensions operators (a tokenizer inside it) cannot
    load where that package is not installed (`.venv-ort`): counted as skipped, not failed."""
    import sys

    folder, _ = saved
    (entry,) = folder.glob("*.onnx")
    entry.write_bytes(entry.read_bytes() + b"ai.onnx.contrib")  # as a contrib domain's name appears in such a model
    monkeypatch.setitem(sys.modules, "onnxruntime_extensions", None)  # importing it raises ImportError
    assert run_compat.main([str(folder)]) == 0
    out = capsys.readouterr().out
    assert "0/0 compressed models match" in out and "1 skipped" in out
