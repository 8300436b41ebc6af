"""Neuron elimination by variational information bottleneck training (VIBNet, Dai et al. 2018).

`vib_eliminate` is the whole method on an ONNX model:

1. gate every unblocked channel group (`onnxcomp.runtime.gates.insert_gates`: ``z = mu +
   sigma * eps`` per neuron, model input features included) and train weights and gates on
   ONNX Runtime's training backend with ``task loss + gamma * sum log(1 + mu^2 / sigma^2)``;
2. fold every ``mu`` into the weights (`fold_gate_means`: the deterministic gated network,
   exactly) and drop the neurons whose ``log alpha = log(mu^2 / sigma^2)`` is below
   ``threshold`` with `EliminateNeuronsPass`, which replaces each by its mean gated activation
   (``mu`` times the activation's mean, measured on up to ``MEAN_SAMPLES`` training samples)
   folded into the next layers' biases - a dropped gate is noisy, not necessarily near zero;
3. optionally fine-tune the smaller network (no gates) to recover accuracy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxcomp.channels import ChannelAnalysis, analyze_channels, constant, segment_offsets
from onnxcomp.errors import OnnxcompError
from onnxcomp.passes.eliminate_neurons import EliminateNeuronsPass
from onnxcomp.model.weights import find_weights

logger = logging.getLogger(__name__)

__all__ = ["fold_gate_means", "vib_eliminate"]

MEAN_SAMPLES = 2048  # samples that measure the dropped neurons' mean activations


def fold_gate_means(model: ir.Model, means: Mapping[str, np.ndarray], analysis: ChannelAnalysis | None = None) -> None:
    """Multiplies each channel of the named groups by its gate mean inside the weights, in place.

    For a layer's output channels the producer's weight rows and bias entries are scaled, which
    is exact whatever follows (the producer is linear in them). A model-input group has no
    producer: the first layers' input columns are scaled instead, which is exact because they
    read the features directly.

    Args:
        model: the model (without gates).
        means: channel group name -> one factor per channel.
        analysis: `analyze_channels(model)`, if already computed.
    """
    analysis = analysis or analyze_channels(model)
    factors: dict[int, np.ndarray] = {}  # origin id -> factors
    for name, mean in means.items():
        group = analysis.group(name)
        mean = np.asarray(mean, np.float64).reshape(-1)
        if mean.size != group.size:
            raise OnnxcompError(f"{mean.size} gate means for group {name!r} of {group.size} channels")
        if group.blocked:
            raise OnnxcompError(f"channel group {name!r} is blocked ({group.blocked_reason})")
        for origin_id in group.origins:
            factors[origin_id] = mean
    origins = {origin.id: origin for origin in analysis.origins}
    input_origins = {i for i in factors if origins[i].kind == "input"}
    readers: dict[int, set[ir.Node]] = {i: set() for i in input_origins}
    for edit in analysis.tensor_edits:
        if edit.role in ("weight", "bias"):
            wanted = [s for s in edit.layout if s.origin in factors and s.origin not in input_origins]
        elif edit.role == "consumer":
            wanted = [s for s in edit.layout if s.origin in input_origins]
        else:
            continue
        if not wanted:
            continue
        for segment in wanted:
            if edit.role == "consumer":
                readers[segment.origin].add(edit.node)
        _scale_input(edit.node, edit.input_index, edit.axis, edit.layout, factors, {s.origin for s in wanted})
    for origin_id, nodes in readers.items():
        value = origins[origin_id].value
        direct = {use.node for use in value.uses()}
        if not direct <= nodes:
            others = ", ".join(sorted(n.name or n.op_type for n in direct - nodes))
            raise OnnxcompError(f"cannot fold the gate of '{origins[origin_id].label}': its features reach {others} "
                                "before a weight layer")


def _scale_input(node: ir.Node, index: int, axis: int, layout, factors: Mapping[int, np.ndarray], origins: set) -> None:
    """Scales the constant at ``node.inputs[index]`` along ``axis`` by the origins' factors."""
    value = node.inputs[index]
    array = constant(value)
    if array is None:
        raise OnnxcompError(f"input {index} of {node.name or node.op_type} is not a constant")
    array = array.astype(np.float32)
    length = sum(s.length for s in layout)
    if axis == -1:
        if array.ndim == 0 or array.shape[-1] != length:  # a broadcast bias: give it one entry per channel
            array = np.broadcast_to(array, (*array.shape[:-1], length) if array.ndim else (length,)).copy()
        axis = array.ndim - 1
    scale = np.ones(length, np.float32)
    for segment, offset, _ in segment_offsets(layout):
        if segment.origin in origins:
            scale[offset : offset + segment.length] = np.repeat(factors[segment.origin], segment.inner)
    shape = [1] * array.ndim
    shape[axis] = length
    array = array * scale.reshape(shape)
    if len(value.uses()) > 1:  # shared (e.g. a bias): this node gets its own copy
        name = f"{value.name}_{node.name or 'gated'}"
        copy = ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(value.dtype),
                        const_value=ir.tensor(array, name=name))
        node.graph.register_initializer(copy)
        node.replace_input_with(index, copy)
    else:
        value.const_value = ir.tensor(array, name=value.name)
        value.shape = ir.Shape(array.shape)


