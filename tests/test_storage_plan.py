"""storage_plan: each weight's encoding decided once; the encode passes build what they are handed."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.encodings import encoding
from onnxcomp.encodings.storage_plan import StoragePlan, decide, decide_all, unique_rows
from onnxcomp.model.weights import find_weights
from onnxcomp.passes.insert_dequantize_lookup import InsertDequantizeLookupPass
from onnxcomp.passes.substitute_sparse_ops import SubstituteSparseOpsPass
from tests.conftest import single_matmul
from tests.pass_helpers import assert_encoded_like, prune_and_cluster

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


def _only_weight(model):
    (weight,) = find_weights(model)
    return weight, np.asarray(weight.numpy(), np.float32)


def test_sparse_weight_is_decided_sparse_and_a_dense_clustered_one_lookup(rng):
    sparse = prune_and_cluster(single_matmul(rng.standard_normal((64, 64)).astype(np.float32)), 0.9, 4)
    dense = prune_and_cluster(single_matmul(rng.standard_normal((64, 64)).astype(np.float32)), 0.0, 4)
    assert decide(*_only_weight(sparse), StoragePlan()).kind == "sparse"
    decision = decide(*_only_weight(dense), StoragePlan())
    assert decision.kind in {"lookup", "linear"} and decision.choices["dense"].bytes == encoding.dense_bytes(64 * 64, 2)
    # without sparse among the kinds (the lookup pass on its own), the sparse weight gets a lookup
    assert decide(*_only_weight(sparse), StoragePlan(), {"lookup", "linear"}).kind in {"lookup", "linear"}


def test_float_weight_with_many_values_is_left_alone(rng):
    model = single_matmul(rng.standard_normal((64, 64)).astype(np.float32))
    assert decide(*_only_weight(model), StoragePlan()) is None
    assert decide_all(model, {}) == {}


def test_planned_vector_lookup_is_decided_where_smaller(rng):
    runs = rng.standard_normal((8, 4)).astype(np.float32)  # 8 distinct runs of 4
    weight = runs[rng.integers(0, 8, 512)].reshape(64, 32)
    model = single_matmul(weight)
    assert decide(*_only_weight(model), StoragePlan(vector_dim=4)).kind == "vector"
    assert decide(*_only_weight(model), StoragePlan(vector_dim=3)).kind != "vector"  # 3 does not divide 2048


def test_passes_build_the_handed_decisions_in_either_order(rng):
    reference = prune_and_cluster(single_matmul(rng.standard_normal((64, 64)).astype(np.float32)), 0.9, 4)
    decisions = decide_all(reference, {})
    assert decisions["w"].kind == "sparse"
    first = reference.clone()
    assert not InsertDequantizeLookupPass(decisions=decisions)(first).modified  # not its kind: left for the sparse pass
    (row,) = SubstituteSparseOpsPass(decisions=decisions)(first).rows
    assert row["encoding"] == "sparse"
    assert_encoded_like(reference, first, rng)
    # handed a lookup decision, the sparse pass leaves the weight and the lookup pass builds a lookup
    lookup = {"w": decide(*_only_weight(reference), StoragePlan(), {"lookup", "linear"})}
    second = reference.clone()
    assert not SubstituteSparseOpsPass(decisions=lookup)(second).modified
    (row,) = InsertDequantizeLookupPass(decisions=lookup)(second).rows
    assert row["encoding"] == lookup["w"].kind
    assert_encoded_like(reference, second, rng)


def test_unique_rows_matches_numpy(rng):
    rows = rng.integers(0, 5, (2000, 3)).astype(np.float32)
    unique, inverse = unique_rows(rows)
    expected, expected_inverse = np.unique(rows, axis=0, return_inverse=True)
    np.testing.assert_array_equal(unique, expected)
    np.testing.assert_array_equal(inverse, expected_inverse.ravel())
