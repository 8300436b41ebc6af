"""Graph surgery for `EliminateNeuronsPass`: cut removed channels out of every tensor, shape
constant and attribute the channel analysis found, and gather model-input features in the graph."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxcomp.channels import ChannelAnalysis, Layout, constant, layout_length, segment_offsets


class Namer:
    """Fresh names: a base name, or the base with the first free `_<n>` suffix."""

    def __init__(self, graph: ir.Graph):
        self.taken = {v.name for v in graph.inputs} | set(graph.initializers)
        self.taken |= {v.name for node in graph for v in node.outputs}
        self.taken |= {node.name for node in graph}

    def __call__(self, base: str) -> str:
        name, count = base, 0
        while name in self.taken:
            count += 1
            name = f"{base}_{count}"
        self.taken.add(name)
        return name


def write_constant(graph: ir.Graph, node: ir.Node, index: int, array: np.ndarray, namer: Namer) -> None:
    """Give input ``index`` of ``node`` a new constant; copies a constant that is shared."""
    value = node.inputs[index] if index < len(node.inputs) else None
    if (
        value is not None
        and value.is_initializer()
        and not value.is_graph_output()
        and len(value.uses()) == 1
    ):
        value.const_value = ir.tensor(array, name=value.name)
        value.shape = ir.Shape(array.shape)
        return
    base = value.name if value is not None else f"{node.name or node.op_type}_bias"
    new = ir.Value(
        name=namer(base),
        shape=ir.Shape(array.shape),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
    )
    new.const_value = ir.tensor(array, name=new.name)
    graph.register_initializer(new)
    if index >= len(node.inputs):
        node.resize_inputs(index + 1)
    node.replace_input_with(index, new)
    producer = value.producer() if value is not None else None
    if producer is not None and producer.op_type == "Constant" and not value.uses():
        graph.remove(producer, safe=True)


def _keep_indices(layout: Layout, masks: dict[int, np.ndarray]) -> np.ndarray | None:
    """Element indices kept along an axis laid out as ``layout``; None if nothing changes."""
    parts, changed = [], False
    for segment, offset, _ in segment_offsets(layout):
        mask = masks.get(segment.origin) if segment.origin is not None else None
        if mask is None:
            parts.append(np.arange(offset, offset + segment.length))
            continue
        changed |= not mask.all()
        kept = np.flatnonzero(mask)
        parts.append((offset + kept[:, None] * segment.inner + np.arange(segment.inner)).ravel())
    return np.concatenate(parts).astype(np.int64) if changed else None


def cut_channels(analysis: ChannelAnalysis, masks: dict[int, np.ndarray], namer: Namer) -> None:
    """Cut the masked-out channels (keep masks per origin id) everywhere the analysis found them."""
    graph = analysis.model.graph
    for edit in analysis.tensor_edits:
        keep = _keep_indices(edit.layout, masks)
        array = constant(edit.value) if keep is not None else None
        if array is None:
            continue
        axis = edit.axis
        if axis < 0:  # a Gemm bias is cut only where it does not broadcast
            if array.ndim == 0 or array.shape[-1] != layout_length(edit.layout):
                continue
            axis = array.ndim - 1
        write_constant(graph, edit.node, edit.input_index, np.take(array, keep, axis=axis), namer)
    for edit in analysis.shape_edits:
        keep = _keep_indices(edit.layout, masks)
        if keep is None:
            continue
        array = constant(edit.node.inputs[edit.input_index]).copy()  # type: ignore[union-attr]
        if array[edit.position] > 0:
            array[edit.position] = len(keep)
            write_constant(graph, edit.node, edit.input_index, array, namer)
    for edit in analysis.attribute_edits:
        keep = _keep_indices(edit.layout, masks)
        if keep is not None:
            edit.node.attributes[edit.name] = ir.AttrInt64(edit.name, len(keep))

    gathered: set[ir.Value] = set()
    for origin in analysis.origins:
        if origin.kind == "input" and origin.id in masks:
            keep = _keep_indices(analysis.tracked[origin.value].layout, masks)
            if keep is not None and _gather_input(graph, origin.value, origin.node,
                                                  origin.axis, keep, namer):
                gathered.add(origin.value)

    for value, tracked in analysis.tracked.items():
        keep = _keep_indices(tracked.layout, masks)
        if keep is None or value in gathered or value.is_graph_input() or value.shape is None:
            continue
        dims = list(value.shape.dims)
        if tracked.axis < len(dims):
            dims[tracked.axis] = len(keep)
            value.shape = ir.Shape(dims)


def _gather_input(
    graph: ir.Graph,
    value: ir.Value,
    node: ir.Node | None,
    axis: int,
    keep: np.ndarray,
    namer: Namer,
) -> bool:
    """Drop input features: rewrite an existing Gather's indices or insert a new Gather.

    Returns whether a new Gather now reads ``value`` (whose own shape then stays).
    """
    if node is not None and node.op_type == "Gather":
        indices = constant(node.inputs[1])
        write_constant(graph, node, 1, indices[keep], namer)  # type: ignore[index]
        return False
    indices = ir.Value(name=namer(f"{value.name}_kept_index"), shape=ir.Shape(keep.shape),
                       type=ir.TensorType(ir.DataType.INT64))
    indices.const_value = ir.tensor(keep, name=indices.name)
    graph.register_initializer(indices)
    gather = ir.node("Gather", [value, indices], {"axis": axis}, name=namer(f"{value.name}_keep"))
    out = gather.outputs[0]
    out.name = namer(f"{value.name}_kept")
    out.type = value.type
    if value.shape is not None:
        dims = list(value.shape.dims)
        dims[axis] = len(keep)
        out.shape = ir.Shape(dims)
    for use in list(value.uses()):
        if use.node is not gather:
            use.node.replace_input_with(use.idx, out)
    producer = value.producer()
    if producer is None:
        graph.insert_before(graph[0], gather)
    else:
        graph.insert_after(producer, gather)
    return True
