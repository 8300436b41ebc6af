"""Fidelity of a compressed model against the original, measured in ONNX Runtime."""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Collection

import numpy as np
import onnx_ir as ir

from onnxcomp.samples.signature import normalize_dim

logger = logging.getLogger(__name__)

FIDELITY_CHUNK_BYTES = 16 << 20  # float64 bytes of each output slice compared at once
FLAT_RANGE = 1e-3  # an output whose values span less than this (relative, at least absolute) is flat (`_flat`)
NARROW = 4  # outputs with fewer values than this a sample are not compared sample by sample (see `_errors`)
MIN_LABELLED_POSITIONS = 20  # positions a sequence-of-distributions output must label to be judged by them


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
    L2 normalization) ends an embedding, so does a recurrent layer's state picked by Slice/Gather,
    and a graph input or constant passed through is neither. A last axis the model names as a
    dynamic dim (``frames``; not Paddle2ONNX's anonymous ``?``) holds no classes. Other producers count as class scores (the shape alone decides).
    """
    flags = []
    for value in model.graph.outputs:
        name = value.name or ""
        if value.shape is not None and len(value.shape) >= 2 and isinstance(normalize_dim(value.shape[-1]), str):
            # A classifier's classes are a fixed count; a dynamic last axis is frames or positions
            # (swift-f0's pitch [1, frames] in Hz, whose argmax over frames meant nothing).
            flags.append(False)
            continue
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
            flags.append(producer.op_type not in _EMBEDDING_OPS and not _recurrent_state(producer))
    return flags


def _recurrent_state(node: ir.Node) -> bool:
    """Whether `node` picks a recurrent layer's state (the last step's hidden state, through
    Slice/Gather/Squeeze; a Keras LSTM that tf2onnx exports as a Loop too): an embedding."""
    for _ in range(8):
        if node.op_type in _RECURRENT:
            return True
        if node.op_type not in _SELECTING or not node.inputs or node.inputs[0] is None or node.inputs[0].producer() is None:
            return False
        node = node.inputs[0].producer()
    return False


_RECURRENT = {"LSTM", "GRU", "RNN", "Loop", "Scan"}
_SELECTING = _PASS_THROUGH | {"Slice", "Gather", "Transpose"}


def fidelity(original: list[np.ndarray], compressed: list[np.ndarray], class_scores: list[bool] | None = None) -> dict:
    """Compare every output: max/mean abs error, cosine similarity (per sample, averaged) and
    top-1 agreement where an output holds class scores: [N, C] floats that `class_scores` (one
    flag per output, from `class_score_outputs`) does not rule out, and at the positions the
    original labels for outputs of class distributions ([N, T, C]: `_labelled_positions`,
    ``position_top1_agreement``). Outputs holding infinities
    (e.g. a model with huge weights) give NaN measures, without numpy warnings."""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return _fidelity(original, compressed, class_scores)


def _fidelity(original: list[np.ndarray], compressed: list[np.ndarray], class_scores: list[bool] | None) -> dict:
    report: dict = {"outputs": {}}
    cosines, agreements, positional = [], [], []
    for index, (a, b) in enumerate(zip(original, compressed)):
        if not _numeric(a):  # e.g. a string label table routed to an output: same or not
            report["outputs"][f"output_{index}"] = {"equal": bool(np.array_equal(np.asarray(a), np.asarray(b)))}
            continue
        a, b = np.asarray(a), np.asarray(b)
        entry: dict = {}
        unknown = ~np.isfinite(a) if a.dtype.kind in "fc" else None
        if unknown is not None and unknown.any():  # NaN/inf in the original: nothing to compare there
            entry["nonfinite_original"] = int(unknown.sum())
            a, b = np.where(unknown, 0, a), np.where(unknown, 0, b)
        if a.size:
            if a.dtype.kind == "f" and a.size > 1 and _flat(a):
                entry["flat_original"] = True  # the same value on every input: its measures say little
            max_error, error_sum, cos = _errors(a, b)
            entry["max_abs_error"] = max_error
            entry["mean_abs_error"] = error_sum / a.size
            # NaN only from the compressed model (the original's are masked): it matches nothing
            entry["cosine"] = 0.0 if np.isnan(cos).any() else float(np.mean(cos))
            cosines.append(entry["cosine"])
            spread = float(np.max(a) - np.min(a)) if a.dtype.kind in "fiu" else None
            if spread is not None and a.ndim and len(a) > 1 and not entry.get("flat_original") and spread < max_error:
                entry["swamped"] = spread  # the inputs move it less than compression does (see report)
        positions = _labelled_positions(a, b)
        if positions is not None and positions[1] >= MIN_LABELLED_POSITIONS:
            entry["position_top1_agreement"], entry["positions"] = positions
            positional.append(positions[0])
        elif positions is not None:  # the inputs barely exercise it: a CTC recogniser on noise says blank
            entry["labelled_positions"] = positions[1]
        scores = class_scores is None or index >= len(class_scores) or class_scores[index]
        if scores and looks_like_class_scores(a) and not _unit_rows(a):
            rows = np.ones(len(a), bool) if unknown is None else ~unknown.reshape(len(a), -1).any(axis=1)
            entry["top1_agreement"] = float(np.mean(np.argmax(a[rows], axis=1) == np.argmax(b[rows], axis=1))) \
                if rows.any() else float("nan")
            # how many classes the original's top-1 took: one on every input, and agreement says nothing
            entry["original_top1_classes"] = int(np.unique(np.argmax(a[rows], axis=1)).size) if rows.any() else 0
            agreements.append(entry["top1_agreement"])
        report["outputs"][f"output_{index}"] = entry
    report["cosine"] = float(min(cosines)) if cosines else None
    report["top1_agreement"] = float(min(agreements)) if agreements else None
    if positional:
        report["position_top1_agreement"] = float(min(positional))
    report["max_abs_error"] = max((e.get("max_abs_error", 0.0) for e in report["outputs"].values()), default=0.0)
    report["mean_abs_error"] = float(np.mean([e.get("mean_abs_error", 0.0) for e in report["outputs"].values()])) if report["outputs"] else 0.0
    return report


def _unit_rows(a: np.ndarray) -> bool:
    """Whether every row has L2 norm 1 and some values are negative: an L2-normalised embedding
    (TensorFlow's l2_normalize exports as Mul by Rsqrt; the Universal Sentence Encoder's 512
    values), not class scores, whatever op made it. Softmax rows are never negative."""
    if a.size == 0 or float(a.min()) >= 0:
        return False
    norms = np.linalg.norm(a.astype(np.float64), axis=1)
    return bool(np.all(np.abs(norms - 1.0) < 1e-3))


def _labelled_positions(a: np.ndarray, b: np.ndarray) -> tuple[float, int] | None:
    """(top-1 agreement, positions) at the positions the original labels, for an output of class
    distributions along its last axis at many positions ([N, T, C] after a softmax: a CTC text
    recogniser's characters, a tagger's per-token labels, a segmentation's pixels); None for
    other outputs; under MIN_LABELLED_POSITIONS such positions the agreement says little.

    A labelled position is one whose top-1 class is not the output's most frequent one (the CTC
    blank, the "outside" tag, the background). The cosine of such outputs is dominated by that
    class: the PP-OCRv3 English recogniser at 1/7 of its bytes kept cosine 0.98 on generated
    images while 1 of the 33 positions that held a character kept it (4 of 5 real text lines
    misread); at 1/4, 33 of 33 (every line read as before)."""
    if a.ndim < 3 or a.dtype.kind != "f" or a.shape[-1] < 2 or a.shape != np.shape(b) or not _distribution(a, -1):
        return None
    top_a, top_b = np.argmax(a, axis=-1), np.argmax(np.asarray(b), axis=-1)
    classes, counts = np.unique(top_a, return_counts=True)
    labelled = top_a != classes[np.argmax(counts)]
    count = int(labelled.sum())
    return (float(np.mean(top_a[labelled] == top_b[labelled])) if count else 1.0), count


def _flat(a: np.ndarray) -> bool:
    """Whether an output barely varies across its values: its range under FLAT_RANGE of its
    magnitude (at least 1). PP-OCRv5's text detector gives a probability map of ~1e-5 everywhere
    on generated images; any compressed model that also gives ~0 has cosine ~1 there."""
    low, high = float(np.min(a)), float(np.max(a))
    return high - low <= FLAT_RANGE * max(1.0, abs(low), abs(high))


def _errors(a: np.ndarray, b: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Max and sum of |a - b| and each row's cosine (rows: the first axis; one row for a vector),
    in float64 over slices of rows: outputs of hundreds of samples can take hundreds of MB, and
    whole float64 copies of both and their products would take several times that. A row wider
    than a slice (the flattened outputs of feeds of different shapes are one row) goes a slice of
    columns at a time.

    Narrow outputs ([N, ...] with fewer than `NARROW` values a sample: a score, a probability, a
    pair of logits) are compared otherwise: a row of one value has cosine 1 with any value of its sign,
    and a whole output shrunk or shifted to a constant keeps cosine 1 with a constant original.
    Values all within [0, 1] are probabilities: each p is the distribution (p, 1 - p), compared
    by cosine (a speech probability of 0.002 against 0.003: 1.0; a turn-end probability of 0.9
    against 0.45: 0.78); others are compared whole, scale included (`_scale_aware_cosine`)."""
    rows = len(a) if a.ndim > 1 else 1
    if a.ndim > 1 and a.size < NARROW * rows:  # [N, 1..3]: one value or a few a sample
        flat_a, flat_b = a.reshape(-1).astype(np.float64), np.asarray(b).reshape(-1).astype(np.float64)
        diff = np.abs(flat_a - flat_b)
        if flat_a.min() >= 0 and flat_a.max() <= 1:
            dot = flat_a * flat_b + (1 - flat_a) * (1 - flat_b)
            norms = np.hypot(flat_a, 1 - flat_a) * np.hypot(flat_b, 1 - flat_b)
            return float(np.max(diff)), float(diff.sum()), np.where(norms > 0, dot / np.maximum(norms, 1e-300), 0.0)
        return float(np.max(diff)), float(diff.sum()), _scale_aware_cosine(flat_a, flat_b)
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


