"""Channel-dependency analysis: which channels of which layers must be removed together.

Every weight layer (Conv, ConvTranspose, Gemm, MatMul with a constant weight) starts an
*origin*: its output channels. Channels are followed forward through channel-preserving ops
(activations, BatchNormalization, pooling, Pad/Resize/Transpose/Reshape that keep the channel
axis, depthwise Conv), concatenated (Concat along the channel axis: offsets) and flattened
(Flatten: one channel becomes a block of ``inner`` consecutive features) until weight layers
read them. Origins whose channels meet in an element-wise op (residual Add, Mul, ...) must lose
the same channels: they are linked in a networkx graph, and each connected component is one
:class:`ChannelGroup`. Model inputs feeding a weight layer (possibly through Flatten) are origins
too; removing their features inserts a Gather on the input inside the graph.

Whatever the analysis cannot prove safe (a Reshape that splits the channel axis, Softmax over
channels, a graph output, an unknown op, a shared weight, a non-constant operand that varies
over channels) blocks the whole group, with a reason.

The analysis only reads the model. It records, per group, every edit that removing a channel
needs: tensor slices, shape-constant entries, ``group`` attributes and input gathers.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterator, Sequence

import networkx as nx
import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import _c_api_utils

logger = logging.getLogger(__name__)

__all__ = [
    "ChannelAnalysis",
    "ChannelGroup",
    "ChannelRef",
    "Segment",
    "analyze_channels",
]

# Ops that act on each element alone: output channel c depends on input channel c only.
_UNARY_OPS = frozenset(
    "Abs Acos Acosh Asin Asinh Atan Atanh Cast Ceil Celu Clip Cos Cosh Dropout Elu Erf Exp "
    "Floor Gelu HardSigmoid HardSwish Identity IsInf IsNaN LeakyRelu Log Mish Neg Not "
    "Reciprocal Relu Round Selu Shrink Sigmoid Sign Sin Sinh Softplus Softsign Sqrt Tan Tanh "
    "ThresholdedRelu".split()
)
_ELEMENTWISE_OPS = frozenset(
    "Add And BitShift Div Equal Greater GreaterOrEqual Less LessOrEqual Max Mean Min Mod Mul "
    "Or PRelu Pow Sub Sum Where Xor".split()
)
_POOL_OPS = frozenset(
    "AveragePool GlobalAveragePool GlobalLpPool GlobalMaxPool LpPool MaxPool".split()
)
_REDUCE_OPS = frozenset(
    "ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd "
    "ReduceSum ReduceSumSquare".split()
)
_SOFTMAX_OPS = frozenset({"Softmax", "LogSoftmax", "Hardmax"})

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


def analyze_channels(model: ir.Model) -> ChannelAnalysis:
    """Find the channel groups of ``model`` and everything that removing a channel touches.

    Shapes come from the model and from ONNX shape inference (run on the side; the model is
    not changed).
    """
    return _Tracer(model).run()


def _infer_dims(model: ir.Model) -> dict[str, tuple[Dim, ...]]:
    def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)

    try:
        proto = _c_api_utils.call_onnx_api(infer, model)
    except Exception as error:  # shape inference is a help, not a requirement
        logger.debug("Shape inference failed (%s); using the shapes in the model", error)
        return {}
    dims: dict[str, tuple[Dim, ...]] = {}
    for info in [*proto.graph.value_info, *proto.graph.output, *proto.graph.input]:
        if not info.type.HasField("tensor_type") or not info.type.tensor_type.HasField("shape"):
            continue
        dims[info.name] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in info.type.tensor_type.shape.dim
        )
    return dims


def _static_product(dims: Sequence[Dim]) -> int | None:
    if any(not isinstance(d, int) for d in dims):
        return None
    return math.prod(dims)  # type: ignore[arg-type]


class _Tracer:
    """Follows channels forward through the graph, one node at a time in graph order."""

    def __init__(self, model: ir.Model):
        self.model = model
        self.graph = model.graph
        self.opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
        self.inferred = _infer_dims(model)
        self.tracked: dict[ir.Value, Tracked] = {}
        self.origins: list[Origin] = []
        self.links = nx.Graph()
        self.tensor_edits: list[TensorEdit] = []
        self.shape_edits: list[ShapeEdit] = []
        self.attribute_edits: list[AttributeEdit] = []
        self.visited: set[ir.Node] = set()

    # -- helpers -----------------------------------------------------------------------------

    def dims(self, value: ir.Value | None) -> tuple[Dim, ...] | None:
        if value is None:
            return None
        array = constant(value)
        if array is not None:
            return tuple(array.shape)
        if value.shape is not None:
            own = tuple(
                d if isinstance(d, int) else (d.value if d is not None else None)
                for d in value.shape.dims
            )
            if all(isinstance(d, int) for d in own) or value.name not in self.inferred:
                return own
        return self.inferred.get(value.name or "")

    def rank(self, value: ir.Value | None) -> int | None:
        dims = self.dims(value)
        return None if dims is None else len(dims)

    def axes_of(self, node: ir.Node, input_index: int, attribute: str = "axes") -> list[int] | None:
        """Axes from the attribute (old opsets) or a constant input; None if unknown."""
        if attribute in node.attributes:
            return list(node.attributes.get_ints(attribute))
        if input_index < len(node.inputs) and node.inputs[input_index] is not None:
            array = constant(node.inputs[input_index])
            return None if array is None else [int(a) for a in array.reshape(-1)]
        return []

    def block(self, layout: Layout, reason: str) -> None:
        for origin_id in {s.origin for s in layout if s.origin is not None}:
            if reason not in self.origins[origin_id].reasons:
                self.origins[origin_id].reasons.append(reason)
        logger.debug("blocked: %s", reason)

    def set(self, value: ir.Value, axis: int, layout: Layout) -> None:
        self.tracked[value] = Tracked(axis, layout)
        if any(use.node in self.visited for use in value.uses()):
            self.block(layout, f"'{value.name}' is used before it is made (graph not sorted)")
        if value.is_graph_output():
            self.block(layout, f"channels reach graph output '{value.name}'")

    def new_origin(
        self, kind: str, value: ir.Value, axis: int, size: int, label: str, node: ir.Node | None
    ) -> Layout:
        origin = Origin(len(self.origins), size, kind, value, axis, label, node)
        self.origins.append(origin)
        self.links.add_node(origin.id, size=size, label=label)
        layout = (Segment(origin.id, size),)
        self.set(value, axis, layout)
        return layout

    def edit(self, node: ir.Node, index: int, axis: int, layout: Layout, role: str) -> None:
        self.tensor_edits.append(TensorEdit(node, index, axis, layout, role))

    def unify(self, a: Layout, b: Layout, node: ir.Node) -> bool:
        if [(s.size, s.inner) for s in a] != [(s.size, s.inner) for s in b]:
            return False
        for sa, sb in zip(a, b):
            if (sa.origin is None) != (sb.origin is None):
                return False
            if sa.origin is not None and sa.origin != sb.origin:
                self.links.add_edge(sa.origin, sb.origin, node=node.name)
        return True

    @staticmethod
    def name(node: ir.Node) -> str:
        return f"{node.op_type} '{node.name}'"

    # -- driver ------------------------------------------------------------------------------

    def run(self) -> ChannelAnalysis:
        for value in self.graph.inputs:
            self.start_input(value)
        for node in self.graph:
            try:
                self.visit(node)
            except Exception as error:  # an odd node must not make the analysis unsound
                logger.debug("Could not analyze %s", node, exc_info=True)
                for value in [*node.inputs, *node.outputs]:
                    if value in self.tracked:
                        self.block(self.tracked[value].layout,
                                   f"could not analyze {self.name(node)}: {error}")
            self.visited.add(node)
        for value, tracked in self.tracked.items():
            for use in value.uses():
                if use.node.graph is not self.graph:
                    self.block(tracked.layout, f"'{value.name}' is used inside a subgraph")
        self.check_constants()
        return self.finish()

    def visit(self, node: ir.Node) -> None:
        inputs = [self.tracked.get(v) if v is not None else None for v in node.inputs]
        if node.domain not in ("", "ai.onnx"):
            handler = None
        elif node.op_type in _UNARY_OPS:
            handler = self.op_unary
        elif node.op_type in _ELEMENTWISE_OPS:
            handler = self.op_elementwise
        elif node.op_type in _POOL_OPS:
            handler = self.op_pool
        elif node.op_type in _REDUCE_OPS:
            handler = self.op_reduce
        elif node.op_type in _SOFTMAX_OPS:
            handler = self.op_softmax
        else:
            handler = getattr(self, f"op_{node.op_type}", None)
        if handler is not None and node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            handler(node, inputs)  # weight layers start origins even without tracked inputs
        elif not any(inputs):
            if node.op_type in ("Flatten", "Reshape", "Gather"):
                self.maybe_input_origin(node)
        elif handler is None:
            for t in inputs:
                if t is not None:
                    self.block(t.layout, f"channels are consumed by unsupported {self.name(node)}")
        else:
            handler(node, inputs)

    def only(self, node: ir.Node, inputs: list[Tracked | None], allowed: Sequence[int]) -> bool:
        """Block channels that enter ``node`` at an input it cannot pass channels through."""
        ok = True
        for index, t in enumerate(inputs):
            if t is not None and index not in allowed:
                self.block(t.layout, f"channels enter input {index} of {self.name(node)}")
                ok = False
        return ok

    def pass_through(self, node: ir.Node, t: Tracked, axis: int | None = None, outputs: int = 1):
        for out in node.outputs[:outputs]:
            self.set(out, t.axis if axis is None else axis, t.layout)
        for out in node.outputs[outputs:]:
            if out.uses() or out.is_graph_output():
                self.block(t.layout, f"output '{out.name}' of {self.name(node)} is used")

    # -- model inputs ------------------------------------------------------------------------

    def start_input(self, value: ir.Value) -> None:
        if value.is_initializer() or not value.uses():
            return
        if value.dtype is not None and not value.dtype.is_floating_point():
            return  # ids, masks: not features
        dims = self.dims(value)
        if dims is None or len(dims) < 2:
            return
        consumers = [use.node for use in value.uses()]
        if all(self.input_origin_node(n) for n in consumers):
            return  # the features are counted after Flatten/Gather
        matmul = any(n.op_type == "MatMul" and n.inputs[0] is value for n in consumers)
        axis = len(dims) - 1 if matmul else 1
        if isinstance(dims[axis], int):
            self.new_origin("input", value, axis, dims[axis], f"input:{value.name}", None)

    def input_origin_node(self, node: ir.Node) -> bool:
        """Whether ``node`` starts an input-feature origin on its output."""
        data = node.inputs[0] if node.inputs else None
        if data is None or data in self.tracked or not self.input_derived(data):
            return False
        if node.op_type == "Gather":
            indices = constant(node.inputs[1])
            return (
                indices is not None
                and indices.ndim == 1
                and indices.dtype.kind in "iu"
                and len(node.inputs[1].uses()) == 1
            )
        if node.op_type in ("Flatten", "Reshape"):
            dims = self.dims(node.outputs[0])
            return dims is not None and len(dims) == 2 and isinstance(dims[1], int)
        return False

    def input_derived(self, value: ir.Value) -> bool:
        if value.is_graph_input() and not value.is_initializer():
            return True
        producer = value.producer()
        return (
            producer is not None
            and producer.op_type in ("Flatten", "Reshape")
            and producer.inputs[0] is not None
            and producer.inputs[0].is_graph_input()
        )

    def maybe_input_origin(self, node: ir.Node) -> None:
        if not self.input_origin_node(node):
            return
        out = node.outputs[0]
        consumers = [use.node for use in out.uses()]
        if node.op_type != "Gather" and consumers and all(
            n.op_type == "Gather" and self.input_origin_node(n) for n in consumers
        ):
            return  # an earlier elimination already gathers these features
        dims = self.dims(out)
        if node.op_type == "Gather":
            axis = node.attributes.get_int("axis", 0)
            rank = self.rank(node.inputs[0])
            if rank is None:
                return
            axis %= rank
            size = len(constant(node.inputs[1]))  # type: ignore[arg-type]
        else:
            axis, size = 1, dims[1]  # type: ignore[index]
        root = node.inputs[0]
        while not root.is_graph_input() and root.producer() is not None:
            root = root.producer().inputs[0]  # type: ignore[union-attr,assignment]
        self.new_origin("input", out, axis, size, f"input:{root.name}", node)

    # -- weight layers -----------------------------------------------------------------------

    def op_Conv(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        weight = constant(node.inputs[1])
        group = node.attributes.get_int("group", 1)
        self.only(node, inputs, (0,))
        t = inputs[0]
        if weight is None:
            if t is not None:
                self.block(t.layout, f"{self.name(node)} has no constant weight")
            return
        if t is not None:
            if t.axis != 1:
                self.block(t.layout, f"channel axis is not axis 1 at {self.name(node)}")
                t = None
            elif group == 1:
                self.edit(node, 1, 1, t.layout, "consumer")
            elif group == weight.shape[0] == layout_length(t.layout) and weight.shape[1] == 1:
                self.edit(node, 1, 0, t.layout, "depthwise")
                self.edit(node, 2, 0, t.layout, "param")
                self.attribute_edits.append(AttributeEdit(node, "group", t.layout))
                self.pass_through(node, t)
                return
            else:
                self.block(t.layout, f"grouped {self.name(node)} mixes channels within groups")
        if group == 1:
            layout = self.new_origin(
                "producer", node.outputs[0], 1, weight.shape[0], node.name or "Conv", node
            )
            self.edit(node, 1, 0, layout, "weight")
            self.edit(node, 2, 0, layout, "bias")

    def op_ConvTranspose(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        weight = constant(node.inputs[1])
        group = node.attributes.get_int("group", 1)
        self.only(node, inputs, (0,))
        t = inputs[0]
        if weight is None or group != 1:
            if t is not None:
                self.block(t.layout, f"{self.name(node)} is grouped or has no constant weight")
            return
        if t is not None:
            if t.axis == 1:
                self.edit(node, 1, 0, t.layout, "consumer")
            else:
                self.block(t.layout, f"channel axis is not axis 1 at {self.name(node)}")
        layout = self.new_origin(
            "producer", node.outputs[0], 1, weight.shape[1], node.name or "ConvTranspose", node
        )
        self.edit(node, 1, 1, layout, "weight")
        self.edit(node, 2, 0, layout, "bias")

    def op_Gemm(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        weight = constant(node.inputs[1])
        trans_a = node.attributes.get_int("transA", 0)
        trans_b = node.attributes.get_int("transB", 0)
        self.only(node, inputs, (0,))
        t = inputs[0]
        if weight is None or weight.ndim != 2:
            if t is not None:
                self.block(t.layout, f"{self.name(node)} has no constant weight")
            return
        if t is not None:
            if trans_a or t.axis != 1:
                self.block(t.layout, f"{self.name(node)} reads channels transposed (transA)")
            else:
                self.edit(node, 1, 1 if trans_b else 0, t.layout, "consumer")
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if bias is not None and constant(bias) is None:
            return  # a computed bias cannot be sliced: these channels stay
        size = weight.shape[0] if trans_b else weight.shape[1]
        layout = self.new_origin("producer", node.outputs[0], 1, size, node.name or "Gemm", node)
        self.edit(node, 1, 0 if trans_b else 1, layout, "weight")
        self.edit(node, 2, -1, layout, "bias")

    def op_MatMul(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        weight = constant(node.inputs[1])
        self.only(node, inputs, (0,))
        t = inputs[0]
        if weight is None or weight.ndim != 2:
            if t is not None:
                self.block(t.layout, f"{self.name(node)} has no constant 2-D weight")
            return
        if t is not None:
            rank = self.rank(node.inputs[0])
            if rank is None or t.axis != rank - 1:
                self.block(t.layout, f"channel axis is not the last axis at {self.name(node)}")
            else:
                self.edit(node, 1, 0, t.layout, "consumer")
        out_rank = self.rank(node.outputs[0])
        if out_rank is None:
            return
        layout = self.new_origin(
            "producer", node.outputs[0], out_rank - 1, weight.shape[1], node.name or "MatMul", node
        )
        self.edit(node, 1, 1, layout, "weight")

    # -- channel-preserving ops --------------------------------------------------------------

    def op_unary(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        if self.only(node, inputs, (0,)) and inputs[0] is not None:
            outputs = len(node.outputs) if node.op_type == "Dropout" else 1
            self.pass_through(node, inputs[0], outputs=outputs)

    def op_pool(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        t = inputs[0]
        if not self.only(node, inputs, (0,)) or t is None:
            return
        if t.axis != 1:
            self.block(t.layout, f"channel axis is not axis 1 at {self.name(node)}")
            return
        self.pass_through(node, t)

    def op_BatchNormalization(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        self.normalization(node, inputs, (1, 2, 3, 4))

    def op_InstanceNormalization(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        self.normalization(node, inputs, (1, 2))

    def normalization(self, node: ir.Node, inputs: list[Tracked | None], params) -> None:
        t = inputs[0]
        if not self.only(node, inputs, (0,)) or t is None:
            return
        if t.axis != 1:
            self.block(t.layout, f"channel axis is not axis 1 at {self.name(node)}")
            return
        for index in params:
            if constant(node.inputs[index]) is None:
                self.block(t.layout, f"{self.name(node)} has a non-constant input {index}")
                return
        for index in params:
            self.edit(node, index, 0, t.layout, "param")
        self.pass_through(node, t)

    def op_LayerNormalization(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        t = inputs[0]
        rank = self.rank(node.inputs[0])
        if not self.only(node, inputs, (0,)) or t is None:
            return
        if rank is None or t.axis >= node.attributes.get_int("axis", -1) % rank:
            self.block(t.layout, f"{self.name(node)} normalizes over the channel axis")
            return
        self.pass_through(node, t)

    def op_softmax(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        t = inputs[0]
        rank = self.rank(node.inputs[0])
        if not self.only(node, inputs, (0,)) or t is None:
            return
        if rank is None:
            self.block(t.layout, f"rank unknown at {self.name(node)}")
            return
        axis = node.attributes.get_int("axis", -1 if self.opset >= 13 else 1) % rank
        if t.axis == axis or (self.opset < 13 and t.axis >= axis):
            self.block(t.layout, f"{self.name(node)} normalizes over the channel axis")
            return
        self.pass_through(node, t)

    def op_elementwise(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        out_rank = self.rank(node.outputs[0])
        tracked = [(i, t) for i, t in enumerate(inputs) if t is not None]
        if out_rank is None:
            for _, t in tracked:
                self.block(t.layout, f"rank unknown at {self.name(node)}")
            return
        main: list[tuple[int, Tracked, int]] = []
        for i, t in tracked:
            in_rank = self.rank(node.inputs[i])
            if in_rank is None:
                self.block(t.layout, f"rank unknown at {self.name(node)}")
                return
            if layout_length(t.layout) > 1:
                main.append((i, t, t.axis + out_rank - in_rank))
        if not main:
            for _, t in tracked:
                self.block(t.layout, f"a single channel is broadcast by {self.name(node)}")
            return
        axis, layout = main[0][2], main[0][1].layout
        for _, t, a in main[1:]:
            if a != axis or not self.unify(layout, t.layout, node):
                for _, t2, _ in main:
                    self.block(t2.layout, f"{self.name(node)} joins differently laid out channels")
                return
        length = layout_length(layout)
        main_indices = {i for i, _, _ in main}
        for i, value in enumerate(node.inputs):
            if value is None or i in main_indices:
                continue
            dims = self.dims(value)
            if dims is None:
                self.block(layout, f"shape of '{value.name}' unknown at {self.name(node)}")
                return
            in_axis = axis - (out_rank - len(dims))
            if in_axis < 0 or dims[in_axis] == 1:
                continue  # broadcast over the channels
            if constant(value) is not None and dims[in_axis] == length:
                self.edit(node, i, in_axis, layout, "param")
                continue
            self.block(layout, f"'{value.name}' varies over the channels at {self.name(node)}")
            return
        self.pass_through(node, Tracked(axis, layout))

    def op_Concat(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        rank = self.rank(node.outputs[0])
        tracked = [t for t in inputs if t is not None]
        if rank is None:
            for t in tracked:
                self.block(t.layout, f"rank unknown at {self.name(node)}")
            return
        axis = node.attributes.get_int("axis", 0) % rank
        if all(t.axis != axis for t in tracked):
            self.op_elementwise(node, inputs)  # concatenated along another axis
            return
        segments: list[Segment] = []
        for value, t in zip(node.inputs, inputs):
            dims = self.dims(value)
            if t is not None and t.axis == axis:
                segments.extend(t.layout)
            elif t is None and dims is not None and isinstance(dims[axis], int):
                segments.append(Segment(None, dims[axis]))
            else:
                for t2 in tracked:
                    self.block(t2.layout, f"{self.name(node)} has an input of unknown width")
                return
        self.set(node.outputs[0], axis, tuple(segments))

    def op_Flatten(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        t = inputs[0]
        dims = self.dims(node.inputs[0])
        if t is None:
            return
        if dims is None:
            self.block(t.layout, f"shape unknown at {self.name(node)}")
            return
        axis = node.attributes.get_int("axis", 1)
        axis = axis + len(dims) if axis < 0 else axis
        inner = _static_product(dims[t.axis + 1 :])
        if t.axis != axis or inner is None:
            self.block(t.layout, f"{self.name(node)} does not keep channels in contiguous blocks")
            return
        self.set(node.outputs[0], 1, _scale_inner(t.layout, inner))

    def op_Reshape(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        t = inputs[0]
        if not self.only(node, inputs, (0,)) or t is None:
            return
        target = constant(node.inputs[1])
        in_dims, out_dims = self.dims(node.inputs[0]), self.dims(node.outputs[0])
        reason = f"{self.name(node)} reshapes the channel axis to an unknown shape"
        if target is None or in_dims is None or out_dims is None:
            self.block(t.layout, f"{reason} (computed or unknown shape)")
            return
        c = t.axis
        suffix = _static_product(in_dims[c + 1 :])
        length = layout_length(t.layout)
        # What each output axis is, read from the shape constant where it says.
        out_eff = [
            int(e) if e > 0 else (in_dims[k] if e == 0 and k < len(in_dims) else out_dims[k])
            for k, e in enumerate(target.reshape(-1))
        ]
        j, layout = None, None
        for k in range(len(out_eff)):
            if suffix is None or _static_product(out_eff[k:]) != length * suffix:
                continue
            if out_eff[k] == length and _static_product(out_eff[k + 1 :]) == suffix:
                j, layout = k, t.layout
            elif k == len(out_eff) - 1 and out_eff[k] == length * suffix:
                j, layout = k, _scale_inner(t.layout, suffix)
        if j is None or layout is None:
            self.block(t.layout, reason)
            return
        entries = [int(e) for e in target.reshape(-1)]
        if node.attributes.get_int("allowzero", 0) and 0 in entries:
            self.block(t.layout, reason)
            return
        entry = entries[j]
        copies_channels = c < len(entries) and entries[c] == 0 and c != j
        if copies_channels or (entry == 0 and (j != c or layout is not t.layout)):
            self.block(t.layout, reason)
            return
        if entry > 0:
            self.shape_edits.append(ShapeEdit(node, 1, j, layout))
        self.set(node.outputs[0], j, layout)

    def op_Transpose(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        t = inputs[0]
        rank = self.rank(node.inputs[0])
        if t is None or rank is None:
            if t is not None:
                self.block(t.layout, f"rank unknown at {self.name(node)}")
            return
        perm = list(node.attributes.get_ints("perm", list(reversed(range(rank)))))
        self.pass_through(node, t, axis=perm.index(t.axis))

    def op_Squeeze(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        t = inputs[0]
        rank = self.rank(node.inputs[0])
        axes = self.axes_of(node, 1)
        if not self.only(node, inputs, (0,)) or t is None:
            return
        if rank is None or not axes:
            self.block(t.layout, f"{self.name(node)} squeezes unknown axes")
            return
        axes = [a % rank for a in axes]
        if t.axis in axes:
            self.block(t.layout, f"{self.name(node)} squeezes the channel axis")
            return
        self.pass_through(node, t, axis=t.axis - sum(a < t.axis for a in axes))

    def op_Unsqueeze(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        t = inputs[0]
        rank = self.rank(node.outputs[0])
        axes = self.axes_of(node, 1)
        if not self.only(node, inputs, (0,)) or t is None:
            return
        if rank is None or axes is None:
            self.block(t.layout, f"{self.name(node)} inserts unknown axes")
            return
        kept = [a for a in range(rank) if a not in {x % rank for x in axes}]
        self.pass_through(node, t, axis=kept[t.axis])

    def op_Slice(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        t = inputs[0]
        rank = self.rank(node.inputs[0])
        axes = self.axes_of(node, 3)
        if not self.only(node, inputs, (0,)) or t is None:
            return
        if rank is None or not axes or t.axis in [a % rank for a in axes]:
            self.block(t.layout, f"{self.name(node)} may slice the channel axis")
            return
        self.pass_through(node, t)

    def op_reduce(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        t = inputs[0]
        rank = self.rank(node.inputs[0])
        axes = self.axes_of(node, 1)
        if not self.only(node, inputs, (0,)) or t is None:
            return
        if rank is None or axes is None:
            self.block(t.layout, f"{self.name(node)} reduces unknown axes")
            return
        if not axes and node.attributes.get_int("noop_with_empty_axes", 0):
            self.pass_through(node, t)
            return
        axes = [a % rank for a in axes] or list(range(rank))
        if t.axis in axes:
            self.block(t.layout, f"{self.name(node)} reduces over the channel axis")
            return
        keep = node.attributes.get_int("keepdims", 1)
        self.pass_through(node, t, axis=t.axis if keep else t.axis - sum(a < t.axis for a in axes))

    def op_Pad(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        t = inputs[0]
        rank = self.rank(node.inputs[0])
        if not self.only(node, inputs, (0,)) or t is None:
            return
        pads = self.axes_of(node, 1, "pads")
        axes = self.axes_of(node, 3)
        if rank is None or not pads or axes is None:
            self.block(t.layout, f"{self.name(node)} has unknown pads")
            return
        axes = [a % rank for a in axes] or list(range(rank))
        if t.axis in axes:
            k = axes.index(t.axis)
            if pads[k] != 0 or pads[k + len(axes)] != 0:
                self.block(t.layout, f"{self.name(node)} pads the channel axis")
                return
        self.pass_through(node, t)

    def op_Resize(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        t = inputs[0]
        rank = self.rank(node.inputs[0])
        if not self.only(node, inputs, (0,)) or t is None:
            return
        scales_index = 1 if self.opset < 11 else 2
        scales = constant(node.inputs[scales_index]) if len(node.inputs) > scales_index else None
        sizes = constant(node.inputs[3]) if len(node.inputs) > 3 else None
        axes = list(node.attributes.get_ints("axes", range(rank or 0)))
        if rank is None:
            self.block(t.layout, f"rank unknown at {self.name(node)}")
            return
        axes = [a % rank for a in axes]
        if t.axis not in axes:
            self.pass_through(node, t)
        elif scales is not None and scales.size:
            if scales[axes.index(t.axis)] != 1:
                self.block(t.layout, f"{self.name(node)} resizes the channel axis")
                return
            self.pass_through(node, t)
        elif sizes is not None and sizes.size:
            self.shape_edits.append(ShapeEdit(node, 3, axes.index(t.axis), t.layout))
            self.pass_through(node, t)
        else:
            self.block(t.layout, f"{self.name(node)} has computed scales or sizes")

    def op_Gather(self, node: ir.Node, inputs: list[Tracked | None]) -> None:
        for t in inputs:
            if t is not None:
                self.block(t.layout, f"channels are consumed by {self.name(node)}")

    # -- finishing ---------------------------------------------------------------------------

    def check_constants(self) -> None:
        """Block weights that are shared or not constant; per-channel params get copied."""
        for edit in self.tensor_edits:
            value = edit.node.inputs[edit.input_index] if edit.input_index < len(
                edit.node.inputs
            ) else None
            if value is None:
                continue
            if constant(value) is None:
                self.block(edit.layout, f"input '{value.name}' of {self.name(edit.node)} is not "
                           "constant")
            elif edit.role not in ("param", "bias") and len(value.uses()) > 1:
                self.block(edit.layout, f"weight '{value.name}' is shared by "
                           f"{len(value.uses())} uses")
        for edit in self.shape_edits:
            if constant(edit.node.inputs[edit.input_index]) is None:
                self.block(edit.layout, f"shape of {self.name(edit.node)} is not constant")
        for origin in self.origins:
            if origin.kind == "input" and origin.value.is_graph_output():
                self.block((Segment(origin.id, origin.size),), "input is a graph output")

    def finish(self) -> ChannelAnalysis:
        components = sorted(
            (sorted(component) for component in nx.connected_components(self.links)),
            key=lambda component: component[0],
        )
        group_of_origin = {o: g for g, component in enumerate(components) for o in component}
        refs: dict[int, tuple[list[ChannelRef], list[ChannelRef]]] = {
            g: ([], []) for g in range(len(components))
        }
        for edit in self.tensor_edits:
            value = edit.node.inputs[edit.input_index] if edit.input_index < len(
                edit.node.inputs
            ) else None
            if value is None:
                continue
            producer = edit.role in ("weight", "bias")
            self.add_refs(refs, group_of_origin, edit.layout, edit.role, edit.node,
                          value.name or "", edit.axis, producer)
        for edit in self.shape_edits:
            self.add_refs(refs, group_of_origin, edit.layout, "shape", edit.node,
                          edit.node.inputs[edit.input_index].name or "", edit.position, False)
        for edit in self.attribute_edits:
            self.add_refs(refs, group_of_origin, edit.layout, "attribute", edit.node,
                          edit.name, 0, False)
        for origin in self.origins:
            if origin.kind == "input":
                refs[group_of_origin[origin.id]][0].append(
                    ChannelRef("input", origin.node.name if origin.node else "",
                               origin.node.op_type if origin.node else "Input",
                               origin.value.name or "", origin.axis, 0, 1)
                )
        groups = []
        for g, component in enumerate(components):
            reasons = [r for o in component for r in self.origins[o].reasons]
            groups.append(
                ChannelGroup(
                    id=g,
                    name=self.origins[component[0]].label,
                    size=self.origins[component[0]].size,
                    producers=refs[g][0],
                    consumers=refs[g][1],
                    blocked_reason="; ".join(dict.fromkeys(reasons)) or None,
                    origins=tuple(component),
                )
            )
        _make_names_unique(groups)
        return ChannelAnalysis(
            model=self.model,
            groups=groups,
            origins=self.origins,
            links=self.links,
            tracked=self.tracked,
            tensor_edits=self.tensor_edits,
            shape_edits=self.shape_edits,
            attribute_edits=self.attribute_edits,
            group_of_origin=group_of_origin,
            dims=self.dims,
        )

    @staticmethod
    def add_refs(refs, group_of_origin, layout, role, node, tensor, axis, producer) -> None:
        for segment, offset, _ in segment_offsets(layout):
            if segment.origin is None:
                continue
            ref = ChannelRef(role, node.name or "", node.op_type, tensor, axis, offset,
                             segment.inner)
            refs[group_of_origin[segment.origin]][0 if producer else 1].append(ref)


def _scale_inner(layout: Layout, factor: int) -> Layout:
    return tuple(Segment(s.origin, s.size, s.inner * factor) for s in layout)


def _make_names_unique(groups: list[ChannelGroup]) -> None:
    seen: dict[str, int] = {}
    for group in groups:
        count = seen.get(group.name, 0)
        seen[group.name] = count + 1
        if count:
            group.name = f"{group.name}#{count}"
