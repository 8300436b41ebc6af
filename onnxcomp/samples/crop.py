"""Fewer and smaller samples for work that runs the model once per layer (sensitivity probes).

A detector fed real pages runs at their full size: one 736x2976 feed of a text detector holds
3.7 GB of activations (every intermediate value counted); compressing it calibrated on twelve
recorded pages (736x736 to 736x2976), each of its 113 layers probed on all of them, took 1352 s
(36 s with the probes on four crops). `spread` keeps samples evenly spaced over the data (all of its
groups of shapes, not only the first); `cropped` centre-crops each feed along the model's
dynamic spatial dims (`onnxcomp.samples.dims`: height and width of images), to sizes that stay
multiples of the graph's stride product, so that the probes' work follows a budget rather
than the size of the user's images.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from onnxcomp.samples.data import Samples
from onnxcomp.samples.dims import dim_key, dim_variables, stride_product
from onnxcomp.samples.feeds import Feeds, feed_groups, group_count
from onnxcomp.samples.signature import input_specs

# A cropped side keeps at least this many strides of the graph's stride product (128 pixels at 32).
MIN_STRIDES = 4


def spread(samples: Samples, count: int) -> Samples:
    """`count` samples evenly spaced over all of `samples` (in `batches` order; each group of
    equal-shaped feeds keeps its own shape). All of them when `count` is not smaller."""
    total = samples.count
    if samples.batch > 1:  # a fixed batch: whole batches (at least one)
        count = max(samples.batch, count - count % samples.batch)
    if count >= total:
        return samples
    wanted = np.unique(np.linspace(0, total - 1, max(count, 1)).round().astype(int))
    parts, start = [], 0
    for part in feed_groups(samples.inputs):
        size = group_count(part)
        local = wanted[(wanted >= start) & (wanted < start + size)] - start
        if local.size:
            parts.append(Feeds({name: array if part.axis(name) is None else np.take(array, local, axis=part.axis(name))
                                for name, array in part.items()}, part.axes))
        start += size
    inputs = parts[0] if len(parts) == 1 else Feeds(parts[0], parts[0].axes, parts)
    labels = None if samples.labels is None else samples.labels[wanted]
    return Samples(inputs, labels, samples.generated, samples.batch)


def spatial_axes(model: ir.Model) -> dict[str, list[int]]:
    """Per input name, the axes of its dynamic spatial dims (empty: nothing to crop)."""
    specs = input_specs(model)
    keys = {v.key for v in dim_variables(model, specs) if v.kind == "spatial"}
    return {spec.name: [axis for axis in range(spec.rank or 0) if dim_key(spec, axis) in keys]
            for spec in specs if spec.rank}


def cropped(samples: Samples, model: ir.Model, limit: float, per_input_byte: float) -> Samples | None:
    """Every feed centre-cropped along the model's dynamic spatial dims so that one sample's
    activations take about `limit` bytes, estimated as `per_input_byte` times its input bytes
    (activations grow with the pixels). Each cropped side is scaled by area ** (1 / sides) and
    rounded down to a multiple of the stride product (`dims.stride_product`); sides shorter than
    one stride stay. Dims one name shares across inputs get one length. None when the model has
    no such dims, or no side gets shorter."""
    axes = spatial_axes(model)
    if not any(axes.values()):
        return None
    stride = stride_product(model)
    specs = {spec.name: spec for spec in input_specs(model)}
    changed = False
    parts = []
    for part in feed_groups(samples.inputs):
        area = min(1.0, limit / max(per_input_byte * sample_input_bytes(part), 1.0))
        lengths: dict[str, int] = {}  # per dim key, its cropped length in this group
        for name, array in part.items():
            for axis in axes.get(name, ()):
                key = dim_key(specs[name], axis)
                if key not in lengths:
                    lengths[key] = shorter_side(np.shape(array)[axis], area ** (1 / max(len(axes[name]), 1)), stride)
        arrays = {}
        for name, array in part.items():
            index = [slice(None)] * np.ndim(array)
            for axis in axes.get(name, ()):
                size, length = np.shape(array)[axis], lengths[dim_key(specs[name], axis)]
                if length < size:
                    start = (size - length) // 2
                    index[axis] = slice(start, start + length)
                    changed = True
            arrays[name] = np.ascontiguousarray(array[tuple(index)])
        parts.append(Feeds(arrays, part.axes))
    if not changed:
        return None
    inputs = parts[0] if len(parts) == 1 else Feeds(parts[0], parts[0].axes, parts)
    return Samples(inputs, samples.labels, samples.generated, samples.batch)


def sample_input_bytes(feeds: Feeds) -> int:
    """Input bytes of one sample of a group of equal-shaped feeds (inputs without a sample axis
    count whole)."""
    count = max(group_count(feeds), 1)
    return sum(np.asarray(array).nbytes // (1 if feeds.axis(name) is None else count) for name, array in feeds.items())


def shorter_side(size: int, factor: float, stride: int) -> int:
    """`size` times `factor`, rounded down to a multiple of gcd(size, stride) (the stride, or
    the largest power of two that divides `size` when that is smaller), never below MIN_STRIDES
    strides (a side already that short stays as it is: a text-line recognizer's 48-pixel height)."""
    if size <= MIN_STRIDES * stride:
        return size
    step = math.gcd(size, stride)
    return max(MIN_STRIDES * stride, int(size * factor) // step * step)
