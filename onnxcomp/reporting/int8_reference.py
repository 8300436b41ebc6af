"""The yardstick a compressed model is shown against: the same model with int8 weights.

Weight-only, per-channel, symmetric int8 (255 levels, max-abs scale per output channel), the
scheme of ONNX Runtime's and PyTorch's per-channel weight quantization: every float32 weight
matrix or kernel (rank >= 2, in a weight slot) is stored as an INT8 initializer and one float32
scale per channel, decoded by Cast -> Mul, which ONNX Runtime folds at load. Biases, vectors and
everything else stay as they are. The HTML report saves it, measures its bytes and runs it on the
same inputs as the compressed model. `rounded_model` keeps float weights rounded per channel to
more levels: `bench.zoo`'s control of how far a task's outputs move under any small change.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxcomp import modelfile
from onnxcomp.model.canonicalize import canonicalize
from onnxcomp.encodings.channel_scales import INT8_LEVELS, channel_axes, channel_distortion, channel_scales
from onnxcomp.samples.data import Samples
from onnxcomp.model.memory import activation_sizes, batch_size as budget_batch
from onnxcomp.passes.cleanup import clean_up
from onnxcomp.samples.probe import generated_samples
from onnxcomp.samples.signature import fixed_batch
from onnxcomp.reporting.verify import accuracy, class_score_outputs, fidelity
from onnxcomp.model.weights import find_weights

logger = logging.getLogger(__name__)

HALF_RANGE = (INT8_LEVELS - 1) // 2  # codes -127..127
MAX_SAMPLES = 2000  # as many as the compressor verifies on
GENERATED_SAMPLES = 256  # the compressor's generated verification inputs (same seed: the same inputs)
CONTROL_BITS = 10  # `rounded_model`'s control: 1,023 levels per channel, about 0.1% of its range


def int8_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-channel int8 codes of a weight, its scales ([C, 1, ...] view, float32) and the axis.

    Of the weight's candidate channel axes (`channel_scales.channel_axes`: output channels; for a
    matrix either axis, as MatMul's output features are its last) the one with the smaller error."""
    codes, scales, axis = _channel_codes(np.asarray(values, np.float32), HALF_RANGE)
    return codes.astype(np.int8), scales, axis


def rounded(values: np.ndarray, bits: int) -> np.ndarray:
    """`values` rounded per channel to a symmetric grid of 2**bits - 1 levels (as `int8_codes` at
    8 bits), in float32: at 10 bits or more a perturbation of about a tenth of a percent of each
    channel's range, the yardstick of how much any change moves a task's outputs."""
    values = np.asarray(values, np.float32)
    codes, scales, _ = _channel_codes(values, (1 << (bits - 1)) - 1)
    return (codes * scales).astype(np.float32)


def one_step_rounded(codes: np.ndarray) -> np.ndarray:
    """Integer codes (zero point removed) with every odd code moved one step to an even one
    (half up, half down: round half to even): 7 bits' worth of levels out of 8, about half of the
    weights changed by one quantization step."""
    return 2 * np.round(np.asarray(codes, np.float32) / 2)


