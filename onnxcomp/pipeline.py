"""The whole compression flow in one place.

canonicalize -> analyze weights -> price candidates -> measure sensitivity -> allocate bytes ->
prune, cluster, encode -> clean up -> serialize and measure -> (tighten and redo if over) ->
verify in ONNX Runtime -> save atomically.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxcomp import io, rows
from onnxcomp.allocate import Allocation, LayerOptions, allocate, layer_options, load_budget
from onnxcomp.channel_scales import normalize_weights, rescale_weights
from onnxcomp.canonicalize import canonicalize, check_interface, initializer_inputs, model_interface
from onnxcomp.data import Batch, NoRunnableInputError, Samples, as_samples
from onnxcomp.memory import MAX_BATCH, ActivationSizes, activation_sizes, batch_size as budget_batch, peak_rss_bytes
from onnxcomp.probe import generated_samples
from onnxcomp.signature import input_specs
from onnxcomp.errors import FidelityError, OnnxcompError, TargetUnreachableError
from onnxcomp.passes.cleanup import clean_up, metadata_bytes
from onnxcomp.passes.cluster_weights import ClusterWeightsPass
from onnxcomp.passes.insert_dequantize_lookup import InsertDequantizeLookupPass
from onnxcomp.passes.prune_weights import PruneWeightsPass
from onnxcomp.passes.substitute_sparse_ops import SubstituteSparseOpsPass
from onnxcomp.progress import task as live_task
from onnxcomp.report import GENERATED_INPUTS_NOTE, compressed_rows, layer_rows
from onnxcomp.runtime.inference import RunFailedError, run_batches, session
from onnxcomp.runtime.training_support import unavailable_reason as training_unavailable_reason
from onnxcomp.gptq import SAMPLES as GPTQ_SAMPLES, compensate, discount_compensated, input_hessians
from onnxcomp.sensitivity import activation_importance, embedding_importance, measure_sensitivity, row_counts
from onnxcomp.sizes import format_size
from onnxcomp.stored import record_weight_names, weight_uses
from onnxcomp.quantize import prune_mask
from onnxcomp.retrain import (Planner, RetrainOptions, TrainingData, admm, finetune_codebooks, held_out_targets,
                              iterative_prune, require_training, soft_weight_sharing, with_weights)
from onnxcomp.verify import accuracy, class_score_outputs, fidelity
from onnxcomp.floor import check_floor, floor_for, off_reason, unverified_floor
from onnxcomp.weights import find_weights, no_weights_error, quantized_weights

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
GROW_ATTEMPTS = 2  # re-plans with the unused bytes added when a fit leaves slack
SLACK_FRACTION = 0.01
SLACK_MIN_BYTES = 64
SENSITIVITY_SAMPLES = 64
# Generated inputs: the sensitivity probes together compute at most this many activation bytes
# (samples x per-sample activation bytes x probes), with at least MIN_SENSITIVITY_SAMPLES samples.
SENSITIVITY_WORK_BYTES = 16 << 30
MIN_SENSITIVITY_SAMPLES = 8
IMPORTANCE_SAMPLES = 256
VERIFY_SAMPLES = 2000
HOLD_OUT_MIN = 500
HOLD_OUT_MAX = 5000
AUTO_VIB_BITS = 2.0  # auto eliminates neurons only under this many target bits per weight


@dataclasses.dataclass
class CompressOptions:
    target_bytes: int
    keep_metadata: bool = False
    sensitivity: bool = True
    seed: int = 0
    min_fidelity: float | None = None  # per output: cosine, top-1 agreement for class scores (None: onnxcomp.floor defaults, 0: off)
    max_accuracy_drop: float | None = None  # percentage points, needs labels
    force: bool = False  # write even below the quality guards (the CLI's --allow-low-fidelity)
    epochs: int = 0  # > 0 with labelled or unlabelled --data: fine-tuning (see onnxcomp.retrain)
    batch_size: int = 64
    lr: float = 1e-3
    patience: int | None = None  # early stopping per training stage on the held-out metric
    epochs_given: bool = True  # False: `epochs` is the CLI default, skipped where fine-tuning cannot apply
    method: str = "auto"  # auto | prune | sws | admm | vib (see onnxcomp.retrain)
    vib_gamma: float = 1.6e-4  # VIB penalty weight per neuron group
    input_shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)  # --input-shape NAME:D1,D2
    input_values: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # --input-value NAME=V
    equalize: bool = False  # cross-layer equalization before pricing (onnxcomp.passes.equalize)


@dataclasses.dataclass
class CompressResult:
    model: ir.Model
    data: bytes | None  # None: over protobuf's 2 GB limit, saved with external data
    report: dict


def _log(progress: Callable[[str], None] | None, message: str) -> None:
    logger.info(message)
    if progress:
        progress(message)


def compress_model(model: ir.Model, options: CompressOptions, samples: Samples | Iterable[Batch] | None = None,
                   input_bytes: int | None = None, progress: Callable[[str], None] | None = None,
                   eval_samples: Samples | Iterable[Batch] | None = None) -> CompressResult:
    """Compress an in-memory model to at most `options.target_bytes` serialized bytes.

    `samples` calibrate (and, with ``options.epochs > 0``, train); `eval_samples` are held out:
    they pick the best epoch and the report's accuracy is measured on them. Without them, fine-
    tuning holds out a tenth of `samples` (at most 5000). Either may be `Samples` or an iterable
    of batches: dicts of arrays named after the model's inputs, plus optional integer `labels`.
    """
    if io.is_streamed(model):  # weights too large to hold: one weight at a time, data-free
        from onnxcomp.streaming import compress_streamed, refuse_data

        refuse_data(options, samples, eval_samples)
        result = compress_streamed(model, options, input_bytes, progress)
        result.report["verified"] = False  # each decoded weight is checked, the model's outputs are not run
        return result
    options = _training_or_calibration(options, samples is not None, progress)
    samples = as_samples(samples, model, "samples", options.input_values)
    eval_samples = as_samples(eval_samples, model, "eval_samples", options.input_values)
    started = time.perf_counter()
    timings: dict[str, float] = {}
    original_proto = io.to_proto(model)
    original_data_bytes = input_bytes or original_proto.ByteSize()
    reference_session = session(original_proto)
    # Work on a model of our own: the passes below change the graph in place, and renaming an
    # initializer writes through to the TensorProto it wraps (onnx_ir), i.e. to the caller's.
    model = ir.serde.deserialize_model(original_proto)

    _log(progress, "canonicalize")
    defaults = initializer_inputs(model)
    interface = model_interface(model, without=defaults.removed)
    model, weights = canonical_weights(model)
    if options.equalize:
        _equalize(model, progress)
    _log_initializer_inputs(defaults, progress)
    timings["canonicalize"] = time.perf_counter() - started

    if samples is None:
        try:
            samples = generated_samples(model, min(VERIFY_SAMPLES, 256), options.seed, options.input_shapes,
                                        options.input_values)
        except NoRunnableInputError as error:
            return _compress_unverified(model, options, original_data_bytes, progress, error)
    sizes = activation_sizes(model, samples.inputs)
    batch_size = _batch_size(model, sizes)
    _log(progress, f"run the original model on {samples.count} {'generated ' if samples.generated else ''}samples")
    try:
        reference_outputs = run_batches(reference_session, samples.inputs, batch_size, generated=samples.generated)
    except RunFailedError as error:
        if not samples.generated or not reference_session.get_outputs():  # not the inputs' fault
            raise
        # inputs generated without probing (nothing to choose) that do not run: nothing runs
        return _compress_unverified(model, options, original_data_bytes, progress,
                                    NoRunnableInputError(str(error), last_error=error.cause))

    training = _training_data(options, samples, eval_samples, reference_outputs[0], model, batch_size)
    neurons = None
    if training is not None:
        require_training()
        if _wants_vib(options, training, weights, progress):
            tick = time.perf_counter()
            model, neurons = _eliminate_neurons(model, training, options, progress)
            sizes = activation_sizes(model, samples.inputs)
            timings["neuron elimination"] = time.perf_counter() - tick

    importances, layers = _analyze(model, samples, options, batch_size, progress, timings, sizes)
    if training is None and not samples.generated:
        layers = _split_hot_rows(model, importances, layers, options, progress)
    tick = time.perf_counter()
    fixed = _fixed_bytes(model, layers, options.keep_metadata)
    budget = options.target_bytes - fixed
    sensitivity_of = {layer.name: layer.sensitivity for layer in layers}
    planner = Planner(
        price=lambda m: _price(m, importances, sensitivity_of),
        importances=importances,
    )
    if training is not None:
        # Calibrate the weights' byte budget on the untrained model: the allocation that fits
        # tells how much the encoded graph costs beyond the weights' payload.
        _, fitted, fit_data, _, floor_bytes = _fit(model, layers, budget, options, importances, None)
        if fit_data is None:
            raise _unreachable(model, layers, options, importances, floor_bytes)
        budget = fitted.estimated_bytes
        prune_epochs, codebook_epochs = _split_epochs(options.epochs)
        dense_total = sum(layer.dense.bytes for layer in layers)
        _log(progress, f"fine-tune ({options.method}) {options.epochs} epochs on {training.train.count} samples, "
                       f"{'held-out ' + str(training.held_out.count) if training.held_out is not None else 'no held-out'} samples (ONNX Runtime training)")
        if options.method == "admm":
            model = admm(model, planner, max(budget, 1), training, _retrain_options(options), prune_epochs,
                            log=lambda line: _log(progress, line))
        elif options.method == "sws":
            model = soft_weight_sharing(model, planner, training, _retrain_options(options), prune_epochs,
                                        log=lambda line: _log(progress, line))
        else:
            model = iterative_prune(model, planner, dense_total, max(budget, 1), training, _retrain_options(options),
                                       prune_epochs, log=lambda line: _log(progress, line))
        timings["fine-tune"] = time.perf_counter() - tick
        tick = time.perf_counter()
        # Keep the trained zero pattern; prune further (untrained) only if the budget needs it.
        layers = _price(model, importances, sensitivity_of, keep_zeros=options.method != "sws")
    hessians = None
    if training is None and not samples.generated and not io.is_streamed(model):
        # Real samples, no fine-tuning: quantize with GPTQ error compensation (onnxcomp.gptq).
        tick_hessians = time.perf_counter()
        hessians = input_hessians(model, [w for w in find_weights(model) if w.storage.plain],
                                  samples.head(GPTQ_SAMPLES).inputs, batch_size, sizes=sizes)
        layers = discount_compensated(layers, {w.name: w.numpy().astype(np.float32) for w in find_weights(model)
                                               if w.name in hessians}, hessians)
        timings["hessians"] = time.perf_counter() - tick_hessians
    # Without fine-tuning every encoding is open: keep session creation within allocate.MAX_LOAD_RATIO
    # of the original's (fine-tuned weights keep the zero pattern they were trained with).
    max_load = load_budget(original_data_bytes) if training is None else None
    compressed, allocation, attempt_data, attempt, floor_bytes = _fit(model, layers, budget, options, importances, progress,
                                                                      hessians=hessians, max_load=max_load)
    if attempt_data is None and training is not None:
        layers = planner.price(model)
        compressed, allocation, attempt_data, attempt, floor_bytes = _fit(model, layers, budget, options, importances, progress)
    timings["allocate_and_encode"] = time.perf_counter() - tick
    if attempt_data is not None and training is not None:
        tick = time.perf_counter()
        final_masks = _masks(model, allocation, importances)
        weights = finetune_codebooks(model, allocation, final_masks, training, _retrain_options(options),
                                            codebook_epochs, log=lambda line: _log(progress, line))
        # The tuned weights already sit on their codebooks: pricing them again re-finds the same
        # levels, and the fit loop absorbs any byte drift (e.g. a codebook that left a uniform grid).
        tuned_model = with_weights(model, weights)
        tuned_layers = _price(tuned_model, importances, sensitivity_of, keep_zeros=True)
        rebuilt, tuned, rebuilt_data, _, _ = _fit(tuned_model, tuned_layers, budget, options, importances, None)
        if rebuilt_data is None:
            _log(progress, "fine-tuned codebooks came out over the target; keeping the untuned ones")
        elif (scores := _held_out_scores(training, (attempt_data, rebuilt_data), batch_size)) and \
                scores[1] < scores[0] - 2 * _score_error(scores[0], training.held_out.count):
            # Re-pricing can re-cluster or prune the tuned weights (untrained) to stay in budget;
            # only a drop beyond the held-out sampling noise counts.
            _log(progress, f"fine-tuned codebooks scored {scores[1]:.4f} on held-out data against {scores[0]:.4f} "
                           "before; keeping the untuned ones")
        else:
            compressed, attempt_data, allocation = rebuilt, rebuilt_data, tuned
        timings["codebook fine-tune"] = time.perf_counter() - tick
    if attempt_data is None:
        raise _unreachable(model, layers, options, importances, floor_bytes)
    check_interface(interface, compressed)  # names, order, dtypes, declared shapes: a drop-in replacement
    quantized = quantized_weights(model, exclude={name for name, c in allocation.choices.items() if c.quant is not None})
    if quantized:
        _log(progress, f"left as they are: {len(quantized)} already-quantized weights ("
                       + ", ".join(f"{q['name']} {q['dtype']} {q['bytes']} B, {'/'.join(q['ops'])}" for q in quantized) + ")")

    _log(progress, "verify in ONNX Runtime")
    tick = time.perf_counter()
    check = eval_samples or (training.held_out if training is not None and training.held_out is not None else samples)
    if check is not samples:
        reference_outputs = run_batches(reference_session, check.inputs, batch_size)
    compressed_session = session(attempt_data)
    compressed_outputs = run_batches(compressed_session, check.inputs, batch_size)
    report_fidelity = fidelity(reference_outputs, compressed_outputs, class_score_outputs(model))
    report_fidelity["samples"] = check.count
    report_fidelity["generated_inputs"] = check.generated
    if check.generated:
        report_fidelity["note"] = GENERATED_INPUTS_NOTE
    timings["verify"] = time.perf_counter() - tick
    report = {
        "input_bytes": original_data_bytes,
        "output_bytes": len(attempt_data),
        "target_bytes": options.target_bytes,
        "ratio": original_data_bytes / len(attempt_data),
        "layers": compressed_rows(attempt_data, layers, allocation) if attempt_data is not None else layer_rows(layers, allocation),
        "fidelity": report_fidelity,
        "attempts": attempt,
        "verified": True,  # the compressed model's outputs were compared with the original's in ONNX Runtime
        "metadata_bytes": metadata_bytes(compressed),  # counted in the target (the allocator's fixed bytes)
        "seconds": {k: round(v, 3) for k, v in timings.items()},
    }
    if defaults.removed or defaults.kept:
        report["initializer_inputs"] = defaults.as_dict()
    if neurons is not None:
        report["neurons"] = neurons
    if quantized:
        report["quantized_left"] = quantized  # already-quantized weights, kept as they are
    if training is not None:
        report["training"] = {"method": options.method, "epochs": options.epochs, "samples": training.train.count,
                              "held_out": 0 if training.held_out is None else training.held_out.count,
                              "labels": training.train.labels is not None}
    if check.labels is not None:
        original_accuracy = accuracy(reference_outputs[0], check.labels)
        compressed_accuracy = accuracy(compressed_outputs[0], check.labels)
        report["accuracy"] = {"original": original_accuracy, "compressed": compressed_accuracy,
                              "samples": check.count, "held_out": check is not samples}
    _check_guards(report, options)
    report["quality_floor"] = check_floor(
        report_fidelity, floor_for(options.min_fidelity, options.force, fine_tuned=training is not None),
        options.target_bytes, original_data_bytes,
        functools.partial(_fidelity_at, model, layers, fixed, options, importances, hessians, max_load, check,
                          reference_outputs, batch_size),
        names=[value.name for value in compressed.graph.outputs], log=lambda line: _log(progress, line),
        off_reason=off_reason(options.min_fidelity, options.force))
    report["seconds"]["total"] = round(time.perf_counter() - started, 3)
    report["peak_rss_bytes"] = peak_rss_bytes()
    return CompressResult(compressed, attempt_data, report)


def _compress_unverified(model: ir.Model, options: CompressOptions, input_bytes: int,
                         progress: Callable[[str], None] | None, error: NoRunnableInputError) -> CompressResult:
    """No generated input runs the model and no samples were given: compress anyway, as the streamed
    path does (each weight priced by its own error, each decoded weight checked in ONNX Runtime),
    without running the model; the report says ``verified: false``."""
    from onnxcomp.runtime.inference import describe_error
    from onnxcomp.streaming import compress_streamed

    reason = describe_error(error.last_error) if error.last_error else str(error)
    if options.min_fidelity is not None and options.min_fidelity > 0:
        raise OnnxcompError(f"--min-fidelity needs the model's outputs, but no generated input ran in ONNX Runtime "
                            f"({reason}); give sample inputs with --data")
    logger.warning("the compressed model's outputs are not verified: no generated input ran in ONNX Runtime (%s); "
                   "give sample inputs with --data, or the inputs' shapes and values with --input-shape NAME:DIMS / "
                   "--input-value NAME=V, to verify them; the quality floor cannot be checked", reason)
    result = compress_streamed(model, options, input_bytes, progress, why="no generated input runs the model")
    if result.data is not None:
        session(result.data)  # the model is not run, but it must load where the original loaded
    result.report.update(streamed=False, verified=False, unverified_reason=reason, quality_floor=unverified_floor(reason))
    return result


def _held_out_scores(training: TrainingData, candidates: tuple[bytes, ...], batch_size: int) -> list[float]:
    """Held-out accuracy of each serialized candidate (agreement with the teacher without labels);
    empty without held-out data."""
    if training.held_out is None:
        return []
    target = held_out_targets(training)
    return [accuracy(run_batches(session(data), training.held_out.inputs, batch_size)[0], target) for data in candidates]


def _score_error(score: float, count: int) -> float:
    """Standard error of the difference of two accuracies near `score` on `count` samples."""
    return float(np.sqrt(2 * score * (1 - score) / max(count, 1)))


def _check_guards(report: dict, options: CompressOptions) -> None:
    if options.force:
        return
    if options.max_accuracy_drop is not None and "accuracy" in report:
        drop = 100 * (report["accuracy"]["original"] - report["accuracy"]["compressed"])
        if drop > options.max_accuracy_drop:
            raise FidelityError(f"accuracy drops by {drop:.2f} points, more than --max-accuracy-drop {options.max_accuracy_drop}; nothing written (use --allow-low-fidelity to write anyway)")
    # --min-fidelity (and the default floor) are judged per output by onnxcomp.floor.check_floor


def _fidelity_at(model: ir.Model, layers: list[LayerOptions], fixed: int, options: CompressOptions, importances: dict,
                 hessians: dict | None, max_load: int | None, check: Samples, reference_outputs: list[np.ndarray],
                 batch_size: int, target_bytes: int) -> dict | None:
    """Fidelity of the same analyzed model compressed to `target_bytes` (the quality floor's
    search): what a run with that target gives, without canonicalizing and measuring again
    (with fine-tuning: the fine-tuned weights, not trained again). None if it does not fit."""
    at_target = dataclasses.replace(options, target_bytes=target_bytes)
    _, _, data, _, _ = _fit(model, layers, target_bytes - fixed, at_target, importances, None, hessians=hessians,
                            max_load=max_load)
    if data is None:
        return None
    measured = fidelity(reference_outputs, run_batches(session(data), check.inputs, batch_size), class_score_outputs(model))
    return {**measured, "generated_inputs": check.generated}  # judged as the asked size's report is


def _batch_size(model: ir.Model, sizes: ActivationSizes | None = None) -> int:
    """The batch the model declares (a fixed size on the sample axis), else as many samples as
    fit `memory.ACTIVATION_BUDGET` with `sizes` per sample (at most `memory.MAX_BATCH`)."""
    for spec in input_specs(model):
        if spec.sample_axis is not None and isinstance(spec.dims[spec.sample_axis], int):
            return spec.dims[spec.sample_axis]
    return MAX_BATCH if sizes is None else budget_batch(sizes.total)


def _sensitivity_samples(samples: Samples, sizes: ActivationSizes, probes: int) -> int:
    """Samples for the sensitivity probes: `SENSITIVITY_SAMPLES` of given data; of generated
    data, as many as keep the probes' activations within `SENSITIVITY_WORK_BYTES` (at least
    `MIN_SENSITIVITY_SAMPLES`), so that time does not grow as layers x samples x activation size."""
    count = min(samples.count, SENSITIVITY_SAMPLES)
    if not samples.generated or sizes.total <= 0:
        return count
    return min(count, max(MIN_SENSITIVITY_SAMPLES, SENSITIVITY_WORK_BYTES // (sizes.total * (probes + 1))))


def _masks(model: ir.Model, allocation: Allocation, importances: dict,
           names: set[str] | None = None) -> dict[str, np.ndarray]:
    masks = {}
    for weight in find_weights(model):
        if names is not None and weight.name not in names:
            continue
        choice = allocation.choices.get(weight.name)
        if choice is not None and choice.quant is not None and choice.quant.nonzeros < weight.size:
            masks[weight.name] = prune_mask(weight.numpy(), importances.get(weight.name), choice.quant.saliency_threshold)
    return masks


def _analyze(model: ir.Model, samples: Samples, options: CompressOptions, batch_size: int, progress,
             timings: dict, sizes: ActivationSizes) -> tuple[dict, list[LayerOptions]]:
    """Per-weight importances and priced candidates, with measured layer sensitivities."""
    weights = find_weights(model)
    _log(progress, f"price {len(weights)} weights")
    tick = time.perf_counter()
    values = {w.name: w.numpy().astype(np.float32) for w in weights}
    importances = activation_importance(model, weights, samples.head(IMPORTANCE_SAMPLES).inputs, batch_size,
                                        sizes=sizes)
    if not samples.generated:  # which embedding rows real inputs read (generated ids are uniform)
        importances.update(embedding_importance(model, weights, samples.inputs, batch_size, sizes=sizes))
    for weight in weights:  # integer weights: errors weighted by their per-channel dequantization scales
        if weight.storage.importance is not None and weight.name not in importances:
            importances[weight.name] = weight.storage.importance
    layers = []
    with live_task("price weights", total=len(weights), unit="weights") as bar:  # a live bar on a terminal only
        for w in weights:
            layers.append(layer_options(w.name, values[w.name], w.role, importances.get(w.name), itemsize=w.itemsize,
                                        restore_bytes=w.storage.restore_bytes(), outliers=w.storage.integer))
            bar.advance()
    timings["price"] = timings.get("price", 0.0) + time.perf_counter() - tick
    if options.sensitivity:
        tick = time.perf_counter()
        count = _sensitivity_samples(samples, sizes, len(layers))
        _log(progress, f"measure sensitivity on {count} {'generated ' if samples.generated else ''}samples")
        with live_task("measure sensitivity", total=len(layers), unit="layers") as bar:
            sensitivities = measure_sensitivity(model, layers, values, samples.head(count).inputs, batch_size,
                                                storage={w.name: w.storage for w in weights}, sizes=sizes,
                                                progress=lambda index, total, name: bar.advance())
        for layer in layers:
            layer.sensitivity = sensitivities.get(layer.name, 1.0)
        timings["sensitivity"] = timings.get("sensitivity", 0.0) + time.perf_counter() - tick
    return importances, layers


def _split_hot_rows(model: ir.Model, importances: dict, layers: list[LayerOptions], options: CompressOptions,
                    progress) -> list[LayerOptions]:
    """Split embedding tables whose rows the samples read unevenly into the rows they read
    (hot) and the rest (cold), so that bytes go where real input reads (`rows.split_table`,
    in place); returns the layers with each split table's two parts instead of it.

    How often other input reads rows the samples never did is estimated with Good-Turing (the
    share of lookups that hit a row read exactly once, N1 / N); each part's sensitivity is the
    table's, scaled by its share of the squared weights weighted by those read rates, so the
    allocator minimises the expected distortion of lookups. A table is left whole when the split
    (its row map included) would not fit the target at the smallest settings.
    """
    wanted = [layer for layer in layers if layer.role == "embedding" and len(layer.shape) == 2
              and importances.get(layer.name) is not None and layer.shape[0] >= rows.SPLIT_MIN_ROWS
              and rows.row_gathers(model.graph.initializers[layer.name]) is not None
              and model.graph.initializers[layer.name].dtype == ir.DataType.FLOAT]
    if not wanted:
        return layers
    budget = options.target_bytes - _fixed_bytes(model, layers, options.keep_metadata)
    result = list(layers)
    for layer in wanted:
        importance = importances[layer.name]
        counts = row_counts(importance)
        hot = counts > 0
        if not 0 < hot.sum() <= rows.SPLIT_MAX_HOT_SHARE * hot.size:
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
        map_bytes = hot.size * (2 if hot.size <= 65535 else 4) + rows.SPLIT_GRAPH_BYTES
        if sum(item.smallest.bytes for item in others + parts) + map_bytes > budget:
            _log(progress, f"{layer.name}: not split (the row map would not fit the target)")
            continue
        names = rows.split_table(model, layer.name, hot)
        if names is None:
            continue
        for part, name in zip(parts, names):
            part.name = name
            importances[name] = part.importance
        importances.pop(layer.name)
        result = others + parts
        _log(progress, f"{layer.name}: the samples read {int(hot.sum())} of {hot.size} rows; unseen rows estimated at "
                       f"{100 * unseen:.1f}% of lookups; split into {names[0]} and {names[1]}")
    return result


def canonical_weights(model: ir.Model) -> tuple[ir.Model, list]:
    """Canonicalize the model and find its compressible weights; refuse what cannot be compressed."""
    model = canonicalize(model)
    if model.opset_imports.get("", 0) < 11:
        raise OnnxcompError(f"model uses opset {model.opset_imports.get('', 0)}; onnxcomp needs opset 11 or newer (convert it with onnx.version_converter)")
    weights = find_weights(model)
    if not weights:
        raise no_weights_error(model)
    return model, weights


def _equalize(model: ir.Model, progress) -> None:
    """Cross-layer equalization in place; the float model's outputs do not change."""
    from onnxcomp.passes.equalize import EqualizeCrossLayerPass

    result = EqualizeCrossLayerPass()(model)
    _log(progress, f"equalize: {len(result.rows)} layer pairs rescaled" + "".join(
        f"; {row['first']} channel range spread {row['spread_before']:.3g} -> {row['spread_after']:.3g}"
        for row in result.rows[:4]) + ("; ..." if len(result.rows) > 4 else ""))


