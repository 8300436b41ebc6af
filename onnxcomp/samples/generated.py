"""Seeded sample inputs generated from a model's declared input shapes and dtypes.

Dynamic dims take their first guessed size (``onnxcomp.samples.dims``) unless sizes are given;
``onnxcomp.samples.probe`` chooses sizes that ONNX Runtime runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnx_ir as ir

from onnxcomp.samples.data import Samples
from onnxcomp.samples.dims import dim_key, dim_sizes
from onnxcomp.errors import OnnxcompError
from onnxcomp.samples.feeds import Feeds
from onnxcomp.samples.images import generated_images, image_layout
from onnxcomp.samples.signature import InputSpec, check_values, input_specs, pinned_value

DEFAULT_DYNAMIC_DIM = 1
MAX_GENERATED_BYTES = 16 << 20  # generated inputs, all samples together: 3x224x224 images get 27
MAX_SAMPLE_BYTES = 256 << 20  # one generated sample at most (declared shapes come from the file)
# String inputs get sentences of 3 to 15 of these words (seeded).
WORDS = ("the of and to in is was for on that with as by at from it this be are have an or not which one all were "
         "we they you he she there their time year people way day man woman child world life hand part place "
         "work week case point number group problem fact water house story city price market money music light "
         "new good first last long great little own other old right big high small large next early young "
         "make know take see come think look want give use find tell ask seem feel try leave call open run read "
         "write play move live believe bring happen stand lose pay meet include continue set learn change lead").split()


def generate_samples(model: ir.Model, count: int = 64, seed: int = 0, shapes: Mapping[str, Iterable[int]] | None = None,
                     values: Mapping[str, np.ndarray] | None = None, sizes: Mapping[str, int] | None = None) -> Samples:
    """Seeded inputs from the declared shapes and dtypes.

    Args:
        model: the model.
        count: samples along each input's sample axis (fewer when the inputs are large).
        seed: the random seed.
        shapes: user-pinned shapes (``--input-shape``).
        values: user-pinned values (``--input-value``), fed with every sample.
        sizes: sizes of the dynamic dims (see ``onnxcomp.samples.probe``); unlisted ones get a first guess from their name.

    Image batches mix noise, dead-leaves images and strokes (``onnxcomp.samples.images``); other
    float inputs are standard normal noise. Integer inputs that index an embedding table cover
    the whole id range the table allows (float ones cast to integers on their way there too); masks (``*mask*``) and booleans are all ones.
    """
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
        if dtype.kind == "f" and (rows := _id_bounds(model, spec.name, arithmetic=False)):
            # Float ids a Keras embedding casts to int (tf2onnx): every row, as for integer ids.
            array = _ids(min(rows), shape, rng).astype(dtype)
        elif dtype.kind == "f":
            layout = image_layout(shape, spec.sample_axis)
            array = (rng.standard_normal(shape) if layout is None else generated_images(shape, layout, rng)).astype(dtype)
        elif dtype.kind == "O":  # text, for a tokenizer inside the model (onnxruntime-extensions)
            array = np.array([" ".join(rng.choice(WORDS, rng.integers(3, 16))) for _ in range(int(np.prod(shape)))],
                             dtype=object).reshape(shape)
        elif dtype.kind == "b" or "mask" in spec.name.lower():
            array = np.ones(shape, dtype=dtype)
        else:
            array = _ids(_integer_bound(model, spec.name), shape, rng).astype(dtype)
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



def _generated_dtype(spec: InputSpec) -> np.dtype:
    if spec.dtype is None or spec.dtype.kind not in "fiubO":
        raise OnnxcompError(f"model input {spec.name!r} has a type onnxcomp cannot generate (only numeric and string tensors); "
                            "pass --data with sample inputs")
    return spec.dtype


def _ids(rows: int, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    """Every id in [0, rows), shuffled and repeated to fill `shape`: rows that look unused would be pruned away."""
    size = int(np.prod(shape))
    return rng.permutation(np.resize(np.arange(rows), max(size, 1)))[:size].reshape(shape)


def _integer_bound(model: ir.Model, name: str) -> int:
    """Upper bound (exclusive) for generated integer inputs: the rows of the smallest table they
    index (Gather), the depth of a OneHot, or the ids an ``Equal`` compares them with (a one-hot
    built by hand, as tf2onnx exports it) - followed through shape and type changes and integer
    arithmetic (`_ID_ARITHMETIC`); else 2."""
    return min(_id_bounds(model, name), default=2)


def _id_bounds(model: ir.Model, name: str, arithmetic: bool = True) -> list[int]:
    """The id ranges `_integer_bound` takes the smallest of (none: the input indexes nothing);
    without `arithmetic`, only through shape and type changes (an audio signal scaled into bin
    indices is not an id)."""
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
            elif arithmetic and node.op_type in _ID_ARITHMETIC:  # tf2onnx's negative-index wrap: where(x < 0, x + rows, x)
                frontier.extend(out for out in node.outputs if out.dtype is None or out.dtype.numpy().kind in "iu")
    return bounds


# Integer arithmetic that ids pass through on their way to a table (Keras embeddings exported by
# tf2onnx add the row count to negative ids with Add, Mul and Where before the Gather).
_ID_ARITHMETIC = {"Add", "Sub", "Mul", "Where", "Min", "Max", "Clip", "Mod", "Abs"}


def _constant(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    tensor = value.const_value
    if tensor is None and value.producer() is not None and value.producer().op_type == "Constant":
        attribute = value.producer().attributes.get("value")
        tensor = attribute.as_tensor() if attribute is not None else None
    return None if tensor is None else tensor.numpy()
