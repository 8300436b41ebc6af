"""Sample inputs: user data (.npz, a folder of .npz feeds, Python feeds) or seeded generated data.

Each input's samples lie along its own sample axis (``onnxcomp.signature``): axis 1 of a
recurrent ``state [2, batch, 128]``; an input without one (a scalar sample rate) is one value
fed whole with every batch. Feeds whose shapes differ (variable image sizes, sequence lengths)
cannot be stacked: they are kept as groups of equal-shaped feeds, and every consumer iterates
batches group by group (:func:`batches`).
"""

from __future__ import annotations

import dataclasses
import logging
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxcomp.errors import OnnxcompError
from onnxcomp.signature import InputSpec, check_values, input_specs, pinned_value

logger = logging.getLogger(__name__)

LABELS = "labels"
DEFAULT_DYNAMIC_DIM = 1
MAX_GENERATED_BYTES = 16 << 20  # generated inputs, all samples together: 3x224x224 images get 27
MAX_SAMPLE_BYTES = 256 << 20  # one generated sample at most (declared shapes come from the file)
MAX_DATA_BYTES = 4 << 30  # the arrays of an .npz (or a folder of them) that the model needs, as declared
# Over INFLATION_FLOOR, the arrays an .npz member holds may be at most MAX_INFLATION times the bytes it
# takes in the archive: a deflated member of 10 MB can hold 10 GB of zeros (real samples deflate 1-10x;
# np.savez stores them uncompressed, 1x).
INFLATION_FLOOR = 256 << 20
MAX_INFLATION = 32
Batch = Mapping[str, np.ndarray]  # one feed of the Python API's data: arrays named after the inputs (+ "labels")
FORMS = ("give an .npz with each input's samples stacked along its sample axis (inputs without one given once), "
         "or a folder of .npz files, one feed each")
FEED_FORMS = ("give feeds (dicts of arrays) with each input's samples along its sample axis (inputs without one "
              "given once); feeds may differ in shape")


def _forms(where: str) -> str:
    return FORMS if where.startswith("data ") else FEED_FORMS


class NoRunnableInputError(OnnxcompError):
    """No generated input configuration runs in ONNX Runtime; ``last_error`` is ORT's last error line."""

    def __init__(self, message: str, last_error: str = ""):
        super().__init__(message)
        self.last_error = last_error


class Feeds(dict):
    """Arrays named after the model's inputs, with each one's sample axis.

    ``axes[name]`` is the axis samples are stacked along (None: one value fed with every batch;
    inputs not listed: axis 0, or None for rank 0). When feeds differ in shape, ``groups`` holds
    the equal-shaped parts (each a Feeds) and the mapping itself shows the first of them.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray] = (), axes: Mapping[str, int | None] | None = None,
                 groups: list[Feeds] | None = None):
        super().__init__(arrays)
        self.axes: dict[str, int | None] = dict(axes or {})
        self.groups: list[Feeds] | None = groups if groups and len(groups) > 1 else None

    def axis(self, name: str) -> int | None:
        if name in self.axes:
            return self.axes[name]
        return 0 if np.ndim(self[name]) else None


def _feeds(inputs: Mapping[str, np.ndarray]) -> Feeds:
    return inputs if isinstance(inputs, Feeds) else Feeds(inputs)


def _parts(inputs: Mapping[str, np.ndarray]) -> list[Feeds]:
    feeds = _feeds(inputs)
    return feeds.groups or [feeds]


def _count(feeds: Feeds) -> int:
    counts = [np.shape(array)[feeds.axis(name)] for name, array in feeds.items() if feeds.axis(name) is not None]
    return counts[0] if counts else 1


def sample_count(inputs: Mapping[str, np.ndarray]) -> int:
    """Samples along each input's sample axis, over all groups. Inputs without a sample axis
    (a scalar flag or rate) are one value fed with every batch."""
    return sum(_count(part) for part in _parts(inputs))


def _slice(feeds: Feeds, start: int, stop: int) -> Feeds:
    arrays = {}
    for name, array in feeds.items():
        axis = feeds.axis(name)
        if axis is None:
            arrays[name] = array
        else:
            index = [slice(None)] * np.ndim(array)
            index[axis] = slice(start, stop)
            arrays[name] = array[tuple(index)]
    return Feeds(arrays, feeds.axes)


def batch(inputs: Mapping[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Samples [start, stop) of every input along its sample axis, within the group of feeds
    that holds sample ``start``; inputs without a sample axis are passed whole."""
    parts = _parts(inputs)
    for part in parts[:-1]:
        count = _count(part)
        if start < count:
            return _slice(part, start, min(stop, count))
        start, stop = start - count, stop - count
    return _slice(parts[-1], start, stop)


