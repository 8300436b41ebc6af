"""The tracer: follows channels forward through a graph, node by node, with per-op rules."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import networkx as nx
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import _c_api_utils

from onnxcomp.channels.types import (
    AttributeEdit,
    ChannelAnalysis,
    ChannelGroup,
    ChannelRef,
    Dim,
    Layout,
    Origin,
    Segment,
    ShapeEdit,
    TensorEdit,
    Tracked,
    constant,
    segment_offsets,
)

logger = logging.getLogger(__name__)

Rule = Callable[["Tracer", ir.Node, list[Tracked | None]], None]
"""Follows the channels of a node's inputs (None: no channels) to its outputs, or blocks them."""


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


class Tracer:
    """Follows channels forward through the graph, one node at a time in graph order.

    ``rules`` maps an ONNX op type to the function that follows channels through it; a node
    of another op type (or domain) that channels reach blocks them.
    """

    def __init__(self, model: ir.Model, rules: Mapping[str, Rule]):
        self.model = model
        self.rules = rules
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
        handler = self.rules.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if handler is not None and node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            handler(self, node, inputs)  # weight layers start origins even without tracked inputs
        elif not any(inputs):
            if node.op_type in ("Flatten", "Reshape", "Gather"):
                self.maybe_input_origin(node)
        elif handler is None:
            for t in inputs:
                if t is not None:
                    self.block(t.layout, f"channels are consumed by unsupported {self.name(node)}")
        else:
            handler(self, node, inputs)

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
    # -- finishing ---------------------------------------------------------------------------

    def check_constants(self) -> None:
        """Block weights that are shared or not constant; per-channel params get copied."""
        for edit in self.tensor_edits:
            value = edit.value
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
            value = edit.value
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


def _make_names_unique(groups: list[ChannelGroup]) -> None:
    seen: dict[str, int] = {}
    for group in groups:
        count = seen.get(group.name, 0)
        seen[group.name] = count + 1
        if count:
            group.name = f"{group.name}#{count}"
