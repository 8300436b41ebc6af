"""Feed capture for the zoo's calibrated mode (`bench.feed_capture`): an application's calls to
`InferenceSession.run` on one model are saved as a folder of .npz feeds that onnxcomp reads.

Tiny models built here stand in for the shipped ones, so this runs without the zoo's packages; the
check that calibration and evaluation inputs are disjoint skips the apps that are not installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from bench.feed_capture import keep_evenly_spaced, recording_feeds
from bench.zoo_apps import APPS, ZooApp

onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

# A recurrent step like silero-vad's: a frame, a carried state and a scalar rate on every call.
STEP = """
<ir_version: 8, opset_import: ["" : 17]>
step (float[1, 4] x, float[1, 4] state, int64 sr) => (float[1, 4] y, float[1, 4] state_out) {
  srf = Cast <to = 1> (sr)
  h = Add(x, state)
  y = Mul(h, srf)
  state_out = Tanh(h)
}
"""

OTHER = """
<ir_version: 8, opset_import: ["" : 17]>
other (float[1, 4] x) => (float[1, 4] y) {
  y = Relu(x)
}
"""


def _save(text: str, path: Path) -> Path:
    onnx.save(onnx.parser.parse_model(text), str(path))
    return path


def _run_steps(session: onnxruntime.InferenceSession, frames: np.ndarray) -> None:
    state = np.zeros((1, 4), np.float32)
    for frame in frames:
        _, state = session.run(None, {"x": frame[None], "state": state, "sr": np.array(16000, np.int64)})


def test_records_every_call_of_the_model_only_with_its_carried_state(tmp_path: Path) -> None:
    step = _save(STEP, tmp_path / "step.onnx")
    other = _save(OTHER, tmp_path / "other.onnx")
    frames = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    before = onnxruntime.InferenceSession(str(step))  # made before the block: recorded too
    with recording_feeds(step, tmp_path / "feeds") as recorder:
        _run_steps(before, frames)
        onnxruntime.InferenceSession(str(other)).run(None, {"x": frames[:1]})
    assert onnxruntime.InferenceSession.run.__name__ == "run" and recorder.recorded == 5 and recorder.other_calls == 1
    files = sorted((tmp_path / "feeds").glob("*.npz"))
    assert [f.name for f in files] == [f"feed_{i:05d}.npz" for i in range(5)]
    state = np.zeros((1, 4), np.float32)
    for frame, file in zip(frames, files):
        with np.load(file) as feed:
            assert set(feed.files) == {"x", "state", "sr"}
            np.testing.assert_array_equal(feed["x"], frame[None])
            np.testing.assert_allclose(feed["state"], state, rtol=1e-6)
            assert feed["sr"].shape == () and feed["sr"].dtype == np.int64
        state = np.tanh(frame[None] + state)


def test_the_run_method_is_restored_after_an_error(tmp_path: Path) -> None:
    step = _save(STEP, tmp_path / "step.onnx")
    original = onnxruntime.InferenceSession.run
    with pytest.raises(RuntimeError), recording_feeds(step, tmp_path / "feeds"):
        raise RuntimeError("application failed")
    assert onnxruntime.InferenceSession.run is original


def test_a_session_made_from_bytes_is_matched_by_its_bytes(tmp_path: Path) -> None:
    step = _save(STEP, tmp_path / "step.onnx")
    with recording_feeds(step, tmp_path / "feeds") as recorder:
        _run_steps(onnxruntime.InferenceSession(step.read_bytes()), np.ones((2, 4), np.float32))
    assert recorder.recorded == 2


@pytest.mark.parametrize(("recorded", "limit", "kept"), [(3, 64, [0, 1, 2]), (10, 4, [0, 3, 6, 9]), (5, 1, [0])])
def test_keeps_evenly_spaced_feeds_first_and_last_included(tmp_path: Path, recorded: int, limit: int, kept: list[int]) -> None:
    for index in range(recorded):
        np.savez(tmp_path / f"feed_{index:05d}.npz", x=np.full((1,), index))
    files = keep_evenly_spaced(tmp_path, limit)
    assert [int(np.load(f)["x"][0]) for f in files] == kept
    assert sorted(tmp_path.glob("*.npz")) == files


def test_onnxcomp_reads_the_recorded_folder(tmp_path: Path) -> None:
    from onnxcomp.samples.data import load_samples

    step = _save(STEP, tmp_path / "step.onnx")
    with recording_feeds(step, tmp_path / "feeds"):
        _run_steps(onnxruntime.InferenceSession(str(step)), np.ones((3, 4), np.float32))
    samples = load_samples(tmp_path / "feeds", ir.load(str(step)))
    assert not samples.generated


def _installed(app: ZooApp) -> bool:
    try:
        return app.model_path().is_file() and all(p.exists() for p in [*app.inputs(), *app.calibration_inputs()])
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize("app", list(APPS.values()), ids=list(APPS))
def test_calibration_inputs_are_real_files_disjoint_from_the_evaluation_inputs(app: ZooApp) -> None:
    if not _installed(app):
        pytest.skip(f"{app.package} or an input package is not installed (bench/zoo-requirements.txt)")
    calibration = {p.resolve() for p in app.calibration_inputs()}
    assert calibration and not calibration & {p.resolve() for p in app.inputs()}


def _row(fraction: float, identical: bool, calibrated: bool = False) -> dict[str, object]:
    row: dict[str, object] = {"fraction": fraction, "target_bytes": 100, "exit_code": 0, "seconds": 1.0, "peak_rss_bytes": 2**20,
                              "error": "", "bytes": 100, "agreement": {"matched": 9 + identical, "total": 10, "identical": identical,
                                                                        "detail": "", "score": (9 + identical) / 10}}
    return row | ({"calibrated": True} if calibrated else {})


def test_the_calibrated_rows_get_a_second_table_and_leave_the_data_free_table_as_it_was(tmp_path: Path) -> None:
    from bench.zoo import write_markdown

    result = {"model": "m", "package": "p", "version": "1", "exporter": "e", "features": ["f"], "metric": "labels", "light": True,
              "bytes": 800, "app_error": "", "compress": [_row(0.125, False)]}
    write_markdown([result], tmp_path / "data_free.md", "python -m bench.zoo", "abc")
    calibrated = result | {"calibration": {"inputs": ["a.png"], "recorded": 70, "feeds": 64},
                           "compress_calibrated": [_row(0.125, True, True), _row(1 / 12, False, True)]}
    write_markdown([calibrated], tmp_path / "calibrated.md", "python -m bench.zoo", "abc")
    data_free = (tmp_path / "data_free.md").read_text()
    text = (tmp_path / "calibrated.md").read_text()
    assert text.startswith(data_free) and "## Calibrated, no fine-tuning" in text
    assert "| m | 1 files: a.png | 64 (of 70) | 100 B (8.0x), identical 10/10 | 100 B (8.0x), differs 9/10 |" in text
    assert "The 10-bit control" not in text  # no control measured: no line about it
    control = result | {"control": {"exit_code": 0, "bytes": 800, "agreement": {"matched": 8, "total": 10, "identical": False,
                                                                                "detail": "line 2: 'a' -> 'b'", "score": 0.8}}}
    write_markdown([control], tmp_path / "control.md", "python -m bench.zoo", "abc")
    with_control = (tmp_path / "control.md").read_text()
    assert "| differs 8/10 (line 2: 'a' -> 'b') |" in with_control
    assert "The 10-bit control changes the task output of 1 of 1 models (m)" in with_control
    assert "- 1/8 data-free: 0/1 identical" in text and "- 1/8 calibrated: 1/1 identical" in text and "- 1/12 calibrated: 0/1" in text
