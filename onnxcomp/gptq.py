"""Quantization with error compensation from calibration inputs (GPTQ, Frantar et al. 2023).

Snapping each weight to its nearest codebook entry minimises the weight's own squared error.
What matters is the layer's output error ||X W - X Q||^2 = tr((W - Q)^T H (W - Q)) with
H = X^T X over sample inputs X. GPTQ quantizes W [in, out] one input row at a time and moves
the rounding error of that row onto the rows not yet quantized, weighted by the inverse
Hessian, so correlated inputs absorb each other's errors. The codebooks stay the allocator's
(single or grouped lookup); only which entry each weight takes changes, so the bytes are the
same. Applied to MatMul weights [in, out] (and Gemm with transB=0) that are neither pruned nor
shared, and only with real samples (generated inputs give a meaningless H). Vector codebooks
are left to plain snapping: their centres cover only where the original pairs lie, and the
compensated weights drift off them (on MiniLM-L6 layer 0 the error snowballed). A weight
whose compensated error on H is not below plain snapping's keeps plain snapping.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp.data import batch, sample_count
from onnxcomp.io import to_proto
from onnxcomp.quantize import Quantization, nearest_rows
from onnxcomp.runtime.inference import session

logger = logging.getLogger(__name__)

# Of the mean diagonal, added to H for a stable inverse (GPTQ uses 0.01). On MiniLM-L6's FFN
# output layers, 0.01-0.1 gave the same held-out error; the larger value trusts few samples less.
DAMPING = 0.1
SAMPLES = 1024  # calibration samples that build H
ACT_ORDER = True
BLOCK = 128  # rows per lazy batch update


def _compensable(node: ir.Node, weight: ir.Value) -> bool:
    index = next(i for i, v in enumerate(node.inputs) if v is weight)
    shape = weight.const_value.shape if weight.const_value is not None else None
    if shape is None or len(shape) != 2:
        return False
    if node.op_type == "MatMul":
        return index == 1
    if node.op_type == "Gemm":
        attrs = {k: a.value for k, a in node.attributes.items()}
        return index == 1 and not attrs.get("transA", 0) and not attrs.get("transB", 0)
    return False


def input_hessians(model: ir.Model, weights, inputs: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Per compensable weight, H = X^T X / n over its input rows X (float64 [in, in]).

    Positions where a same-shaped `*mask*` input is 0 (padding) are left out: they do not reach
    the output that matters.
    """
    activation_of: dict[str, str] = {}
    for weight in weights:
        uses = list(weight.value.uses())
        if weight.role == "bias" or len(uses) != 1 or not _compensable(uses[0][0], weight.value):
            continue
        activation = uses[0][0].inputs[0]
        if activation is not None and activation.name:
            activation_of[weight.name] = activation.name
    if not activation_of:
        return {}
    proto = to_proto(model)
    graph_inputs = {i.name for i in proto.graph.input}
    existing = {o.name for o in proto.graph.output}
    names = sorted(set(activation_of.values()))
    for name in names:
        if name not in existing and name not in graph_inputs:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    fetched = [name for name in names if name not in graph_inputs]
    masks = [name for name in sorted(graph_inputs) if "mask" in name.lower() and name in inputs]
    sess = session(proto)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for start in range(0, sample_count(inputs), max(batch_size, 1)):
        feed = batch(inputs, start, start + max(batch_size, 1))
        results = dict(zip(fetched, sess.run(fetched, feed))) if fetched else {}
        results.update({name: feed[name] for name in names if name in feed})
        for name in names:
            array = np.asarray(results[name], np.float32)
            mask = next((feed[m] for m in masks if array.ndim >= 2 and feed[m].shape == array.shape[:-1]), None)
            rows = array[np.asarray(mask) != 0] if mask is not None else array.reshape(-1, array.shape[-1])
            sums[name] = sums.get(name, 0) + (rows.T @ rows).astype(np.float64)
            counts[name] = counts.get(name, 0) + rows.shape[0]
    return {weight: sums[name] / max(counts[name], 1) for weight, name in activation_of.items()}


def _row_snapper(quant: Quantization, shape: tuple[int, int]):
    """f(i, row) -> the row snapped to the codebook(s) its entries use in this Quantization."""
    rows, columns = shape
    codebook = np.asarray(quant.codebook, np.float32)
    if quant.vector_dim > 1:
        dim = quant.vector_dim
        if columns % dim:
            return None
        return lambda i, row: codebook[nearest_rows(row.reshape(-1, dim), codebook)].reshape(-1)
    if quant.groups <= 1:
        return lambda i, row: _snap(row, np.sort(codebook.ravel()))
    groups = quant.groups
    books = [np.sort(book) for book in codebook.reshape(groups, -1)]
    if quant.group_axis == 0:
        width = rows * columns // groups

        def snap(i, row):
            group = (i * columns + np.arange(columns)) // width
            return _snap_by_group(row, group, books)
        return snap
    if columns % groups:
        return None
    column_group = np.arange(columns) // (columns // groups)
    return lambda i, row: _snap_by_group(row, column_group, books)


