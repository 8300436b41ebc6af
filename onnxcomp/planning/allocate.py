"""Byte-budget allocation: per-layer sparsity, bit-width and encoding under a size target.

Each layer gets a list of candidate settings priced by the real encoder's byte model and by
the squared error they cause (relative to the layer's energy, scaled by the layer's measured
sensitivity). A Lagrangian relaxation picks, for a multiplier lambda, each layer's setting that
minimises distortion + lambda * bytes; bisection on lambda meets the budget, and a greedy
knapsack step then spends the slack the convex hull leaves on the best distortion-per-byte
upgrades.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from onnxcomp.planning.pricing import Candidate, LayerOptions, layer_options, pareto  # noqa: F401  (layer_options, pareto: re-exported)

logger = logging.getLogger(__name__)

# Tolerances tried in turn: a layer's candidates must keep its mean per-channel relative error
# within this factor of per-channel int8's; the first factor whose restricted plan fits the budget
# is used, none when no factor fits (budgets well under 8 bits per weight).
GUARD_FACTORS = (1.0, 2.0, 4.0, 16.0)
# ...with this slack: float16 scales (`channel_scales`) round each channel's range up by < 2**-11,
# which costs the scaled 8-bit grid ~0.1% of per-channel int8's error.
GUARD_TOLERANCE = 1.01
# From this many bits per weight of budget, when the guard does not fit at any factor, the guarded
# layers are planned channel-aware (`channel_aware`): no pruning, each candidate charged the worse of
# its squared error and its mean per-channel error, sensitivities shrunk towards their geometric mean.
CHANNEL_AWARE_BITS = 4.0
# ...the shrinkage: log sensitivity moves this share of the way to the mean of the logs.
SENSITIVITY_SHRINK = 0.5


@dataclasses.dataclass
class Allocation:
    choices: dict[str, Candidate]
    estimated_bytes: int
    distortion: float
    load: int = 0  # estimated ns of decoding at session creation (encoding.fold_cost)


# Session creation: without fine-tuning the allocator keeps the estimated decode time of a plan
# (encoding.fold_cost) within (MAX_LOAD_RATIO - 1) times the original model's estimated load, so
# that session creation stays within MAX_LOAD_RATIO of the original's (3x is promised; the margin
# covers the estimate's error).
MAX_LOAD_RATIO = 2.5
LOAD_NS_PER_BYTE = 1.1
# ...unless meeting it raises the plan's weighted distortion by more than this factor: size and
# accuracy come first (LeNet-300-100 at 1/12: 1.08x, taken; at 1/24 the plan within the budget
# pruned 95% of the first layer, 1.20x by the estimate and 3 points of accuracy, so not taken).
LOAD_DISTORTION_TOLERANCE = 1.1


def load_budget(original_bytes: int) -> int:
    """Decode nanoseconds (encoding.fold_cost) a plan may add for a model of `original_bytes`."""
    return int((MAX_LOAD_RATIO - 1) * LOAD_NS_PER_BYTE * original_bytes)


def _pick(layers: list[LayerOptions], lam: float, mu: float = 0.0) -> list[Candidate]:
    return [min(layer.candidates, key=lambda c: layer.cost(c) + lam * c.bytes + mu * c.load) for layer in layers]


def allocate(layers: list[LayerOptions], budget: int, max_load: int | None = None) -> Allocation | None:
    """Choose one candidate per layer minimising weighted distortion with total bytes <= budget
    and, when `max_load` is given and can be met, total decode time <= max_load (a second
    Lagrange multiplier on load, bisected; when no plan meets it, or meeting it raises the
    weighted distortion beyond LOAD_DISTORTION_TOLERANCE, the plain optimum stands).

    Int8 guard (`guarded_layers`): where the budget allows it (GUARD_FACTORS, tightest first), each guarded layer
    is planned among its candidates whose mean per-channel relative error is within the factor
    of per-channel int8's (`LayerOptions.int8_channel`), so at about 8 bits per weight no layer is
    coded worse than per-channel int8 would code it; squared error over the whole tensor alone
    rounds narrow channels away.

    Returns None when even the smallest candidates exceed the budget.
    """
    layers = guarded_layers(layers, budget)
    plan = allocate_at_load_price(layers, budget, 0.0, None)
    if plan is None or max_load is None or plan.load <= max_load:
        return plan
    low, high = 0.0, 1e-12
    while True:
        trial = allocate_at_load_price(layers, budget, high, max_load)
        if trial is not None and trial.load <= max_load:
            break
        if high > 1e6:
            logger.debug("no plan within the load budget (%d > %d ns of decoding)", plan.load, max_load)
            return plan
        low, high = high, high * 8
    best = trial
    for _ in range(24):
        middle = (low * high) ** 0.5 if low else high / 2
        trial = allocate_at_load_price(layers, budget, middle, max_load)
        if trial is not None and trial.load <= max_load:
            best, high = trial, middle
        else:
            low = middle
        if high - low <= 0.1 * high:
            break
    if best.distortion > LOAD_DISTORTION_TOLERANCE * plan.distortion:
        logger.debug("the plan within the load budget costs %.2fx the distortion: keeping the plain plan",
                     best.distortion / max(plan.distortion, 1e-30))
        return plan
    return best


def guarded_layers(layers: list[LayerOptions], budget: int) -> list[LayerOptions]:
    """The layers restricted by the int8 guard at the tightest GUARD_FACTORS that fits `budget`;
    from CHANNEL_AWARE_BITS per weight, where no factor fits, the layers planned channel-aware
    (`channel_aware`); below, the layers without their scaled candidates (the plain plan). In the
    first two, layers outside the guard keep at least the plain plan's quality (`_unguarded_floor`)."""
    if not any(layer.int8_channel is not None for layer in layers):
        return layers
    plain = [unscaled(layer) for layer in layers]
    floored = _unguarded_floor(layers, plain, budget)
    for factor in GUARD_FACTORS:
        restricted = [within_guard(layer, factor) for layer in floored]
        if sum(layer.smallest.bytes for layer in restricted) <= budget:
            logger.debug("int8 guard: channel error within %.0fx of per-channel int8", factor)
            return restricted
    params = sum(int(np.prod(layer.shape)) for layer in layers)
    if 8 * budget < CHANNEL_AWARE_BITS * params:
        return plain
    aware = channel_aware(floored)
    if sum(layer.smallest.bytes for layer in aware) > budget:
        return plain
    logger.debug("int8 guard does not fit: channel-aware plan")
    return aware


