"""Compression-aware fine-tuning of an ONNX graph on ONNX Runtime's on-device training API.

The ONNX model itself is trained (no conversion to another framework): `finetune` rewrites it
into a training graph (masks, codebook decodes, in-graph loss and regularizers; see
`onnxcomp.runtime.training_graph`), lets ONNX Runtime generate the gradient and AdamW graphs,
runs a plain epoch loop and reads the trained tensors back from the checkpoint state.

Needs the ``train`` extra (onnxruntime-training-cpu, which imports torch; see `training_support`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp.errors import OnnxcompError
from onnxcomp.runtime import inference, training_data, training_graph, training_loop, training_support
from onnxcomp.runtime.regularizers import (  # re-exported: the fine-tuning API in one place
    L2,
    ADMMPenalty,
    GaussianMixturePrior,
    Regularizer,
    snap_to_mixture,
)
from onnxcomp.runtime.training_loop import TrainConfig  # re-exported

__all__ = [
    "ADMMPenalty",
    "FinetuneResult",
    "GaussianMixturePrior",
    "L2",
    "Regularizer",
    "TrainConfig",
    "finetune",
    "model_forward_logits",
    "snap_to_mixture",
    "training_available",
    "training_unavailable_reason",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class FinetuneResult:
    """What fine-tuning produced.

    Attributes:
        weights: name -> final value of each trainable weight as the network uses it (mask
            applied, codebook decoded), from the restored checkpoint.
        history: per epoch: ``epoch``, ``loss`` (mean training loss), ``metric`` (held-out,
            higher is better, or None), ``lr`` (at the epoch's end), ``steps``, ``seconds``.
        best_metric: held-out metric of the returned weights (None without held-out data).
        stopped_early: patience ran out.
        diverged: a NaN/inf loss was seen; training stopped and earlier weights were kept.
        extra: learned regularizer parameters, keyed ``"<regularizer.name>.<key>"``.
        codebooks: name -> trained codebook, for weights given in ``codebooks``.
    """

    weights: dict[str, np.ndarray]
    history: list[dict]
    best_metric: float | None
    stopped_early: bool
    diverged: bool
    extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    codebooks: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def training_available() -> bool:
    """Whether the ONNX Runtime training backend can be imported."""
    return training_support.unavailable_reason() is None


def training_unavailable_reason() -> str | None:
    """Why fine-tuning cannot run here, in one line (why, and what works instead), or None."""
    return training_support.unavailable_reason()


def finetune(
    model: onnx.ModelProto,
    trainable: Sequence[str],
    inputs: Mapping[str, np.ndarray],
    labels: np.ndarray | None = None,
    *,
    teacher_logits: np.ndarray | None = None,
    distill_weight: float | None = None,
    temperature: float = 1.0,
    masks: Mapping[str, np.ndarray] | None = None,
    codebooks: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    regularizer: Regularizer | Sequence[Regularizer] | None = None,
    eval_inputs: Mapping[str, np.ndarray] | None = None,
    eval_labels: np.ndarray | None = None,
    eval_teacher_logits: np.ndarray | None = None,
    config: TrainConfig | None = None,
) -> FinetuneResult:
    """Fine-tunes the weights of an ONNX classifier under compression constraints.

    The loss is softmax cross-entropy on ``labels``; with ``teacher_logits`` (and no labels)
    it is cross-entropy against ``softmax(teacher / temperature)`` (Hinton distillation, scaled
    by ``temperature**2``), so unlabeled data suffices; with both, ``distill_weight`` (default
    0.5) mixes them. Masked weights stay exactly zero, codebook weights stay on their (trained)
    codebook, regularizer penalties join the loss. The input model is not modified.

    The held-out metric (higher is better) is accuracy on ``eval_labels``; without them, the
    agreement of predictions with ``eval_teacher_logits``, or else with the input model's own
    predictions on ``eval_inputs``.

    Args:
        model: inference model whose first output is class logits ``[batch, classes]``.
        trainable: float32 initializers to train; all others stay frozen.
        inputs: graph input name -> array, first axis = samples.
        labels: int class per sample.
        teacher_logits: ``[samples, classes]`` logits of a teacher (e.g. the original model).
        distill_weight: weight of the distillation term when labels are also given.
        temperature: distillation temperature.
        masks: name -> 0/1 array; the weight trains as ``W * mask``.
        codebooks: name -> (codebook float[K], indices int[weight shape]); the weight trains as
            ``codebook[indices]`` with the codebook trainable (if the name is in ``trainable``).
        regularizer: one or more `Regularizer` penalties (e.g. `GaussianMixturePrior`).
        eval_inputs: held-out inputs, evaluated after every epoch.
        eval_labels: held-out labels.
        eval_teacher_logits: held-out teacher logits, used when there are no ``eval_labels``.
        config: training settings.

    Returns:
        A `FinetuneResult`.

    Raises:
        OnnxcompError: bad data or arguments, or a model ONNX Runtime cannot train (e.g. an op
            without a gradient).
    """
    config = config or TrainConfig()
    _require_training()
    _check_config(config)
    trainable = list(dict.fromkeys(trainable))
    if not trainable:
        raise OnnxcompError("finetune needs at least one trainable weight")
    masks, codebooks = dict(masks or {}), dict(codebooks or {})
    regularizers = _regularizers(regularizer)
    # Prior-driven runs trade held-out accuracy for structure: keep their last epoch.
    restore_best = not regularizers if config.restore_best is None else config.restore_best
    if config.weight_decay > 0:
        regularizers.append(L2(config.weight_decay))

    dtypes = training_data.feature_dtypes(model)
    features = training_data.check_inputs(inputs, dtypes, "inputs")
    num_samples = len(next(iter(features.values())))
    if num_samples < config.batch_size:
        raise OnnxcompError(
            f"only {num_samples} training samples, fewer than one batch of {config.batch_size}; "
            "lower TrainConfig.batch_size"
        )
    forward = functools.partial(model_forward_logits, batch_size=config.eval_batch_size)
    classes = training_data.num_classes(model, features, teacher_logits, forward)
    loss, labels, soft_targets = training_data.loss_and_targets(
        labels, teacher_logits, distill_weight, temperature, num_samples, classes
    )
    evaluation = training_data.prepare_evaluation(
        model, eval_inputs, eval_labels, eval_teacher_logits, dtypes, classes, forward
    )

    graph = training_graph.build_training_graph(
        model, trainable, loss, num_classes=classes, masks=masks, codebooks=codebooks,
        regularizers=regularizers, num_samples=num_samples,
    )  # fmt: skip
    targets = {training_graph.LABELS_INPUT: labels, training_graph.SOFT_TARGETS_INPUT: soft_targets}
    arrays = [features[n] for n in graph.feature_inputs] + [targets[n] for n in graph.target_inputs]
    with tempfile.TemporaryDirectory(prefix="onnxcomp-train-") as directory:
        session = training_loop.TrainingSession(graph, directory)
        run = training_loop.train(session, graph, arrays, evaluation, classes, config, restore_best)
    return _result(run, graph, masks, codebooks, regularizers)


def _regularizers(regularizer: Regularizer | Sequence[Regularizer] | None) -> list[Regularizer]:
    if regularizer is None:
        return []
    regularizers = [regularizer] if isinstance(regularizer, Regularizer) else list(regularizer)
    wrong = [r for r in regularizers if not isinstance(r, Regularizer)]
    if wrong:
        raise OnnxcompError(f"regularizer must be Regularizer instances, got {type(wrong[0]).__name__}")
    return regularizers


def _result(run: training_loop.Run, graph: training_graph.TrainingGraph, masks, codebooks,
            regularizers: Sequence[Regularizer]) -> FinetuneResult:
    """Weights as the network uses them (masked, decoded) and the regularizers' reports."""
    weights, trained_codebooks = {}, {}
    for name, parameter in graph.weight_parameters.items():
        value = run.snapshot[parameter]
        if name in codebooks:
            trained_codebooks[name] = value
            value = value[np.asarray(codebooks[name][1])]
        if name in masks:
            value = value * np.asarray(masks[name], np.float32)
        weights[name] = value.astype(np.float32)
    extra = {}
    for index, (regularizer, keys) in enumerate(zip(regularizers, graph.regularizer_parameters, strict=True)):
        if not keys:
            continue
        prefix = regularizer.name
        if any(key.startswith(prefix + ".") for key in extra):
            prefix = f"{regularizer.name}{index}"
        reported = regularizer.report({key: run.snapshot[name] for key, name in keys.items()})
        extra.update({f"{prefix}.{key}": value for key, value in reported.items()})
    return FinetuneResult(
        weights=weights,
        history=run.history,
        best_metric=run.metric,
        stopped_early=run.stopped_early,
        diverged=run.diverged,
        extra=extra,
        codebooks=trained_codebooks,
    )


def model_forward_logits(model: onnx.ModelProto, inputs: Mapping[str, np.ndarray],
                         batch_size: int = 256) -> np.ndarray:
    """The model's first output over ``inputs``, run in batches with onnxruntime.

    The first input axis is freed first, so models exported with a fixed batch size run too.
    """
    model_ir = ir.serde.deserialize_model(model)
    training_graph.free_batch_dimension(model_ir.graph)
    model_ir.ir_version = min(model_ir.ir_version, training_graph.MAX_IR_VERSION)
    del model_ir.graph.outputs[1:]
    session = inference.session(ir.serde.serialize_model(model_ir))
    return inference.run_batches(session, dict(inputs), batch_size)[0]


def _require_training() -> None:
    reason = training_support.unavailable_reason()
    if reason is not None:
        raise OnnxcompError(reason)


def _check_config(config: TrainConfig) -> None:
    if config.epochs < 1 or config.batch_size < 1 or config.eval_batch_size < 1:
        raise OnnxcompError("TrainConfig.epochs, batch_size and eval_batch_size must be >= 1")
    if not config.lr > 0:
        raise OnnxcompError(f"TrainConfig.lr must be > 0, got {config.lr}")
    if config.lr_schedule not in ("cosine", "constant"):
        raise OnnxcompError(f"TrainConfig.lr_schedule must be 'cosine' or 'constant', got {config.lr_schedule!r}")
    if config.weight_decay < 0:
        raise OnnxcompError(f"TrainConfig.weight_decay must be >= 0, got {config.weight_decay}")
    if config.max_steps is not None and config.max_steps < 1:
        raise OnnxcompError(f"TrainConfig.max_steps must be >= 1, got {config.max_steps}")
