"""The whole compression flow in one place.

canonicalize -> analyze weights -> price candidates -> measure sensitivity -> allocate bytes ->
prune, cluster, encode -> clean up -> serialize and measure -> (tighten and redo if over) ->
verify in ONNX Runtime -> save atomically.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxcomp import io
from onnxcomp.allocate import Allocation, LayerOptions, allocate, layer_options
from onnxcomp.canonicalize import canonicalize
from onnxcomp.data import Samples, generate_samples
from onnxcomp.errors import FidelityError, OnnxcompError, TargetUnreachableError
from onnxcomp.passes.cleanup import clean_up
from onnxcomp.passes.cluster_weights import ClusterWeightsPass
from onnxcomp.passes.insert_dequantize_lookup import InsertDequantizeLookupPass
from onnxcomp.passes.prune_weights import PruneWeightsPass
from onnxcomp.passes.substitute_sparse_ops import SubstituteSparseOpsPass
from onnxcomp.report import layer_rows
from onnxcomp.runtime.inference import run_batches, session
from onnxcomp.sensitivity import activation_importance, measure_sensitivity
from onnxcomp.sizes import format_size
from onnxcomp.verify import accuracy, fidelity
from onnxcomp.quantize import prune_mask
from onnxcomp.weights import find_weights

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
SENSITIVITY_SAMPLES = 64
IMPORTANCE_SAMPLES = 256
VERIFY_SAMPLES = 2000


@dataclasses.dataclass
class CompressOptions:
    target_bytes: int
    keep_metadata: bool = False
    sensitivity: bool = True
    seed: int = 0
    min_fidelity: float | None = None  # cosine (or top-1 agreement for classifiers)
    max_accuracy_drop: float | None = None  # percentage points, needs labels
    force: bool = False
    epochs: int = 0  # > 0 with labelled or unlabelled --data: prune/retrain + codebook fine-tuning
    batch_size: int = 64
    lr: float = 1e-3


@dataclasses.dataclass
class CompressResult:
    model: ir.Model
    data: bytes
    report: dict


def _log(progress: Callable[[str], None] | None, message: str) -> None:
    logger.info(message)
    if progress:
        progress(message)


def compress_model(model: ir.Model, options: CompressOptions, samples: Samples | None = None,
                   input_bytes: int | None = None, progress: Callable[[str], None] | None = None) -> CompressResult:
    """Compress an in-memory model to at most `options.target_bytes` serialized bytes."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    original_proto = io.to_proto(model)
    original_data_bytes = input_bytes or original_proto.ByteSize()
    batch_size = _batch_size(model)

    _log(progress, "canonicalize")
    model = canonicalize(model)
    if model.opset_imports.get("", 0) < 11:
        raise OnnxcompError(f"model uses opset {model.opset_imports.get('', 0)}; onnxcomp needs opset 11 or newer (convert it with onnx.version_converter)")
    weights = find_weights(model)
    if not weights:
        raise OnnxcompError("the model has no compressible weights (float initializers used by Conv, Gemm, MatMul, Gather, LSTM/GRU/RNN)")
    timings["canonicalize"] = time.perf_counter() - started

    if samples is None:
        samples = generate_samples(model, count=min(VERIFY_SAMPLES, 256), seed=options.seed)
    reference_session = session(original_proto)
    reference_outputs = run_batches(reference_session, samples.inputs, batch_size)

    _log(progress, f"price {len(weights)} weights")
    tick = time.perf_counter()
    values = {w.name: w.numpy().astype(np.float32) for w in weights}
    importances = activation_importance(model, weights, samples.head(IMPORTANCE_SAMPLES).inputs, batch_size)
    layers = [layer_options(w.name, values[w.name], w.role, importances.get(w.name)) for w in weights]
    timings["price"] = time.perf_counter() - tick

    if options.sensitivity:
        tick = time.perf_counter()
        _log(progress, f"measure sensitivity on {min(samples.count, SENSITIVITY_SAMPLES)} {'generated ' if samples.generated else ''}samples")
        probe_inputs = samples.head(SENSITIVITY_SAMPLES).inputs
        sensitivities = measure_sensitivity(model, layers, values, probe_inputs, batch_size)
        for layer in layers:
            layer.sensitivity = sensitivities.get(layer.name, 1.0)
        timings["sensitivity"] = time.perf_counter() - tick

    tick = time.perf_counter()
    fixed = _fixed_bytes(model, layers, options.keep_metadata)
    floor_total = sum(layer.smallest.bytes for layer in layers)
    budget = options.target_bytes - fixed
    attempt_data = None
    floor_bytes = None
    for attempt in range(1, MAX_ATTEMPTS + 1):
        # Never plan below the smallest candidates: the floor itself is always tried once.
        at_floor = budget <= floor_total
        allocation = allocate(layers, max(budget, floor_total))
        assert allocation is not None
        compressed = _build(model, allocation, options.keep_metadata, importances)
        attempt_data = io.serialized_bytes(compressed)
        _log(progress, f"attempt {attempt}: {format_size(len(attempt_data))} (target {format_size(options.target_bytes)})")
        if len(attempt_data) <= options.target_bytes:
            break
        if at_floor:
            floor_bytes = len(attempt_data)
            attempt_data = None
            break
        budget -= len(attempt_data) - options.target_bytes + 16 * attempt
        attempt_data = None
    timings["allocate_and_encode"] = time.perf_counter() - tick
    if attempt_data is not None and options.epochs > 0:
        if samples.generated:
            raise OnnxcompError("--epochs needs training data: pass --data (labels optional; without labels the original model teaches)")
        tick = time.perf_counter()
        _log(progress, f"retrain {options.epochs} epochs on {samples.count} samples (ONNX Runtime training)")
        retrained = _retrained(model, allocation, importances, samples, reference_outputs[0], options, progress)
        if retrained is not None and len(retrained[1]) <= options.target_bytes:
            compressed, attempt_data, allocation = retrained
        else:
            _log(progress, "retrained model came out over the target; keeping the calibrated one")
        timings["retrain"] = time.perf_counter() - tick
    if attempt_data is None:
        if floor_bytes is None:
            smallest = allocate(layers, floor_total)
            floor_bytes = len(io.serialized_bytes(_build(model, smallest, options.keep_metadata, importances)))
        raise TargetUnreachableError(
            f"target {format_size(options.target_bytes)} ({options.target_bytes} B) is below the smallest size onnxcomp can reach for this model: {format_size(floor_bytes)} ({floor_bytes} B)",
            smallest_bytes=floor_bytes,
        )

    _log(progress, "verify in ONNX Runtime")
    tick = time.perf_counter()
    compressed_session = session(attempt_data)
    compressed_outputs = run_batches(compressed_session, samples.inputs, batch_size)
    report_fidelity = fidelity(reference_outputs, compressed_outputs)
    report_fidelity["samples"] = samples.count
    report_fidelity["generated_inputs"] = samples.generated
    timings["verify"] = time.perf_counter() - tick
    report = {
        "input_bytes": original_data_bytes,
        "output_bytes": len(attempt_data),
        "target_bytes": options.target_bytes,
        "ratio": original_data_bytes / len(attempt_data),
        "layers": layer_rows(layers, allocation, compressed),
        "fidelity": report_fidelity,
        "attempts": attempt,
        "seconds": {k: round(v, 3) for k, v in timings.items()},
    }
    if samples.labels is not None:
        original_accuracy = accuracy(reference_outputs[0], samples.labels)
        compressed_accuracy = accuracy(compressed_outputs[0], samples.labels)
        report["accuracy"] = {"original": original_accuracy, "compressed": compressed_accuracy,
                              "samples": samples.count}
    _check_guards(report, options)
    report["seconds"]["total"] = round(time.perf_counter() - started, 3)
    return CompressResult(compressed, attempt_data, report)


