"""The epoch loop on ONNX Runtime's on-device training API.

`TrainingSession` generates the artifacts (training, eval and AdamW graphs, checkpoint) and
loads them; `train` runs seeded mini-batch epochs with a per-step learning rate, evaluates on
held-out data, keeps the best checkpoint and stops at NaN/inf or when patience runs out.
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
from collections.abc import Callable

import numpy as np
import onnx

from onnxcomp import progress
from onnxcomp.errors import OnnxcompError
from onnxcomp.runtime import training_graph
from onnxcomp.runtime.training_data import Evaluation
from onnxcomp.runtime.training_graph import TrainingGraph

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
        stage: what this training run is (e.g. "prune round 1/2"): names its epoch lines and its
            live progress bar.
        restore_best: return the weights of the epoch with the best held-out metric. None:
            yes, unless ``regularizer`` is given (a prior or ADMM target trades held-out
            accuracy for structure, so the last epoch's weights are returned).
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
    stage: str = "fine-tune"
    restore_best: bool | None = None
    eval_batch_size: int = 1024

_NO_GRADIENT = re.compile(r"gradient builder has not been registered: (\S+) for node (\S*)")


class TrainingSession:
    """Training artifacts generated into ``directory`` and the ORT objects that run them."""

    def __init__(self, graph: TrainingGraph, directory: str):
        from onnxruntime.training import artifacts
        from onnxruntime.training.api import CheckpointState, Module, Optimizer

        error = None
        with tempfile.TemporaryFile() as log, _stderr_to(log):
            try:
                artifacts.generate_artifacts(
                    graph.model,
                    requires_grad=graph.trainable_parameters,
                    # The loss is already the graph's first output: pass it through.
                    loss=artifacts.onnxblock.blocks.PassThrough(),
                    loss_input_names=[graph.model.graph.output[0].name],
                    additional_output_names=[graph.logits],
                    optimizer=artifacts.OptimType.AdamW,
                    artifact_directory=directory,
                )
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
            raise OnnxcompError(f"cannot build the training graph: {one_line(error)}") from error

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
            raise OnnxcompError(f"ONNX Runtime cannot load the training model: {one_line(exc)}") from exc
        self.parameter_names = graph.trainable_parameters

    def read_parameters(self) -> dict[str, np.ndarray]:
        parameters = self.state.parameters
        return {name: np.array(parameters[name].data, copy=True) for name in self.parameter_names}


@contextlib.contextmanager
def _stderr_to(sink):
    """Sends file descriptor 2 to ``sink``: the gradient builder logs every pass from C++."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        os.dup2(sink.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def one_line(error: BaseException) -> str:
    """The useful last line of an ONNX Runtime error, without its C++ source location."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    text = re.split(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", text)[-1]
    text = re.sub(r"^/onnxruntime_src/\S+ .*?(?:was false\.|\)) ", "", text) or text
    return text if len(text) <= 300 else text[:297] + "..."


@dataclasses.dataclass
class Run:
    """What the loop hands back: the checkpoint to return and how training went."""

    snapshot: dict[str, np.ndarray]  # trained tensor name -> value
    metric: float | None  # held-out metric of the snapshot
    history: list[dict]
    stopped_early: bool = False
    diverged: bool = False


def train(session: TrainingSession, graph: TrainingGraph, arrays: list[np.ndarray],
          evaluation: Evaluation | None, num_classes: int, config: TrainConfig,
          restore_best: bool) -> Run:
    """Runs the epochs; ``arrays`` are the training graph's inputs in order, samples first."""
    num_samples = len(arrays[0])
    steps_per_epoch = num_samples // config.batch_size  # the last partial batch is dropped
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    rng = np.random.default_rng(config.seed)
    if config.patience is not None and evaluation is None:
        logger.warning("patience is ignored without eval_inputs")

    # The starting point is the fallback if the first epoch already diverges.
    run = Run(snapshot=session.read_parameters(), metric=None, history=[])
    best_metric, epochs_since_best, step = None, 0, 0
    session.optimizer.set_learning_rate(config.lr)
    session.module.train()
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        steps = min(steps_per_epoch, max(total_steps - step, 0))
        with progress.task(f"{config.stage}, epoch {epoch}/{config.epochs}", total=steps) as bar:
            loss_sum, epoch_steps, run.diverged = _run_epoch(session, arrays, rng, step, total_steps, config, bar)
        step += epoch_steps
        parameters = None if run.diverged else session.read_parameters()
        if parameters is not None and not all(np.all(np.isfinite(p)) for p in parameters.values()):
            run.diverged, parameters = True, None
        metric = None
        if parameters is not None and evaluation is not None:
            metric = _evaluate(session.module, evaluation, graph, num_classes, config.eval_batch_size)
        record = {
            "epoch": epoch,
            "loss": loss_sum / epoch_steps if epoch_steps else float("nan"),
            "metric": metric,
            "lr": session.optimizer.get_learning_rate(),
            "steps": step,
            "seconds": time.perf_counter() - started,
            "diverged": run.diverged,
        }
        run.history.append(record)
        log_epoch(record, config, evaluation)
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


