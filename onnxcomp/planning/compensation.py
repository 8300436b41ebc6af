"""GPTQ error compensation applied to a model's weights, from calibration inputs.

Which weights: MatMul weights [in, out] (and Gemm with transB=0) and 2-D convolution kernels
(as their groups' matrices over input patches, `onnxcomp.planning.patches`) that are neither
pruned nor shared, only with real samples (generated inputs give a meaningless H). A weight
planned with per-channel scales (`onnxcomp.encodings.channel_scales`) is compensated on its
codebook times its scales, so dividing by the scales gives back codebook entries. A weight
whose compensated error on H is not below plain snapping's keeps plain snapping. A vector
choice's codebook is refitted (`gptq.vector_gptq`) and replaces the choice's (in the `choices`
passed to `compensate`), so clustering and encoding keep the exact rows written.

The allocator is told what compensation buys (`discount_compensated`): without it the plan
would spend bytes as if every weight were snapped.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp.encodings.quantize import Quantization, snap_to_vectors
from onnxcomp.model.memory import ACTIVATION_BUDGET, ActivationSizes, activation_sizes, batch_size as budget_batch
from onnxcomp.modelfile import to_proto
from onnxcomp.planning.gptq import (group_factors, nearest_entries, gptq, output_error, row_snapper, stacked_gptq,
                                    vector_gptq)
from onnxcomp.planning.patches import ROWS as PATCH_ROWS, ConvPatches, kernel, matrices
from onnxcomp.runtime.inference import session
from onnxcomp.samples.data import batches, feed_groups, sample_count

logger = logging.getLogger(__name__)

SAMPLES = 1024  # calibration samples that build H


def _compensable(node: ir.Node, weight: ir.Value) -> bool | ConvPatches:
    """True for a MatMul/Gemm weight [in, out]; a convolution's patch layout; else False."""
    index = next(i for i, v in enumerate(node.inputs) if v is weight)
    shape = weight.const_value.shape if weight.const_value is not None else None
    if shape is None or index != 1:
        return False
    if node.op_type == "Conv":
        return ConvPatches.of(node) or False
    if len(shape) != 2:
        return False
    if node.op_type == "MatMul":
        return True
    if node.op_type == "Gemm":
        attrs = {k: a.value for k, a in node.attributes.items()}
        return not attrs.get("transA", 0) and not attrs.get("transB", 0)
    return False


def input_hessians(model: ir.Model, weights, inputs: dict[str, np.ndarray], batch_size: int,
                   sizes: ActivationSizes | None = None) -> dict[str, np.ndarray]:
    """Per compensable weight, H = X^T X / n over its input rows X (float64 [in, in]); per
    2-D convolution, H [g, K, K] over its groups' sampled input patches (`onnxcomp.planning.patches`).

    Positions where a same-shaped `*mask*` input is 0 (padding) are left out: they do not reach
    the output that matters. Accumulated batch by batch; a batch holds at most `batch_size`
    samples and its activations (the fetched ones counted once more) stay within
    `memory.ACTIVATION_BUDGET` (`sizes`: per-sample bytes, inferred when None). Convolutions'
    inputs are fetched in chunks of layers that stay within that budget per sample, one run of
    the model per chunk (a text detector's 736x2976 page feeds its convolutions 0.5 GB).
    """
    activation_of: dict[str, str] = {}
    convolutions: dict[str, ConvPatches] = {}
    for weight in weights:
        uses = list(weight.value.uses())
        if weight.role == "bias" or len(uses) != 1 or uses[0][0].graph is not model.graph:  # subgraph values cannot be fetched
            continue
        layout = _compensable(uses[0][0], weight.value)
        activation = uses[0][0].inputs[0]
        if layout is False or activation is None or not activation.name:
            continue
        activation_of[weight.name] = activation.name
        if isinstance(layout, ConvPatches):
            convolutions[weight.name] = layout
    if not activation_of:
        return {}
    proto = to_proto(model)
    graph_inputs = {i.name for i in proto.graph.input}
    existing = {o.name for o in proto.graph.output}
    for name in sorted(set(activation_of.values())):
        if name not in existing and name not in graph_inputs:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))  # untyped: ONNX Runtime infers it (float16 too)
    sess = session(proto)
    matrices_of = {w: a for w, a in activation_of.items() if w not in convolutions}
    hessians = _matrix_hessians(sess, proto, matrices_of, inputs, batch_size, sizes) if matrices_of else {}
    if convolutions:
        hessians |= _conv_hessians(sess, proto, {w: (activation_of[w], c) for w, c in convolutions.items()}, inputs,
                                   batch_size)
    return hessians


