"""`onnxcomp sweep --executor ray`: the same per-target function mapped over Ray tasks gives the
same files as the local process pool."""

from __future__ import annotations

import builtins
import json
from pathlib import Path

import pytest

from tests.compat.collect import save_file
from tests.conftest import LENET300

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

TARGETS = "500KB,200KB,100KB"


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'onnxcomp[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _sweep(out, *extra: str) -> dict:
    from onnxcomp.cli import main

    code = main(["sweep", str(LENET300), "--targets", TARGETS, "--no-sensitivity", "--jobs", "2", "-o", str(out), "-q",
                 *extra])
    assert code == 0
    return json.loads((out / "sweep.json").read_text())


def test_ray_sweep_equals_the_process_pool(tmp_path, local_ray):
    by_ray = _sweep(tmp_path / "ray", "--executor", "ray")
    by_pool = _sweep(tmp_path / "pool")
    assert by_ray["executor"] == "ray" and by_pool["executor"] == "process"
    assert [r["target"] for r in by_ray["results"]] == [r["target"] for r in by_pool["results"]] == ["500KB", "200KB", "100KB"]
    for on_ray, in_pool in zip(by_ray["results"], by_pool["results"]):
        assert on_ray["status"] == in_pool["status"] == "ok", (on_ray.get("message"), in_pool.get("message"))
        assert on_ray["report"]["output_bytes"] == in_pool["report"]["output_bytes"] <= on_ray["target_bytes"]
        written = tmp_path / "ray" / f"lenet300.{on_ray['target']}.onnx"
        assert written.read_bytes() == (tmp_path / "pool" / written.name).read_bytes()
        save_file(written)  # Ray workers' models join the compatibility run under `make test`
    # the tasks ran in Ray's worker processes (still alive, named "ray::..."), not in the pool's
    assert not set(by_ray["pids"]) & set(by_pool["pids"])
    if Path("/proc").is_dir():
        for pid in by_ray["pids"]:
            assert (Path("/proc") / str(pid) / "cmdline").read_bytes().startswith(b"ray::"), pid


def test_ray_address_needs_the_ray_executor(tmp_path, capsys):
    from onnxcomp.cli import main

    code = main(["sweep", str(LENET300), "--targets", "200KB", "-o", str(tmp_path / "s"), "--ray-address", "127.0.0.1:6379"])
    assert code == 2 and "--ray-address needs --executor ray" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_without_ray_the_executor_is_refused_before_work(tmp_path, capsys, monkeypatch):
    from onnxcomp.cli import main

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    code = main(["sweep", str(LENET300), "--targets", "200KB", "-o", str(tmp_path / "s"), "--executor", "ray"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'onnxcomp[ray]'" in err and "Traceback" not in err
    assert not (tmp_path / "s").exists()
