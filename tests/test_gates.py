"""gates (onnxcomp.runtime.gates): the noise switch, what `insert_gates` adds to a model (gate
tensors, the noise input, one Mul per gated value), its refusals, the KL penalty graph of
`GateKLPenalty` evaluated in ONNX Runtime, and the per-channel numbers read back after training.
Folding and training with gates are tested in tests/test_vib.py."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxcomp.channels import analyze_channels
from onnxcomp.errors import OnnxcompError
from onnxcomp.runtime.gates import NOISE_INPUT, Gate, GateKLPenalty, gate_mean, insert_gates, log_alpha, noise_switch
from onnxcomp.runtime.training_graph import GraphBuilder, PenaltyInputs
from tests.conftest import MLP_SHAPES, MLP_TEXT, build_model, run

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


def mlp(rng) -> ir.Model:
    return build_model(MLP_TEXT, {name: rng.standard_normal(shape).astype(np.float32) for name, shape in MLP_SHAPES.items()})


def test_noise_switch_is_a_column_of_ones_or_zeros():
    on, off = noise_switch(3, on=True), noise_switch(2, on=False)
    assert on.dtype == np.float32 and on.shape == (3, 1) and on.tolist() == [[1.0]] * 3
    assert off.shape == (2, 1) and not off.any()


def test_insert_gates_adds_the_noise_input_gate_tensors_and_one_mul(rng):
    model = mlp(rng)
    analysis = analyze_channels(model)
    gates = insert_gates(model, analysis, ["Gemm"], init_mu=2.0, init_mu_std=0.0, init_log_d=-4.0, lr_scale=0.5)
    (name,) = gates
    assert name == "Gemm"  # the group of the unnamed Gemm's outputs, h
    gate = gates[name]
    assert isinstance(gate, Gate) and gate.size == 32 and gate.values == ("h",) and gate.lr_scale == 0.5
    assert model.graph.inputs[-1].name == NOISE_INPUT and list(model.graph.inputs[-1].shape)[1] == 1
    # stored as value / lr_scale: the graph multiplies them back
    np.testing.assert_array_equal(model.graph.initializers[gate.mu].const_value.numpy(), np.full(32, 4.0, np.float32))
    np.testing.assert_array_equal(model.graph.initializers[gate.log_d].const_value.numpy(), np.full(32, -8.0, np.float32))
    relu = next(node for node in model.graph if node.op_type == "Relu")
    assert relu.inputs[0].producer().op_type == "Mul" and relu.inputs[0].producer().inputs[0].name == "h"
    x = rng.standard_normal((4, 16)).astype(np.float32)
    reference = mlp(np.random.default_rng(20240607))  # the same weights, ungated
    # evaluation (noise off): every channel times mu = 2, so the Relu's input doubles and the output too
    gated = run(model, {"x": x, NOISE_INPUT: noise_switch(4, on=False)})[0]
    np.testing.assert_allclose(gated, 2 * run(reference, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_insert_gates_refuses_a_gated_model_and_unknown_or_blocked_groups(rng):
    model = mlp(rng)
    insert_gates(model, analyze_channels(model), [])
    with pytest.raises(OnnxcompError, match="^the model already has VIB gates$"):
        insert_gates(model, analyze_channels(model), [])
    fresh = mlp(rng)
    analysis = analyze_channels(fresh)
    blocked = [group.name for group in analysis.groups if group.blocked]
    assert blocked  # the output's channels cannot be removed
    with pytest.raises(OnnxcompError, match=rf"^channel group '{blocked[0]}' is blocked \(.+\); it cannot be gated$"):
        insert_gates(fresh, analysis, [blocked[0]])


def penalty_value(penalty: GateKLPenalty, arrays: dict[str, np.ndarray]) -> float:
    inputs = [ir.Value(name=name, shape=ir.Shape(list(array.shape)), type=ir.TensorType(ir.DataType.FLOAT))
              for name, array in arrays.items()]
    graph = ir.Graph(inputs, [], nodes=[], opset_imports={"": 17}, name="penalty")
    total = penalty.add_penalty(GraphBuilder(graph, 17), PenaltyInputs({v.name: v for v in inputs}, {}, 1))
    total.name = "total"
    graph.outputs.append(total)
    return float(run(ir.Model(graph, ir_version=10), arrays)[0])


def test_kl_penalty_is_gamma_times_the_sum_of_log_one_plus_alpha():
    first = Gate("a", 3, "mu_a", "logd_a", ("h",), lr_scale=1.0)
    second = Gate("b", 2, "mu_b", "logd_b", ("g",), lr_scale=2.0)
    arrays = {"mu_a": np.array([1.0, 0.5, 0.0], np.float32), "logd_a": np.array([0.0, -1.0, 2.0], np.float32),
              "mu_b": np.array([0.5, 1.0], np.float32), "logd_b": np.array([-0.5, 0.0], np.float32)}

    def kl(mu, log_d):
        return float(np.sum(np.log1p(mu.astype(np.float64) ** 2 / np.exp(log_d.astype(np.float64)))))

    expected_a = kl(arrays["mu_a"], arrays["logd_a"])
    expected_b = kl(2 * arrays["mu_b"], 2 * arrays["logd_b"])  # lr_scale: the graph uses 2x the stored values
    assert penalty_value(GateKLPenalty({"a": first, "b": second}, 0.5), arrays) == pytest.approx(
        0.5 * (expected_a + expected_b), rel=1e-5)
    assert penalty_value(GateKLPenalty({"a": first, "b": second}, {"a": 1.0, "b": 3.0}), arrays) == pytest.approx(
        expected_a + 3.0 * expected_b, rel=1e-5)


def test_kl_penalty_needs_a_gamma_per_group_and_trainable_gate_tensors():
    gates = {"a": Gate("a", 1, "mu_a", "logd_a", ("h",)), "b": Gate("b", 1, "mu_b", "logd_b", ("g",))}
    with pytest.raises(OnnxcompError, match="^no gamma for gated group\\(s\\) b$"):
        GateKLPenalty(gates, {"a": 1.0})
    assert GateKLPenalty(gates, 0.25).gamma == {"a": 0.25, "b": 0.25}
    with pytest.raises(OnnxcompError, match="^the gate tensors of group 'a' must be trainable$"):
        penalty_value(GateKLPenalty({"a": gates["a"]}, 1.0), {"mu_a": np.ones(1, np.float32)})


def test_log_alpha_and_gate_mean_read_the_trained_tensors():
    gate = Gate("a", 3, "mu", "logd", ("h",), lr_scale=2.0)
    parameters = {"mu": np.array([0.5, -1.0, 0.0]), "logd": np.array([0.0, 1.0, -1.0])}
    alpha = log_alpha(gate, parameters)
    np.testing.assert_allclose(alpha[:2], [2 * np.log(1.0) - 0.0, 2 * np.log(2.0) - 2.0])
    assert alpha[2] == -np.inf  # mu 0: no signal
    mean = gate_mean(gate, parameters)
    assert mean.dtype == np.float32 and mean.tolist() == [1.0, -2.0, 0.0]
