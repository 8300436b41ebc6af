"""Quantization with error compensation from calibration inputs (GPTQ, Frantar et al. 2023).

Snapping each weight to its nearest codebook entry minimises the weight's own squared error.
What matters is the layer's output error ||X W - X Q||^2 = tr((W - Q)^T H (W - Q)) with
H = X^T X over sample inputs X. GPTQ quantizes W [in, out] one input row at a time and moves
the rounding error of that row onto the rows not yet quantized, weighted by the inverse
Hessian, so correlated inputs absorb each other's errors. The codebooks stay the allocator's
(single or grouped lookup); only which entry each weight takes changes, so the bytes are the
same. Applied to MatMul weights [in, out] (and Gemm with transB=0) that are neither pruned nor
shared, and only with real samples (generated inputs give a meaningless H). A weight whose
compensated error on H is not below plain snapping's keeps plain snapping.

Vector codebooks (runs of `dim` entries along a row, `vector_quantize`) follow GPTVQ (van Baalen
et al. 2024), which updates the codebook along with the assignment: the k-means centres only
cover where the original vectors lie, and compensated weights drift off them (on MiniLM-L6's
layer 0 FFN output, where a few inputs carry outsized activations, GPTQ alone kept 0.69 of
plain snapping's output error). After each GPTQ pass every centre moves to the mean of the
vectors GPTQ wanted before snapping that took it, and GPTQ runs again (VECTOR_ROUNDS passes);
the best pass's centres are then refitted by least squares to minimise the output error with
the assignment fixed. On that layer this ends below 1e-4 of snapping's error. The new codebook
replaces the choice's (in the `choices` passed to `compensate`), so clustering and encoding
keep the exact rows written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import weakref

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp.samples.data import batches
from onnxcomp.modelfile import to_proto
from onnxcomp.model.memory import ActivationSizes, activation_sizes, batch_size as budget_batch
from onnxcomp.encodings.quantize import Quantization, nearest_rows
from onnxcomp.runtime.inference import session

logger = logging.getLogger(__name__)

# Of the mean diagonal, added to H for a stable inverse (GPTQ uses 0.01). On MiniLM-L6's FFN
# output layers, 0.01-0.1 gave the same held-out error; the larger value trusts few samples less.
DAMPING = 0.1
SAMPLES = 1024  # calibration samples that build H
ACT_ORDER = True
BLOCK = 128  # rows per lazy batch update
VECTOR_ROUNDS = 4  # GPTQ passes for a vector codebook, each moving the centres to GPTQ's targets
REFIT_ITERATIONS = 15  # conjugate-gradient steps of the final least-squares codebook refit
# vector_gptq results per H array (id), by (weights, codebook, settings): every build of the fit
# loop compensates again. An entry lives as long as its H (one compression run), then goes.
_VECTOR_CACHE: dict[int, dict] = {}


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


def input_hessians(model: ir.Model, weights, inputs: dict[str, np.ndarray], batch_size: int,
                   sizes: ActivationSizes | None = None) -> dict[str, np.ndarray]:
    """Per compensable weight, H = X^T X / n over its input rows X (float64 [in, in]).

    Positions where a same-shaped `*mask*` input is 0 (padding) are left out: they do not reach
    the output that matters. Accumulated batch by batch; a batch holds at most `batch_size`
    samples and its activations (the fetched ones counted once more) stay within
    `memory.ACTIVATION_BUDGET` (`sizes`: per-sample bytes, inferred when None).
    """
    activation_of: dict[str, str] = {}
    for weight in weights:
        uses = list(weight.value.uses())
        if (weight.role == "bias" or len(uses) != 1 or uses[0][0].graph is not model.graph  # subgraph values cannot be fetched
                or not _compensable(uses[0][0], weight.value)):
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


def row_snapper(quant: Quantization, shape: tuple[int, int]):
    """f(i, row) -> the row snapped to the codebook(s) its entries use in this Quantization."""
    rows, columns = shape
    codebook = np.asarray(quant.codebook, np.float32)
    if quant.vector_dim > 1:
        dim = quant.vector_dim
        if columns % dim:
            return None
        return _vector_snapper(codebook)
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


def _vector_snapper(codebook: np.ndarray):
    codebook = np.asarray(codebook, np.float32)
    dim = codebook.shape[1]
    return lambda i, row: codebook[nearest_rows(row.reshape(-1, dim), codebook)].reshape(-1)


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


def gptq(values: np.ndarray, hessian: np.ndarray, snap, targets: np.ndarray | None = None) -> np.ndarray:
    """Quantize W [in, out] row by row with `snap(i, row)`, compensating through H [in, in].
    `targets` [in, out], when given, receives each row as GPTQ wanted it before snapping."""
    work = np.array(values, dtype=np.float64)
    rows = work.shape[0]
    hessian = np.array(hessian, dtype=np.float64)
    dead = np.diag(hessian) <= 0
    hessian[dead, dead] = 1.0
    if ACT_ORDER:
        # Rows of the busiest inputs first, while the most rows remain to absorb their error
        # (GPTQ's "act order"; helps where a few input features carry outsized activations).
        order = np.argsort(-np.diag(hessian), kind="stable")
        wanted = None if targets is None else np.empty_like(work)
        permuted = gptq_ordered(work[order], hessian[np.ix_(order, order)], lambda i, row: snap(order[i], row), wanted)
        quantized = np.empty_like(permuted)
        quantized[order] = permuted
        if targets is not None:
            targets[order] = wanted
        return quantized
    return gptq_ordered(work, hessian, snap, targets)


def gptq_ordered(work: np.ndarray, hessian: np.ndarray, snap, targets: np.ndarray | None = None) -> np.ndarray:
    """GPTQ in the given row order (float64 work copy and H with dead inputs already fixed)."""
    rows = work.shape[0]
    hessian[np.diag_indices(rows)] += DAMPING * float(np.mean(np.diag(hessian)))
    try:
        upper = np.linalg.cholesky(np.linalg.inv(hessian)).T  # U^T U = H^-1, upper triangular
    except np.linalg.LinAlgError:
        logger.debug("Hessian not positive definite; plain nearest-entry snapping")
        if targets is not None:
            targets[:] = work
        return np.stack([snap(i, work[i].astype(np.float32)) for i in range(rows)])
    quantized = np.empty_like(work, dtype=np.float32)
    for first in range(0, rows, BLOCK):
        last = min(first + BLOCK, rows)
        block = work[first:last].copy()
        errors = np.empty_like(block)
        local = upper[first:last, first:last]
        for j in range(last - first):
            row = block[j]
            if targets is not None:
                targets[first + j] = row
            snapped = snap(first + j, row.astype(np.float32))
            quantized[first + j] = snapped
            error = (row - snapped) / local[j, j]
            block[j + 1:] -= np.outer(local[j, j + 1:], error)
            errors[j] = error
        work[last:] -= upper[first:last, last:].T @ errors
    return quantized


def _per_centre(codes: np.ndarray, rows: np.ndarray, count: int) -> np.ndarray:
    """Sum of `rows` [n, dim] per code (codes [n]) -> [count, dim]."""
    return np.stack([np.bincount(codes, weights=rows[:, t], minlength=count) for t in range(rows.shape[1])], 1)


def target_means(targets: np.ndarray, codes: np.ndarray, codebook: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """Each centre moved to the mean, weighted by its row's H diagonal, of the vectors GPTQ
    wanted (`targets` [in, out], before snapping) that it took. A centre nobody took stays."""
    count, dim = codebook.shape
    weight = np.repeat(np.maximum(np.diag(hessian), 0.0), codes.shape[1])
    mass = np.bincount(codes.ravel(), weights=weight, minlength=count)
    total = _per_centre(codes.ravel(), targets.reshape(-1, dim) * weight[:, None], count)
    updated = np.array(codebook, np.float64)
    filled = mass > 0
    updated[filled] = total[filled] / mass[filled, None]
    return updated.astype(np.float32)


def refit_codebook(values: np.ndarray, codes: np.ndarray, codebook: np.ndarray, hessian: np.ndarray,
                   iterations: int | None = None) -> np.ndarray:
    """The centres C [K, dim] minimising tr((W - Q)^T H (W - Q)) for Q = C[codes] (vectors of
    `dim` entries along each row of W [in, out], codes [in, out // dim]): least squares with the
    assignment fixed. Column t of slot j of Q is A_j C[:, t] (A_j the [in, K] one-hot of
    codes[:, j]), so the normal equations are M C = sum_j A_j^T (H W)_j, M = sum_j A_j^T H A_j.
    Building M costs in^2 per slot, so this runs conjugate gradients from the given centres
    (preconditioned by M's diagonal), applying M as one [in, in] x [in, out] product each step;
    every step lowers the error. Centres no vector uses keep their value."""
    iterations = REFIT_ITERATIONS if iterations is None else iterations
    count, dim = codebook.shape
    flat = codes.ravel()
    hessian = np.asarray(hessian, np.float64)

    def normal(centres):  # M @ centres
        return _per_centre(flat, (hessian @ centres[codes].reshape(values.shape)).reshape(-1, dim), count)

    diagonal = np.bincount(flat, weights=np.repeat(np.diag(hessian), codes.shape[1]), minlength=count)
    used = diagonal > 0
    if not used.any():
        return np.asarray(codebook, np.float32)
    diagonal = np.where(used, diagonal, 1.0)[:, None]
    centres = np.array(codebook, np.float64)
    residual = _per_centre(flat, (hessian @ np.asarray(values, np.float64)).reshape(-1, dim), count) - normal(centres)
    residual[~used] = 0.0
    direction = residual / diagonal
    size = float(np.sum(residual * direction))
    for _ in range(iterations):
        product = normal(direction)
        curvature = float(np.sum(direction * product))
        if size <= 0 or curvature <= 0:
            break
        step = size / curvature
        centres += step * direction
        residual -= step * product
        preconditioned = residual / diagonal
        size, previous = float(np.sum(residual * preconditioned)), size
        direction = preconditioned + (size / previous) * direction
    return centres.astype(np.float32)


def vector_gptq(values: np.ndarray, hessian: np.ndarray, codebook: np.ndarray,
                rounds: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """GPTVQ: GPTQ with a vector codebook [K, dim] `rounds` times, moving the centres after each
    pass to where GPTQ wanted the vectors (`target_means`), so the next pass finds centres where
    the compensated weights go; then the best pass's codebook is refitted to its assignment
    (`refit_codebook`). Returns (quantized W, codebook): the rows are exact codebook rows."""
    rounds = VECTOR_ROUNDS if rounds is None else rounds
    values = np.asarray(values, np.float32)
    codebook = np.asarray(codebook, np.float32)
    memo = _memo_for(hessian)
    key = (values.shape, _digest(values), _digest(codebook), rounds, DAMPING, ACT_ORDER, REFIT_ITERATIONS)
    if key in memo:
        quantized, codebook = memo[key]
        return quantized.copy(), codebook.copy()
    rows, dim = values.shape[0], codebook.shape[1]
    best = None
    for _ in range(max(rounds, 1)):
        targets = np.empty(values.shape, np.float64)
        quantized = gptq(values, hessian, _vector_snapper(codebook), targets)
        codes = nearest_rows(quantized.reshape(-1, dim), codebook).reshape(rows, -1)
        error = output_error(values, codebook[codes].reshape(values.shape), hessian)
        if best is None or error < best[0]:
            best = (error, codes, codebook)
        codebook = target_means(targets, codes, codebook, hessian)
    error, codes, codebook = best
    refitted = refit_codebook(values, codes, codebook, hessian)
    if output_error(values, refitted[codes].reshape(values.shape), hessian) < error:
        codebook = refitted
    result = (codebook[codes].reshape(values.shape), codebook)
    memo[key] = result
    return result[0].copy(), result[1].copy()


def _memo_for(hessian) -> dict:
    """The result cache tied to this H array, dropped when the array is freed. Only ndarrays
    (which support weak references) get one; anything else gets a fresh, unshared dict."""
    if not isinstance(hessian, np.ndarray):
        return {}
    memo = _VECTOR_CACHE.get(id(hessian))
    if memo is None:
        memo = _VECTOR_CACHE[id(hessian)] = {}
        weakref.finalize(hessian, _VECTOR_CACHE.pop, id(hessian), None)
    return memo


def _digest(array: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(array).view(np.uint8).ravel(), digest_size=16).hexdigest()


def output_error(values: np.ndarray, quantized: np.ndarray, hessian: np.ndarray) -> float:
    """tr((W - Q)^T H (W - Q)): the summed squared output error per sample row."""
    difference = (np.asarray(values, np.float64) - quantized)
    return float(np.sum(difference * (hessian @ difference)))


def compensate(model: ir.Model, choices: dict, hessians: dict[str, np.ndarray]) -> int:
    """Replace, in place, each compensable weight by its GPTQ-quantized values (exact codebook
    entries, so clustering keeps them). A vector choice's codebook is refitted (`vector_gptq`):
    its entry in `choices` is replaced by one carrying the new codebook, which clustering and
    encoding then use. Returns how many weights were replaced."""
    from onnxcomp.model.weights import find_weights

    done = 0
    for weight in find_weights(model):
        choice = choices.get(weight.name)
        hessian = hessians.get(weight.name)
        if choice is None or choice.quant is None or hessian is None or weight.value.const_value is None:
            continue
        if choice.quant.nonzeros < weight.size or len(weight.shape) != 2 or hessian.shape[0] != weight.shape[0]:
            continue  # pruned weights keep plain snapping (their masks come from the original values)
        snap = row_snapper(choice.quant, weight.shape)
        if snap is None:
            continue
        values = weight.numpy().astype(np.float32)
        codebook = None
        if choice.quant.vector_dim > 1:
            quantized, codebook = vector_gptq(values, hessian, choice.quant.codebook)
        else:
            quantized = gptq(values, hessian, snap)
        plain = np.stack([snap(i, values[i]) for i in range(values.shape[0])])
        if output_error(values, quantized, hessian) >= output_error(values, plain, hessian):
            logger.debug("%s: compensation did not lower the error on the samples; plain snapping", weight.name)
            continue
        weight.value.const_value = ir.tensor(quantized, name=weight.name)
        if codebook is not None:
            choices[weight.name] = dataclasses.replace(choice, quant=dataclasses.replace(choice.quant, codebook=codebook))
        done += 1
    return done


def discount_compensated(layers, values: dict[str, np.ndarray], hessians: dict[str, np.ndarray]) -> list:
    """Tell the allocator what compensation buys: per compensable layer, measure GPTQ's output
    error against plain snapping at one probe candidate (the one nearest 1/8 of the dense bytes)
    and scale the distortion of every candidate it applies to by that ratio: once for the
    unpruned scalar codebooks (GPTQ), once for the vector codebooks (`vector_gptq`). Without
    this the plan would spend bytes as if every weight were snapped."""
    from onnxcomp.planning.pricing import pareto

    for layer in layers:
        hessian = hessians.get(layer.name)
        weight = values.get(layer.name)
        if hessian is None or weight is None or weight.ndim != 2 or hessian.shape[0] != weight.shape[0]:
            continue
        ratios = {}
        for vector in (False, True):
            applies = [c for c in layer.candidates if c.quant is not None and c.scales is None  # scaled: not compensated
                       and (c.quant.vector_dim > 1) == vector
                       and c.quant.nonzeros >= weight.size and row_snapper(c.quant, weight.shape) is not None]
            if not applies:
                continue
            probe = min(applies, key=lambda c: abs(c.bytes - layer.dense.bytes / 8))
            snap = row_snapper(probe.quant, weight.shape)
            plain = output_error(weight, np.stack([snap(i, weight[i]) for i in range(weight.shape[0])]), hessian)
            if plain <= 0:
                continue
            quantized = vector_gptq(weight, hessian, probe.quant.codebook)[0] if vector else gptq(weight, hessian, snap)
            ratio = min(1.0, max(output_error(weight, quantized, hessian) / plain, 0.05))
            logger.debug("%s: %s compensation keeps %.2f of the snapping error", layer.name,
                         "vector" if vector else "scalar", ratio)
            ratios.update({id(c): ratio for c in applies})
        if ratios:
            layer.candidates = pareto([dataclasses.replace(c, distortion=c.distortion * ratios[id(c)]) if id(c) in ratios
                                       else c for c in layer.candidates])
    return layers
