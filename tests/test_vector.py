"""Vector lookup: one code per run of `dim` consecutive weights into a [K, dim] codebook."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxcomp.encodings import encoding
from onnxcomp.planning import allocate, pricing
from onnxcomp.planning.pricing import layer_options
from onnxcomp.passes.cluster_weights import ClusterWeightsPass
from onnxcomp.passes.cleanup import clean_up
from onnxcomp.passes.insert_dequantize_lookup import InsertDequantizeLookupPass
from onnxcomp.encodings.quantize import SortedWeights, apply_quantization, snap_to_vectors, vector_quantize
from onnxcomp.reporting.report import inspect_model
from tests.conftest import assert_single_matmul_decodes_exactly_and_folds, single_matmul, to_proto

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


def correlated(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Weights whose neighbours along a row are correlated (smooth rows), as in trained layers."""
    noise = rng.standard_normal((rows, cols + 3))
    return ((noise[:, :-3] + noise[:, 1:-2] + noise[:, 2:-1] + noise[:, 3:]) * 0.05).astype(np.float32)


@pytest.mark.parametrize("weighted", [False, True])
def test_vector_kmeans_sse_matches_snapped_weights_and_beats_scalar(rng, weighted):
    weight = correlated(rng, 64, 128)
    importance = rng.uniform(0.2, 2.0, (1, 128)) if weighted else None
    full = np.ones(weight.shape) if importance is None else np.broadcast_to(importance, weight.shape)
    quants = vector_quantize(weight, importance, 2, (4, 16, 64))
    for quant, clusters in zip(quants, (4, 16, 64)):
        assert quant.vector_dim == 2 and quant.codebook.shape == (clusters, 2) and quant.nonzeros == weight.size
        snapped = snap_to_vectors(weight, quant.codebook)
        assert np.array_equal(apply_quantization(weight, quant, importance), snapped)
        direct = float(np.sum(full * (snapped.astype(np.float64) - weight) ** 2))
        assert quant.sse == pytest.approx(direct, rel=1e-4)
        assert len({tuple(v) for v in snapped.reshape(-1, 2)}) <= clusters
    assert quants[0].sse > quants[1].sse > quants[2].sse
    # Same bits per weight: 16 pairs (2 bits each) beat a 4-entry scalar codebook.
    scalar = SortedWeights(weight, importance).quantize(0.0, 4)
    assert quants[1].sse < 0.9 * scalar.sse


def test_vector_kmeans_is_seeded():
    weight = correlated(np.random.default_rng(3), 32, 64)
    first = vector_quantize(weight, None, 4, (16,))[0]
    second = vector_quantize(weight, None, 4, (16,))[0]
    assert np.array_equal(first.codebook, second.codebook) and first.sse == second.sse


def vector_reference(rng: np.random.Generator, rows: int, cols: int, dim: int, clusters: int) -> ir.Model:
    weight = correlated(rng, rows, cols)
    (quant,) = vector_quantize(weight, None, dim, (clusters,))
    model = single_matmul(weight)
    result = ClusterWeightsPass(bits=None, codebooks={"w": quant.codebook}, vectors={"w"})(model)
    assert result.modified
    assert not ClusterWeightsPass(bits=None, codebooks={"w": quant.codebook}, vectors={"w"})(model).modified
    return model


@pytest.mark.parametrize(("dim", "clusters"), [(2, 16), (2, 256), (4, 64), (8, 32)])
def test_vector_decode_reproduces_values_exactly_and_folds(rng, dim, clusters, tmp_path):
    # 64 x 136 weights: 8704 / dim codes, which leaves the last packed word part-filled for some widths.
    reference = vector_reference(rng, 64, 136, dim, clusters)
    weight = reference.graph.initializers["w"].const_value.numpy()
    model = reference.clone()
    result = InsertDequantizeLookupPass(vectors={"w": dim})(model)
    (row,) = result.rows
    assert row["encoding"] == "vector" and row["vector_dim"] == dim and row["levels"] <= clusters
    assert row["bytes_after"] < row["bytes_before"]
    ops = [node.op_type for node in model.graph]
    assert {"Gather", "Reshape", "Cast"} <= set(ops) and "DequantizeLinear" not in ops
    stored = {name: value.const_value for name, value in model.graph.initializers.items()}
    assert "w" not in stored
    assert any(v.dtype == ir.DataType.FLOAT and v.shape == (row["levels"], dim) for v in stored.values())
    assert_single_matmul_decodes_exactly_and_folds(model, reference, weight, rng, tmp_path)
    assert not InsertDequantizeLookupPass(vectors={"w": dim})(model).modified
    (inspected,) = inspect_model(model)
    assert inspected.encoding == "vector"
    assert inspected.bits == encoding.bits_for(row["levels"]) / dim


def test_vector_lookup_needs_a_plan_and_a_whole_number_of_vectors(rng):
    reference = vector_reference(rng, 64, 128, 2, 16)
    (row,) = InsertDequantizeLookupPass()(reference.clone()).rows
    assert row["encoding"] != "vector"
    odd = single_matmul(np.tile(np.linspace(-1, 1, 16, dtype=np.float32), 63 * 3)[: 63 * 47].reshape(63, 47))
    (row,) = InsertDequantizeLookupPass(vectors={"w": 2})(odd).rows  # 2961 entries: no pairs
    assert row["encoding"] in ("lookup", "linear")


