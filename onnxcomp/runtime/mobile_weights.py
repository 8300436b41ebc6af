"""Decoded weights for an ORT-format model: each weight's decode subgraph evaluated, stored dense
or as a COO ``sparse_initializer``, whichever is smaller (see `onnxcomp.runtime.mobile`).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import onnx

from onnxcomp import modelfile

logger = logging.getLogger(__name__)

ORT_WEIGHTS = ("auto", "dense", "sparse", "packed")


def _index_bytes(max_index: int) -> int:
    """Bytes per index ONNX Runtime uses when it saves a sparse initializer in ORT format."""
    for size, dtype in ((1, np.int8), (2, np.int16), (4, np.int32)):
        if max_index <= np.iinfo(dtype).max:
            return size
    return 8


def _nonzero(flat: np.ndarray) -> np.ndarray:
    """Positions ONNX Runtime keeps when it sparsifies: it tests the bits, so -0.0 counts as non-zero."""
    return np.flatnonzero(flat.view(np.uint32) if flat.dtype == np.float32 else flat)


def sparse_form_bytes(array: np.ndarray) -> int:
    """Bytes of a float32 weight's values + indices as an ORT-format sparse initializer."""
    flat = np.ascontiguousarray(array).reshape(-1)
    nonzero = _nonzero(flat)
    if not nonzero.size:
        return 0
    return int(nonzero.size * (flat.itemsize + _index_bytes(int(nonzero[-1]))))


def make_sparse_initializer(name: str, array: np.ndarray) -> onnx.SparseTensorProto:
    """A COO sparse tensor with flat int64 indices (the ONNX standard form; ORT narrows them itself)."""
    flat = np.ascontiguousarray(array).reshape(-1)
    nonzero = _nonzero(flat)
    values = onnx.numpy_helper.from_array(flat[nonzero], name)
    indices = onnx.numpy_helper.from_array(nonzero.astype(np.int64), f"{name}.indices")
    return onnx.helper.make_sparse_tensor(values, indices, list(array.shape))


def ort_ready_model(model_path: str | os.PathLike) -> tuple[onnx.ModelProto, list[dict]]:
    """The model with every weight's decode subgraph replaced by its decoded value, each weight
    stored as a plain initializer or a `sparse_initializer`, whichever the .ort holds in fewer
    bytes. Returns the model and one row per float weight (name, shape, form, bytes).

    Decoding reuses `onnxcomp.reporting.report.stored_weights` (decode subgraphs evaluated in ONNX Runtime).
    The result may not pass `onnx.checker` (it rejects some valid sparse initializers); ONNX
    Runtime loads it.
    """
    from onnxcomp.reporting.report import stored_weights

    proto = onnx.load(str(model_path), load_external_data=False)
    graph = proto.graph
    graph_inputs = {value.name for value in graph.input}
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    producer = {output: node for node in graph.node for output in node.output}
    rows = []
    replaced: set[str] = set()
    candidates: set[str] = set()  # initializers feeding replaced decode subgraphs
    decode_inputs: set[str] = set()  # inputs of rewritten row decodes, dropped when nothing else reads them
    for weight in stored_weights(modelfile.load_model(model_path)):
        array = np.ascontiguousarray(weight.array)
        name = weight.name
        decoded = name in producer and name not in initializers
        if array.dtype != np.float32 or not (decoded or name in initializers) or name in graph_inputs or name in replaced:
            continue
        dense_bytes, sparse_bytes = int(array.nbytes), sparse_form_bytes(array)
        form = "sparse" if sparse_bytes < dense_bytes else "dense"
        rows.append({"name": name, "shape": list(array.shape), "stored_as": weight.encoding, "form": form,
                     "nonzero": int(_nonzero(array.reshape(-1)).size), "dense_bytes": dense_bytes, "sparse_bytes": sparse_bytes})
        if not decoded and form == "dense":
            continue  # already a plain initializer
        if weight.ids is not None:  # decoded per looked-up row at run time: Gather rows of the dense table
            rows[-1]["form"] = "dense"
            _gather_rows(graph, producer[name], array, weight.ids.name, decode_inputs)
            candidates.update(source.name for source in weight.sources if source.name)
            continue
        replaced.add(name)
        if decoded:
            candidates.update(source.name for source in weight.sources if source.name)
        else:
            graph.initializer.remove(initializers.pop(name))
        if form == "sparse":
            graph.sparse_initializer.append(make_sparse_initializer(name, array))
        else:
            graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    _drop_dead_decode_nodes(graph, replaced, candidates, decode_inputs)
    return proto, rows


def _gather_rows(graph: onnx.GraphProto, last: onnx.NodeProto, table: np.ndarray, ids: str, dropped: set[str]) -> None:
    """Turn a run-time row decode's final Gather into a Gather of the dense table's rows."""
    name = f"{last.output[0]}_table"
    graph.initializer.append(onnx.numpy_helper.from_array(table, name))
    dropped.update(last.input)
    del last.input[:]
    last.input.extend([name, ids])


def _used_names(graph: onnx.GraphProto) -> set[str]:
    used = {value.name for value in graph.output}
    for node in graph.node:
        used.update(node.input)
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                used |= _used_names(subgraph)  # outer-scope names read inside subgraphs
    return used


def _drop_dead_decode_nodes(graph: onnx.GraphProto, replaced: set[str], candidates: set[str],
                            dropped: set[str] = frozenset()) -> None:
    """Remove the nodes that produced the replaced weights, then whatever decode nodes and
    initializers nothing reads any more (only those of the replaced weights' subgraphs and the
    `dropped` values)."""
    decode_nodes = list(dropped)
    for node in list(graph.node):
        if replaced & set(node.output):
            graph.node.remove(node)
            decode_nodes.extend(node.input)
    pending = set(decode_nodes)
    while pending:
        used = _used_names(graph)
        removed = False
        for node in list(graph.node):
            if set(node.output) & pending and not set(node.output) & used:
                graph.node.remove(node)
                pending.update(node.input)
                removed = True
        if not removed:
            break
    used = _used_names(graph)
    for tensor in list(graph.initializer):
        if tensor.name in candidates | pending and tensor.name not in used and tensor.name not in replaced:
            graph.initializer.remove(tensor)
    kept = used | {value.name for value in graph.output}
    for info in list(graph.value_info):
        if info.name not in kept:
            graph.value_info.remove(info)
