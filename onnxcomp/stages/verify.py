"""Run the original model for reference, then the compressed one; the report and its guards."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import onnx_ir as ir

from onnxcomp.samples.data import NoRunnableInputError, Samples
from onnxcomp.errors import FidelityError, OnnxcompError
from onnxcomp.reporting.floor import QualityFloorError, check_floor, floor_for, off_reason, worst_shortfall
from onnxcomp.model.memory import ActivationSizes, activation_sizes, peak_rss_bytes
from onnxcomp.passes.cleanup import metadata_bytes
from onnxcomp.planning.pricing import LayerOptions
from onnxcomp.samples.probe import generated_samples
from onnxcomp.samples.signature import fixed_batch
from onnxcomp import modelfile
from onnxcomp.reporting.compression_report import CompressionReport
from onnxcomp.reporting.int8_reference import CONTROL_BITS, rounded_model
from onnxcomp.reporting.report import GENERATED_INPUTS_NOTE, compressed_rows
from onnxcomp.training.retrain import TrainingData
from onnxcomp.runtime.inference import RunFailedError, run_batches, session
from onnxcomp.stages.analyze import batch_size
from onnxcomp.stages.fit import Fit, Plan, fit_plan
from onnxcomp.stages.options import CompressOptions
from onnxcomp.stages.steps import Progress, Steps, log
from onnxcomp.reporting.verify import accuracy, class_score_outputs, fidelity
from onnxcomp.model.weights import quantized_weights

VERIFY_SAMPLES = 2000
GENERATED_OUTPUT_BYTES = 64 << 20  # the original's outputs on generated samples, all together
MIN_GENERATED_SAMPLES = 16


@dataclasses.dataclass
class Reference:
    """The samples a run works with and the original model's outputs on them."""

    samples: Samples
    outputs: list[np.ndarray]
    batch_size: int
    sizes: ActivationSizes


def run_original(model: ir.Model, original, samples: Samples | None, options: CompressOptions,
                 progress: Progress) -> Reference:
    """Run the original model (`original`, an ONNX Runtime session) on the samples, or on
    generated ones without samples. Raises NoRunnableInputError when no generated input runs."""
    if samples is None:
        samples = generated_samples(model, min(VERIFY_SAMPLES, 256), options.seed, options.input_shapes,
                                    options.input_values)
    sizes = activation_sizes(model, samples.inputs)
    batch = batch_size(model, sizes, options.input_shapes)
    if fixed_batch(model, options.input_shapes):
        samples = whole_batches(samples, batch)
    try:
        if samples.generated:
            samples = _within_output_budget(original, samples, batch)
        log(progress, f"run the original model on {samples.count} {'generated ' if samples.generated else ''}samples")
        outputs = run_batches(original, samples.inputs, batch, generated=samples.generated)
    except RunFailedError as error:
        if not samples.generated or not original.get_outputs():  # not the inputs' fault
            raise
        # inputs generated without probing (nothing to choose) that do not run: nothing runs
        raise NoRunnableInputError(str(error), last_error=error.cause) from None
    if samples.generated:
        _require_finite(original, outputs)
    return Reference(samples, outputs, batch, sizes)


def whole_batches(samples: Samples, batch: int) -> Samples:
    """The samples cut to whole batches of a model that runs exactly `batch` at a time (CenterFace
    declares [10, 3, 32, 32]: 256 generated samples left a last run of 6, which it refuses)."""
    if samples.count < batch:
        raise OnnxcompError(f"the model runs exactly {batch} samples at a time and only {samples.count} "
                            + ("were generated; pin a smaller batch with --input-shape" if samples.generated
                               else "were given; give at least that many with --data"))
    return dataclasses.replace(samples, batch=batch).head(samples.count)


def _require_finite(original, outputs: list[np.ndarray]) -> None:
    """An output that is NaN or infinite on every generated input has nothing to compare with
    (e.g. a pitch model whose `fmin`/`fmax` scalars were drawn at random): say which, so that the
    run goes on unverified instead of passing on measures of NaN."""
    names = [o.name for o in original.get_outputs()]
    for name, output in zip(names, outputs):
        array = np.asarray(output)
        if array.dtype.kind in "fc" and array.size and not np.isfinite(array).any():
            raise NoRunnableInputError("values drawn at random, e.g. for a scalar parameter, may be out of the model's range",
                                       why=f"the original model's output {name!r} is NaN or infinite on every generated input")


