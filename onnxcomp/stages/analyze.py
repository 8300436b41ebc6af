"""Canonicalize the model, then price every weight's candidates and measure layer sensitivities."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxcomp.encodings import row_lookup
from onnxcomp.model.canonicalize import canonicalize, initializer_inputs, model_interface
from onnxcomp.samples.crop import cropped, sample_input_bytes, spread
from onnxcomp.samples.data import Samples
from onnxcomp.samples.feeds import feed_groups, slice_feeds
from onnxcomp.modelfile import to_proto
from onnxcomp.runtime.inference import session
from onnxcomp.runtime.isolated import call_isolated
from onnxcomp.errors import OnnxcompError
from onnxcomp.model.memory import MAX_BATCH, ActivationSizes, batch_size as budget_batch, multiply_adds
from onnxcomp.passes.equalize import EqualizeCrossLayerPass
from onnxcomp.planning.pricing import LayerOptions, layer_options
from onnxcomp.progress import task as live_task
from onnxcomp.planning.sensitivity import activation_importance, embedding_importance, measure_sensitivity, row_counts
from onnxcomp.samples.signature import fixed_batch
from onnxcomp.sizes import format_size
from onnxcomp.stages.build import fixed_bytes
from onnxcomp.stages.options import CompressOptions
from onnxcomp.stages.steps import Progress, Steps, log
from onnxcomp.model.weights import find_weights, no_weights_error

logger = logging.getLogger(__name__)

SENSITIVITY_SAMPLES = 64
# Generated inputs: the sensitivity probes together compute at most this many activation bytes
# (samples x per-sample activation bytes x probes), with at least MIN_SENSITIVITY_SAMPLES samples.
# Generated samples are all alike: one 800x608 sample of a detector gives its 204 layers'
# sensitivities within 2% of two samples' (rank unchanged), at half the runs.
SENSITIVITY_WORK_BYTES = 16 << 30
# ...and compute at most this many multiply-adds (`memory.multiply_adds`): RivaGAN's video decoder
# (13.6 G a sample, 8 weights) took 19 samples by the bytes (27 s for the whole run at 1/8; 18 s
# with the 8 this allows, the same bytes written); the zoo's models stay under 0.7 T with the
# samples the bytes give them.
SENSITIVITY_WORK_MACS = 10**12
MIN_PROBED_LAYERS = 16  # when even one sample's probes exceed that: the largest weights at least
MIN_SENSITIVITY_SAMPLES = 1
# Given data: when the samples do not fit that budget, at least this many are probed, spread over
# the data, each centre-cropped along its dynamic spatial dims (`onnxcomp.samples.crop`) so that
# one probe run computes at most SENSITIVITY_RUN_BYTES of activations (one 640x640 sample of the
# PP-OCRv4 text detector: 0.69 GB, by `memory.activation_sizes`; its 736x2976 pages: 3.7 GB).
MIN_GIVEN_SENSITIVITY_SAMPLES = 4
SENSITIVITY_RUN_BYTES = 1 << 30
CROP_CHECK_TIMEOUT_S = 120.0
IMPORTANCE_SAMPLES = 256


@dataclasses.dataclass
class Canonical:
    """The canonical model, its compressible weights, and what the compressed model must keep."""

    model: ir.Model
    weights: list
    interface: object  # `canonicalize.model_interface`: names, order, dtypes, declared shapes
    defaults: object  # `canonicalize.initializer_inputs`: graph inputs that have an initializer


def canonical_model(model: ir.Model, options: CompressOptions, progress: Progress) -> Canonical:
    """Canonicalize (`model` is changed: pass a copy), equalize if asked, say what happened to
    graph inputs that have an initializer."""
    defaults = initializer_inputs(model)
    interface = model_interface(model, without=defaults.removed)
    model, weights = canonical_weights(model)
    if options.equalize:
        equalize(model, progress)
    _log_initializer_inputs(defaults, progress)
    return Canonical(model, weights, interface, defaults)


def canonical_weights(model: ir.Model) -> tuple[ir.Model, list]:
    """Canonicalize the model and find its compressible weights; refuse what cannot be compressed."""
    model = canonicalize(model)
    if "" not in model.opset_imports:  # only other domains' operators (scikit-learn's ai.onnx.ml): no initializers they read
        raise no_weights_error(model)
    if model.opset_imports.get("", 0) < 11:
        raise OnnxcompError(f"model uses opset {model.opset_imports.get('', 0)}; onnxcomp needs opset 11 or newer (convert it with onnx.version_converter)")
    weights = find_weights(model)
    if not weights:
        raise no_weights_error(model)
    return model, weights


def equalize(model: ir.Model, progress: Progress) -> None:
    """Cross-layer equalization in place; the float model's outputs do not change."""
    result = EqualizeCrossLayerPass()(model)
    log(progress, f"equalize: {len(result.rows)} layer pairs rescaled" + "".join(
        f"; {row['first']} channel range spread {row['spread_before']:.3g} -> {row['spread_after']:.3g}"
        for row in result.rows[:4]) + ("; ..." if len(result.rows) > 4 else ""))


