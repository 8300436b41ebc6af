"""Fine-tuning with data: the training split, neuron elimination (VIB), pruning or weight
sharing while training, and codebook fine-tuning of the plan that fits (onnxcomp.training.retrain)."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxcomp import modelfile
from onnxcomp.channels import analyze_channels
from onnxcomp.samples.data import Samples
from onnxcomp.errors import OnnxcompError
from onnxcomp.training.retrain import (Planner, RetrainOptions, TrainingData, admm, finetune_codebooks, held_out_targets,
                              iterative_prune, soft_weight_sharing, with_weights)
from onnxcomp.runtime.inference import run_batches, session
from onnxcomp.runtime.training_support import unavailable_reason as training_unavailable_reason
from onnxcomp.stages.analyze import price
from onnxcomp.stages.build import prune_masks
from onnxcomp.stages.fit import Fit, Plan, fit, unreachable
from onnxcomp.stages.options import CompressOptions
from onnxcomp.stages.steps import Progress, Steps, log
from onnxcomp.reporting.verify import accuracy
from onnxcomp.training.vib import vib_eliminate
from onnxcomp.model.weights import find_weights

HOLD_OUT_MIN = 500
HOLD_OUT_MAX = 5000
AUTO_VIB_BITS = 2.0  # auto eliminates neurons only under this many target bits per weight


def training_or_calibration(options: CompressOptions, has_data: bool, progress: Progress) -> CompressOptions:
    """Where no training build can run: an explicit request to fine-tune (`epochs_given`, or a
    `method` other than auto) stops before any work; the default (`auto`) calibrates, saying so."""
    if options.epochs <= 0 or not has_data:
        return options
    reason = training_unavailable_reason()
    if reason is None:
        return options
    if options.epochs_given or options.method != "auto":
        raise OnnxcompError(reason)
    log(progress, "--method auto calibrates without fine-tuning here (as --epochs 0): " + reason.split(": ")[0])
    return dataclasses.replace(options, epochs=0)


def training_data(options: CompressOptions, samples: Samples, eval_samples: Samples | None,
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
    if not options.epochs_given and (samples.generated or not is_classifier(model)):
        return None  # the default epochs apply to classifiers with data; others calibrate only
    if samples.generated:
        raise OnnxcompError("--epochs needs training data: pass --data (labels optional; without labels the original model teaches)")
    if teacher is not None and np.ndim(teacher) != 2:  # checked here, before any stage that might not train at all
        raise OnnxcompError(f"fine-tuning needs a model whose first output is [N, C] class logits; its first output has "
                            f"shape {tuple(np.shape(teacher))}; pass --epochs 0 to compress with --data as calibration only")
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
        held_out_teacher = run_batches(session(modelfile.to_proto(model)), held_out.inputs, batch_size)[0]
    if train.count < options.batch_size:
        raise OnnxcompError(f"--data has {train.count} training samples, fewer than one batch of {options.batch_size}; "
                            "lower --batch-size, or use --epochs 0 to calibrate and verify on them without fine-tuning")
    return TrainingData(train, held_out, train_teacher, held_out_teacher)


def is_classifier(model: ir.Model) -> bool:
    """The first output looks like class logits [batch, classes] (what fine-tuning trains)."""
    output = model.graph.outputs[0]
    return output.shape is not None and len(output.shape) == 2 and output.dtype == ir.DataType.FLOAT


def wants_vib(options: CompressOptions, training: TrainingData, weights, progress: Progress = None) -> bool:
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
        log(progress, f"target allows {bits_per_weight:.1f} bits per weight (>= {AUTO_VIB_BITS}): "
                      "auto prunes without neuron elimination")
        return False
    return True


def eliminate_neurons(model: ir.Model, training: TrainingData, options: CompressOptions, progress: Progress):
    """VIBNet: gate every neuron group the analysis can shrink, train, drop the uninformative ones.
    Returns the model (the same one when nothing was removed) and the report's ``neurons`` or None."""
    groups = [g.name for g in analyze_channels(model).groups if not g.blocked]
    if not groups:
        if options.method == "vib":
            raise OnnxcompError("--method vib: no neuron group of this model can be removed safely (see onnxcomp.channels)")
        log(progress, "no neuron groups to gate; skipping neuron elimination")
        return model, None
    first, gated, finetune_epochs = vib_epochs(options.epochs)
    log(progress, f"neuron elimination (VIB) on {len(groups)} groups: {first} gated epochs, {gated} more on what they keep, "
                  f"{finetune_epochs} fine-tuning")
    held_out = training.held_out
    try:
        smaller, report = vib_eliminate(
            model, training.train.inputs, training.train.labels,
            eval_inputs=None if held_out is None else held_out.inputs,
            eval_labels=None if held_out is None else held_out.labels,
            groups=groups, gamma=options.vib_gamma, epochs=gated, finetune_epochs=finetune_epochs,
            batch_size=options.batch_size, lr=options.lr, finetune_lr=options.lr / 3, distill=True,
            gate_lr_scale=10.0, seed=options.seed, log=lambda line: log(progress, line), first_round_epochs=first,
        )
    except OnnxcompError as error:
        if options.method == "vib":
            raise
        log(progress, f"neuron elimination skipped: {error}")
        return model, None
    kept = {name: {"size": g["size"], "kept": g["kept"]} for name, g in report["groups"].items()}
    log(progress, "kept " + ", ".join(f"{name} {g['kept']}/{g['size']}" for name, g in kept.items()))
    return smaller, {"groups": kept, "parameters_before": report["params_before"], "parameters_after": report["params_after"]}


