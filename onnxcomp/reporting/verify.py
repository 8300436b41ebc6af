"""Fidelity of a compressed model against the original, measured in ONNX Runtime."""

from __future__ import annotations

import logging
import re

import numpy as np
import onnx_ir as ir

logger = logging.getLogger(__name__)

FIDELITY_CHUNK_BYTES = 16 << 20  # float64 bytes of each output slice compared at once


def looks_like_class_scores(output: np.ndarray) -> bool:
    return output.ndim == 2 and 2 <= output.shape[1] <= 100_000 and output.dtype.kind == "f"


# Output names that say what an [N, C] output is (checked on the name's words, embeddings first).
_EMBEDDING_NAME = re.compile(r"embed|pool|hidden|feature|vector|encod|latent|represent", re.IGNORECASE)
_SCORES_NAME = re.compile(r"logit|prob|score|class|label|pred|softmax", re.IGNORECASE)
# Ops that pass values through unchanged in meaning; walked back over to find what made an output.
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "Dropout", "CastLike"}
# What ends an embedding head (pooling, normalization); a classifier ends in Gemm/MatMul/Softmax.
_EMBEDDING_OPS = {"Div", "ReduceMean", "ReduceSum", "ReduceMax", "LayerNormalization", "LpNormalization",
                  "ReduceL2", "Concat", "Tanh", "GlobalAveragePool", "GlobalMaxPool", "Normalizer"}


def class_score_outputs(model: ir.Model) -> list[bool]:
    """For each graph output, whether it holds class scores, so that top-1 agreement means something.

    An [N, D] float output may be class scores or an embedding; argmax agreement over embedding
    dimensions measures nothing. The output's name decides where it says (`*embedding*`,
    `*pooled*` vs `*logits*`, `*probs*`), else the op that made it (past reshapes and casts): a
    linear layer or softmax ends a classifier; pooling, normalization or a division (mean pooling,
    L2 normalization) ends an embedding, and a graph input or constant passed through is neither.
    Other producers count as class scores (the shape alone decides, as before).
    """
    flags = []
    for value in model.graph.outputs:
        name = value.name or ""
        if _EMBEDDING_NAME.search(name):
            flags.append(False)
            continue
        if _SCORES_NAME.search(name):
            flags.append(True)
            continue
        source, producer = value, value.producer()
        while producer is not None and producer.op_type in _PASS_THROUGH and producer.inputs and producer.inputs[0] is not None:
            source = producer.inputs[0]
            producer = source.producer()
        if producer is None:  # a graph input or a constant passed through: no scores computed
            flags.append(not (source.is_graph_input() or source.is_initializer()))
        else:
            flags.append(producer.op_type not in _EMBEDDING_OPS)
    return flags


