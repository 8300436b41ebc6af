"""bench.load_memory: loads each file in a fresh process and writes the side-by-side table."""

from __future__ import annotations

import json

import pytest

from bench import load_memory

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


def test_load_memory_measures_the_original_and_each_compressed_file(tmp_path):
    assert load_memory.main(["--models", "lenet300", "--fractions", "0.25", "--loads", "1", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "load_memory.json").read_text())
    (row,) = results["rows"]
    compressed = row["compressed"]["0.25"]
    assert "error" not in compressed, compressed
    assert compressed["bytes"] <= row["bytes"] / 4
    baseline = results["baseline"]["peak_rss_bytes"]
    # Each load is its own process: the peak is that process's own, at least the import's.
    for result in (row["original"], compressed):
        assert result["peak_rss_bytes"] >= baseline * 0.9 and result["session_s"] > 0
    table = (tmp_path / "load_memory.md").read_text()
    assert "| lenet300 | original |" in table and "| lenet300 | 1/4 |" in table


def test_unknown_model_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_memory.main(["--models", "no-such-model", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "not on this machine: no-such-model" in capsys.readouterr().err
