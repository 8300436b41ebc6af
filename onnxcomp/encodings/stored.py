"""Weights as a saved model stores them: found by the compute op that reads them, decoded in
ONNX Runtime (decode subgraphs and run-time row decodes), and named as the original model named
them (the `NAMES_KEY` map `compress` keeps). `onnxcomp.reporting.report` builds every per-weight row from
these; the mobile export decodes with them."""

from __future__ import annotations

import dataclasses
import json
import logging

import numpy as np
import onnx_ir as ir

from onnxcomp.encodings.decode import CARRIERS
from onnxcomp.encodings.row_lookup import decoded_tables
from onnxcomp.model.subgraphs import loop_body_value
from onnxcomp.model.weights import FLOAT_TYPES, INTEGER_TYPES, MIN_TABLE_ELEMENTS, QUANTIZED_SLOTS, TABLE_OPS, WEIGHT_SLOTS

logger = logging.getLogger(__name__)


# Weight inputs of already-quantized ops (their integer weights are re-coded like float ones).
STORED_SLOTS = WEIGHT_SLOTS | {op: dict.fromkeys(slots, "weight") for op, slots in QUANTIZED_SLOTS.items()}


# Graph metadata of a compressed model: {stored name: the weight's name in the original model}
# (JSON). Compress shortens internal names to save bytes; this keeps the names a user knows, at
# about their length in bytes, counted in the target.
NAMES_KEY = "onnxcomp.weight_names"


@dataclasses.dataclass
class StoredWeight:
    """A weight as a model stores it: its dense value (decoded if encoded) and its stored form.

    ``use`` identifies the weight by position, independent of (shortened) names: the first
    compute node that reads it as (op type, index among compute nodes of that type, input index).
    ``stored_bytes`` counts the tensor data of the initializers it is stored in (codes,
    codebooks, positions, scales); an initializer read by several weights' decodes (a shared
    shift or shape constant) belongs to none of them.
    """

    name: str
    role: str
    array: np.ndarray
    encoding: str
    stored_bytes: int
    sources: list[ir.Value]
    use: tuple[str | int, ...]
    ids: ir.Value | None = None  # a table decoded per looked-up row at run time (onnxcomp.encodings.row_lookup): its indices
    original_name: str | None = None  # from the model's NAMES_KEY map, when it has one
    itemsize: int | None = None  # bytes per value of the type it is stored in, when `array` is wider (bfloat16)

    @property
    def label(self) -> str:
        """The name a user knows: the original model's, else the stored one."""
        return self.original_name or self.name


@dataclasses.dataclass
class _Found:
    """A weight located in a graph, not yet evaluated: the value its compute node reads (a
    run-time row decode: the decoded rows), its role and use, the row decode's nodes, and the
    weight in its own type where the model converts it before use (`_own_form`)."""

    value: ir.Value
    role: str
    use: tuple[str | int, ...]
    row: tuple[ir.Node, ir.Value] | None = None  # (last Gather, ids)
    own: ir.Value | None = None

    @property
    def weight(self) -> ir.Value:
        return self.own or self.value

    def sources(self) -> list[ir.Value]:
        if self.row is not None:
            return _source_initializers(self.value, stop=self.row[1])
        return [self.value] if self.value.const_value is not None else _source_initializers(self.value)


def _locate(model: ir.Model) -> list[_Found]:
    """Every float (or integer) weight's reading value in first-use order, without decoding."""
    constant_producers = _constant_values(model.graph)
    seen_values: set[int] = set()
    seen_ops: dict[str, int] = {}
    row_tables = {id(first): (last, ids) for first, last, ids in decoded_tables(model.graph)}
    row_nodes = {id(n) for last, ids in row_tables.values() for n in _producers(last.outputs[0], stop=ids)}
    loops = {id(node.attributes["body"].as_graph()): node for node in ir.traversal.RecursiveGraphIterator(model.graph)
             if node.op_type == "Loop" and node.attributes.get("body") is not None}
    found: list[_Found] = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):  # weights read inside If/Loop bodies too
        if node.inputs and all(i is None or id(i) in constant_producers for i in node.inputs):
            continue  # part of a decode subgraph (or other load-time constant), not a compute op
        if id(node) in row_nodes:
            if id(node) in row_tables:  # the table's Gather, as the original model had it
                occurrence = seen_ops.get("Gather", 0)
                seen_ops["Gather"] = occurrence + 1
                last, ids = row_tables[id(node)]
                found.append(_Found(last.outputs[0], "weight", ("Gather", occurrence, 0), (last, ids)))
            continue
        occurrence = seen_ops.get(node.op_type, 0)
        seen_ops[node.op_type] = occurrence + 1
        for index, role in _slots(node).items():
            if index >= len(node.inputs) or node.inputs[index] is None:
                continue
            value = _carried_from(node.inputs[index], node.graph, loops)
            if id(value) not in constant_producers and value.const_value is None:
                continue
            if role == "table" and not _table(value):
                continue  # a bias added after a MatMul, a scalar Constant: not a weight
            for part, value in enumerate(_outer_weights(value, model.graph)):
                use = (node.op_type, occurrence, index) + ((part,) if part else ())  # one key per stored weight
                if id(value) in seen_values:
                    continue
                if value.const_value is not None and value.dtype not in FLOAT_TYPES and value.dtype not in INTEGER_TYPES:
                    continue
                seen_values.add(id(value))
                own = _own_form(value)
                # a table is compressed as a bias (`weights.find_weights`) and listed as one
                found.append(_Found(value, "bias" if role in ("bias", "table") else "weight", use,
                                    own=own if own is not value else None))
    return found