def _scale_aware_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """1 - |a - b|^2 / (2 |a| |b|): the cosine of a and b less (|a| - |b|)^2 / (2 |a| |b|), so
    that a changed scale counts as an error (0.9 everywhere against 0.4 everywhere: 0.65, not 1);
    equal to the cosine when the norms agree, and no lower than -1 (opposite signs, very different
    scales). 1 when both are zero, 0 when only one is, 0 where the compressed output has NaN (it
    matches nothing, as in `_cosine`)."""
    norm_a, norm_b = np.linalg.norm(a), np.linalg.norm(b)
    if norm_a == 0 or norm_b == 0:
        return np.asarray([1.0 if norm_a == norm_b else 0.0])
    value = 1.0 - float(np.sum((a - b) ** 2)) / (2 * norm_a * norm_b)
    return np.asarray([max(-1.0, value) if np.isfinite(value) else 0.0])


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


# Outputs, or the channels of one output, that fall into two groups of different scale have their
# squared errors weighted by inverse variances. A detector's [N, 4 + classes, anchors] output holds
# box coordinates in pixels beside class scores below 1, and unweighted, any error in the scores
# drowns under the boxes' energy: the allocator pruned the class branch of a YOLOv8 head to 95%
# zeros and the compressed model detected nothing (nudenet at 1/8 with 13 calibration images;
# weighted, both faces at IoU 0.93 and 0.92). PicoDet's layout detector returns the scores
# (standard deviation 0.001-0.06) and the box logits (1.3-2.3) as separate outputs: the same
# across outputs. Two groups: sorted by standard deviation, the live channels (slices along one
# axis of at most MAX_CHANNELS entries past the first) or outputs have a gap of SCALE_GAP or more
# between neighbours; a channel whose standard deviation is at most DEAD_CHANNEL of the largest is
# not live (a class the samples never show) and belongs to the small group at that floor.
# In the small group (scores) each channel counts by its own variance: a class the samples rarely
# show must not jump (a false detection); with one weight for all classes, nudenet at 1/8, 1/9
# and 1/10 found 4, 3 and 2 boxes where the original finds one. The large group (box coordinates,
# one unit) shares its mean variance: weighted channel by channel, ddddocr's YOLOX detector lost a
# box at 1/4 (57/58) and every box at 1/8 (0/58; 18/58 with the shared weight). A softmax's classes are
# one quantity however rare some are (magika's 214 file types on generated bytes: a gap of 61
# between neighbours) and are weighed as before, and so are channels spread evenly over scales (a
# recurrent state's units), which have no such gap: weighting every unit by its own variance made
# the 32 constant units of silero-vad's LSTM state outweigh the others, and its speech frames at
# 1/8 fell from 1150 to 467 of 1161. An output carried into the next call (a recurrent state: same
# shape as an input) keeps its weight among the outputs: the one-call measurement misses how its
# errors compound, and weighting silero-vad's speech probability against its state lost frames on
# real audio.
SCALE_GAP = 10.0
DEAD_CHANNEL = 1e-6
MAX_CHANNELS = 4096


