"""onnxcomp.stages.build: an allocation applied to a copy of the canonical model (prune where the
plan prunes, cluster on the plan's codebooks, encode as decided, clean up), each pass's work
tallied, the decoded values handed back, and the bytes every build spends beyond the weights."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxcomp import modelfile
from onnxcomp.encodings.stored import NAMES_KEY, weight_names
from onnxcomp.passes.prune_weights import PruneWeightsPass
from onnxcomp.planning.allocate import Allocation
from onnxcomp.stages.analyze import canonical_weights, price
from onnxcomp.stages.build import build, clean_up_named, fixed_bytes, prune_masks, run, tally
from tests.conftest import run as run_model
from tests.pass_helpers import arrays, check_valid, interface

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


@pytest.fixture
def priced(mlp_model):
    """The MLP canonicalized (w1 16x32 and w2 32x8 weights, b1 a bias) and its priced layers."""
    model, _ = canonical_weights(mlp_model)
    return model, {layer.name: layer for layer in price(model, {}, {})}


def allocation(layers, **wanted) -> Allocation:
    """Per weight the cheapest candidate with the given (bits, sparsity); dense for the others."""
    choices = {}
    for name, layer in layers.items():
        bits, sparsity = wanted.get(name, (32, 0.0))
        choices[name] = next(c for c in layer.candidates + [layer.dense] if c.bits == bits and c.sparsity == sparsity)
    return Allocation(choices, sum(c.bytes for c in choices.values()), 0.0)


def test_build_encodes_a_copy_and_hands_back_what_consumers_read(priced, rng):
    model, layers = priced
    before = arrays(model)
    decoded, stats = {}, {}
    plan = allocation(layers, w1=(2, 0.0), w2=(1, 0.0))
    built = build(model, plan, False, {}, decoded=decoded, stats=stats)
    assert {name: array.tobytes() for name, array in arrays(model).items()} == {n: a.tobytes() for n, a in before.items()}
    assert interface(built) == interface(model)
    check_valid(built)
    assert "w1" not in built.graph.initializers and "w2" not in built.graph.initializers
    assert decoded["b1"].const_value is not None  # dense: the bias itself
    feeds = {"x": rng.standard_normal((3, 16)).astype(np.float32)}
    output, w1, w2 = run_model(built, feeds, extra_outputs=[decoded["w1"].name, decoded["w2"].name])
    assert w1.shape == (16, 32) and w2.shape == (32, 8)
    assert len(np.unique(w1)) <= 4 and len(np.unique(w2)) <= 2  # 2 and 1 bits a code
    bias = before["b1"]
    np.testing.assert_allclose(output, np.maximum(feeds["x"] @ w1 + bias, 0) @ w2, rtol=1e-5, atol=1e-5)
    assert stats["ClusterWeightsPass"] == {"weights": 2}
    assert stats["PruneWeightsPass"] == {"weights": 0}
    assert prune_masks(model, plan, {}) == {}  # nothing pruned: no masks
    assert stats["SubstituteSparseOpsPass"] == {"weights": 0}
    lookup = stats["InsertDequantizeLookupPass"]
    assert lookup == {"weights": 2, "bytes_before": layers["w1"].dense.bytes + layers["w2"].dense.bytes,
                      "bytes_after": plan.choices["w1"].bytes + plan.choices["w2"].bytes}  # as priced


def test_build_prunes_as_the_plan_says(priced):
    model, layers = priced
    plan = allocation(layers, w1=(2, 0.5))
    masks = prune_masks(model, plan, {})
    assert list(masks) == ["w1"] and masks["w1"].shape == (16, 32) and masks["w1"].sum() == 256
    decoded = {}
    built = build(model, plan, False, {}, decoded=decoded)
    (w1,) = run_model(built, {"x": np.zeros((1, 16), np.float32)}, extra_outputs=[decoded["w1"].name])[1:]
    assert np.array_equal(w1 != 0, masks["w1"])
    assert "w2" in {weight_names(built).get(name, name) for name in built.graph.initializers}  # left dense
    # masks handed in replace the plan's
    keep_first_row = np.zeros((16, 32), bool)
    keep_first_row[0] = True
    built = build(model, plan, False, {}, masks={"w1": keep_first_row}, decoded=decoded)
    (w1,) = run_model(built, {"x": np.zeros((1, 16), np.float32)}, extra_outputs=[decoded["w1"].name])[1:]
    assert np.count_nonzero(w1[1:]) == 0 and np.count_nonzero(w1[0]) > 0
    assert prune_masks(model, plan, {}, names={"w2"}) == {}


def test_run_applies_passes_in_order_and_tally_sums_their_rows(mlp_model):
    stats = {}
    run(mlp_model, stats, PruneWeightsPass(sparsity=0.5), PruneWeightsPass(sparsity=0.75))
    assert stats == {"PruneWeightsPass": {"weights": 4}}  # two weights, twice
    assert np.mean(arrays(mlp_model)["w1"] == 0) == 0.75
    run(mlp_model, None, PruneWeightsPass(sparsity=0.9))  # no stats asked for
    tally(stats, "Encode", [{"bytes_before": 100, "bytes_after": 30}, {"bytes_before": 50}])
    tally(stats, "Encode", [{"bytes_before": "8", "bytes_after": 2}])
    tally(stats, "Other", [])
    assert stats["Encode"] == {"weights": 3, "bytes_before": 158, "bytes_after": 32}
    assert stats["Other"] == {"weights": 0}


def test_clean_up_named_shortens_names_and_records_the_originals(priced):
    model, layers = priced
    model.graph.doc_string = "exported by a tool"
    shortened = clean_up_named(model.clone(), model, keep_metadata=False)
    assert "w1" not in shortened.graph.initializers and not shortened.graph.doc_string
    assert sorted(weight_names(shortened).values()) == ["b1", "w1", "w2"]
    kept = clean_up_named(model.clone(), model, keep_metadata=True)
    assert sorted(kept.graph.initializers) == ["b1", "w1", "w2"] and kept.graph.doc_string == "exported by a tool"
    assert NAMES_KEY not in kept.graph.metadata_props  # nothing renamed, nothing to record


def test_fixed_bytes_is_the_file_without_the_weights_payload(priced):
    model, layers = priced
    payload = sum(layer.dense.bytes for layer in layers.values())
    cleaned = clean_up_named(model.clone(), model, False)
    assert fixed_bytes(model, list(layers.values()), False) == len(modelfile.serialized_bytes(cleaned)) - payload
    without = {keep: fixed_bytes(model, list(layers.values()), keep) for keep in (False, True)}
    model.graph.doc_string = "x" * 500
    assert fixed_bytes(model, list(layers.values()), False) == without[False]  # dropped
    assert fixed_bytes(model, list(layers.values()), True) == without[True] + 503  # kept: tag, length, text
    assert isinstance(model.graph.initializers["w1"].const_value, ir.TensorProtocol)  # the model is left whole