def _within_output_budget(original, samples: Samples, batch: int) -> Samples:
    """The first of the generated samples whose outputs take at most `GENERATED_OUTPUT_BYTES`
    (at least `MIN_GENERATED_SAMPLES`), measured on the first batch: verification holds the
    original's outputs, the compressed model's and the batches they are joined from at once, so
    256 samples of an OCR model's [T, N, 8210] float logits (0.9 MB each) held ~700 MB."""
    first = run_batches(original, samples.head(min(batch, samples.count)).inputs, batch, generated=True)
    per_sample = sum(np.asarray(output).nbytes for output in first) / max(min(batch, samples.count), 1)
    count = max(MIN_GENERATED_SAMPLES, int(GENERATED_OUTPUT_BYTES // max(per_sample, 1.0)))
    return samples if count >= samples.count else samples.head(count)


def left_quantized(model: ir.Model, result: Fit, progress: Progress) -> list[dict]:
    """Already-quantized weights the plan left as they are, said once."""
    quantized = quantized_weights(model, exclude={name for name, c in result.allocation.choices.items() if c.quant is not None})
    if quantized:
        log(progress, f"left as they are: {len(quantized)} already-quantized weights ("
                      + ", ".join(f"{q['name']} {q['dtype']} {q['bytes']} B, {'/'.join(q['ops'])}" for q in quantized) + ")")
    return quantized


def held_out(samples: Samples, eval_samples: Samples | None, training: TrainingData | None) -> Samples:
    """What verification runs on: the evaluation samples, else the held-out part of training, else the samples."""
    return eval_samples or (training.held_out if training is not None and training.held_out is not None else samples)


def verify_outputs(model: ir.Model, original, reference: Reference, check: Samples,
                   data: bytes) -> tuple[dict, list[np.ndarray], list[np.ndarray]]:
    """Fidelity of the compressed model (`data`) to the original on `check`; also returns both
    models' outputs on it."""
    reference_outputs = reference.outputs
    if check is not reference.samples:
        reference_outputs = run_batches(original, check.inputs, reference.batch_size)
    compressed_outputs = run_batches(session(data, arena=False), check.inputs, reference.batch_size)
    measured = fidelity(reference_outputs, compressed_outputs, class_score_outputs(model))
    names = [value.name for value in model.graph.outputs]
    if len(names) == len(measured["outputs"]):  # the report names each output as the model does
        measured["outputs"] = dict(zip(names, measured["outputs"].values()))
    measured["samples"] = check.count
    measured["generated_inputs"] = check.generated
    if check.generated:
        measured["note"] = GENERATED_INPUTS_NOTE
    return measured, reference_outputs, compressed_outputs


def make_report(result: Fit, layers: list[LayerOptions], options: CompressOptions, input_bytes: int, measured: dict,
                steps: Steps, defaults, neurons: dict | None, quantized: list[dict], training: TrainingData | None,
                check: Samples, samples: Samples, outputs: tuple[list[np.ndarray], list[np.ndarray]]) -> CompressionReport:
    """The run's report (before the quality floor); `outputs`: the original's and the compressed
    model's on `check`."""
    report = CompressionReport(
        input_bytes=input_bytes,
        output_bytes=len(result.data),
        target_bytes=options.target_bytes,
        ratio=input_bytes / len(result.data),
        layers=compressed_rows(result.data, layers, result.allocation),
        fidelity=measured,
        attempts=result.attempts,
        passes=result.passes or None,
        verified=True,  # the compressed model's outputs were compared with the original's in ONNX Runtime
        metadata_bytes=metadata_bytes(result.model),  # counted in the target (the allocator's fixed bytes)
        seconds=steps.rounded(),
        initializer_inputs=defaults.as_dict() if defaults.removed or defaults.kept else None,
        neurons=neurons,
        quantized_left=quantized or None,  # already-quantized weights, kept as they are
    )
    if training is not None:
        report.training = {"method": options.method, "epochs": options.epochs, "samples": training.train.count,
                           "held_out": 0 if training.held_out is None else training.held_out.count,
                           "labels": training.train.labels is not None}
    if check.labels is not None:
        original_accuracy = accuracy(outputs[0][0], check.labels)
        compressed_accuracy = accuracy(outputs[1][0], check.labels)
        report.accuracy = {"original": original_accuracy, "compressed": compressed_accuracy,
                           "samples": check.count, "held_out": check is not samples}
    return report


def check_guards(report: CompressionReport, options: CompressOptions) -> None:
    if options.force:
        return
    if options.max_accuracy_drop is not None and report.accuracy is not None:
        drop = 100 * (report.accuracy["original"] - report.accuracy["compressed"])
        if drop > options.max_accuracy_drop:
            raise FidelityError(f"accuracy drops by {drop:.2f} points, more than --max-accuracy-drop {options.max_accuracy_drop}; nothing written (use --allow-low-fidelity to write anyway)")
    # --min-fidelity (and the default floor) are judged per output by onnxcomp.reporting.floor.check_floor


def quality_floor(report: CompressionReport, plan: Plan, options: CompressOptions, check: Samples,
                  reference_outputs: list[np.ndarray], batch: int, input_bytes: int, fine_tuned: bool,
                  names: list[str], steps: Steps) -> dict:
    """`onnxcomp.reporting.floor.check_floor` for this run, searching smaller targets with `fidelity_at`.
    A refusal carries the report, its ``quality_floor`` saying what failed and which size passes
    (and the run's time and peak memory, the search included)."""
    if options.force and not fine_tuned:  # written anyway: say whether the default floor would have refused it
        shortfall = worst_shortfall(report.fidelity, floor_for(None, False), names)
        return {"checked": False, "reason": off_reason(options.min_fidelity, options.force),
                **({"below_default": shortfall.verdict()} if shortfall is not None else {})}
    try:
        return check_floor(
            report.fidelity, floor_for(options.min_fidelity, options.force, fine_tuned=fine_tuned),
            options.target_bytes, input_bytes,
            functools.partial(fidelity_at, plan, options, check, reference_outputs, batch),
            names=names, log=steps.log, off_reason=off_reason(options.min_fidelity, options.force),
            control=functools.partial(control_fidelity, plan.model, check, reference_outputs, batch))
    except QualityFloorError as error:
        report.quality_floor = error.entry
        report.seconds["total"] = steps.rounded(total=True)["total"]
        report.peak_rss_bytes = peak_rss_bytes()
        error.report = report
        raise


def control_fidelity(model: ir.Model, check: Samples, reference_outputs: list[np.ndarray], batch: int) -> dict:
    """Fidelity to the original of the original with every float weight rounded per channel to
    `CONTROL_BITS` (about 0.1% of each channel's range; `onnxcomp.reporting.int8_reference.rounded_model`)
    on `check`: how far each output moves under any small change (`floor.mark_unstable`)."""
    # integer weights stay: one step of an int8 weight is no small change to judge an output by
    control = modelfile.to_proto(rounded_model(model, CONTROL_BITS, integers=False)).SerializeToString()
    measured = fidelity(reference_outputs, run_batches(session(control), check.inputs, batch), class_score_outputs(model))
    return {**measured, "generated_inputs": check.generated}


def fidelity_at(plan: Plan, options: CompressOptions, check: Samples, reference_outputs: list[np.ndarray],
                batch: int, target_bytes: int) -> dict | None:
    """Fidelity of the same analyzed model compressed to `target_bytes` (the quality floor's
    search): what a run with that target gives, without canonicalizing and measuring again
    (with fine-tuning: the fine-tuned weights, not trained again). None if it does not fit."""
    result = fit_plan(plan, dataclasses.replace(options, target_bytes=target_bytes), None)
    if not result.fits:
        return None
    measured = fidelity(reference_outputs, run_batches(session(result.data), check.inputs, batch),
                        class_score_outputs(plan.model))
    return {**measured, "generated_inputs": check.generated}  # judged as the asked size's report is
