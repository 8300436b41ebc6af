"""runtime.regularizers: the L2, ADMM and Gaussian-mixture penalties built into the training graph
(values read off the forward training graph in ONNX Runtime, on the weights as the network sees
them), their parameters and report, their errors, and snapping weights to a learned mixture."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.errors import OnnxcompError
from onnxcomp.runtime.regularizers import L2, ADMMPenalty, GaussianMixturePrior, snap_to_mixture
from onnxcomp.runtime.training_graph import LABELS_INPUT, LossSpec, build_training_graph
from tests.conftest import run

RNG = np.random.default_rng(7)
W1 = RNG.standard_normal((4, 6)).astype(np.float32)
W2 = RNG.standard_normal((6, 3)).astype(np.float32)


def mlp() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["logits"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(W2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def build(regularizers, masks=None, trainable=("w1", "w2")):
    return build_training_graph(mlp(), list(trainable), LossSpec(hard_weight=1.0, soft_weight=0.0), num_classes=3,
                                masks=masks or {}, codebooks={}, regularizers=regularizers, num_samples=20)


def penalty(regularizer, masks=None, trainable=("w1", "w2")) -> float:
    """The loss with ``regularizer`` minus the loss without, on one batch."""
    feeds = {"x": np.ones((2, 4), np.float32), LABELS_INPUT: np.array([0, 2], np.int64)}
    with_it, without = (float(run(build(extra, masks, trainable).model, feeds)[0]) for extra in ([regularizer], []))
    return with_it - without


def test_l2_is_half_the_strength_times_the_squares_of_the_named_weights():
    assert penalty(L2(0.4)) == pytest.approx(0.2 * (np.sum(W1**2) + np.sum(W2**2)), rel=1e-5)
    assert penalty(L2(3.0, names=["w2"])) == pytest.approx(1.5 * np.sum(W2**2), rel=1e-5)


def test_penalties_see_masked_weights():
    mask = (np.abs(W1) > 0.5).astype(np.float32)
    assert penalty(L2(2.0, names=["w1"]), masks={"w1": mask}) == pytest.approx(np.sum((W1 * mask) ** 2), rel=1e-5)
    target = np.full_like(W1, 0.25)
    assert penalty(ADMMPenalty({"w1": target}, rho=4.0), masks={"w1": mask}) == \
        pytest.approx(2.0 * np.sum((W1 * mask - target) ** 2), rel=1e-5)


def test_admm_targets_only_the_weights_it_names():
    target = np.zeros_like(W2)
    assert penalty(ADMMPenalty({"w2": target}, rho=1.0)) == pytest.approx(0.5 * np.sum(W2**2), rel=1e-5)


@pytest.mark.parametrize(("regularizer", "message"), [
    (L2(1.0, names=["w1", "w9"]), "regularizer names weights that are not trainable: w9"),
    (ADMMPenalty({"w3": np.zeros((6, 3))}, rho=1.0), "regularizer names weights that are not trainable: w3"),
    (ADMMPenalty({"w2": np.zeros((3, 6))}, rho=1.0), r"ADMM target for 'w2' has shape \(3, 6\), the weight \(6, 3\)"),
    (ADMMPenalty({"w2": np.full((6, 3), np.inf)}, rho=1.0), "ADMM target for 'w2' contains NaN or inf"),
    (GaussianMixturePrior(3, names=["w0"]), "regularizer names weights that are not trainable: w0"),
])
def test_penalties_refuse_weights_they_cannot_penalize(regularizer, message):
    with pytest.raises(OnnxcompError, match=message):
        build([regularizer])


@pytest.mark.parametrize(("arguments", "message"), [
    ({"num_components": 1}, "GaussianMixturePrior needs at least 2 components"),
    ({"pi_zero": 1.0}, r"pi_zero must lie in \(0, 1\), got 1.0"),
    ({"pi_zero": 0.0}, r"pi_zero must lie in \(0, 1\), got 0.0"),
])
def test_mixture_prior_arguments_are_checked(arguments, message):
    with pytest.raises(OnnxcompError, match=message):
        GaussianMixturePrior(**arguments)


def test_mixture_parameters_start_spread_over_the_weights_and_are_scaled_for_the_learning_rate():
    prior = GaussianMixturePrior(4, names=["w2"], lr_scale={"means": 0.5})
    assert prior.lr_scale == {"means": 0.5, "log_variances": 6.0, "logits": 6.0}
    graph = build([prior])
    (keys,) = graph.regularizer_parameters
    assert sorted(keys) == ["log_variances", "logits", "means"]
    stored = {t.name: numpy_helper.to_array(t) for t in graph.model.graph.initializer}
    low, high = float(W2.min()), float(W2.max())
    np.testing.assert_allclose(stored[keys["means"]] * 0.5, np.linspace(low, high, 3), rtol=1e-6)
    std = (high - low) / 3
    np.testing.assert_allclose(stored[keys["log_variances"]] * 6.0, np.full(4, 2 * math.log(std)), rtol=1e-6)
    np.testing.assert_array_equal(stored[keys["logits"]], np.zeros(3))
    assert set(graph.trainable_parameters) == {"w1", "w2", *keys.values()}


def test_mixture_penalty_without_weights_spread_uses_the_given_std():
    prior = GaussianMixturePrior(2, tau=1.0, init_std=0.5, names=["w2"], zero_gamma=(1.0, 0.0), gamma=(1.0, 0.0))
    # alpha = 1, beta = 0: no hyper-prior; log p(w) of a two-component mixture, both std 0.5
    w = W2.astype(np.float64).ravel()
    means = np.array([0.0, w.min()])
    log_mixing = np.log([0.999, 0.001])
    joint = log_mixing - 0.5 * np.log(2 * np.pi * 0.25) - 0.5 * (w[:, None] - means) ** 2 / 0.25
    expected = -np.logaddexp.reduce(joint, axis=1).sum() / 20
    assert penalty(prior) == pytest.approx(expected, rel=1e-5)


def test_mixture_report_undoes_the_scaling_and_normalises_the_mixing():
    prior = GaussianMixturePrior(3, pi_zero=0.9)
    report = prior.report({"means": np.array([1.0, -1.0]), "log_variances": np.array([0.1, 0.2, 0.3]) / 6,
                           "logits": np.array([0.0, math.log(3.0)]) / 6})
    np.testing.assert_allclose(report["means"], [0.0, 0.2, -0.2], rtol=1e-6)
    np.testing.assert_allclose(report["log_variances"], [0.1, 0.2, 0.3], rtol=1e-6)
    np.testing.assert_allclose(np.exp(report["log_mixing"]), [0.9, 0.025, 0.075], rtol=1e-5)
    assert all(array.dtype == np.float32 for array in report.values())


def mixture(means, std=0.01, mixing=None, prefix="gmm.") -> dict[str, np.ndarray]:
    means = np.asarray(means, np.float32)
    mixing = np.full(len(means), 1 / len(means)) if mixing is None else np.asarray(mixing)
    return {prefix + "means": means, prefix + "log_variances": np.full(len(means), 2 * np.log(std), np.float32),
            prefix + "log_mixing": np.log(mixing).astype(np.float32)}


def test_snap_keeps_shapes_and_dtypes_and_zeroes_the_zero_component():
    weights = {"a": np.array([[0.004, 0.29], [-0.31, 0.6]], np.float16), "b": np.array([0.33, -0.02], np.float64)}
    snapped = snap_to_mixture(weights, mixture([0.0, 0.3, -0.3]))
    assert snapped["a"].dtype == np.float16 and snapped["a"].shape == (2, 2)
    np.testing.assert_array_equal(snapped["a"], np.array([[0.0, 0.3], [-0.3, 0.3]], np.float16))
    assert snapped["b"].dtype == np.float64 and snapped["b"].tolist() == pytest.approx([0.3, 0.0])


def test_snap_merges_into_moment_matched_components():
    # 0.3 and 0.32 (mixing 1:3) are 0.02 apart: merged at their weighted mean 0.315; 0.01 joins 0 and stays at 0
    extra = mixture([0.0, 0.3, 0.32, 0.01], mixing=[0.4, 0.1, 0.3, 0.2])
    snapped = snap_to_mixture({"w": np.array([0.3, 0.32, 0.011, 0.2])}, extra, merge_threshold=0.025, distance="abs")
    np.testing.assert_allclose(snapped["w"], [0.315, 0.315, 0.0, 0.315], atol=1e-6)
    assert snap_to_mixture({"w": np.array([0.3, 0.32])}, extra, merge_threshold=0.005, distance="abs")["w"].tolist() == pytest.approx([0.3, 0.32])


def test_snap_reads_its_prefix_and_refuses_what_it_cannot_read():
    extra = mixture([0.0, 0.5], prefix="prior.")
    assert snap_to_mixture({"w": np.array([0.45])}, extra, prefix="prior.")["w"].tolist() == [0.5]
    with pytest.raises(OnnxcompError, match="no mixture parameters in extra: 'gmm.means' missing"):
        snap_to_mixture({"w": np.zeros(2)}, extra)
    with pytest.raises(OnnxcompError, match="distance must be 'kl' or 'abs', got 'l1'"):
        snap_to_mixture({"w": np.zeros(2)}, extra, distance="l1", prefix="prior.")


def test_snap_of_many_weights_matches_chunk_by_chunk():
    weights = np.random.default_rng(3).uniform(-1, 1, (1 << 18) + 1000)  # over one chunk of 2^18
    snapped = snap_to_mixture({"w": weights}, mixture([0.0, 0.5, -0.5], std=0.2))["w"]
    np.testing.assert_array_equal(snapped, np.select([weights > 0.25, weights < -0.25], [0.5, -0.5], 0.0))
