"""Quantization with error compensation (GPTQ, Frantar et al. 2023): the algorithms on matrices.

Snapping each weight to its nearest codebook entry minimises the weight's own squared error.
What matters is the layer's output error ||X W - X Q||^2 = tr((W - Q)^T H (W - Q)) with
H = X^T X over sample inputs X. GPTQ quantizes W [in, out] one input row at a time and moves
the rounding error of that row onto the rows not yet quantized, weighted by the inverse
Hessian, so correlated inputs absorb each other's errors. The codebooks stay the allocator's;
only which entry each weight takes changes, so the bytes are the same. `stacked_gptq` runs it on
many matrices at once (a depthwise convolution's groups), each entry on a scalar codebook times
its channel scale. `onnxcomp.planning.compensation` applies all this to a model's weights.

Vector codebooks (runs of `dim` entries along a row, `vector_quantize`) follow GPTVQ (van Baalen
et al. 2024), which updates the codebook along with the assignment: the k-means centres only
cover where the original vectors lie, and compensated weights drift off them (on MiniLM-L6's
layer 0 FFN output, where a few inputs carry outsized activations, GPTQ alone kept 0.69 of
plain snapping's output error). After each GPTQ pass every centre moves to the mean of the
vectors GPTQ wanted before snapping that took it, and GPTQ runs again (VECTOR_ROUNDS passes);
the best pass's centres are then refitted by least squares to minimise the output error with
the assignment fixed. On that layer this ends below 1e-4 of snapping's error.
"""

from __future__ import annotations

import hashlib
import logging
import weakref

import numpy as np

from onnxcomp.encodings.quantize import Quantization, nearest_rows

logger = logging.getLogger(__name__)

# Of the mean diagonal, added to H for a stable inverse (GPTQ uses 0.01). On MiniLM-L6's FFN
# output layers, 0.01-0.1 gave the same held-out error; the larger value trusts few samples less.
DAMPING = 0.1
ACT_ORDER = True
BLOCK = 128  # rows per lazy batch update
VECTOR_ROUNDS = 4  # GPTQ passes for a vector codebook, each moving the centres to GPTQ's targets
REFIT_ITERATIONS = 15  # conjugate-gradient steps of the final least-squares codebook refit
# vector_gptq results and inverse factors per H array (id): every build of the fit loop
# compensates again. An entry lives as long as its H (one compression run), then goes.
_VECTOR_CACHE: dict[int, dict] = {}


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
        return lambda i, row: nearest_entries(row, np.sort(codebook.ravel()))
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


