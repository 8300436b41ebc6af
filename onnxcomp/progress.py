"""Live progress on a terminal: what runs, the step within it, elapsed time and an estimate.

The command line turns the display on (`live`) only when stderr is a terminal and `-q` was not
given; everywhere else - a pipe, a log file, CI, a library call - `task` is a no-op and `write`
prints plain lines. Long loops (training epochs, sweep targets) open a `task` with their step
count; the bar is drawn by tqdm on stderr and erased when the task ends, so what stays on the
screen are the plain lines: one per stage, one per epoch, one per sweep target.

Everything here is process-local: a worker process (a sweep target) shows no bar of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Iterator
from typing import TextIO

logger = logging.getLogger(__name__)

# elapsed<remaining: tqdm's estimate of the time left from the rate so far
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}]"
OPEN_FORMAT = "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}]"


@dataclasses.dataclass
class _Display:
    stream: TextIO
    bars: list = dataclasses.field(default_factory=list)


_display: _Display | None = None


def wanted(stream: TextIO, quiet: bool) -> bool:
    """Whether a live display belongs on `stream`: a terminal (not 'dumb'), and not `-q`."""
    if quiet:
        return False
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False
    return terminal and os.environ.get("TERM") != "dumb"


@contextlib.contextmanager
def live(enabled: bool, stream: TextIO | None = None) -> Iterator[None]:
    """Show progress bars on `stream` (default stderr) within this block when `enabled`."""
    global _display
    if not enabled:
        yield
        return
    previous, _display = _display, _Display(stream or sys.stderr)
    try:
        yield
    finally:
        for bar in list(_display.bars):
            bar.close()
        _display = previous


def active() -> bool:
    """Whether a live display is on in this process."""
    return _display is not None


class Task:
    """One running loop: `advance` after each step. Without a display it does nothing."""

    def __init__(self, bar=None):
        self._bar = bar

    def advance(self, steps: int = 1) -> None:
        if self._bar is not None:
            first = self._bar.n == 0
            self._bar.update(steps)
            if first:  # tqdm waits `mininterval` between draws; the first step's draw gives the estimate at once
                self._bar.refresh()

    def describe(self, description: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(description, refresh=True)


@contextlib.contextmanager
def task(description: str, total: int | None = None, unit: str = "steps") -> Iterator[Task]:
    """A progress bar for a loop of `total` steps (None: count without an estimate).

    Args:
        description: what runs, e.g. "prune round 1/2, epoch 3/10"; shown before the bar.
        total: the steps the loop will take.
        unit: what a step is ("steps", "targets").
    """
    if _display is None:
        yield Task()
        return
    from tqdm import tqdm

    sized = _columns(_display.stream) > 0  # a pseudo-terminal nobody sized reports 0 columns: draw 80
    bar = tqdm(total=total, desc=description, unit=unit, file=_display.stream, leave=False, dynamic_ncols=sized,
               ncols=None if sized else 80, nrows=None if sized else 24, mininterval=0.2, bar_format=BAR_FORMAT if total else OPEN_FORMAT)
    _display.bars.append(bar)
    try:
        yield Task(bar)
    finally:
        _display.bars.remove(bar)
        bar.close()


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


def write(line: str) -> None:
    """Print one plain line on stderr, above any bar that is showing."""
    if _display is not None and _display.bars:
        from tqdm import tqdm

        tqdm.write(line, file=_display.stream)
        return
    print(line, file=_display.stream if _display is not None else sys.stderr, flush=True)
