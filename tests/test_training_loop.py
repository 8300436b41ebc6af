"""runtime.training_loop: the epoch loop (steps per epoch, learning-rate schedule, step cap, NaN/inf
divergence, held-out evaluation, best-checkpoint restore, patience) on a scripted stand-in;
the one-line ONNX Runtime errors; and, with the training build, real training artifacts for a tiny model."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.errors import OnnxcompError
from onnxcomp.runtime.training_data import Evaluation
from onnxcomp.runtime.training_graph import LABELS_INPUT, SOFT_TARGETS_INPUT, LossSpec, TrainingGraph, build_training_graph
from onnxcomp.runtime.training_loop import TrainConfig, TrainingSession, log_epoch, one_line, train

CLASSES = 3


class ScriptedModule:
    """Stands in for onnxruntime.training.api.Module: training calls return the scripted losses in
    turn; eval calls return logits whose argmax is the scripted prediction for each sample."""

    def __init__(self, losses, predictions, fail_with=None):
        self.losses = list(losses)
        self.predictions = list(predictions)  # one array of classes per evaluation
        self.fail_with = fail_with
        self.training = False
        self.batches, self.eval_calls, self.offset = [], [], 0

    def train(self):
        self.training = True

    def eval(self):
        self.training = False

    def lazy_reset_grad(self):
        pass

    def __call__(self, *arrays):
        if self.fail_with is not None:
            raise self.fail_with
        if self.training:
            self.batches.append([array.copy() for array in arrays])
            return [np.float32(self.losses.pop(0)), None]
        features, *targets = arrays
        self.eval_calls.append((features, targets))
        classes = self.predictions[0][self.offset : self.offset + len(features)]
        self.offset += len(features)
        if self.offset >= len(self.predictions[0]):  # this evaluation is done: the next one's predictions
            self.predictions.pop(0)
            self.offset = 0
        return [np.float32(0), np.eye(CLASSES, dtype=np.float32)[classes]]


class ScriptedOptimizer:
    """Each step adds 1 to the weight, so every step's parameters differ."""

    def __init__(self, parameters):
        self.parameters = parameters
        self.rates, self.steps = [], 0

    def set_learning_rate(self, rate):
        self.rates.append(rate)

    def get_learning_rate(self):
        return self.rates[-1]

    def step(self):
        self.steps += 1
        self.parameters["w"] = self.parameters["w"] + 1


class ScriptedTrainer:
    def __init__(self, losses, predictions=(), fail_with=None, poison_after: int | None = None):
        self.parameters = {"w": np.zeros(2, np.float32)}
        self.module = ScriptedModule(losses, predictions, fail_with)
        self.optimizer = ScriptedOptimizer(self.parameters)
        self.poison_after = poison_after

    def read_parameters(self):
        weight = self.parameters["w"].copy()
        if self.poison_after is not None and self.optimizer.steps >= self.poison_after:
            weight[0] = np.inf
        return {"w": weight}


GRAPH = TrainingGraph(model=onnx.ModelProto(), feature_inputs=["x"], target_inputs=[LABELS_INPUT], logits="logits",
                      weight_parameters={"w": "w"}, regularizer_parameters=[])
X = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)  # sample i holds i
Y = np.arange(10, dtype=np.int64) % CLASSES


def fit(trainer, config, evaluation=None, restore_best=True):
    return train(trainer, GRAPH, [X, Y], evaluation, CLASSES, config, restore_best)


def test_epochs_drop_the_partial_batch_and_shuffle_with_the_seed():
    trainer = ScriptedTrainer(losses=[1.0, 3.0, 0.5, 0.25, 2.0, 2.0])
    run = fit(trainer, TrainConfig(epochs=3, batch_size=4, lr_schedule="constant", seed=5))
    assert [(h["epoch"], h["steps"], h["loss"], h["metric"]) for h in run.history] == [
        (1, 2, 2.0, None), (2, 4, 0.375, None), (3, 6, 2.0, None)]
    order = np.random.default_rng(5).permutation(10)
    first = trainer.module.batches[0]
    assert first[0][:, 0].tolist() == order[:4].tolist() and first[1].tolist() == (order[:4] % CLASSES).tolist()
    assert all(len(features) == 4 for features, _ in trainer.module.batches)
    assert run.snapshot["w"].tolist() == [6.0, 6.0] and run.metric is None  # no held-out data: the last epoch
    assert not run.diverged and not run.stopped_early


