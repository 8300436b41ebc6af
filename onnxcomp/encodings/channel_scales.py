"""Per-output-channel scales: one codebook shared by channels normalised to the same range.

BatchNorm-folded and depthwise convolutions have output channels whose ranges differ by orders
of magnitude. One codebook per tensor, fitted to the squared error of the whole tensor, spends
its levels on the wide channels and rounds the narrow ones to a few values or to zero; what a
narrow channel carries is lost although it cost nothing in squared error. Per-channel int8
(max-abs scale per output channel) keeps every channel's relative error near 1/255 of its range.

Here a weight is divided by its per-channel max-abs scale, the normalised tensor is clustered
and encoded like any other (`onnxcomp.encodings.encoding`), and one Mul by the [C, 1, ...] scales (folded
by ONNX Runtime at load, like the rest of the decode) gives the weight back. The allocator prices
it in real bytes (codes + codebook + 4 bytes per channel + the Mul).

`channel_distortion` measures what per-tensor squared error hides: the mean over channels of
each channel's relative squared error. The allocator's int8 guard (`onnxcomp.planning.allocate`) keeps
every layer at or below what per-channel int8 would give on that measure when the budget allows.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxcomp.encodings import encoding
from onnxcomp.model.weights import find_weights

logger = logging.getLogger(__name__)

# Per-channel int8 reference: symmetric, max-abs scale, 255 levels (what ONNX Runtime's and
# onnx-shrink-ray's per-channel quantizers store).
INT8_LEVELS = 255
# A channel is "all zero" below this max-abs: it keeps scale 1 (its zeros stay exact zeros).
TINY = 1e-30
# float16's normal range: scales inside it are stored as float16 (see `channel_scales`).
HALF_MIN = float(np.finfo(np.float16).tiny)
HALF_MAX = float(np.finfo(np.float16).max)


@dataclasses.dataclass(frozen=True)
class ChannelScales:
    """Per-channel max-abs scales of one weight along `axis` (0: rows/output channels of Conv
    and Gemm(transB); 1: a convolution kernel's input channels, or a matrix's columns, the
    output features of a MatMul weight)."""

    axis: int
    scales: np.ndarray  # float32 [C]

    @property
    def half(self) -> bool:
        """Every scale is a normal float16 value: stored as float16 (2 bytes per channel) and cast."""
        scales = self.scales.astype(np.float32)
        return bool(np.all((scales >= HALF_MIN) & (scales <= HALF_MAX))
                    and np.array_equal(scales.astype(np.float16).astype(np.float32), scales))

    def view(self, rank: int) -> np.ndarray:
        """The scales shaped to broadcast against a weight of `rank` dimensions."""
        shape = [1] * rank
        shape[self.axis] = self.scales.size
        return self.scales.reshape(shape)

    def normalize(self, values: np.ndarray) -> np.ndarray:
        """Values divided by their channel's scale: every channel spans at most [-1, 1]."""
        return (np.asarray(values, np.float32) / self.view(values.ndim)).astype(np.float32)

    def restore(self, normalized: np.ndarray) -> np.ndarray:
        return (np.asarray(normalized, np.float32) * self.view(normalized.ndim)).astype(np.float32)

    def importance(self, shape: tuple[int, ...], importance: np.ndarray | None) -> np.ndarray:
        """Importance for the normalised tensor such that its weighted squared error equals the
        original tensor's: importance * scale**2."""
        squared = self.view(len(shape)).astype(np.float64) ** 2
        base = np.ones(shape) if importance is None else np.broadcast_to(np.asarray(importance, np.float64), shape)
        return base * squared


