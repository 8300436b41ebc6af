"""pricing (onnxcomp.planning.pricing): the Pareto front of one weight's storage options, what
`layer_options` prices for each role and flag, the cost the allocator minimises, and the values
a candidate decodes to."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.encodings import encoding
from onnxcomp.encodings.quantize import apply_quantization
from onnxcomp.planning.pricing import (GROUPED_BITS, SCALED_BITS, UNIFORM_BITS_SCALED, Candidate, ChannelErrors,
                                       decoded_values, grouped_candidates, layer_options, pareto, vector_candidates)


def relative_sse(values: np.ndarray, decoded: np.ndarray) -> float:
    values = values.astype(np.float64)
    return float(np.sum((values - decoded) ** 2) / np.sum(values * values))


def test_pareto_keeps_candidates_not_beaten_on_every_measure():
    cheap = Candidate("lookup", 10, 0.5)
    beaten = Candidate("lookup", 20, 0.6)  # more bytes and more error
    better = Candidate("lookup", 20, 0.2)
    faster = Candidate("lookup", 30, 0.2, load=-1)  # more bytes, same error, cheaper to load: kept
    per_channel = Candidate("scaled", 40, 0.2, channel=-1.0)  # only better per channel: kept
    dense = Candidate("dense", 100, 0.0)
    front = pareto([dense, per_channel, faster, better, beaten, cheap])
    assert front == [cheap, better, faster, per_channel, dense]
    assert pareto([]) == []


def test_dense_front_end_and_cost(rng):
    values = rng.standard_normal((8, 12)).astype(np.float32)
    layer = layer_options("w", values, "weight")
    assert layer.dense == Candidate("dense", encoding.dense_bytes(96, 2), 0.0) and layer.dense.kind == "dense"
    assert layer.smallest is layer.candidates[0] and layer.smallest.bytes == min(c.bytes for c in layer.candidates)
    assert [c.bytes for c in layer.candidates] == sorted(c.bytes for c in layer.candidates)
    assert (layer.name, layer.shape, layer.role, layer.itemsize) == ("w", (8, 12), "weight", 4)
    candidate = Candidate("lookup", 10, 0.25, channel=0.5)
    layer.sensitivity = 3.0
    assert layer.cost(candidate) == 0.75
    layer.channel_objective = True
    assert layer.cost(candidate) == 1.5  # max(distortion, channel error) times the sensitivity


def test_lookup_distortion_is_the_decoded_relative_error(rng):
    values = rng.standard_normal((16, 16)).astype(np.float32)
    layer = layer_options("w", values, "weight", grouped=False)
    for candidate in layer.candidates:
        decoded = decoded_values(values, None, candidate)
        assert relative_sse(values, decoded) == pytest.approx(candidate.distortion, rel=1e-4, abs=1e-9)
        if candidate.quant is not None and candidate.scales is None:
            np.testing.assert_array_equal(decoded, apply_quantization(values, candidate.quant, None))
            assert float(np.mean(decoded == 0)) >= candidate.sparsity - 1 / values.size
            assert np.unique(decoded).size <= 1 << candidate.bits


def test_bias_is_priced_unpruned_and_unguarded(rng):
    values = rng.standard_normal(4096).astype(np.float32)
    layer = layer_options("b", values, "bias")
    assert {c.sparsity for c in layer.candidates} == {0.0}
    assert {c.kind for c in layer.candidates} == {"dense", "lookup"}
    assert {c.sparsity for c in layer_options("w", values, "weight").candidates} > {0.0}
    assert layer.int8_channel is None


def test_weight_gets_scaled_candidates_and_an_int8_guard(rng):
    values = rng.standard_normal((16, 16)).astype(np.float32)
    layer = layer_options("w", values, "weight")
    scaled = [c for c in layer.candidates if c.kind == "scaled"]
    assert scaled and {c.bits for c in scaled} <= set(SCALED_BITS) | set(UNIFORM_BITS_SCALED)
    assert all(c.scales is not None and c.bytes < layer.dense.bytes for c in scaled)
    assert layer.int8_channel is not None and layer.int8_channel > 0
    errors = ChannelErrors(values, None)
    assert all(c.channel == pytest.approx(errors(c), rel=1e-9, abs=1e-12) for c in layer.candidates)
    for candidate in scaled:  # the decode divides by the scales and multiplies back
        assert relative_sse(values, decoded_values(values, None, candidate)) == pytest.approx(
            candidate.distortion, rel=1e-3, abs=1e-9)
    # the guard is for float32 weights of at least 16 entries
    assert layer_options("w", values[:3, :5], "weight").int8_channel is None
    assert layer_options("w", values, "weight", itemsize=2).int8_channel is None


def test_keep_zeros_prices_only_the_weights_own_zeros(rng):
    values = rng.standard_normal((16, 16)).astype(np.float32)
    values[:, ::4] = 0  # a quarter zeros
    layer = layer_options("w", values, "weight", keep_zeros=True)
    assert {c.sparsity for c in layer.candidates if c.kind in ("lookup", "sparse")} == {0.25}
    assert layer.int8_channel is None and all(c.kind in ("dense", "lookup", "sparse", "scaled") for c in layer.candidates)
    # per-channel-scaled codes keep the zeros as they are (a weight retrained towards them finds them again)
    scaled = [c for c in layer.candidates if c.kind == "scaled"]
    assert scaled and all(np.all(decoded_values(values, None, c)[:, ::4] == 0) for c in scaled)


def test_itemsize_and_restore_bytes(rng):
    values = rng.standard_normal((32, 32)).astype(np.float32)
    plain = layer_options("w", values, "weight", grouped=False)
    half = layer_options("w", values, "weight", grouped=False, itemsize=2, restore_bytes=40)
    assert half.dense.bytes == encoding.dense_bytes(1024, 2, 2) and half.itemsize == 2
    plain_prices = {(c.kind, c.sparsity, c.bits): c.bytes for c in plain.candidates if c.kind == "lookup"}
    matched = [c for c in half.candidates if (c.kind, c.sparsity, c.bits) in plain_prices]
    assert matched
    for candidate in matched:
        assert candidate.bytes == plain_prices[candidate.kind, candidate.sparsity, candidate.bits] + 40


def test_embedding_lookups_are_priced_per_row_and_load_nothing(rng):
    table = rng.standard_normal((64, 16)).astype(np.float32)
    layer = layer_options("emb", table, "embedding")
    lookups = [c for c in layer.candidates if c.kind == "lookup"]
    assert lookups and all(c.load == 0 for c in lookups)
    as_weight = {(c.sparsity, c.bits): c.bytes for c in layer_options("emb", table, "weight").candidates
                 if c.kind == "lookup"}
    assert any(as_weight.get((c.sparsity, c.bits)) not in (None, c.bytes) for c in lookups)


def test_grouped_and_vector_candidates_for_big_weights(rng):
    values = rng.standard_normal((256, 256)).astype(np.float32)
    energy = float(np.sum(values.astype(np.float64) ** 2))
    grouped = grouped_candidates(values, None, energy)
    row_groups = encoding.group_counts(values.shape, 0)
    column_groups = encoding.group_counts(values.shape, 1)
    assert len(grouped) == (len(row_groups) + len(column_groups)) * len(GROUPED_BITS)
    assert [c.bits for c in grouped] == list(GROUPED_BITS) * (len(row_groups) + len(column_groups))
    assert all(c.kind == "grouped" and c.sparsity == 0 for c in grouped)
    for candidate in grouped[:1] + grouped[-1:]:
        decoded = decoded_values(values, None, candidate)
        assert relative_sse(values, decoded) == pytest.approx(candidate.distortion, rel=1e-3)
    vector = vector_candidates(values, None, energy)
    assert {(c.quant.vector_dim, c.quant.codebook.shape[0]) for c in vector} == {
        (2, 32), (2, 64), (2, 128), (2, 256), (4, 16), (4, 64), (4, 256), (8, 256)}
    for candidate in vector:
        assert candidate.bits == encoding.bits_for(candidate.quant.codebook.shape[0])
    # too few runs for 256 centres: no (8, 256) candidate for a weight of 2,048 runs of 8
    small = values[:64]
    assert (8, 256) not in {(c.quant.vector_dim, c.quant.codebook.shape[0])
                            for c in vector_candidates(small, None, energy)}


def test_layer_options_adds_grouped_and_vector_only_where_asked(rng):
    values = (0.05 * rng.standard_normal((256, 256))).astype(np.float32)
    kinds = {c.kind for c in layer_options("w", values, "weight").candidates}
    assert {"grouped", "vector"} & kinds
    assert not {"grouped", "vector"} & {c.kind for c in layer_options("w", values, "weight", grouped=False).candidates}
    small = {c.kind for c in layer_options("w", values[:128], "weight").candidates}  # 32,768 entries
    assert not {"grouped", "vector"} & small


def test_plain_decode_of_a_dense_candidate_is_the_weight(rng):
    values = rng.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(decoded_values(values, None, Candidate("dense", 60, 0.0)), values)