def batches(inputs: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Every sample once, in feeds of at most ``batch_size`` samples, group by group."""
    size = max(int(batch_size), 1)  # a model may declare a batch of 0
    for part in _parts(inputs):
        for start in range(0, _count(part), size):
            yield _slice(part, start, start + size)


def first_group(inputs: Mapping[str, np.ndarray]) -> Feeds:
    """The largest group of equal-shaped feeds (all of them when they share one shape)."""
    return _parts(inputs)[0]


def join_outputs(chunks: list[np.ndarray], sizes: list[int]) -> np.ndarray:
    """One output over consecutive batches of ``sizes`` samples: concatenated along the axis
    whose length follows the batch sizes (the output's sample axis), else - outputs that do not
    stack, e.g. from feeds of different shapes - flattened and concatenated, so that outputs are
    still compared element by element."""
    if len(chunks) == 1:
        return chunks[0]
    first = chunks[0]
    for axis in range(first.ndim):
        if all(c.ndim == first.ndim and c.shape[axis] == n and c.shape[:axis] + c.shape[axis + 1:]
               == first.shape[:axis] + first.shape[axis + 1:] for c, n in zip(chunks, sizes)):
            return np.concatenate(chunks, axis=axis)
    return np.concatenate([np.ravel(c) for c in chunks])


@dataclasses.dataclass
class Samples:
    """Sample inputs for a model: ``inputs`` (a :class:`Feeds`), optional integer ``labels`` (one
    per sample, in the order :func:`batches` visits them), and whether they were generated."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    generated: bool = False

    def __post_init__(self) -> None:
        self.inputs = _feeds(self.inputs)

    @property
    def count(self) -> int:
        return sample_count(self.inputs)

    @property
    def grouped(self) -> bool:
        """The feeds come in several shapes (they cannot be stacked into one array per input)."""
        return self.inputs.groups is not None

    @property
    def on_axis0(self) -> bool:
        """One shape, every input's samples on axis 0: the layout the training backend reads."""
        return not self.grouped and all(self.inputs.axis(name) == 0 for name in self.inputs)

    def head(self, count: int) -> Samples:
        """The first ``count`` samples (in :func:`batches` order)."""
        parts, left = [], count
        for part in _parts(self.inputs):
            if left <= 0:
                break
            parts.append(_slice(part, 0, left))
            left -= _count(parts[-1])
        inputs = parts[0] if len(parts) == 1 else Feeds(parts[0], parts[0].axes, parts)
        labels = None if self.labels is None else self.labels[:count]
        return Samples(inputs, labels, self.generated)

    def take(self, indices: np.ndarray) -> Samples:
        """The samples at ``indices`` (feeds of one shape only)."""
        if self.grouped:
            raise OnnxcompError("fine-tuning needs feeds of one shape; the data holds several (give feeds of one shape)")
        feeds = self.inputs
        arrays = {name: a if feeds.axis(name) is None else np.take(a, indices, axis=feeds.axis(name))
                  for name, a in feeds.items()}
        labels = None if self.labels is None else self.labels[indices]
        return Samples(Feeds(arrays, feeds.axes), labels, self.generated)


def load_samples(path: str | Path, model: ir.Model, values: Mapping[str, np.ndarray] | None = None) -> Samples:
    """Read sample inputs: an .npz whose arrays are named after the model's inputs (+ optional
    `labels`), stacked along each input's sample axis; or a folder of .npz files, one feed each.

    Args:
        path: the .npz file or folder.
        model: the model the inputs are for.
        values: user-pinned input values (``--input-value``), fed where the data lacks the input.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".npz" and p.is_file())
        if not files:
            raise OnnxcompError(f"data folder {path}: no .npz files in it (one .npz per feed)")
        names = _needed(model)
        feeds, left = [], MAX_DATA_BYTES
        for file in files:  # the limit is for all the files together
            feeds.append(_read_npz(file, names, left,
                                   limit_text=f"what is left of the {MAX_DATA_BYTES >> 30} GiB limit for the folder's data"))
            left -= sum(array.nbytes for array in feeds[-1].values())
        return samples_from_feeds(feeds, model, f"data folder {path}", values, [f.name for f in files])
    if not path.is_file():
        raise OnnxcompError(f"data file {path}: no such file")
    arrays = _read_npz(path, _needed(model), MAX_DATA_BYTES)
    return samples_from_arrays(arrays, model, f"data file {path}", values)


def _needed(model: ir.Model) -> set[str]:
    return {v.name for v in model.graph.inputs} | {LABELS}


def check_samples(path: str | Path, model: ir.Model) -> None:
    """The checks `load_samples` makes before reading any array (a readable .npz, or a folder of
    them, whose needed arrays are numeric and within the size limits), reading only headers."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.suffix == ".npz" and p.is_file()) if path.is_dir() else [path]
    left = MAX_DATA_BYTES
    for file in files:
        left -= _read_npz(file, _needed(model), left, headers_only=True)


def _read_npz(path: Path, names: set[str], limit: int, limit_text: str = "", headers_only: bool = False):
    """The members of an .npz that are in ``names``, after checking their declared sizes (at most
    ``limit`` bytes together, and over INFLATION_FLOOR at most MAX_INFLATION times what they take
    in the archive): the others are never read (an unused multi-GB member costs nothing). With
    ``headers_only``, only the checks: returns the bytes the arrays declare."""
    try:
        with open(path, "rb") as file:
            magic = file.read(6)
    except OSError as error:
        raise OnnxcompError(f"data file {path}: cannot read it ({error.strerror})") from None
    if magic == b"\x93NUMPY":
        raise OnnxcompError(f"data file {path} is a single .npy array; onnxcomp reads an .npz with one array per "
                            "model input, e.g. np.savez('data.npz', input=array), or a folder of such .npz feeds")
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
            total = stored = 0
            for name in sorted(set(members) & names):
                with archive.open(members[name]) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)  # 3.0 differs only in encoding
                    shape, _, dtype = read_header(member)  # the header only, not the data
                if dtype.hasobject:
                    raise OnnxcompError(f"data file {path}: array {name!r} holds Python objects (pickled); "
                                        "give numeric arrays")
                total += int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
                stored += members[name].compress_size
                if total > limit:
                    raise OnnxcompError(f"data file {path}: the arrays the model needs declare {total:.3g} bytes, "
                                        f"over {limit_text or f'the {limit >> 30} GiB limit for sample data'}; "
                                        "give fewer samples")
                if total > INFLATION_FLOOR and total > MAX_INFLATION * stored:
                    raise OnnxcompError(f"data file {path}: the arrays the model needs declare {total:.3g} bytes from "
                                        f"{stored:,} compressed bytes ({total / max(stored, 1):.0f}:1; over "
                                        f"{INFLATION_FLOOR >> 20} MiB the limit is {MAX_INFLATION}:1, against "
                                        "compression bombs); save them uncompressed (np.savez) or give fewer samples")
            if headers_only:
                return total
            skipped = sorted(set(members) - names)
            if skipped:
                logger.warning("%s: ignoring arrays %s (not model inputs)", path, ", ".join(skipped))
            with np.load(path, allow_pickle=False) as npz:
                for name in sorted(set(members) & names):
                    arrays[name] = npz[name]
    except OnnxcompError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError, NotImplementedError, RuntimeError,
            zlib.error) as error:  # a corrupt, truncated, encrypted or oddly compressed archive
        raise OnnxcompError(f"data file {path}: not a readable .npz ({error})") from None
    return arrays


