"""Per-layer sensitivity: how much the model's outputs move per unit of weight distortion.

The probed weights are turned into graph inputs of a measurement session, so each probe is a
single run with one weight replaced by a quantized copy - one session per group of layers, not
per layer.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp.planning.allocate import LayerOptions
from onnxcomp.samples.data import batches, join_outputs, sample_count
from onnxcomp.modelfile import to_proto
from onnxcomp.model.memory import ActivationSizes, activation_sizes, batch_size as budget_batch
from onnxcomp.encodings.quantize import apply_quantization
from onnxcomp.runtime.inference import session
from onnxcomp.reporting.verify import output_distortion, output_weights

logger = logging.getLogger(__name__)

PROBE_BYTES_FRACTION = 0.1  # probe with the candidate nearest 1/10 of the dense bytes (~3 bits)
FLOOR = 1e-3  # relative: a layer never counts as free to distort
# Layers probed per measurement session: more sessions to build, fewer weights run unpacked.
PROBE_GROUP = 16
# Activation statistics hold each fetched activation and its copy moved to [rows, features]; squares
# are summed in float64 a slice of SQUARES_CHUNK_BYTES at a time. Whole float64 copies (6 float32-
# sized copies of the largest activation) took the PP-OCRv4 detector's calibrated run to 1.6 GB.
FETCHED_COPIES = 2
SQUARES_CHUNK_BYTES = 16 << 20


def measure_sensitivity(model: ir.Model, layers: list[LayerOptions], values: dict[str, np.ndarray],
                        inputs: dict[str, np.ndarray], batch_size: int, progress=None,
                        storage: dict | None = None, sizes: ActivationSizes | None = None,
                        unreached: list[str] | None = None) -> dict[str, float]:
    """Return, per layer, output distortion / weight distortion at a probe setting.

    A layer whose probe leaves every output bit-identical was not reached by these samples (the
    branch of an `If` they never take: silero-vad's 8 kHz network on 16 kHz inputs, crushed to
    1-bit recurrent weights at 1/8); it counts as the most sensitive layer measured, like a
    layer not probed, and its name is appended to `unreached` when given.

    Layers are probed `PROBE_GROUP` at a time: one session per group, in which only the group's
    weights are graph inputs and the rest stay initializers (ONNX Runtime prepacks constant
    Conv/MatMul weights; a weight fed as an input runs the slower unpacked kernel). Each group's
    reference run uses the same session as its probes, so kernel rounding cancels.

    `values` are float32 working values; `storage` (per weight name, `onnxcomp.model.weights.Storage`)
    says how a weight of another type is stored: it is fed as float32 holding the stored values
    (rounded, zero point added) and cast to its type in the graph (ONNX Runtime's Python API
    takes no bfloat16 arrays). Batches hold at most `batch_size` samples and stay within
    `memory.ACTIVATION_BUDGET` of activations (`sizes`: per-sample bytes, inferred when None)."""
    cast = {name: kind for name, kind in (storage or {}).items() if not kind.plain}

    def feed_name(name: str) -> str:
        return f"{name}::float32" if name in cast else name

    def stored(name: str, array: np.ndarray) -> np.ndarray:
        return cast[name].stored(array).astype(np.float32) if name in cast else array

    proto = to_proto(model)
    sizes = sizes if sizes is not None else activation_sizes(model, inputs)
    batch_size = min(batch_size, budget_batch(sizes.total))
    probes = [(index, layer, _probe(layer)) for index, layer in enumerate(layers)]
    skipped = [(index, layer) for index, layer, probe in probes
               if probe is None or probe.quant is None or probe.distortion <= 0]
    probes = [(index, layer, probe) for index, layer, probe in probes
              if probe is not None and probe.quant is not None and probe.distortion > 0]
    for index, layer in skipped:
        if progress:
            progress(index, len(layers), layer.name)
    sensitivities: dict[str, float] = {}
    missed: list[str] = []
    for start in range(0, len(probes), PROBE_GROUP):
        group = probes[start:start + PROBE_GROUP]
        sess = session(_weights_as_inputs(proto, {layer.name for _, layer, _ in group}, cast, feed_name))
        feeds = {feed_name(layer.name): stored(layer.name, values[layer.name]) for _, layer, _ in group}
        reference = run_batches_with_weights(sess, inputs, feeds, batch_size)
        weights = output_weights(reference, carried_outputs(reference, inputs))
        for index, layer, probe in group:
            if progress:
                progress(index, len(layers), layer.name)
            perturbed = dict(feeds)
            perturbed[feed_name(layer.name)] = stored(layer.name, apply_quantization(values[layer.name], probe.quant,
                                                                                     layer.importance))
            outputs = run_batches_with_weights(sess, inputs, perturbed, batch_size)
            if all(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc") for a, b in zip(reference, outputs)):
                missed.append(layer.name)
                continue
            sensitivities[layer.name] = output_distortion(reference, outputs, weights) / probe.distortion
        del sess
    if unreached is not None:
        unreached.extend(missed)
    if sensitivities:
        top = max(sensitivities.values())
        for name in sensitivities:
            sensitivities[name] = max(sensitivities[name], FLOOR * top)
        for layer in layers:
            sensitivities.setdefault(layer.name, top)
    return sensitivities


def carried_outputs(outputs: list[np.ndarray], inputs: dict[str, np.ndarray]) -> set[int]:
    """The outputs shaped like an input: a recurrent state the application feeds back."""
    shapes = {np.shape(array) for array in inputs.values()}
    return {index for index, output in enumerate(outputs) if np.shape(output) in shapes and np.ndim(output) > 0}


def _weights_as_inputs(proto: onnx.ModelProto, names: set[str], cast: dict, feed_name) -> onnx.ModelProto:
    """A copy of `proto` whose initializers `names` are graph inputs (cast ones fed as float32)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    kept = [t for t in copy.graph.initializer if t.name not in names]
    moved = [t for t in copy.graph.initializer if t.name in names]
    del copy.graph.initializer[:]
    copy.graph.initializer.extend(kept)
    for tensor in moved:
        elem_type = onnx.TensorProto.FLOAT if tensor.name in cast else tensor.data_type
        copy.graph.input.append(onnx.helper.make_tensor_value_info(feed_name(tensor.name), elem_type, list(tensor.dims)))
        if tensor.name in cast:
            copy.graph.node.insert(0, onnx.helper.make_node("Cast", [feed_name(tensor.name)], [tensor.name], to=tensor.data_type))
    return copy