def fidelity(original: list[np.ndarray], compressed: list[np.ndarray], class_scores: list[bool] | None = None) -> dict:
    """Compare every output: max/mean abs error, cosine similarity (per sample, averaged) and
    top-1 agreement where an output holds class scores: [N, C] floats that `class_scores` (one
    flag per output, from `class_score_outputs`) does not rule out. Outputs holding infinities
    (e.g. a model with huge weights) give NaN measures, without numpy warnings."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return _fidelity(original, compressed, class_scores)


def _fidelity(original: list[np.ndarray], compressed: list[np.ndarray], class_scores: list[bool] | None) -> dict:
    report: dict = {"outputs": {}}
    cosines, agreements = [], []
    for index, (a, b) in enumerate(zip(original, compressed)):
        if not _numeric(a):  # e.g. a string label table routed to an output: same or not
            report["outputs"][f"output_{index}"] = {"equal": bool(np.array_equal(np.asarray(a), np.asarray(b)))}
            continue
        a, b = np.asarray(a), np.asarray(b)
        entry: dict = {}
        if a.size:
            max_error, error_sum, cos = _errors(a, b)
            entry["max_abs_error"] = max_error
            entry["mean_abs_error"] = error_sum / a.size
            entry["cosine"] = float(np.mean(cos))
            cosines.append(entry["cosine"])
        scores = class_scores is None or index >= len(class_scores) or class_scores[index]
        if scores and looks_like_class_scores(a):
            entry["top1_agreement"] = float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
            agreements.append(entry["top1_agreement"])
        report["outputs"][f"output_{index}"] = entry
    report["cosine"] = float(min(cosines)) if cosines else None
    report["top1_agreement"] = float(min(agreements)) if agreements else None
    report["max_abs_error"] = max((e.get("max_abs_error", 0.0) for e in report["outputs"].values()), default=0.0)
    report["mean_abs_error"] = float(np.mean([e.get("mean_abs_error", 0.0) for e in report["outputs"].values()])) if report["outputs"] else 0.0
    return report


def _errors(a: np.ndarray, b: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Max and sum of |a - b| and each row's cosine (rows: the first axis; one row for a vector),
    in float64 over slices of rows: outputs of hundreds of samples can take hundreds of MB, and
    whole float64 copies of both and their products would take several times that. A row wider
    than a slice (the flattened outputs of feeds of different shapes are one row) goes a slice of
    columns at a time."""
    rows = len(a) if a.ndim > 1 else 1
    flat_a, flat_b = a.reshape(rows, -1), np.asarray(b).reshape(rows, -1)
    width = max(flat_a.shape[1], 1)
    if 8 * width > FIDELITY_CHUNK_BYTES:
        return _wide_errors(flat_a, flat_b)
    step = max(1, FIDELITY_CHUNK_BYTES // (8 * width))
    max_error, error_sum, cosines = 0.0, 0.0, []
    for start in range(0, rows, step):
        part_a = flat_a[start:start + step].astype(np.float64)
        part_b = flat_b[start:start + step].astype(np.float64)
        diff = np.abs(part_a - part_b)
        max_error = float(np.max([max_error, diff.max()]))  # NaN stays NaN
        error_sum += float(diff.sum())
        del diff
        norm_a, norm_b = np.linalg.norm(part_a, axis=1), np.linalg.norm(part_b, axis=1)
        cosines.append(_cosine(np.sum(part_a * part_b, axis=1), norm_a, norm_b))
    return max_error, error_sum, np.concatenate(cosines)


def _cosine(dot: np.ndarray, norm_a: np.ndarray, norm_b: np.ndarray) -> np.ndarray:
    """Cosine of rows from their dot products and norms: 1 where both rows are zero, 0 where
    only one is (a compressed output collapsed to zeros matches nothing)."""
    norms = norm_a * norm_b
    return np.where(norms > 0, dot / np.maximum(norms, 1e-300), np.where((norm_a == 0) & (norm_b == 0), 1.0, 0.0))


def _wide_errors(flat_a: np.ndarray, flat_b: np.ndarray) -> tuple[float, float, np.ndarray]:
    """`_errors` for rows wider than FIDELITY_CHUNK_BYTES of float64: dot products and squared
    norms summed over slices of columns. The PP-OCRv4 recognizer's 166 text lines of different
    widths (one 264 MB row of logits) peaked at 3.1 GB in whole-row float64 copies."""
    step = max(1, FIDELITY_CHUNK_BYTES // 8)
    max_error, error_sum, cosines = 0.0, 0.0, []
    for row_a, row_b in zip(flat_a, flat_b):
        dot = energy_a = energy_b = 0.0
        for start in range(0, row_a.size, step):
            part_a = row_a[start:start + step].astype(np.float64)
            part_b = row_b[start:start + step].astype(np.float64)
            diff = np.abs(part_a - part_b)
            max_error = float(np.max([max_error, diff.max()]))  # NaN stays NaN
            error_sum += float(diff.sum())
            del diff
            dot += float(np.dot(part_a, part_b))
            energy_a += float(np.dot(part_a, part_a))
            energy_b += float(np.dot(part_b, part_b))
        cosines.append(_cosine(np.float64(dot), np.sqrt(energy_a), np.sqrt(energy_b)))
    return max_error, error_sum, np.asarray(cosines, np.float64)


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(scores, axis=1) == labels))


def output_distortion(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """Relative squared error of all outputs (the sensitivity measure of the allocator)."""
    error = 0.0
    energy = 0.0
    for a, b in zip(reference, candidate):
        if not _numeric(a):  # non-numeric outputs (strings) carry no weights' error
            continue
        flat_a, flat_b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
        step = FIDELITY_CHUNK_BYTES // 8  # float64 copies a slice at a time
        for start in range(0, max(flat_a.size, 1), step):
            a64 = flat_a[start:start + step].astype(np.float64)
            error += float(np.sum((a64 - flat_b[start:start + step].astype(np.float64)) ** 2))
            energy += float(np.sum(a64 * a64))
    return error / max(energy, 1e-30)


def _numeric(output) -> bool:
    return np.asarray(output).dtype.kind in "biuf"
