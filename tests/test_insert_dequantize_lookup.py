"""InsertDequantizeLookupPass: short codes rebuilt by a lookup subgraph at load."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.encodings import encoding
from onnxcomp.passes.cleanup import clean_up
from onnxcomp.passes.cluster_weights import ClusterWeightsPass
from onnxcomp.passes.insert_dequantize_lookup import InsertDequantizeLookupPass
from onnxcomp.passes.prune_weights import PruneWeightsPass
from onnxcomp.passes.substitute_sparse_ops import SubstituteSparseOpsPass
from tests.conftest import MLP_TEXT, build_model, run, single_matmul, to_proto
from tests.pass_helpers import (
    arrays, assert_codes_stored_narrow, assert_encoded_like, assert_shared_weight_decoded_once, check_valid, feeds_for, op_types, prune_and_cluster,
)

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


@pytest.mark.parametrize("bits", range(1, 9))
def test_lookup_decodes_every_bit_width(rng, bits):
    # 63x37 = 2331 codes: odd, so packing pads the last word for every width that packs.
    reference = prune_and_cluster(single_matmul(rng.standard_normal((63, 37)).astype(np.float32)), None, bits)
    model = reference.clone()
    result = InsertDequantizeLookupPass()(model)
    assert result.modified
    (row,) = result.rows
    assert row["encoding"] in ("lookup", "linear") and row["bits"] <= bits
    ops = op_types(model)
    assert "GatherElements" in ops if row["encoding"] == "lookup" else {"Sub", "Mul"} <= set(ops)
    if row["bits"] < 8:
        assert "BitShift" in ops
    assert_codes_stored_narrow(reference, model, "w")
    assert_encoded_like(reference, model, rng, exact=row["encoding"] == "lookup")
    again = InsertDequantizeLookupPass()(model)
    assert not again.modified and again.rows == []


def test_lookup_uniform_codebook_uses_linear_form(rng):
    grid = ((rng.integers(0, 16, (64, 48)) - 7.5) * 0.03).astype(np.float32)
    reference = single_matmul(grid)
    model = reference.clone()
    (row,) = InsertDequantizeLookupPass()(model).rows
    assert row["encoding"] == "linear" and row["bits"] == 4
    assert {"Sub", "Mul", "BitShift"} <= set(op_types(model))
    assert "Gather" not in op_types(model)
    assert_codes_stored_narrow(reference, model, "w")
    assert_encoded_like(reference, model, rng, exact=False)


def test_lookup_shared_weight_decoded_once_and_both_consumers_rewired(shared_model, rng):
    reference = prune_and_cluster(shared_model, None, 4)
    model = reference.clone()
    decoded = assert_shared_weight_decoded_once(InsertDequantizeLookupPass()(model), model, "GatherElements")
    assert {node.op_type for node, _ in decoded.uses()} == {"MatMul"}
    assert len(list(decoded.uses())) == 2
    assert_codes_stored_narrow(reference, model, "w")
    assert_encoded_like(reference, model, rng)


def test_lookup_skips_unclustered_and_unprofitable_weights(rng):
    model = single_matmul(rng.standard_normal((32, 32)).astype(np.float32))  # 1024 distinct values
    assert not InsertDequantizeLookupPass()(model).modified
    tiny = prune_and_cluster(single_matmul(rng.standard_normal((4, 4)).astype(np.float32)), None, 2)
    before = arrays(tiny)
    assert not InsertDequantizeLookupPass()(tiny).modified
    assert arrays(tiny).keys() == before.keys() and op_types(tiny) == ["MatMul"]


def test_lookup_raises_opset_to_decode_opset(rng):
    text = """
    <ir_version: 7, opset_import: ["" : 10]>
    old (float[N, 64] x) => (float[N, 32] y) {
      y = MatMul(x, w)
    }
    """
    reference = prune_and_cluster(build_model(text, {"w": rng.standard_normal((64, 32)).astype(np.float32)}), None, 3)
    model = reference.clone()
    assert InsertDequantizeLookupPass()(model).modified
    assert model.opset_imports[""] == 11
    assert_encoded_like(reference, model, rng)


def test_mlp_full_encode_and_clean_up_matches_clustered(rng):
    arrays_in = {"w1": rng.standard_normal((16, 300)), "b1": rng.standard_normal(300), "w2": rng.standard_normal((300, 8))}
    reference = build_model(MLP_TEXT, {k: v.astype(np.float32) for k, v in arrays_in.items()})
    PruneWeightsPass(sparsity={"w1": 0.95, "w2": 0.3})(reference)
    ClusterWeightsPass(bits={"w1": 4, "w2": 5, "b1": 3})(reference)
    model = reference.clone()
    sparse = SubstituteSparseOpsPass()(model)
    lookup = InsertDequantizeLookupPass()(model)
    assert [r["name"] for r in sparse.rows] == ["w1"]
    assert {r["name"] for r in lookup.rows} == {"w2", "b1"}
    cleaned = clean_up(model)
    proto = check_valid(cleaned)
    feeds = feeds_for(reference, rng)
    assert np.array_equal(run(proto, feeds)[0], run(reference, feeds)[0])
    assert proto.ByteSize() < to_proto(reference).ByteSize() / 3
