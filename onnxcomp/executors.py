"""Where a sweep's targets run: local worker processes, or the tasks of a Ray cluster.

Both map one picklable function over argument tuples and yield each result as soon as it is
done (in completion order). The function and its arguments travel by reference and value: on a
cluster every node needs onnxcomp installed, and the paths in the arguments must name storage
that every node sees (a shared file system), since the workers read the input and write the
outputs themselves.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence

from onnxcomp.errors import OnnxcompError
from onnxcomp.runtime.isolated import ChildCrashed

logger = logging.getLogger(__name__)

EXECUTORS = ("process", "ray")
RAY_INSTALL = "pip install 'onnxcomp[ray]'"


def require_ray():
    """The `ray` module, or one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise OnnxcompError(f"--executor ray needs Ray, which is not installed ({RAY_INSTALL})") from None
    return ray


def map_unordered(function: Callable, calls: Sequence[tuple], *, executor: str = "process", jobs: int = 1,
                  ray_address: str | None = None, crashed: str = "a worker crashed") -> Iterator:
    """Yield `function(*call)` for every call, in the order they finish.

    Args:
        function: a module-level function (workers import it by name).
        calls: the argument tuples.
        executor: "process" (a local `ProcessPoolExecutor` of `jobs` spawned processes) or "ray"
            (Ray tasks of one CPU each, at most `jobs` in flight).
        jobs: parallel workers (process) or tasks in flight (ray).
        ray_address: the cluster to join (`ray.init(address=...)`); None joins the one named by
            the RAY_ADDRESS environment variable, or starts a local Ray with `jobs` CPUs.
        crashed: the message when a worker dies natively (SIGFPE, SIGSEGV, an out-of-memory kill).

    Raises:
        ChildCrashed: a worker died without an exception to report.
        OnnxcompError: Ray is missing or its cluster cannot be joined.
    """
    if executor == "process":
        yield from _processes(function, calls, jobs, crashed)
    elif executor == "ray":
        yield from _ray(function, calls, jobs, ray_address, crashed)
    else:
        raise OnnxcompError(f"unknown executor {executor!r}; one of {', '.join(EXECUTORS)}")


def _processes(function: Callable, calls: Sequence[tuple], jobs: int, crashed: str) -> Iterator:
    # spawn, not fork: the parent may hold ONNX Runtime thread pools, which do not survive a fork.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(function, *call) for call in calls]
        for future in concurrent.futures.as_completed(futures):
            try:
                result = future.result()
            except concurrent.futures.process.BrokenProcessPool:  # a worker died natively: no exception to report
                raise ChildCrashed(crashed) from None
            yield result


def _ray(function: Callable, calls: Sequence[tuple], jobs: int, address: str | None, crashed: str) -> Iterator:
    ray = require_ray()
    address = address or os.environ.get("RAY_ADDRESS") or None
    started_here = not ray.is_initialized()
    if started_here:
        _init_ray(ray, address, jobs)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(function)
        pending = list(calls)
        running: list = []
        while pending or running:
            while pending and len(running) < jobs:
                running.append(task.remote(*pending.pop(0)))
            done, running = ray.wait(running, num_returns=1)
            try:
                yield ray.get(done[0])
            except ray.exceptions.RayTaskError as error:  # the function raised: re-raise what it raised
                raise error.as_instanceof_cause() from None
            except _died(ray):
                raise ChildCrashed(crashed.replace("worker process", "Ray worker")) from None
    finally:
        if started_here:
            ray.shutdown()


def _died(ray) -> tuple[type, ...]:
    """Ray's exceptions for a task whose worker or node died (no exception of the function's own)."""
    names = ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "LocalRayletDiedError")
    return tuple(getattr(ray.exceptions, name) for name in names if hasattr(ray.exceptions, name))


def _init_ray(ray, address: str | None, jobs: int) -> None:
    """Join the cluster at `address`, or start a local Ray with `jobs` CPUs (no dashboard)."""
    try:
        if address:
            logger.info("joining the Ray cluster at %s", address)
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        else:
            logger.info("starting a local Ray with %d CPUs", jobs)
            ray.init(num_cpus=jobs, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as error:
        where = f"the Ray cluster at {address}" if address else "a local Ray"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise OnnxcompError(f"cannot start or join {where}: {first}") from None
