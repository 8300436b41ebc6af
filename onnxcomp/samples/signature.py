"""A model's input signature: dynamic dims, each input's sample axis, pinned shapes and values.

Exporters spell a dynamic dimension as a ``dim_param`` (``batch``), ``-1``, ``0`` or a dim with
no value at all; all four mean "any size". The sample (batch) axis of an input is where the
symbolic dimension the inputs share sits - axis 1 of a recurrent ``state [2, batch, 128]`` - and
an input without it (a scalar sample rate, a fixed table) is one value fed with every batch.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxcomp.errors import OnnxcompError

logger = logging.getLogger(__name__)

Dim = int | str | None  # a fixed size, a symbolic name, or an anonymous dynamic dim
ANONYMOUS = {"", "?", "None", "-1", "0"}  # dim_params that name no dimension
BATCH_NAMES = re.compile(r"^(n|b|bs|batch|batch_?size|batches|num_?batch(es)?|.*batch.*)$", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One graph input as onnxcomp sees it.

    Attributes:
        name: the graph input's name.
        dtype: its numpy dtype (None when numpy cannot hold it).
        dims: the declared dims (int fixed, str symbolic, None anonymous dynamic); None if no shape.
        sample_axis: the axis samples are stacked along; None: one value shared by all samples.
        pinned: a shape the user pinned (``--input-shape``), or None.
    """

    name: str
    dtype: np.dtype | None
    dims: tuple[Dim, ...] | None
    sample_axis: int | None
    pinned: tuple[int, ...] | None = None

    @property
    def rank(self) -> int | None:
        return None if self.dims is None else len(self.dims)

    def describe(self) -> str:
        """The declared shape as ``[batch, 3, ?, 224]``."""
        if self.dims is None:
            return "(no shape)"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.dims) + "]"


def normalize_dim(dim: object) -> Dim:
    """One declared dim: a positive int stays, a ``dim_param`` is its name; -1, 0, missing and
    placeholder names (``?``) are None."""
    if isinstance(dim, int):
        return dim if dim > 0 else None
    text = dim.value if isinstance(dim, ir.SymbolicDim) else dim
    if text is None:
        return None
    text = str(text).strip()
    # Paddle2ONNX writes "?" for each unnamed dim: the same "name" does not make them equal.
    return None if text in ANONYMOUS else text


def declared_dims(value: ir.Value) -> tuple[Dim, ...] | None:
    """The input's dims normalized by :func:`normalize_dim`, or None when it declares no shape."""
    if value.shape is None:
        return None
    return tuple(normalize_dim(dim) for dim in value.shape)


def sample_dim(dims_of: Sequence[tuple[Dim, ...] | None]) -> str | None:
    """The symbolic dim that stands for samples: among batch-like names (``batch``, ``N``) and
    names found on some input's axis 0, the one most inputs share; ties go to a batch-like name,
    then to the one found on axis 0 most often."""
    inputs_with: Counter[str] = Counter()
    at_zero: Counter[str] = Counter()
    for dims in dims_of:
        if not dims:
            continue
        for name in {d for d in dims if isinstance(d, str)}:
            inputs_with[name] += 1
        if isinstance(dims[0], str):
            at_zero[dims[0]] += 1
    # A name neither batch-like nor ever leading (``[1, sequence]``) is a size, not the samples.
    inputs_with = Counter({name: n for name, n in inputs_with.items() if BATCH_NAMES.match(name) or at_zero[name]})
    if not inputs_with:
        return None
    return max(inputs_with, key=lambda name: (inputs_with[name], bool(BATCH_NAMES.match(name)), at_zero[name]))


