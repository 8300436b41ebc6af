"""Sample inputs: user data from .npz (arrays named after graph inputs) or seeded generated data."""

from __future__ import annotations

import dataclasses
import logging
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxcomp.errors import OnnxcompError

logger = logging.getLogger(__name__)

LABELS = "labels"
DEFAULT_DYNAMIC_DIM = 1
MAX_GENERATED_BYTES = 256 << 20  # generated inputs, all samples together
Batch = Mapping[str, np.ndarray]  # one batch of the Python API's data: arrays named after the inputs (+ "labels")


class NoRunnableInputError(OnnxcompError):
    """No generated input configuration runs in ONNX Runtime; ``last_error`` is ORT's last error line."""

    def __init__(self, message: str, last_error: str = ""):
        super().__init__(message)
        self.last_error = last_error


@dataclasses.dataclass
class Samples:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    generated: bool = False

    @property
    def count(self) -> int:
        return sample_count(self.inputs)

    def head(self, count: int) -> "Samples":
        labels = None if self.labels is None else self.labels[:count]
        return Samples(batch(self.inputs, 0, count), labels, self.generated)

    def take(self, indices: np.ndarray) -> "Samples":
        labels = None if self.labels is None else self.labels[indices]
        return Samples({k: v[indices] if v.ndim else v for k, v in self.inputs.items()}, labels, self.generated)


def sample_count(inputs: dict[str, np.ndarray]) -> int:
    """Samples along the first axis. Rank-0 inputs (flags such as an If condition) have no
    sample axis: the one value is fed with every batch."""
    counts = [len(v) for v in inputs.values() if np.ndim(v)]
    return counts[0] if counts else 1