def as_samples(data: Samples | Iterable[Batch] | None, model: ir.Model, what: str = "data",
               values: Mapping[str, np.ndarray] | None = None) -> Samples | None:
    """The Python API's data: `Samples`, or an iterable of feeds - dicts of arrays named after the
    model's inputs (plus optional integer `labels`), as ONNX Runtime's CalibrationDataReader
    yields them. Feeds of one shape are joined along each input's sample axis; feeds of other
    shapes form groups. (Training reads samples in random order each epoch: they are held in memory.)"""
    if data is None or isinstance(data, Samples):
        return data
    if isinstance(data, Mapping):
        raise OnnxcompError(f"{what}: pass Samples or an iterable of feeds (dicts of arrays), not one dict; "
                            "wrap a single feed in a list")
    feeds = []
    for number, item in enumerate(data):
        if not isinstance(item, Mapping):
            raise OnnxcompError(f"{what}: batch {number} is a {type(item).__name__}, expected a dict of arrays")
        if feeds and set(item) != set(feeds[0]):
            raise OnnxcompError(f"{what}: batch {number} has arrays {sorted(item)}, batch 0 had {sorted(feeds[0])}")
        feeds.append({name: np.asarray(array) for name, array in item.items()})
    if not feeds:
        raise OnnxcompError(f"{what}: the iterable of batches is empty")
    return samples_from_feeds(feeds, model, what, values, [f"batch {n}" for n in range(len(feeds))])