def _unguarded_floor(layers: list[LayerOptions], plain: list[LayerOptions], budget: int) -> list[LayerOptions]:
    """`layers` with each layer outside the guard (embedding tables, biases, tiny weights) kept to
    candidates at most as distorted as the plain plan (`plain`, squared error alone) would code it:
    the guard and the channel-aware plan spend more bytes on the guarded layers, and must not take
    them from the rest. paraphrase-MiniLM-L3 data-free at 1/8 without this floor: every MatMul at
    per-channel int8 and the 30522-row word embedding left 2 bits (relative error 0.35), mean
    cosine of pooled sentence embeddings 0.942; with it, the plain plan (0.980). At 1/6.5 the
    MatMuls keep 6-8-bit scaled codings beside a 4-bit embedding: 0.9935, was 0.9845 (3 bits)."""
    if all(layer.int8_channel is not None for layer in layers):
        return layers
    reference = allocate_at_load_price(plain, budget, 0.0, None)
    if reference is None:
        return layers
    result = []
    for layer in layers:
        if layer.int8_channel is not None:
            result.append(layer)
            continue
        floor = reference.choices[layer.name].distortion
        result.append(dataclasses.replace(layer, candidates=[c for c in layer.candidates if c.distortion <= floor]
                                          or [layer.dense]))
    return result


def channel_aware(layers: list[LayerOptions]) -> list[LayerOptions]:
    """Layers planned for a budget of several bits per weight that cannot keep every layer within
    per-channel int8's error (the graph's own bytes alone can exceed what 8 bits leave).

    Measured on shipped CNNs (rapidocr's text-angle classifier at 1/4, judged on the crops its
    application feeds it), three things the squared-error plan gets wrong there:
    - pruning: half the entries of a squeeze-excite 1x1 conv pruned at the squared error of a
      5-bit scaled coding moved the outputs 200x more (the pruned small weights do not average
      out: post-activation inputs have non-zero means, so the output shifts);
    - squared error over the tensor hides narrow channels rounded away (`channel_distortion`),
      so each guarded candidate is charged the worse of the two;
    - sensitivities measured on few (or generated) samples spread over three decades, and the
      plan starved layers the measurement underrated; log sensitivities are shrunk halfway
      (SENSITIVITY_SHRINK) towards their mean.
    Layers without the guard (biases, tiny weights, integer or half-precision ones) keep their
    candidates and squared error."""
    logs = [np.log(layer.sensitivity) for layer in layers if layer.sensitivity > 0]
    centre = float(np.mean(logs)) if logs else 0.0
    result = []
    for layer in layers:
        sensitivity = layer.sensitivity
        if sensitivity > 0:
            sensitivity = float(np.exp(centre + SENSITIVITY_SHRINK * (np.log(sensitivity) - centre)))
        if layer.int8_channel is None:
            result.append(dataclasses.replace(layer, sensitivity=sensitivity))
            continue
        kept = [c for c in layer.candidates if c.quant is None or c.sparsity == 0.0]
        result.append(dataclasses.replace(layer, candidates=kept, sensitivity=sensitivity, channel_objective=True))
    return result


