"""onnxcomp.stages.steps: progress lines go to the log and the callback, and each named stage's
seconds are summed over its repeats (a fake clock: no timing assertions)."""

from __future__ import annotations

import logging

import pytest

from onnxcomp.stages import steps as steps_module
from onnxcomp.stages.steps import Steps, log


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(steps_module.time, "perf_counter", fake)
    return fake


def test_log_goes_to_the_pipeline_logger_and_the_callback(caplog):
    lines = []
    with caplog.at_level(logging.INFO, logger="onnxcomp.pipeline"):
        log(lines.append, "price 3 weights")
        log(None, "no callback")
    assert lines == ["price 3 weights"]
    assert [(r.name, r.getMessage()) for r in caplog.records] == [("onnxcomp.pipeline", "price 3 weights"),
                                                                  ("onnxcomp.pipeline", "no callback")]


def test_timed_logs_its_message_first_and_sums_repeats(clock):
    lines = []
    steps = Steps(lines.append)
    with steps.timed("price", "price 2 weights"):
        assert lines == ["price 2 weights"]  # said before the block runs
        clock.now += 1.5
    with steps.timed("price"):  # no message: nothing logged
        clock.now += 0.25
    with steps.timed("verify", "verify"):
        clock.now += 2.0
    assert lines == ["price 2 weights", "verify"]
    assert steps.seconds == {"price": 1.75, "verify": 2.0}


def test_timed_counts_a_block_that_raises(clock):
    steps = Steps()
    with pytest.raises(ValueError, match="boom"), steps.timed("fit"):
        clock.now += 0.5
        raise ValueError("boom")
    assert steps.seconds == {"fit": 0.5}


def test_rounded_to_milliseconds_with_the_total_since_start(clock):
    steps = Steps()
    with steps.timed("canonicalize"):
        clock.now += 0.12345
    clock.now += 1.0
    assert steps.rounded() == {"canonicalize": 0.123}
    assert steps.rounded(total=True) == {"canonicalize": 0.123, "total": 1.123}
    assert steps.seconds == {"canonicalize": pytest.approx(0.12345)}  # rounding leaves the sums as they are


def test_steps_log_uses_its_callback():
    lines = []
    steps = Steps(lines.append)
    steps.log("attempt 1: fits; kept")
    assert lines == ["attempt 1: fits; kept"]
    assert steps.progress == lines.append
