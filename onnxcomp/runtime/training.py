"""Compression-aware fine-tuning of an ONNX graph on ONNX Runtime's on-device training API.

The ONNX model itself is trained (no conversion to another framework): `finetune` rewrites it
into a training graph (masks, codebook decodes, in-graph loss and regularizers; see
`onnxcomp.runtime.training_graph`), lets ONNX Runtime generate the gradient and AdamW graphs,
runs a plain epoch loop and reads the trained tensors back from the checkpoint state.

Needs the ``train`` extra (onnxruntime-training, which imports torch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp.errors import OnnxcompError
from onnxcomp.runtime import inference, training_graph
from onnxcomp.runtime.regularizers import (  # re-exported: the fine-tuning API in one place
    L2,
    ADMMPenalty,
    GaussianMixturePrior,
    Regularizer,
    snap_to_mixture,
)
from onnxcomp.runtime.training_graph import LossSpec, TrainingGraph

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
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainConfig:
    """How `finetune` trains.

    Attributes:
        epochs: passes over the training data.
        batch_size: samples per step; the last partial batch of an epoch is dropped.
        lr: peak learning rate of AdamW.
        seed: seeds the shuffling.
        lr_schedule: ``"cosine"`` (per-step decay to 0 over the run) or ``"constant"``.
        weight_decay: L2 penalty ``weight_decay / 2 * sum(w**2)`` on the trainable weights,
            built into the graph (Han et al.), so it never touches regularizer parameters.
        patience: stop after this many epochs without a better held-out metric.
        max_steps: stop after this many optimizer steps in total.
        log: called with one progress line per epoch.
        restore_best: return the weights of the epoch with the best held-out metric. None:
            yes, unless a regularizer is given (its effect is not in the metric, so the last
            epoch's weights are returned).
        eval_batch_size: samples per held-out evaluation run.
    """

    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    lr_schedule: str = "cosine"
    weight_decay: float = 0.0
    patience: int | None = None
    max_steps: int | None = None
    log: Callable[[str], None] | None = None
    restore_best: bool | None = None
    eval_batch_size: int = 1024


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
    try:
        import onnxruntime.training.api  # noqa: F401
    except ImportError:
        return False
    return True


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
    masks = dict(masks or {})
    codebooks = dict(codebooks or {})
    if regularizer is None:
        regularizers = []
    elif isinstance(regularizer, Regularizer):
        regularizers = [regularizer]
    else:
        regularizers = list(regularizer)
    if config.weight_decay > 0:
        regularizers.append(L2(config.weight_decay))

    feature_dtypes = _feature_dtypes(model)
    features = _check_inputs(inputs, feature_dtypes, "inputs")
    num_samples = len(next(iter(features.values())))
    if num_samples < config.batch_size:
        raise OnnxcompError(
            f"only {num_samples} training samples, fewer than one batch of {config.batch_size}; "
            "lower TrainConfig.batch_size"
        )
    if labels is None and teacher_logits is None:
        raise OnnxcompError("finetune needs labels or teacher_logits (distillation works without labels)")
    num_classes = _num_classes(model, features, teacher_logits)
    if labels is not None:
        labels = _check_labels(labels, num_samples, num_classes, "labels", "inputs")
    soft_targets = None
    if teacher_logits is not None:
        teacher_logits = _check_teacher(teacher_logits, num_samples, num_classes, "teacher_logits")
        if temperature <= 0:
            raise OnnxcompError(f"temperature must be > 0, got {temperature}")
        soft_targets = _softmax(teacher_logits / temperature)
    if labels is not None and soft_targets is not None:
        weight = 0.5 if distill_weight is None else float(distill_weight)
        if not 0.0 <= weight <= 1.0:
            raise OnnxcompError(f"distill_weight must lie in [0, 1], got {distill_weight}")
        loss = LossSpec(hard_weight=1.0 - weight, soft_weight=weight, temperature=temperature)
        if weight == 0.0:
            soft_targets = None
        if weight == 1.0:
            labels = None
    elif labels is not None:
        loss = LossSpec(hard_weight=1.0, soft_weight=0.0)
    else:
        loss = LossSpec(hard_weight=0.0, soft_weight=1.0, temperature=temperature)

    evaluation = _prepare_evaluation(
        model, eval_inputs, eval_labels, eval_teacher_logits, feature_dtypes, num_classes, config
    )
    graph = training_graph.build_training_graph(
        model, trainable, loss, masks=masks, codebooks=codebooks,
        regularizers=regularizers, num_samples=num_samples,
    )  # fmt: skip
    targets = {training_graph.LABELS_INPUT: labels, training_graph.SOFT_TARGETS_INPUT: soft_targets}
    train_arrays = [features[n] for n in graph.feature_inputs] + [targets[n] for n in graph.target_inputs]

    with tempfile.TemporaryDirectory(prefix="onnxcomp-train-") as directory:
        session = _TrainingSession(graph, directory)
        run = _train(session, graph, train_arrays, evaluation, num_classes, config, bool(regularizers))

    snapshot = run.snapshot
    weights, trained_codebooks = {}, {}
    for name, parameter in graph.weight_parameters.items():
        value = snapshot[parameter]
        if name in codebooks:
            trained_codebooks[name] = value
            value = value[np.asarray(codebooks[name][1])]
        if name in masks:
            value = value * np.asarray(masks[name], np.float32)
        weights[name] = value.astype(np.float32)
    extra = {}
    taken_prefixes = set()
    for index, (regularizer_, keys) in enumerate(zip(regularizers, graph.regularizer_parameters)):
        if not keys:
            continue
        prefix = regularizer_.name if regularizer_.name not in taken_prefixes else f"{regularizer_.name}{index}"
        taken_prefixes.add(prefix)
        reported = regularizer_.report({key: snapshot[name] for key, name in keys.items()})
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


# ---------------------------------------------------------------------------------------------
# Validation


def _require_training() -> None:
    if not training_available():
        raise OnnxcompError(
            "fine-tuning needs the ONNX Runtime training backend: pip install 'onnxcomp[train]' "
            "(data-free compression works without it)"
        )


def _check_config(config: TrainConfig) -> None:
    if config.epochs < 1 or config.batch_size < 1:
        raise OnnxcompError("TrainConfig.epochs and batch_size must be >= 1")
    if not config.lr > 0:
        raise OnnxcompError(f"TrainConfig.lr must be > 0, got {config.lr}")
    if config.lr_schedule not in ("cosine", "constant"):
        raise OnnxcompError(f"TrainConfig.lr_schedule must be 'cosine' or 'constant', got {config.lr_schedule!r}")
    if config.weight_decay < 0:
        raise OnnxcompError(f"TrainConfig.weight_decay must be >= 0, got {config.weight_decay}")


def _feature_dtypes(model: onnx.ModelProto) -> dict[str, np.dtype]:
    initializers = {t.name for t in model.graph.initializer}
    return {
        value.name: onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        for value in model.graph.input
        if value.name not in initializers
    }


def _check_inputs(arrays: Mapping[str, np.ndarray], dtypes: Mapping[str, np.dtype], what: str):
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
        if np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.complexfloating):
            finite = np.isfinite(array)
            if not finite.all():
                raise OnnxcompError(
                    f"{what}['{name}'] contains {array.size - int(finite.sum())} NaN/inf value(s)"
                )
        checked[name] = np.ascontiguousarray(array, dtype=dtype)
    counts = {name: len(a) for name, a in checked.items()}
    if len(set(counts.values())) > 1:
        raise OnnxcompError(f"{what} disagree on the number of samples: {counts}")
    return checked


def _num_classes(model: onnx.ModelProto, features, teacher_logits) -> int:
    output_type = model.graph.output[0].type.tensor_type
    dims = output_type.shape.dim if output_type.HasField("shape") else []
    if len(dims) == 2 and dims[1].HasField("dim_value"):
        return int(dims[1].dim_value)
    if teacher_logits is not None and np.ndim(teacher_logits) == 2:
        return int(np.shape(teacher_logits)[1])
    probe = model_forward_logits(model, {k: v[:1] for k, v in features.items()})
    if probe.ndim != 2:
        raise OnnxcompError(
            f"fine-tuning needs class logits [batch, classes] as the first output; got shape {list(probe.shape)}"
        )
    return int(probe.shape[1])


def _check_labels(labels, num_samples: int, num_classes: int, what: str, inputs_what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != num_samples:
        raise OnnxcompError(
            f"{what} has {labels.shape[0] if labels.ndim else 0} entries (shape {labels.shape}) "
            f"but {inputs_what} have {num_samples} samples"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating) or not np.all(np.isfinite(labels)) or np.any(
            labels != np.round(labels)
        ):
            raise OnnxcompError(f"{what} must be integer class indices, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise OnnxcompError(
            f"{what} range over [{labels.min()}, {labels.max()}] but the model has {num_classes} "
            f"classes: labels must lie in [0, {num_classes})"
        )
    return labels.astype(np.int64)


def _check_teacher(logits, num_samples: int, num_classes: int, what: str) -> np.ndarray:
    logits = np.asarray(logits, np.float32)
    if logits.shape != (num_samples, num_classes):
        raise OnnxcompError(f"{what} has shape {logits.shape}; expected ({num_samples}, {num_classes})")
    if not np.all(np.isfinite(logits)):
        raise OnnxcompError(f"{what} contains NaN/inf values")
    return logits


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclasses.dataclass
class _Evaluation:
    features: dict[str, np.ndarray]
    reference: np.ndarray  # class per sample the predictions are compared with


def _prepare_evaluation(model, eval_inputs, eval_labels, eval_teacher_logits, dtypes, num_classes, config):
    if eval_inputs is None:
        if eval_labels is not None or eval_teacher_logits is not None:
            raise OnnxcompError("eval_labels / eval_teacher_logits need eval_inputs")
        if config.patience is not None:
            logger.warning("patience is ignored without eval_inputs")
        return None
    features = _check_inputs(eval_inputs, dtypes, "eval_inputs")
    count = len(next(iter(features.values())))
    if count == 0:
        raise OnnxcompError("eval_inputs hold no samples")
    if eval_labels is not None:
        reference = _check_labels(eval_labels, count, num_classes, "eval_labels", "eval_inputs")
    elif eval_teacher_logits is not None:
        reference = _check_teacher(eval_teacher_logits, count, num_classes, "eval_teacher_logits").argmax(1)
    else:
        reference = model_forward_logits(model, features, config.eval_batch_size).argmax(1)
    return _Evaluation(features, reference)


# ---------------------------------------------------------------------------------------------
# ONNX Runtime training session


@contextlib.contextmanager
def _stderr_to(sink):
    """Sends file descriptor 2 to ``sink``: the gradient builder logs verbosely from C++."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(sink.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


_NO_GRADIENT = re.compile(r"gradient builder has not been registered: (\S+) for node (\S*)")


class _TrainingSession:
    """Training artifacts generated into ``directory`` and the ORT objects that run them."""

    def __init__(self, graph: TrainingGraph, directory: str):
        from onnxruntime.training import artifacts
        from onnxruntime.training.api import CheckpointState, Module, Optimizer

        with tempfile.TemporaryFile() as log, _stderr_to(log):
            try:
                artifacts.generate_artifacts(
                    graph.model,
                    requires_grad=graph.trainable_parameters,
                    loss=artifacts.onnxblock.blocks.PassThrough(),
                    loss_input_names=[graph.model.graph.output[0].name],
                    additional_output_names=[graph.logits],
                    optimizer=artifacts.OptimType.AdamW,
                    artifact_directory=directory,
                )
                error = None
            except Exception as exc:  # ORT raises bare RuntimeErrors from C++
                error = exc
        if error is not None:
            match = _NO_GRADIENT.search(str(error))
            if match:
                node = f" (node '{match.group(2)}')" if match.group(2) else ""
                raise OnnxcompError(
                    f"cannot fine-tune: ONNX Runtime training has no gradient for {match.group(1)}{node}; "
                    "data-free compression (without fine-tuning) still works"
                ) from error
            raise OnnxcompError(f"cannot build the training graph: {_one_line(error)}") from error

        paths = {kind: os.path.join(directory, f"{kind}_model.onnx") for kind in ("training", "eval", "optimizer")}
        for path in paths.values():
            # generate_artifacts writes onnx's newest IR version; ORT 1.19 loads <= 10.
            artifact = onnx.load(path)
            if artifact.ir_version > training_graph.MAX_IR_VERSION:
                artifact.ir_version = training_graph.MAX_IR_VERSION
                onnx.save(artifact, path)
        try:
            self.state = CheckpointState.load_checkpoint(os.path.join(directory, "checkpoint"))
            self.module = Module(paths["training"], self.state, paths["eval"], device="cpu")
            self.optimizer = Optimizer(paths["optimizer"], self.module)
        except Exception as exc:
            raise OnnxcompError(f"ONNX Runtime cannot load the training model: {_one_line(exc)}") from exc
        self.parameter_names = graph.trainable_parameters

    def read_parameters(self) -> dict[str, np.ndarray]:
        parameters = self.state.parameters
        return {name: np.array(parameters[name].data, copy=True) for name in self.parameter_names}


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    # Drop ORT's C++ source location and status code prefix.
    text = re.split(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", text)[-1]
    text = re.sub(r"^/onnxruntime_src/\S+ .*?(?:was false\.|\)) ", "", text) or text
    return text if len(text) <= 300 else text[:297] + "..."


# ---------------------------------------------------------------------------------------------
# The loop


@dataclasses.dataclass
class _Run:
    snapshot: dict[str, np.ndarray]
    metric: float | None
    history: list[dict]
    stopped_early: bool = False
    diverged: bool = False


def _train(session: _TrainingSession, graph: TrainingGraph, arrays: list[np.ndarray],
           evaluation: _Evaluation | None, num_classes: int, config: TrainConfig,
           regularized: bool) -> _Run:
    module, optimizer = session.module, session.optimizer
    num_samples = len(arrays[0])
    steps_per_epoch = num_samples // config.batch_size
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    restore_best = (not regularized) if config.restore_best is None else config.restore_best
    cosine = config.lr_schedule == "cosine"
    rng = np.random.default_rng(config.seed)

    # Fallback if the very first epoch diverges.
    run = _Run(snapshot=session.read_parameters(), metric=None, history=[])
    best_metric = None
    epochs_since_best = 0
    step = 0
    optimizer.set_learning_rate(config.lr)
    module.train()
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        order = rng.permutation(num_samples)
        loss_sum, epoch_steps = 0.0, 0
        for batch in range(steps_per_epoch):
            if step >= total_steps:
                break
            if cosine:
                optimizer.set_learning_rate(config.lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps)))
            index = order[batch * config.batch_size : (batch + 1) * config.batch_size]
            try:
                loss = float(module(*[array[index] for array in arrays])[0])
            except Exception as exc:
                raise OnnxcompError(
                    f"training step failed in ONNX Runtime: {_one_line(exc)} "
                    "(does the model fix its batch size, e.g. in a Reshape?)"
                ) from exc
            if not math.isfinite(loss):
                run.diverged = True
                break
            optimizer.step()
            module.lazy_reset_grad()
            loss_sum += loss
            epoch_steps += 1
            step += 1
        if epoch_steps == 0 and not run.diverged:
            break
        parameters = None if run.diverged else session.read_parameters()
        if parameters is not None and not all(np.all(np.isfinite(p)) for p in parameters.values()):
            run.diverged, parameters = True, None
        metric = None
        if parameters is not None and evaluation is not None:
            metric = _evaluate(module, evaluation, graph, num_classes, config.eval_batch_size)
        record = {
            "epoch": epoch,
            "loss": loss_sum / epoch_steps if epoch_steps else float("nan"),
            "metric": metric,
            "lr": optimizer.get_learning_rate(),
            "steps": step,
            "seconds": time.perf_counter() - started,
            "diverged": run.diverged,
        }
        run.history.append(record)
        if config.log is not None:
            held_out = "-" if metric is None else f"{metric:.4f}"
            config.log(
                f"epoch {epoch}/{config.epochs}: loss {record['loss']:.4f}, held-out {held_out}, "
                f"lr {record['lr']:.3g}" + (", diverged (NaN/inf loss)" if run.diverged else "")
            )
        if parameters is None:
            break
        improved = metric is not None and (best_metric is None or metric > best_metric)
        if improved:
            best_metric, epochs_since_best = metric, 0
        else:
            epochs_since_best += 1
        if improved or not restore_best or evaluation is None:
            run.snapshot, run.metric = parameters, metric
        if config.patience is not None and evaluation is not None and epochs_since_best >= config.patience:
            run.stopped_early = True
            break
        if step >= total_steps:
            break
    return run


def _evaluate(module, evaluation: _Evaluation, graph: TrainingGraph, num_classes: int, batch_size: int) -> float:
    module.eval()
    count = len(evaluation.reference)
    predictions = np.empty(count, np.int64)
    features = [evaluation.features[n] for n in graph.feature_inputs]
    for start in range(0, count, batch_size):
        chunk = [array[start : start + batch_size] for array in features]
        size = len(chunk[0])
        # The eval graph computes the loss too; placeholder targets keep it well-defined.
        dummies = {
            training_graph.LABELS_INPUT: np.zeros(size, np.int64),
            training_graph.SOFT_TARGETS_INPUT: np.full((size, num_classes), 1.0 / num_classes, np.float32),
        }
        outputs = module(*chunk, *[dummies[n] for n in graph.target_inputs])
        predictions[start : start + size] = outputs[1].argmax(axis=1)
    module.train()
    return float(np.mean(predictions == evaluation.reference))
