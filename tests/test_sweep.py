"""`onnxcomp sweep`: several targets in parallel processes, a table and a size-accuracy curve."""

from __future__ import annotations

import json

import pytest

from onnxcomp.errors import OnnxcompError
from onnxcomp.sweep import parse_targets
from tests.compat.collect import save_file
from tests.conftest import LENET300, TEST_DATA

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

TARGETS = "1MB,500KB,200KB,100KB,50KB,5KB"  # 5KB is below what LeNet-300-100 can reach


def test_parse_targets_sorts_and_dedupes():
    assert parse_targets("200KB, 1MB,1000KB,500") == [("1MB", 1_000_000), ("200KB", 200_000), ("500", 500)]
    with pytest.raises(OnnxcompError):
        parse_targets(" , ")
    with pytest.raises(OnnxcompError):
        parse_targets("1MB,lots")


def test_sweep_lenet300_six_targets_two_processes(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the curve needs matplotlib")
    from onnxcomp.cli import main

    out = tmp_path / "sweep"
    code = main(["sweep", str(LENET300), "--targets", TARGETS, "--data", str(TEST_DATA), "--no-sensitivity",
                 "--jobs", "2", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    summary = json.loads((out / "sweep.json").read_text())
    results = {result["target"]: result for result in summary["results"]}
    assert list(results) == ["1MB", "500KB", "200KB", "100KB", "50KB", "5KB"]
    assert summary["jobs"] == 2
    # the work was spread over more than one worker process
    assert len({result["pid"] for result in summary["results"]}) == 2 == len(summary["pids"])

    assert results["5KB"]["status"] == "unreachable"
    assert results["5KB"]["smallest_bytes"] > 5_000
    assert not (out / "lenet300.5KB.onnx").exists()
    for name, result in results.items():
        if name == "5KB":
            continue
        assert result["status"] == "ok", result.get("message")
        written = out / f"lenet300.{name}.onnx"
        assert written.stat().st_size == result["report"]["output_bytes"] <= result["target_bytes"]
        save_file(written)  # worker processes' models join the compatibility run under `make test`
        assert result["report"]["accuracy"]["compressed"] > 0.9
    assert summary["original"]["metric"] == "accuracy"

    table = (out / "sweep.md").read_text()
    assert "| original | 1,067,220 B |" in table
    assert table.count("| ok |") == 5 and "unreachable: smallest" in table
    assert (out / "sweep.png").read_bytes().startswith(b"\x89PNG")
    assert "| 1MB |" in captured.out

    # existing outputs are not overwritten without --force
    again = main(["sweep", str(LENET300), "--targets", "200KB", "--no-sensitivity", "-o", str(out), "-q"])
    assert again == 2
    assert "--force" in capsys.readouterr().err


def test_sweep_reads_a_folder_of_feeds(tmp_path, capsys):
    """`--data` may be a folder of .npz feeds for sweep as for compress; a missing path is one line."""
    import numpy as np

    from onnxcomp.cli import main

    with np.load(TEST_DATA) as data:
        images = data["input"][:64]
    feeds = tmp_path / "feeds"
    feeds.mkdir()
    for index in range(4):
        np.savez(feeds / f"feed{index}.npz", input=images[index * 16:(index + 1) * 16])
    out = tmp_path / "sweep"
    code = main(["sweep", str(LENET300), "--targets", "200KB", "--data", str(feeds), "--no-sensitivity",
                 "--jobs", "1", "-o", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "sweep.json").read_text())["results"][0]
    assert result["status"] == "ok", result.get("message")
    assert result["report"]["fidelity"]["generated_inputs"] is False

    missing = main(["sweep", str(LENET300), "--targets", "200KB", "--data", str(tmp_path / "nope"), "-o",
                    str(tmp_path / "other"), "-q"])
    assert missing == 2
    assert "no such file" in capsys.readouterr().err