def channel_axes(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Axes whose channels may get their own scale: output channels of Conv/Gemm weights (axis
    0) and, for matrices, also the last axis (MatMul's output features)."""
    if len(shape) < 2 or min(shape) < 1:
        return ()
    if len(shape) == 2:
        return (0, 1) if shape[0] > 1 and shape[1] > 1 else ()
    return (0,) if shape[0] > 1 else ()


def scale_axes(values: np.ndarray) -> tuple[int, ...]:
    """Axes along which a scaled candidate may normalise the weight: the `channel_axes`, and for
    convolution kernels also axis 1 (input channels per group), whose ranges differ where the
    layer reads channels of very different scales (an input normalisation folded into the first
    convolution, a BatchNorm or equalization scale in front of the layer)."""
    shape = np.shape(values)
    axes = channel_axes(shape)
    if len(shape) >= 3 and axes and shape[1] > 1:
        return axes + (1,)
    return axes


def channel_scales(values: np.ndarray, axis: int, half: bool = True) -> ChannelScales:
    """Max-abs scale of each channel along `axis` (1 for an all-zero channel).

    `half`: where every scale lies in float16's normal range, each is rounded up to the next
    float16 value, so the scales store in 2 bytes each and the normalised channels still span at
    most [-1, 1] (at least [-(1 - 2**-11), ...]: the grid loses nothing that matters)."""
    values = np.asarray(values, np.float32)
    other = tuple(a for a in range(values.ndim) if a != axis)
    peak = np.max(np.abs(values), axis=other) if other else np.abs(values)
    scales = np.where(peak > TINY, peak, 1.0).astype(np.float32)
    if half and np.all((scales >= HALF_MIN) & (scales <= HALF_MAX / 2)):
        rounded = scales.astype(np.float16)
        low = rounded.astype(np.float32) < scales
        rounded[low] = np.nextafter(rounded[low], np.float16(np.inf))
        scales = rounded.astype(np.float32)
    return ChannelScales(axis, scales)


def scale_bytes(channels: int, rank: int, half: bool = False) -> int:
    """What the scales add to an encoded weight: the [C, 1, ...] initializer (float32, or float16
    and a Cast) and a Mul."""
    if half:
        return 2 * channels + encoding.INITIALIZER_BYTES + 3 * rank + 2 * encoding.NODE_BYTES
    return 4 * channels + encoding.INITIALIZER_BYTES + 3 * rank + encoding.NODE_BYTES


class ChannelMeasure:
    """`channel_distortion` against one weight, its per-channel energies computed once (a layer's
    candidates are all measured against the same values)."""

    def __init__(self, values: np.ndarray, importance: np.ndarray | None = None, axes: tuple[int, ...] | None = None):
        self.values = np.asarray(values, np.float64)
        self.spread = None if importance is None else np.broadcast_to(np.asarray(importance, np.float64), self.values.shape)
        energy = self.values ** 2
        if self.spread is not None:
            energy = energy * self.spread
        self.axes = channel_axes(self.values.shape) if axes is None else axes
        self.total = energy.sum()
        self.per_axis = []  # per channel axis: (the other axes, per-channel energy, channels with energy)
        for axis in self.axes:
            other = tuple(a for a in range(self.values.ndim) if a != axis)
            per_energy = energy.sum(axis=other)
            self.per_axis.append((other, per_energy, per_energy > 1e-30 * max(float(per_energy.max()), 1e-300)))

    def of(self, decoded: np.ndarray) -> float:
        error = (np.asarray(decoded, np.float64) - self.values) ** 2
        if self.spread is not None:
            error = error * self.spread
        if not self.axes:
            return float(error.sum() / max(self.total, 1e-30))
        worst = 0.0
        for other, per_energy, live in self.per_axis:
            per_error = error.sum(axis=other)
            if live.any():
                worst = max(worst, float(np.mean(per_error[live] / per_energy[live])))
        return worst


def channel_distortion(values: np.ndarray, decoded: np.ndarray, importance: np.ndarray | None = None,
                       axes: tuple[int, ...] | None = None) -> float:
    """Mean over channels of each channel's (importance-weighted) relative squared error; with
    several candidate channel axes, the worst of them. Channels without energy are skipped."""
    return ChannelMeasure(values, importance, axes).of(decoded)


def int8_reference(values: np.ndarray, importance: np.ndarray | None = None) -> float:
    """`channel_distortion` of the best per-channel int8 coding of this weight (symmetric max-abs
    scale per channel, over the axes a scaled candidate may use, `scale_axes`; per tensor for
    vectors)."""
    values = np.asarray(values, np.float32)
    axes = scale_axes(values)
    half = (INT8_LEVELS - 1) // 2
    if not axes:
        peak = float(np.max(np.abs(values))) if values.size else 0.0
        step = (peak if peak > TINY else 1.0) / half
        return channel_distortion(values, np.round(values / step) * step, importance)
    best = np.inf
    for axis in axes:
        scales = channel_scales(values, axis, half=False)
        decoded = scales.restore(np.round(scales.normalize(values) * half) / half)
        best = min(best, channel_distortion(values, decoded, importance))
    return float(best)


def insert_scale(model: ir.Model, decoded: ir.Value, scales: ChannelScales, name: str) -> ir.Value:
    """Multiply a decoded (normalised) weight by its channel scales: every reader of `decoded`
    reads the product instead. The Mul's inputs are constants, so ONNX Runtime folds it at load.

    Returns the product value."""
    rank = len(decoded.shape) if decoded.shape is not None else scales.scales.ndim
    stored = scales.view(rank).astype(np.float16) if scales.half else scales.view(rank)
    initializer = ir.Value(name=f"{name}_scale", const_value=ir.tensor(stored, name=f"{name}_scale"))
    model.graph.register_initializer(initializer)
    factor = initializer
    cast = None
    if scales.half:  # float16 scales, widened at load (the Cast folds like the rest of the decode)
        cast = ir.node("Cast", [initializer], attributes={"to": ir.DataType.FLOAT}, name=f"{name}_scale_cast")
        factor = cast.outputs[0]
        factor.name = f"{name}_scale_f"
    mul = ir.node("Mul", [decoded, factor], name=f"{name}_rescale")
    product = mul.outputs[0]
    product.name = f"{name}_rescaled"
    product.shape = decoded.shape
    product.type = decoded.type
    decoded.replace_all_uses_with(product)
    mul.replace_input_with(0, decoded)  # replace_all_uses_with rewired the Mul itself too
    added = [mul] if cast is None else [cast, mul]
    producer = decoded.producer()
    if producer is not None and producer.graph is model.graph:
        model.graph.insert_after(producer, added)
    else:
        model.graph.insert_before(model.graph.node(0), added) if len(model.graph) else model.graph.extend(added)
    if decoded.is_graph_output():  # graph outputs keep their value (never rename outputs)
        logger.debug("%s is a graph output; its readers get the rescaled copy", decoded.name)
    return product


def normalize_weights(model: ir.Model, scales: Mapping[str, ChannelScales]) -> None:
    """Store each planned weight divided by its channel scales (before it is clustered and encoded)."""
    for weight in find_weights(model):
        if weight.name in scales:
            weight.store(scales[weight.name].normalize(weight.numpy()))


def rescale_weights(model: ir.Model, uses: Mapping[str, tuple[ir.Node, int]], scales: Mapping[str, ChannelScales]) -> None:
    """After encoding: multiply each normalised weight's decoded value (what `uses[name]`, one
    reader's (node, input index), now reads) by its scales, for every reader."""
    for name, weight_scales in scales.items():
        if name not in uses:
            logger.debug("%s: no reader found, scales not applied", name)
            continue
        node, index = uses[name]
        insert_scale(model, node.inputs[index], weight_scales, name)