def samples_from_feeds(feeds: list[Mapping[str, np.ndarray]], model: ir.Model, where: str,
                       values: Mapping[str, np.ndarray] | None = None, labels_of: list[str] | None = None) -> Samples:
    """Join complete feeds: those of one shape (apart from the sample axis) stack along each
    input's sample axis; each other shape becomes a group of its own."""
    specs = input_specs(model)
    groups: dict[tuple, list[dict[str, np.ndarray]]] = {}
    for number, feed in enumerate(feeds):
        label = labels_of[number] if labels_of else f"feed {number}"
        checked = _checked(feed, specs, f"{where}: {label}", values)
        key = tuple((s.name, _without(checked.inputs[s.name].shape, s.sample_axis),
                     None if s.sample_axis is not None else checked.inputs[s.name].tobytes()) for s in specs)
        groups.setdefault(key, []).append({**checked.inputs, **({} if checked.labels is None else {LABELS: checked.labels})})
    parts, labels = [], []
    axes = {s.name: s.sample_axis for s in specs}
    for members in sorted(groups.values(), key=lambda m: -sum(_count(Feeds(f, axes)) for f in m)):
        arrays = {}
        for spec in specs:
            if spec.sample_axis is None:
                arrays[spec.name] = members[0][spec.name]
            else:
                arrays[spec.name] = np.concatenate([m[spec.name] for m in members], axis=spec.sample_axis)
        parts.append(Feeds(arrays, axes))
        labels.append([m.get(LABELS) for m in members])
    has_labels = {label is not None for group in labels for label in group}
    if len(has_labels) > 1:
        raise OnnxcompError(f"{where}: some feeds have 'labels' and some do not")
    joined = np.concatenate([l for group in labels for l in group]) if has_labels == {True} else None
    inputs = parts[0] if len(parts) == 1 else Feeds(parts[0], axes, parts)
    if len(parts) > 1:
        logger.info("%s: %d feeds in %d shapes, run group by group", where, len(feeds), len(parts))
    return Samples(inputs, joined)


def _without(shape: tuple[int, ...], axis: int | None) -> tuple[int, ...]:
    return shape if axis is None else shape[:axis] + shape[axis + 1:]


def samples_from_arrays(arrays: Mapping[str, np.ndarray], model: ir.Model, where: str,
                        values: Mapping[str, np.ndarray] | None = None) -> Samples:
    """Check arrays named after the model's inputs (+ optional `labels`), each input's samples
    stacked along its own sample axis, and make them Samples."""
    samples = _checked(arrays, input_specs(model), where, values)
    if not samples.count:
        raise OnnxcompError(f"{where}: contains no samples")
    return samples