@dataclasses.dataclass(frozen=True)
class OutputWeights:
    """How `output_distortion` weighs one output's squared errors: `scale` times, per slice along
    `axis`, `channels` (None: the whole output alike)."""

    scale: float = 1.0
    axis: int | None = None
    channels: np.ndarray | None = None


def output_weights(reference: list[np.ndarray], carried: Collection[int] = ()) -> list[OutputWeights]:
    """Per output, the weights of its squared errors in `output_distortion`.

    Within an output, the axis is the one (not a softmax's) whose live channels' standard
    deviations have the widest gap between sorted neighbours, if SCALE_GAP or more; across
    outputs (all but the `carried` ones, recurrent states), the outputs' own standard deviations
    with such a gap. A member of the small-scale group is weighted by the inverse of its own
    variance, one of the large-scale group by the inverse of the group's mean variance, so that an
    error counts relative to how much it varies (a box coordinate's offset by its anchor position
    is no precision), scaled so that the weighted energy equals the plain energy: within an
    output, its balance with the other outputs stays; across them, with the carried ones."""
    weights = [_within(np.asarray(output)) if _numeric(output) else OutputWeights() for output in reference]
    judged = [i for i, output in enumerate(reference)
              if i not in carried and _numeric(output) and np.asarray(output).size > 1]
    if len(judged) >= 2:
        moments = [_slice_moments(np.asarray(reference[i]).reshape(1, -1), 0) for i in judged]
        sizes = np.array([np.asarray(reference[i]).size for i in judged], np.float64)
        sums = np.array([m[0][0] for m in moments])
        energies = np.array([m[1][0] for m in moments])
        scales = _group_scales(np.maximum(energies / sizes - (sums / sizes) ** 2, 0.0), energies)
        if scales is not None:
            for index, scale in zip(judged, scales):
                weights[index] = dataclasses.replace(weights[index], scale=float(scale))
    return weights


