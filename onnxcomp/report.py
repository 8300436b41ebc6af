"""Per-layer tables: for the compress report, and `onnxcomp inspect` of any model."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from onnxcomp import encoding
from onnxcomp.canonicalize import canonicalize
from onnxcomp.rows import decoded_tables
from onnxcomp.sizes import format_size
from onnxcomp.text import printable
from onnxcomp.weights import FLOAT_TYPES, INTEGER_TYPES, QUANTIZED_SLOTS, WEIGHT_SLOTS

# Weight inputs of already-quantized ops (their integer weights are re-coded like float ones).
STORED_SLOTS = WEIGHT_SLOTS | {op: dict.fromkeys(slots, "weight") for op, slots in QUANTIZED_SLOTS.items()}
# Every figure measured on generated inputs says so (CLI summary, report, sweep.md, sweep.png).
GENERATED_INPUTS_NOTE = ("measured on generated inputs: how closely the compressed model follows the original on "
                         "made-up data, not task quality; pass --data with real samples (and labels) to measure that")
GENERATED_INPUTS_TAG = "generated inputs, see --data"

logger = logging.getLogger(__name__)


def layer_rows(layers, allocation, compressed: ir.Model | None = None) -> list[dict]:
    """Report rows from the allocator's choices (bytes_after from the encoder's byte model)."""
    rows = []
    for layer in layers:
        choice = allocation.choices[layer.name]
        params = int(np.prod(layer.shape)) if layer.shape else 1
        rows.append({
            "name": layer.name,
            "role": layer.role,
            "shape": list(layer.shape),
            "params": params,
            "encoding": choice.kind,
            "bits": (choice.bits / choice.quant.vector_dim if choice.kind == "vector" else choice.bits)
                    if choice.kind != "dense" else 8 * layer.itemsize,
            "levels": (int(choice.quant.codebook.shape[0]) if choice.kind == "vector" else int(choice.quant.codebook.size))
                      if choice.quant is not None else None,
            "sparsity": round(float(choice.sparsity), 4),
            "bytes_before": layer.dense.bytes,
            "bytes_after": choice.bytes,
            "relative_error": round(float(np.sqrt(choice.distortion)), 6),
            "sensitivity": float(layer.sensitivity),
        })
    return rows


def format_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """A plain aligned text table (fits an 80-120 column terminal); text cells are `printable`."""
    header = [title for _, title in columns]
    body = []
    for row in rows:
        cells = []
        for key, _ in columns:
            value = row.get(key)
            if key.startswith("bytes"):
                cells.append(format_size(value) if value is not None else "-")
            elif key == "sparsity" and value is not None:
                cells.append(f"{100 * value:.0f}%")
            elif key == "shape":
                cells.append("x".join(str(d) for d in value))
            elif isinstance(value, float):
                cells.append(f"{value:.3g}")
            else:
                cells.append("-" if value is None else printable(str(value)))
        body.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    name_width = min(widths[0], 40)
    widths[0] = name_width

    def line(cells):
        first = cells[0] if len(cells[0]) <= name_width else "..." + cells[0][-(name_width - 3):]
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first.ljust(name_width), *rest])

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in body)])


COMPRESS_COLUMNS = [("name", "layer"), ("shape", "shape"), ("params", "params"), ("encoding", "encoding"),
                    ("bits", "bits"), ("sparsity", "sparsity"), ("bytes_before", "before"), ("bytes_after", "after")]


@dataclasses.dataclass
class StoredWeight:
    """A weight as a model stores it: its dense value (decoded if encoded) and its stored form.

    ``use`` identifies the weight by position, independent of (shortened) names: the first
    compute node that reads it as (op type, index among compute nodes of that type, input index).
    """

    name: str
    role: str
    array: np.ndarray
    encoding: str
    stored_bytes: int
    sources: list[ir.Value]
    use: tuple[str, int, int]
    ids: ir.Value | None = None  # a table decoded per looked-up row at run time (onnxcomp.rows): its indices


def stored_weights(model: ir.Model) -> list[StoredWeight]:
    """Every float weight of a model in first-use order: dense initializers and decoded weights.

    Decoded weights are evaluated by running their constant decode subgraph in ONNX Runtime,
    so sparsity and distinct values are measured, not guessed.
    """
    constant_producers = _constant_values(model.graph)
    slots: dict[int, tuple[ir.Value, str, tuple[str, int, int]]] = {}
    seen_ops: dict[str, int] = {}
    row_tables = {id(first): (last, ids) for first, last, ids in decoded_tables(model.graph)}
    row_nodes = {id(n) for last, ids in row_tables.values() for n in _producers(last.outputs[0], stop=ids)}
    row_weights: list[tuple[tuple[str, int, int], ir.Node, ir.Value]] = []
    order: list[tuple[str, int]] = []  # first-use order of slot values and row tables
    for node in ir.traversal.RecursiveGraphIterator(model.graph):  # weights read inside If/Loop bodies too
        if node.inputs and all(i is None or id(i) in constant_producers for i in node.inputs):
            continue  # part of a decode subgraph (or other load-time constant), not a compute op
        if id(node) in row_nodes:
            if id(node) in row_tables:  # the table's Gather, as the original model had it
                occurrence = seen_ops.get("Gather", 0)
                seen_ops["Gather"] = occurrence + 1
                row_weights.append((("Gather", occurrence, 0), *row_tables[id(node)]))
                order.append(("row", len(row_weights) - 1))
            continue
        occurrence = seen_ops.get(node.op_type, 0)
        seen_ops[node.op_type] = occurrence + 1
        for index, role in STORED_SLOTS.get(node.op_type, {}).items():
            if index < len(node.inputs) and node.inputs[index] is not None:
                value = node.inputs[index]
                if (id(value) in constant_producers or value.const_value is not None) and id(value) not in slots:
                    slots[id(value)] = (value, "bias" if role == "bias" else "weight", (node.op_type, occurrence, index))
                    order.append(("slot", id(value)))
    pending = [v for v, _, _ in slots.values() if v.const_value is None]
    full = ir.serde.serialize_model(model) if pending or row_weights else None  # once, for every decode run
    decoded = _evaluate(pending, full)
    found: dict[tuple[str, int], StoredWeight] = {}
    for key, (value, role, use) in slots.items():
        if value.const_value is not None:
            if value.dtype not in FLOAT_TYPES and value.dtype not in INTEGER_TYPES:
                continue
            array = value.const_value.numpy()
            kind = "dense"
            sources = [value]
        else:
            array = decoded.get(value.name)
            if array is None:
                continue
            sources = _source_initializers(value)
            ops = {n.op_type for n in _producers(_before_restore(value))}
            tables = [s.const_value for s in sources if s.const_value is not None and s.const_value.dtype == ir.DataType.FLOAT]
            kind = _decoded_kind(ops, any(len(t.shape) == 2 for t in tables))
        stored = sum(s.const_value.nbytes for s in sources if s.const_value is not None)
        found[("slot", key)] = StoredWeight(value.name or "?", role, array, kind, int(stored), sources, use)
    for position, (use, last, ids) in enumerate(row_weights):
        array = _evaluate_rows(last, ids, full)
        if array is None:
            continue
        value = last.outputs[0]
        sources = _source_initializers(value, stop=ids)
        tables = [s.const_value for s in sources if s.const_value is not None and s.const_value.dtype == ir.DataType.FLOAT]
        grouped = any(len(t.shape) == 2 and t.shape[0] > 1 for t in tables)
        stored = sum(s.const_value.nbytes for s in sources if s.const_value is not None)
        found[("row", position)] = StoredWeight(value.name or "?", "weight", array, "grouped" if grouped else "lookup",
                                                int(stored), sources, use, ids)
    return [found[key] for key in order if key in found]


def inspect_model(model: ir.Model) -> list[dict]:
    """Per-weight rows for any model, as `compress` sees it (see `stored_weights`).

    The model is canonicalized first (in place), so weights held in `Constant` nodes, in
    functions and in `If`/`Loop` subgraphs are listed like initializers.
    """
    try:
        model = canonicalize(model, check_weights=False)
    except MemoryError:
        raise
    except Exception as error:  # inspection is best-effort: show the model as stored
        logger.warning("could not canonicalize the model (%s); listing its weights as stored",
                       str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__)
    rows = []
    for weight in stored_weights(model):
        array = weight.array
        distinct = int(np.unique(array).size) if array.size <= 50_000_000 else None
        rows.append({
            "name": weight.name,
            "role": weight.role,
            "shape": list(array.shape),
            "params": int(array.size),
            "encoding": weight.encoding,
            "bits": _row_bits(weight) if weight.ids is not None else _grouped_bits(weight) if weight.encoding == "grouped" else _vector_bits(weight) if weight.encoding == "vector" else (
                encoding.bits_for(distinct) if weight.encoding != "dense" and distinct else 8 * array.itemsize),
            "levels": distinct,
            "sparsity": float(np.count_nonzero(array == 0) / max(array.size, 1)),
            "bytes_before": array.itemsize * int(array.size),
            "bytes_after": weight.stored_bytes,
        })
    return rows


def _row_bits(weight: StoredWeight) -> int:
    """Code width of a run-time row-decoded table: K of its [G, K] codebooks."""
    tables = [s.const_value for s in weight.sources if s.const_value is not None and s.const_value.dtype == ir.DataType.FLOAT]
    table = next((t for t in tables if len(t.shape) == 2), None)
    return 32 if table is None else encoding.bits_for(int(table.shape[1]))


def _vector_bits(weight: StoredWeight) -> float:
    """Bits per weight of a vector lookup: code bits / vector width (codebook [K, dim])."""
    tables = [s.const_value.numpy() for s in weight.sources if s.const_value is not None and s.const_value.dtype == ir.DataType.FLOAT]
    table = next((t for t in tables if t.ndim == 2), None)
    return 32 if table is None else encoding.bits_for(table.shape[0]) / table.shape[1]


def _decoded_kind(ops: set[str], table_2d: bool) -> str:
    """The encoding a decode subgraph implements, from its op types and codebook rank."""
    if "ScatterElements" in ops:
        return "sparse" if "ConstantOfShape" in ops else "outliers"  # outliers: scattered into a lookup
    if "Add" in ops and ops & {"Gather", "GatherElements"}:
        return "grouped"  # column groups: code offsets into the flattened codebooks
    if "GatherElements" in ops:
        return "grouped" if table_2d else "lookup"  # row groups gather along [G, K]'s axis 1
    if "Gather" in ops:
        return "vector" if table_2d else "lookup"
    return "linear" if "Mul" in ops else "decoded"


def _grouped_bits(weight: StoredWeight) -> int:
    """Code width of a grouped lookup: codebook entries per group (row groups: the [G, K]
    codebooks' K; column groups: codebooks / distinct offsets)."""
    arrays = [s.const_value.numpy() for s in weight.sources if s.const_value is not None]
    offsets = [a for a in arrays if a.dtype == np.int32 and a.ndim == 2]
    tables = [a for a in arrays if a.dtype == np.float32]
    if not offsets and len(tables) == 1 and tables[0].ndim == 2:  # row groups: [G, K] codebooks
        return encoding.bits_for(tables[0].shape[1])
    if len(offsets) != 1 or len(tables) != 1:
        return 32
    return encoding.bits_for(tables[0].size // max(np.unique(offsets[0]).size, 1))


def _before_restore(value: ir.Value) -> ir.Value:
    """The float32 decode output before `onnxcomp.decode.restore` (Cast to the weight's type,
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
    constant: set[int] = {id(v) for v in graph.initializers.values()}
    for node in graph:
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
    keep = [p for p in full.graph.node if set(p.output) & produced]
    inputs = [] if stop is None else [onnx.helper.make_tensor_value_info(
        stop.name, onnx.TensorProto.INT32 if stop.dtype == ir.DataType.INT32 else onnx.TensorProto.INT64, None)]
    outputs = [onnx.ValueInfoProto(name=v.name) for v in values]  # any type: ONNX Runtime infers it
    proto = onnx.helper.make_model(onnx.helper.make_graph(keep, "decode", inputs, outputs, initializer=list(full.graph.initializer)),
                                   opset_imports=list(full.opset_import))
    proto.ir_version = min(full.ir_version, 10)
    return session(proto).run([v.name for v in values], feeds or {})


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
    rank = len(ids.shape) if ids.shape is not None else 1
    every = np.arange(count, dtype=np.int32 if ids.dtype == ir.DataType.INT32 else np.int64).reshape([1] * (rank - 1) + [count])
    try:
        decoded = _run_decode(full, [last.outputs[0]], ids, {ids.name: every})[0]
    except Exception as error:  # inspection is best-effort for foreign graphs
        logger.warning("could not evaluate a row-decoded table: %s", error)
        return None
    return decoded.reshape(count, -1)


def inspect_summary(rows: list[dict], file_bytes: int) -> str:
    weights = sum(r["bytes_after"] for r in rows)
    params = sum(r["params"] for r in rows)
    return (f"{len(rows)} weights, {params:,} parameters, stored in {format_size(weights)}; "
            f"file {format_size(file_bytes)} ({8 * file_bytes / max(params, 1):.2f} bits per parameter)")