def run_batches_with_weights(sess, inputs, weights, batch_size):
    feeds, sizes = [], []
    for feed in batches(inputs, batch_size):
        sizes.append(sample_count(feed))
        feed.update(weights)
        feeds.append(feed)
    names = [o.name for o in sess.get_outputs()]
    results = [sess.run(names, feed) for feed in feeds]
    return [join_outputs([r[i] for r in results], sizes) for i in range(len(names))]


def _probe(layer: LayerOptions):
    target = layer.dense.bytes * PROBE_BYTES_FRACTION
    # Probe with scalar codebooks (pruned or not): one ratio then prices every candidate, and a
    # vector-quantization probe, whose error spreads evenly over weights of any importance,
    # measured a different ratio that misallocated bytes between layers (calibrated LeNet-300 at
    # 1/28: 95.0% instead of 96.4%).
    lossy = [c for c in layer.candidates if c.quant is not None and c.kind not in ("vector", "scaled")]
    if not lossy:
        return None
    return min(lossy, key=lambda c: abs(c.bytes - target))


__all__ = ["activation_importance", "embedding_importance", "measure_sensitivity", "row_counts"]


def _activation_axis(node: ir.Node, weight: ir.Value):
    """(activation value, function mapping per-feature mean squares to weight importance)."""
    index = next(i for i, v in enumerate(node.inputs) if v is weight)
    shape = weight.const_value.shape if weight.const_value is not None else None
    rank = len(shape) if shape is not None else 0
    attrs = {k: a.value for k, a in node.attributes.items()}
    if node.op_type == "Gemm" and index == 1 and rank == 2 and not attrs.get("transA", 0):
        if attrs.get("transB", 0):
            return node.inputs[0], -1, lambda h: h[None, :]
        return node.inputs[0], -1, lambda h: h[:, None]
    if node.op_type == "MatMul" and index == 1 and rank == 2:
        return node.inputs[0], -1, lambda h: h[:, None]
    if node.op_type == "Conv" and index == 1 and rank >= 3 and attrs.get("group", 1) == 1:
        expand = (None,) * (rank - 2)
        return node.inputs[0], 1, lambda h: h[(slice(None), *expand)][None]
    return None


