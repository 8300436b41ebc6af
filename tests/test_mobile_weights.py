"""mobile_weights (onnxcomp.runtime.mobile_weights): the COO sparse initializer ONNX Runtime reads,
and `ort_ready_model`: every decode subgraph replaced by its decoded weight, stored dense or
sparse, with the decode nodes and their inputs gone. The .ort export built on it is tested in
tests/test_mobile.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxcomp import modelfile
from onnxcomp.passes.insert_dequantize_lookup import InsertDequantizeLookupPass
from onnxcomp.passes.substitute_sparse_ops import SubstituteSparseOpsPass
from onnxcomp.runtime.mobile_weights import make_sparse_initializer, ort_ready_model, sparse_form_bytes
from tests.conftest import run, single_matmul
from tests.pass_helpers import prune_and_cluster

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


def test_sparse_initializer_holds_flat_positions_and_values_of_the_nonzeros():
    array = np.zeros((3, 4), np.float32)
    array[0, 1], array[2, 3], array[1, 0] = 1.5, -2.0, -0.0  # -0.0 is kept, as ONNX Runtime keeps it
    sparse = make_sparse_initializer("w", array)
    assert list(sparse.dims) == [3, 4] and sparse.values.name == "w"
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(sparse.indices), [1, 4, 11])
    assert onnx.numpy_helper.to_array(sparse.indices).dtype == np.int64
    values = onnx.numpy_helper.to_array(sparse.values)
    np.testing.assert_array_equal(values, [1.5, -0.0, -2.0])
    assert np.signbit(values[1])
    assert sparse_form_bytes(array) == 3 * (4 + 1)


def decoded_weight(path) -> np.ndarray:
    from onnxcomp.reporting.report import stored_weights

    (weight,) = stored_weights(modelfile.load_model(path))
    return weight.array


@pytest.mark.parametrize(("sparsity", "encode", "form"), [(None, InsertDequantizeLookupPass, "dense"),
                                                          (0.9, SubstituteSparseOpsPass, "sparse")])
def test_decode_subgraph_is_replaced_by_the_decoded_weight(tmp_path, rng, sparsity, encode, form):
    model = prune_and_cluster(single_matmul(rng.standard_normal((64, 64)).astype(np.float32)), sparsity, 3)
    encode()(model)
    path = tmp_path / "encoded.onnx"
    path.write_bytes(modelfile.serialized_bytes(model))
    decoded = decoded_weight(path)
    proto, rows = ort_ready_model(path)

    (row,) = rows
    nonzero = int(np.count_nonzero(decoded))
    assert row == {"name": row["name"], "shape": [64, 64], "stored_as": "sparse" if sparsity else "lookup",
                   "form": form, "nonzero": nonzero, "dense_bytes": 4 * 4096, "sparse_bytes": nonzero * (4 + 2)}
    # only the MatMul is left; the codes, codebooks and positions are gone
    assert [node.op_type for node in proto.graph.node] == ["MatMul"]
    stored = list(proto.graph.initializer) if form == "dense" else list(proto.graph.sparse_initializer)
    assert len(stored) == 1 and len(proto.graph.initializer) + len(proto.graph.sparse_initializer) == 1
    assert proto.graph.node[0].input[1] == row["name"]
    if form == "dense":
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(stored[0]), decoded)
    feeds = {"x": rng.standard_normal((3, 64)).astype(np.float32)}
    np.testing.assert_allclose(run(proto.SerializeToString(), feeds)[0], run(str(path), feeds)[0], rtol=1e-5, atol=1e-5)


def test_a_plain_dense_initializer_is_left_as_it_is(tmp_path, rng):
    weight = rng.standard_normal((16, 8)).astype(np.float32)
    path = tmp_path / "plain.onnx"
    path.write_bytes(modelfile.serialized_bytes(single_matmul(weight)))
    proto, rows = ort_ready_model(path)
    assert [(r["name"], r["form"], r["stored_as"]) for r in rows] == [("w", "dense", "dense")]
    assert [t.name for t in proto.graph.initializer] == ["w"] and not proto.graph.sparse_initializer
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(proto.graph.initializer[0]), weight)