def _channel_codes(values: np.ndarray, half: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer-valued float codes in [-half, half] per channel, along the candidate axis with
    the smaller per-channel error, their scales ([C, 1, ...] view) and the axis."""
    best = None
    for axis in channel_axes(values.shape):
        scales = channel_scales(values, axis, half=False)
        codes = np.round(scales.normalize(values) * half)
        error = channel_distortion(values, scales.restore(codes / half))
        if best is None or error < best[0]:
            best = (error, codes, scales, axis)
    assert best is not None, "per-channel codes need a weight of rank >= 2 with more than one channel"
    _, codes, scales, axis = best
    return codes, scales.view(values.ndim) / half, axis


def int8_model(model: ir.Model) -> ir.Model:
    """A copy of `model`, canonicalized and cleaned up as the compressor does, with per-channel int8 weights."""
    model = clean_up(canonicalize(model.clone()))
    graph = model.graph
    for weight in find_weights(model):
        tensor = weight.value.const_value
        if (weight.role == "bias" or tensor is None or tensor.dtype != ir.DataType.FLOAT
                or not channel_axes(weight.shape)):
            continue
        codes, scale, _ = int8_codes(weight.numpy())
        name = weight.name
        stored = ir.Value(name=f"{name}_int8", const_value=ir.tensor(codes, name=f"{name}_int8"))
        factor = ir.Value(name=f"{name}_scale", const_value=ir.tensor(scale.astype(np.float32), name=f"{name}_scale"))
        graph.register_initializer(stored)
        graph.register_initializer(factor)
        cast = ir.node("Cast", [stored], attributes={"to": ir.DataType.FLOAT}, name=f"{name}_cast")
        mul = ir.node("Mul", [cast.outputs[0], factor], name=f"{name}_dequantize")
        decoded = mul.outputs[0]
        decoded.name = f"{name}_decoded"
        decoded.shape, decoded.type = weight.value.shape, weight.value.type
        weight.value.replace_all_uses_with(decoded)
        graph.insert_before(graph.node(0), [cast, mul]) if len(graph) else graph.extend([cast, mul])
        graph.initializers.pop(name)
    return clean_up(model)


def rounded_model(model: ir.Model, bits: int, integers: bool = True) -> ir.Model:
    """A copy of `model`, canonicalized and cleaned up as the compressor does, with every float
    weight that `int8_model` quantizes `rounded` to `bits` per channel and stored as float32.

    Weights already stored as 8-bit integers (a quantized model's) cannot move by less than one
    step: each is `one_step_rounded` instead, the smallest change such a weight can take (left as
    it is without `integers`)."""
    model = clean_up(canonicalize(model.clone()))
    for weight in find_weights(model):
        tensor = weight.value.const_value
        if integers and weight.storage.integer and weight.itemsize == 1 and weight.role != "bias":
            weight.store(one_step_rounded(weight.numpy()))
            continue
        if (weight.role == "bias" or tensor is None or tensor.dtype != ir.DataType.FLOAT
                or not channel_axes(weight.shape)):
            continue
        weight.value.const_value = ir.tensor(rounded(weight.numpy(), bits), name=tensor.name)
    return model


def compare_with_int8(original: ir.Model, compressed_data: bytes, samples: Samples | None = None, seed: int = 0,
                      input_shapes: dict | None = None, input_values: dict | None = None,
                      original_bytes: int | None = None) -> dict:
    """Bytes and quality of the original, its per-channel int8 version and the compressed model,
    all three run in ONNX Runtime on the same inputs: `samples` (at most MAX_SAMPLES), else the
    compressor's generated inputs (same count, seed and pins). `original_bytes`: the input file's
    size (default: the model serialized).

    Returns {"samples", "generated", "models": {"original"|"int8"|"compressed": {"bytes", and
    "top1_agreement", "cosine" against the original, "accuracy" where there are labels}}}.
    Raises OnnxcompError (e.g. NoRunnableInputError) where the models cannot be run.
    """
    from onnxcomp.runtime.inference import run_batches, session

    if samples is None:
        samples = generated_samples(canonicalize(original.clone()), GENERATED_SAMPLES, seed, input_shapes, input_values)
    elif samples.count > MAX_SAMPLES:
        samples = samples.head(MAX_SAMPLES)
    batch = _batch_size(original, samples, input_shapes)
    scores = class_score_outputs(original)
    original_data = modelfile.serialized_bytes(original)
    reference = run_batches(session(original_data), samples.inputs, batch, generated=samples.generated)
    models = {"original": dict(bytes=original_bytes or len(original_data), **_quality(reference, reference, scores, samples))}
    del original_data  # one model's bytes in memory at a time
    for name, build in (("int8", lambda: modelfile.serialized_bytes(int8_model(original))), ("compressed", lambda: compressed_data)):
        data = build()
        outputs = run_batches(session(data), samples.inputs, batch)
        models[name] = dict(bytes=len(data), **_quality(reference, outputs, scores, samples))
        del data
    return {"samples": samples.count, "generated": samples.generated, "models": models}


def _quality(reference: list, outputs: list, scores: list[bool], samples: Samples) -> dict:
    measured = fidelity(reference, outputs, scores)
    quality = {"top1_agreement": measured["top1_agreement"], "cosine": measured["cosine"]}
    if samples.labels is not None:
        quality["accuracy"] = accuracy(outputs[0], samples.labels)
    return quality


def _batch_size(model: ir.Model, samples: Samples, shapes: dict | None) -> int:
    """The batch pinned or declared, else as many samples as fit the activation budget."""
    fixed = fixed_batch(model, shapes)
    return fixed if fixed is not None else budget_batch(activation_sizes(model, samples.inputs).total)
