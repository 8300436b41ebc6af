"""Bounds on what a small model file can make onnxcomp (or ONNX Runtime) spend.

A few kilobytes of ONNX can ask for unbounded work: a `Loop` with a trip count of 1e15 spins
for days inside ONNX Runtime, `If` nested 30 deep makes ONNX Runtime's session creation double
its time per level (0.03 s at depth 11, 0.9 s at 16, 43 s at 21, measured with 1.19.2), and a
sparse initializer can declare a dense shape of terabytes. Each bound here is checked on the
protobuf before anything is allocated or any session is created, and the message names it.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx
from onnx import numpy_helper

from onnxcomp.errors import OnnxcompError

logger = logging.getLogger(__name__)

MAX_NODES = 50_000  # all graphs together; LLM exports have ~5-30k; compress holds ~11 KB per node (99k: 1.5 GB RSS)
MAX_SUBGRAPH_DEPTH = 12  # If/Loop/Scan bodies inside bodies (~0.06 s to load at 12); real models nest 1-4 deep
MAX_LOOP_TRIPS = 100_000  # a constant Loop trip count; a trivial body runs ~1.5 us per trip in ONNX Runtime
MAX_DENSIFIED_BYTES = 1 << 30  # sparse initializers made dense, all together
# One value the graph computes or declares (an input, an intermediate, an output), its size known
# from the file alone: at most the larger of this and the model's own bytes. ConstantOfShape,
# Expand, Range or Tile with constant operands can ask for terabytes from a few bytes (ONNX
# Runtime folds the constant ones while it creates a session); onnxcomp's batches keep all of a
# batch's activations within 256 MiB (`onnxcomp.model.memory.ACTIVATION_BUDGET`), so one value over it
# cannot run within the memory the design plans for a small file.
MAX_VALUE_BYTES = 256 << 20
STRIP_ELEMENTS = 1024  # initializers above this many elements are left out of shape inference (weights)


def check_graph(proto: onnx.ModelProto) -> None:
    """Refuse models over MAX_NODES nodes, with subgraphs nested over MAX_SUBGRAPH_DEPTH deep,
    or with a `Loop` that runs over MAX_LOOP_TRIPS times or never ends.

    Raises:
        OnnxcompError: naming the node and the limit.
    """
    counted = [0]
    _walk(proto.graph, depth=0, constants=_Constants(), counted=counted)


class _Constants:
    """Integer scalars known in a graph and the graphs around it (initializers, Constant nodes)."""

    def __init__(self, outer: _Constants | None = None):
        self.outer = outer
        self.values: dict[str, int] = {}

    def get(self, name: str) -> int | None:
        if name in self.values:
            return self.values[name]
        return self.outer.get(name) if self.outer else None

    def add_tensor(self, name: str, tensor: onnx.TensorProto) -> None:
        if math.prod(tensor.dims) != 1 or tensor.data_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            return
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            return
        try:
            self.values[name] = int(numpy_helper.to_array(tensor).reshape(-1)[0])
        except Exception:  # unreadable data is reported by the tensor checks
            logger.debug("trip count %s not readable", name)


def _walk(graph: onnx.GraphProto, depth: int, constants: _Constants, counted: list[int]) -> None:
    if depth > MAX_SUBGRAPH_DEPTH:
        raise OnnxcompError(f"subgraph {graph.name!r} is nested {depth} deep (If/Loop/Scan bodies inside bodies); "
                            f"the limit is {MAX_SUBGRAPH_DEPTH} (ONNX Runtime's loading time doubles per level)")
    counted[0] += len(graph.node)
    if counted[0] > MAX_NODES:
        raise OnnxcompError(f"the model has more than {MAX_NODES:,} nodes (graph {graph.name!r}); the limit is {MAX_NODES:,}")
    scope = _Constants(constants)
    for tensor in graph.initializer:
        scope.add_tensor(tensor.name, tensor)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            for attribute in node.attribute:
                if attribute.name == "value":
                    scope.add_tensor(node.output[0], attribute.t)
                elif attribute.name == "value_int":
                    scope.values[node.output[0]] = attribute.i
        if node.op_type == "Loop" and node.domain in ("", "ai.onnx"):
            _check_loop(node, scope)
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _walk(attribute.g, depth + 1, scope, counted)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    _walk(subgraph, depth + 1, scope, counted)


def _check_loop(node: onnx.NodeProto, scope: _Constants) -> None:
    label = f"Loop node {node.name or (node.output[0] if node.output else '')!r}"
    trips = scope.get(node.input[0]) if node.input and node.input[0] else None
    if trips is not None and trips > MAX_LOOP_TRIPS:
        raise OnnxcompError(f"{label} runs {trips:,} iterations; the limit is {MAX_LOOP_TRIPS:,} (a run would not end)")
    if node.input and node.input[0]:
        return  # a trip count bounds the loop (if computed, by the model's own inputs)
    body = next((a.g for a in node.attribute if a.name == "body" and a.type == onnx.AttributeProto.GRAPH), None)
    if body is None or len(body.input) < 2 or not body.output:
        return
    condition_in, condition_out = body.input[1].name, body.output[0].name
    passed_through = condition_out == condition_in or any(
        n.op_type == "Identity" and list(n.input) == [condition_in] and condition_out in n.output for n in body.node)
    if passed_through:
        raise OnnxcompError(f"{label} has no trip count and its body never changes the loop condition: it never ends")


def check_value_sizes(proto: onnx.ModelProto, model_bytes: int) -> None:
    """Refuse a value whose size, from declared shapes and ONNX shape inference on the file alone
    (constant initializer operands read; dimensions not known count as 1), exceeds the larger of
    MAX_VALUE_BYTES and `model_bytes` (the model file and its external data).

    Shape inference is a best effort: a model it cannot process is left to the later checks.

    Raises:
        OnnxcompError: naming the value, its shape and the limit.
    """
    limit = max(MAX_VALUE_BYTES, model_bytes)
    stripped = onnx.ModelProto()
    stripped.ir_version = proto.ir_version
    stripped.opset_import.extend(proto.opset_import)
    stripped.functions.extend(proto.functions)
    stripped.graph.CopyFrom(shape_only(proto.graph))
    stripped.graph.value_info.extend(proto.graph.value_info)
    _fold_small_constants(stripped.graph)
    try:
        # Without data propagation: it would materialise Range outputs as shapes (Range(0, 1e7) holds
        # 1.4 GB for 9 s); the inference functions still read constant operands from initializers.
        inferred = onnx.shape_inference.infer_shapes(stripped, strict_mode=False, data_prop=False)
    except Exception as error:  # noqa: BLE001 - e.g. an op shape inference rejects: the checker reports it
        logger.debug("shape inference for value sizes failed: %s", error)
        return
    for graph in _graphs(inferred.graph):
        initializers = {tensor.name for tensor in graph.initializer}
        for value in (*graph.input, *graph.value_info, *graph.output):
            if value.name in initializers:
                continue  # stored in the file: its size is its data's (checked by the loader)
            size, dims = _lower_bound_bytes(value)
            if size > limit:
                raise OnnxcompError(f"value {value.name!r} of graph {graph.name!r} is declared or inferred as {dims} "
                                    f"({size:,} B); the limit for one value is {limit:,} B (the larger of "
                                    f"{MAX_VALUE_BYTES >> 20} MiB and the model's size)")


SMALL_CONSTANT = 1024  # elements: shape-like constants (Range limits, Expand shapes) are far smaller
_ELEMENTWISE = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Max": np.maximum, "Min": np.minimum}


def _fold_small_constants(graph: onnx.GraphProto) -> None:
    """Compute, in order, the main graph's nodes that do arithmetic on small constants (Add, Sub,
    Mul, Max, Min, Neg, Abs, Cast, Concat, Identity of initializers or Constant nodes), and add
    the small results as initializers, so that shape inference sees e.g. a Range limit of
    Mul(30000, 30000). Nothing large is computed: every operand has at most SMALL_CONSTANT elements."""
    known = {}
    for tensor in graph.initializer:
        if math.prod(tensor.dims) <= SMALL_CONSTANT and tensor.data_location != onnx.TensorProto.EXTERNAL:
            try:
                known[tensor.name] = numpy_helper.to_array(tensor)
            except Exception:  # noqa: BLE001 - unreadable data is the loader's to report
                logger.debug("initializer %s not readable", tensor.name)
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or not node.output:
            continue
        attributes = {a.name: a for a in node.attribute}
        try:
            if node.op_type == "Constant" and "value" in attributes and math.prod(attributes["value"].t.dims) <= SMALL_CONSTANT:
                result = numpy_helper.to_array(attributes["value"].t)
            elif not node.input or not all(name in known for name in node.input):
                continue
            elif node.op_type in _ELEMENTWISE and len(node.input) == 2:
                with np.errstate(all="ignore"):
                    result = _ELEMENTWISE[node.op_type](known[node.input[0]], known[node.input[1]])
            elif node.op_type in ("Neg", "Abs", "Identity"):
                result = {"Neg": np.negative, "Abs": np.abs, "Identity": np.asarray}[node.op_type](known[node.input[0]])
            elif node.op_type == "Cast" and "to" in attributes:
                with np.errstate(all="ignore"):
                    result = known[node.input[0]].astype(onnx.helper.tensor_dtype_to_np_dtype(attributes["to"].i))
            elif node.op_type == "Concat" and "axis" in attributes:
                result = np.concatenate([known[name] for name in node.input], axis=attributes["axis"].i)
            else:
                continue
        except Exception:  # noqa: BLE001 - operands the op rejects: ONNX Runtime will say so
            continue
        result = np.asarray(result)
        if result.size <= SMALL_CONSTANT and result.dtype.kind in "biuf" and node.output[0] not in known:
            known[node.output[0]] = result
            graph.initializer.append(numpy_helper.from_array(result, node.output[0]))


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _graphs(subgraph)


def _lower_bound_bytes(value: onnx.ValueInfoProto) -> tuple[int, list]:
    """(bytes with unknown dimensions as 1, the dims as shown) of a tensor value; (0, []) otherwise."""
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return 0, []
    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else (d.dim_param or "?") for d in tensor.shape.dim]
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 1
    return math.prod(d if isinstance(d, int) else 1 for d in dims) * itemsize, dims


def densify_sparse_initializers(graph: onnx.GraphProto) -> bool:
    """Turn the graph's `sparse_initializer`s into dense initializers of the same name, so they
    are compressed like any other weight (ONNX Runtime densifies them at load anyway).

    Returns whether any was converted. Raises OnnxcompError for indices out of range, values
    that are not numbers, or more than MAX_DENSIFIED_BYTES of dense data.
    """
    if not graph.sparse_initializer:
        return False
    total = 0
    dense = []
    for sparse in graph.sparse_initializer:
        name = sparse.values.name or "<unnamed>"
        dims = [int(d) for d in sparse.dims]
        try:
            values = numpy_helper.to_array(sparse.values).reshape(-1)
            indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
        except Exception as error:
            raise OnnxcompError(f"sparse initializer {name!r} has unreadable values or indices ({type(error).__name__})") from None
        if values.dtype.kind not in "biuf":
            raise OnnxcompError(f"sparse initializer {name!r} holds {values.dtype} values; only numbers can be made dense")
        count = math.prod(dims)
        if any(d < 0 for d in dims):
            raise OnnxcompError(f"sparse initializer {name!r} has a negative dimension {dims}")
        total += count * values.dtype.itemsize
        if total > MAX_DENSIFIED_BYTES:
            raise OnnxcompError(f"sparse initializer {name!r} would take {count * values.dtype.itemsize:,} B dense "
                                f"(shape {dims}); the limit for all of them is {MAX_DENSIFIED_BYTES:,} B")
        if indices.ndim == 2 and indices.shape[1:] == (len(dims),) and indices.shape[0] == values.size:
            if indices.size and (np.any(indices < 0) or np.any(indices >= np.array(dims))):
                raise OnnxcompError(f"sparse initializer {name!r} has indices outside its shape {dims}")
            flat = np.ravel_multi_index(tuple(indices.T), dims) if indices.size else np.zeros(0, np.int64)
        elif indices.ndim == 1 and indices.size == values.size:
            flat = indices
            if flat.size and (flat.min() < 0 or flat.max() >= count):
                raise OnnxcompError(f"sparse initializer {name!r} has indices outside its shape {dims}")
        else:
            raise OnnxcompError(f"sparse initializer {name!r}: {indices.shape} indices do not fit {values.size} values of rank {len(dims)}")
        array = np.zeros(count, dtype=values.dtype)
        array[flat] = values
        dense.append(numpy_helper.from_array(array.reshape(dims), sparse.values.name))
    logger.info("made %d sparse initializer(s) dense (%s B)", len(dense), f"{total:,}")
    del graph.sparse_initializer[:]
    graph.initializer.extend(dense)
    return True


def shape_only(graph: onnx.GraphProto) -> onnx.GraphProto:
    """``graph`` with large initializers turned into inputs of the same type and shape (their
    values are not needed to infer shapes; small ones, such as Reshape targets, are kept)."""
    copy = onnx.GraphProto()
    copy.name = graph.name
    copy.node.extend(graph.node)
    copy.input.extend(graph.input)
    copy.output.extend(graph.output)
    listed = {v.name for v in graph.input}
    for tensor in graph.initializer:
        if int(np.prod(tensor.dims, dtype=np.int64)) > STRIP_ELEMENTS:
            if tensor.name not in listed:
                copy.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        else:
            copy.initializer.append(tensor)
    return copy