def _matrix_hessians(sess, proto: onnx.ModelProto, activation_of: dict[str, str], inputs, batch_size: int,
                     sizes: ActivationSizes | None) -> dict[str, np.ndarray]:
    graph_inputs = {i.name for i in proto.graph.input}
    names = sorted(set(activation_of.values()))
    fetched = [name for name in names if name not in graph_inputs]
    masks = [name for name in sorted(graph_inputs) if "mask" in name.lower() and name in inputs]
    sizes = sizes if sizes is not None else activation_sizes(proto, inputs)
    batch_size = min(batch_size, budget_batch(sizes.total + sizes.of(names)))
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for feed in batches(inputs, batch_size):
        results = dict(zip(fetched, sess.run(fetched, feed))) if fetched else {}
        results.update({name: feed[name] for name in names if name in feed})
        for name in names:
            array = np.asarray(results[name], np.float32)
            mask = next((feed[m] for m in masks if array.ndim >= 2 and feed[m].shape == array.shape[:-1]), None)
            rows = array[np.asarray(mask) != 0] if mask is not None else array.reshape(-1, array.shape[-1])
            sums[name] = sums.get(name, 0) + (rows.T @ rows).astype(np.float64)
            counts[name] = counts.get(name, 0) + rows.shape[0]
    return {weight: sums[name] / max(counts[name], 1) for weight, name in activation_of.items()}


