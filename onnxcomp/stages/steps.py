"""Progress lines and per-stage seconds: the one place a run's bookkeeping lives."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

logger = logging.getLogger("onnxcomp.pipeline")  # the name users configure logging by

Progress = Callable[[str], None] | None


def log(progress: Progress, message: str) -> None:
    """Log `message` and hand it to `progress` (the CLI's stderr lines), if given."""
    logger.info(message)
    if progress:
        progress(message)


class Steps:
    """A run's progress callback and the seconds each named stage took (summed over repeats)."""

    def __init__(self, progress: Progress = None):
        self.progress = progress
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def log(self, message: str) -> None:
        log(self.progress, message)

    @contextlib.contextmanager
    def timed(self, name: str, message: str | None = None) -> Iterator[None]:
        """Time the block under `name`, after logging `message` if given."""
        if message is not None:
            self.log(message)
        tick = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - tick

    def rounded(self, total: bool = False) -> dict[str, float]:
        """The report's ``seconds``: each stage, and with `total` the whole run so far."""
        seconds = {name: round(value, 3) for name, value in self.seconds.items()}
        if total:
            seconds["total"] = round(time.perf_counter() - self.started, 3)
        return seconds