def _slots(node: ir.Node) -> dict[int, str]:
    """The inputs of `node` that read weights, by role; elementwise arithmetic and a Slice that
    feeds it read tables (`weights.TABLE_OPS`: a positional encoding sliced to the sequence and added)."""
    if node.op_type in TABLE_OPS and node.domain in ("", "ai.onnx"):
        return {0: "table", 1: "table"}
    if node.op_type == "Slice" and node.outputs and any(use.op_type in TABLE_OPS for use, _ in node.outputs[0].uses()):
        return {0: "table"}
    return STORED_SLOTS.get(node.op_type, {})


def _table(value: ir.Value) -> bool:
    """Whether a constant read by elementwise arithmetic is a table `find_weights` compresses: an
    initializer of at least MIN_TABLE_ELEMENTS entries, or one onnxcomp decodes (a Gather or
    Scatter among its producers). Paddle2ONNX's scalar Constant nodes are neither: listed, their
    names went into every output's names map and took bytes from the weights."""
    if value.const_value is not None:
        return value.const_value.size >= MIN_TABLE_ELEMENTS
    return any(node.op_type in ("Gather", "GatherElements", "ScatterElements") for node in _producers(value))


def _carried_from(value: ir.Value, graph: ir.Graph | None, loops: dict[int, ir.Node]) -> ir.Value:
    """For a Loop body's input that the body hands on unchanged (`subgraphs.loop_body_value`: a
    weight a Keras LSTM exported by tf2onnx carries), the Loop's input it comes from; else `value`."""
    loop = loops.get(id(graph)) if graph is not None else None
    if loop is None or value not in graph.inputs:
        return value
    index = list(graph.inputs).index(value)
    inner = loop_body_value(loop, index) if index >= 2 and index < len(loop.inputs) else None
    return loop.inputs[index] if inner is not None and inner[0] is value and loop.inputs[index] is not None else value