def activation_importance(model: ir.Model, weights, inputs: dict[str, np.ndarray], batch_size: int,
                          sizes: ActivationSizes | None = None) -> dict[str, np.ndarray]:
    """Per weight, the mean squared input activation of each input feature, shaped to broadcast
    against the weight: squared weight error times this is the expected squared output error.

    Accumulated batch by batch; a batch holds at most `batch_size` samples and its activations
    (the fetched ones counted `FETCHED_COPIES` times more: float64 copies) stay within
    `memory.ACTIVATION_BUDGET` (`sizes`: per-sample bytes, inferred when None)."""
    wanted = {}
    for weight in weights:
        if weight.role == "bias":
            continue
        uses = list(weight.value.uses())
        if len(uses) != 1 or uses[0][0].graph is not model.graph:  # a subgraph's values cannot be fetched
            continue
        found = _activation_axis(uses[0][0], weight.value)
        if found is None or found[0] is None or not found[0].name:
            continue
        wanted[weight.name] = found
    if not wanted:
        return {}
    proto = to_proto(model)
    existing = {o.name for o in proto.graph.output}
    for activation, _, _ in wanted.values():
        if activation.name not in existing and activation.name not in {i.name for i in proto.graph.input}:
            # Untyped: ONNX Runtime infers it (a float16 model's activations are float16).
            proto.graph.output.append(onnx.ValueInfoProto(name=activation.name))
            existing.add(activation.name)
    feeds_inputs = {i.name for i in proto.graph.input}
    sess = session(proto, arena=False)  # fetches every input activation at once
    names = sorted({a.name for a, _, _ in wanted.values()})
    output_names = [n for n in names if n not in feeds_inputs]
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    axis_of = {a.name: axis for a, axis, _ in wanted.values()}
    sizes = sizes if sizes is not None else activation_sizes(proto, inputs)
    batch_size = min(batch_size, budget_batch(sizes.total + FETCHED_COPIES * sizes.of(names)))
    for feed in batches(inputs, batch_size):
        results = dict(zip(output_names, sess.run(output_names, feed))) if output_names else {}
        results.update({n: feed[n] for n in names if n in feed})
        _sum_squares(results, axis_of, sums, counts)
    importances = {}
    for weight_name, (activation, _, shape_fn) in wanted.items():
        mean_square = sums[activation.name] / max(counts[activation.name], 1)
        try:
            importance = shape_fn(mean_square)
            np.broadcast_to(importance, values_shape(weights, weight_name))
        except (ValueError, IndexError):
            logger.debug("%s: activation statistics do not match the weight shape", weight_name)
            continue
        importances[weight_name] = importance
    return importances


