"""Crash-safe runs: work in a child process, native deaths turned into one-line errors."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import onnx
import onnx.helper as helper
import pytest

from onnxcomp.errors import OnnxcompError, TargetUnreachableError
from onnxcomp.runtime.isolated import ChildCrashed, call_isolated, report_stage

onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


def integer_divide_model() -> onnx.ModelProto:
    """z = a / b on int64: ONNX Runtime's CPU Div kernel dies of SIGFPE when b holds a zero."""
    graph = helper.make_graph(
        [helper.make_node("Div", ["a", "b"], ["z"], name="divide")], "divide",
        [helper.make_tensor_value_info(name, onnx.TensorProto.INT64, ["N", 4]) for name in ("a", "b")],
        [helper.make_tensor_value_info("z", onnx.TensorProto.INT64, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def divide_by_zero() -> list:
    from onnxcomp.runtime.inference import session

    report_stage("dividing by zero")
    sess = session(integer_divide_model())
    return sess.run(None, {"a": np.ones((2, 4), np.int64), "b": np.zeros((2, 4), np.int64)})


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
        call_isolated(divide_by_zero, stage="testing", on_stage=stages.append)
    message = str(caught.value)
    assert message.startswith("ONNX Runtime crashed (SIGFPE: integer divide by zero or overflow) while dividing by zero")
    assert "\n" not in message and caught.value.exit_code == 2
    assert caught.value.signal_number == signal.SIGFPE and stages == ["dividing by zero"]


def test_sigkill_reads_as_out_of_memory():
    with pytest.raises(ChildCrashed, match="ran out of memory while allocating") as caught:
        call_isolated(killed, stage="allocating")
    assert caught.value.out_of_memory


def test_timeout_stops_the_child():
    started = time.monotonic()
    with pytest.raises(OnnxcompError, match="gave up after 0.5 s while sleeping"):
        call_isolated(time.sleep, 30, timeout=0.5, stage="sleeping")
    assert time.monotonic() - started < 10
