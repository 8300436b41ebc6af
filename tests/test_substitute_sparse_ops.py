"""SubstituteSparseOpsPass: non-zero weights with compact positions, decoded exactly."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxcomp.encodings import encoding
from onnxcomp.passes.cleanup import clean_up
from onnxcomp.passes.insert_dequantize_lookup import InsertDequantizeLookupPass
from onnxcomp.passes.substitute_sparse_ops import SubstituteSparseOpsPass
from tests.conftest import single_matmul, to_proto
from tests.pass_helpers import (
    assert_codes_stored_narrow, assert_encoded_like, assert_shared_weight_decoded_once, op_types, prune_and_cluster,
)

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


@pytest.fixture
def sparse_pair(rng) -> tuple[ir.Model, ir.Model]:
    """(clustered reference, copy to encode): 64x64, 90% pruned, 4-bit codebook."""
    model = prune_and_cluster(single_matmul(rng.standard_normal((64, 64)).astype(np.float32)), 0.9, 4)
    return model, model.clone()


def test_sparse_substitution_decodes_exactly(sparse_pair, rng):
    reference, model = sparse_pair
    result = SubstituteSparseOpsPass()(model)
    assert result.modified
    (row,) = result.rows
    assert row["name"] == "w" and row["encoding"] == "sparse"
    assert row["bytes_after"] < row["bytes_before"]
    ops = op_types(model)
    for op in ("CumSum", "ScatterElements", "ConstantOfShape", "GatherElements"):
        assert op in ops
    assert_codes_stored_narrow(reference, model, "w")
    assert_encoded_like(reference, model, rng)
    assert model.opset_imports[""] == 17
    again = SubstituteSparseOpsPass()(model)
    assert not again.modified and again.rows == []
    assert not InsertDequantizeLookupPass()(model).modified


@pytest.mark.parametrize(("density", "positions"), [(0.35, "mask"), (0.05, "deltas")])
def test_sparse_positions_as_mask_or_deltas_whichever_is_smaller(rng, density, positions, monkeypatch):
    monkeypatch.setattr(encoding, "MASK_POSITIONS", True)
    levels = np.array([-0.75, -0.25, 0.5, 1.0, 1.5], np.float32)
    weight = (rng.choice(levels, (96, 160)) * (rng.random((96, 160)) < density)).astype(np.float32)
    reference = single_matmul(weight)
    model = reference.clone()
    (row,) = SubstituteSparseOpsPass()(model).rows
    assert row["encoding"] == "sparse" and row["positions"] == positions
    assert (row["delta_bits"] == 0) == (positions == "mask")
    ops = op_types(model)
    assert ("Compress" in ops) == (positions == "mask") and ("CumSum" in ops) == (positions == "deltas")
    assert "ScatterElements" in ops
    assert_codes_stored_narrow(reference, model, "w")
    assert_encoded_like(reference, model, rng)
    dense = len(to_proto(reference).SerializeToString())
    shortened = len(to_proto(clean_up(model.clone(), keep_metadata=False, shorten_names=True)).SerializeToString())
    assert abs((dense - shortened) - (row["bytes_before"] - row["bytes_after"])) < 200
    # The other layout really is larger.
    flat = weight.ravel()
    nonzero = np.flatnonzero(flat)
    mask_price = encoding.mask_sparse_bytes(flat.size, nonzero.size, encoding.bits_for(levels.size), levels.size, 2)
    delta_price = encoding.price_sparse(nonzero, levels.size, 2).bytes
    assert row["bytes_after"] == min(mask_price, delta_price)
    assert not SubstituteSparseOpsPass()(model).modified
    monkeypatch.setattr(encoding, "MASK_POSITIONS", False)
    (row,) = SubstituteSparseOpsPass()(reference.clone()).rows
    assert row["positions"] == "deltas" and row["bytes_after"] == delta_price


def test_sparse_skips_dense_weights(rng):
    model = prune_and_cluster(single_matmul(rng.standard_normal((64, 64)).astype(np.float32)), None, 4)
    before = op_types(model)
    assert not SubstituteSparseOpsPass()(model).modified
    assert op_types(model) == before and "w" in model.graph.initializers


def _burst_weight(rng, starts: list[int], length: int, size: int = 4096) -> np.ndarray:
    flat = np.zeros(size, np.float32)
    levels = np.array([-0.75, -0.25, 0.5, 1.0], np.float32)
    for start in starts:
        flat[start : start + length] = rng.choice(levels, size=length)
    return flat.reshape(64, 64)


@pytest.mark.parametrize(("starts", "length"), [
    ([10, 1500, 3900], 60),   # gaps of ~1400 between dense bursts
    ([3500], 120),             # first non-zero far from position 0
    ([0, 4000], 40),           # non-zero at position 0, then a long gap
], ids=["long-gaps", "late-start", "at-zero"])
def test_sparse_fillers_decode_exactly(rng, starts, length):
    weight = _burst_weight(rng, starts, length)
    reference = single_matmul(weight)
    model = reference.clone()
    result = SubstituteSparseOpsPass()(model)
    (row,) = result.rows
    positions = np.flatnonzero(weight.ravel())
    longest_gap = int(np.diff(positions, prepend=0).max())
    assert longest_gap > (1 << row["delta_bits"]) - 1, "test weight does not exercise filler entries"
    assert_codes_stored_narrow(reference, model, "w")
    assert_encoded_like(reference, model, rng)


def test_sparse_shared_weight_decoded_once(shared_model, rng):
    reference = prune_and_cluster(shared_model, 0.9, 3)
    model = reference.clone()
    decoded = assert_shared_weight_decoded_once(SubstituteSparseOpsPass()(model), model, "ScatterElements")
    assert decoded.producer() is not None
    assert_encoded_like(reference, model, rng)