def _sum_squares(results: dict[str, np.ndarray], axis_of: dict[str, int], sums: dict, counts: dict) -> None:
    """Add each fetched activation's per-feature sum of squares and row count, and drop it from `results`."""
    for name in list(results):
        array = np.asarray(results.pop(name))
        moved = np.moveaxis(array, axis_of[name], -1).reshape(-1, array.shape[axis_of[name]])
        del array
        step = max(1, SQUARES_CHUNK_BYTES // (8 * max(moved.shape[1], 1)))
        for start in range(0, moved.shape[0], step):  # float64 a slice of rows at a time
            part = moved[start:start + step].astype(np.float64)
            sums[name] = sums.get(name, 0) + np.sum(part * part, axis=0)
        counts[name] = counts.get(name, 0) + moved.shape[0]


def values_shape(weights, name: str) -> tuple[int, ...]:
    return next(w.shape for w in weights if w.name == name)


# Lookups added to every row's count: rows the samples never read still count (other text reads
# some of them). `row_counts` inverts the importance with it.
EMBEDDING_SMOOTHING = 1.0


def row_counts(importance: np.ndarray) -> np.ndarray:
    """The samples' lookup count per row back from an `embedding_importance` row importance
    (exact when some row was never read: that row has the smallest importance)."""
    per_row = np.asarray(importance, np.float64).reshape(-1)
    return np.maximum(np.rint(EMBEDDING_SMOOTHING * (per_row / per_row.min() - 1)), 0)


def embedding_importance(model: ir.Model, weights, inputs: dict[str, np.ndarray], batch_size: int,
                         smoothing: float = EMBEDDING_SMOOTHING, sizes: ActivationSizes | None = None
                         ) -> dict[str, np.ndarray]:
    """Per embedding table read by Gather (axis 0), how often the samples look up each row.

    Returns importance [rows, 1] = (count + smoothing) / mean, so squared error is weighted by
    how often a row is read (lookups where a same-shaped `*mask*` input is 0 are padding and
    not counted); `smoothing` keeps rows the samples never read from counting as
    free (other text will read some of them). Only meaningful with real samples: generated
    token ids are uniform and say nothing about which rows matter. Batches stay within
    `memory.ACTIVATION_BUDGET` (`sizes`: per-sample bytes, inferred when None).
    """
    wanted: dict[str, ir.Value] = {}
    for weight in weights:
        uses = list(weight.value.uses())
        if weight.role != "embedding" or len(weight.shape) != 2 or not uses:
            continue
        if any(node.op_type != "Gather" or index != 0 or node.attributes.get_int("axis", 0) != 0
               or node.graph is not model.graph  # a subgraph's values cannot be fetched
               or node.inputs[1] is None or not node.inputs[1].name for node, index in uses):
            continue
        wanted[weight.name] = [node.inputs[1] for node, _ in uses]
    if not wanted:
        return {}
    proto = to_proto(model)
    graph_inputs = {i.name for i in proto.graph.input}
    index_names = sorted({v.name for values in wanted.values() for v in values})
    computed = [name for name in index_names if name not in graph_inputs]
    existing = {o.name for o in proto.graph.output}
    for name in computed:
        if name not in existing:
            # Untyped: ONNX Runtime infers it (tf2onnx's ids are Cast to int32; a guessed int64 fails to load).
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = session(proto, arena=False) if computed else None
    counts = {name: np.zeros(values_shape(weights, name)[0], np.float64) for name in wanted}
    skipped: set[str] = set()
    # Padding positions (mask 0, e.g. an `attention_mask` input) read rows that change nothing.
    masks = [name for name in sorted(graph_inputs) if "mask" in name.lower() and name in inputs]
    if sess is not None:
        sizes = sizes if sizes is not None else activation_sizes(proto, inputs)
        batch_size = min(batch_size, budget_batch(sizes.total))
    for feed in batches(inputs, batch_size):
        found = {name: feed[name] for name in index_names if name in feed}
        if sess is not None:
            found.update(zip(computed, sess.run(computed, feed)))
        for weight_name, values in wanted.items():
            rows = counts[weight_name].size
            for value in values:
                if found.get(value.name) is None:  # ONNX Runtime may not return some inner values
                    skipped.add(weight_name)
                    continue
                indices = np.asarray(found[value.name]).astype(np.int64)
                mask = next((feed[name] for name in masks if feed[name].shape == indices.shape), None)
                indices = indices.ravel() if mask is None else indices[np.asarray(mask) != 0]
                indices = np.where(indices < 0, indices + rows, indices)
                indices = indices[(indices >= 0) & (indices < rows)]
                counts[weight_name] += np.bincount(indices, minlength=rows)
    importances = {}
    for name, count in counts.items():
        if count.sum() == 0 or name in skipped:
            logger.debug("%s: no row counts from the samples", name)
            continue
        smoothed = count + smoothing
        importances[name] = (smoothed / smoothed.mean())[:, None]
    return importances
