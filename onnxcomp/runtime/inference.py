"""Running models in ONNX Runtime (whichever build is installed: training or plain)."""

from __future__ import annotations

import logging
import os

import numpy as np
import onnx

from onnxcomp.errors import OnnxcompError

logger = logging.getLogger(__name__)


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise OnnxcompError("onnxruntime is not installed: pip install 'onnxcomp[ort]' (or '[train]')") from None
    return onnxruntime


def session(model: onnx.ModelProto | bytes | str | os.PathLike, threads: int | None = None):
    """An InferenceSession on the CPU provider (the reference every other provider must match)."""
    ort = _ort()
    options = ort.SessionOptions()
    # 4 = fatal only: kernel failures are raised as exceptions (and turned into one-line
    # errors below); at 3 ORT also prints them to stderr in colour.
    options.log_severity_level = 4
    if threads:
        options.intra_op_num_threads = threads
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own exception types per build
        message = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise OnnxcompError(f"ONNX Runtime cannot load the model: {message}") from None


def run_batches(sess, inputs: dict[str, np.ndarray], batch_size: int = 256) -> list[np.ndarray]:
    """Run all samples through a session in batches (group by group, each input along its own
    sample axis); returns each output joined along its sample axis (``data.join_outputs``)."""
    from onnxcomp.data import batches, join_outputs, sample_count

    names = [o.name for o in sess.get_outputs()]
    chunks: list[list[np.ndarray]] = [[] for _ in names]
    sizes: list[int] = []
    for feed in batches(inputs, batch_size):
        sizes.append(sample_count(feed))
        try:
            results = sess.run(names, feed)
        except Exception as error:
            message = str(error).strip().splitlines()[0][:300]
            raise OnnxcompError(f"ONNX Runtime failed to run the model on the sample inputs: {message}") from None
        for chunk, result in zip(chunks, results):
            chunk.append(np.asarray(result))
    return [join_outputs(chunk, sizes) for chunk in chunks]
