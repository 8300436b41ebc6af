"""The whole compression flow in one place; each step is a public function of `onnxcomp.stages`.

canonicalize -> run the original -> (fine-tune data: neuron elimination) -> analyze weights ->
plan and build until it fits (fine-tune data: prune while training, tune codebooks; real samples:
GPTQ) -> verify in ONNX Runtime -> report and quality floor -> save atomically.
Models too large to hold, and models no input runs, take `onnxcomp.streaming`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path

import onnx_ir as ir

from onnxcomp import modelfile
from onnxcomp.model import maps
from onnxcomp.model.canonicalize import check_interface, holds_tensors
from onnxcomp.samples.data import Batch, NoRunnableInputError, Samples, as_samples
from onnxcomp.errors import OnnxcompError
from onnxcomp.model.memory import activation_sizes, peak_rss_bytes
from onnxcomp.model.weights import no_weights_error
from onnxcomp.outputs import Output, check_outputs, input_files
from onnxcomp.reporting.compression_report import CompressionReport
from onnxcomp.runtime.inference import session
from onnxcomp.stages.analyze import analyze, canonical_model, split_hot_rows
from onnxcomp.stages.build import fixed_bytes
from onnxcomp.stages.finetune import eliminate_neurons, finetune_and_fit, training_data, training_or_calibration, wants_vib
from onnxcomp.stages.fit import Plan, fit_calibrated, unreachable
from onnxcomp.stages.options import CompressOptions, CompressResult
from onnxcomp.stages.steps import Progress, Steps
from onnxcomp.stages.verify import (check_guards, held_out, left_quantized, make_report, quality_floor, run_original,
                                    verify_outputs)
from onnxcomp.training.retrain import require_training
from onnxcomp.streaming import compress_streamed, compress_unverified, refuse_data

__all__ = ["CompressOptions", "CompressResult", "compress_file", "compress_model"]


def compress_model(model: ir.Model, options: CompressOptions, samples: Samples | Iterable[Batch] | None = None,
                   input_bytes: int | None = None, progress: Progress = None,
                   eval_samples: Samples | Iterable[Batch] | None = None) -> CompressResult:
    """Compress an in-memory model to at most `options.target_bytes` serialized bytes.

    `samples` calibrate (and, with ``options.epochs > 0``, train); `eval_samples` are held out:
    they pick the best epoch and the report's accuracy is measured on them. Without them, fine-
    tuning holds out a tenth of `samples` (at most 5000). Either may be `Samples` or an iterable
    of batches: dicts of arrays named after the model's inputs, plus optional integer `labels`.
    """
    if modelfile.is_streamed(model):  # weights too large to hold: one weight at a time, data-free
        refuse_data(options, samples, eval_samples)
        return compress_streamed(model, options, input_bytes, progress)
    if not holds_tensors(model):
        raise no_weights_error(model)
    options = training_or_calibration(options, samples is not None, progress)
    samples = as_samples(samples, model, "samples", options.input_values)
    eval_samples = as_samples(eval_samples, model, "eval_samples", options.input_values)
    steps = Steps(progress)
    original_proto = modelfile.to_proto(model)
    input_bytes = input_bytes or original_proto.ByteSize()
    original = session(original_proto, arena=False)  # lives through the run: no arena held at its peak
    # Work on a model of our own: the passes below change the graph in place, and renaming an
    # initializer writes through to the TensorProto it wraps (onnx_ir), i.e. to the caller's.
    with steps.timed("canonicalize", "canonicalize"):
        canonical = canonical_model(ir.serde.deserialize_model(original_proto), options, progress)
    model = canonical.model
    try:
        reference = run_original(model, original, samples, options, progress)
    except NoRunnableInputError as error:
        return compress_unverified(model, options, input_bytes, progress, error)
    samples, batch, sizes = reference.samples, reference.batch_size, reference.sizes

    training = training_data(options, samples, eval_samples, reference.outputs[0], model, batch)
    neurons = None
    if training is not None:
        require_training()
        if wants_vib(options, training, canonical.weights, progress):
            with steps.timed("neuron elimination"):
                model, neurons = eliminate_neurons(model, training, options, progress)
                sizes = activation_sizes(model, samples.inputs)
    importances, layers = analyze(model, samples, options, batch, steps, sizes)
    if training is None and not samples.generated:
        layers = split_hot_rows(model, importances, layers, options, progress)
    plan = Plan(model, layers, importances, fixed_bytes(model, layers, options.keep_metadata))
    if training is not None:
        plan, result = finetune_and_fit(plan, training, options, batch, steps)
    else:
        plan, result = fit_calibrated(plan, options, samples, batch, sizes, input_bytes, steps)
    if not result.fits:
        raise unreachable(plan.model, plan.layers, options, plan.importances, result.floor_bytes)
    check_interface(canonical.interface, result.model)  # names, order, dtypes, declared shapes: a drop-in replacement
    quantized = left_quantized(plan.model, result, progress)

    check = held_out(samples, eval_samples, training)
    with steps.timed("verify", "verify in ONNX Runtime"):
        measured, reference_outputs, compressed_outputs = verify_outputs(plan.model, original, reference, check, result.data)
    report = make_report(result, plan.layers, options, input_bytes, measured, steps, canonical.defaults, neurons, quantized,
                         training, check, samples, (reference_outputs, compressed_outputs))
    check_guards(report, options)
    report.quality_floor = quality_floor(report, plan, options, check, reference_outputs, batch, input_bytes,
                                            training is not None, [v.name for v in result.model.graph.outputs], steps)
    report.seconds["total"] = steps.rounded(total=True)["total"]
    report.peak_rss_bytes = peak_rss_bytes()
    return CompressResult(result.model, result.data, report)


def compress_file(input_path: str | Path, output_path: str | Path, options: CompressOptions,
                  samples: Samples | Iterable[Batch] | None = None, progress: Progress = None,
                  overwrite: bool = False, eval_samples: Samples | Iterable[Batch] | None = None) -> CompressionReport:
    """Compress a file to a file; the input is only read, the output appears whole or not at all."""
    input_path, output_path = Path(input_path), Path(output_path)
    # Never over the input or its external data (links included); the folder exists and is writable.
    check_outputs([Output(output_path, "the output model")], input_files(input_path), force=overwrite)
    model = modelfile.load_model(input_path)
    input_bytes = modelfile.file_bytes(input_path)
    opset = model.opset_imports.get("")
    detached = model.meta.get(maps.META_KEY) or []  # ZipMap outputs, put back in the file (model/maps.py)
    reserved = maps.reserved_bytes(detached)
    result = compress_model(model, dataclasses.replace(options, target_bytes=options.target_bytes - reserved),
                            samples=samples, input_bytes=input_bytes, progress=progress, eval_samples=eval_samples)
    if detached:
        if result.data is None:  # written with external data below: no serialized model to put it back in
            raise OnnxcompError("a model over 2 GB with a ZipMap output is not supported (the ZipMap could not be "
                                "put back); nothing written")
        result = dataclasses.replace(result, data=maps.attach_maps(result.data, detached))
    if opset is not None and result.model.opset_imports.get("") != opset:  # the decode ops need opset 11
        result.report.opset = {"input": opset, "output": result.model.opset_imports.get("")}
    too_big = result.data is None or len(result.data) >= modelfile.MAX_PROTO_BYTES  # weights go to external data
    written = modelfile.save_model(result.model, output_path, overwrite=overwrite) if too_big else _write(output_path, result.data, overwrite)
    result.report.output_bytes = written
    result.report.peak_rss_bytes = peak_rss_bytes()  # this process or its largest child, writing included
    result.report.output = str(output_path)
    result.report.input = str(input_path)
    if written > options.target_bytes:  # the file decides, not the estimate
        output_path.unlink()
        raise OnnxcompError(f"internal error: written file is {written} B, over the target {options.target_bytes} B; removed it")
    return result.report


def _write(path: Path, data: bytes, overwrite: bool) -> int:
    if path.exists() and not overwrite:
        raise OnnxcompError(f"{path} exists; pass --force to overwrite it")
    modelfile.atomic_write(path, lambda handle: handle.write(data))
    return path.stat().st_size
