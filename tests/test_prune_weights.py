"""PruneWeightsPass: magnitude pruning by sparsity, threshold or mask."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.passes.prune_weights import PruneWeightsPass
from tests.conftest import MLP_SHAPES, MLP_TEXT, build_model, run, single_matmul
from tests.pass_helpers import arrays, check_valid, feeds_for

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


def test_prune_sparsity_zeroes_smallest_fraction_and_leaves_bias(mlp_model):
    before = arrays(mlp_model)
    result = PruneWeightsPass(sparsity=0.5)(mlp_model)
    after = arrays(result.model)
    assert result.modified
    for name in ("w1", "w2"):
        zeros = after[name] == 0
        assert zeros.sum() == before[name].size // 2
        assert np.abs(before[name][zeros]).max() < np.abs(before[name][~zeros]).min()
        assert np.array_equal(after[name][~zeros], before[name][~zeros])
        assert after[name].dtype == np.float32
    assert np.array_equal(after["b1"], before["b1"])
    rows = {row["name"]: row for row in result.rows}
    assert set(rows) == {"w1", "w2"}
    for name, row in rows.items():
        assert row["pruned"] == before[name].size // 2
        assert row["sparsity"] == pytest.approx(0.5)
        assert row["threshold"] > 0


def test_prune_thresholds_only_named_weights(mlp_model):
    before = arrays(mlp_model)
    result = PruneWeightsPass(thresholds={"w1": 0.5})(mlp_model)
    after = arrays(result.model)
    expected = np.where(np.abs(before["w1"]) < 0.5, np.float32(0), before["w1"])
    assert np.array_equal(after["w1"], expected)
    assert np.array_equal(after["w2"], before["w2"])
    assert np.array_equal(after["b1"], before["b1"])
    (row,) = result.rows
    assert row == {"name": "w1", "threshold": 0.5, "pruned": int(np.sum(np.abs(before["w1"]) < 0.5)),
                   "sparsity": pytest.approx(float(np.mean(expected == 0)))}


def test_prune_mask_wins_over_threshold_and_sparsity(mlp_model, rng):
    before = arrays(mlp_model)
    mask = rng.random(MLP_SHAPES["w2"]) < 0.3
    result = PruneWeightsPass(sparsity={"w1": 0.25}, thresholds={"w2": 100.0}, masks={"w2": mask})(mlp_model)
    after = arrays(result.model)
    assert np.array_equal(after["w2"], np.where(mask, before["w2"], np.float32(0)))
    assert np.sum(after["w1"] == 0) == before["w1"].size // 4
    assert {row["name"] for row in result.rows} == {"w1", "w2"}


def test_prune_never_touches_bias_even_when_named(mlp_model):
    before = arrays(mlp_model)
    result = PruneWeightsPass(thresholds={"b1": 100.0})(mlp_model)
    assert not result.modified and result.rows == []
    assert np.array_equal(arrays(result.model)["b1"], before["b1"])


@pytest.mark.parametrize("options", [
    {"sparsity": 0.7},
    {"sparsity": {"w1": 0.9}},
    {"thresholds": {"w1": 0.3, "w2": 1.0}},
    {"masks": {"w1": np.arange(16 * 32).reshape(16, 32) % 3 == 0}},
], ids=["sparsity", "per-weight", "thresholds", "masks"])
def test_prune_is_idempotent_and_valid(mlp_model, rng, options):
    first = PruneWeightsPass(**options)(mlp_model)
    assert first.modified
    snapshot = arrays(first.model)
    second = PruneWeightsPass(**options)(first.model)
    assert not second.modified and second.rows == []
    assert all(np.array_equal(snapshot[k], v) for k, v in arrays(second.model).items())
    check_valid(second.model)
    # The serialized edit is what a model built from the pruned arrays computes.
    feeds = feeds_for(second.model, rng)
    rebuilt = build_model(MLP_TEXT, snapshot)
    assert np.array_equal(run(second.model, feeds)[0], run(rebuilt, feeds)[0])


def test_prune_output_error_within_bound(rng):
    weight = rng.standard_normal((40, 24)).astype(np.float32)
    model = single_matmul(weight)
    feeds = {"x": rng.standard_normal((6, 40)).astype(np.float32)}
    (reference,) = run(model, feeds)
    PruneWeightsPass(sparsity=0.6)(model)
    (pruned,) = run(model, feeds)
    change = np.abs(arrays(model)["w"] - weight).max()
    # |dy_j| <= sum_i |x_i| * max |dW|, plus float32 rounding of the sums.
    bound = np.abs(feeds["x"]).sum(axis=1, keepdims=True) * change * (1 + 1e-5) + 1e-4
    assert np.all(np.abs(pruned - reference) <= bound)
    assert not np.array_equal(pruned, reference)


@pytest.mark.parametrize("options", [{}, {"sparsity": 1.0}, {"sparsity": -0.1}])
def test_prune_rejects_bad_options(options):
    with pytest.raises(ValueError):
        PruneWeightsPass(**options)
