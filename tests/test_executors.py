"""onnxcomp.executors.map_unordered: results of local worker processes (spawned) or Ray tasks as
they finish, the function's own exceptions re-raised, a worker that dies natively as
ChildCrashed, and Ray missing or unreachable as one line. Ray itself is replaced by a fake
module here (tests/test_sweep_ray.py runs the real one end to end)."""

from __future__ import annotations

import operator
import os
import sys
import types

import pytest

from onnxcomp.errors import OnnxcompError
from onnxcomp.executors import EXECUTORS, RAY_INSTALL, map_unordered, require_ray
from onnxcomp.runtime.isolated import ChildCrashed


def test_process_pool_yields_every_result():
    calls = [(2, 3), (4, 5), (6, 7), (1, 1)]
    assert sorted(map_unordered(operator.mul, calls, executor="process", jobs=2)) == [1, 6, 20, 42]


def test_process_pool_reraises_the_functions_exception():
    with pytest.raises(ValueError, match="invalid literal for int"):
        list(map_unordered(int, [("12",), ("twelve",)], jobs=1))


def test_a_worker_that_dies_natively_is_child_crashed_with_the_callers_words():
    with pytest.raises(ChildCrashed, match="^the target 1/8 crashed$"):
        list(map_unordered(os._exit, [(3,)], jobs=1, crashed="the target 1/8 crashed"))


def test_unknown_executor_is_refused():
    assert EXECUTORS == ("process", "ray")
    with pytest.raises(OnnxcompError, match="^unknown executor 'dask'; one of process, ray$"):
        list(map_unordered(operator.mul, [(1, 2)], executor="dask"))


def test_missing_ray_is_one_line_saying_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    message = f"^--executor ray needs Ray, which is not installed \\({RAY_INSTALL.replace('[', '.').replace(']', '.')}\\)$"
    with pytest.raises(OnnxcompError, match=message):
        require_ray()
    with pytest.raises(OnnxcompError, match="needs Ray"):
        next(map_unordered(operator.mul, [(1, 2)], executor="ray"))


class WorkerDied(Exception):
    pass


class TaskError(Exception):
    def __init__(self, cause):
        super().__init__(str(cause))
        self.cause = cause

    def as_instanceof_cause(self):
        return self.cause


def fake_ray(initialized: bool = False, init_error: Exception | None = None):
    """A stand-in for the `ray` module: tasks run when their result is fetched."""
    ray = types.ModuleType("ray")
    ray.exceptions = types.SimpleNamespace(RayTaskError=TaskError, WorkerCrashedError=WorkerDied)
    ray.state = {"initialized": initialized, "init": None, "shutdown": False, "most_in_flight": 0, "options": None}

    def init(**kwargs):
        ray.state["init"] = kwargs
        if init_error is not None:
            raise init_error
        ray.state["initialized"] = True

    def remote(**options):
        ray.state["options"] = options
        return lambda function: types.SimpleNamespace(remote=lambda *args: (function, args))

    def wait(running, num_returns):
        ray.state["most_in_flight"] = max(ray.state["most_in_flight"], len(running))
        return running[-1:], running[:-1]  # the last submitted finishes first

    def get(ref):
        function, args = ref
        if args == ("die",):
            raise WorkerDied("the worker process died")
        try:
            return function(*args)
        except Exception as error:
            raise TaskError(error) from None

    def shutdown():
        ray.state["shutdown"] = True

    ray.is_initialized = lambda: ray.state["initialized"]
    ray.init, ray.remote, ray.wait, ray.get, ray.shutdown = init, remote, wait, get, shutdown
    return ray


def test_ray_tasks_run_at_most_jobs_at_once_and_a_local_ray_is_shut_down(monkeypatch):
    ray = fake_ray()
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    results = list(map_unordered(operator.add, [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)], executor="ray", jobs=2))
    assert results == [4, 6, 8, 10, 2]  # completion order: here the last one in flight first
    assert ray.state["most_in_flight"] == 2
    assert ray.state["options"] == {"num_cpus": 1, "max_retries": 0}
    assert ray.state["init"]["num_cpus"] == 2 and "address" not in ray.state["init"]
    assert ray.state["shutdown"]


def test_ray_joins_the_given_cluster_and_leaves_one_already_running_alone(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray://env:10001")
    ray = fake_ray()
    monkeypatch.setitem(sys.modules, "ray", ray)
    assert list(map_unordered(operator.neg, [(3,)], executor="ray", ray_address="ray://head:10001")) == [-3]
    assert ray.state["init"]["address"] == "ray://head:10001"
    ray = fake_ray()
    monkeypatch.setitem(sys.modules, "ray", ray)
    list(map_unordered(operator.neg, [(3,)], executor="ray"))
    assert ray.state["init"]["address"] == "ray://env:10001"  # the environment names it
    running = fake_ray(initialized=True)
    monkeypatch.setitem(sys.modules, "ray", running)
    list(map_unordered(operator.neg, [(3,)], executor="ray"))
    assert running.state["init"] is None and not running.state["shutdown"]


def test_ray_reraises_the_functions_exception_and_maps_a_dead_worker(monkeypatch):
    ray = fake_ray()
    monkeypatch.setitem(sys.modules, "ray", ray)
    with pytest.raises(ValueError, match="invalid literal"):
        list(map_unordered(int, [("x",)], executor="ray"))
    assert ray.state["shutdown"]  # shut down on the way out
    with pytest.raises(ChildCrashed, match="^a Ray worker crashed$"):
        list(map_unordered(int, [("die",)], executor="ray", crashed="a worker process crashed"))


def test_ray_that_cannot_start_is_one_line(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setitem(sys.modules, "ray", fake_ray(init_error=ConnectionError("no head node\nretrying")))
    with pytest.raises(OnnxcompError, match="^cannot start or join the Ray cluster at ray://x:1: no head node$"):
        list(map_unordered(operator.neg, [(1,)], executor="ray", ray_address="ray://x:1"))
    monkeypatch.setitem(sys.modules, "ray", fake_ray(init_error=RuntimeError()))
    with pytest.raises(OnnxcompError, match="^cannot start or join a local Ray: RuntimeError$"):
        list(map_unordered(operator.neg, [(1,)], executor="ray"))
