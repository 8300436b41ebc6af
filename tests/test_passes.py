"""Unit tests of the graph passes on tiny seeded graphs, checked in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxcomp import encoding
from onnxcomp.decode import DecodeBuilder
from onnxcomp.passes.cleanup import ShortenNamesPass, clean_up
from onnxcomp.passes.cluster_weights import ClusterWeightsPass
from onnxcomp.passes.insert_dequantize_lookup import InsertDequantizeLookupPass
from onnxcomp.passes.prune_weights import PruneWeightsPass
from onnxcomp.passes.substitute_sparse_ops import SubstituteSparseOpsPass
from tests.conftest import MLP_SHAPES, MLP_TEXT, build_model, run, single_matmul, to_proto

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

CODE_WORD_TYPES = {ir.DataType.UINT8, ir.DataType.UINT32, ir.DataType.UINT64}
SHAPE_TYPES = {ir.DataType.INT64, ir.DataType.INT32}


# -- helpers --------------------------------------------------------------------------------


def arrays(model: ir.Model) -> dict[str, np.ndarray]:
    return {name: value.const_value.numpy().copy() for name, value in model.graph.initializers.items()}


def op_types(model: ir.Model) -> list[str]:
    return [node.op_type for node in ir.traversal.RecursiveGraphIterator(model.graph)]


def interface(model: ir.Model) -> tuple[list[str], list[str]]:
    return [v.name for v in model.graph.inputs], [v.name for v in model.graph.outputs]


def check_valid(model: ir.Model) -> onnx.ModelProto:
    proto = to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def feeds_for(model: ir.Model, rng: np.random.Generator, batch: int = 5) -> dict[str, np.ndarray]:
    value = model.graph.inputs[0]
    return {value.name: rng.standard_normal((batch, value.shape[1])).astype(np.float32)}


def weight_input(model: ir.Model, op_type: str = "MatMul", index: int = 1) -> ir.Value:
    node = next(n for n in model.graph if n.op_type == op_type)
    return node.inputs[index]


def prune_and_cluster(model: ir.Model, sparsity: float | None, bits: int) -> ir.Model:
    if sparsity:
        PruneWeightsPass(sparsity=sparsity)(model)
    ClusterWeightsPass(bits=bits)(model)
    return model


def assert_encoded_like(reference: ir.Model, encoded: ir.Model, rng: np.random.Generator, exact: bool = True) -> None:
    """Same interface, valid, and ORT outputs (and every decoded MatMul weight) match the reference.

    `exact=False` is for the linear form, rebuilt as (code - zero) * scale in float32: weights
    within 1e-6, outputs (sums of up to 64 products) within 1e-5.
    """
    assert interface(encoded) == interface(reference)
    check_valid(encoded)
    feeds = feeds_for(reference, rng)
    weight_names = [n.inputs[1].name for n in encoded.graph if n.op_type in ("MatMul", "Gemm")]
    reference_names = [n.inputs[1].name for n in reference.graph if n.op_type in ("MatMul", "Gemm")]
    expected_outputs = run(reference, feeds)
    extra = sorted(set(weight_names))
    actual = run(encoded, feeds, extra_outputs=extra)
    actual_outputs, decoded = actual[: len(expected_outputs)], dict(zip(extra, actual[len(expected_outputs):]))
    pairs = [(decoded[name], reference.graph.initializers[ref].const_value.numpy(), 1e-6)
             for name, ref in zip(weight_names, reference_names)]
    pairs += [(got, expected, 1e-5) for got, expected in zip(actual_outputs, expected_outputs)]
    for got, expected, tolerance in pairs:
        assert got.shape == expected.shape
        if exact:
            assert np.array_equal(got, expected)
        else:
            np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance)


def new_initializers(before: ir.Model, after: ir.Model) -> dict[str, ir.Value]:
    return {name: v for name, v in after.graph.initializers.items() if name not in before.graph.initializers}


def assert_codes_stored_narrow(reference: ir.Model, encoded: ir.Model, weight_name: str) -> None:
    """The float weight is gone; what replaced it is uint words, a small float codebook/scale,
    and a few shape constants."""
    assert weight_name not in encoded.graph.initializers
    assert "DequantizeLinear" not in op_types(encoded)
    added = new_initializers(reference, encoded)
    words = [v for v in added.values() if v.dtype in CODE_WORD_TYPES and v.const_value.size > 1]
    assert words, "no packed code initializer"
    for value in added.values():
        size = value.const_value.size
        if value.dtype == ir.DataType.FLOAT:
            assert size <= encoding.MAX_CODEBOOK, f"{value.name} looks like a dense weight ({size} floats)"
        elif value.dtype in SHAPE_TYPES:
            assert size <= 4, f"{value.name}: {size} int32/int64 entries"
        else:
            assert value.dtype in CODE_WORD_TYPES, f"{value.name} stored as {value.dtype}"
    payload = sum(v.const_value.nbytes for v in added.values())
    weight = reference.graph.initializers[weight_name].const_value
    assert payload < weight.nbytes


# -- PruneWeightsPass -----------------------------------------------------------------------


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


# -- ClusterWeightsPass ---------------------------------------------------------------------


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


# -- pack/unpack and the decode subgraph ----------------------------------------------------


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [1, 7, 64, 101, 1000])
def test_pack_unpack_round_trip(rng, bits, count):
    codes = rng.integers(0, 2**bits, count)
    words, packing = encoding.pack_codes(codes, bits)
    assert words.dtype in (np.uint8, np.uint32, np.uint64)
    assert words.shape == (1, packing.words)
    assert packing.words * packing.per_word >= count > (packing.words - 1) * packing.per_word
    assert packing.per_word * bits <= packing.word_bits
    assert np.array_equal(encoding.unpack_codes(words, packing, count), codes)
    # The word size is the one that needs the fewest bytes.
    layouts = [-(-count // (word_bits // bits)) * word_bits // 8 for word_bits in (8, 32, 64)]
    assert packing.payload_bytes == min(layouts)


def _decode_model(build) -> ir.Model:
    graph = ir.Graph(inputs=[], outputs=[], nodes=[], opset_imports={"": 17}, name="decode")
    builder = DecodeBuilder(graph)
    outputs = build(builder)
    builder.flush()
    graph.outputs.extend(outputs)
    return ir.Model(graph, ir_version=10)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("count", [1, 9, 33, 255])
def test_decode_subgraph_reproduces_codes_in_ort(rng, bits, count):
    codes = rng.integers(0, 2**bits, count)
    identity = np.arange(2**bits, dtype=np.float32)

    def build(builder):
        looked_up = builder.lookup(codes, identity, bits, (count,), "lut")
        looked_up.type, looked_up.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([count])
        flat = builder.op("Cast", [builder.unpacked_codes(codes, bits, "flat", flat=True)], to=ir.DataType.INT32)
        flat.type, flat.shape = ir.TensorType(ir.DataType.INT32), ir.Shape([count])
        return [looked_up, flat]

    model = _decode_model(build)
    check_valid(model)
    looked_up, flat = run(model, {})
    assert np.array_equal(looked_up, codes.astype(np.float32))
    assert np.array_equal(flat, codes.astype(np.int32))


@pytest.mark.parametrize("delta_bits", range(1, 9))
def test_sparse_deltas_rebuild_positions_with_fillers(rng, delta_bits):
    positions = np.sort(rng.choice(5000, size=60, replace=False))
    positions = np.concatenate([[0], positions[positions > 0], [9999]])  # first at 0, one long last gap
    deltas, owners = encoding.sparse_deltas(positions, delta_bits)
    assert deltas.max() <= (1 << delta_bits) - 1
    assert deltas.size == encoding.sparse_entries(positions, delta_bits)
    assert np.array_equal(np.cumsum(deltas.astype(np.int64))[owners >= 0], positions)
    assert np.array_equal(owners[owners >= 0], np.arange(positions.size))
    assert np.all(deltas[owners < 0] == (1 << delta_bits) - 1)


@pytest.mark.parametrize("entries", [2047, 2500, 4099, 12289])
def test_sparse_decode_two_level_prefix_sum_is_exact(rng, entries):
    # 2047: one CumSum; 2500 = 50 x 50: two levels, no padding; 4099 and 12289 (primes): padded.
    # (Padding entries are stored, so the test encodes the same streams the pass would.)
    deltas = rng.integers(0, 8, entries).astype(np.uint64)
    deltas[0] = 5
    positions = np.cumsum(deltas.astype(np.int64))
    size = int(positions[-1]) + 3
    codes = rng.integers(0, 4, entries)
    codebook = np.array([0.0, -0.5, 0.25, 1.5], np.float32)
    expected = np.zeros(size, np.float32)
    expected[positions] = codebook[codes]  # repeated positions (delta 0): the later entry wins
    # The decode may write a repeated position in any order, so each position's entries agree.
    for position in np.unique(positions):
        expected_value = expected[position]
        codes[positions == position] = int(np.flatnonzero(codebook == expected_value)[0])

    def build(builder):
        decoded = builder.sparse(deltas, 3, codes, 2, codebook, (size,), "sp")
        decoded.type, decoded.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([size])
        return [decoded]

    model = _decode_model(build)
    check_valid(model)
    (decoded,) = run(model, {})
    np.testing.assert_array_equal(decoded, expected)
    layout = encoding.cumsum_layout(entries)
    ops = op_types(model)
    assert ops.count("CumSum") == (1 if layout is None else 2) and "Pad" not in ops
    if layout is not None:
        rows, width, padding = layout
        assert rows * width == entries + padding and padding < np.sqrt(entries)
        assert max(rows, width) <= 4 * np.sqrt(entries)
        within = next(n for n in model.graph if n.op_type == "CumSum")
        assert within.inputs[1].const_value.numpy() == 0  # contiguous rows: axis 0


# -- SubstituteSparseOpsPass ----------------------------------------------------------------


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
    result = SubstituteSparseOpsPass()(model)
    assert [row["name"] for row in result.rows] == ["w"]
    assert op_types(model).count("ScatterElements") == 1
    first, second = [n for n in model.graph if n.op_type == "MatMul"]
    assert first.inputs[1] is second.inputs[1]
    assert first.inputs[1].producer() is not None
    assert_encoded_like(reference, model, rng)


# -- InsertDequantizeLookupPass -------------------------------------------------------------


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
    result = InsertDequantizeLookupPass()(model)
    assert [row["name"] for row in result.rows] == ["w"]
    assert op_types(model).count("GatherElements") == 1
    first, second = [n for n in model.graph if n.op_type == "MatMul"]
    assert first.inputs[1] is second.inputs[1]
    assert {node.op_type for node, _ in first.inputs[1].uses()} == {"MatMul"}
    assert len(list(first.inputs[1].uses())) == 2
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


# -- clean up -------------------------------------------------------------------------------


@pytest.fixture
def decorated_proto(rng) -> onnx.ModelProto:
    text = """
    <ir_version: 10, opset_import: ["" : 17], producer_name: "tests", producer_version: "9.9">
    decorated (float[N, 16] x) => (float[N, 8] y) {
      a_rather_long_hidden_activation_name = Gemm(x, first_layer_weight_with_a_long_name, first_layer_bias)
      another_long_activation_name_after_relu = Relu(a_rather_long_hidden_activation_name)
      y = MatMul(another_long_activation_name_after_relu, second_layer_weight_with_a_long_name)
      dead_end_value_nobody_reads = Relu(x)
    }
    """
    proto = onnx.parser.parse_model(text)
    for name, shape in (("first_layer_weight_with_a_long_name", (16, 32)), ("first_layer_bias", (32,)),
                        ("second_layer_weight_with_a_long_name", (32, 8)), ("unused_initializer", (5,))):
        proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    proto.doc_string = "model documentation " * 20
    proto.graph.doc_string = "graph documentation"
    for index, node in enumerate(proto.graph.node):
        node.name = f"a_descriptive_node_name_{index}"
        node.doc_string = "node documentation"
    onnx.helper.set_model_props(proto, {"author": "someone", "license": "text " * 30})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def deserialize(proto: onnx.ModelProto) -> ir.Model:
    # onnx_ir tensors keep pointing into the proto they came from; renames would write back.
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return ir.serde.deserialize_model(copy)


def test_clean_up_strips_docs_metadata_and_shortens_names(decorated_proto, rng):
    model = clean_up(deserialize(decorated_proto))
    proto = check_valid(model)
    assert interface(model) == (["x"], ["y"])
    assert not proto.doc_string and not proto.graph.doc_string
    # applications read label maps and dictionaries from the model's metadata_props: kept
    assert {p.key: p.value for p in proto.metadata_props} == {p.key: p.value for p in decorated_proto.metadata_props}
    assert proto.producer_name == "onnxcomp"
    assert [node.op_type for node in proto.graph.node] == ["Gemm", "Relu", "MatMul"]
    assert all(not node.doc_string for node in proto.graph.node)
    assert len(proto.graph.initializer) == 3
    internal = [t.name for t in proto.graph.initializer] + [o for n in proto.graph.node for o in n.output if o != "y"]
    assert len(set(internal)) == len(internal)
    assert all(name.startswith("_") and len(name) <= 3 for name in internal)
    assert proto.ByteSize() < decorated_proto.ByteSize()
    feeds = {"x": rng.standard_normal((4, 16)).astype(np.float32)}
    assert np.array_equal(run(proto, feeds)[0], run(decorated_proto, feeds)[0])


def test_clean_up_keep_metadata_keeps_docs(decorated_proto):
    proto = to_proto(clean_up(deserialize(decorated_proto), keep_metadata=True))
    assert proto.doc_string == decorated_proto.doc_string
    assert {p.key: p.value for p in proto.metadata_props} == {p.key: p.value for p in decorated_proto.metadata_props}
    assert proto.producer_name == "tests"


def test_clean_up_is_idempotent_on_unnamed_nodes(mlp_model):
    once = to_proto(clean_up(mlp_model.clone())).SerializeToString()
    twice = to_proto(clean_up(clean_up(mlp_model.clone()))).SerializeToString()
    assert once == twice


def test_clean_up_is_idempotent(decorated_proto):
    once = to_proto(clean_up(deserialize(decorated_proto))).SerializeToString()
    twice = to_proto(clean_up(clean_up(deserialize(decorated_proto)))).SerializeToString()
    assert once == twice


def test_clean_up_leaves_nodes_unnamed(decorated_proto):
    proto = to_proto(clean_up(deserialize(decorated_proto)))
    assert [node.name for node in proto.graph.node] == ["", "", ""]


def test_shorten_names_second_run_not_modified(decorated_proto):
    model = clean_up(deserialize(decorated_proto))
    assert not ShortenNamesPass()(model).modified


def test_shorten_names_avoid_interface_names(rng):
    text = """
    <ir_version: 10, opset_import: ["" : 17]>
    clash (float[N, 16] _0, float[N, 16] _2) => (float[N, 16] _1) {
      s = Add(_0, _2)
      h = MatMul(s, w)
      _1 = Relu(h)
    }
    """
    original = build_model(text, {"w": rng.standard_normal((16, 16)).astype(np.float32)})
    reference = to_proto(original)
    model = clean_up(original)
    proto = check_valid(model)
    assert interface(model) == (["_0", "_2"], ["_1"])
    internal = [t.name for t in proto.graph.initializer] + [o for n in proto.graph.node for o in n.output if o != "_1"]
    assert len(set(internal)) == len(internal)
    assert not set(internal) & {"_0", "_1", "_2"}
    feeds = {"_0": rng.standard_normal((3, 16)).astype(np.float32), "_2": rng.standard_normal((3, 16)).astype(np.float32)}
    assert np.array_equal(run(proto, feeds)[0], run(reference, feeds)[0])
