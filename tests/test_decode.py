"""Code packing and the decode subgraphs (lookup, sparse positions), checked in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxcomp.encodings import encoding
from onnxcomp.encodings.decode import DecodeBuilder
from tests.conftest import run
from tests.pass_helpers import check_valid, op_types

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


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


@pytest.mark.parametrize("bits", [8, 9, 10, 12])
def test_uniform_grid_finds_wide_float32_grids(bits):
    """A symmetric grid of 2**bits - 1 levels in float32 (what the scaled encoding stores, before
    the scales) is recognised exactly: the smallest gap alone drifts by float32 rounding and, over
    4095 levels, by a whole step."""
    half = (1 << (bits - 1)) - 1
    grid = (np.arange(-half, half + 1) / half).astype(np.float32)
    used = np.unique(np.random.default_rng(bits).choice(grid, 3 * half))
    for values in (grid, used):
        found = encoding.uniform_grid(np.unique(values), encoding.MAX_GRID_BITS)
        assert found is not None
        zero, scale, codes = found
        assert codes[-1] < 1 << bits
        np.testing.assert_allclose((codes - zero) * scale, values, atol=1e-7)
