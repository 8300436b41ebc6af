"""Penalties that fine-tuning adds to the training graph as ONNX subgraphs.

A `Regularizer` adds nodes computing one scalar from the weights (as the network sees them:
masked, decoded from codebooks) and may declare extra trainable tensors, e.g. the mixture
parameters of a prior. Everything it adds lives only in the training graph; `finetune` returns
the learned extra tensors in `FinetuneResult.extra`, keyed ``"<regularizer.name>.<key>"``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxcomp.errors import OnnxcompError
from onnxcomp.runtime.training_graph import GraphBuilder, PenaltyInputs, Regularizer  # Regularizer: re-exported

logger = logging.getLogger(__name__)


def _selected(inputs: PenaltyInputs, names: Sequence[str] | None) -> list[str]:
    if names is None:
        return list(inputs.weights)
    unknown = [n for n in names if n not in inputs.weights]
    if unknown:
        raise OnnxcompError(f"regularizer names weights that are not trainable: {', '.join(unknown[:5])}")
    return list(names)


class L2(Regularizer):
    """``strength / 2 * sum(w**2)``: the gradient adds ``strength * w`` (classic weight decay)."""

    name = "l2"

    def __init__(self, strength: float, names: Sequence[str] | None = None):
        self.strength = float(strength)
        self.names = names

    def add_penalty(self, graph: GraphBuilder, inputs: PenaltyInputs) -> ir.Value:
        squares = [graph.sum_of_squares(inputs.weights[n]) for n in _selected(inputs, self.names)]
        return graph.scale(graph.add_all(squares), self.strength / 2)


class ADMMPenalty(Regularizer):
    """``rho / 2 * sum ||W - (Z - U)||^2`` for the W-step of ADMM pruning (Yang et al. 2020).

    ``targets`` maps weight names to ``Z - U``; they are frozen in the graph, so run one
    `finetune` call per ADMM outer iteration with fresh targets.
    """

    name = "admm"

    def __init__(self, targets: Mapping[str, np.ndarray], rho: float):
        self.targets = dict(targets)
        self.rho = float(rho)

    def add_penalty(self, graph: GraphBuilder, inputs: PenaltyInputs) -> ir.Value:
        terms = []
        for name in _selected(inputs, list(self.targets)):
            target = np.asarray(self.targets[name], np.float32)
            if target.shape != inputs.initial[name].shape:
                raise OnnxcompError(
                    f"ADMM target for '{name}' has shape {target.shape}, the weight {inputs.initial[name].shape}"
                )
            if not np.all(np.isfinite(target)):
                raise OnnxcompError(f"ADMM target for '{name}' contains NaN or inf")
            difference = graph.op("Sub", inputs.weights[name], graph.constant(target, f"{name}.admm_target"))
            terms.append(graph.sum_of_squares(difference))
        return graph.scale(graph.add_all(terms), self.rho / 2)


class GaussianMixturePrior(Regularizer):
    """Soft weight-sharing (Ullrich, Meeds & Welling 2017): a learned Gaussian-mixture prior.

    Component 0 sits at mean 0 with the fixed mixing proportion ``pi_zero``; the other
    ``num_components - 1`` components have learned means (initialised evenly over the weight
    range), and every component a learned log-variance with a Gamma hyper-prior on its
    precision. The penalty is ``tau / num_samples * (-log p(w) - log p(precisions))`` over the
    selected weights (all trainable ones by default), i.e. the paper's ``tau`` relative to a
    data term summed over the training set. Snap the result with `snap_to_mixture`.

    The optimizer has one learning rate; ``lr_scale`` multiplies it per mixture parameter
    group (the paper's Adam rates relative to the weights': means 0.2, log-variances and mixing
    logits 6) by training ``value / scale`` and using ``scale * trained`` in the graph.

    `report` gives ``means``, ``log_variances`` and ``log_mixing`` (normalised log
    proportions), each of length ``num_components``, component 0 first.
    """

    name = "gmm"

    def __init__(
        self,
        num_components: int = 17,
        *,
        tau: float = 5e-3,
        pi_zero: float = 0.999,
        init_std: float | None = None,
        zero_gamma: tuple[float, float] = (5e3, 2.0),
        gamma: tuple[float, float] = (2.5e2, 0.1),
        names: Sequence[str] | None = None,
        lr_scale: Mapping[str, float] | None = None,
    ):
        if num_components < 2:
            raise OnnxcompError("GaussianMixturePrior needs at least 2 components")
        if not 0.0 < pi_zero < 1.0:
            raise OnnxcompError(f"pi_zero must lie in (0, 1), got {pi_zero}")
        self.num_components = num_components
        self.tau = float(tau)
        self.pi_zero = float(pi_zero)
        self.init_std = init_std
        self.zero_gamma = zero_gamma
        self.gamma = gamma
        self.names = names
        self.lr_scale = {"means": 0.2, "log_variances": 6.0, "logits": 6.0, **(lr_scale or {})}

    def _parameter(self, graph: GraphBuilder, key: str, initial: np.ndarray) -> ir.Value:
        scale = float(self.lr_scale[key])
        return graph.scale(graph.parameter(np.asarray(initial) / scale, key), scale)

    def add_penalty(self, graph: GraphBuilder, inputs: PenaltyInputs) -> ir.Value:
        names = _selected(inputs, self.names)
        initial = np.concatenate([inputs.initial[n].ravel() for n in names])
        low, high = float(initial.min()), float(initial.max())
        components = self.num_components
        init_std = self.init_std or max((high - low) / (components - 1), 1e-3)
        means = self._parameter(graph, "means", np.linspace(low, high, components - 1))
        log_variances = self._parameter(graph, "log_variances", np.full(components, 2 * math.log(init_std)))
        logits = self._parameter(graph, "logits", np.zeros(components - 1))

        all_means = graph.op("Concat", graph.constant(np.zeros(1, np.float32), "gmm_zero_mean"), means, axis=0)
        log_mixing = graph.op(
            "Concat",
            graph.constant(np.array([math.log(self.pi_zero)], np.float32), "gmm_log_pi_zero"),
            graph.op("Add", graph.op("LogSoftmax", logits, axis=-1), graph.scalar(math.log1p(-self.pi_zero))),
            axis=0,
        )
        precision = graph.op("Exp", graph.scale(log_variances, -1.0))
        weights = graph.unsqueeze(graph.concat_flat([inputs.weights[n] for n in names]), [1])
        joint = _log_joint(graph, weights, initial.size, all_means, log_variances, precision, log_mixing)
        # keepdims: ORT 1.19's ReduceLogSumExp gradient emits an invalid Unsqueeze without it.
        log_prior = graph.reduce("ReduceSum", graph.reduce("ReduceLogSumExp", joint, axes=[1], keepdims=True))

        # Gamma(alpha, beta) on each precision: -log p = (1 - alpha) log(prec) + beta prec + const
        alpha = np.array([self.zero_gamma[0]] + [self.gamma[0]] * (components - 1), np.float32)
        beta = np.array([self.zero_gamma[1]] + [self.gamma[1]] * (components - 1), np.float32)
        hyper_prior = graph.reduce(
            "ReduceSum",
            graph.op(
                "Add",
                graph.op("Mul", log_variances, graph.constant(alpha - 1, "gmm_gamma_alpha")),
                graph.op("Mul", precision, graph.constant(beta, "gmm_gamma_beta")),
            ),
        )
        return graph.scale(graph.op("Sub", hyper_prior, log_prior), self.tau / inputs.num_samples)

    def report(self, parameters: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = {key: np.asarray(parameters[key], np.float64) * self.lr_scale[key] for key in parameters}
        logits = values["logits"]
        log_softmax = logits - np.logaddexp.reduce(logits)
        return {
            "means": np.concatenate([[0.0], values["means"]]).astype(np.float32),
            "log_variances": values["log_variances"].astype(np.float32),
            "log_mixing": np.concatenate(
                [[math.log(self.pi_zero)], math.log1p(-self.pi_zero) + log_softmax]
            ).astype(np.float32),
        }


def _log_joint(graph: GraphBuilder, weights: ir.Value, count: int, means: ir.Value, log_variances: ir.Value,
               precision: ir.Value, log_mixing: ir.Value) -> ir.Value:
    """The [count, J] table of log(pi_j N(w_i | mu_j, var_j)) for weights [count, 1].

    log(pi_j N(w | mu_j, var_j)) = [1, w, w^2] . [c_j, prec_j mu_j, -prec_j / 2] with
    c_j = log pi_j - log(2 pi var_j) / 2 - prec_j mu_j^2 / 2: one MatMul builds the table, far
    fewer passes over it (forward and backward) than broadcasting Sub/Mul, whose ORT gradients
    each add a slow reduction over all weights.
    """
    scaled_means = graph.op("Mul", precision, means)
    log_normaliser = graph.op("Add", log_variances, graph.scalar(math.log(2 * math.pi)))
    constant = graph.op(
        "Sub", log_mixing, graph.scale(graph.op("Add", log_normaliser, graph.op("Mul", scaled_means, means)), 0.5)
    )
    coefficients = graph.op(
        "Concat",
        graph.unsqueeze(constant, [0]),
        graph.unsqueeze(scaled_means, [0]),
        graph.unsqueeze(graph.scale(precision, -0.5), [0]),
        axis=0,
    )
    ones = graph.op(
        "ConstantOfShape",
        graph.constant(np.array([count, 1], np.int64), "gmm_shape"),
        value=ir.tensor(np.ones(1, np.float32)),
    )
    powers = graph.op("Concat", ones, weights, graph.op("Mul", weights, weights), axis=1)
    return graph.op("MatMul", powers, coefficients)


def snap_to_mixture(
    weights: Mapping[str, np.ndarray],
    extra: Mapping[str, np.ndarray],
    merge_threshold: float = 0.0,
    *,
    distance: str = "kl",
    prefix: str = "gmm.",
) -> dict[str, np.ndarray]:
    """Quantizes weights to the learned mixture of `GaussianMixturePrior`.

    Components closer than ``merge_threshold`` (symmetric KL divergence, or ``distance="abs"``:
    absolute mean difference) are merged, closest pair first, into one moment-matched component;
    a merge with the zero component stays at 0. Each weight then becomes the mean of its most
    responsible component, and weights owned by the zero component become exactly 0.

    Args:
        weights: name -> weight values (e.g. `FinetuneResult.weights`).
        extra: `FinetuneResult.extra`, holding ``<prefix>means``, ``log_variances``, ``log_mixing``.
        merge_threshold: merge components whose distance is below this (0: never merge).
        distance: ``"kl"`` or ``"abs"``.
        prefix: key prefix of the prior's entries in ``extra``.

    Returns:
        name -> snapped weights (same shapes and dtypes).
    """
    if distance not in ("kl", "abs"):
        raise OnnxcompError(f"distance must be 'kl' or 'abs', got {distance!r}")
    try:
        means = np.asarray(extra[prefix + "means"], np.float64)
        variances = np.exp(np.asarray(extra[prefix + "log_variances"], np.float64))
        mixing = np.exp(np.asarray(extra[prefix + "log_mixing"], np.float64))
    except KeyError as missing:
        raise OnnxcompError(f"no mixture parameters in extra: {missing} missing") from None
    components = [[means[j], variances[j], mixing[j], j == 0] for j in range(len(means))]

    def gap(a, b) -> float:
        if distance == "abs":
            return abs(a[0] - b[0])
        squared = (a[0] - b[0]) ** 2
        return 0.25 * (a[1] / b[1] + b[1] / a[1] - 2 + squared * (1 / a[1] + 1 / b[1]))

    while len(components) > 1:
        pairs = [(gap(a, b), i, k) for i, a in enumerate(components) for k, b in enumerate(components) if i < k]
        closest, i, k = min(pairs)
        if closest >= merge_threshold:
            break
        a, b = components[i], components[k]
        weight = a[2] + b[2]
        mean = 0.0 if (a[3] or b[3]) else (a[2] * a[0] + b[2] * b[0]) / weight
        second_moment = (a[2] * (a[1] + a[0] ** 2) + b[2] * (b[1] + b[0] ** 2)) / weight
        components[i] = [mean, max(second_moment - mean**2, 1e-12), weight, a[3] or b[3]]
        del components[k]
    logger.debug("snap_to_mixture: %d components after merging", len(components))

    means = np.array([c[0] for c in components])
    variances = np.array([c[1] for c in components])
    log_weights = np.log(np.array([c[2] for c in components])) - 0.5 * np.log(variances)
    centres = np.where([c[3] for c in components], 0.0, means)
    snapped = {}
    for name, array in weights.items():
        flat = np.asarray(array, np.float64).ravel()
        owner = np.empty(flat.shape, np.int64)
        for start in range(0, flat.size, 1 << 18):  # bounds memory at (chunk x components)
            chunk = flat[start : start + (1 << 18), None]
            owner[start : start + chunk.shape[0]] = np.argmax(
                log_weights - 0.5 * (chunk - means) ** 2 / variances, axis=1
            )
        snapped[name] = centres[owner].reshape(np.shape(array)).astype(np.asarray(array).dtype)
    return snapped