def _snap(values: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    if codebook.size == 1:
        return np.full_like(values, codebook[0])
    bounds = (codebook[1:].astype(np.float64) + codebook[:-1]) / 2
    return codebook[np.searchsorted(bounds, values, side="left")]


def _snap_by_group(row: np.ndarray, group: np.ndarray, books: list[np.ndarray]) -> np.ndarray:
    out = np.empty_like(row)
    for g in np.unique(group):
        where = group == g
        out[where] = _snap(row[where], books[g])
    return out


def gptq(values: np.ndarray, hessian: np.ndarray, snap) -> np.ndarray:
    """Quantize W [in, out] row by row with `snap(i, row)`, compensating through H [in, in]."""
    work = np.array(values, dtype=np.float64)
    rows = work.shape[0]
    hessian = np.array(hessian, dtype=np.float64)
    dead = np.diag(hessian) <= 0
    hessian[dead, dead] = 1.0
    if ACT_ORDER:
        # Rows of the busiest inputs first, while the most rows remain to absorb their error
        # (GPTQ's "act order"; helps where a few input features carry outsized activations).
        order = np.argsort(-np.diag(hessian), kind="stable")
        permuted = gptq_ordered(work[order], hessian[np.ix_(order, order)], lambda i, row: snap(order[i], row))
        quantized = np.empty_like(permuted)
        quantized[order] = permuted
        return quantized
    return gptq_ordered(work, hessian, snap)


def gptq_ordered(work: np.ndarray, hessian: np.ndarray, snap) -> np.ndarray:
    """GPTQ in the given row order (float64 work copy and H with dead inputs already fixed)."""
    rows = work.shape[0]
    hessian[np.diag_indices(rows)] += DAMPING * float(np.mean(np.diag(hessian)))
    try:
        upper = np.linalg.cholesky(np.linalg.inv(hessian)).T  # U^T U = H^-1, upper triangular
    except np.linalg.LinAlgError:
        logger.debug("Hessian not positive definite; plain nearest-entry snapping")
        return np.stack([snap(i, work[i].astype(np.float32)) for i in range(rows)])
    quantized = np.empty_like(work, dtype=np.float32)
    for first in range(0, rows, BLOCK):
        last = min(first + BLOCK, rows)
        block = work[first:last].copy()
        errors = np.empty_like(block)
        local = upper[first:last, first:last]
        for j in range(last - first):
            row = block[j]
            snapped = snap(first + j, row.astype(np.float32))
            quantized[first + j] = snapped
            error = (row - snapped) / local[j, j]
            block[j + 1:] -= np.outer(local[j, j + 1:], error)
            errors[j] = error
        work[last:] -= upper[first:last, last:].T @ errors
    return quantized


def output_error(values: np.ndarray, quantized: np.ndarray, hessian: np.ndarray) -> float:
    """tr((W - Q)^T H (W - Q)): the summed squared output error per sample row."""
    difference = (np.asarray(values, np.float64) - quantized)
    return float(np.sum(difference * (hessian @ difference)))


def compensate(model: ir.Model, choices: dict, hessians: dict[str, np.ndarray]) -> int:
    """Replace, in place, each compensable weight by its GPTQ-quantized values (exact codebook
    entries, so clustering keeps them). Returns how many weights were replaced."""
    from onnxcomp.weights import find_weights

    done = 0
    for weight in find_weights(model):
        choice = choices.get(weight.name)
        hessian = hessians.get(weight.name)
        if choice is None or choice.quant is None or hessian is None or weight.value.const_value is None:
            continue
        if choice.quant.nonzeros < weight.size or len(weight.shape) != 2 or hessian.shape[0] != weight.shape[0]:
            continue  # pruned weights keep plain snapping (their masks come from the original values)
        snap = _row_snapper(choice.quant, weight.shape)
        if snap is None or choice.quant.vector_dim > 1:
            continue
        values = weight.numpy().astype(np.float32)
        quantized = gptq(values, hessian, snap)
        plain = np.stack([snap(i, values[i]) for i in range(values.shape[0])])
        if output_error(values, quantized, hessian) >= output_error(values, plain, hessian):
            logger.debug("%s: compensation did not lower the error on the samples; plain snapping", weight.name)
            continue
        weight.value.const_value = ir.tensor(quantized, name=weight.name)
        done += 1
    return done


def discount_compensated(layers, values: dict[str, np.ndarray], hessians: dict[str, np.ndarray]) -> list:
    """Tell the allocator what compensation buys: per compensable layer, measure GPTQ's output
    error against plain snapping at one probe candidate (the one nearest 1/8 of the dense bytes)
    and scale the distortion of every candidate it applies to (unpruned, scalar codebooks) by
    that ratio. Without this the plan would spend bytes as if every weight were snapped."""
    import dataclasses

    from onnxcomp.allocate import pareto

    for layer in layers:
        hessian = hessians.get(layer.name)
        weight = values.get(layer.name)
        if hessian is None or weight is None or weight.ndim != 2 or hessian.shape[0] != weight.shape[0]:
            continue
        applies = [c for c in layer.candidates if c.quant is not None and c.quant.vector_dim == 1
                   and c.quant.nonzeros >= weight.size and _row_snapper(c.quant, weight.shape) is not None]
        if not applies:
            continue
        probe = min(applies, key=lambda c: abs(c.bytes - layer.dense.bytes / 8))
        snap = _row_snapper(probe.quant, weight.shape)
        plain = output_error(weight, np.stack([snap(i, weight[i]) for i in range(weight.shape[0])]), hessian)
        if plain <= 0:
            continue
        ratio = min(1.0, max(output_error(weight, gptq(weight, hessian, snap), hessian) / plain, 0.05))
        logger.debug("%s: compensation keeps %.2f of the snapping error", layer.name, ratio)
        scaled = {id(c) for c in applies}
        layer.candidates = pareto([dataclasses.replace(c, distortion=c.distortion * ratio) if id(c) in scaled else c
                                   for c in layer.candidates])
    return layers