def fixed_batch(model: ir.Model, shapes: Mapping[str, Sequence[int]] | None = None) -> int | None:
    """The batch every run must have: the size a pinned shape (``--input-shape``) gives the sample
    axis, else a fixed size the model declares there; None when the batch is free. A model
    exported for one sample at a time (a Reshape to a batch of 1 behind a dynamic declaration)
    runs when its user pins the batch to 1, or when its outputs declare that batch (`_output_batch`)."""
    specs = [spec for spec in input_specs(model, shapes) if spec.sample_axis is not None]
    pinned = [spec.pinned[spec.sample_axis] for spec in specs if spec.pinned is not None]
    declared = [spec.dims[spec.sample_axis] for spec in specs if isinstance(spec.dims[spec.sample_axis], int)]
    named = [spec.dims[spec.sample_axis] for spec in specs if isinstance(spec.dims[spec.sample_axis], str)]
    return next(iter(pinned + declared), None) or _output_batch(model, named[0] if named else None)


def _lone_leading_names(dims_of: Sequence[tuple[Dim, ...] | None]) -> set[str]:
    """Symbolic names on some input's axis 0 that appear on no other input."""
    inputs_with: Counter[str] = Counter()
    for dims in dims_of:
        for name in {d for d in dims or () if isinstance(d, str)}:
            inputs_with[name] += 1
    return {dims[0] for dims in dims_of if dims and isinstance(dims[0], str) and inputs_with[dims[0]] == 1}


def input_specs(model: ir.Model, shapes: Mapping[str, Sequence[int]] | None = None) -> list[InputSpec]:
    """Each graph input's dtype, dims and sample axis; ``shapes`` are user-pinned shapes.

    Raises:
        OnnxcompError: a pinned shape names no input, or contradicts the declared rank or a fixed dim.
    """
    shapes = dict(shapes or {})
    # Inputs with a default (an initializer of the same name) are fed like any other: every
    # session on the working model reads all its inputs, and both models get the same values.
    values = list(model.graph.inputs)
    unknown = sorted(set(shapes) - {v.name for v in values})
    if unknown:
        raise OnnxcompError(f"--input-shape names {', '.join(map(repr, unknown))}, not a model input "
                            f"(inputs: {', '.join(v.name for v in values)})")
    dims_of = [declared_dims(v) for v in values]
    batch = sample_dim(dims_of)
    if batch is not None and not _outputs_follow(model, batch, dims_of):
        # A graph network (minimol: feat [num_nodes, 85], edge_index [2, num_edges] -> [num_graphs, 512])
        # indexes one input's rows from another: a feed is whole, it has no axis to slice or stack along.
        return [InputSpec(value.name, _numpy_dtype(value), dims, None, _pinned(value.name, dims, shapes))
                for value, dims in zip(values, dims_of)]
    # tf2onnx names every dynamic dim apart (input1 [unk__6134, 21], input2 [unk__6135, 21]): leading
    # names that no two inputs share, on several inputs, are anonymous sample dims, not one input's
    # batch beside shared values.
    lone = _lone_leading_names(dims_of)
    if len(lone) >= 2 and (batch is None or batch in lone):
        dims_of = [(None, *dims[1:]) if dims and dims[0] in lone else dims for dims in dims_of]
        batch = sample_dim(dims_of)
    # Without a shared name, an input whose leading dim is dynamic marks the anonymous dims as samples.
    anonymous = batch is None and any(dims and dims[0] is None for dims in dims_of)
    # Without either, the first input's fixed leading dim is the batch every input holds somewhere:
    # silero-vad's OpenVINO export takes input [1, 576] and state [2, 1, 128].
    fixed = None if batch is not None or anonymous else next((dims[0] for dims in dims_of if dims), None)
    specs = []
    for value, dims in zip(values, dims_of):
        pinned = _pinned(value.name, dims, shapes)
        if pinned is not None and dims is None:
            dims = tuple(None for _ in pinned)
        specs.append(InputSpec(value.name, _numpy_dtype(value), dims, _sample_axis(dims, batch, anonymous, fixed), pinned))
    return specs