def _log_initializer_inputs(defaults, progress) -> None:
    """Say what happened to graph inputs that have an initializer (see `initializer_inputs`)."""
    if defaults.removed:
        _log(progress, f"{len(defaults.removed)} initializers listed as graph inputs by convention (IR < 4 or every "
                       f"initializer listed) are no longer inputs and are compressed: {', '.join(defaults.removed[:8])}"
                       + (", ..." if len(defaults.removed) > 8 else ""))
    if defaults.kept:
        _log(progress, f"{len(defaults.kept)} graph inputs with a default value stay inputs (callers may override "
                       f"them) and are stored dense: {', '.join(defaults.kept[:8])}" + (", ..." if len(defaults.kept) > 8 else ""))


def _is_classifier(model: ir.Model) -> bool:
    """The first output looks like class logits [batch, classes] (what fine-tuning trains)."""
    output = model.graph.outputs[0]
    return output.shape is not None and len(output.shape) == 2 and output.dtype == ir.DataType.FLOAT


def _wants_vib(options: CompressOptions, training: TrainingData, weights, progress=None) -> bool:
    """`vib` always; `auto` with labels when the target is tight (under AUTO_VIB_BITS per weight).

    At loose targets pruning alone keeps every neuron and spends the budget: on LeNet-300-100
    (40 epochs, full MNIST) prune gave 1.62% test error at 100 KB (3.0 bits per weight) where
    VIB + prune gave 1.82% in 75 KB; at 50 KB (1.5 bits) the two were level (1.74% / 1.71%); at
    16.7 KB VIB + prune won (1.75% / 1.97%).
    """
    if options.method == "vib":
        if training.train.labels is None:
            raise OnnxcompError("--method vib needs labels in --data (the 'labels' array); use --method prune to distill without labels")
        return True
    if options.method != "auto" or training.train.labels is None:
        return False
    bits_per_weight = 8 * options.target_bytes / max(1, sum(w.size for w in weights if w.prunable))
    if bits_per_weight >= AUTO_VIB_BITS:
        _log(progress, f"target allows {bits_per_weight:.1f} bits per weight (>= {AUTO_VIB_BITS}): "
                       "auto prunes without neuron elimination")
        return False
    return True


