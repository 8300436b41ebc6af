"""outliers: dense-and-sparse weights. Pricing of the (share, bits) settings, snapping the kept
entries back to their exact values, the stored layout (bulk codes plus a sparse stream) and its
decode subgraph, which ONNX Runtime runs back to the exact weight."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxcomp.encodings import encoding, outliers
from onnxcomp.encodings.decode import DecodeBuilder
from tests.conftest import run
from tests.pass_helpers import check_valid, op_types


def _narrow_with_outliers(rng) -> np.ndarray:
    """A 64x64 weight of integers in [-3, 3] with 20 entries out: 7 at -100, 7 at 90, 6 at 120."""
    values = rng.integers(-3, 4, (64, 64)).astype(np.float32)
    values.flat[rng.choice(values.size, 20, replace=False)] = [-100.0] * 7 + [90.0] * 7 + [120.0] * 6
    return values


def test_price_keeps_the_outliers_exact_at_the_right_share(rng):
    values = _narrow_with_outliers(rng)
    energy = float(np.sum(values.astype(np.float64) ** 2))
    priced = outliers.price(values, None, energy)
    # 0.1% (4 entries) keeps none above the 5th largest; 0.3% (12) the six 120s; 1% and more all 20
    assert {p.quant.outlier_threshold for p in priced} == {100.0, 3.0}
    # 2 bits: three levels and zero; more bits find only the six non-zero values
    assert [p.bits for p in priced if p.quant.outlier_threshold == 3.0][:4] == [2, 3, 3, 3]
    exact = [p for p in priced if p.distortion == 0]
    assert exact and {p.quant.outlier_threshold for p in exact} == {3.0} and {p.bits for p in exact} == {3}
    best = min(exact, key=lambda p: p.bytes)
    assert best.quant.codebook.tolist() == [-3, -2, -1, 1, 2, 3]  # zero has its own level
    assert best.quant.nonzeros == int(np.count_nonzero(values))
    assert best.bytes < encoding.dense_bytes(values.size, 2)
    applied = outliers.snap(values, np.zeros_like(values), 3.0)
    assert np.array_equal(applied[np.abs(values) > 3], values[np.abs(values) > 3]) and not applied[np.abs(values) <= 3].any()


def test_price_skips_shares_with_too_many_distinct_outliers(rng):
    values = rng.standard_normal((120, 200)).astype(np.float32)
    priced = outliers.price(values, None, float(np.sum(values.astype(np.float64) ** 2)))
    # 0.1% and 0.3% of 24000 entries are 24 and 72 distinct values; 1% (240) leaves the bulk too few
    # of the codebook's 256 entries
    assert len({p.quant.outlier_threshold for p in priced}) == 2
    assert len(priced) == 2 * len(outliers.OUTLIER_BITS)
    assert all(0 < p.distortion < 1 for p in priced)
    assert outliers.price(np.zeros((8, 8), np.float32), None, 0.0) == []


def test_snap_puts_back_only_the_entries_beyond_the_threshold():
    values = np.array([0.4, -5.0, 1.2, 6.0], np.float32)
    clustered = np.array([0.5, -1.0, 1.0, 1.0], np.float32)
    assert outliers.snap(values, clustered, 4.0).tolist() == [0.5, -5.0, 1.0, 6.0]
    assert clustered.tolist() == [0.5, -1.0, 1.0, 1.0]  # not changed in place


def test_layout_splits_bulk_codes_and_sparse_entries(rng):
    values = _narrow_with_outliers(rng)
    plan = outliers.layout(values, 3.0)
    assert plan.shape == (64, 64) and plan.outliers == 20
    assert plan.levels.tolist() == [-3, -2, -1, 0, 1, 2, 3] and plan.bits == 3
    bulk = np.abs(values.ravel()) <= 3
    assert np.array_equal(plan.levels[plan.codes[bulk]], values.ravel()[bulk])
    positions = np.cumsum(plan.deltas.astype(np.int64))
    entries = plan.table[plan.entry_codes]
    assert np.array_equal(entries, values.ravel()[positions])  # fillers rewrite the bulk's own value
    assert set(np.flatnonzero(~bulk)) <= set(positions.tolist())
    rank = 2
    assert plan.bytes == (encoding.lookup_bytes(4096, 3, 7, rank)
                          + encoding.sparse_bytes(plan.deltas.size, encoding.bits_for(plan.table.size), plan.delta_bits,
                                                  plan.table.size, rank))


def test_layout_refuses_without_outliers_or_with_a_wide_bulk(rng):
    assert outliers.layout(np.ones((8, 8), np.float32), 5.0) is None
    wide = rng.standard_normal((32, 32)).astype(np.float32)
    wide[0, 0] = 50.0
    assert outliers.layout(wide, 10.0) is None  # 1023 distinct bulk values


def test_build_decodes_to_the_exact_weight_in_onnx_runtime(rng):
    pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")
    values = _narrow_with_outliers(rng)
    plan = outliers.layout(values, 3.0)
    graph = ir.Graph(inputs=[], outputs=[], nodes=[], opset_imports={"": 17}, name="decode")
    builder = DecodeBuilder(graph)
    decoded = outliers.build(builder, plan, "w")
    builder.flush()
    decoded.type, decoded.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([64, 64])
    graph.outputs.append(decoded)
    model = ir.Model(graph, ir_version=10)
    check_valid(model)
    assert {"GatherElements", "ScatterElements", "CumSum"} <= set(op_types(model)) and "ConstantOfShape" not in op_types(model)
    (got,) = run(model, {})
    np.testing.assert_array_equal(got, values)
