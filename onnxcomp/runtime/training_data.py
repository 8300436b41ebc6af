"""Checks and prepares the arrays fine-tuning consumes, with one-line errors a user can act on."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping

import numpy as np
import onnx

from onnxcomp.errors import OnnxcompError
from onnxcomp.runtime.training_graph import LossSpec

logger = logging.getLogger(__name__)

Forward = Callable[[onnx.ModelProto, Mapping[str, np.ndarray]], np.ndarray]


def feature_dtypes(model: onnx.ModelProto) -> dict[str, np.dtype]:
    """Graph input name -> numpy dtype, for the inputs that are not initializers."""
    initializers = {t.name for t in model.graph.initializer}
    return {
        value.name: onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        for value in model.graph.input
        if value.name not in initializers
    }


def check_inputs(arrays: Mapping[str, np.ndarray], dtypes: Mapping[str, np.dtype], what: str) -> dict[str, np.ndarray]:
    """All graph inputs present, finite, one sample count; cast to the graph's dtypes."""
    missing = [n for n in dtypes if n not in arrays]
    if missing:
        raise OnnxcompError(f"{what} lacks graph input(s) {', '.join(map(repr, missing))}")
    unknown = [n for n in arrays if n not in dtypes]
    if unknown:
        raise OnnxcompError(
            f"{what} has {', '.join(map(repr, unknown))}, not a graph input (inputs: {', '.join(dtypes)})"
        )
    checked = {}
    for name, dtype in dtypes.items():
        array = np.asarray(arrays[name])
        if array.ndim == 0:
            raise OnnxcompError(f"{what}['{name}'] needs a first axis of samples")
        if np.issubdtype(array.dtype, np.inexact):
            finite = np.isfinite(array)
            if not finite.all():
                raise OnnxcompError(f"{what}['{name}'] contains {array.size - int(finite.sum())} NaN/inf value(s)")
        checked[name] = np.ascontiguousarray(array, dtype=dtype)
    counts = {name: len(a) for name, a in checked.items()}
    if len(set(counts.values())) > 1:
        raise OnnxcompError(f"{what} disagree on the number of samples: {counts}")
    if not checked or next(iter(counts.values())) == 0:
        raise OnnxcompError(f"{what} hold no samples")
    return checked


def num_classes(model: onnx.ModelProto, features: Mapping[str, np.ndarray], teacher_logits, forward: Forward) -> int:
    """Classes in the first output: from its static shape, the teacher, or one probe run."""
    output_type = model.graph.output[0].type.tensor_type
    dims = output_type.shape.dim if output_type.HasField("shape") else []
    if len(dims) == 2 and dims[1].HasField("dim_value"):
        return int(dims[1].dim_value)
    if teacher_logits is not None and np.ndim(teacher_logits) == 2:
        return int(np.shape(teacher_logits)[1])
    probe = forward(model, {k: v[:1] for k, v in features.items()})
    if probe.ndim != 2:
        raise OnnxcompError(
            f"fine-tuning needs class logits [batch, classes] as the first output; got shape {list(probe.shape)}"
        )
    return int(probe.shape[1])


def check_labels(labels, count: int, classes: int, what: str, inputs_what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != count:
        entries = labels.shape[0] if labels.ndim else 0
        raise OnnxcompError(
            f"{what} has {entries} entries (shape {labels.shape}) but {inputs_what} have {count} samples"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        floating = np.issubdtype(labels.dtype, np.floating)
        if not (floating and np.all(np.isfinite(labels)) and np.all(labels == np.round(labels))):
            raise OnnxcompError(f"{what} must be integer class indices, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= classes:
        raise OnnxcompError(
            f"{what} range over [{labels.min()}, {labels.max()}] but the model has {classes} classes: "
            f"labels must lie in [0, {classes})"
        )
    return labels.astype(np.int64)


def check_teacher(logits, count: int, classes: int, what: str) -> np.ndarray:
    logits = np.asarray(logits, np.float32)
    if logits.shape != (count, classes):
        raise OnnxcompError(f"{what} has shape {logits.shape}; expected ({count}, {classes})")
    if not np.all(np.isfinite(logits)):
        raise OnnxcompError(f"{what} contains NaN/inf values")
    return logits


def loss_and_targets(labels, teacher_logits, distill_weight: float | None, temperature: float,
                     count: int, classes: int) -> tuple[LossSpec, np.ndarray | None, np.ndarray | None]:
    """The loss mix and the per-sample targets it needs: (spec, int labels, soft targets)."""
    if labels is None and teacher_logits is None:
        raise OnnxcompError("finetune needs labels or teacher_logits (distillation works without labels)")
    if labels is not None:
        labels = check_labels(labels, count, classes, "labels", "inputs")
    if teacher_logits is None:
        return LossSpec(hard_weight=1.0, soft_weight=0.0), labels, None
    if not temperature > 0:
        raise OnnxcompError(f"temperature must be > 0, got {temperature}")
    soft_targets = softmax(check_teacher(teacher_logits, count, classes, "teacher_logits") / temperature)
    weight = 1.0 if labels is None else (0.5 if distill_weight is None else float(distill_weight))
    if not 0.0 <= weight <= 1.0:
        raise OnnxcompError(f"distill_weight must lie in [0, 1], got {distill_weight}")
    spec = LossSpec(hard_weight=1.0 - weight, soft_weight=weight, temperature=temperature)
    return spec, (labels if spec.hard_weight > 0 else None), (soft_targets if spec.soft_weight > 0 else None)


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclasses.dataclass
class Evaluation:
    """Held-out data and the class per sample that predictions are compared with."""

    features: dict[str, np.ndarray]
    reference: np.ndarray
    metric: str = "held-out accuracy"  # what matching `reference` measures, for the epoch lines


def prepare_evaluation(model: onnx.ModelProto, eval_inputs, eval_labels, eval_teacher_logits,
                       dtypes: Mapping[str, np.dtype], classes: int, forward: Forward) -> Evaluation | None:
    """Reference classes: eval labels, else the teacher's argmax, else the input model's own."""
    if eval_inputs is None:
        if eval_labels is not None or eval_teacher_logits is not None:
            raise OnnxcompError("eval_labels / eval_teacher_logits need eval_inputs")
        return None
    features = check_inputs(eval_inputs, dtypes, "eval_inputs")
    count = len(next(iter(features.values())))
    if eval_labels is not None:
        return Evaluation(features, check_labels(eval_labels, count, classes, "eval_labels", "eval_inputs"))
    if eval_teacher_logits is not None:
        reference = check_teacher(eval_teacher_logits, count, classes, "eval_teacher_logits").argmax(1)
        return Evaluation(features, reference, "held-out top-1 agreement with the original")
    logger.info("no eval labels or teacher logits: held-out metric is agreement with the input model")
    return Evaluation(features, forward(model, features).argmax(1), "held-out top-1 agreement with the input model")