def vib_epochs(epochs: int) -> tuple[int, int, int]:
    """VIB's epochs: (gated on the whole network, gated again on what that keeps, fine-tuning).

    Three eighths of the run's epochs gate the whole network, four times as many gate the smaller
    network that round leaves (its epochs cost a fraction of the whole one's), an eighth fine-tunes.
    LeNet-300-100 to 1/64 with full MNIST and the default 10 epochs (seeds 0, 1, 2, seed 0 again;
    ONNX Runtime's training runs vary): one round of 3 kept 210-226/115-126/84-86 of 784/300/100 at
    2.00-2.35% test error (five runs), 3 + 12 kept 129-138/85-90/39-41 at 1.89-2.13% (six runs),
    about 5 s more a run."""
    first = max(1, (epochs * 3) // 8)
    return first, 4 * first, max(1, epochs // 8)


def split_epochs(epochs: int) -> tuple[int, int]:
    """Most epochs go to pruning/retraining, a quarter (at least one) to codebook fine-tuning."""
    codebook = max(1, epochs // 4)
    return max(1, epochs - codebook), codebook


def retrain_options(options: CompressOptions) -> RetrainOptions:
    return RetrainOptions(options.method, options.epochs, options.batch_size, options.lr, options.seed, options.patience)


def finetune_and_fit(plan: Plan, training: TrainingData, options: CompressOptions, batch_size: int,
                     steps: Steps) -> tuple[Plan, Fit]:
    """Prune (or share weights) while training, fit the trained model, then fine-tune the fitted
    plan's codebooks where that does not lose held-out accuracy. Returns the trained model's plan
    and the kept build (which may not fit: the caller raises)."""
    model, layers, importances, progress = plan.model, plan.layers, plan.importances, steps.progress
    budget = options.target_bytes - plan.fixed
    sensitivity_of = {layer.name: layer.sensitivity for layer in layers}
    planner = Planner(price=lambda m: price(m, importances, sensitivity_of), importances=importances)
    with steps.timed("fine-tune"):
        # Calibrate the weights' byte budget on the untrained model: the allocation that fits
        # tells how much the encoded graph costs beyond the weights' payload.
        calibration = fit(model, layers, budget, options, importances, None)
        if not calibration.fits:
            raise unreachable(model, layers, options, importances, calibration.floor_bytes)
        budget = calibration.allocation.estimated_bytes
        prune_epochs, codebook_epochs = split_epochs(options.epochs)
        dense_total = sum(layer.dense.bytes for layer in layers)
        steps.log(f"fine-tune ({options.method}) {options.epochs} epochs on {training.train.count} samples, "
                  f"{'held-out ' + str(training.held_out.count) if training.held_out is not None else 'no held-out'} samples (ONNX Runtime training)")
        train_log = steps.log
        if options.method == "admm":
            model = admm(model, planner, max(budget, 1), training, retrain_options(options), prune_epochs, log=train_log)
        elif options.method == "sws":
            model = soft_weight_sharing(model, planner, training, retrain_options(options), prune_epochs, log=train_log)
        else:
            model = iterative_prune(model, planner, dense_total, max(budget, 1), training, retrain_options(options),
                                    prune_epochs, log=train_log)
    with steps.timed("allocate_and_encode"):
        # Keep the trained zero pattern; prune further (untrained) only if the budget needs it.
        layers = price(model, importances, sensitivity_of, keep_zeros=options.method != "sws")
        result = fit(model, layers, budget, options, importances, progress)
        if not result.fits:
            layers = planner.price(model)
            result = fit(model, layers, budget, options, importances, progress)
    plan = Plan(model, layers, importances, plan.fixed)
    if not result.fits:
        return plan, result
    with steps.timed("codebook fine-tune"):
        weights = finetune_codebooks(model, result.allocation, prune_masks(model, result.allocation, importances), training,
                                     retrain_options(options), codebook_epochs, log=train_log)
        # The tuned weights already sit on their codebooks: pricing them again re-finds the same
        # levels, and the fit loop absorbs any byte drift (e.g. a codebook that left a uniform grid).
        tuned_model = with_weights(model, weights)
        rebuilt = fit(tuned_model, price(tuned_model, importances, sensitivity_of, keep_zeros=True), budget, options,
                      importances, None)
        if not rebuilt.fits:
            steps.log("fine-tuned codebooks came out over the target; keeping the untuned ones")
        elif (scores := held_out_scores(training, (result.data, rebuilt.data), batch_size)) and \
                scores[1] < scores[0] - 2 * score_error(scores[0], training.held_out.count):
            # Re-pricing can re-cluster or prune the tuned weights (untrained) to stay in budget;
            # only a drop beyond the held-out sampling noise counts.
            steps.log(f"fine-tuned codebooks scored {scores[1]:.4f} on held-out data against {scores[0]:.4f} "
                      "before; keeping the untuned ones")
        else:
            result = dataclasses.replace(rebuilt, attempts=result.attempts)
    return plan, result


def held_out_scores(training: TrainingData, candidates: tuple[bytes, ...], batch_size: int) -> list[float]:
    """Held-out accuracy of each serialized candidate (agreement with the teacher without labels);
    empty without held-out data."""
    if training.held_out is None:
        return []
    target = held_out_targets(training)
    return [accuracy(run_batches(session(data), training.held_out.inputs, batch_size)[0], target) for data in candidates]


def score_error(score: float, count: int) -> float:
    """Standard error of the difference of two accuracies near `score` on `count` samples."""
    return float(np.sqrt(2 * score * (1 - score) / max(count, 1)))
