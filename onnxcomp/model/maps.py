"""Map-typed graph outputs: scikit-learn converters' ZipMap, set aside while compressing.

skl2onnx ends every classifier with a ZipMap by default: it turns the [N, C] probability tensor
into a sequence of maps {class label: probability}, the form the application reads. onnx_ir
cannot import map types. A ZipMap that only turns a tensor into such a graph output is taken off
at load (`detach_maps`: the tensor becomes the graph output in its place, so the model is
compressed and verified on the probabilities themselves) and put back in the written file
(`attach_maps`), with the original output's name, position and type. The bytes it takes are
reserved in the budget (`reserved_bytes`).
"""

from __future__ import annotations

import dataclasses

import onnx

ML_DOMAIN = "ai.onnx.ml"
META_KEY = "onnxcomp.detached_maps"  # ir.Model.meta: the model's detached ZipMaps, for the writer


@dataclasses.dataclass(frozen=True)
class DetachedMap:
    """One ZipMap taken off: where its output was and what to put back."""

    position: int  # among the graph outputs
    tensor: str  # the ZipMap's input: the graph output while detached
    node: bytes  # the ZipMap NodeProto
    output: bytes  # the map output's ValueInfoProto
    ml_opset: int  # the ai.onnx.ml opset the node needs


def is_map(kind: onnx.TypeProto) -> bool:
    """Whether a type is a map or a sequence of maps."""
    while kind.HasField("sequence_type"):
        kind = kind.sequence_type.elem_type
    return kind.HasField("map_type")


def detach_maps(proto: onnx.ModelProto) -> list[DetachedMap]:
    """Take off (in place) each ZipMap whose map output is a graph output and nothing else reads;
    its input tensor takes the output's place. Returns what `attach_maps` puts back; other map
    values are left as they are (the loader refuses them)."""
    graph = proto.graph
    producers = {output: node for node in graph.node for output in node.output}
    read = {name for node in graph.node for name in node.input}
    outputs = {value.name for value in graph.output}
    graph_inputs = {value.name for value in graph.input}
    ml_opset = next((entry.version for entry in proto.opset_import if entry.domain == ML_DOMAIN), 1)
    detached, zipmaps = [], []
    for position, value in enumerate(graph.output):
        node = producers.get(value.name)
        if not is_map(value.type) or node is None or node.op_type != "ZipMap" or node.domain != ML_DOMAIN \
                or len(node.input) != 1 or value.name in read:
            continue
        tensor = node.input[0]
        if tensor in outputs or tensor in graph_inputs:
            continue
        detached.append(DetachedMap(position, tensor, node.SerializeToString(), value.SerializeToString(), ml_opset))
        zipmaps.append(node)
    if not detached:
        return []
    types = _tensor_types(proto, {d.tensor for d in detached})
    for d, node in zip(detached, zipmaps):
        graph.output[d.position].CopyFrom(types[d.tensor])
        graph.node.remove(node)
    kept = [value for value in graph.value_info if not is_map(value.type)]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return detached


def _tensor_types(proto: onnx.ModelProto, names: set[str]) -> dict[str, onnx.ValueInfoProto]:
    """Each named tensor's ValueInfo: declared, else shape inference's, else float of unknown shape
    (ZipMap reads float probabilities)."""
    declared = {value.name: value for value in proto.graph.value_info if value.name in names}
    if len(declared) < len(names):
        try:
            inferred = onnx.shape_inference.infer_shapes(proto).graph.value_info
        except Exception:  # noqa: BLE001 - inference is a refinement only
            inferred = []
        declared |= {value.name: value for value in inferred if value.name in names and value.name not in declared}
    return {name: declared.get(name) or onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            for name in names}


def reserved_bytes(detached: list[DetachedMap]) -> int:
    """An upper bound on the bytes `attach_maps` adds: each node and output, field headers and an
    ai.onnx.ml opset import."""
    return sum(len(d.node) + len(d.output) + 16 for d in detached) + (32 if detached else 0)


def attach_maps(data: bytes, detached: list[DetachedMap]) -> bytes:
    """The serialized model `data` with each detached ZipMap back: its node, and its map output in
    place of the tensor (same name, position and type as in the input file)."""
    if not detached:
        return data
    proto = onnx.load_from_string(data)
    graph = proto.graph
    for d in detached:
        if d.position >= len(graph.output) or graph.output[d.position].name != d.tensor:
            raise ValueError(f"graph output {d.position} is not {d.tensor!r}: cannot put its ZipMap back")
        graph.output[d.position].ParseFromString(d.output)
        graph.node.add().ParseFromString(d.node)
    version = max(d.ml_opset for d in detached)
    entry = next((entry for entry in proto.opset_import if entry.domain == ML_DOMAIN), None)
    if entry is None:
        proto.opset_import.add(domain=ML_DOMAIN, version=version)
    elif entry.version < version:
        entry.version = version
    return proto.SerializeToString()


__all__ = ["DetachedMap", "META_KEY", "attach_maps", "detach_maps", "is_map", "reserved_bytes"]
