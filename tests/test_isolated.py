"""Crash-safe runs: work in a child process, native deaths turned into one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as helper
from onnx import numpy_helper
import pytest

from onnxcomp.errors import OnnxcompError, TargetUnreachableError
from onnxcomp.runtime.isolated import ChildCrashed, call_isolated, report_stage

onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


# The smallest int64 divided by -1 overflows: ONNX Runtime's CPU Div kernel dies of SIGFPE on it in
# 1.19 and in 1.32 (measured 2026-12-04). A zero divisor crashed 1.19 too, but 1.32 reports it as
# an error ("Integer division by zero"), so the tests use the overflow: a native crash in both.
INT64_MIN = np.iinfo(np.int64).min


def integer_divide_model() -> onnx.ModelProto:
    """z = a / b on int64: ONNX Runtime's CPU Div kernel dies of SIGFPE on INT64_MIN / -1."""
    graph = helper.make_graph(
        [helper.make_node("Div", ["a", "b"], ["z"], name="divide")], "divide",
        [helper.make_tensor_value_info(name, onnx.TensorProto.INT64, ["N", 4]) for name in ("a", "b")],
        [helper.make_tensor_value_info("z", onnx.TensorProto.INT64, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def divide_overflowing() -> list:
    from onnxcomp.runtime.inference import session

    report_stage("dividing INT64_MIN by -1")
    sess = session(integer_divide_model())
    return sess.run(None, {"a": np.full((2, 4), INT64_MIN, np.int64), "b": np.full((2, 4), -1, np.int64)})


def add(a: int, b: int, *, scale: int = 1) -> int:
    return (a + b) * scale


def unreachable() -> None:
    raise TargetUnreachableError("the target is below the smallest reachable size, 5 B", smallest_bytes=5)


def plain_failure() -> None:
    raise ValueError("not an onnxcomp error")


def killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_returns_the_result():
    assert call_isolated(add, 1, 2, scale=3) == 9
    assert call_isolated(np.arange, 5).tolist() == [0, 1, 2, 3, 4]


def test_onnxcomp_error_keeps_class_message_and_attributes():
    with pytest.raises(TargetUnreachableError, match="smallest reachable size, 5 B") as caught:
        call_isolated(unreachable)
    assert caught.value.smallest_bytes == 5 and caught.value.exit_code == 3


def test_other_exceptions_keep_their_type_and_the_child_traceback():
    with pytest.raises(ValueError, match="not an onnxcomp error") as caught:
        call_isolated(plain_failure)
    assert "plain_failure" in str(caught.value.__cause__)


def test_native_crash_names_signal_and_last_stage():
    stages = []
    with pytest.raises(ChildCrashed) as caught:
        call_isolated(divide_overflowing, stage="testing", on_stage=stages.append)
    message = str(caught.value)
    assert message.startswith("ONNX Runtime crashed (SIGFPE: integer divide by zero or overflow) while dividing INT64_MIN by -1")
    assert "\n" not in message and caught.value.exit_code == 2
    assert caught.value.signal_number == signal.SIGFPE and stages == ["dividing INT64_MIN by -1"]


def test_sigkill_reads_as_out_of_memory():
    with pytest.raises(ChildCrashed, match="ran out of memory while allocating") as caught:
        call_isolated(killed, stage="allocating")
    assert caught.value.out_of_memory


def test_timeout_stops_the_child():
    started = time.monotonic()
    with pytest.raises(OnnxcompError, match="gave up after 0.5 s while sleeping"):
        call_isolated(time.sleep, 30, timeout=0.5, stage="sleeping")
    assert time.monotonic() - started < 10


# --- the command line: the whole job runs in a child process ----------------------------------------

REPO = Path(__file__).resolve().parent.parent


def divide_and_matmul_model(path: Path) -> None:
    """y = x @ w (something to compress) next to z = a / b on int64 (SIGFPE on INT64_MIN / -1)."""
    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 32)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="project"), helper.make_node("Div", ["a", "b"], ["z"], name="divide")],
        "divide_and_matmul",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 16]),
         helper.make_tensor_value_info("a", onnx.TensorProto.INT64, ["N", 4]),
         helper.make_tensor_value_info("b", onnx.TensorProto.INT64, ["N", 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 32]),
         helper.make_tensor_value_info("z", onnx.TensorProto.INT64, ["N", 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def run_cli(*args: str | os.PathLike, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxcomp.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture
def crashing_model(tmp_path) -> tuple[Path, Path]:
    model = tmp_path / "divide.onnx"
    divide_and_matmul_model(model)
    data = tmp_path / "overflow.npz"
    np.savez(data, x=np.ones((8, 16), np.float32), a=np.full((8, 4), INT64_MIN, np.int64), b=np.full((8, 4), -1, np.int64))
    return model, data


def test_native_crash_in_compress_is_one_line_and_exit_2(crashing_model, tmp_path):
    model, data = crashing_model
    before = model.read_bytes()
    result = run_cli("compress", model, "--target-size", "1KB", "-o", "out.onnx", "--data", data, "-q", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("onnxcomp: error: ONNX Runtime crashed (SIGFPE: integer divide by zero or overflow) while "
                               f"compressing {model}"), lines[0]
    assert "(run the original model on 8 samples)" in lines[0] and "integer divisions in the model: Div 'divide'" in lines[0]
    assert "--data" in lines[0] and "no output was written" in lines[0]
    assert model.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["divide.onnx", "overflow.npz"]


def test_native_crash_in_a_sweep_worker_is_one_line_and_exit_2(crashing_model, tmp_path):
    model, data = crashing_model
    result = run_cli("sweep", model, "--targets", "2KB,3KB", "--data", data, "-o", "sweep", "-j", "1", "-q", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxcomp: error: ONNX Runtime crashed in a sweep worker"), result.stderr
    assert not list((tmp_path / "sweep").glob("*.onnx"))


def test_onnxcomp_error_in_the_child_keeps_its_exit_code(tmp_path):
    from tests.conftest import LENET300

    result = run_cli("compress", LENET300, "--target-size", "10B", "-o", "out.onnx", "-q", "--no-sensitivity", cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("onnxcomp: error:"), result.stderr
    assert not (tmp_path / "out.onnx").exists()


KILLED_WHILE_WRITING = """
import os, signal, sys
import onnxcomp.modelfile

def killed_write(path, write):
    with open(path.with_name("." + path.name + ".partial.tmp"), "wb") as handle:
        handle.write(b"partial")
    os.kill(os.getpid(), signal.SIGKILL)

onnxcomp.modelfile.atomic_write = killed_write
from onnxcomp.cli import main
sys.exit(main(sys.argv[1:], isolate=True))
"""


def test_killed_job_leaves_no_temporary_file(tmp_path):
    """The child is killed while writing (as the OOM killer would): one line, exit 2, its temp file removed."""
    from tests.conftest import LENET300

    result = subprocess.run([sys.executable, "-c", KILLED_WHILE_WRITING, "compress", str(LENET300), "--target-size", "200KB",
                             "-o", "out.onnx", "-q", "--no-sensitivity"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "ran out of memory while compressing" in result.stderr and "SIGKILL" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.training  # a fine-tuning job: long enough to interrupt in the middle
@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_interrupt_stops_the_job_within_seconds(tmp_path, how):
    """Ctrl-C (SIGINT to the process group) or SIGTERM to the parent: the child goes too, nothing is left."""
    from tests.conftest import LENET300, TRAIN_DATA

    process = subprocess.Popen([sys.executable, "-m", "onnxcomp.cli", "compress", str(LENET300), "--target-size", "40KB",
                                "-o", "out.onnx", "--data", str(TRAIN_DATA), "--epochs", "60", "--method", "prune"],
                               stderr=subprocess.PIPE, text=True, cwd=tmp_path, start_new_session=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        for line in process.stderr:  # wait until the job is deep in the child (measuring or training)
            if "sensitivity" in line or "fine-tune" in line:
                break
        interrupted = time.monotonic()
        if how == "ctrl-c":
            os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground process group
        else:
            process.send_signal(signal.SIGTERM)  # e.g. `timeout`, or a job scheduler: the parent only
        rest = process.stderr.read()
        process.wait(timeout=30)
        elapsed = time.monotonic() - interrupted
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == (130 if how == "ctrl-c" else 143), rest
    assert rest.strip().splitlines()[-1] == f"onnxcomp: {'interrupted' if how == 'ctrl-c' else 'terminated'}; no output written"
    assert elapsed < 5, elapsed
    assert list(tmp_path.iterdir()) == []
    time.sleep(1)
    left = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True).stdout.split()
    assert left == [], left


# --- ONNX Runtime's errors whole, and compressing when no generated input runs ---------------------

LONG_NAME = "/model/backbone/stage4/block3/attention/output_projection/Add"


def test_onnx_runtime_error_keeps_cause_node_and_flag():
    from onnxcomp.runtime.inference import run_batches, session

    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N, C] x, float[N, D] y) => (float[N, C] z) { z = Add(x, y) }""")
    model.graph.node[0].name = LONG_NAME
    feed = {"x": np.ones((2, 3), np.float32), "y": np.ones((2, 5), np.float32)}
    with pytest.raises(OnnxcompError) as caught:
        run_batches(session(model), feed, generated=True)
    message = str(caught.value)
    assert f"Add node '{LONG_NAME}': Attempting to broadcast an axis by a dimension other than 1. 3 by 5" in message
    assert "--input-shape NAME:DIMS" in message and "--data" in message
    assert "\n" not in message and "onnxruntime_src" not in message and "[ONNXRuntimeError]" not in message


def test_onnx_runtime_error_names_the_input_in_the_flag():
    from onnxcomp.runtime.inference import run_batches, session

    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 16] x) => (float[N, 16] z) { z = Relu(x) }""")
    with pytest.raises(OnnxcompError) as caught:
        run_batches(session(model), {"x": np.ones((2, 15), np.float32)}, generated=True)
    message = str(caught.value)
    assert "Got invalid dimensions for input: x for the following indices index: 1 Got: 15 Expected: 16" in message
    assert "--input-shape x:DIMS" in message


def unrunnable_model(path: Path, input_shape: str = "N, K") -> None:
    """A weight behind a Gather whose fixed index no input is wide enough for: every probe fails in ONNX Runtime."""
    model = onnx.parser.parse_model(f"""<ir_version: 8, opset_import: ["" : 17]>
    g (float[{input_shape}] x) => (float[N, 32] y) {{
      picked = Gather<axis = 1>(x, far)
      column = Unsqueeze(picked, one)
      wide = Expand(column, shape)
      y = MatMul(wide, w)
    }}""")
    rng = np.random.default_rng(0)
    for name, array in {"far": np.array(1_000_000_000, np.int64), "one": np.array([1], np.int64),
                        "shape": np.array([1, 64], np.int64), "w": rng.standard_normal((64, 32)).astype(np.float32)}.items():
        model.graph.initializer.append(numpy_helper.from_array(array, name))
    onnx.save(model, path)


@pytest.mark.parametrize("input_shape", ["N, K", "2, 8"])  # probed sizes / declared sizes, nothing to probe
def test_no_runnable_input_compresses_unverified(tmp_path, input_shape):
    model = tmp_path / "unrunnable.onnx"
    unrunnable_model(model, input_shape)
    output, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = run_cli("compress", model, "--target-size", "3KB", "-o", output, "--report", report, "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert output.stat().st_size <= 3000
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "outputs are not verified" in lines[0], result.stderr
    assert "Gather node: indices element out of data bounds" in lines[0] and "--data" in lines[0]
    written = json.loads(report.read_text())
    assert written["verified"] is False and written["fidelity"]["mode"] == "weights"
    assert written["fidelity"]["max_relative_error"] < 0.1  # each decoded weight was still checked
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["x"]


def test_runnable_model_is_reported_verified():
    from onnxcomp.pipeline import CompressOptions, compress_model
    from tests.conftest import MLP_SHAPES, MLP_TEXT, build_model

    rng = np.random.default_rng(0)
    model = build_model(MLP_TEXT, {name: rng.standard_normal(shape).astype(np.float32) for name, shape in MLP_SHAPES.items()})
    result = compress_model(model, CompressOptions(target_bytes=2000, sensitivity=False))
    assert result.report.verified is True and result.report.fidelity["samples"] > 0
    assert list(result.report.fidelity["outputs"]) == ["y"]  # named as the model names its outputs


# --- call_isolated's other exits, stages and start methods; remove_temporaries -------------------


def exits_quietly() -> None:
    os._exit(3)


def reports_stages(count: int) -> int:
    for index in range(count):
        report_stage(f"step {index}")
    return count


def unpicklable_result():
    return lambda: None


def test_child_that_exits_without_an_answer():
    with pytest.raises(ChildCrashed) as caught:
        call_isolated(exits_quietly)
    assert str(caught.value) == "the onnxcomp worker process exited (status 3) without an answer in the isolated process"
    assert caught.value.signal_number is None and not caught.value.out_of_memory and caught.value.stage == ""


def test_stages_reach_the_parent_in_order_and_report_stage_is_a_no_op_here():
    stages = []
    assert call_isolated(reports_stages, 3, on_stage=stages.append) == 3
    assert stages == ["step 0", "step 1", "step 2"]
    report_stage("in the parent")  # not in an isolated child: nothing to tell, no error


def test_fork_start_method_and_a_result_that_does_not_pickle():
    assert call_isolated(add, 2, 3, start_method="fork") == 5
    with pytest.raises(Exception, match="(?i)pickle|local object") as caught:  # 3.13: "Can't get local object"
        call_isolated(unpicklable_result)
    assert not isinstance(caught.value, ChildCrashed)


def test_remove_temporaries_removes_recent_temporaries_only(tmp_path):
    from onnxcomp.runtime.isolated import remove_temporaries

    output = tmp_path / "out" / "model.onnx"
    folder = tmp_path / "report"
    output.parent.mkdir()
    folder.mkdir()
    since = time.time()
    mine = output.parent / ".model.onnx.abc123.tmp"
    other = output.parent / ".other.onnx.abc123.tmp"  # another file's temporary in the same folder
    in_folder = folder / ".report.html.x.tmp"
    old = folder / ".old.tmp"
    kept = folder / "report.html"
    for path in (mine, other, in_folder, old, kept):
        path.write_text("partial")
    os.utime(old, (since - 60, since - 60))
    removed = remove_temporaries([output], [folder], since)
    assert sorted(removed) == sorted([mine, in_folder])
    assert not mine.exists() and not in_folder.exists()
    assert other.exists() and old.exists() and kept.exists()
    assert remove_temporaries([output], [folder], since) == []