def _eliminate_neurons(model: ir.Model, training: TrainingData, options: CompressOptions, progress):
    """VIBNet: gate every neuron group the analysis can shrink, train, drop the uninformative ones."""
    from onnxcomp.channels import analyze_channels
    from onnxcomp.vib import vib_eliminate

    groups = [g.name for g in analyze_channels(model).groups if not g.blocked]
    if not groups:
        if options.method == "vib":
            raise OnnxcompError("--method vib: no neuron group of this model can be removed safely (see onnxcomp.channels)")
        _log(progress, "no neuron groups to gate; skipping neuron elimination")
        return model, None
    gated, finetune_epochs = _vib_epochs(options.epochs)
    _log(progress, f"neuron elimination (VIB) on {len(groups)} groups: {gated} gated + {finetune_epochs} fine-tuning epochs")
    held_out = training.held_out
    try:
        smaller, report = vib_eliminate(
            model, training.train.inputs, training.train.labels,
            eval_inputs=None if held_out is None else held_out.inputs,
            eval_labels=None if held_out is None else held_out.labels,
            groups=groups, gamma=options.vib_gamma, epochs=gated, finetune_epochs=finetune_epochs,
            batch_size=options.batch_size, lr=options.lr, finetune_lr=options.lr / 3, distill=True,
            gate_lr_scale=10.0, seed=options.seed, log=lambda line: _log(progress, line),
        )
    except OnnxcompError as error:
        if options.method == "vib":
            raise
        _log(progress, f"neuron elimination skipped: {error}")
        return model, None
    kept = {name: {"size": g["size"], "kept": g["kept"]} for name, g in report["groups"].items()}
    _log(progress, "kept " + ", ".join(f"{name} {g['kept']}/{g['size']}" for name, g in kept.items()))
    return smaller, {"groups": kept, "parameters_before": report["params_before"], "parameters_after": report["params_after"]}


