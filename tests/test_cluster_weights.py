"""ClusterWeightsPass: per-weight codebooks that keep zero exactly."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.passes.cluster_weights import ClusterWeightsPass
from onnxcomp.passes.prune_weights import PruneWeightsPass
from tests.conftest import run, single_matmul
from tests.pass_helpers import arrays, check_valid

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


@pytest.mark.parametrize("bits", range(1, 9))
def test_cluster_limits_distinct_values_and_keeps_zero_exactly(rng, bits):
    weight = rng.standard_normal((64, 64)).astype(np.float32)
    model = single_matmul(weight)
    PruneWeightsPass(sparsity=0.5)(model)
    pruned = arrays(model)["w"]
    result = ClusterWeightsPass(bits=bits)(model)
    clustered = arrays(model)["w"]
    assert result.modified
    distinct = np.unique(clustered)
    assert distinct.size <= 2**bits
    assert 0.0 in distinct
    assert np.array_equal(clustered == 0, pruned == 0)
    assert np.all(clustered[pruned != 0] != 0)
    (row,) = result.rows
    assert row["name"] == "w" and row["clusters"] <= 2**bits
    assert row["sse"] == pytest.approx(float(np.sum((clustered.astype(np.float64) - pruned) ** 2)), rel=1e-6)
    again = ClusterWeightsPass(bits=bits)(model)
    assert not again.modified and again.rows == []
    assert np.array_equal(arrays(model)["w"], clustered)
    check_valid(model)


def test_cluster_without_zeros_uses_all_levels_and_bias_is_clustered(mlp_model):
    before = arrays(mlp_model)
    result = ClusterWeightsPass(bits=2)(mlp_model)
    after = arrays(mlp_model)
    assert {row["name"] for row in result.rows} == {"w1", "w2", "b1"}
    for name in ("w1", "w2", "b1"):
        assert 2 <= np.unique(after[name]).size <= 4
        assert not np.any(after[name] == 0) or np.any(before[name] == 0)


def test_cluster_per_weight_bits_and_explicit_codebook(mlp_model):
    before = arrays(mlp_model)
    codebook = np.array([-1.0, 0.25, 2.0], np.float32)
    result = ClusterWeightsPass(bits={"w1": 3}, codebooks={"w2": codebook})(mlp_model)
    after = arrays(mlp_model)
    assert {row["name"] for row in result.rows} == {"w1", "w2"}
    assert np.unique(after["w1"]).size <= 8
    assert np.array_equal(after["b1"], before["b1"])
    assert set(np.unique(after["w2"])) <= set(codebook)
    distance = np.abs(after["w2"] - before["w2"])
    nearest = np.min(np.abs(before["w2"][..., None] - codebook), axis=-1)
    np.testing.assert_allclose(distance, nearest, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits", [3, 8])
def test_cluster_output_error_within_bound(rng, bits):
    weight = rng.standard_normal((48, 20)).astype(np.float32)
    model = single_matmul(weight)
    feeds = {"x": rng.standard_normal((6, 48)).astype(np.float32)}
    (reference,) = run(model, feeds)
    ClusterWeightsPass(bits=bits)(model)
    (clustered,) = run(model, feeds)
    change = np.abs(arrays(model)["w"] - weight).max()
    # Nearest-centre snapping moves a weight by at most half the widest gap between centres.
    assert change <= (weight.max() - weight.min()) / 2
    bound = np.abs(feeds["x"]).sum(axis=1, keepdims=True) * change * (1 + 1e-5) + 1e-4
    assert np.all(np.abs(clustered - reference) <= bound)


@pytest.mark.parametrize("bits", [0, 9])
def test_cluster_rejects_bad_bits(bits):
    with pytest.raises(ValueError):
        ClusterWeightsPass(bits=bits)