def test_cosine_schedule_per_step_and_the_step_cap():
    trainer = ScriptedTrainer(losses=[1.0] * 5)
    run = fit(trainer, TrainConfig(epochs=4, batch_size=5, lr=0.1, max_steps=5))
    total = 5  # 4 epochs of 2 steps, capped at 5
    expected = [0.1] + [0.1 * 0.5 * (1 + math.cos(math.pi * step / total)) for step in range(total)]
    assert trainer.optimizer.rates == pytest.approx(expected)  # the peak first, then one rate per step
    assert [h["steps"] for h in run.history] == [2, 4, 5] and run.history[-1]["lr"] == pytest.approx(expected[-1])
    partial = ScriptedTrainer(losses=[1.0] * 4)
    fit(partial, TrainConfig(epochs=2, batch_size=4, lr=0.1))  # 2 whole batches of 4 per epoch: 4 steps decay to 0
    assert partial.optimizer.rates[1:] == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * step / 4)) for step in range(4)])
    constant = ScriptedTrainer(losses=[1.0] * 4)
    fit(constant, TrainConfig(epochs=2, batch_size=5, lr=0.1, lr_schedule="constant"))
    assert constant.optimizer.rates == [0.1]


def test_a_nan_loss_ends_training_and_keeps_the_last_finite_epoch():
    trainer = ScriptedTrainer(losses=[1.0, 1.0, 2.0, float("nan")])
    run = fit(trainer, TrainConfig(epochs=5, batch_size=5, lr_schedule="constant"))
    assert run.diverged and len(run.history) == 2
    assert run.history[1]["diverged"] and run.history[1]["loss"] == 2.0 and run.history[1]["steps"] == 3
    assert run.snapshot["w"].tolist() == [2.0, 2.0]  # epoch 1's weights; the step that gave NaN was not taken
    assert trainer.optimizer.steps == 3


def test_non_finite_weights_diverge_too():
    trainer = ScriptedTrainer(losses=[1.0] * 4, poison_after=4)
    run = fit(trainer, TrainConfig(epochs=2, batch_size=5))
    assert run.diverged and run.history[-1]["diverged"] and run.snapshot["w"].tolist() == [2.0, 2.0]


def test_the_best_epoch_is_restored_unless_told_otherwise():
    reference = np.array([0, 1, 2, 0, 1, 2], np.int64)
    wrong = (reference + 1) % CLASSES
    half = np.where(np.arange(6) < 3, reference, wrong)
    evaluation = Evaluation({"x": np.zeros((6, 4), np.float32)}, reference)
    predictions = [half, reference, wrong]  # 50%, 100%, 0%
    best = fit(ScriptedTrainer([1.0] * 6, predictions), TrainConfig(epochs=3, batch_size=5), evaluation)
    assert [h["metric"] for h in best.history] == [0.5, 1.0, 0.0]
    assert best.metric == 1.0 and best.snapshot["w"].tolist() == [4.0, 4.0]
    last = fit(ScriptedTrainer([1.0] * 6, predictions), TrainConfig(epochs=3, batch_size=5), evaluation, restore_best=False)
    assert last.metric == 0.0 and last.snapshot["w"].tolist() == [6.0, 6.0]


def test_patience_ends_training_after_epochs_without_a_better_metric():
    reference = np.zeros(4, np.int64)
    evaluation = Evaluation({"x": np.zeros((4, 4), np.float32)}, reference)
    flat = [reference] * 6  # 100% every epoch: never better than the first
    run = fit(ScriptedTrainer([1.0] * 12, flat), TrainConfig(epochs=6, batch_size=5, patience=2), evaluation)
    assert run.stopped_early and len(run.history) == 3 and run.snapshot["w"].tolist() == [2.0, 2.0]
    without = fit(ScriptedTrainer([1.0] * 12), TrainConfig(epochs=6, batch_size=5, patience=2))
    assert not without.stopped_early and len(without.history) == 6  # patience needs held-out data


def test_evaluation_runs_in_eval_batches_with_placeholder_targets():
    graph = TrainingGraph(model=onnx.ModelProto(), feature_inputs=["x"], target_inputs=[LABELS_INPUT, SOFT_TARGETS_INPUT],
                          logits="logits", weight_parameters={"w": "w"}, regularizer_parameters=[])
    reference = np.array([0, 1, 2, 0, 1, 2, 0], np.int64)
    evaluation = Evaluation({"x": np.arange(7, dtype=np.float32)[:, None] * np.ones((1, 4), np.float32)}, reference)
    trainer = ScriptedTrainer([1.0] * 2, [np.array([0, 1, 2, 0, 1, 2, 1])])
    run = train(trainer, graph, [X, Y, np.full((10, CLASSES), 1 / CLASSES, np.float32)], evaluation, CLASSES,
                TrainConfig(epochs=1, batch_size=5, eval_batch_size=3), True)
    assert run.history[0]["metric"] == pytest.approx(6 / 7)
    calls = trainer.module.eval_calls
    assert [features[:, 0].tolist() for features, _ in calls] == [[0, 1, 2], [3, 4, 5], [6]]
    labels, soft = calls[2][1]
    assert labels.tolist() == [0] and labels.dtype == np.int64
    np.testing.assert_array_equal(soft, np.full((1, CLASSES), 1 / CLASSES, np.float32))
    assert trainer.module.training  # left in training mode