def _vib_epochs(epochs: int) -> tuple[int, int]:
    """Of the run's epochs, VIB gets about half (gated training, then a fine-tuning eighth)."""
    return max(1, (epochs * 3) // 8), max(1, epochs // 8)


def _price(model: ir.Model, importances: dict, sensitivity_of: dict[str, float],
           keep_zeros: bool = False) -> list[LayerOptions]:
    # Re-pricing serves retraining, whose codebook stages know one codebook per weight only.
    layers = [layer_options(w.name, w.numpy().astype(np.float32), w.role, importances.get(w.name), keep_zeros,
                            grouped=False)
              for w in find_weights(model)]
    for layer in layers:
        layer.sensitivity = sensitivity_of.get(layer.name, 1.0)
    return layers


def _fit(model: ir.Model, layers: list[LayerOptions], budget: int, options: CompressOptions, importances: dict,
         progress, hessians: dict[str, np.ndarray] | None = None, max_load: int | None = None):
    """Allocate and build until the serialized model fits: tighten the budget by the overshoot,
    and when a fit leaves more than SLACK_FRACTION of the target unused, plan again with the
    slack added (at most GROW_ATTEMPTS times), keeping the largest build that fits."""
    floor_total = sum(layer.smallest.bytes for layer in layers)
    compressed = allocation = None
    floor_bytes = None
    best = None
    grown = 0
    attempt = 0
    for attempt in range(1, MAX_ATTEMPTS + 1):
        # Never plan below the smallest candidates: the floor itself is always tried once.
        at_floor = budget <= floor_total
        allocation = allocate(layers, max(budget, floor_total), max_load)
        assert allocation is not None
        compressed = _build(model, allocation, options.keep_metadata, importances, hessians=hessians)
        data = io.serialized_bytes(compressed)
        tried = f"attempt {attempt}: {format_size(len(data))} (target {format_size(options.target_bytes)})"
        if len(data) <= options.target_bytes:
            best = (compressed, allocation, data, attempt, None)
            slack = options.target_bytes - len(data)
            if slack <= max(SLACK_MIN_BYTES, SLACK_FRACTION * options.target_bytes) or grown == GROW_ATTEMPTS:
                _log(progress, f"{tried}: fits; kept")
                return best
            _log(progress, f"{tried}: fits with {format_size(slack)} unused; planning again to use it")
            grown += 1
            budget += slack // 2  # the plan-to-file step is not exact: claim half
            continue
        if best is not None:  # the grown plan overshot: the last fit stands
            _log(progress, f"{tried}: over; keeping attempt {best[3]} ({format_size(len(best[2]))})")
            return best
        if at_floor:
            _log(progress, f"{tried}: over, and no smaller plan exists")
            return compressed, allocation, None, attempt, len(data)
        _log(progress, f"{tried}: over by {format_size(len(data) - options.target_bytes)}; planning that much smaller")
        budget -= len(data) - options.target_bytes + 16 * attempt
    if best is not None:
        _log(progress, f"keeping attempt {best[3]} ({format_size(len(best[2]))})")
        return best
    return compressed, allocation, None, attempt, floor_bytes


def _unreachable(model, layers, options, importances, floor_bytes: int | None) -> TargetUnreachableError:
    if floor_bytes is None:
        smallest = allocate(layers, sum(layer.smallest.bytes for layer in layers))
        floor_bytes = len(io.serialized_bytes(_build(model, smallest, options.keep_metadata, importances)))
    return TargetUnreachableError(
        f"target {format_size(options.target_bytes)} ({options.target_bytes} B) is below the smallest size onnxcomp can reach for this model: {format_size(floor_bytes)} ({floor_bytes} B)",
        smallest_bytes=floor_bytes,
    )


def _split_epochs(epochs: int) -> tuple[int, int]:
    """Most epochs go to pruning/retraining, a quarter (at least one) to codebook fine-tuning."""
    codebook = max(1, epochs // 4)
    return max(1, epochs - codebook), codebook


def _retrain_options(options: CompressOptions) -> RetrainOptions:
    return RetrainOptions(options.method, options.epochs, options.batch_size, options.lr, options.seed, options.patience)


def _training_or_calibration(options: CompressOptions, has_data: bool,
                             progress: Callable[[str], None] | None) -> CompressOptions:
    """Where no training build can run: an explicit request to fine-tune (`epochs_given`, or a
    `method` other than auto) stops before any work; the default (`auto`) calibrates, saying so."""
    if options.epochs <= 0 or not has_data:
        return options
    reason = training_unavailable_reason()
    if reason is None:
        return options
    if options.epochs_given or options.method != "auto":
        raise OnnxcompError(reason)
    _log(progress, "--method auto calibrates without fine-tuning here (as --epochs 0): " + reason.split(": ")[0])
    return dataclasses.replace(options, epochs=0)


def _training_data(options: CompressOptions, samples: Samples, eval_samples: Samples | None,
                   teacher: np.ndarray, model: ir.Model, batch_size: int) -> TrainingData | None:
    """The training and held-out split, or None when this run does not fine-tune."""
    if options.epochs <= 0:
        return None
    stored = sorted({w.storage.dtype.name.lower() for w in find_weights(model) if not w.storage.plain})
    if stored:  # the training backend trains float32 initializers only
        if options.epochs_given:
            raise OnnxcompError(f"fine-tuning needs float32 weights and this model stores {'/'.join(stored)} ones; "
                                "pass --epochs 0 to compress with --data as calibration only")
        return None
    if not options.epochs_given and (samples.generated or not _is_classifier(model)):
        return None  # the default epochs apply to classifiers with data; others calibrate only
    if samples.generated:
        raise OnnxcompError("--epochs needs training data: pass --data (labels optional; without labels the original model teaches)")
    if not samples.on_axis0 or (eval_samples is not None and not eval_samples.on_axis0):
        if not options.epochs_given:
            return None
        raise OnnxcompError("fine-tuning needs feeds of one shape with every input's samples on axis 0; "
                            "pass --epochs 0 to compress with --data as calibration only")
    train, held_out, train_teacher = samples, eval_samples, teacher
    if held_out is None and samples.count >= 2 * HOLD_OUT_MIN:
        count = min(HOLD_OUT_MAX, samples.count // 10)
        order = np.random.default_rng(options.seed).permutation(samples.count)
        train, held_out = samples.take(order[count:]), samples.take(order[:count])
        train_teacher = teacher[order[count:]]
    held_out_teacher = None
    if held_out is not None and held_out.labels is None:
        held_out_teacher = run_batches(session(io.to_proto(model)), held_out.inputs, batch_size)[0]
    if train.count < options.batch_size:
        raise OnnxcompError(f"--data has {train.count} training samples, fewer than one batch of {options.batch_size}; lower --batch-size")
    return TrainingData(train, held_out, train_teacher, held_out_teacher)


def _build(model: ir.Model, allocation: Allocation, keep_metadata: bool, importances: dict,
           masks: dict[str, np.ndarray] | None = None, decoded: dict[str, ir.Value] | None = None,
           hessians: dict[str, np.ndarray] | None = None) -> ir.Model:
    """Apply an allocation to a copy of the canonical model: prune, cluster, encode, clean up.

    Weights still in external data (`io.is_streamed`) are encoded one at a time and unmapped
    after, so only one weight's float values (and their temporaries) are in memory at once.
    `decoded`, when given, receives per weight name the value its consumers now read.
    `hessians` (per weight, from real samples) switch on GPTQ error compensation (onnxcomp.gptq).
    """
    work = model.clone()
    scaled = {name: c.scales for name, c in allocation.choices.items() if c.scales is not None}
    if hessians and not io.is_streamed(work):
        compensated = {name: c for name, c in allocation.choices.items() if name not in scaled}
        compensate(work, compensated, hessians)
        allocation.choices.update(compensated)  # compensate refits codebooks in the mapping it is given
    normalize_weights(work, scaled)
    codebooks = {name: c.quant.codebook for name, c in allocation.choices.items() if c.quant is not None}
    grouped = {name: (c.quant.groups, c.quant.group_axis) for name, c in allocation.choices.items()
               if c.quant is not None and c.quant.groups > 1}
    vectors = {name: c.quant.vector_dim for name, c in allocation.choices.items()
               if c.quant is not None and c.quant.vector_dim > 1}
    outliers = {name: c.quant.outlier_threshold for name, c in allocation.choices.items()
                if c.quant is not None and c.quant.outlier_threshold is not None}

    def encode(masks: dict[str, np.ndarray], names) -> None:
        ir.passes.Sequential(
            PruneWeightsPass(masks=masks),
            ClusterWeightsPass(bits=None, codebooks=codebooks, group_axes={name: axis for name, (_, axis) in grouped.items()},
                               vectors=set(vectors), names=names, outliers=outliers),
            SubstituteSparseOpsPass(names=names, exclude=set(outliers)),
            InsertDequantizeLookupPass(groups=grouped, vectors=vectors, names=names, outliers=outliers),
        )(work)

    weights = find_weights(work)
    uses = {w.name: next(iter(w.value.uses())) for w in weights}
    if not io.is_streamed(work):
        encode(_masks(work, allocation, importances) if masks is None else masks, None)
    else:
        for weight in weights:
            if weight.name not in codebooks:
                continue
            tensor = weight.value.const_value
            if masks is None:
                single = _masks(work, allocation, importances, names={weight.name})
            else:
                single = {weight.name: masks[weight.name]} if weight.name in masks else {}
            encode(single, {weight.name})
            io.release(tensor)
            if work.graph.initializers.get(weight.name) is not weight.value:
                weight.value.const_value = None  # encoded: drop the clustered float copy this list still holds
        io.load_external_leftovers(work)
    rescale_weights(work, uses, scaled)
    if decoded is not None:
        decoded.update({name: node.inputs[index] for name, (node, index) in uses.items()})
    return clean_up_named(work, model, keep_metadata)


def clean_up_named(work: ir.Model, original: ir.Model, keep_metadata: bool) -> ir.Model:
    """`clean_up` (names shortened unless `keep_metadata`), keeping each weight's name in
    `original` in the graph metadata (`onnxcomp.stored.NAMES_KEY`; counted in the target)."""
    located = weight_uses(work)  # matched to `original`'s weights by use, before names change
    cleaned = clean_up(work, keep_metadata=keep_metadata, shorten_names=not keep_metadata)
    record_weight_names(cleaned, located, original)
    return cleaned


def _fixed_bytes(model: ir.Model, layers: list[LayerOptions], keep_metadata: bool) -> int:
    """Serialized bytes of everything except the compressible weights' payload."""
    cleaned = clean_up_named(model.clone(), model, keep_metadata)
    return len(io.serialized_bytes(cleaned)) - sum(layer.dense.bytes for layer in layers)


def compress_file(input_path: str | Path, output_path: str | Path, options: CompressOptions,
                  samples: Samples | Iterable[Batch] | None = None, progress: Callable[[str], None] | None = None,
                  overwrite: bool = False, eval_samples: Samples | Iterable[Batch] | None = None) -> dict:
    """Compress a file to a file; the input is only read, the output appears whole or not at all."""
    from onnxcomp.outputs import Output, check_outputs, input_files

    input_path, output_path = Path(input_path), Path(output_path)
    # Never over the input or its external data (links included); the folder exists and is writable.
    check_outputs([Output(output_path, "the output model")], input_files(input_path), force=overwrite)
    model = io.load_model(input_path)
    input_bytes = io.file_bytes(input_path)
    result = compress_model(model, options, samples=samples, input_bytes=input_bytes, progress=progress,
                            eval_samples=eval_samples)
    too_big = result.data is None or len(result.data) >= io.MAX_PROTO_BYTES  # weights go to external data
    written = io.save_model(result.model, output_path, overwrite=overwrite) if too_big else _write(output_path, result.data, overwrite)
    result.report["output_bytes"] = written
    result.report["peak_rss_bytes"] = peak_rss_bytes()  # this process or its largest child, writing included
    result.report["output"] = str(output_path)
    result.report["input"] = str(input_path)
    if written > options.target_bytes:  # the file decides, not the estimate
        output_path.unlink()
        raise OnnxcompError(f"internal error: written file is {written} B, over the target {options.target_bytes} B; removed it")
    return result.report


def _write(path: Path, data: bytes, overwrite: bool) -> int:
    if path.exists() and not overwrite:
        raise OnnxcompError(f"{path} exists; pass --force to overwrite it")
    io.atomic_write(path, lambda handle: handle.write(data))
    return path.stat().st_size
