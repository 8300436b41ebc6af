"""Quantization search, byte allocation and size parsing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from onnxcomp.encodings import encoding
from onnxcomp.planning import allocate as allocate_module
from onnxcomp.planning.allocate import Allocation, Candidate, LayerOptions, allocate, layer_options, pareto
from onnxcomp.errors import OnnxcompError
from onnxcomp.encodings.quantize import SortedWeights, apply_quantization

SPARSITIES = (0.0, 0.3, 0.5, 0.9, 0.97)


def direct_sse(values: np.ndarray, quantized: np.ndarray, importance: np.ndarray | None) -> float:
    weight = 1.0 if importance is None else np.broadcast_to(importance, values.shape)
    return float(np.sum(weight * (quantized.astype(np.float64) - values) ** 2))


@pytest.fixture
def layers(rng):
    shapes = {"conv": (8, 4, 3, 3), "fc1": (64, 32), "fc2": (10, 100)}
    found = [layer_options(name, (rng.standard_normal(shape) * scale).astype(np.float32), "weight")
             for (name, shape), scale in zip(shapes.items(), (0.3, 1.0, 0.05))]
    found.append(layer_options("fc1.bias", rng.standard_normal(64).astype(np.float32), "bias"))
    return found


# -- SortedWeights --------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "importance"])
def test_kmeans_sse_matches_applied_quantization(rng, weighted):
    values = (0.4 * rng.standard_normal((40, 50))).astype(np.float32)
    importance = rng.uniform(0.1, 5.0, (1, 50)) if weighted else None
    weights = SortedWeights(values, importance)
    for sparsity in SPARSITIES:
        for bits in range(1, 9):
            quant = weights.quantize(sparsity, 1 << bits)
            applied = apply_quantization(values, quant, importance)
            assert quant.sse == pytest.approx(direct_sse(values, applied, importance), rel=1e-6, abs=1e-12)
            assert quant.codebook.dtype == np.float32
            assert np.all(np.diff(quant.codebook) > 0)
            assert quant.codebook.size <= 1 << bits
            assert set(np.unique(applied[applied != 0])) <= set(quant.codebook)


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_more_bits_never_increase_sse(rng, sparsity):
    values = rng.standard_t(3, (60, 70)).astype(np.float32)  # heavy tails, as trained weights have
    weights = SortedWeights(values)
    errors = [weights.quantize(sparsity, 1 << bits).sse for bits in range(1, 9)]
    assert all(later <= earlier * (1 + 1e-9) for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0]


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_sparsity_fraction_respected(rng, sparsity):
    values = rng.standard_normal((33, 31)).astype(np.float32)  # odd size: rounding of the count
    weights = SortedWeights(values)
    pruned_count = int(round(sparsity * values.size))
    for clusters in (2, 15, 255):
        quant = weights.quantize(sparsity, clusters)
        applied = apply_quantization(values, quant)
        assert quant.nonzeros == values.size - pruned_count
        assert np.count_nonzero(applied == 0) == pruned_count
        # The entries pruned are the smallest in magnitude.
        if pruned_count:
            assert np.abs(values[applied == 0]).max() < np.abs(values[applied != 0]).min()


def test_enough_clusters_is_lossless(rng):
    values = rng.choice(np.array([-1.5, -0.25, 0.5, 2.0], np.float32), size=(20, 20))
    quant = SortedWeights(values).quantize(0.0, 4)
    assert quant.sse == pytest.approx(0.0, abs=1e-9)
    assert np.array_equal(apply_quantization(values, quant), values)


def test_existing_zeros_stay_zero(rng):
    values = rng.standard_normal((30, 30)).astype(np.float32)
    values[rng.random(values.shape) < 0.4] = 0.0
    quant = SortedWeights(values).quantize(0.0, 7)
    applied = apply_quantization(values, quant)
    assert np.array_equal(applied == 0, values == 0)


# -- pareto and allocate --------------------------------------------------------------------


def test_layer_options_front_is_monotone(layers):
    for layer in layers:
        front = layer.candidates
        assert len(front) >= 2 or layer.role == "bias"
        assert all(a.bytes <= b.bytes for a, b in zip(front, front[1:])), layer.name
        # no candidate is beaten on bytes, distortion and load cost (and channel error) at once by one
        # of its family (plain, or per-channel scaled: the plain front stays as it was for the probes)
        for a in front:
            assert not any(b is not a and (b.kind == "scaled") == (a.kind == "scaled") and b.bytes <= a.bytes
                           and b.distortion <= a.distortion and b.load <= a.load and b.channel <= a.channel
                           for b in front), layer.name
        # the candidates the plain (size/distortion) allocator can pick still fall as bytes rise
        plain = [c for i, c in enumerate(front) if all(c.distortion < b.distortion for b in front[:i])]
        assert all(a.distortion > b.distortion for a, b in zip(plain, plain[1:])), layer.name
        assert layer.dense.kind == "dense" and layer.dense.distortion == 0.0
        assert layer.dense.bytes == encoding.dense_bytes(int(np.prod(layer.shape)), len(layer.shape))
        assert layer.smallest is front[0]
    bias = next(layer for layer in layers if layer.role == "bias")
    assert all(candidate.sparsity == 0.0 for candidate in bias.candidates)


def test_pareto_drops_dominated_candidates():
    candidates = [Candidate("lookup", 100, 0.5), Candidate("lookup", 120, 0.6), Candidate("sparse", 90, 0.7),
                  Candidate("dense", 400, 0.0), Candidate("lookup", 100, 0.4), Candidate("lookup", 300, 0.0)]
    front = pareto(candidates)
    assert [(c.bytes, c.distortion) for c in front] == [(90, 0.7), (100, 0.4), (300, 0.0)]


def test_allocate_meets_every_budget_and_distortion_falls(layers):
    # The plain Lagrangian plan (the int8 guard trades squared error for per-channel error on purpose).
    layers = [dataclasses.replace(layer, int8_channel=None) for layer in layers]
    smallest = sum(layer.smallest.bytes for layer in layers)
    dense = sum(layer.dense.bytes for layer in layers)
    assert allocate(layers, smallest - 1) is None
    previous = None
    for budget in np.linspace(smallest, dense + 100, 120).astype(int):
        allocation = allocate(layers, int(budget))
        assert allocation is not None
        assert set(allocation.choices) == {layer.name for layer in layers}
        assert allocation.estimated_bytes == sum(c.bytes for c in allocation.choices.values()) <= budget
        assert allocation.distortion == pytest.approx(
            sum(layer.sensitivity * allocation.choices[layer.name].distortion for layer in layers))
        for layer in layers:
            assert allocation.choices[layer.name] in layer.candidates
        if previous is not None:
            assert allocation.distortion <= previous + 1e-12, budget
        previous = allocation.distortion
    at_smallest = allocate(layers, smallest)
    assert all(at_smallest.choices[layer.name] == layer.smallest for layer in layers)
    at_dense = allocate(layers, dense)
    assert at_dense.distortion == 0.0


def test_allocate_gives_sensitive_layers_more_bytes(rng):
    values = rng.standard_normal((64, 64)).astype(np.float32)
    twin = layer_options("robust", values, "weight")
    sensitive = dataclasses.replace(twin, name="sensitive", sensitivity=100.0)
    budget = 2 * twin.smallest.bytes + (twin.dense.bytes - twin.smallest.bytes) // 4
    allocation = allocate([twin, sensitive], budget)
    assert allocation.choices["sensitive"].bytes > allocation.choices["robust"].bytes
    assert allocation.choices["sensitive"].distortion < allocation.choices["robust"].distortion


def test_allocate_without_layers():
    assert allocate([], 0) == Allocation({}, 0, 0.0)


# -- load budget (session creation) ----------------------------------------------------------


def _layer(name: str, *candidates) -> LayerOptions:
    dense = Candidate("dense", 10_000, 0.0)
    return LayerOptions(name, (50, 50), "weight", pareto([dense, *candidates]))


def test_load_budget_picks_the_faster_plan_when_it_costs_little_distortion():
    fast = Candidate("vector", 1000, 0.105, load=10_000)
    slow = Candidate("sparse", 1000, 0.100, 0.7, 3, load=90_000)
    layers = [_layer("a", fast, slow), _layer("b", Candidate("lookup", 1000, 0.05, load=5_000))]
    assert allocate(layers, 2000).choices["a"] is slow  # plain plan: least distortion
    plan = allocate(layers, 2000, max_load=20_000)
    assert plan.choices["a"] is fast and plan.load == 15_000 and plan.estimated_bytes <= 2000


def test_load_budget_gives_way_when_meeting_it_costs_too_much_distortion():
    fast = Candidate("vector", 1000, 0.100 * (allocate_module.LOAD_DISTORTION_TOLERANCE + 0.2), load=10_000)
    slow = Candidate("sparse", 1000, 0.100, 0.7, 3, load=90_000)
    layers = [_layer("a", fast, slow)]
    assert allocate(layers, 1000, max_load=20_000).choices["a"] is slow
    # and a budget nothing meets leaves the plain plan too
    assert allocate([_layer("a", slow)], 1000, max_load=10).choices["a"] is slow


def test_fold_cost_ranks_sparse_above_lookups_and_pairs_below_single_codes():
    count = 235_200
    sparse = encoding.fold_cost("sparse", count, entries=int(0.3 * count))
    lookup = encoding.fold_cost("lookup", count, 4)
    assert sparse > 3 * lookup
    single = encoding.fold_cost("vector", 400_000, 5, dim=2)  # no codebook size given: no pairs
    pairs = encoding.fold_cost("vector", 400_000, 5, dim=2, codebook_rows=32)
    assert pairs < single
    assert encoding.fold_cost("dense", count) == 0


def _channel_ranged_layers(rng):
    """Four conv weights whose output channels span two decades, with sensitivities spread over
    three decades (as measured on generated inputs): one weight looks a thousand times less
    sensitive than the most sensitive."""
    layers = []
    for index, sensitivity in enumerate((1.0, 0.3, 0.03, 0.001)):
        spread = np.logspace(-1, 1, 64)[rng.permutation(64)].astype(np.float32)
        values = (rng.standard_normal((64, 32, 1, 1)) * spread[:, None, None, None]).astype(np.float32)
        layer = layer_options(f"w{index}", values, "weight")
        layer.sensitivity = sensitivity
        layers.append(layer)
    return layers


def test_channel_aware_plan_where_the_int8_guard_does_not_fit(rng):
    """At 7 bits per weight of budget (the decode graphs' own bytes take a share of it) the guard
    fits at no factor: the plan neither prunes nor lets any guarded layer's per-channel error run
    away, however low its measured sensitivity (before: the least sensitive weight coded in 1 bit,
    188,000x per-channel int8's channel error, another pruned by half)."""
    layers = _channel_ranged_layers(rng)
    params = sum(int(np.prod(layer.shape)) for layer in layers)
    budget = int(7 * params / 8)
    assert all(sum(layer.smallest.bytes for layer in (allocate_module.within_guard(layer, factor) for layer in layers)) > budget
               for factor in allocate_module.GUARD_FACTORS)
    plan = allocate(layers, budget)
    assert plan is not None and plan.estimated_bytes <= budget
    for layer in layers:
        chosen = plan.choices[layer.name]
        assert chosen.sparsity == 0.0, (layer.name, chosen.kind, chosen.sparsity)
        assert chosen.channel <= 1000 * layer.int8_channel, (layer.name, chosen.kind, chosen.bits, chosen.channel / layer.int8_channel)
    # the least sensitive layer still gets fewer bits than the most sensitive one
    assert plan.choices["w3"].channel >= plan.choices["w0"].channel


def test_channel_aware_leaves_low_budgets_alone(rng):
    """Under CHANNEL_AWARE_BITS per weight the plan is the plain one (no scaled candidates)."""
    layers = _channel_ranged_layers(rng)
    params = sum(int(np.prod(layer.shape)) for layer in layers)
    plan = allocate(layers, int(3 * params / 8))
    assert plan is not None and all(c.kind != "scaled" for c in plan.choices.values())


def test_guard_does_not_take_bytes_from_unguarded_layers(rng):
    """A sensitive embedding table (outside the guard) beside guarded MatMul weights at 4-5 bits
    per weight: the guard fits at its tightest factor only by squeezing the table (paraphrase-MiniLM-L3
    at 1/8: every MatMul at per-channel int8, the word embedding at 2 bits, relative error 0.35).
    The table keeps at most the distortion the plain plan gives it; the guarded layers get the rest."""
    table = layer_options("table", (rng.standard_normal((2000, 32)) * 0.05).astype(np.float32), "embedding")
    table.sensitivity = 10.0
    weights = [layer_options(f"w{index}", (rng.standard_normal((64, 64)) * np.logspace(-1, 1, 64)[:, None]).astype(np.float32),
                             "weight") for index in range(4)]
    layers = [table] + weights
    assert table.int8_channel is None and all(layer.int8_channel is not None for layer in weights)
    params = sum(int(np.prod(layer.shape)) for layer in layers)
    for bits in (4.0, 4.5, 5.0):
        budget = int(bits * params / 8)
        # the guard alone would fit at its tightest factor
        assert sum(allocate_module.within_guard(layer, 1.0).smallest.bytes for layer in layers) <= budget
        plain = allocate_module.allocate_at_load_price([allocate_module.unscaled(layer) for layer in layers], budget, 0.0, None)
        plan = allocate(layers, budget)
        assert plan is not None and plan.estimated_bytes <= budget
        assert plan.choices["table"].distortion <= plain.choices["table"].distortion, (
            bits, plan.choices["table"].bits, plain.choices["table"].bits)
        # at 5 bits the guard still fits beside the table's share
        assert bits < 5.0 or all(plan.choices[layer.name].channel <= 16 * allocate_module.GUARD_TOLERANCE * layer.int8_channel
                   for layer in weights), bits
