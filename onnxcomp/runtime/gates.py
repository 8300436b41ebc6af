"""Stochastic per-channel gates for variational information bottleneck training (VIBNet).

Dai et al. 2018 ("Compressing Neural Networks using the Variational Information Bottleneck")
multiply each neuron's output by a gate ``z = mu + sigma * eps`` with ``eps ~ N(0, 1)`` drawn
per sample and per neuron, ``sigma = exp(logD / 2)``, and add the per-layer penalty
``gamma * sum log(1 + mu^2 / sigma^2)`` to the task loss. Neurons whose signal-to-noise ratio
``alpha = mu^2 / sigma^2`` falls low carry no information and are removed.

`insert_gates` edits an inference model so that `finetune` can train it unchanged: the gate
parameters ``mu`` and ``logD`` become float initializers (trained like weights), each gated
channel group gets one ``Mul`` after every producer output of the group, and the noise comes
from ``RandomNormalLike`` inside the graph, so each training step draws fresh noise. ONNX
Runtime's training API runs the same forward graph for training and evaluation, so the noise is
switched by an extra per-sample graph input, `NOISE_INPUT` (``[batch, 1]``): feed ones to train
and zeros to evaluate with the deterministic gate ``z = mu``. `GateKLPenalty` is the
`Regularizer` that adds the penalty.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxcomp.channels import ChannelAnalysis
from onnxcomp.errors import OnnxcompError
from onnxcomp.runtime.regularizers import Regularizer
from onnxcomp.runtime.training_graph import BATCH_DIM, GraphBuilder, PenaltyInputs

logger = logging.getLogger(__name__)

__all__ = ["NOISE_INPUT", "Gate", "GateKLPenalty", "gate_mean", "insert_gates", "log_alpha", "noise_switch"]

NOISE_INPUT = "onnxcomp_vib_noise"


@dataclasses.dataclass(frozen=True)
class Gate:
    """The gate of one channel group: its trainable tensors and where it multiplies."""

    group: str  # channel group name (see onnxcomp.channels)
    size: int
    mu: str  # initializer names; the graph uses ``lr_scale * stored value``
    log_d: str
    values: tuple[str, ...]  # the gated values (the group's origin outputs)
    lr_scale: float = 1.0


def noise_switch(count: int, on: bool) -> np.ndarray:
    """The `NOISE_INPUT` array for ``count`` samples: ones draw noise, zeros give ``z = mu``."""
    return np.full((count, 1), 1.0 if on else 0.0, np.float32)


def insert_gates(
    model: ir.Model,
    analysis: ChannelAnalysis,
    groups: Sequence[str],
    *,
    init_mu: float = 1.0,
    init_mu_std: float = 0.01,
    init_log_d: float = -9.0,
    lr_scale: float = 1.0,
    seed: int = 0,
) -> dict[str, Gate]:
    """Inserts a stochastic gate on every channel of ``groups``, in place.

    All origins of a group (e.g. the convolutions joined by a residual ``Add``) share one gate,
    applied right at each origin's output (before any activation), so folding ``mu`` into the
    producer's weight rows and bias reproduces the deterministic graph exactly. Model input
    groups are gated on the feature value the analysis tracks (e.g. after ``Flatten``).

    Args:
        model: the model ``analysis`` was computed on; gains `NOISE_INPUT` and gate tensors.
        analysis: `onnxcomp.channels.analyze_channels` of ``model``.
        groups: names of unblocked channel groups to gate.
        init_mu: mean of the initial ``mu`` (drawn from N(init_mu, init_mu_std^2)).
        init_mu_std: spread of the initial ``mu``.
        init_log_d: initial ``logD`` (log variance of the noise).
        lr_scale: the graph uses ``lr_scale * stored`` for ``mu`` and ``logD``, so the gate
            parameters effectively train with ``lr_scale`` times the optimizer's rate.
        seed: seeds the initial ``mu``.

    Returns:
        group name -> `Gate`.
    """
    graph = model.graph
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    builder = GraphBuilder(graph, opset)
    rng = np.random.default_rng(seed)
    if NOISE_INPUT in {v.name for v in graph.inputs}:
        raise OnnxcompError("the model already has VIB gates")
    noise = ir.Value(name=NOISE_INPUT, shape=ir.Shape([BATCH_DIM, 1]), type=ir.TensorType(ir.DataType.FLOAT))
    graph.inputs.append(noise)
    origins = {origin.id: origin for origin in analysis.origins}
    gates: dict[str, Gate] = {}
    for name in groups:
        group = analysis.group(name)
        if group.blocked:
            raise OnnxcompError(f"channel group {name!r} is blocked ({group.blocked_reason}); it cannot be gated")
        mu = builder.constant((rng.normal(init_mu, init_mu_std, group.size) / lr_scale).astype(np.float32),
                              f"onnxcomp_vib_mu_{group.id}")
        log_d = builder.constant(np.full(group.size, init_log_d / lr_scale, np.float32), f"onnxcomp_vib_logd_{group.id}")
        gate = _gate_value(builder, noise, builder.scale(mu, lr_scale), builder.scale(log_d, lr_scale), group.size)
        gated = []
        for origin_id in group.origins:
            origin = origins[origin_id]
            dims = analysis.dims(origin.value)
            _multiply(builder, origin.value, gate, origin.axis, None if dims is None else len(dims))
            gated.append(origin.value.name)
        gates[group.name] = Gate(group.name, group.size, mu.name, log_d.name, tuple(gated), lr_scale)
        logger.debug("Gated group %s (%d channels) at %s", group.name, group.size, ", ".join(gated))
    graph.sort()
    return gates


def _gate_value(builder: GraphBuilder, noise: ir.Value, mu: ir.Value, log_d: ir.Value, size: int) -> ir.Value:
    """``mu + exp(logD / 2) * eps * noise``, ``[batch, size]``, eps drawn afresh every run."""
    switch = builder.op("Expand", noise, builder.constant(np.array([1, size], np.int64), "onnxcomp_vib_shape"))
    # eps depends only on the noise input, so no gradient flows through RandomNormalLike.
    eps = builder.op("Mul", builder.op("RandomNormalLike", switch), switch)
    sigma = builder.op("Exp", builder.scale(log_d, 0.5))
    return builder.op("Add", mu, builder.op("Mul", sigma, eps))


def _multiply(builder: GraphBuilder, value: ir.Value, gate: ir.Value, axis: int, rank: int | None) -> None:
    """Replaces every use of ``value`` by ``value * gate`` broadcast along ``axis``."""
    if value.is_graph_output():
        raise OnnxcompError(f"cannot gate graph output '{value.name}'")
    if rank is None or axis < 1:
        raise OnnxcompError(f"cannot gate '{value.name}': needs a known rank and a channel axis after the batch axis")
    trailing = list(range(axis + 1, rank))
    leading = list(range(1, axis))
    broadcast = gate
    if leading or trailing:
        broadcast = builder.unsqueeze(gate, leading + trailing)
    uses = list(value.uses())
    product = builder.op("Mul", value, broadcast)
    for use in uses:
        use.node.replace_input_with(use.idx, product)


class GateKLPenalty(Regularizer):
    """``sum_g gamma_g * sum_i log(1 + mu_i^2 / exp(logD_i))`` over the gated groups.

    The VIBNet bound on the information each layer passes on, in units of the mean per-sample
    task loss. ``gamma`` is one number for all groups or one per group name.
    """

    name = "vib"

    def __init__(self, gates: Mapping[str, Gate], gamma: float | Mapping[str, float]):
        self.gates = dict(gates)
        if isinstance(gamma, Mapping):
            missing = [g for g in self.gates if g not in gamma]
            if missing:
                raise OnnxcompError(f"no gamma for gated group(s) {', '.join(missing)}")
            self.gamma = {g: float(gamma[g]) for g in self.gates}
        else:
            self.gamma = {g: float(gamma) for g in self.gates}

    def add_penalty(self, graph: GraphBuilder, inputs: PenaltyInputs) -> ir.Value:
        terms = []
        for name, gate in self.gates.items():
            try:
                mu, log_d = inputs.weights[gate.mu], inputs.weights[gate.log_d]
            except KeyError:
                raise OnnxcompError(f"the gate tensors of group {name!r} must be trainable") from None
            mu, log_d = graph.scale(mu, gate.lr_scale), graph.scale(log_d, gate.lr_scale)
            alpha = graph.op("Mul", graph.op("Mul", mu, mu), graph.op("Exp", graph.scale(log_d, -1.0)))
            kl = graph.reduce("ReduceSum", graph.op("Log", graph.op("Add", alpha, graph.scalar(1.0))))
            terms.append(graph.scale(kl, self.gamma[name]))
        return graph.add_all(terms)


def log_alpha(gate: Gate, parameters: Mapping[str, np.ndarray]) -> np.ndarray:
    """``log(mu^2 / sigma^2)`` per channel from the trained stored tensors."""
    mu = np.asarray(parameters[gate.mu], np.float64) * gate.lr_scale
    log_d = np.asarray(parameters[gate.log_d], np.float64) * gate.lr_scale
    with np.errstate(divide="ignore"):
        return 2.0 * np.log(np.abs(mu)) - log_d


def gate_mean(gate: Gate, parameters: Mapping[str, np.ndarray]) -> np.ndarray:
    """The deterministic gate ``mu`` per channel from the trained stored tensors."""
    return (np.asarray(parameters[gate.mu], np.float64) * gate.lr_scale).astype(np.float32)
