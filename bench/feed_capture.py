"""Record the feeds an application passes to one ONNX model, as a folder of .npz files.

The zoo's calibrated mode runs a package's own application code on calibration inputs with
`onnxruntime.InferenceSession.run` wrapped, so the samples `onnxcomp compress --data` sees are
exactly the tensors the application feeds the model (its resizing, padding, batching, and for
recurrent models the state it carries from call to call). Only the sessions of the given model
file are recorded: an application that runs several models (RapidOCR's det, cls and rec) feeds
the others unrecorded.

The folder holds one complete feed per file (`feed_00000.npz`, ...), the per-feed folder format
`onnxcomp compress --data FOLDER` reads; feeds may differ in shape.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)


class FeedRecorder:
    """Writes each feed given to a session of `model` into `folder`, in call order."""

    def __init__(self, model: Path, folder: Path) -> None:
        self.model_path = Path(model).resolve()
        self.model_bytes = self.model_path.read_bytes()
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.recorded = 0
        self.other_calls = 0

    def is_model_session(self, session: Any) -> bool:
        """Whether `session` was made from the recorded model (by path, or by its bytes)."""
        path = getattr(session, "_model_path", None)
        if path:
            return Path(path).resolve() == self.model_path
        data = getattr(session, "_model_bytes", None)
        return data is not None and bytes(data) == self.model_bytes

    def record(self, feed: Mapping[str, Any]) -> None:
        arrays = {name: _as_array(value) for name, value in feed.items()}
        np.savez(self.folder / f"feed_{self.recorded:05d}.npz", **arrays)
        self.recorded += 1


def _as_array(value: Any) -> np.ndarray:
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):  # OrtValue
        return np.asarray(value.numpy())
    return np.asarray(value)


@contextlib.contextmanager
def recording_feeds(model: Path, folder: Path) -> Iterator[FeedRecorder]:
    """Within the block, every `InferenceSession.run` on a session of `model` also saves its feed.

    The wrapper sits on the class, so sessions the application makes inside the block, and ones
    it made before, are both covered; the original `run` is put back on leaving.
    """
    import onnxruntime

    recorder = FeedRecorder(model, folder)
    original_run = onnxruntime.InferenceSession.run

    def run(session: Any, output_names: Any, input_feed: Mapping[str, Any], run_options: Any = None) -> Any:
        if recorder.is_model_session(session):
            recorder.record(input_feed)
        else:
            recorder.other_calls += 1
        return original_run(session, output_names, input_feed, run_options)

    onnxruntime.InferenceSession.run = run
    try:
        yield recorder
    finally:
        onnxruntime.InferenceSession.run = original_run


def keep_evenly_spaced(folder: Path, limit: int) -> list[Path]:
    """Keep at most `limit` feeds of `folder`, evenly spaced over the recorded order (the first
    and the last included), and delete the rest; returns the kept files in order.

    Recurrent applications call the model once per frame, so the first `limit` calls would all
    come from the start of the first input; spacing them covers every input.
    """
    files = sorted(Path(folder).glob("feed_*.npz"))
    if len(files) <= limit:
        return files
    if limit <= 1:
        keep = {0} if limit == 1 else set()
    else:
        keep = {round(i * (len(files) - 1) / (limit - 1)) for i in range(limit)}
    kept = []
    for index, path in enumerate(files):
        if index in keep:
            kept.append(path)
        else:
            path.unlink()
    return kept
