"""Sample inputs: user data (.npz, a folder of .npz feeds, Python feeds) or seeded generated data.

Each input's samples lie along its own sample axis (``onnxcomp.samples.signature``): axis 1 of a
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
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxcomp.errors import OnnxcompError
from onnxcomp.samples.feeds import (  # noqa: F401  (batch, batches, first_group, join_outputs: re-exported)
    Feeds, as_feeds, batch, batches, feed_groups, first_group, group_count, join_outputs, sample_count, slice_feeds)
from onnxcomp.samples.signature import InputSpec, check_values, input_specs, pinned_value

logger = logging.getLogger(__name__)

LABELS = "labels"
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
    """No generated input gives the original model's outputs to compare with: no configuration
    runs in ONNX Runtime (``last_error`` is its last error line), or an output is NaN or infinite
    on every generated input (``why`` says which)."""

    def __init__(self, message: str, last_error: str = "", why: str = "no generated input ran in ONNX Runtime"):
        super().__init__(message)
        self.last_error = last_error
        self.why = why


@dataclasses.dataclass
class Samples:
    """Sample inputs for a model: ``inputs`` (a :class:`Feeds`), optional integer ``labels`` (one
    per sample, in the order :func:`batches` visits them), and whether they were generated."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    generated: bool = False
    batch: int = 1  # a model that runs exactly this many samples at a time: `head` keeps whole batches

    def __post_init__(self) -> None:
        self.inputs = as_feeds(self.inputs)

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
        """The first ``count`` samples (in :func:`batches` order), rounded down to whole batches
        (at least one) where the model runs a fixed batch."""
        if self.batch > 1 and not self.grouped:
            count = min(self.count, max(self.batch, count - count % self.batch))
        parts, left = [], count
        for part in feed_groups(self.inputs):
            if left <= 0:
                break
            parts.append(slice_feeds(part, 0, left))
            left -= group_count(parts[-1])
        inputs = parts[0] if len(parts) == 1 else Feeds(parts[0], parts[0].axes, parts)
        labels = None if self.labels is None else self.labels[:count]
        return Samples(inputs, labels, self.generated, self.batch)

    def take(self, indices: np.ndarray) -> Samples:
        """The samples at ``indices`` (feeds of one shape only)."""
        if self.grouped:
            raise OnnxcompError("fine-tuning needs feeds of one shape; the data holds several (give feeds of one shape)")
        feeds = self.inputs
        arrays = {name: a if feeds.axis(name) is None else np.take(a, indices, axis=feeds.axis(name))
                  for name, a in feeds.items()}
        labels = None if self.labels is None else self.labels[indices]
        return Samples(Feeds(arrays, feeds.axes), labels, self.generated, self.batch)


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
    for members in sorted(groups.values(), key=lambda m: -sum(group_count(Feeds(f, axes)) for f in m)):
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
            f"{where}: no array for model input(s) {', '.join(missing)}; "
            f"it has {', '.join(sorted(arrays)) or 'no arrays named like model inputs'} (or pin a value with --input-value NAME=V)"
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
