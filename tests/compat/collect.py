"""Save every model `onnxcomp.pipeline.compress_model` returns during a test run, with a few
inputs and the outputs of the ONNX Runtime that produced it, for `run_compat.py`.

Enabled by `tests/conftest.py` when ONNXCOMP_COMPAT_DIR is set. Each model is stored once (by
content hash) as `<hash>.onnx` plus `<hash>.npz` (`in:<input name>`, `out:<output name>`) and
`<hash>.json` (the test that produced it, the ONNX Runtime version).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

ENV_VAR = "ONNXCOMP_COMPAT_DIR"
SAMPLES = 4


def enabled_folder() -> Path | None:
    folder = os.environ.get(ENV_VAR)
    return Path(folder) if folder else None


def install(folder: Path):
    """Wrap `onnxcomp.pipeline.compress_model` so each result is saved; returns an undo callable.

    Call before test modules are imported (pytest_configure), so that `from onnxcomp.pipeline
    import compress_model` in a test module also gets the wrapper.
    """
    from onnxcomp import pipeline

    folder.mkdir(parents=True, exist_ok=True)
    original = pipeline.compress_model

    def compress_model(model, options, samples=None, *args, **kwargs):
        result = original(model, options, samples, *args, **kwargs)
        if result.report.verified:  # an unverified model has no input known to run
            save(folder, result, samples, options)
        return result

    compress_model.__doc__ = original.__doc__
    pipeline.compress_model = compress_model

    def undo() -> None:
        pipeline.compress_model = original

    return undo


def _inputs(model, samples, options=None) -> dict[str, np.ndarray]:
    """A few inputs the model runs on: the head of the given samples, else generated ones in the
    configuration the pipeline would probe (with the user's pinned shapes and values)."""
    from onnxcomp.samples.data import Samples, first_group
    from onnxcomp.samples.probe import generated_samples

    from onnxcomp.samples.signature import fixed_batch

    shapes = getattr(options, "input_shapes", None)
    values = getattr(options, "input_values", None)
    count = fixed_batch(model, shapes) or SAMPLES  # the batch the user pins or the model declares
    if isinstance(samples, Samples) and samples.count >= count:
        return dict(first_group(samples.head(count).inputs))
    return dict(first_group(generated_samples(model, count=count, seed=1, shapes=shapes, values=values).inputs))


# Ops that quantize a computed tensor: ONNX Runtime versions fuse them into different integer
# kernels, whose rounding differs by up to a quantization step (an uncompressed QDQ MLP's outputs
# differ by 0.0129 on magnitude 3.6 between onnxruntime 1.19.2 and 1.32.0, measured 2026-12-05).
ACTIVATION_QUANTIZERS = {"QuantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                         "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"}


def quantizes_activations(model) -> bool:
    """Whether a node of `ACTIVATION_QUANTIZERS` reads a value computed from the graph inputs
    (not a weight or a decode subgraph of weights, which ONNX Runtime folds at load)."""
    from onnx_ir.traversal import RecursiveGraphIterator

    def from_inputs(value, seen: set[int]) -> bool:
        if value is None or value.const_value is not None or id(value) in seen:
            return False
        seen.add(id(value))
        producer = value.producer()
        if producer is None:  # not a constant and computed by no node: a graph input
            return True
        return any(from_inputs(operand, seen) for operand in producer.inputs)

    return any(node.op_type in ACTIVATION_QUANTIZERS and node.inputs and from_inputs(node.inputs[0], set())
               for node in RecursiveGraphIterator(model.graph))


def _storable(value) -> np.ndarray:
    """String tensors (object arrays from ONNX Runtime) as fixed-width unicode: `np.load` reads
    object arrays only with pickling, which run_compat.py (rightly) leaves off."""
    array = np.asarray(value)
    return array.astype(str) if array.dtype == object else array


def save(folder: Path, result, samples, options=None) -> None:
    import onnxruntime

    from onnxcomp.runtime.inference import session

    digest = hashlib.sha256(result.data).hexdigest()[:16]
    if (folder / f"{digest}.json").exists():
        return
    inputs = _inputs(result.model, samples, options)
    sess = session(result.data)
    outputs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, inputs)))
    (folder / f"{digest}.onnx").write_bytes(result.data)
    np.savez(folder / f"{digest}.npz", **{f"in:{k}": _storable(v) for k, v in inputs.items()},
             **{f"out:{k}": _storable(v) for k, v in outputs.items()})
    info = {"test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0],
            "onnxruntime": onnxruntime.__version__, "bytes": len(result.data),
            "quantizes_activations": quantizes_activations(result.model)}
    # Written last: its presence marks a complete entry.
    (folder / f"{digest}.json").write_text(json.dumps(info, indent=1))


def save_file(path: Path, samples=None) -> None:
    """Save a compressed model file written by another process (e.g. a sweep worker), if enabled."""
    folder = enabled_folder()
    if folder is None:
        return
    from types import SimpleNamespace

    from onnxcomp.modelfile import load_model

    folder.mkdir(parents=True, exist_ok=True)
    save(folder, SimpleNamespace(data=Path(path).read_bytes(), model=load_model(path)), samples)