# Ops that only select or rearrange the entries of their first input (Concat: of all inputs).
_LAYOUT_OPS = frozenset({"Slice", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Transpose", "Identity", "Flatten"})


def _outer_weights(value: ir.Value, main: ir.Graph) -> list[ir.Value]:
    """For a weight slot inside an If/Loop body that reads outer weights through layout ops
    (exported LSTMs slice weight_ih into gates and concatenate them in ONNX's order; the bias
    slot concatenates bias_ih and bias_hh), those outer weights: that is what the file stores,
    once, whichever branch runs. Else [`value`]."""

    def roots(current: ir.Value) -> list[ir.Value] | None:
        node = current.producer()
        if node is None or node.graph is main:
            return [current]
        if node.op_type not in _LAYOUT_OPS or not node.inputs or node.inputs[0] is None:
            return None
        found: list[ir.Value] = []
        for source in (node.inputs if node.op_type == "Concat" else node.inputs[:1]):
            inner = roots(source) if source is not None else []
            if inner is None:
                return None
            found.extend(v for v in inner if all(v is not f for f in found))
        return found

    outer = roots(value)
    return outer if outer else [value]


def _own_form(value: ir.Value) -> ir.Value:
    """The weight before the model's own conversion for its reader: the integer weight of a
    DequantizeLinear (QDQ models), the float16/bfloat16 weight of a Cast to float."""
    node = value.producer()
    if node is None or not node.inputs or node.inputs[0] is None:
        return value
    if node.op_type == "DequantizeLinear":
        return node.inputs[0]
    if node.op_type == "Cast" and _dtype(node.inputs[0]) in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
        return node.inputs[0]
    return value


def _dtype(value: ir.Value) -> ir.DataType | None:
    """A value's element type: declared, or the `to` of the Cast making it, looking through the
    ops that only move values (a codebook restored to the weight's type, then gathered; types of
    intermediate values are not stored)."""
    node = value.producer()
    while value.dtype is None and node is not None and node.op_type in CARRIERS and node.inputs and node.inputs[0] is not None:
        value = node.inputs[0]
        node = value.producer()
    if value.dtype is not None:
        return value.dtype
    to = node.attributes.get_int("to") if node is not None and node.op_type == "Cast" else None
    try:
        return ir.DataType(to) if to is not None else None
    except ValueError:  # not a type this onnx_ir knows
        return None


def _constant_tensor(value: ir.Value):
    """The tensor of the Constant node making `value`, or None."""
    node = value.producer()
    if node is None or node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    attribute = node.attributes.get("value")
    return attribute.value if attribute is not None and hasattr(attribute.value, "numpy") else None


def weight_names(model: ir.Model) -> dict[str, str]:
    """The model's {stored name: original name} map (NAMES_KEY), {} when it has none or it is unreadable."""
    try:
        names = json.loads(model.graph.metadata_props.get(NAMES_KEY, "{}"))
    except ValueError:
        return {}
    return {k: v for k, v in names.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(names, dict) else {}


def weight_uses(model: ir.Model) -> list[tuple[ir.Value, tuple[str | int, ...]]]:
    """(weight value, use) of every weight, in first-use order (cheap: nothing is decoded)."""
    return [(found.weight, found.use) for found in _locate(model)]


def record_weight_names(model: ir.Model, located: list[tuple[ir.Value, tuple[str | int, ...]]], original: ir.Model) -> None:
    """Store in `model`'s graph metadata (NAMES_KEY) the original name of each weight whose name
    differs: `located` are `model`'s weights (`weight_uses`, taken before names were shortened),
    matched to `original`'s by use. Names `original` itself maps (an onnxcomp output compressed
    again) map on to the first names."""
    earlier = weight_names(original)
    by_use = {use: earlier.get(value.name, value.name) for value, use in weight_uses(original) if value.name}
    names = {value.name: by_use[use] for value, use in located
             if value.name and by_use.get(use) and by_use[use] != value.name}
    model.graph.metadata_props.pop(NAMES_KEY, None)
    if names:
        model.graph.metadata_props[NAMES_KEY] = json.dumps(names, separators=(",", ":"), ensure_ascii=False)


def stored_weights(model: ir.Model) -> list[StoredWeight]:
    """Every float weight of a model in first-use order: dense initializers and decoded weights.

    Decoded weights are evaluated by running their constant decode subgraph in ONNX Runtime,
    so sparsity and distinct values are measured, not guessed.
    """
    located = _locate(model)
    sources = [found.sources() for found in located]
    readers: dict[int, int] = {}
    for group in sources:
        for source in group:
            readers[id(source)] = readers.get(id(source), 0) + 1
    # ONNX Runtime returns no bfloat16 arrays: such a weight is evaluated as its reader sees it (float).
    evaluated = [found.value if _dtype(found.weight) == ir.DataType.BFLOAT16 else found.weight for found in located]
    constants = [_constant_tensor(found.weight) if found.row is None and found.weight.const_value is None else None
                 for found in located]
    pending = [value for found, value, constant in zip(located, evaluated, constants)
               if found.row is None and value.const_value is None and constant is None]
    full = ir.serde.serialize_model(model) if pending or any(found.row for found in located) else None  # once, for every decode run
    decoded = _evaluate(pending, full)
    names = weight_names(model)
    weights = []
    for found, value, group, constant in zip(located, evaluated, sources, constants):
        weight = found.weight
        if found.row is not None:
            array = _evaluate_rows(*found.row, full)
            tables = [s.const_value for s in group if s.const_value is not None and s.const_value.dtype == ir.DataType.FLOAT]
            kind = "grouped" if any(len(t.shape) == 2 and t.shape[0] > 1 for t in tables) else "lookup"
        elif weight.const_value is not None:
            array, kind = weight.const_value.numpy(), "dense"
        elif constant is not None:  # a Constant node canonicalization kept (a one-value bias)
            array, kind = constant.numpy(), "dense"
        else:
            array = decoded.get(value.name)
            tables = [s.const_value for s in group if s.const_value is not None and s.const_value.dtype == ir.DataType.FLOAT]
            kind = _decoded_kind(weight, any(len(t.shape) == 2 for t in tables))
        if array is None:
            continue
        dtype = _dtype(weight)
        itemsize = int(dtype.itemsize) if dtype is not None and dtype.itemsize >= 1 else array.itemsize
        if array.dtype.kind not in "fiub":  # ml_dtypes' bfloat16: measured as float
            array = array.astype(np.float32)
        stored = constant.nbytes if constant is not None else \
            sum(s.const_value.nbytes for s in group if s.const_value is not None and readers[id(s)] == 1)
        weights.append(StoredWeight(weight.name or "?", found.role, array, kind, int(stored), group, found.use,
                                    found.row[1] if found.row is not None else None, names.get(weight.name or ""),
                                    itemsize if itemsize != array.itemsize else None))
    return weights


def _decoded_kind(value: ir.Value, table_2d: bool) -> str:
    """The encoding a decode subgraph implements, from its op types and codebook rank."""
    inner = _before_restore(value)
    scale = inner.producer()
    if scale is not None and scale.op_type == "Mul" and len(scale.inputs) == 2 and all(scale.inputs) \
            and scale.inputs[0].producer() is not None and _channel_scales(scale.inputs[1]):
        return "scaled"  # a lookup times per-channel scales (onnxcomp.encodings.channel_scales.insert_scale)
    nodes = _producers(inner)
    # Nodes that build a gathered table (a codebook restored to the weight's type, vector pairs)
    # say nothing about the encoding.
    tables = {id(n) for gather in nodes if gather.op_type in ("Gather", "GatherElements") and gather.inputs[0] is not None
              for n in _producers(gather.inputs[0])}
    ops = {n.op_type for n in nodes if id(n) not in tables}
    if "ScatterElements" in ops:
        return "sparse" if "ConstantOfShape" in ops else "outliers"  # outliers: scattered into a lookup
    if "Add" in ops and ops & {"Gather", "GatherElements"}:
        return "grouped"  # column groups: code offsets into the flattened codebooks
    if "GatherElements" in ops:
        return "grouped" if table_2d else "lookup"  # row groups gather along [G, K]'s axis 1
    if "Gather" in ops:
        return "vector" if table_2d else "lookup"
    return "linear" if "Mul" in ops else "decoded"


def _channel_scales(value: ir.Value) -> bool:
    """An initializer of several values, or one widened by a Cast (float16 scales); a linear
    decode's own scale is a single value."""
    producer = value.producer()
    if producer is not None and producer.op_type == "Cast":
        value = producer.inputs[0]
    return value is not None and value.producer() is None and value.const_value is not None and value.const_value.size > 1


def _before_restore(value: ir.Value) -> ir.Value:
    """The float32 decode output before `onnxcomp.encodings.decode.restore` (Cast to the weight's type,
    after an Add of a float32 zero point for integer weights)."""
    node = value.producer()
    if node is None or node.op_type != "Cast":
        return value
    value = node.inputs[0]
    node = value.producer()
    if node is not None and node.op_type == "Add" and node.inputs[1] is not None and node.inputs[1].const_value is not None \
            and node.inputs[1].const_value.dtype == ir.DataType.FLOAT:
        return node.inputs[0]
    return value


def _constant_values(graph: ir.Graph) -> set[int]:
    """Values known at load time, in the graph and in its If/Loop bodies (a body reading an outer
    constant through Slice/Concat, as exported LSTMs regroup their gates, computes constants too)."""
    constant: set[int] = {id(v) for v in graph.initializers.values()}
    for node in ir.traversal.RecursiveGraphIterator(graph):
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                constant.update(id(v) for v in attr.value.initializers.values())
            elif attr.type == ir.AttributeType.GRAPHS:
                constant.update(id(v) for body in attr.value for v in body.initializers.values())
    for node in ir.traversal.RecursiveGraphIterator(graph):
        if node.op_type != "Constant" and (not node.inputs or not all(i is not None and id(i) in constant for i in node.inputs)):
            continue
        if any(attr.type == ir.AttributeType.GRAPH for attr in node.attributes.values()):
            continue
        constant.update(id(o) for o in node.outputs)
    return constant


def _producers(value: ir.Value, stop: ir.Value | None = None) -> list[ir.Node]:
    seen, stack, nodes = set(), [value], []
    while stack:
        current = stack.pop()
        if current is stop:
            continue
        node = current.producer()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        stack.extend(i for i in node.inputs if i is not None)
    return nodes


def _source_initializers(value: ir.Value, stop: ir.Value | None = None) -> list[ir.Value]:
    sources = {}
    for node in _producers(value, stop):
        for item in node.inputs:
            if item is not None and item.const_value is not None:
                sources[id(item)] = item
    return list(sources.values())


def _run_decode(full, values: list[ir.Value], stop: ir.Value | None = None,
                feeds: dict[str, np.ndarray] | None = None) -> list[np.ndarray]:
    """Run, in ONNX Runtime, the nodes of `full` (the model serialized) that compute `values`
    from its initializers and, when given, from `stop` fed by `feeds`."""
    import onnx

    from onnxcomp.runtime.inference import session

    produced = {o.name for v in values for n in _producers(v, stop) for o in n.outputs}
    keep = [p for p in _all_nodes(full.graph) if set(p.output) & produced]
    inputs = [] if stop is None else [onnx.helper.make_tensor_value_info(
        stop.name, onnx.TensorProto.INT32 if stop.dtype == ir.DataType.INT32 else onnx.TensorProto.INT64, None)]
    outputs = [onnx.ValueInfoProto(name=v.name) for v in values]  # any type: ONNX Runtime infers it
    initializers = [t for graph in _all_graphs(full.graph) for t in graph.initializer]
    proto = onnx.helper.make_model(onnx.helper.make_graph(keep, "decode", inputs, outputs, initializer=initializers),
                                   opset_imports=list(full.opset_import))
    proto.ir_version = min(full.ir_version, 10)
    return session(proto).run([v.name for v in values], feeds or {})


def _all_graphs(graph) -> list:
    """A GraphProto and its If/Loop/Scan bodies, outer first (value names are unique across them)."""
    graphs = [graph]
    for node in graph.node:
        for attr in node.attribute:
            for body in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                graphs.extend(_all_graphs(body))
    return graphs


def _all_nodes(graph) -> list:
    """The NodeProtos of a graph and its bodies, each body's nodes after those of the graph
    holding it: a decode chain that continues inside a body (a Slice of an outer weight) reads
    only values computed before the node that holds the body."""
    return [node for body in _all_graphs(graph) for node in body.node]


def _evaluate(values: list[ir.Value], full) -> dict[str, np.ndarray]:
    """The decoded value of each constant decode subgraph output in `values`."""
    if not values:
        return {}
    try:
        return dict(zip((v.name for v in values), _run_decode(full, values)))
    except Exception as error:  # inspection is best-effort for foreign decode graphs
        logger.warning("could not evaluate decoded weights: %s", error)
        return {}


def _evaluate_rows(last: ir.Node, ids: ir.Value, full) -> np.ndarray | None:
    """The whole table of a run-time row decode: its subgraph run on every row index."""
    table = next(n.inputs[0] for n in _producers(last.outputs[0], stop=ids) if n.op_type == "Gather" and n.inputs[1] is ids)
    count = int(table.const_value.shape[0])
    rank = len(ids.shape) if ids.shape is not None else _ids_rank(last, ids)
    every = np.arange(count, dtype=np.int32 if ids.dtype == ir.DataType.INT32 else np.int64).reshape([1] * (rank - 1) + [count])
    try:
        decoded = _run_decode(full, [last.outputs[0]], ids, {ids.name: every})[0]
    except Exception as error:  # inspection is best-effort for foreign graphs
        logger.warning("could not evaluate a row-decoded table: %s", error)
        return None
    return decoded.reshape(count, -1)


def _ids_rank(last: ir.Node, ids: ir.Value) -> int:
    """The rank of a row decode's indices when the file does not declare it (an intermediate
    value, e.g. the cold half of a split table): the decode's Reshape to [0] * rank + [-1 or 1]
    (`onnxcomp.encodings.row_lookup`) says it; 1 when there is none (any rank then decodes the same rows)."""
    for node in _producers(last.outputs[0], stop=ids):
        shape = node.inputs[1] if node.op_type == "Reshape" and len(node.inputs) > 1 else None
        if shape is not None and shape.const_value is not None:
            dims = shape.const_value.numpy().ravel().tolist()
            if dims and dims[-1] in (-1, 1) and all(d == 0 for d in dims[:-1]):
                return len(dims) - 1
    return 1
