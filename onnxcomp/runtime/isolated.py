"""Running work that may crash natively (ONNX Runtime on a user's model) in a child process.

ONNX Runtime kernels can kill the process outright on inputs they do not expect: an integer
``Div`` by zero raises SIGFPE, a bad index can segfault, an ``ORT_ENFORCE`` outside a
``try`` aborts, and a huge declared shape gets the process OOM-killed. None of these is a
Python exception. :func:`call_isolated` runs a function in a child process and turns such a
death into :class:`ChildCrashed`, a one-line :class:`~onnxcomp.errors.OnnxcompError` that names
the signal and the stage that was running.

Children come from a ``forkserver`` (``fork`` is unsafe once ONNX Runtime's thread pools
exist; ``spawn`` re-imports everything on every call), so after the first call a call costs a
fork plus pickling the arguments and result. A child can report what it is doing with
:func:`report_stage`; a crash message names the last stage reported.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, TypeVar

from onnxcomp.errors import OnnxcompError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Modules the fork server imports once, so that children forked from it start with them loaded.
PRELOAD = ["onnxcomp.runtime.isolated", "numpy", "onnx", "onnx_ir", "onnxruntime", "onnxcomp.runtime.inference"]
STOP_GRACE_S = 1.0  # after SIGTERM, how long a child gets before SIGKILL
EXIT_GRACE_S = 10.0  # after answering, how long a child gets to exit (flushing output, joining its own children)
_PARENT_POLL_S = 0.5

SIGNAL_CAUSES = {
    signal.SIGFPE: "integer divide by zero or overflow",
    signal.SIGSEGV: "invalid memory access",
    signal.SIGBUS: "invalid memory access",
    signal.SIGABRT: "aborted",
    signal.SIGILL: "illegal instruction",
    signal.SIGKILL: "killed",
}

_to_parent: multiprocessing.connection.Connection | None = None  # set in an isolated child


class ChildCrashed(OnnxcompError):
    """The isolated child died without an answer: a native crash (SIGFPE, SIGSEGV, SIGABRT) or a kill.

    Attributes:
        signal_number: the signal that ended the child (None when it exited with a status).
        stage: what the child reported it was doing.
        out_of_memory: the kill looks like the kernel's out-of-memory killer.
    """

    def __init__(self, message: str, signal_number: int | None = None, stage: str = "", out_of_memory: bool = False):
        super().__init__(message)
        self.signal_number = signal_number
        self.stage = stage
        self.out_of_memory = out_of_memory


class _RemoteTraceback(Exception):
    """The child's traceback, chained as ``__cause__`` of an unexpected exception re-raised here."""

    def __str__(self) -> str:
        return self.args[0]


def report_stage(stage: str) -> None:
    """Tell the parent what this isolated child is doing now (named if it crashes). No-op elsewhere."""
    if _to_parent is not None:
        try:
            _to_parent.send(("stage", stage))
        except OSError:  # the parent is gone; the watchdog ends this process
            pass


def call_isolated(function: Callable[..., T], /, *args: Any, timeout: float | None = None, stage: str = "",
                  on_stage: Callable[[str], None] | None = None, start_method: str = "forkserver", **kwargs: Any) -> T:
    """Run ``function(*args, **kwargs)`` in a child process and return its result.

    Args:
        function: a picklable (module-level) function; arguments and result must pickle.
        timeout: seconds before the child is killed and an ``OnnxcompError`` raised (None: no limit).
        stage: what the call does, for messages ("running the model on the sample inputs").
        on_stage: called in this process with each stage the child reports via :func:`report_stage`.
        start_method: "forkserver" (default; safe at any time) or "fork", only before this process has
            created an ONNX Runtime session (its threads would not survive the fork): it is faster and the
            child sees this process's state as it is.

    Returns:
        What ``function`` returned.

    Raises:
        OnnxcompError: the same class and message as raised in the child.
        ChildCrashed: the child died of a signal (or exited) without answering.
        KeyboardInterrupt: Ctrl-C here; the child is stopped first.
    """
    context = _context(start_method)
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(sender, function, args, kwargs), name=f"onnxcomp {stage or 'child'}")
    oom_kills = _oom_kill_count()
    process.start()
    sender.close()
    deadline = None if timeout is None else time.monotonic() + timeout
    current = stage
    try:
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ready = multiprocessing.connection.wait([receiver, process.sentinel], timeout=remaining)
            if not ready:
                _stop(process)
                raise OnnxcompError(f"gave up after {timeout:g} s {_while(current)}: the model did not finish in time")
            if receiver in ready:
                try:
                    kind, payload = receiver.recv()
                except EOFError:  # died without answering
                    process.join()
                    raise _crash(process.exitcode, current, oom_kills) from None
                if kind == "stage":
                    current = payload
                    if on_stage is not None:
                        on_stage(payload)
                    continue
                process.join(EXIT_GRACE_S)  # answered; one that hangs on its way out is stopped below
                _stop(process)
                if kind == "ok":
                    return payload
                raise _unpack_error(payload)
            if not receiver.poll():  # exited; an answer still in the pipe is read on the next turn
                process.join()
                raise _crash(process.exitcode, current, oom_kills)
    except BaseException:
        _stop(process)
        raise
    finally:
        receiver.close()