def _check_guards(report: dict, options: CompressOptions) -> None:
    if options.force:
        return
    if options.max_accuracy_drop is not None and "accuracy" in report:
        drop = 100 * (report["accuracy"]["original"] - report["accuracy"]["compressed"])
        if drop > options.max_accuracy_drop:
            raise FidelityError(f"accuracy drops by {drop:.2f} points, more than --max-accuracy-drop {options.max_accuracy_drop}; nothing written (use --force to write anyway)")
    if options.min_fidelity is not None:
        score = report["fidelity"].get("top1_agreement") or report["fidelity"].get("cosine")
        if score is not None and score < options.min_fidelity:
            raise FidelityError(f"fidelity {score:.4f} is below --min-fidelity {options.min_fidelity} by {options.min_fidelity - score:.4f}; nothing written (use --force to write anyway)")


def _batch_size(model: ir.Model) -> int:
    for value in model.graph.inputs:
        if value.shape is not None and len(value.shape) and isinstance(value.shape[0], int):
            return value.shape[0]
    return 256


def _masks(model: ir.Model, allocation: Allocation, importances: dict) -> dict[str, np.ndarray]:
    masks = {}
    for weight in find_weights(model):
        choice = allocation.choices.get(weight.name)
        if choice is not None and choice.quant is not None and choice.quant.nonzeros < weight.size:
            masks[weight.name] = prune_mask(weight.numpy(), importances.get(weight.name), choice.quant.saliency_threshold)
    return masks