def _numpy_dtype(value: ir.Value) -> np.dtype | None:
    try:
        return np.dtype(value.dtype.numpy()) if value.dtype is not None else None
    except Exception:  # a type numpy cannot hold (4-bit, string, sequence)
        return None


def _pinned(name: str, dims: tuple[Dim, ...] | None, shapes: Mapping[str, Sequence[int]]) -> tuple[int, ...] | None:
    pinned = tuple(int(d) for d in shapes[name]) if name in shapes else None
    if pinned is not None:
        _check_pinned(name, dims, pinned)
    return pinned


def _outputs_follow(model: ir.Model, batch: str, dims_of: Sequence[tuple[Dim, ...] | None]) -> bool:
    """Whether outputs may run per sample along `batch`: False only when every output declares its
    dims, none carries `batch`, and some output leads with another dim of the inputs (the one the
    outputs really run along: minimol's fingerprints are [num_graphs, 512] from inputs sized by
    num_nodes). An output leading with an exporter's own name ([batch_size, seq, C] beside inputs
    [batch, seq]) says nothing against `batch`."""
    outputs = [declared_dims(value) for value in model.graph.outputs]
    if not outputs or any(dims is None for dims in outputs) or batch in {d for dims in outputs for d in dims}:
        return True
    others = {d for dims in dims_of for d in dims or () if isinstance(d, str)} - {batch}
    return not any(dims and dims[0] in others for dims in outputs)


def _output_batch(model: ir.Model, batch: str | None) -> int | None:
    """A batch the outputs fix: every output declares its dims, none carries the sample dim, and all
    lead with the same size (khmersm: x [batch, seq] -> emissions [1, seq, 2] runs one sample at a time)."""
    outputs = [declared_dims(value) for value in model.graph.outputs]
    if batch is None or not outputs or any(not dims for dims in outputs):
        return None
    if batch in {d for dims in outputs for d in dims}:
        return None
    leading = {dims[0] for dims in outputs}
    return leading.pop() if len(leading) == 1 and isinstance(next(iter(leading)), int) else None


def _sample_axis(dims: tuple[Dim, ...] | None, batch: str | None, anonymous: bool, fixed: Dim = None) -> int | None:
    if not dims:
        return None  # a scalar (or a shapeless input): one value for every sample
    if batch is not None and batch in dims:
        return dims.index(batch)
    if anonymous and None in dims:
        return dims.index(None)  # e.g. state [2, ?, 128] beside input [?, ?]
    if isinstance(fixed, int) and dims[0] != fixed and fixed in dims:
        return dims.index(fixed)  # e.g. state [2, 1, 128] beside input [1, 576]: a fixed batch of 1 on axis 1
    if batch is None or dims[0] is None:
        # No shared name: axis 0 as exporters put it (a fixed leading dim is a fixed batch size).
        return 0
    return None  # the model has a sample dim and this input lacks it: a shared value


