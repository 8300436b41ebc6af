"""VIB gates (VIBNet): gate insertion, exact folding of the gate means, and a small training run."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.channels import analyze_channels
from onnxcomp.errors import OnnxcompError
from onnxcomp.passes.eliminate_neurons import EliminateNeuronsPass
from onnxcomp.runtime.gates import NOISE_INPUT, insert_gates, noise_switch
from onnxcomp.training.vib import fold_gate_means, vib_eliminate

ort = pytest.importorskip("onnxruntime")

FLOAT = TensorProto.FLOAT


def _model(nodes, inputs, weights: dict[str, np.ndarray], classes: int) -> ir.Model:
    initializers = [numpy_helper.from_array(np.asarray(array, np.float32), name) for name, array in weights.items()]
    outputs = [helper.make_tensor_value_info("logits", FLOAT, ["n", classes])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10))


def _randn(rng, *shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def _mlp(rng, features: int = 16, hidden: int = 32, classes: int = 3) -> ir.Model:
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logits"], name="fc2", transB=1),
    ]
    weights = {
        "w1": _randn(rng, hidden, features) / np.sqrt(features),
        "b1": 0.1 * _randn(rng, hidden),
        "w2": _randn(rng, classes, hidden) / np.sqrt(hidden),
        "b2": np.zeros(classes, np.float32),
    }
    return _model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["n", features])], weights, classes)


def _residual_cnn(rng) -> ir.Model:
    """conv1 -> relu -> conv2 (+ conv1 skip) -> relu -> global pool -> flatten -> fc."""
    nodes = [
        helper.make_node("Conv", ["x", "c1", "cb1"], ["y1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["y1"], ["a1"], name="relu1"),
        helper.make_node("Conv", ["a1", "c2", "cb2"], ["y2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["y2", "a1"], ["s"], name="skip"),
        helper.make_node("Relu", ["s"], ["a2"], name="relu2"),
        helper.make_node("Conv", ["a2", "c3", "cb3"], ["y3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["y3"], ["a3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["a3"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w", "b"], ["logits"], name="fc", transB=1),
    ]
    weights = {
        "c1": 0.3 * _randn(rng, 8, 2, 3, 3), "cb1": 0.1 * _randn(rng, 8),
        "c2": 0.3 * _randn(rng, 8, 8, 3, 3), "cb2": 0.1 * _randn(rng, 8),
        "c3": 0.3 * _randn(rng, 6, 8, 3, 3), "cb3": 0.1 * _randn(rng, 6),
        "w": _randn(rng, 4, 6), "b": _randn(rng, 4),
    }  # fmt: skip
    return _model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["n", 2, 6, 6])], weights, 4)


def _session(model: ir.Model):
    return ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return _session(model).run(None, feeds)[0]


def _copy(model: ir.Model) -> ir.Model:
    return ir.from_proto(ir.to_proto(model))


def _gated_vs_folded(model: ir.Model, feeds: dict[str, np.ndarray], rng) -> dict[str, np.ndarray]:
    """Gate every group with random means (some 0), then check folded + eliminated == gated."""
    gated = _copy(model)
    names = [g.name for g in analyze_channels(gated).groups if not g.blocked]
    gates = insert_gates(gated, analyze_channels(gated), names)
    means, keep = {}, {}
    for name, gate in gates.items():
        mean = (rng.uniform(0.2, 2.0, gate.size) * rng.choice([-1, 1], gate.size)).astype(np.float32)
        keep[name] = rng.random(gate.size) > 0.4
        keep[name][0] = True
        means[name] = mean * keep[name]
        gated.graph.initializers[gate.mu].const_value = ir.tensor(means[name], name=gate.mu)
    count = len(next(iter(feeds.values())))
    expected = _run(gated, {**feeds, NOISE_INPUT: noise_switch(count, on=False)})

    folded = _copy(model)
    fold_gate_means(folded, means)
    result = EliminateNeuronsPass(keep=keep)(folded)
    onnx.checker.check_model(ir.to_proto(folded), full_check=True)
    np.testing.assert_allclose(_run(folded, feeds), expected, rtol=1e-4, atol=1e-5)
    assert result.removed == {name: int((~mask).sum()) for name, mask in keep.items() if not mask.all()}
    assert [v.name for v in folded.graph.inputs] == [v.name for v in model.graph.inputs]
    return keep


def test_gates_are_stochastic_in_training_and_mu_in_evaluation():
    rng = np.random.default_rng(0)
    model = _mlp(rng)
    gated = _copy(model)
    gates = insert_gates(gated, analyze_channels(gated), ["input:x", "fc1"], init_log_d=0.0)
    assert set(gates) == {"input:x", "fc1"}
    assert {n.op_type for n in gated.graph} >= {"RandomNormalLike", "Mul", "Exp"}
    x = _randn(rng, 5, 16)
    deterministic = _run(gated, {"x": x, NOISE_INPUT: noise_switch(5, on=False)})
    # mu ~ N(1, 0.01): the deterministic gated model is close to the original
    np.testing.assert_allclose(deterministic, _run(model, {"x": x}), atol=0.2)
    session = _session(gated)  # fresh noise on every run
    noisy = [session.run(None, {"x": x, NOISE_INPUT: noise_switch(5, on=True)})[0] for _ in range(2)]
    assert not np.allclose(noisy[0], noisy[1])
    with pytest.raises(OnnxcompError, match="blocked"):
        insert_gates(_copy(model), analyze_channels(model), ["fc2"])


def test_folding_gate_means_matches_the_gated_graph_mlp():
    rng = np.random.default_rng(1)
    keep = _gated_vs_folded(_mlp(rng), {"x": _randn(rng, 7, 16)}, rng)
    assert set(keep) == {"input:x", "fc1"}


def test_folding_gate_means_matches_the_gated_graph_residual_cnn():
    rng = np.random.default_rng(2)
    model = _residual_cnn(rng)
    keep = _gated_vs_folded(model, {"x": _randn(rng, 3, 2, 6, 6)}, rng)
    assert "conv1" in keep and "conv3" in keep  # conv1 and conv2 share one group (the skip)


def test_dropped_gates_are_replaced_by_their_mean_gated_activation():
    # A dropped gate (mu^2 < sigma^2) need not have mu near 0: its neuron passes mu * activation
    # in the deterministic network. Folding every mu and removing with samples replaces it by
    # its mean, so the logits (linear in fc1's neurons) keep their mean exactly.
    rng = np.random.default_rng(6)
    model = _mlp(rng)
    feeds = {"x": _randn(rng, 50, 16)}
    gated = _copy(model)
    gate = insert_gates(gated, analyze_channels(gated), ["fc1"])["fc1"]
    mean = rng.uniform(0.2, 2.0, gate.size).astype(np.float32)
    gated.graph.initializers[gate.mu].const_value = ir.tensor(mean, name=gate.mu)
    expected = _run(gated, {**feeds, NOISE_INPUT: noise_switch(50, on=False)})
    keep = np.arange(gate.size) % 3 != 0
    errors = []
    for means, samples in (({"fc1": mean * keep}, None), ({"fc1": mean}, feeds)):
        folded = _copy(model)
        fold_gate_means(folded, means)
        EliminateNeuronsPass(keep={"fc1": keep}, samples=samples)(folded)
        errors.append(np.abs(_run(folded, feeds).mean(0) - expected.mean(0)).max())
    assert errors[1] < 1e-4 < errors[0]


def _noisy_features_task(rng, count: int):
    """8 informative features decide the class; 8 more are pure noise."""
    informative = _randn(rng, count, 8)
    noise = _randn(rng, count, 8)
    projection = _randn(np.random.default_rng(42), 8, 3)  # one task for training and evaluation
    labels = np.argmax(informative @ projection, axis=1).astype(np.int64)
    return np.concatenate([informative, noise], axis=1), labels


@pytest.mark.training
def test_vib_drops_noise_inputs():
    rng = np.random.default_rng(3)
    x, y = _noisy_features_task(rng, 3000)
    x_eval, y_eval = _noisy_features_task(np.random.default_rng(4), 500)
    model = _mlp(np.random.default_rng(5))
    pruned, report = vib_eliminate(
        model, {"x": x}, y, eval_inputs={"x": x_eval}, eval_labels=y_eval,
        gamma={"input:x": 3e-3, "fc1": 1e-3}, epochs=8, batch_size=32, lr=3e-3, gate_lr_scale=10.0,
    )  # fmt: skip
    log_alpha = np.array(report["groups"]["input:x"]["log_alpha"])
    kept = log_alpha >= 0
    assert kept[8:].sum() <= 2, log_alpha  # noise features are dropped
    assert kept[:8].sum() >= 6, log_alpha  # informative ones stay
    assert report["groups"]["input:x"]["kept"] == kept.sum()
    onnx.checker.check_model(ir.to_proto(pruned), full_check=True)
    accuracy = np.mean(_run(pruned, {"x": x_eval}).argmax(1) == y_eval)
    assert accuracy > 0.85
    assert model.graph.initializers["w1"].const_value.shape == (32, 16)  # the input is not modified
    assert [v.name for v in pruned.graph.inputs] == ["x"]


@pytest.mark.training
def test_two_rounds_gate_again_on_what_the_first_keeps():
    """A short first round on the whole network removes most noise inputs; the second round's new
    gates train on the smaller network. The report counts against the original sizes and shapes."""
    rng = np.random.default_rng(3)
    x, y = _noisy_features_task(rng, 3000)
    x_eval, y_eval = _noisy_features_task(np.random.default_rng(4), 500)
    model = _mlp(np.random.default_rng(5))
    lines = []
    pruned, report = vib_eliminate(
        model, {"x": x}, y, eval_inputs={"x": x_eval}, eval_labels=y_eval,
        gamma={"input:x": 3e-3, "fc1": 1e-3}, epochs=6, first_round_epochs=3, batch_size=32, lr=3e-3,
        gate_lr_scale=10.0, log=lines.append,
    )  # fmt: skip
    first = next(line for line in lines if line.startswith("VIB first round kept"))
    assert "input:x" in first and "/16" in first
    group = report["groups"]["input:x"]
    assert group["size"] == 16 and group["kept"] <= 10  # of the original 16 features
    assert len(group["log_alpha"]) < 16  # the second round gated only what the first kept
    assert report["params_before"] == 32 * 16 + 32 + 3 * 32 + 3  # the original network's
    (row,) = [row for row in report["layers"] if row["name"] == "w1"]
    assert row["before"] == [32, 16] and row["after"][1] == group["kept"]
    accuracy = np.mean(_run(pruned, {"x": x_eval}).argmax(1) == y_eval)
    assert accuracy > 0.85
    assert [v.name for v in pruned.graph.inputs] == ["x"]
