"""Fine-tuning on ONNX Runtime's training API: losses, constraints, regularizers, bad input."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.errors import OnnxcompError
from onnxcomp.runtime import training_graph
from onnxcomp.runtime.training import (
    L2,
    ADMMPenalty,
    GaussianMixturePrior,
    TrainConfig,
    finetune,
    model_forward_logits,
    snap_to_mixture,
)

pytestmark = pytest.mark.training  # skipped with the reason where no training build exists (conftest)

FEATURES, HIDDEN, CLASSES = 64, 32, 10
WEIGHTS = ["W1", "b1", "W2", "b2"]


def make_mlp(seed: int = 0, weights: dict[str, np.ndarray] | None = None, hidden_op: str = "Relu"):
    """A 64-32-10 MLP classifier (Gemm-Relu-Gemm) with seeded weights."""
    rng = np.random.default_rng(seed)
    values = {
        "W1": rng.normal(0, 1 / np.sqrt(FEATURES), (FEATURES, HIDDEN)),
        "b1": np.zeros(HIDDEN),
        "W2": rng.normal(0, 1 / np.sqrt(HIDDEN), (HIDDEN, CLASSES)),
        "b2": np.zeros(CLASSES),
    }
    values.update(weights or {})
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W1", "b1"], ["h"], name="fc1"),
            helper.make_node(hidden_op, ["h"], ["a"], name="act"),
            helper.make_node("Gemm", ["a", "W2", "b2"], ["logits"], name="fc2"),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in values.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def blobs(count: int, seed: int):
    """Ten overlapping Gaussian classes in 64 dimensions (same centres for every seed)."""
    centres = np.random.default_rng(1234).normal(0, 1, (CLASSES, FEATURES))
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, count)
    return (centres[labels] + rng.normal(0, 3.0, (count, FEATURES))).astype(np.float32), labels


def initializers(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def accuracy(model, x, y) -> float:
    return float(np.mean(model_forward_logits(model, {"x": x}).argmax(1) == y))


@pytest.fixture(scope="module")
def data():
    (x, y), (x_eval, y_eval) = blobs(2048, seed=0), blobs(512, seed=1)
    return x, y, x_eval, y_eval


@pytest.fixture(scope="module")
def trained(data):
    """A model fine-tuned from random weights; the starting point of the compression tests."""
    x, y, x_eval, y_eval = data
    result = finetune(
        make_mlp(), WEIGHTS, {"x": x}, y, eval_inputs={"x": x_eval}, eval_labels=y_eval,
        config=TrainConfig(epochs=5, lr=1e-2),
    )  # fmt: skip
    return make_mlp(weights=result.weights), result


def test_training_graph_routes_every_use_through_mask_and_codebook():
    """A weight shared by two MatMuls is masked at both uses; a codebook weight is decoded."""
    proto = onnx.parser.parse_model(
        """
        <ir_version: 11, opset_import: ["" : 17]>
        shared (float[1, 8] x) => (float[1, 8] y, float[1, 8] h) {
          h = MatMul(x, w)
          r = Relu(h)
          z = MatMul(r, w)
          y = Add(z, b)
        }
        """
    )
    rng = np.random.default_rng(0)
    proto.graph.initializer.extend(
        [numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "w"),
         numpy_helper.from_array(np.zeros(8, np.float32), "b")]
    )  # fmt: skip
    codebook, indices = np.array([-1.0, 1.0], np.float32), np.zeros(8, np.int32)
    graph = training_graph.build_training_graph(
        proto, ["w", "b"], training_graph.LossSpec(hard_weight=1.0, soft_weight=0.0), num_classes=8,
        masks={"w": np.ones((8, 8))}, codebooks={"b": (codebook, indices)}, regularizers=[], num_samples=10,
    )  # fmt: skip
    model = graph.model
    nodes = {n.output[0]: n for n in model.graph.node}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    masked = {n.input[1] for n in matmuls}
    assert len(masked) == 1 and nodes[masked.pop()].op_type == "Mul"
    add = next(n for n in model.graph.node if n.op_type == "Add" and n.input[0] == "z")
    assert nodes[add.input[1]].op_type == "Gather"
    assert "b" not in {t.name for t in model.graph.initializer}
    assert graph.weight_parameters == {"w": "w", "b": "b.codebook"}
    assert [o.name for o in model.graph.output] == ["onnxcomp_loss", "y"]
    assert [i.name for i in model.graph.input] == ["x", "onnxcomp_labels"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "onnxcomp_batch"
    assert model.ir_version == 10 and "MatMul_0" in {n.name for n in model.graph.node}
    assert proto.graph.node[0].name == ""  # the input model is untouched


def test_penalties_match_their_formulas():
    """The in-graph penalties, read off the forward training graph, against numpy."""
    import onnxruntime

    model = make_mlp()
    x, y = blobs(32, seed=0)
    weights = initializers(model)

    def penalty(regularizers) -> float:
        losses = []
        for extra in ([], regularizers):
            graph = training_graph.build_training_graph(
                model, ["W1", "W2"], training_graph.LossSpec(hard_weight=1.0, soft_weight=0.0), num_classes=10,
                masks={}, codebooks={}, regularizers=extra, num_samples=100,
            )  # fmt: skip
            session = onnxruntime.InferenceSession(graph.model.SerializeToString(), providers=["CPUExecutionProvider"])
            losses.append(float(session.run(None, {"x": x, "onnxcomp_labels": y})[0]))
        return losses[1] - losses[0]

    w = np.concatenate([weights["W1"].ravel(), weights["W2"].ravel()]).astype(np.float64)
    components = 5
    means = np.concatenate([[0.0], np.linspace(w.min(), w.max(), components - 1)])
    log_variances = np.full(components, 2 * np.log((w.max() - w.min()) / (components - 1)))
    log_mixing = np.log([0.999] + [0.001 / (components - 1)] * (components - 1))
    squared = (w[:, None] - means) ** 2 / np.exp(log_variances)
    joint = log_mixing - 0.5 * (log_variances + np.log(2 * np.pi)) - 0.5 * squared
    alpha, beta = np.array([5e3] + [250.0] * 4), np.array([2.0] + [0.1] * 4)
    hyper_prior = np.sum((alpha - 1) * log_variances + beta * np.exp(-log_variances))
    expected = 2.0 / 100 * (hyper_prior - np.logaddexp.reduce(joint, axis=1).sum())
    gmm = GaussianMixturePrior(num_components=components, tau=2.0)
    assert penalty([gmm]) == pytest.approx(expected, rel=1e-5)
    assert penalty([L2(0.5)]) == pytest.approx(0.25 * np.sum(w**2), rel=1e-5)
    target = np.full((FEATURES, HIDDEN), 0.1, np.float32)
    admm = ADMMPenalty({"W1": target}, rho=3.0)
    assert penalty([admm]) == pytest.approx(1.5 * np.sum((weights["W1"] - target) ** 2), rel=1e-5)


def test_training_lowers_loss_and_raises_accuracy(data, trained):
    x, y, x_eval, y_eval = data
    model, result = trained
    before = accuracy(make_mlp(), x_eval, y_eval)
    losses = [h["loss"] for h in result.history]
    assert len(result.history) == 5 and losses[-1] < 0.6 * losses[0]
    assert result.best_metric > before + 0.4
    assert result.best_metric == pytest.approx(accuracy(model, x_eval, y_eval))
    assert set(result.weights) == set(WEIGHTS) and result.extra == {}
    assert not result.diverged and not result.stopped_early
    assert [h["lr"] for h in result.history] == sorted((h["lr"] for h in result.history), reverse=True)


def test_input_model_is_not_modified(data):
    x, y, _, _ = data
    model = make_mlp()
    model.ir_version = 11  # onnx's default writes newer IRs than ORT 1.19 loads
    original = copy.deepcopy(model)
    finetune(model, ["W2"], {"x": x}, y, config=TrainConfig(epochs=1))
    assert model == original


def test_masked_weights_stay_zero_and_unmasked_weights_train(data, trained):
    x, y, x_eval, y_eval = data
    model, _ = trained
    w1 = initializers(model)["W1"]
    mask = (np.abs(w1) > np.quantile(np.abs(w1), 0.9)).astype(np.float32)
    result = finetune(
        model, ["W1", "W2"], {"x": x}, y, masks={"W1": mask},
        eval_inputs={"x": x_eval}, eval_labels=y_eval, config=TrainConfig(epochs=3, lr=3e-3),
    )  # fmt: skip
    trained_w1 = result.weights["W1"]
    assert np.all(trained_w1[mask == 0] == 0.0)
    assert np.mean(trained_w1[mask == 1] != w1[mask == 1]) > 0.9
    # retraining recovers part of what pruning 90% of W1 lost (0.55 -> 0.62 when written)
    pruned = make_mlp(weights={**initializers(model), "W1": w1 * mask})
    assert result.best_metric > accuracy(pruned, x_eval, y_eval) + 0.03


def test_codebook_training_keeps_weights_on_the_codebook(data, trained):
    x, y, _, _ = data
    model, _ = trained
    w1 = initializers(model)["W1"]
    codebook = np.linspace(w1.min(), w1.max(), 8).astype(np.float32)
    indices = np.abs(w1[..., None] - codebook).argmin(-1).astype(np.int32)
    result = finetune(model, ["W1"], {"x": x}, y, codebooks={"W1": (codebook, indices)}, config=TrainConfig(epochs=2))
    trained_codebook = result.codebooks["W1"]
    assert trained_codebook.shape == codebook.shape
    assert not np.allclose(trained_codebook, codebook)
    np.testing.assert_array_equal(result.weights["W1"], trained_codebook[indices])


def test_gaussian_mixture_prior_pulls_weights_to_zero(data, trained):
    x, y, _, _ = data
    model, _ = trained
    config = TrainConfig(epochs=6)
    plain = finetune(model, ["W1", "W2"], {"x": x}, y, config=config)
    prior = GaussianMixturePrior(num_components=9, tau=5.0)
    regularized = finetune(model, ["W1", "W2"], {"x": x}, y, regularizer=prior, config=config)

    def near_zero(weights):
        return np.mean(np.abs(np.concatenate([w.ravel() for w in weights.values()])) < 0.02)

    assert near_zero(regularized.weights) > 1.8 * near_zero(plain.weights)  # 0.10 -> 0.25 when written
    assert set(regularized.weights) == {"W1", "W2"}
    assert set(regularized.extra) == {"gmm.means", "gmm.log_variances", "gmm.log_mixing"}
    assert regularized.extra["gmm.means"].shape == (9,) and regularized.extra["gmm.means"][0] == 0
    assert np.exp(regularized.extra["gmm.log_mixing"]).sum() == pytest.approx(1.0, rel=1e-5)

    snapped = snap_to_mixture(regularized.weights, regularized.extra, merge_threshold=0.5)
    allowed = np.concatenate([[0.0], regularized.extra["gmm.means"]]).astype(np.float32)
    for name, values in snapped.items():
        assert values.shape == regularized.weights[name].shape
        assert np.all(np.isin(values, allowed))
        assert np.mean(values == 0.0) > 0.3


def test_snap_to_mixture_merges_close_components():
    extra = {
        "gmm.means": np.array([0.0, 0.5, 0.52, -0.5, 0.01], np.float32),
        "gmm.log_variances": np.full(5, np.log(0.02**2), np.float32),
        "gmm.log_mixing": np.log(np.array([0.9, 0.03, 0.03, 0.02, 0.02], np.float32)),
    }
    weights = {"w": np.array([0.003, -0.004, 0.49, 0.53, -0.48, 0.012], np.float32)}
    unmerged = snap_to_mixture(weights, extra)["w"]
    assert unmerged[0] == 0.0 and unmerged[1] == 0.0
    merged = snap_to_mixture(weights, extra, merge_threshold=0.05, distance="abs")["w"]
    np.testing.assert_allclose(merged, [0.0, 0.0, 0.51, 0.51, -0.5, 0.0], atol=1e-6)
    # symmetric KL: 0.5 for the pair 0.02 apart, 0.125 for 0.01 apart, over 600 for 0.5 apart
    np.testing.assert_array_equal(snap_to_mixture(weights, extra, merge_threshold=1.0)["w"], merged)
    assert snap_to_mixture(weights, extra, merge_threshold=1e6)["w"].tolist() == [0.0] * 6


def test_distillation_without_labels_raises_agreement_with_teacher(data, trained):
    x, _, x_eval, _ = data
    teacher, _ = trained
    student = make_mlp(seed=7)
    teacher_eval = model_forward_logits(teacher, {"x": x_eval})
    before = np.mean(model_forward_logits(student, {"x": x_eval}).argmax(1) == teacher_eval.argmax(1))
    result = finetune(
        student, WEIGHTS, {"x": x}, teacher_logits=model_forward_logits(teacher, {"x": x}), temperature=2.0,
        eval_inputs={"x": x_eval}, eval_teacher_logits=teacher_eval, config=TrainConfig(epochs=4, lr=1e-2),
    )  # fmt: skip
    predictions = model_forward_logits(make_mlp(weights=result.weights), {"x": x_eval}).argmax(1)
    after = np.mean(predictions == teacher_eval.argmax(1))
    assert after == pytest.approx(result.best_metric)
    assert after > before + 0.4


def test_labels_and_teacher_mix(data, trained):
    x, y, _, _ = data
    teacher, _ = trained
    result = finetune(
        make_mlp(seed=3), WEIGHTS, {"x": x}, y, teacher_logits=model_forward_logits(teacher, {"x": x}),
        distill_weight=0.3, config=TrainConfig(epochs=2, lr=1e-2),
    )  # fmt: skip
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_huge_learning_rate_diverges_and_keeps_finite_weights(data, trained):
    x, y, x_eval, y_eval = data
    model, _ = trained
    result = finetune(
        model, WEIGHTS, {"x": x}, y, eval_inputs={"x": x_eval}, eval_labels=y_eval,
        config=TrainConfig(epochs=3, lr=1e30, lr_schedule="constant"),
    )  # fmt: skip
    assert result.diverged
    assert all(np.all(np.isfinite(w)) for w in result.weights.values())
    np.testing.assert_array_equal(result.weights["W1"], initializers(model)["W1"])


def test_admm_penalty_pulls_weights_to_targets(data, trained):
    x, y, _, _ = data
    model, _ = trained
    w1 = initializers(model)["W1"]
    target = np.where(np.abs(w1) > np.median(np.abs(w1)), w1, 0.0).astype(np.float32)
    small = target == 0
    config = TrainConfig(epochs=3)
    plain = finetune(model, ["W1"], {"x": x}, y, config=config)
    admm = finetune(model, ["W1"], {"x": x}, y, regularizer=ADMMPenalty({"W1": target}, rho=10.0), config=config)
    assert np.abs(admm.weights["W1"][small]).mean() < 0.5 * np.abs(plain.weights["W1"][small]).mean()


def test_weight_decay_shrinks_weights(data, trained):
    x, y, _, _ = data
    model, _ = trained
    plain = finetune(model, ["W1"], {"x": x}, y, config=TrainConfig(epochs=2))
    decayed = finetune(model, ["W1"], {"x": x}, y, config=TrainConfig(epochs=2, weight_decay=1.0))
    assert np.linalg.norm(decayed.weights["W1"]) < 0.9 * np.linalg.norm(plain.weights["W1"])


def test_patience_stops_early_and_max_steps_caps_training(data, trained):
    x, y, x_eval, y_eval = data
    model, _ = trained
    lines = []
    stalled = finetune(
        model, ["W2"], {"x": x}, y, eval_inputs={"x": x_eval}, eval_labels=y_eval,
        config=TrainConfig(epochs=10, lr=1e-12, lr_schedule="constant", patience=2, log=lines.append),
    )  # fmt: skip
    assert stalled.stopped_early and len(stalled.history) == 3
    assert len(lines) == 3 and "epoch 1/10" in lines[0] and "held-out" in lines[0]
    capped = finetune(model, ["W2"], {"x": x}, y, config=TrainConfig(epochs=10, max_steps=5))
    assert capped.history[-1]["steps"] == 5 and len(capped.history) == 1


def test_unlabelled_eval_measures_agreement_with_the_input_model(data, trained):
    x, y, x_eval, _ = data
    model, _ = trained
    result = finetune(model, ["W2"], {"x": x}, y, eval_inputs={"x": x_eval}, config=TrainConfig(epochs=1, lr=1e-6))
    assert result.best_metric > 0.95


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(labels=a["labels"][:100]), "labels has 100 entries"),
        (lambda a: a.update(labels=a["labels"] + 5), r"lie in \[0, 10\)"),
        (lambda a: a.update(inputs={"x": a["inputs"]["x"][:40]}, labels=a["labels"][:40]), "only 40 training samples"),
        (lambda a: a["inputs"]["x"].__setitem__((3, 4), np.nan), "NaN/inf"),
        (lambda a: a.update(labels=None), "needs labels or teacher_logits"),
        (lambda a: a.update(trainable=["W1", "missing"]), "no initializer named 'missing'"),
        (lambda a: a.update(inputs={"image": a["inputs"]["x"]}), "lacks graph input"),
        (lambda a: a.update(masks={"W1": np.ones((2, 2))}), "mask for 'W1' has shape"),
        (lambda a: a.update(teacher_logits=np.zeros((256, 3))), "teacher_logits has shape"),
        (lambda a: a.update(model=make_mlp(hidden_op="Round")), r"no gradient for Round \(node 'act'\).*data-free"),
    ],
)
def test_bad_input_raises_a_helpful_error(change, message):
    x, y = blobs(256, seed=5)
    arguments = {"model": make_mlp(), "trainable": WEIGHTS, "inputs": {"x": x}, "labels": y}
    change(arguments)
    with pytest.raises(OnnxcompError, match=message):
        finetune(**arguments, config=TrainConfig(epochs=1))


MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


@pytest.mark.skipif(
    not (MODELS_DIR / "lenet300.onnx").exists() or not (MODELS_DIR / "data" / "mnist_train_2k.npz").exists(),
    reason="shipped LeNet-300-100 / MNIST sample not present",
)
def test_shipped_lenet300_recovers_from_pruning():
    """Han et al. prune/retrain on a torch-exported model: 90% of each weight matrix pruned."""
    model = onnx.load(MODELS_DIR / "lenet300.onnx")
    train = np.load(MODELS_DIR / "data" / "mnist_train_2k.npz")
    test = np.load(MODELS_DIR / "data" / "mnist_test_1k.npz")
    weights = initializers(model)
    masks = {
        name: (np.abs(w) > np.quantile(np.abs(w), 0.9)).astype(np.float32)
        for name, w in weights.items() if w.ndim == 2
    }  # fmt: skip
    result = finetune(
        model, list(weights), {"input": train["input"]}, train["labels"], masks=masks,
        eval_inputs={"input": test["input"]}, eval_labels=test["labels"], config=TrainConfig(epochs=3, lr=3e-3),
    )  # fmt: skip
    assert result.best_metric > 0.9  # 0.46 pruned, 0.94 retrained when written
    for name, mask in masks.items():
        assert np.all(result.weights[name][mask == 0] == 0.0)