def _conv_hessians(sess, proto: onnx.ModelProto, convolutions: dict[str, tuple[str, ConvPatches]],
                   inputs, batch_size: int) -> dict[str, np.ndarray]:
    """H [g, K, K] per convolution from at most `patches.ROWS` sampled patches over all samples,
    each batch giving its share; per group of equal-shaped feeds, the layers' inputs are fetched
    in chunks of at most `memory.ACTIVATION_BUDGET` per sample, in batches of at most `batch_size`
    (a model declaring a batch of 1 takes no more)."""
    graph_inputs = {i.name for i in proto.graph.input}
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    total = max(sample_count(inputs), 1)
    rng = np.random.default_rng(0)
    for part in feed_groups(inputs):
        sizes = activation_sizes(proto, part)
        chunks: list[list[str]] = [[]]
        for weight in convolutions:  # graph order: a chunk's activations come from one stretch of the model
            chunk = chunks[-1] + [weight]
            if chunks[-1] and sizes.of(convolutions[w][0] for w in chunk) > ACTIVATION_BUDGET:
                chunks.append([weight])
            else:
                chunks[-1] = chunk
        for chunk in chunks:
            names = sorted({convolutions[w][0] for w in chunk})
            fetched = [name for name in names if name not in graph_inputs]
            for feed in batches(part, min(batch_size, budget_batch(sizes.total + sizes.of(names)))):
                results = dict(zip(fetched, sess.run(fetched, feed))) if fetched else {}
                results.update({name: feed[name] for name in names if name in feed})
                share = -(-PATCH_ROWS * sample_count(feed) // total)
                for weight in chunk:
                    name, layout = convolutions[weight]
                    found = layout.hessian_sums(np.asarray(results[name], np.float32), share, rng)
                    if found is not None:
                        sums[weight] = sums.get(weight, 0) + found[0]
                        counts[weight] = counts.get(weight, 0) + found[1]
                del results
    return {weight: sums[weight] / counts[weight] for weight in convolutions if counts.get(weight)}


def _scalar_book(quant: Quantization) -> np.ndarray | None:
    """The sorted scalar codebook `stacked_gptq` snaps to, or None where the weight is left to
    `row_snapper` (a MatMul weight without scales and with grouped codebooks) or to nothing (a
    convolution's or a channel-scaled weight's grouped or vector codebook)."""
    if quant.groups > 1 or quant.vector_dim > 1:
        return None
    return np.sort(np.asarray(quant.codebook, np.float32).ravel())


def _applies(quant: Quantization, values: np.ndarray, hessian: np.ndarray, scales=None) -> bool:
    if _as_matrices(values, hessian) is None:
        return False
    if hessian.ndim == 2 and scales is None:
        return row_snapper(quant, values.shape) is not None
    return _scalar_book(quant) is not None


def _as_matrices(values: np.ndarray, hessian: np.ndarray) -> np.ndarray | None:
    """The weight as the matrices [m, in, out] its H describes: a MatMul weight [in, out] with
    H [in, in] is one; a convolution kernel with H [g, K, K] is its g groups (`patches.matrices`)."""
    if hessian.ndim == 2:
        return values[None] if values.ndim == 2 and values.shape[0] == hessian.shape[0] else None
    groups = hessian.shape[0]
    if values.ndim < 3 or values.shape[0] % groups or values.size // values.shape[0] != hessian.shape[1]:
        return None
    return matrices(values, groups)


def _compensated(values: np.ndarray, hessian: np.ndarray, quant: Quantization, scales=None) -> tuple[np.ndarray, float, float]:
    """(GPTQ-quantized weight, its output error on H, plain snapping's) for a scalar codebook."""
    stack = _as_matrices(values, hessian)
    hessians = hessian[None] if hessian.ndim == 2 else hessian
    book = _scalar_book(quant)
    if book is None:  # a MatMul weight's grouped codebooks
        snap = row_snapper(quant, values.shape)
        quantized = gptq(values, hessian, snap, factor=group_factors(hessian)[0])[None]
        plain = np.stack([snap(i, values[i]) for i in range(values.shape[0])])[None]
    else:
        spread = None if scales is None else _as_matrices(
            np.broadcast_to(scales.view(values.ndim), values.shape).astype(np.float32), hessian)
        quantized = stacked_gptq(stack, group_factors(hessian), book, spread)
        plain = nearest_entries(stack, book) if spread is None else (nearest_entries((stack / spread).astype(np.float32), book) * spread).astype(np.float32)

    def error(q):
        difference = stack.astype(np.float64) - q
        return float(np.sum(difference * np.matmul(hessians, difference)))

    weight = quantized[0] if hessian.ndim == 2 else kernel(quantized, values.shape)
    return weight.astype(np.float32), error(quantized), error(plain)


def compensate(model: ir.Model, choices: dict, hessians: dict[str, np.ndarray]) -> int:
    """Replace, in place, each compensable weight by its GPTQ-quantized values (exact codebook
    entries, times the channel scales of a scaled choice, so clustering keeps them). A vector
    choice's codebook is refitted (`vector_gptq`): its entry in `choices` is replaced by one
    carrying the new codebook, which clustering and encoding then use. Returns how many weights
    were replaced."""
    from onnxcomp.model.weights import find_weights

    done = 0
    for weight in find_weights(model):
        choice = choices.get(weight.name)
        hessian = hessians.get(weight.name)
        if choice is None or choice.quant is None or hessian is None or weight.value.const_value is None:
            continue
        values = weight.numpy().astype(np.float32)
        if choice.quant.nonzeros < weight.size or _as_matrices(values, hessian) is None:
            continue  # pruned weights keep plain snapping (their masks come from the original values)
        scales = getattr(choice, "scales", None)
        if not _applies(choice.quant, values, hessian, scales):
            continue
        codebook = None
        if choice.quant.vector_dim > 1:
            quantized, codebook = vector_gptq(values, hessian, choice.quant.codebook)
            error = output_error(values, quantized, hessian)
            plain = output_error(values, snap_to_vectors(values, choice.quant.codebook), hessian)
        else:
            quantized, error, plain = _compensated(values, hessian, choice.quant, scales)
        if error >= plain:
            logger.debug("%s: compensation did not lower the error on the samples; plain snapping", weight.name)
            continue
        weight.value.const_value = ir.tensor(quantized.astype(np.float32), name=weight.name)
        if codebook is not None:
            choices[weight.name] = dataclasses.replace(choice, quant=dataclasses.replace(choice.quant, codebook=codebook))
        done += 1
    return done


def discount_compensated(layers, values: dict[str, np.ndarray], hessians: dict[str, np.ndarray]) -> list:
    """Tell the allocator what compensation buys: per compensable layer, scale the distortion of
    each unpruned scalar-codebook candidate (channel-scaled or not) by GPTQ's output error over
    plain snapping's for that candidate, and of every vector candidate by `vector_gptq`'s ratio
    at one probe (the candidate nearest 1/8 of the dense bytes). Without this the plan would
    spend bytes as if every weight were snapped. Measured per candidate: one ratio taken at 4
    bits and applied at 1 bit made the plan code convolutions in two levels (nudenet at 1/8)."""
    from onnxcomp.planning.pricing import pareto

    for layer in layers:
        hessian = hessians.get(layer.name)
        weight = values.get(layer.name)
        if hessian is None or weight is None or _as_matrices(weight, hessian) is None:
            continue
        ratios = {}
        for family in ("scalar", "scaled", "vector"):
            applies = [c for c in layer.candidates if c.quant is not None and (c.scales is not None) == (family == "scaled")
                       and (c.quant.vector_dim > 1) == (family == "vector") and c.quant.nonzeros >= weight.size
                       and _applies(c.quant, weight, hessian, c.scales)]
            if family == "vector" and applies:  # vector_gptq is costly: one probe stands for all
                applies = [min(applies, key=lambda c: abs(c.bytes - layer.dense.bytes / 8))] + applies
            for candidate in applies[:1] if family == "vector" else applies:
                if family == "vector":
                    plain = output_error(weight, snap_to_vectors(weight, candidate.quant.codebook), hessian)
                    error = output_error(weight, vector_gptq(weight, hessian, candidate.quant.codebook)[0], hessian)
                else:
                    _, error, plain = _compensated(weight, hessian, candidate.quant, candidate.scales)
                if plain <= 0:
                    continue
                ratio = min(1.0, max(error / plain, 0.05))
                logger.debug("%s: %s compensation at %s bits keeps %.2f of the snapping error", layer.name, family,
                             candidate.bits, ratio)
                ratios.update({id(c): ratio for c in (applies if family == "vector" else [candidate])})
        if ratios:
            layer.candidates = pareto([dataclasses.replace(c, distortion=c.distortion * ratios[id(c)]) if id(c) in ratios
                                       else c for c in layer.candidates])
    return layers