def _log_initializer_inputs(defaults, progress: Progress) -> None:
    """Say what happened to graph inputs that have an initializer (see `initializer_inputs`)."""
    if defaults.removed:
        log(progress, f"{len(defaults.removed)} initializers listed as graph inputs by convention (IR < 4 or every "
                      f"initializer listed) are no longer inputs and are compressed: {', '.join(defaults.removed[:8])}"
                      + (", ..." if len(defaults.removed) > 8 else ""))
    if defaults.kept:
        log(progress, f"{len(defaults.kept)} graph inputs with a default value stay inputs (callers may override "
                      f"them) and are stored dense: {', '.join(defaults.kept[:8])}" + (", ..." if len(defaults.kept) > 8 else ""))


def batch_size(model: ir.Model, sizes: ActivationSizes | None = None,
               shapes: Mapping[str, Sequence[int]] | None = None) -> int:
    """The batch the user pins or the model declares (`signature.fixed_batch`), else as many
    samples as fit `memory.ACTIVATION_BUDGET` with `sizes` per sample (at most `memory.MAX_BATCH`)."""
    fixed = fixed_batch(model, shapes)
    if fixed is not None:
        return fixed
    return MAX_BATCH if sizes is None else budget_batch(sizes.total)


def sensitivity_samples(samples: Samples, sizes: ActivationSizes, probes: int, model: ir.Model) -> tuple[Samples, str]:
    """Samples for the sensitivity probes (at most `SENSITIVITY_SAMPLES`), so that time does not
    grow as layers x samples x activation size. Generated: as many as keep the probes'
    activations within `SENSITIVITY_WORK_BYTES` and their multiply-adds within
    `SENSITIVITY_WORK_MACS`, at least `MIN_SENSITIVITY_SAMPLES` (they are all alike). Given: all
    of them when one probe run computes at most `SENSITIVITY_RUN_BYTES` (or its share of
    `SENSITIVITY_WORK_BYTES`, if larger); else as many as fit, at least
    `MIN_GIVEN_SENSITIVITY_SAMPLES`, spread over the data, and when those still exceed it,
    centre-cropped along the model's dynamic spatial dims (`crop.cropped`; whole when it has
    none, or the crops do not run).

    Returns the samples and, when they are crops, what they were cropped to (for the log)."""
    count = min(samples.count, SENSITIVITY_SAMPLES)
    if sizes.total <= 0:
        return samples.head(count), ""
    if samples.generated:
        fits = SENSITIVITY_WORK_BYTES // (sizes.total * (probes + 1))
        macs = multiply_adds(model, sizes)
        if macs > 0:
            fits = min(fits, SENSITIVITY_WORK_MACS // (macs * (probes + 1)))
        return samples.head(min(count, max(MIN_SENSITIVITY_SAMPLES, fits))), ""
    run_bytes = max(SENSITIVITY_RUN_BYTES, SENSITIVITY_WORK_BYTES // (probes + 1))
    if count * sizes.total <= run_bytes:
        return samples.head(count), ""
    keep = min(count, max(MIN_GIVEN_SENSITIVITY_SAMPLES, run_bytes // sizes.total))
    chosen = spread(samples, keep)
    if keep * sizes.total <= run_bytes:
        return chosen, ""
    largest = max(sample_input_bytes(part) for part in feed_groups(samples.inputs))  # what `sizes` was inferred on
    smaller = cropped(chosen, model, run_bytes / keep, sizes.total / max(largest, 1))
    if smaller is None or not runs_isolated(model, smaller):
        return chosen, ""
    shapes = sorted({"x".join(map(str, array.shape)) for part in feed_groups(smaller.inputs) for array in part.values()
                     if np.ndim(array) >= 3})
    return smaller, f" (centre crops: {', '.join(shapes[:4])}{', ...' if len(shapes) > 4 else ''})"


def runs_isolated(model: ir.Model, samples: Samples) -> bool:
    """Whether the model runs on one sample of each group of `samples` (crops change shapes), in
    a child process: ONNX Runtime can die natively on a size it cannot take (PP-OCR's text
    recognizer: SIGFPE, integer division by zero)."""
    feeds = [dict(slice_feeds(part, 0, 1)) for part in feed_groups(samples.inputs)]
    try:
        return call_isolated(_run_child, to_proto(model).SerializeToString(), feeds, timeout=CROP_CHECK_TIMEOUT_S,
                             stage="checking the cropped samples")
    except OnnxcompError as error:  # the child crashed (ChildCrashed), hung or could not load the model
        logger.info("cropped samples do not run (%s); probing whole samples", str(error).splitlines()[0][:200])
        return False


def _run_child(model_bytes: bytes, feeds: list[dict]) -> bool:
    """(In the isolated child.) Whether every feed runs."""
    sess = session(model_bytes)
    names = [output.name for output in sess.get_outputs()]
    try:
        for feed in feeds:
            sess.run(names, feed)
    except Exception:  # noqa: BLE001  (any failure: the caller probes whole samples instead)
        return False
    return True


def analyze(model: ir.Model, samples: Samples, options: CompressOptions, batch: int, steps: Steps,
            sizes: ActivationSizes) -> tuple[dict, list[LayerOptions]]:
    """Per-weight importances and priced candidates, with measured layer sensitivities."""
    weights = find_weights(model)
    with steps.timed("price", f"price {len(weights)} weights"):
        values = {w.name: w.numpy().astype(np.float32) for w in weights}
        importances = activation_importance(model, weights, samples.head(IMPORTANCE_SAMPLES).inputs, batch,
                                            sizes=sizes)
        if not samples.generated:  # which embedding rows real inputs read (generated ids are uniform)
            importances.update(embedding_importance(model, weights, samples.inputs, batch, sizes=sizes))
        for weight in weights:  # integer weights: errors weighted by their per-channel dequantization scales
            if weight.storage.importance is not None and weight.name not in importances:
                importances[weight.name] = weight.storage.importance
        layers = []
        with live_task("price weights", total=len(weights), unit="weights") as bar:  # a live bar on a terminal only
            for w in weights:
                layers.append(layer_options(w.name, values[w.name], w.role, importances.get(w.name), itemsize=w.itemsize,
                                            restore_bytes=w.storage.restore_bytes(), outliers=w.storage.integer))
                bar.advance()
    if options.sensitivity:
        probed, crops = sensitivity_samples(samples, sizes, len(layers), model)
        kind = "generated " if samples.generated else ""
        measured = largest_within_budget(layers, multiply_adds(model, sizes)) if samples.generated else layers
        left = f"; the {len(layers) - len(measured)} smallest weights count as the most sensitive" if len(measured) < len(layers) else ""
        with steps.timed("sensitivity", f"measure sensitivity on {probed.count} {kind}samples{crops}{left}"), \
                live_task("measure sensitivity", total=len(measured), unit="layers") as bar:
            unreached: list[str] = []
            sensitivities = measure_sensitivity(model, measured, values, probed.inputs, batch,
                                                storage={w.name: w.storage for w in weights},
                                                sizes=None if crops else sizes,
                                                progress=lambda index, total, name: bar.advance(), unreached=unreached)
        if unreached:
            steps.log(unreached_line(unreached, {layer.name: layer.dense.bytes for layer in layers}, samples.generated,
                                     branches=any(node.op_type == "If" for node in ir.traversal.RecursiveGraphIterator(model.graph))))
        top = max(sensitivities.values(), default=1.0)
        for layer in layers:
            layer.sensitivity = sensitivities.get(layer.name, top)
    return importances, layers


def unreached_line(names: list[str], dense_bytes: dict[str, int], generated: bool, branches: bool = True) -> str:
    """The line saying which weights the samples never reached (`measure_sensitivity`); `branches`:
    the model has If nodes (else the samples read too few of their rows or values)."""
    size = format_size(sum(dense_bytes.get(name, 0) for name in names))
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    if branches:
        why = "an If branch they never take?"
        fix = "--input-value or --data with inputs that take the other branches" if generated else "--data with samples that reach them"
    else:
        why = "they read too few of their rows or values?"
        fix = "--data with real samples" if generated else "--data with more varied samples"
    count = f"{len(names)} weights" if len(names) > 1 else "1 weight"
    return (f"{count} ({size}: {shown}) never changed an output on these samples ({why}): kept as carefully as "
            f"the most sensitive weight; {fix} would measure them")


def largest_within_budget(layers: list[LayerOptions], macs: int) -> list[LayerOptions]:
    """The layers to probe when even one generated sample's probes exceed `SENSITIVITY_WORK_MACS`
    (one probe is one model run): the largest by dense bytes, as many as the budget allows (at
    least `MIN_PROBED_LAYERS`); the rest, the smallest, count as the most sensitive of those
    measured, which costs few bytes. A 640x640 YOLO11-seg (16 G multiply-adds a run, 198
    weights) probes 61 of them: 46 s for the whole run at 1/4 against 60 s probing all (idle
    machine; several times that beside other work). All layers when the budget allows."""
    if macs <= 0 or macs * (len(layers) + 1) <= SENSITIVITY_WORK_MACS:
        return layers
    keep = max(MIN_PROBED_LAYERS, SENSITIVITY_WORK_MACS // macs - 1)
    chosen = {id(layer) for layer in sorted(layers, key=lambda layer: -layer.dense.bytes)[:keep]}
    return [layer for layer in layers if id(layer) in chosen]


def price(model: ir.Model, importances: dict, sensitivity_of: dict[str, float],
          keep_zeros: bool = False) -> list[LayerOptions]:
    """Candidates for the model's current weights with the first analysis's sensitivities
    (for retraining, whose codebook stages know one codebook per weight only)."""
    layers = [layer_options(w.name, w.numpy().astype(np.float32), w.role, importances.get(w.name), keep_zeros,
                            grouped=False)
              for w in find_weights(model)]
    for layer in layers:
        layer.sensitivity = sensitivity_of.get(layer.name, 1.0)
    return layers


def split_hot_rows(model: ir.Model, importances: dict, layers: list[LayerOptions], options: CompressOptions,
                   progress: Progress) -> list[LayerOptions]:
    """Split embedding tables whose rows the samples read unevenly into the rows they read
    (hot) and the rest (cold), so that bytes go where real input reads (`row_lookup.split_table`,
    in place); returns the layers with each split table's two parts instead of it.

    How often other input reads rows the samples never did is estimated with Good-Turing (the
    share of lookups that hit a row read exactly once, N1 / N); each part's sensitivity is the
    table's, scaled by its share of the squared weights weighted by those read rates, so the
    allocator minimises the expected distortion of lookups. A table is left whole when the split
    (its row map included) would not fit the target at the smallest settings.
    """
    wanted = [layer for layer in layers if layer.role == "embedding" and len(layer.shape) == 2
              and importances.get(layer.name) is not None and layer.shape[0] >= row_lookup.SPLIT_MIN_ROWS
              and row_lookup.row_gathers(model.graph.initializers[layer.name]) is not None
              and model.graph.initializers[layer.name].dtype == ir.DataType.FLOAT]
    if not wanted:
        return layers
    budget = options.target_bytes - fixed_bytes(model, layers, options.keep_metadata)
    result = list(layers)
    for layer in wanted:
        importance = importances[layer.name]
        counts = row_counts(importance)
        hot = counts > 0
        if not 0 < hot.sum() <= row_lookup.SPLIT_MAX_HOT_SHARE * hot.size:
            continue
        values = model.graph.initializers[layer.name].const_value.numpy().astype(np.float32)
        total = counts.sum()
        unseen = max(float(np.count_nonzero(counts == 1)), 1.0) / total
        rate = np.where(hot, (1 - unseen) * counts / total, unseen / np.count_nonzero(~hot))
        energy = rate * np.square(values).sum(axis=1)
        parts = []
        for suffix, part in (("_hot", hot), ("_cold", ~hot)):
            options_of_part = layer_options(layer.name + suffix, values[part], "embedding", importance[part])
            options_of_part.sensitivity = layer.sensitivity * float(energy[part].sum() / energy.sum())
            parts.append(options_of_part)
        others = [item for item in result if item is not layer]
        map_bytes = hot.size * (2 if hot.size <= 65535 else 4) + row_lookup.SPLIT_GRAPH_BYTES
        if sum(item.smallest.bytes for item in others + parts) + map_bytes > budget:
            log(progress, f"{layer.name}: not split (the row map would not fit the target)")
            continue
        names = row_lookup.split_table(model, layer.name, hot)
        if names is None:
            continue
        for part, name in zip(parts, names):
            part.name = name
            importances[name] = part.importance
        importances.pop(layer.name)
        result = others + parts
        log(progress, f"{layer.name}: the samples read {int(hot.sum())} of {hot.size} rows; unseen rows estimated at "
                      f"{100 * unseen:.1f}% of lookups; split into {names[0]} and {names[1]}")
    return result