def remove_temporaries(outputs: list[Path], folders: list[Path], since: float) -> list[Path]:
    """Remove the temporary files a killed child left behind (``io.atomic_write``'s ``.NAME.*.tmp``).

    Args:
        outputs: files the job writes: their ``.NAME.*.tmp`` siblings are removed.
        folders: folders the job writes into: every ``.*.tmp`` file in them is removed.
        since: only files modified at or after this time (``time.time()``) are touched.

    Returns:
        The files removed.
    """
    candidates = [match for path in outputs for match in path.parent.glob(f".{path.name}.*.tmp")]
    candidates += [match for folder in folders for match in folder.glob(".*.tmp")]
    removed = []
    for path in candidates:
        try:
            if path.is_file() and path.stat().st_mtime >= since - 1:
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    if removed:
        logger.debug("removed %s", ", ".join(map(str, removed)))
    return removed


def _context(start_method: str) -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context(start_method)
    if start_method == "forkserver":
        context.set_forkserver_preload(PRELOAD)
    return context


def _child_main(to_parent: multiprocessing.connection.Connection, function: Callable[..., Any],
                args: tuple, kwargs: dict) -> None:
    global _to_parent
    # Ctrl-C reaches the whole process group: the parent stops this child, which must not print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _to_parent = to_parent
    _watch_parent()
    try:
        message: tuple = ("ok", function(*args, **kwargs))
    except BaseException as error:  # everything goes back to the parent, SystemExit included
        message = ("error", _pack_error(error))
    try:
        to_parent.send(message)
    except Exception as error:  # the result did not pickle
        to_parent.send(("error", _pack_error(error)))
    to_parent.close()


def _watch_parent() -> None:
    """End this child when the process that forked it goes away (the fork server exits with its owner)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="onnxcomp-parent-watch").start()


def _pack_error(error: BaseException) -> tuple:
    text = "".join(traceback.format_exception(error))
    state = (type(error), error.args, dict(getattr(error, "__dict__", {})))
    try:
        pickle.dumps(state)
    except Exception:
        try:
            state = (type(error), error.args, {})
            pickle.dumps(state)
        except Exception:
            state = (RuntimeError, (f"{type(error).__name__}: {error}",), {})
    return state + (text,)


def _unpack_error(payload: tuple) -> BaseException:
    kind, args, attributes, text = payload
    error = kind.__new__(kind)  # no __init__: subclasses take other arguments (e.g. smallest_bytes)
    error.args = args
    error.__dict__.update(attributes)
    if not isinstance(error, OnnxcompError):
        error.__cause__ = _RemoteTraceback(text)
    return error


def _while(stage: str) -> str:
    return f"while {stage}" if stage else "in the isolated process"


def _crash(exitcode: int | None, stage: str, oom_kills: int | None) -> ChildCrashed:
    if exitcode is None or exitcode >= 0:
        return ChildCrashed(f"the onnxcomp worker process exited (status {exitcode}) without an answer {_while(stage)}",
                            stage=stage)
    number = -exitcode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    if number == signal.SIGKILL:
        after = _oom_kill_count()
        confirmed = oom_kills is not None and after is not None and after > oom_kills
        cause = "the out-of-memory killer" if confirmed else "most likely the out-of-memory killer"
        return ChildCrashed(f"onnxcomp ran out of memory {_while(stage)} (killed by SIGKILL, {cause}); "
                            "free memory or give fewer or smaller inputs", signal_number=number, stage=stage,
                            out_of_memory=True)
    cause = SIGNAL_CAUSES.get(number)
    described = f"{name}: {cause}" if cause else name
    return ChildCrashed(f"ONNX Runtime crashed ({described}) {_while(stage)}",
                        signal_number=number, stage=stage)


def _stop(process: multiprocessing.process.BaseProcess) -> None:
    if process.exitcode is not None or process.pid is None:
        return
    process.terminate()
    process.join(STOP_GRACE_S)
    if process.exitcode is None:
        process.kill()
        process.join()


def _oom_kill_count() -> int | None:
    """The kernel's OOM-kill counter for this process's memory cgroup (v2 or v1), if readable."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            candidates.append(Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.events")
        elif "memory" in controllers.split(","):
            for root in (Path("/sys/fs/cgroup/memory") / path.lstrip("/"), Path("/sys/fs/cgroup/memory")):
                candidates.append(root / "memory.oom_control")
    for candidate in candidates:
        try:
            for entry in candidate.read_text().splitlines():
                key, _, value = entry.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None