def _checked(arrays: Mapping[str, np.ndarray], specs: list[InputSpec], where: str,
             values: Mapping[str, np.ndarray] | None) -> Samples:
    values = values or {}
    check_values(specs, values)
    missing = [s.name for s in specs if s.name not in arrays and s.name not in values]
    if missing:
        raise OnnxcompError(
            f"{where}: no array for model input(s) {', '.join(missing)}; it has {', '.join(sorted(arrays)) or 'no arrays'}"
            " (or pin a value with --input-value NAME=V)"
        )
    extra = [k for k in arrays if k not in {s.name for s in specs} and k != LABELS]
    if extra:
        logger.warning("%s: ignoring arrays %s (not model inputs)", where, ", ".join(extra))
    inputs: dict[str, np.ndarray] = {}
    count, counted = None, None
    for spec in specs:
        if spec.name not in arrays:
            continue
        array = _cast(np.asarray(arrays[spec.name]), spec, where)
        _check_shape(array, spec, where)
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise OnnxcompError(f"{where}: array {spec.name!r} contains NaN or inf")
        if spec.sample_axis is not None:
            length = array.shape[spec.sample_axis]
            if count is not None and length != count:
                raise OnnxcompError(
                    f"{where}: {spec.name!r} has {length} samples along axis {spec.sample_axis}, {counted!r} has "
                    f"{count}; {_forms(where)}")
            count, counted = length, spec.name
        inputs[spec.name] = array
    for spec in specs:
        if spec.name not in arrays:
            inputs[spec.name] = pinned_value(spec, values[spec.name], count or 1)
    labels = arrays.get(LABELS)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != (count or 1):
            raise OnnxcompError(f"{where}: 'labels' must be one integer per sample ({count or 1}), got shape {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise OnnxcompError(f"{where}: 'labels' must be integers, got {labels.dtype}")
    return Samples(Feeds(inputs, {s.name: s.sample_axis for s in specs}), labels)


def _cast(array: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    expected = spec.dtype
    if expected is None or array.dtype == expected:
        return array
    if np.can_cast(array.dtype, expected, casting="same_kind"):
        return array.astype(expected)
    raise OnnxcompError(f"{where}: array {spec.name!r} has dtype {array.dtype}, the model expects {expected}")


def _check_shape(array: np.ndarray, spec: InputSpec, where: str) -> None:
    if spec.dims is None:
        return
    where_samples = ("one value shared by all samples: give it once, not per sample" if spec.sample_axis is None
                     else f"samples along axis {spec.sample_axis}")
    if array.ndim != len(spec.dims) or any(
            isinstance(dim, int) and axis != spec.sample_axis and array.shape[axis] != dim
            for axis, dim in enumerate(spec.dims)):
        raise OnnxcompError(f"{where}: array {spec.name!r} has shape {list(array.shape)}, the model expects "
                            f"{spec.describe()} ({where_samples}); {_forms(where)}")


def generate_samples(model: ir.Model, count: int = 64, seed: int = 0, shapes: Mapping[str, Iterable[int]] | None = None,
                     values: Mapping[str, np.ndarray] | None = None, sizes: Mapping[str, int] | None = None) -> Samples:
    """Seeded inputs from the declared shapes and dtypes.

    Args:
        model: the model.
        count: samples along each input's sample axis (fewer when the inputs are large).
        seed: the random seed.
        shapes: user-pinned shapes (``--input-shape``).
        values: user-pinned values (``--input-value``), fed with every sample.
        sizes: sizes of the dynamic dims (see ``onnxcomp.probe``); unlisted ones get a first guess from their name.

    Integer inputs that index an embedding table cover the whole id range the table allows;
    masks (``*mask*``) and booleans are all ones.
    """
    from onnxcomp.probe import dim_sizes  # the first guess per dynamic dim

    rng = np.random.default_rng(seed)
    specs = input_specs(model, {k: tuple(v) for k, v in (shapes or {}).items()})
    sizes = dict(dim_sizes(model, specs)) | dict(sizes or {})
    values = values or {}
    check_values(specs, values)
    per_sample = 0.0
    for spec in specs:
        if spec.dims is None:
            raise OnnxcompError(f"model input {spec.name!r} has no shape; pass --data with sample inputs or --input-shape")
        _generated_dtype(spec)
        if spec.sample_axis is not None:
            per_sample += spec.dtype.itemsize * float(np.prod(_shape(spec, sizes, 1), dtype=np.float64)) / \
                _shape(spec, sizes, 1)[spec.sample_axis]
    # Declared shapes come from the file: cap what they make us allocate (fewer samples first).
    if per_sample > MAX_SAMPLE_BYTES:
        raise OnnxcompError(f"model inputs declare {per_sample:.3g} bytes per sample, too large to generate test inputs; "
                            "pass --data with sample inputs or a smaller --input-shape")
    count = max(1, min(count, MAX_GENERATED_BYTES // max(int(per_sample), 1)))
    inputs = {}
    for spec in specs:
        if spec.name in values:
            inputs[spec.name] = pinned_value(spec, values[spec.name], count)
            continue
        shape = _shape(spec, sizes, count)
        dtype = spec.dtype
        if dtype.kind == "f":
            array = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b" or "mask" in spec.name.lower():
            array = np.ones(shape, dtype=dtype)
        else:
            rows = _integer_bound(model, spec.name)
            # Every id the table allows, shuffled: rows that look unused would be pruned away.
            ids = np.resize(np.arange(rows), max(int(np.prod(shape)), 1))
            array = rng.permutation(ids)[: int(np.prod(shape))].reshape(shape).astype(dtype)
        inputs[spec.name] = array
    return Samples(Feeds(inputs, {s.name: s.sample_axis for s in specs}), None, generated=True)


def _shape(spec: InputSpec, sizes: Mapping[str, int], count: int) -> list[int]:
    if spec.pinned is not None:
        shape = list(spec.pinned)
        if spec.sample_axis is not None:
            shape[spec.sample_axis] = count
        return shape
    shape = []
    for axis, dim in enumerate(spec.dims or ()):
        if axis == spec.sample_axis:
            shape.append(count)
        elif isinstance(dim, int):
            shape.append(dim)
        else:
            shape.append(int(sizes.get(dim_key(spec, axis), DEFAULT_DYNAMIC_DIM)))
    return shape


def dim_key(spec: InputSpec, axis: int) -> str:
    """The name a dynamic dim goes by: its ``dim_param`` (shared by the inputs), else ``input[axis]``."""
    dim = spec.dims[axis] if spec.dims else None
    return dim if isinstance(dim, str) else f"{spec.name}[{axis}]"


def _generated_dtype(spec: InputSpec) -> np.dtype:
    if spec.dtype is None or spec.dtype.kind not in "fiub":
        raise OnnxcompError(f"model input {spec.name!r} has a type onnxcomp cannot generate (only numeric tensors); "
                            "pass --data with sample inputs")
    return spec.dtype


def _integer_bound(model: ir.Model, name: str) -> int:
    """Upper bound (exclusive) for generated integer inputs: the rows of the smallest table they
    index (Gather), the depth of a OneHot, or the ids an ``Equal`` compares them with (a one-hot
    built by hand, as tf2onnx exports it) - followed through shape and type changes; else 2."""
    value = next(v for v in model.graph.inputs if v.name == name)
    bounds = []
    frontier, seen = [value], set()
    while frontier:
        current = frontier.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for node, index in current.uses():
            other = node.inputs[1 - index] if node.op_type == "Equal" and len(node.inputs) == 2 else None
            if node.op_type == "Gather" and index == 1 and node.inputs[0] is not None:
                data = node.inputs[0]
                if data.shape is not None and len(data.shape) and isinstance(data.shape[0], int) and data.shape[0] > 0:
                    bounds.append(data.shape[0])
            elif node.op_type == "OneHot" and index == 0 and _constant(node.inputs[1]) is not None:
                bounds.append(int(np.max(_constant(node.inputs[1]))))
            elif other is not None and (ids := _constant(other)) is not None and ids.dtype.kind in "iu" and ids.size:
                if 0 <= ids.min() and ids.max() < (1 << 24):
                    bounds.append(int(ids.max()) + 1)
            elif node.op_type in ("Cast", "Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity", "Expand") and index == 0:
                frontier.extend(node.outputs)
    return min(bounds) if bounds else 2


def _constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    tensor = value.const_value
    if tensor is None and value.producer() is not None and value.producer().op_type == "Constant":
        attribute = value.producer().attributes.get("value")
        tensor = attribute.as_tensor() if attribute is not None else None
    return None if tensor is None else tensor.numpy()