def _retrained(model, allocation, importances, samples, teacher_logits, options, progress):
    from onnxcomp.retrain import RetrainOptions, retrain

    masks = _masks(model, allocation, importances)
    weights, allocation = retrain(model, allocation, masks, samples, teacher_logits,
                                  RetrainOptions(options.epochs, options.batch_size, options.lr, options.seed),
                                  log=(lambda line: _log(progress, line)))
    work = model.clone()
    for name, values in weights.items():
        work.graph.initializers[name].const_value = ir.tensor(values, name=name)
    compressed = _build(work, allocation, options.keep_metadata, importances, masks=masks)
    return compressed, io.serialized_bytes(compressed), allocation


def _build(model: ir.Model, allocation: Allocation, keep_metadata: bool, importances: dict,
           masks: dict[str, np.ndarray] | None = None) -> ir.Model:
    """Apply an allocation to a copy of the canonical model: prune, cluster, encode, clean up."""
    work = model.clone()
    if masks is None:
        masks = _masks(work, allocation, importances)
    codebooks = {name: c.quant.codebook for name, c in allocation.choices.items() if c.quant is not None}
    passes = ir.passes.Sequential(
        PruneWeightsPass(masks=masks),
        ClusterWeightsPass(bits=None, codebooks=codebooks),
        SubstituteSparseOpsPass(),
        InsertDequantizeLookupPass(),
    )
    work = passes(work).model
    return clean_up(work, keep_metadata=keep_metadata, shorten_names=not keep_metadata)


def _fixed_bytes(model: ir.Model, layers: list[LayerOptions], keep_metadata: bool) -> int:
    """Serialized bytes of everything except the compressible weights' payload."""
    cleaned = clean_up(model.clone(), keep_metadata=keep_metadata, shorten_names=not keep_metadata)
    return len(io.serialized_bytes(cleaned)) - sum(layer.dense.bytes for layer in layers)


def compress_file(input_path: str | Path, output_path: str | Path, options: CompressOptions,
                  samples: Samples | None = None, progress: Callable[[str], None] | None = None,
                  overwrite: bool = False) -> dict:
    """Compress a file to a file; the input is only read, the output appears whole or not at all."""
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.exists() and output_path.resolve() == input_path.resolve():
        raise OnnxcompError("the output path is the input file; onnxcomp never overwrites its input")
    if output_path.exists() and not overwrite:
        raise OnnxcompError(f"{output_path} exists; pass --force to overwrite it")
    folder = output_path.parent if str(output_path.parent) else Path(".")
    if not folder.is_dir():
        raise OnnxcompError(f"output folder {folder} does not exist")
    model = io.load_model(input_path)
    input_bytes = io.file_bytes(input_path)
    result = compress_model(model, options, samples=samples, input_bytes=input_bytes, progress=progress)
    written = io.save_model(result.model, output_path, overwrite=overwrite) if len(result.data) >= io.MAX_PROTO_BYTES else _write(output_path, result.data, overwrite)
    result.report["output_bytes"] = written
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