def _within(array: np.ndarray) -> OutputWeights:
    """One output's channel weights (see `output_weights`), or plain weights."""
    best = None
    if array.ndim >= 2:
        for axis in range(1, array.ndim):
            if not 2 <= array.shape[axis] <= MAX_CHANNELS:
                continue
            if _distribution(array, axis):
                continue
            sums, energies = _slice_moments(array, axis)
            count = array.size // array.shape[axis]
            variances = np.maximum(energies / count - (sums / count) ** 2, 0.0)
            gap = _widest_gap(variances)
            if gap is not None and (best is None or gap[0] > best[0]):
                best = (gap[0], axis, variances, energies)
    if best is None:
        return OutputWeights()
    _, axis, variances, energies = best
    return OutputWeights(axis=axis, channels=_group_scales(variances, energies))


def _distribution(array: np.ndarray, axis: int) -> bool:
    """Whether `array` holds probabilities that sum to 1 along `axis` (a softmax): its channels
    are one quantity, the probability of each class, however rare some classes are."""
    if array.dtype.kind != "f" or array.min() < -1e-6 or array.max() > 1 + 1e-6:
        return False
    return bool(np.all(np.abs(np.sum(array, axis=axis, dtype=np.float64) - 1.0) < 1e-3))


def _widest_gap(variances: np.ndarray) -> tuple[float, float] | None:
    """(gap, the small group's largest variance) for the widest gap of SCALE_GAP or more in
    standard deviation between sorted live variances, or None."""
    live = np.sort(variances[variances > DEAD_CHANNEL ** 2 * variances.max()])
    if live.size < 2:
        return None
    gaps = np.sqrt(live[1:] / live[:-1])
    split = int(np.argmax(gaps))
    return (float(gaps[split]), float(live[split])) if gaps[split] >= SCALE_GAP else None


