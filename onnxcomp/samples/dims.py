"""Dynamic input dims and the sizes to guess for them when no data gives them.

A dynamic dim gets candidate sizes from its name (``height``/``W`` -> image sizes in multiples
of the graph's stride product, ``sequence`` -> audio lengths or token counts) and from constant
``Reshape`` targets. Generated inputs (``onnxcomp.samples.generated``) take the first guess; probing
(``onnxcomp.samples.probe``) tries the others in order.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir

from onnxcomp.samples.signature import InputSpec

logger = logging.getLogger(__name__)

IMAGE_SIZES = (224, 320, 256, 640, 128, 64, 32, 480, 96)
AUDIO_LENGTHS = (512, 1600, 16000, 256, 1024, 4000, 8000)
TOKEN_COUNTS = (16, 32, 64, 128, 8)
OTHER_SIZES = (16, 1, 32, 64, 8, 100, 2, 3, 4, 128)

SPATIAL = re.compile(r"(^|[_.])(h|w|height|width|img_?h|img_?w|image_?(height|width|size))$|height|width", re.IGNORECASE)
SEQUENCE = re.compile(r"seq|length|len$|time|frames?|samples|steps|tokens", re.IGNORECASE)
RATE = re.compile(r"^(sr|sample_?rate|sampling_?rate|rate|fs)$", re.IGNORECASE)


def dim_key(spec: InputSpec, axis: int) -> str:
    """The name a dynamic dim goes by: its ``dim_param`` (shared by the inputs), else ``input[axis]``."""
    dim = spec.dims[axis] if spec.dims else None
    return dim if isinstance(dim, str) else f"{spec.name}[{axis}]"


@dataclasses.dataclass(frozen=True)
class DimVariable:
    """A dynamic dim to choose (shared by every input that names it).

    Attributes:
        key: its ``dim_param``, or ``input[axis]`` for an anonymous one.
        kind: ``spatial``, ``audio``, ``tokens`` or ``other``.
        candidates: sizes to try, best guess first.
    """

    key: str
    kind: str
    candidates: tuple[int, ...]




def dim_variables(model: ir.Model, specs: list[InputSpec]) -> list[DimVariable]:
    """The dynamic dims generated inputs must choose (not sample axes, not pinned ones)."""
    stride = stride_product(model)
    hints = _reshape_hints(model)
    pinned = pinned_sizes(specs)
    found: dict[str, DimVariable] = {}
    rated = bool(rate_inputs(specs, {}))
    for spec in specs:
        for axis, dim in enumerate(spec.dims or ()):
            key = dim_key(spec, axis)
            if axis == spec.sample_axis or isinstance(dim, int) or key in pinned or key in found:
                continue
            kind = _kind(spec, axis, dim, rated)
            found[key] = DimVariable(key, kind, _candidates(kind, stride, hints))
    return list(found.values())


def dim_sizes(model: ir.Model, specs: list[InputSpec]) -> dict[str, int]:
    """First guess for every dynamic dim (pinned shapes decide the dims they name)."""
    sizes = {v.key: v.candidates[0] for v in dim_variables(model, specs)}
    sizes.update(pinned_sizes(specs))
    return sizes


def pinned_sizes(specs: list[InputSpec]) -> dict[str, int]:
    sizes = {}
    for spec in specs:
        if spec.pinned is not None:
            for axis, size in enumerate(spec.pinned):
                if axis != spec.sample_axis and not isinstance(spec.dims[axis], int):
                    sizes[dim_key(spec, axis)] = size
    return sizes


def _kind(spec: InputSpec, axis: int, dim: str | None, rated: bool) -> str:
    floating = spec.dtype is not None and spec.dtype.kind == "f"
    rank = spec.rank or 0
    if rated and floating and rank == 2 and axis != spec.sample_axis:
        return "audio"  # a waveform beside a sample-rate input
    if isinstance(dim, str):
        if SPATIAL.search(dim):
            return "spatial"
        if SEQUENCE.search(dim):
            if not floating:
                return "tokens"
            return "audio" if rank <= 2 else "other"
    if floating and rank == 4 and axis >= 2:
        return "spatial"
    if not floating and rank == 2 and axis == 1:
        return "tokens"
    return "other"


def _candidates(kind: str, stride: int, hints: list[int]) -> tuple[int, ...]:
    if kind == "spatial":
        sizes = [s for s in IMAGE_SIZES if s % stride == 0] + [stride * k for k in (7, 10, 4, 2, 1)]
        sizes += [h for h in hints if h >= 8]
    elif kind == "audio":
        sizes = list(AUDIO_LENGTHS)
    elif kind == "tokens":
        sizes = list(TOKEN_COUNTS)
    else:
        sizes = list(OTHER_SIZES) + hints
    return tuple(dict.fromkeys(s for s in sizes if s > 0))


def stride_product(model: ir.Model) -> int:
    """How much the convolutions and poolings shrink an image, at most 32: sizes that divide by
    it survive every downsampling and the upsampling back (Resize by 2, feature-pyramid Adds)."""
    product = 1
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type in ("Conv", "MaxPool", "AveragePool"):
            strides = node.attributes.get("strides")
            if strides is not None:
                product *= max(strides.as_ints() or [1])
    return min(product, 32)  # 32 is what FPN/YOLO-style heads need; parallel strided branches overcount


def _reshape_hints(model: ir.Model) -> list[int]:
    """Sizes named in constant Reshape targets (a reshape to a fixed frame size or image side)."""
    hints: list[int] = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "Reshape" and len(node.inputs) > 1 and node.inputs[1] is not None:
            constant = node.inputs[1].const_value
            if constant is not None:
                hints.extend(int(d) for d in constant.numpy().ravel().tolist() if 8 <= d <= 4096)
    return list(dict.fromkeys(hints))[:8]


def rate_inputs(specs: list[InputSpec], values: Mapping[str, np.ndarray]) -> list[str]:
    """Integer scalar inputs named like a sample rate, not pinned by the user."""
    return [s.name for s in specs if s.name not in values and s.dims == () and s.dtype is not None
            and s.dtype.kind in "iu" and RATE.match(s.name)]
