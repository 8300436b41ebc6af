"""Live progress: a bar on a terminal (stage, step, elapsed, estimate), quiet elsewhere and under -q;
epoch lines name their stage and metric; sweeps say when each target starts."""

from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import pytest

from onnxcomp import progress

ROOT = Path(__file__).resolve().parent.parent
LENET300 = ROOT / "models" / "lenet300.onnx"
TRAIN_2K = ROOT / "models" / "data" / "mnist_train_2k.npz"
# A drawn bar: "<stage>: 40%|████      | 2/5 <unit> [00:01<00:02, ...]" - elapsed<estimate
BAR = re.compile(r"(?P<stage>[\w ,/-]+):\s+\d+%\|.*?\| (?P<n>\d+)/(?P<total>\d+) (?P<unit>\w+) "
                 r"\[(?P<elapsed>\d\d:\d\d)<(?P<estimate>\d\d:\d\d|\?)")
CLI = [sys.executable, "-c", "import sys; from onnxcomp.cli import main; sys.exit(main())"]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_in_terminal(args: list[str], timeout: float = 600) -> tuple[int, str]:
    """Run the onnxcomp CLI with stdin, stdout and stderr on a pseudo-terminal (100x30); returns
    (exit code, everything it drew)."""
    main, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = dict(os.environ, TERM="xterm")
    process = subprocess.Popen(CLI + args, stdin=secondary, stdout=secondary, stderr=secondary, env=env, cwd=ROOT,
                               close_fds=True)
    os.close(secondary)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                data = os.read(main, 65536)
            except OSError as error:  # EIO: the child side closed
                if error.errno == errno.EIO:
                    break
                raise
            if not data:
                break
            chunks.append(data)
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
        os.close(main)
    return code, b"".join(chunks).decode("utf-8", "replace")


def frames(drawn: str) -> list[str]:
    """What a terminal showed, one entry per carriage-return or newline separated frame."""
    return [frame for frame in re.split(r"[\r\n]+", drawn) if frame.strip()]


# --- the display itself (no subprocess) ---