def batch(inputs: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Samples [start, stop) of every input; rank-0 inputs are passed whole."""
    return {k: v[start:stop] if np.ndim(v) else v for k, v in inputs.items()}


def _numpy_dtype(value: ir.Value) -> np.dtype:
    return value.dtype.numpy()  # type: ignore[union-attr]


def load_samples(path: str | Path, model: ir.Model) -> Samples:
    """Read an .npz whose arrays are named after the model's inputs (+ optional `labels`)."""
    path = Path(path)
    if not path.is_file():
        raise OnnxcompError(f"data file {path}: no such file")
    try:
        archive = np.load(path, allow_pickle=False)
        arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as error:
        raise OnnxcompError(f"data file {path}: not a readable .npz ({error})") from None
    return samples_from_arrays(arrays, model, f"data file {path}")


def as_samples(data: Samples | Iterable[Batch] | None, model: ir.Model,
               what: str = "data") -> Samples | None:
    """The Python API's data: `Samples`, or an iterable of batches - dicts of arrays named after
    the model's inputs, plus optional integer `labels` - joined along the sample axis and checked
    as an .npz would be. (Training reads the samples in random order each epoch, so they are held
    in memory.)"""
    if data is None or isinstance(data, Samples):
        return data
    if isinstance(data, Mapping):
        raise OnnxcompError(f"{what}: pass Samples or an iterable of batches (dicts of arrays), not one dict; "
                            "wrap a single batch in a list")
    parts: dict[str, list[np.ndarray]] = {}
    count = 0
    for number, item in enumerate(data):
        if not isinstance(item, Mapping):
            raise OnnxcompError(f"{what}: batch {number} is a {type(item).__name__}, expected a dict of arrays")
        if parts and set(item) != set(parts):
            raise OnnxcompError(f"{what}: batch {number} has arrays {sorted(item)}, batch 0 had {sorted(parts)}")
        for name, array in item.items():
            parts.setdefault(name, []).append(np.asarray(array))
        count = number + 1
    if not count:
        raise OnnxcompError(f"{what}: the iterable of batches is empty")
    try:
        arrays = {name: arrays[0] if arrays[0].ndim == 0 else np.concatenate(arrays) for name, arrays in parts.items()}
    except ValueError as error:
        raise OnnxcompError(f"{what}: batches do not stack along the sample axis ({error})") from None
    return samples_from_arrays(arrays, model, what)


def samples_from_arrays(arrays: Mapping[str, np.ndarray], model: ir.Model, where: str) -> Samples:
    """Check arrays named after the model's inputs (+ optional `labels`) and make them Samples."""
    names = [v.name for v in model.graph.inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise OnnxcompError(
            f"{where}: no array for model input(s) {', '.join(missing)}; it has {', '.join(sorted(arrays)) or 'no arrays'}"
        )
    extra = [k for k in arrays if k not in names and k != LABELS]
    if extra:
        logger.warning("%s: ignoring arrays %s (not model inputs)", where, ", ".join(extra))
    inputs: dict[str, np.ndarray] = {}
    count = None
    for value in model.graph.inputs:
        array = arrays[value.name]
        expected = _numpy_dtype(value)
        if array.dtype != expected:
            if np.can_cast(array.dtype, expected, casting="same_kind"):
                array = array.astype(expected)
            else:
                raise OnnxcompError(f"{where}: array {value.name!r} has dtype {array.dtype}, the model expects {expected}")
        shape = value.shape
        if shape is not None:
            if array.ndim != len(shape):
                raise OnnxcompError(
                    f"{where}: array {value.name!r} has shape {array.shape}, the model expects rank {len(shape)} ({_shape_text(shape)})"
                )
            for axis, dim in enumerate(shape):
                if isinstance(dim, int) and axis > 0 and array.shape[axis] != dim:
                    raise OnnxcompError(
                        f"{where}: array {value.name!r} has shape {array.shape}, the model expects {_shape_text(shape)}"
                    )
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise OnnxcompError(f"{where}: array {value.name!r} contains NaN or inf")
        if array.ndim == 0:  # a per-run scalar (e.g. a flag): no sample axis
            inputs[value.name] = array
            continue
        if count is not None and len(array) != count:
            raise OnnxcompError(f"{where}: inputs have different sample counts ({count} vs {len(array)})")
        count = len(array)
        inputs[value.name] = array
    if not count:
        raise OnnxcompError(f"{where}: contains no samples")
    labels = arrays.get(LABELS)
    if labels is not None:
        if labels.ndim != 1 or len(labels) != count:
            raise OnnxcompError(f"{where}: 'labels' must be one integer per sample ({count}), got shape {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise OnnxcompError(f"{where}: 'labels' must be integers, got {labels.dtype}")
    return Samples(inputs, labels)


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else str(d) for d in shape) + "]"


def generate_samples(model: ir.Model, count: int = 64, seed: int = 0) -> Samples:
    """Seeded inputs from the declared shapes and dtypes (symbolic dims: batch = count, else 1).

    Integer inputs (token ids, masks) are drawn small and non-negative; masks named like
    '*mask*' are all ones, so generated inputs stay valid for embedding lookups.
    """
    rng = np.random.default_rng(seed)
    specs = []
    for value in model.graph.inputs:
        dtype = _generated_dtype(value)
        shape = value.shape
        if shape is None:
            raise OnnxcompError(f"model input {value.name!r} has no shape; pass --data with sample inputs")
        rest = [d if isinstance(d, int) else 16 for d in list(shape)[1:]]
        if any(isinstance(d, int) and d < 0 for d in shape):
            raise OnnxcompError(f"model input {value.name!r} declares a negative dimension {_shape_text(shape)}")
        specs.append((value, dtype, len(shape), rest))
    # Declared shapes come from the file: cap what they make us allocate (fewer samples first).
    per_sample = sum(dtype.itemsize * int(np.prod(rest, dtype=np.float64)) for _, dtype, rank, rest in specs if rank)
    if per_sample > MAX_GENERATED_BYTES:
        raise OnnxcompError(f"model inputs declare {per_sample:.3g} bytes per sample, too large to generate test inputs; pass --data with sample inputs")
    count = max(1, min(count, MAX_GENERATED_BYTES // max(int(per_sample), 1)))
    inputs = {}
    for value, dtype, rank, rest in specs:
        dims = [count] + rest if rank else []
        if dtype.kind == "f":
            array = rng.standard_normal(dims).astype(dtype)
        elif dtype.kind == "b":
            array = np.ones(dims, dtype=dtype)
        elif "mask" in (value.name or "").lower():
            array = np.ones(dims, dtype=dtype)
        else:
            array = rng.integers(0, _integer_bound(model, value), size=dims).astype(dtype)
        inputs[value.name] = array
    return Samples(inputs, None, generated=True)


def _generated_dtype(value: ir.Value) -> np.dtype:
    try:
        dtype = np.dtype(_numpy_dtype(value))
    except Exception:  # no type, or a type numpy cannot hold (e.g. 4-bit, sequence, optional)
        dtype = None
    if dtype is None or dtype.kind not in "fiub":
        raise OnnxcompError(f"model input {value.name!r} has type {value.type}; onnxcomp can only generate numeric tensors, pass --data with sample inputs")
    return dtype


def _integer_bound(model: ir.Model, value: ir.Value) -> int:
    """Upper bound for generated integer inputs: the smallest table they index, else 2."""
    bound = None
    for node, index in value.uses():
        if node.op_type == "Gather" and index == 1 and node.inputs[0] is not None:
            data = node.inputs[0]
            if data.shape is not None and isinstance(data.shape[0], int):
                bound = data.shape[0] if bound is None else min(bound, data.shape[0])
    return bound or 2