def test_a_failing_step_is_one_error_naming_the_batch_size():
    error = RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x")
    with pytest.raises(OnnxcompError, match=r"^training step failed in ONNX Runtime: Got invalid dimensions for input: x "
                                            r"\(does the model fix its batch size, e.g. in a Reshape\?\)$"):
        fit(ScriptedTrainer([1.0], fail_with=error), TrainConfig(epochs=1, batch_size=5))


def test_each_epoch_is_logged():
    lines = []
    fit(ScriptedTrainer([1.0, 0.5]), TrainConfig(epochs=1, batch_size=5, lr=0.01, lr_schedule="constant", log=lines.append,
                                                 stage="prune round 1/2"))
    assert len(lines) == 1 and lines[0].startswith("prune round 1/2, epoch 1/1: training loss 0.7500, no held-out data, lr 0.01 (")
    diverged = []
    log_epoch({"epoch": 2, "loss": float("nan"), "metric": None, "lr": 0.5, "seconds": 0.04, "diverged": True},
              TrainConfig(epochs=3, log=diverged.append), Evaluation({}, np.zeros(1)))
    assert diverged == ["fine-tune, epoch 2/3: training loss nan, held-out accuracy -, lr 0.5 (0.0 s), diverged (NaN/inf loss)"]


@pytest.mark.parametrize(("message", "expected"), [
    ("first line\n\n  last line  \n", "last line"),
    ("[ONNXRuntimeError] : 1 : FAIL : Node (n) failed", "Node (n) failed"),
    ("/onnxruntime_src/onnxruntime/core/graph/graph.cc:1234 void onnxruntime::Graph::f(int, int) Shape mismatch",
     "Shape mismatch"),
    ("/onnxruntime_src/onnxruntime/core/providers/cpu/a.cc:7 rank == 2 was false. Bad rank", "Bad rank"),
    ("", "RuntimeError"),
    ("x" * 400, "x" * 297 + "..."),
])
def test_one_line(message, expected):
    assert one_line(RuntimeError(message)) == expected


# ---- real training artifacts (ONNX Runtime's training build) --------------------------------------------

def gemm_classifier(hidden_op: str | None = None) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h" if hidden_op else "logits"])]
    if hidden_op:
        nodes.append(helper.make_node(hidden_op, ["h"], ["logits"], name="act"))
    graph = helper.make_graph(nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
                              [numpy_helper.from_array(rng.standard_normal((4, CLASSES)).astype(np.float32), "w"),
                               numpy_helper.from_array(np.zeros(CLASSES, np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def training_graph_of(model: onnx.ModelProto) -> TrainingGraph:
    return build_training_graph(model, ["w", "b"], LossSpec(hard_weight=1.0, soft_weight=0.0), num_classes=CLASSES,
                                masks={}, codebooks={}, regularizers=[], num_samples=8)


@pytest.mark.training
def test_real_artifacts_start_from_the_model_and_train(tmp_path):
    model = gemm_classifier()
    graph = training_graph_of(model)
    trainer = TrainingSession(graph, str(tmp_path))
    assert all(onnx.load(str(tmp_path / f"{kind}_model.onnx")).ir_version <= 10 for kind in ("training", "eval", "optimizer"))
    initial = trainer.read_parameters()
    assert set(initial) == {"w", "b"}
    np.testing.assert_array_equal(initial["w"], numpy_helper.to_array(model.graph.initializer[0]))
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((8, 4)).astype(np.float32), rng.integers(0, CLASSES, 8)
    run = train(trainer, graph, [x, y], Evaluation({"x": x}, y), CLASSES, TrainConfig(epochs=2, batch_size=4, lr=0.1), True)
    assert [h["steps"] for h in run.history] == [2, 4] and not run.diverged
    assert not np.array_equal(trainer.read_parameters()["w"], initial["w"])
    logits = x @ run.snapshot["w"] + run.snapshot["b"]
    assert run.metric == pytest.approx(np.mean(logits.argmax(1) == y))  # the restored snapshot's own accuracy


@pytest.mark.training
def test_an_op_without_a_gradient_names_the_node(tmp_path):
    with pytest.raises(OnnxcompError, match=r"cannot fine-tune: ONNX Runtime training has no gradient for Round "
                                            r"\(node 'act'\); data-free compression"):
        TrainingSession(training_graph_of(gemm_classifier("Round")), str(tmp_path))