def test_vector_bytes_model_is_close_to_serialized(rng):
    reference = vector_reference(rng, 256, 256, 4, 256)
    before = len(to_proto(reference).SerializeToString())
    model = reference.clone()
    (row,) = InsertDequantizeLookupPass(vectors={"w": 4})(model).rows
    after = len(to_proto(model).SerializeToString())
    assert abs((before - after) - (row["bytes_before"] - row["bytes_after"])) < 400


def test_allocate_offers_vector_candidates_to_big_matrix_weights_only(rng):
    weight = correlated(rng, 512, 256)
    layer = layer_options("w", weight, "weight")
    vectors = [c for c in layer.candidates if c.kind == "vector"]
    assert vectors, "vector candidates should be on the Pareto front"
    budget = weight.size // 4 + 5000  # about 2 bits per weight
    choice = allocate.allocate([layer], budget).choices["w"]
    assert choice.kind == "vector" and choice.bytes <= budget
    plain = layer_options("w", weight, "weight", grouped=False)
    assert not any(c.kind == "vector" for c in plain.candidates)
    assert choice.distortion < 0.8 * allocate.allocate([plain], budget).choices["w"].distortion
    assert not any(c.kind == "vector" for c in layer_options("e", weight, "embedding").candidates)
    assert not any(c.kind == "vector" for c in layer_options("s", weight[:64, :64], "weight").candidates)


def test_compress_with_vector_codebooks_is_more_faithful_at_the_same_size(rng, monkeypatch):
    from onnxcomp.pipeline import CompressOptions, compress_model

    weight = correlated(rng, 512, 256)
    target = weight.size // 4 + 5000
    options = CompressOptions(target_bytes=target, epochs=0, force=True)  # compares fidelity below the floor
    with_vectors = compress_model(single_matmul(weight), options)
    monkeypatch.setattr(pricing, "VECTOR_SHAPES", ())
    without = compress_model(single_matmul(weight), options)
    assert [row.encoding for row in with_vectors.report.layers] == ["vector"]
    assert [row.encoding for row in without.report.layers] != ["vector"]
    assert len(with_vectors.data) <= target and len(without.data) <= target
    assert 1 - with_vectors.report.fidelity["cosine"] < 0.8 * (1 - without.report.fidelity["cosine"])


@pytest.mark.parametrize(("rows", "cols", "dim", "clusters"), [(64, 136, 2, 16), (64, 512, 2, 32), (64, 400, 2, 32)])
def test_vector_pairs_decode_exactly_fold_and_are_priced(rng, rows, cols, dim, clusters, tmp_path, monkeypatch):
    # Two consecutive codes stored as one pair code, gathered from a pair table built at load.
    reference = vector_reference(rng, rows, cols, dim, clusters)
    weight = reference.graph.initializers["w"].const_value.numpy()
    levels = len({tuple(v) for v in weight.reshape(-1, dim)})
    codes = weight.size // dim
    pair_bits = encoding.vector_pair_bits(codes, encoding.bits_for(levels), levels, dim)
    assert pair_bits == encoding.bits_for(levels * levels)
    assert (encoding.choose_packing(codes // 2, pair_bits).payload_bytes
            <= encoding.choose_packing(codes, encoding.bits_for(levels)).payload_bytes)

    def encode():
        model = reference.clone()
        (row,) = InsertDequantizeLookupPass(vectors={"w": dim})(model).rows
        assert row["encoding"] == "vector"
        return model, row, len(to_proto(clean_up(model.clone())).SerializeToString())  # short names, as saved

    model, row, saved = encode()
    with monkeypatch.context() as patch:
        patch.setattr(encoding, "PAIR_TABLE_SHARE", 0.0)  # the same weight without pairs
        single_model, single_row, single_saved = encode()
    assert "Concat" not in [node.op_type for node in single_model.graph]
    # the byte model prices what pairs add (table-building nodes, constants) to within a few bytes
    assert abs((saved - single_saved) - (row["bytes_after"] - single_row["bytes_after"])) < 40
    ops = [node.op_type for node in model.graph]
    assert ops.count("Gather") == 1 and "Concat" in ops and "DequantizeLinear" not in ops
    assert_single_matmul_decodes_exactly_and_folds(model, reference, weight, rng, tmp_path)


def test_vector_pairs_only_where_no_bigger_and_the_table_is_small():
    assert encoding.vector_pair_bits(200000, 5, 32, 2) == 10  # LeNet-5 fc1: same payload, half the indices
    assert encoding.vector_pair_bits(200001, 5, 32, 2) == 0  # odd code count
    assert encoding.vector_pair_bits(58800, 8, 256, 4) == 0  # 65536-row pair table
    assert encoding.vector_pair_bits(2000, 5, 32, 2) == 0  # table large next to the weight
    # 3-bit codes: 21 per uint64 word, 6-bit pair codes only 10 (60 bits): more bytes, no pairs
    assert encoding.choose_packing(50000, 6).payload_bytes > encoding.choose_packing(100000, 3).payload_bytes
    assert encoding.vector_pair_bits(100000, 3, 8, 2) == 0