def unscaled(layer: LayerOptions) -> LayerOptions:
    """`layer` without its scaled candidates, as the plan without the guard sees it: scaled lookups are not GPTQ-compensated, and
    where squared error alone decides (well under 8 bits per weight) per-tensor codebooks placed
    by it did as well or better (calibrated LeNet-300 at 1/12: 98.30% plain, 98.22% with scaled)."""
    if layer.int8_channel is None:
        return layer
    return dataclasses.replace(layer, candidates=[c for c in layer.candidates if c.kind != "scaled"])


def within_guard(layer: LayerOptions, factor: float) -> LayerOptions:
    """`layer` kept to its candidates whose mean per-channel relative error is within `factor`
    (times GUARD_TOLERANCE) of per-channel int8's; the dense one when none is. Layers outside the
    guard are returned as they are."""
    if layer.int8_channel is None:
        return layer
    limit = factor * layer.int8_channel * GUARD_TOLERANCE
    kept = [c for c in layer.candidates if c.channel <= limit]
    return dataclasses.replace(layer, candidates=kept or [layer.dense])


def allocate_at_load_price(layers: list[LayerOptions], budget: int, mu: float, max_load: int | None) -> Allocation | None:
    """The plan for `layers` as they are (no guard): per layer the candidate minimising weighted
    distortion + lambda * bytes + `mu` * load, lambda bisected to meet `budget`, then leftover
    bytes spent greedily (within `max_load` when given). None when the smallest candidates exceed
    `budget`."""
    if not layers:
        return Allocation({}, 0, 0.0)
    minimum = sum(layer.smallest.bytes for layer in layers)
    if minimum > budget:
        return None
    picks = _pick(layers, 0.0, mu)
    if sum(c.bytes for c in picks) > budget:
        low, high = 0.0, 1.0
        while sum(c.bytes for c in _pick(layers, high, mu)) > budget:
            high *= 4
            if high > 1e30:
                picks = [layer.smallest for layer in layers]
                break
        else:
            for _ in range(60):
                middle = (low + high) / 2
                if sum(c.bytes for c in _pick(layers, middle, mu)) > budget:
                    low = middle
                else:
                    high = middle
            picks = _pick(layers, high, mu)
    picks = _spend_slack(layers, picks, budget, max_load)
    total = sum(c.bytes for c in picks)
    distortion = sum(layer.cost(c) for layer, c in zip(layers, picks))
    return Allocation({layer.name: c for layer, c in zip(layers, picks)}, total, distortion, sum(c.load for c in picks))


def _spend_slack(layers: list[LayerOptions], picks: list[Candidate], budget: int,
                 max_load: int | None = None) -> list[Candidate]:
    """Greedy knapsack: take the upgrade with the best distortion saved per byte that still fits
    (the bytes, and the load budget when one is given and the picks meet it)."""
    picks = list(picks)
    slack = budget - sum(c.bytes for c in picks)
    load_slack = None if max_load is None else max_load - sum(c.load for c in picks)
    if load_slack is not None and load_slack < 0:
        load_slack = None
    while slack > 0:
        best = None
        for index, (layer, current) in enumerate(zip(layers, picks)):
            for candidate in layer.candidates:
                extra = candidate.bytes - current.bytes
                gain = layer.cost(current) - layer.cost(candidate)
                if 0 < extra <= slack and gain > 0 and (load_slack is None or candidate.load - current.load <= load_slack):
                    score = gain / extra
                    if best is None or score > best[0]:
                        best = (score, index, candidate)
        if best is None:
            break
        _, index, candidate = best
        slack -= candidate.bytes - picks[index].bytes
        if load_slack is not None:
            load_slack -= candidate.load - picks[index].load
        picks[index] = candidate
    return picks