def _copy(model: ir.Model) -> ir.Model:
    return ir.serde.deserialize_model(ir.serde.serialize_model(model))


def vib_eliminate(
    model: ir.Model,
    inputs: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    eval_inputs: Mapping[str, np.ndarray] | None = None,
    eval_labels: np.ndarray | None = None,
    groups: Sequence[str] | None = None,
    gamma: float | Mapping[str, float] = 1e-5,
    threshold: float = 0.0,
    epochs: int = 30,
    finetune_epochs: int = 0,
    batch_size: int = 64,
    lr: float = 1e-3,
    finetune_lr: float = 1e-4,
    distill: bool = False,
    gate_lr_scale: float = 1.0,
    init_log_d: float = -9.0,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    first_round_epochs: int = 0,
) -> tuple[ir.Model, dict]:
    """Removes the neurons a VIB-gated training run finds uninformative (VIBNet).

    Args:
        model: inference classifier (first output: logits); not modified.
        inputs: graph input name -> training samples.
        labels: int class per training sample.
        eval_inputs: held-out samples (progress lines, and picking the fine-tuning epoch).
        eval_labels: held-out labels.
        groups: channel groups to gate (names from `analyze_channels`); default all unblocked.
        gamma: penalty weight, one for all groups or one per group name.
        threshold: neurons with ``log alpha < threshold`` are removed (VIBNet: 0, i.e.
            ``mu^2 < sigma^2``).
        epochs: gated training epochs (cosine learning rate).
        finetune_epochs: training epochs of the pruned network without gates (0: none).
        batch_size: samples per step.
        lr: peak AdamW rate of the gated training.
        finetune_lr: peak rate of the fine-tuning.
        distill: fine-tune on a 50/50 mix of the labels and the original model's outputs
            (temperature 2) instead of the labels alone.
        gate_lr_scale: the gate parameters train with this times ``lr``.
        init_log_d: initial noise log-variance (``mu`` starts near 1).
        seed: seeds initial gates and shuffling.
        log: called with progress lines.
        first_round_epochs: when > 0, a first gated round of this many epochs on the whole
            network removes what it finds uninformative (``log alpha < threshold``), and the
            `epochs` of gated training then run, with new gates, on the smaller network, whose
            epochs cost a fraction of the whole one's (LeNet-300-100: 4 + 40 gated epochs at
            gamma 2e-4 kept 120/82/28 of 784/300/100 in 75 s; one round of 30: 131/82/45 in 450 s).

    Returns:
        ``(smaller model, report)``; the report has per group ``size``, ``kept`` and the
        ``log_alpha`` values, parameter counts, and the training histories.

    Raises:
        OnnxcompError: bad arguments, no groups to gate, or a model the training backend cannot run.
    """
    from onnxcomp.runtime import gates as gates_module
    from onnxcomp.runtime.training import TrainConfig, finetune, model_forward_logits

    started = time.perf_counter()
    analysis = analyze_channels(model)
    names = list(groups) if groups is not None else [g.name for g in analysis.groups if not g.blocked]
    if not names:
        reasons = "; ".join(f"{g.name}: {g.blocked_reason}" for g in analysis.groups) or "no weight layers"
        raise OnnxcompError(f"no channel group can be gated ({reasons})")

    def gated_round(network: ir.Model, group_names: list[str], round_epochs: int):
        """Train `network` with gates on `group_names`; (gates, the finetune result)."""
        weight_names = [w.name for w in find_weights(network) if w.value.dtype == ir.DataType.FLOAT]
        gated = _copy(network)
        gates = gates_module.insert_gates(gated, analyze_channels(gated), group_names, init_log_d=init_log_d,
                                          lr_scale=gate_lr_scale, seed=seed)
        gate_tensors = [t for gate in gates.values() for t in (gate.mu, gate.log_d)]
        noise = gates_module.NOISE_INPUT
        gated_eval = None
        if eval_inputs is not None:
            count = len(next(iter(eval_inputs.values())))
            gated_eval = {**eval_inputs, noise: gates_module.noise_switch(count, on=False)}
        result = finetune(
            ir.serde.serialize_model(gated), weight_names + gate_tensors,
            {**inputs, noise: gates_module.noise_switch(len(labels), on=True)}, labels,
            regularizer=gates_module.GateKLPenalty(gates, gamma),
            eval_inputs=gated_eval, eval_labels=eval_labels,
            config=TrainConfig(epochs=round_epochs, batch_size=batch_size, lr=lr, seed=seed, log=log, stage="VIB gates",
                               restore_best=False),
        )  # fmt: skip
        if result.diverged:
            logger.warning("VIB training diverged; using the last finite weights")
        return gates, result, weight_names

    def eliminated(network: ir.Model, gates, result, weight_names):
        """`network` with the gated weights, gate means folded, uninformative neurons removed."""
        pruned = _copy(network)
        _set_weights(pruned, {name: result.weights[name] for name in weight_names})
        keep, means, alphas = {}, {}, {}
        for name, gate in gates.items():
            log_alpha = gates_module.log_alpha(gate, result.weights)
            mask = log_alpha >= threshold
            if not mask.any():  # a group keeps at least one channel
                mask[int(np.argmax(log_alpha))] = True
            keep[name], alphas[name] = mask, log_alpha
            means[name] = gates_module.gate_mean(gate, result.weights)
        fold_gate_means(pruned, means)
        samples = {name: array[:MEAN_SAMPLES] if np.ndim(array) else array for name, array in inputs.items()}
        return pruned, keep, alphas, EliminateNeuronsPass(keep=keep, samples=samples)(pruned)

    current, sizes, params_before, history, changed = model, {}, None, [], {}
    if first_round_epochs > 0:
        gates, result, weight_names = gated_round(model, names, first_round_epochs)
        current, keep, _, first = eliminated(model, gates, result, weight_names)
        sizes, params_before, history = {name: gate.size for name, gate in gates.items()}, first.params_before, result.history
        changed = {row["name"]: row for row in first.rows}
        if log:
            log("VIB first round kept " + ", ".join(f"{name} {int(mask.sum())}/{mask.size}" for name, mask in keep.items()))
        reduced = {g.name for g in analyze_channels(current).groups if not g.blocked}
        names = [name for name in names if name in reduced]
    gates, result, weight_names = gated_round(current, names, epochs)
    pruned, keep, alphas, elimination = eliminated(current, gates, result, weight_names)
    report: dict = {"groups": {}, "threshold": threshold, "gamma": gamma,
                    "history": history + result.history, "finetune_history": []}
    for name, gate in gates.items():
        report["groups"][name] = {"size": sizes.get(name, gate.size), "kept": int(keep[name].sum()),
                                  "log_alpha": [round(float(a), 3) for a in np.maximum(alphas[name], -1e3)]}
    report["params_before"] = elimination.params_before if params_before is None else params_before
    report["params_after"] = elimination.params_after
    for row in elimination.rows:  # shapes before the first round, after the last
        changed[row["name"]] = changed[row["name"]] | {"after": row["after"]} if row["name"] in changed else row
    report["layers"] = list(changed.values())

    if finetune_epochs > 0:
        remaining = [w.name for w in find_weights(pruned) if w.value.dtype == ir.DataType.FLOAT]
        teacher = model_forward_logits(ir.serde.serialize_model(model), inputs) if distill else None
        tuned = finetune(
            ir.serde.serialize_model(pruned), remaining, inputs, labels,
            teacher_logits=teacher, distill_weight=0.5 if distill else None, temperature=2.0 if distill else 1.0,
            eval_inputs=eval_inputs, eval_labels=eval_labels,
            config=TrainConfig(epochs=finetune_epochs, batch_size=batch_size, lr=finetune_lr, seed=seed, log=log,
                               stage="VIB fine-tune"),
        )  # fmt: skip
        _set_weights(pruned, tuned.weights)
        report["finetune_history"] = tuned.history
    report["seconds"] = time.perf_counter() - started
    return pruned, report


def _set_weights(model: ir.Model, weights: Mapping[str, np.ndarray]) -> None:
    initializers = model.graph.initializers
    for name, array in weights.items():
        initializers[name].const_value = ir.tensor(np.asarray(array, np.float32), name=name)