def test_wanted_only_on_a_terminal_without_quiet(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    assert progress.wanted(_Terminal(), quiet=False)
    assert not progress.wanted(_Terminal(), quiet=True)
    assert not progress.wanted(io.StringIO(), quiet=False)  # a pipe or a file
    monkeypatch.setenv("TERM", "dumb")
    assert not progress.wanted(_Terminal(), quiet=False)


def test_task_draws_stage_step_elapsed_and_estimate_on_a_terminal():
    screen = _Terminal()
    with progress.live(True, screen):
        with progress.task("prune round 1/2, epoch 3/10", total=4) as bar:
            for _ in range(4):
                time.sleep(0.25)  # past tqdm's 0.2 s between redraws; the estimate needs a rate
                bar.advance()
        progress.write("a plain line")
    drawn = [BAR.search(frame) for frame in frames(screen.getvalue())]
    bars = [match for match in drawn if match]
    assert bars and all(match["stage"] == "prune round 1/2, epoch 3/10" for match in bars)
    assert {match["total"] for match in bars} == {"4"} and any(match["estimate"] != "?" for match in bars)
    assert "a plain line" in screen.getvalue()
    assert not progress.active()


def test_fast_steps_still_show_an_estimate_after_the_first_step():
    # steps faster than tqdm's 0.2 s between redraws: the first step is drawn at once, with its estimate
    screen = _Terminal()
    with progress.live(True, screen):
        with progress.task("epoch 1/2", total=50) as bar:
            for _ in range(50):
                bar.advance()
    bars = [match for match in map(BAR.search, frames(screen.getvalue())) if match]
    assert any(match["n"] == "1" and match["estimate"] != "?" for match in bars), screen.getvalue()


def test_task_is_silent_without_a_display(capsys):
    with progress.task("price weights", total=3) as bar:
        bar.advance(3)
    progress.write("only this line")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "only this line\n"


# --- the command line ---

def test_quiet_on_a_terminal_prints_nothing(tmp_path):
    code, drawn = run_in_terminal(["compress", str(LENET300), "--target-size", "200KB", "-o", str(tmp_path / "q.onnx"),
                                   "--no-sensitivity", "-q"])
    assert code == 0, drawn
    assert drawn.strip() == "", drawn


def test_not_a_terminal_gets_plain_lines_only(tmp_path):
    done = subprocess.run(CLI + ["compress", str(LENET300), "--target-size", "200KB", "-o", str(tmp_path / "p.onnx")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "measure sensitivity on" in done.stderr  # the stage lines stay
    assert "\r" not in done.stderr and "%|" not in done.stderr and not BAR.search(done.stderr)


def test_compress_on_a_terminal_shows_the_live_bar(tmp_path):
    code, drawn = run_in_terminal(["compress", str(LENET300), "--target-size", "200KB", "-o", str(tmp_path / "t.onnx")])
    assert code == 0, drawn
    stages = {match["stage"]: match for match in map(BAR.search, frames(drawn)) if match}
    assert "price weights" in stages and stages["price weights"]["unit"] == "weights"
    assert "measure sensitivity" in stages and int(stages["measure sensitivity"]["total"]) >= 3  # one step per layer
    assert "canonicalize" in drawn and "wrote" in drawn  # the plain lines and the summary still show


@pytest.mark.training
def test_fine_tuning_on_a_terminal_shows_epoch_bars_and_named_epoch_lines(tmp_path):
    code, drawn = run_in_terminal(["compress", str(LENET300), "--target-size", "100KB", "--data", str(TRAIN_2K),
                                   "--epochs", "2", "-o", str(tmp_path / "f.onnx")])
    assert code == 0, drawn
    bars = [match for match in map(BAR.search, frames(drawn)) if match and match["unit"] == "steps"]
    assert any(re.fullmatch(r"prune round \d/\d, epoch \d/\d", match["stage"]) for match in bars), drawn
    assert any(match["estimate"] != "?" for match in bars)
    lines = [frame for frame in frames(drawn) if re.search(r"epoch \d+/\d+: training loss", frame)]
    assert lines and all(re.search(r"^\s*[\w /-]+, epoch \d+/\d+: training loss [\d.]+, held-out accuracy [\d.]+%", line)
                         for line in lines), lines


def test_epoch_line_names_stage_and_metric():
    from onnxcomp.runtime.training import TrainConfig
    from onnxcomp.runtime.training_data import Evaluation
    from onnxcomp.runtime.training_loop import log_epoch

    lines: list[str] = []
    config = TrainConfig(epochs=10, log=lines.append, stage="codebook fine-tune")
    record = {"epoch": 3, "loss": 0.25, "metric": 0.9812, "lr": 1e-3, "seconds": 1.5, "diverged": False}
    log_epoch(record, config, Evaluation({}, np.zeros(1), "held-out top-1 agreement with the original"))
    log_epoch(record, config, None)
    assert lines[0] == ("codebook fine-tune, epoch 3/10: training loss 0.2500, held-out top-1 agreement with the "
                        "original 98.12%, lr 0.001 (1.5 s)")
    assert lines[1].startswith("codebook fine-tune, epoch 3/10: training loss 0.2500, no held-out data")


def test_sweep_says_when_each_target_starts(tmp_path):
    out = tmp_path / "sweep"
    done = subprocess.run(CLI + ["sweep", str(LENET300), "--targets", "300KB,200KB,150KB", "-o", str(out), "--jobs", "2",
                                 "--no-sensitivity"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
    started = [index for index, line in enumerate(lines) if re.fullmatch(r"\S+: started \(\d of 3\)", line)]
    finished = [index for index, line in enumerate(lines) if re.match(r"\d+(\.\d+)? KB: [\d.]+ KB, ", line)]
    assert [lines[index] for index in started] == ["300KB: started (1 of 3)", "200KB: started (2 of 3)",
                                                   "150KB: started (3 of 3)"], lines
    assert len(finished) == 3 and started[1] < finished[0] < started[2], lines  # 2 jobs: the third waits for a worker
    summary = json.loads((out / "sweep.json").read_text())
    assert {result["status"] for result in summary["results"]} == {"ok"}