def _check_pinned(name: str, dims: tuple[Dim, ...] | None, pinned: tuple[int, ...]) -> None:
    shown = ",".join(map(str, pinned))
    if any(d < 1 for d in pinned):
        raise OnnxcompError(f"--input-shape {name}:{shown}: every dim must be >= 1")
    if dims is None:
        return
    declared = "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
    if len(dims) != len(pinned):
        raise OnnxcompError(f"--input-shape {name}:{shown} has rank {len(pinned)}, the model declares {name} {declared}")
    for axis, (dim, size) in enumerate(zip(dims, pinned)):
        if isinstance(dim, int) and dim != size:
            raise OnnxcompError(f"--input-shape {name}:{shown}: axis {axis} is fixed to {dim} in the model ({name} {declared})")


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``NAME:D1,D2,...`` (onnxsim's ``--overwrite-input-shape`` spelling) -> (name, dims); ``NAME:`` is a scalar."""
    name, sep, rest = text.rpartition(":")
    if not sep or not name:
        raise OnnxcompError(f"--input-shape {text!r}: expected NAME:D1,D2,... e.g. x:1,3,640,640")
    try:
        dims = tuple(int(part) for part in rest.split(",") if part.strip()) if rest.strip() else ()
    except ValueError:
        raise OnnxcompError(f"--input-shape {text!r}: dims must be integers, e.g. x:1,3,640,640") from None
    return name, dims


def parse_input_value(text: str) -> tuple[str, np.ndarray]:
    """``NAME=V`` (a scalar) or ``NAME=V1,V2,...`` (a 1-D value) -> (name, array)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest.strip():
        raise OnnxcompError(f"--input-value {text!r}: expected NAME=V or NAME=V1,V2,... e.g. sr=16000")
    parts = [part.strip() for part in rest.split(",")]
    try:
        numbers = [int(p) if re.fullmatch(r"[+-]?\d+", p) else float(p) for p in parts]
    except ValueError:
        raise OnnxcompError(f"--input-value {text!r}: values must be numbers, e.g. sr=16000") from None
    if any(isinstance(n, float) and not np.isfinite(n) for n in numbers):
        raise OnnxcompError(f"--input-value {text!r}: values must be finite")
    array = np.asarray(numbers)
    return name, (array.reshape(()) if len(parts) == 1 and "," not in rest else array)


def check_values(specs: list[InputSpec], values: Mapping[str, object]) -> None:
    """Pinned values (``--input-value``) must name model inputs."""
    unknown = sorted(set(values) - {s.name for s in specs})
    if unknown:
        raise OnnxcompError(f"--input-value names {', '.join(map(repr, unknown))}, not a model input "
                            f"(inputs: {', '.join(s.name for s in specs)})")


def check_pins(model: ir.Model, shapes: Mapping[str, Sequence[int]], values: Mapping[str, object]) -> None:
    """Check ``--input-shape`` and ``--input-value`` against the model before any work.

    Raises:
        OnnxcompError: a pin names no input or does not fit the input's declared shape or type.
    """
    specs = input_specs(model, shapes)
    check_values(specs, values)
    for spec in specs:
        if spec.name in values:
            pinned_value(spec, np.asarray(values[spec.name]))


def pinned_value(spec: InputSpec, value: np.ndarray, count: int = 1) -> np.ndarray:
    """A user-pinned value as the array fed for ``count`` samples: cast to the input's dtype,
    shaped to its declared rank, repeated along its sample axis.

    Raises:
        OnnxcompError: the value does not fit the input's declared shape or type.
    """
    array = np.asarray(value)
    if spec.dtype is not None:
        if spec.dtype.kind in "iub" and array.dtype.kind == "f" and not np.all(array == np.round(array)):
            raise OnnxcompError(f"--input-value {spec.name}: the model expects {spec.dtype} values, got {array.tolist()}")
        array = array.astype(spec.dtype)
    if spec.dims is None:
        return array
    per_sample = [d for axis, d in enumerate(spec.dims) if axis != spec.sample_axis]
    misfit = OnnxcompError(f"--input-value {spec.name}: a value of shape {list(array.shape)} does not fit "
                           f"{spec.name} {spec.describe()}")
    if array.ndim != len(per_sample):  # a scalar or a flat list for a higher-rank input
        if array.size == 1:  # one number fills the input (dynamic dims: size 1)
            array = np.full([d if isinstance(d, int) else 1 for d in per_sample], array.reshape(()), array.dtype)
        elif all(isinstance(d, int) for d in per_sample) and array.size == int(np.prod(per_sample)):
            array = array.reshape(per_sample)
        else:
            raise misfit
    if any(isinstance(dim, int) and size != dim for size, dim in zip(array.shape, per_sample)):
        raise misfit
    if spec.sample_axis is None:
        return array
    return np.repeat(np.expand_dims(array, spec.sample_axis), count, axis=spec.sample_axis)
