"""The data of the channel analysis: layouts of channels along an axis, the edits that removing
a channel needs, and the groups and analysis that :func:`onnxcomp.channels.analyze_channels`
returns."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence

import networkx as nx
import numpy as np
import onnx_ir as ir

Dim = int | str | None


@dataclasses.dataclass(frozen=True)
class Segment:
    """A run of ``size`` channels of one origin along an axis, each ``inner`` elements wide.

    ``origin`` is None for channels that can never be removed (e.g. a graph input
    concatenated with a layer's output).
    """

    origin: int | None
    size: int
    inner: int = 1

    @property
    def length(self) -> int:
        return self.size * self.inner


Layout = tuple[Segment, ...]


def layout_length(layout: Layout) -> int:
    """Number of elements along the axis."""
    return sum(segment.length for segment in layout)


def layout_units(layout: Layout) -> int:
    """Number of channels along the axis."""
    return sum(segment.size for segment in layout)


@dataclasses.dataclass(frozen=True)
class Tracked:
    """A value whose ``axis`` carries channels laid out as ``layout``."""

    axis: int
    layout: Layout


@dataclasses.dataclass(frozen=True)
class TensorEdit:
    """Input ``input_index`` of ``node`` (a constant) is laid out as ``layout`` on ``axis``.

    ``role`` says why: ``weight``/``bias`` (the producer's own channels), ``consumer`` (a weight
    layer reading the channels), ``param`` (a per-channel constant of a channel-preserving op)
    or ``depthwise`` (a depthwise Conv weight). Shared weights block their groups; shared
    biases and params are copied for the node that needs them cut. ``axis`` -1 means the last axis, if it has the
    layout's length (a Gemm bias may broadcast instead).
    """

    node: ir.Node
    input_index: int
    axis: int
    layout: Layout
    role: str

    @property
    def value(self) -> ir.Value | None:
        """The input the edit lays out; None where the node has no such input."""
        inputs = self.node.inputs
        return inputs[self.input_index] if self.input_index < len(inputs) else None


@dataclasses.dataclass(frozen=True)
class ShapeEdit:
    """Entry ``position`` of the shape constant at input ``input_index`` becomes the new length."""

    node: ir.Node
    input_index: int
    position: int
    layout: Layout


@dataclasses.dataclass(frozen=True)
class AttributeEdit:
    """Integer attribute ``name`` of ``node`` becomes the new channel count (depthwise group)."""

    node: ir.Node
    name: str
    layout: Layout


@dataclasses.dataclass
class Origin:
    """Where channels are born: a weight layer's output or a model input's feature axis."""

    id: int
    size: int
    kind: str  # "producer" or "input"
    value: ir.Value
    axis: int
    label: str
    node: ir.Node | None = None
    reasons: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class ChannelRef:
    """One place where a group's channels live: ``tensor``'s ``axis`` from ``offset`` on.

    Each channel occupies ``inner`` consecutive elements (more than one after Flatten).
    """

    role: str
    node: str
    op_type: str
    tensor: str
    axis: int
    offset: int
    inner: int


@dataclasses.dataclass
class ChannelGroup:
    """Channels that must be removed together.

    Attributes:
        id: Index of the group in the analysis (stable for an unchanged model).
        name: Name of the group's first origin (node name, or ``input:<name>``); stable across
            rounds of elimination.
        size: Number of channels.
        producers: Where the channels are made (weights, biases, model inputs).
        consumers: Where they are read or passed through (weights, per-channel params, shape
            constants, attributes).
        blocked_reason: Why the channels cannot be removed, or None.
    """

    id: int
    name: str
    size: int
    producers: list[ChannelRef]
    consumers: list[ChannelRef]
    blocked_reason: str | None
    origins: tuple[int, ...] = ()

    @property
    def blocked(self) -> bool:
        return self.blocked_reason is not None


@dataclasses.dataclass
class ChannelAnalysis:
    """Result of :func:`analyze_channels`.

    ``links`` is the networkx graph over origin ids whose connected components are the groups.
    """

    model: ir.Model
    groups: list[ChannelGroup]
    origins: list[Origin]
    links: nx.Graph
    tracked: dict[ir.Value, Tracked]
    tensor_edits: list[TensorEdit]
    shape_edits: list[ShapeEdit]
    attribute_edits: list[AttributeEdit]
    group_of_origin: dict[int, int]
    dims: Callable[[ir.Value | None], tuple[Dim, ...] | None]

    def group(self, key: int | str) -> ChannelGroup:
        """The group with this id or name."""
        for group in self.groups:
            if key in (group.id, group.name):
                return group
        raise KeyError(key)

    def origin_of_value(self) -> dict[ir.Value, Origin]:
        return {origin.value: origin for origin in self.origins}


def constant(value: ir.Value | None) -> np.ndarray | None:
    """The array of an initializer or Constant node output, else None.

    Initializers that are also graph inputs can be overridden by the user: not constant.
    """
    if value is None or value.is_graph_input():
        return None
    try:
        tensor = ir.convenience.get_const_tensor(value)
    except ValueError:
        return None
    return None if tensor is None else tensor.numpy()


def segment_offsets(layout: Layout) -> Iterator[tuple[Segment, int, int]]:
    """Yield (segment, element offset, channel-unit offset) for each segment."""
    offset = unit = 0
    for segment in layout:
        yield segment, offset, unit
        offset += segment.length
        unit += segment.size


def static_product(dims: Sequence[Dim]) -> int | None:
    """Product of the dims, or None if one is not a known integer."""
    if any(not isinstance(d, int) for d in dims):
        return None
    return math.prod(dims)  # type: ignore[arg-type]


def scale_inner(layout: Layout, factor: int) -> Layout:
    """The layout with every channel ``factor`` times as wide (after flattening)."""
    return tuple(Segment(s.origin, s.size, s.inner * factor) for s in layout)