def _run_epoch(session: TrainingSession, arrays: list[np.ndarray], rng: np.random.Generator,
               step: int, total_steps: int, config: TrainConfig, bar: progress.Task) -> tuple[float, int, bool]:
    """One shuffled pass; returns (sum of losses, steps taken, NaN/inf loss seen)."""
    module, optimizer = session.module, session.optimizer
    batch_size = config.batch_size
    order = rng.permutation(len(arrays[0]))
    cosine = config.lr_schedule == "cosine"
    loss_sum, taken = 0.0, 0
    for start in range(0, len(order) - batch_size + 1, batch_size):
        if step + taken >= total_steps:
            break
        if cosine:
            optimizer.set_learning_rate(config.lr * 0.5 * (1.0 + math.cos(math.pi * (step + taken) / total_steps)))
        index = order[start : start + batch_size]
        try:
            loss = float(module(*[array[index] for array in arrays])[0])
        except Exception as exc:
            raise OnnxcompError(
                f"training step failed in ONNX Runtime: {one_line(exc)} "
                "(does the model fix its batch size, e.g. in a Reshape?)"
            ) from exc
        if not math.isfinite(loss):
            return loss_sum, taken, True
        optimizer.step()
        module.lazy_reset_grad()
        loss_sum += loss
        taken += 1
        bar.advance()
    return loss_sum, taken, False


def _evaluate(module, evaluation: Evaluation, graph: TrainingGraph, num_classes: int, batch_size: int) -> float:
    """Fraction of held-out samples whose predicted class matches the reference."""
    module.eval()
    count = len(evaluation.reference)
    predictions = np.empty(count, np.int64)
    features = [evaluation.features[n] for n in graph.feature_inputs]
    for start in range(0, count, batch_size):
        chunk = [array[start : start + batch_size] for array in features]
        size = len(chunk[0])
        # The eval graph computes the loss too; placeholder targets keep it well-defined.
        placeholders = {
            training_graph.LABELS_INPUT: np.zeros(size, np.int64),
            training_graph.SOFT_TARGETS_INPUT: np.full((size, num_classes), 1.0 / num_classes, np.float32),
        }
        outputs = module(*chunk, *[placeholders[n] for n in graph.target_inputs])
        predictions[start : start + size] = outputs[1].argmax(axis=1)
    module.train()
    return float(np.mean(predictions == evaluation.reference))


def log_epoch(record: dict, config: TrainConfig, evaluation: Evaluation | None) -> None:
    """One line per epoch, naming the stage and the held-out metric, e.g. "prune round 1/2, epoch
    3/10: training loss 0.1234, held-out accuracy 98.12%, lr 0.000655 (0.8 s)"."""
    if evaluation is None:
        held_out = "no held-out data"
    else:
        held_out = f"{evaluation.metric} " + ("-" if record["metric"] is None else f"{100 * record['metric']:.2f}%")
    line = (
        f"{config.stage}, epoch {record['epoch']}/{config.epochs}: training loss {record['loss']:.4f}, {held_out}, "
        f"lr {record['lr']:.3g} ({record['seconds']:.1f} s)" + (", diverged (NaN/inf loss)" if record["diverged"] else "")
    )
    logger.info(line)
    if config.log is not None:
        config.log(line)