def nearest_entries(values: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Each value replaced by its nearest entry of the sorted 1-D `codebook` (any shape)."""
    if codebook.size == 1:
        return np.full_like(values, codebook[0])
    bounds = (codebook[1:].astype(np.float64) + codebook[:-1]) / 2
    return codebook[np.searchsorted(bounds, values, side="left")]


def _snap_by_group(row: np.ndarray, group: np.ndarray, books: list[np.ndarray]) -> np.ndarray:
    out = np.empty_like(row)
    for g in np.unique(group):
        where = group == g
        out[where] = nearest_entries(row[where], books[g])
    return out


def inverse_factor(hessian: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """GPTQ's row order for H [in, in] and the upper Cholesky factor U of the damped H^-1 in that
    order (U^T U = H^-1); U is None where H is not positive definite (plain snapping then).
    Cached per H array (`_memo_for`): every candidate and every build reuses it."""
    memo = _memo_for(hessian)
    key = ("factor", DAMPING, ACT_ORDER)
    if key not in memo:
        memo[key] = _inverse_factor(hessian)
    return memo[key]


def _inverse_factor(hessian: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    hessian = np.array(hessian, dtype=np.float64)
    rows = hessian.shape[0]
    dead = np.diag(hessian) <= 0
    hessian[dead, dead] = 1.0
    # Rows of the busiest inputs first, while the most rows remain to absorb their error
    # (GPTQ's "act order"; helps where a few input features carry outsized activations).
    order = np.argsort(-np.diag(hessian), kind="stable") if ACT_ORDER else np.arange(rows)
    hessian = hessian[np.ix_(order, order)]
    hessian[np.diag_indices(rows)] += DAMPING * float(np.mean(np.diag(hessian)))
    try:
        upper = np.linalg.cholesky(np.linalg.inv(hessian)).T
    except np.linalg.LinAlgError:
        logger.debug("Hessian not positive definite; plain nearest-entry snapping")
        upper = None
    return order, upper


def gptq(values: np.ndarray, hessian: np.ndarray, snap, targets: np.ndarray | None = None,
         factor: tuple[np.ndarray, np.ndarray | None] | None = None) -> np.ndarray:
    """Quantize W [in, out] row by row with `snap(i, row)`, compensating through H [in, in]
    (`factor`: its `inverse_factor`, computed when None). `targets` [in, out], when given,
    receives each row as GPTQ wanted it before snapping."""
    order, upper = inverse_factor(hessian) if factor is None else factor
    work = np.array(values, dtype=np.float64)[order]
    wanted = None if targets is None else np.empty_like(work)
    permuted = _gptq_ordered(work, upper, lambda i, row: snap(order[i], row), wanted)
    quantized = np.empty_like(permuted)
    quantized[order] = permuted
    if targets is not None:
        targets[order] = wanted
    return quantized


def _gptq_ordered(work: np.ndarray, upper: np.ndarray | None, snap, targets: np.ndarray | None = None) -> np.ndarray:
    """GPTQ over the rows of `work` (float64, in the factor's order), updated in place."""
    rows = work.shape[0]
    if upper is None:
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


def stacked_gptq(stack: np.ndarray, factors: list, book: np.ndarray, spread: np.ndarray | None) -> np.ndarray:
    """GPTQ on m matrices at once, [m, in, out], each with its own H (`factors`: its
    `inverse_factor`), every entry snapped to book value x its `spread` entry (the channel scale;
    None: 1). One pass over the rows for all matrices: a depthwise convolution's hundreds of
    9-row matrices cost 9 steps, not hundreds of GPTQ runs."""
    count, rows, _ = stack.shape
    take = np.arange(count)[:, None]
    orders = np.stack([order for order, _ in factors])
    upper = np.stack([np.eye(rows) if factor is None else factor for _, factor in factors])  # identity: plain snapping
    work = np.asarray(stack, np.float64)[take, orders]
    scale = None if spread is None else np.asarray(spread, np.float32)[take, orders]
    quantized = np.empty(work.shape, np.float32)
    for first in range(0, rows, BLOCK):
        last = min(first + BLOCK, rows)
        block = work[:, first:last].copy()
        errors = np.empty_like(block)
        for j in range(last - first):
            row, at = block[:, j], first + j
            if scale is None:
                snapped = nearest_entries(row.astype(np.float32), book)
            else:
                snapped = (nearest_entries((row.astype(np.float32) / scale[:, at]).astype(np.float32), book)
                           * scale[:, at]).astype(np.float32)
            quantized[:, at] = snapped
            error = (row - snapped) / upper[:, at, at][:, None]
            block[:, j + 1:] -= upper[:, at, at + 1:last][:, :, None] * error[:, None, :]
            errors[:, j] = error
        work[:, last:] -= np.matmul(upper[:, first:last, last:].transpose(0, 2, 1), errors)
    result = np.empty_like(quantized)
    result[take, orders] = quantized
    return result


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


def group_factors(hessian: np.ndarray) -> list:
    """`inverse_factor` of each H: of H [in, in] as a list of one, of H [m, K, K] one per matrix;
    cached with the H array."""
    memo = _memo_for(hessian)
    key = ("group factors", DAMPING, ACT_ORDER)
    if key not in memo:
        memo[key] = [inverse_factor(hessian)] if hessian.ndim == 2 else [_inverse_factor(h) for h in hessian]
    return memo[key]
