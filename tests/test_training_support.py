"""Where no training build exists: one-line reasons, the `train` extra's markers, the CLI's fallback."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from packaging.requirements import Requirement

from onnxcomp.runtime import training_support
from onnxcomp.runtime.training_support import Interpreter, training_build_has_wheels, unavailable_reason
from tests.conftest import MLP_SHAPES, MLP_TEXT, REPO, build_model, to_proto
from tests.test_cli import assert_clean_failure, cli  # noqa: F401 (fixture)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

PYTHONS = [(3, minor) for minor in range(10, 16)]  # requires-python >= 3.10
PLATFORMS = [("linux", "x86_64"), ("linux", "aarch64"), ("darwin", "arm64"), ("darwin", "x86_64"),
             ("win32", "AMD64"), ("win32", "ARM64"), ("freebsd14", "amd64")]


def _no_training(monkeypatch, missing: str = "onnxruntime.training") -> None:
    def fail() -> None:
        raise ModuleNotFoundError(f"No module named {missing!r}", name=missing)

    monkeypatch.setattr(training_support, "import_training_api", fail)


def _marker_environment(python: tuple[int, int], sys_platform: str, machine: str, extra: str) -> dict[str, str]:
    system = {"linux": "Linux", "darwin": "Darwin", "win32": "Windows"}.get(sys_platform, "FreeBSD")
    return {"python_version": "%d.%d" % python, "python_full_version": "%d.%d.0" % python, "sys_platform": sys_platform,
            "platform_machine": machine, "platform_system": system, "os_name": "nt" if sys_platform == "win32" else "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": extra}


def _selected(requirements: list[str], environment: dict[str, str]) -> set[str]:
    parsed = [Requirement(text) for text in requirements]
    return {r.name for r in parsed if r.marker is None or r.marker.evaluate(environment)}


@pytest.mark.parametrize(("python", "where"), [((3, 13), "Python 3.13 on Linux x86-64"),
                                               ((3, 14), "Python 3.14 on Linux x86-64")])
def test_newer_python_names_itself_and_what_works_instead(monkeypatch, python, where):
    _no_training(monkeypatch)
    reason = unavailable_reason(Interpreter(python, "linux", "x86_64"))
    assert "\n" not in reason
    assert where in reason and "no wheels" in reason and "CPython 3.10-3.12" in reason
    assert "--epochs 0" in reason and "without --data" in reason


def test_platform_without_wheels_is_named(monkeypatch):
    _no_training(monkeypatch)
    reason = unavailable_reason(Interpreter((3, 12), "linux", "aarch64"))
    assert "Python 3.12 on Linux aarch64" in reason and "no wheels" in reason


def test_missing_torch_says_install_the_extra(monkeypatch):
    _no_training(monkeypatch, missing="torch")
    reason = unavailable_reason(Interpreter((3, 12), "darwin", "arm64"))
    assert reason.startswith("fine-tuning needs torch") and "pip install 'onnxcomp[train]'" in reason
    assert "--epochs 0" in reason and "\n" not in reason


def test_plain_onnxruntime_where_training_could_install(monkeypatch):
    pytest.importorskip("onnxruntime")
    _no_training(monkeypatch)
    reason = unavailable_reason(Interpreter((3, 11), "linux", "x86_64"))
    assert "plain onnxruntime" in reason and "pip install 'onnxcomp[train]'" in reason and "\n" not in reason


def test_reason_agrees_with_what_imports_here():
    try:
        import onnxruntime.training.api  # noqa: F401
    except ImportError:
        assert unavailable_reason() is not None
    else:
        assert unavailable_reason() is None


def test_train_extra_installs_exactly_one_runtime_where_wheels_exist():
    """pyproject's markers: the training build exactly where `training_build_has_wheels` says
    (the same rule the reasons above use), the plain onnxruntime everywhere else, never both."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    train = project["optional-dependencies"]["train"]
    checked = 0
    for python, (sys_platform, machine) in itertools.product(PYTHONS, PLATFORMS):
        selected = _selected(train, _marker_environment(python, sys_platform, machine, "train"))
        runtimes = selected & {"onnxruntime", "onnxruntime-training-cpu"}
        assert len(runtimes) == 1, (python, sys_platform, machine, selected)
        expect_training = training_build_has_wheels(Interpreter(python, sys_platform, machine))
        assert ("onnxruntime-training-cpu" in runtimes) == expect_training, (python, sys_platform, machine)
        assert ("torch" in selected) == expect_training, (python, sys_platform, machine)
        checked += expect_training
    assert checked == 3 * 3  # 3.10-3.12 on three platforms


@pytest.fixture
def mlp_with_data(tmp_path):
    rng = np.random.default_rng(7)
    arrays = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in MLP_SHAPES.items()}
    model_path = tmp_path / "mlp.onnx"
    onnx.save(to_proto(build_model(MLP_TEXT, arrays)), model_path)
    data_path = tmp_path / "data.npz"
    np.savez(data_path, x=rng.standard_normal((256, 16)).astype(np.float32), labels=rng.integers(0, 8, 256))
    return model_path, data_path


@pytest.mark.parametrize("request_", [["--epochs", "2"], ["--method", "prune"]])
def test_explicit_fine_tuning_stops_before_any_work(monkeypatch, cli, mlp_with_data, tmp_path, request_):  # noqa: F811
    _no_training(monkeypatch)
    monkeypatch.setattr(Interpreter, "current", classmethod(lambda cls: Interpreter((3, 13), "linux", "x86_64")))
    model_path, data_path = mlp_with_data
    output = tmp_path / "out.onnx"
    result = cli("compress", model_path, "--target-size", "2KB", "-o", output, "--data", data_path, "-q", *request_)
    assert_clean_failure(result, "no wheels for Python 3.13", "--epochs 0", code=2)
    assert not output.exists()


def test_auto_falls_back_to_calibration_and_says_so(monkeypatch, cli, mlp_with_data, tmp_path):  # noqa: F811
    _no_training(monkeypatch)
    monkeypatch.setattr(Interpreter, "current", classmethod(lambda cls: Interpreter((3, 13), "linux", "x86_64")))
    model_path, data_path = mlp_with_data
    output = tmp_path / "out.onnx"
    result = cli("compress", model_path, "--target-size", "2KB", "-o", output, "--data", data_path)
    assert result.returncode == 0, result.stderr
    notes = [line for line in result.stderr.splitlines() if "calibrates without fine-tuning" in line]
    assert len(notes) == 1 and "no wheels for Python 3.13" in notes[0], result.stderr
    assert output.exists()