def _group_scales(variances: np.ndarray, energies: np.ndarray) -> np.ndarray | None:
    """Per member, the inverse of its variance in the small-scale group (floored at DEAD_CHANNEL
    of the largest standard deviation) and of the group's mean variance in the large-scale one,
    scaled to keep the members' total energy; None where the live members do not split into two
    scales."""
    gap = _widest_gap(variances)
    if gap is None:
        return None
    small = variances <= gap[1]
    scales = np.where(small, 1.0 / np.maximum(variances, DEAD_CHANNEL ** 2 * variances.max()),
                      1.0 / variances[~small].mean())
    return scales * (energies.sum() / float(np.sum(scales * energies)))


def _slice_moments(array: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Sum and sum of squares of each slice of `array` along `axis`, in float64 a part at a time."""
    moved = np.moveaxis(array, axis, 0)
    sums = np.zeros(moved.shape[0], np.float64)
    energies = np.zeros(moved.shape[0], np.float64)
    step = FIDELITY_CHUNK_BYTES // 8
    for index, part in enumerate(moved):
        flat = part.reshape(-1)
        for start in range(0, flat.size, step):
            chunk = flat[start:start + step].astype(np.float64)
            sums[index] += float(chunk.sum())
            energies[index] += float(np.dot(chunk, chunk))
    return sums, energies


def output_distortion(reference: list[np.ndarray], candidate: list[np.ndarray],
                      weights: list[OutputWeights] | None = None) -> float:
    """Relative squared error of all outputs (the sensitivity measure of the allocator).

    `weights` (from `output_weights(reference)`) weighs each output's squared errors, per slice
    along an axis where it says; None: every element alike."""
    error = 0.0
    energy = 0.0
    for index, (a, b) in enumerate(zip(reference, candidate)):
        if not _numeric(a):  # non-numeric outputs (strings) carry no weights' error
            continue
        weighting = weights[index] if weights is not None and index < len(weights) else OutputWeights()
        if weighting.channels is None:
            slices = [(weighting.scale, np.asarray(a), np.asarray(b))]
        else:
            slices = zip(weighting.scale * weighting.channels, np.moveaxis(np.asarray(a), weighting.axis, 0),
                         np.moveaxis(np.asarray(b), weighting.axis, 0))
        for weight, part_a, part_b in slices:
            flat_a, flat_b = part_a.reshape(-1), part_b.reshape(-1)
            step = FIDELITY_CHUNK_BYTES // 8  # float64 copies a slice at a time
            for start in range(0, max(flat_a.size, 1), step):
                a64 = flat_a[start:start + step].astype(np.float64)
                error += float(weight) * float(np.sum((a64 - flat_b[start:start + step].astype(np.float64)) ** 2))
                energy += float(weight) * float(np.sum(a64 * a64))
    return error / max(energy, 1e-30)


def _numeric(output) -> bool:
    return np.asarray(output).dtype.kind in "biuf"
