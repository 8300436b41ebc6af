"""encoding: the byte model of each encoding (packing, lookup, sparse, dense, grouped, vector), the
sparse position helpers, uniform grids, group counts, the two-level prefix-sum layout, the choices
priced for one weight, and the load-cost estimate. Round trips through ONNX Runtime are in
tests/test_decode.py."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.encodings import encoding


@pytest.mark.parametrize(("count", "bits", "word_bits", "per_word", "words"), [
    (100, 1, 8, 8, 13),  # 13 B, against 16 B in uint32 or uint64 words
    (10, 3, 32, 10, 1),  # one uint32 word of ten codes: 4 B, against 5 B in uint8 words
    (10, 8, 8, 1, 10),
    (0, 4, 8, 2, 0),
    (3, 16, 32, 2, 2),
    (5, 33, 64, 1, 5),
])
def test_choose_packing_takes_the_word_size_with_fewest_bytes(count, bits, word_bits, per_word, words):
    packing = encoding.choose_packing(count, bits)
    assert (packing.word_bits, packing.per_word, packing.words) == (word_bits, per_word, words)
    assert packing.payload_bytes == words * word_bits // 8
    every = [-(-count // (w // bits)) * w // 8 for w in (8, 32, 64) if w // bits]
    assert packing.payload_bytes == min(every)


def test_pack_codes_is_planar():
    """Field i of word j holds code i * W + j: 3 words of two 4-bit codes hold codes (0, 3), (1, 4), (2, 5)."""
    words, packing = encoding.pack_codes(np.array([1, 2, 3, 4, 5, 6]), 4)
    assert (packing.word_bits, packing.per_word, packing.words) == (8, 2, 3)
    assert words.dtype == np.uint8 and words.tolist() == [[1 | 4 << 4, 2 | 5 << 4, 3 | 6 << 4]]
    assert encoding.unpack_codes(words, packing, 6).tolist() == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(("levels", "bits"), [(0, 1), (1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (256, 8), (257, 9)])
def test_bits_for(levels, bits):
    assert encoding.bits_for(levels) == bits


def test_sparse_entries_and_deltas_add_fillers_for_long_gaps():
    positions = np.array([0, 2, 10, 11])  # gaps 0, 2, 8, 1; 2-bit deltas reach 3
    assert encoding.sparse_entries(positions, 2) == 1 + 1 + 3 + 1
    assert encoding.sparse_entries(np.array([], np.int64), 2) == 0
    deltas, owners = encoding.sparse_deltas(positions, 2)
    assert deltas.tolist() == [0, 2, 3, 3, 2, 1]
    assert owners.tolist() == [0, 1, -1, -1, 2, 3]
    assert np.cumsum(deltas)[owners >= 0].tolist() == positions.tolist()


@pytest.mark.parametrize(("bits", "word_bits", "nodes"), [(8, 8, 0), (4, 8, 2), (4, 32, 3), (8, 32, 2), (12, 32, 3),
                                                          (16, 32, 2)])
def test_unpack_nodes(bits, word_bits, nodes):
    per_word = word_bits // bits
    assert encoding.narrow_bits(bits) == (8 if bits <= 8 else 16)
    assert encoding.unpack_nodes(encoding.Packing(bits, word_bits, per_word, 1)) == nodes


def test_lookup_bytes_counts_payload_codebook_and_nodes():
    # 64 codes of 8 bits: one per uint8 word, Cast + GatherElements + Reshape (rank 2)
    assert encoding.lookup_bytes(64, 8, 256, 2) == 64 + 4 * 256 + 3 * encoding.NODE_BYTES + 4 * encoding.INITIALIZER_BYTES + 16
    # 64 codes of 4 bits, two per byte: BitShift, Mod, Reshape, Cast, GatherElements, Reshape
    assert encoding.lookup_bytes(64, 4, 16, 2) == 32 + 64 + 6 * encoding.NODE_BYTES + 4 * encoding.INITIALIZER_BYTES + 16
    # the uniform form stores zero and scale (8 B) instead of a codebook
    assert encoding.lookup_bytes(64, 4, 16, 2, uniform=True) == 32 + 8 + 6 * encoding.NODE_BYTES + 56 + 16
    # 63 codes leave a padded word: a Slice more (two for the uniform form)
    assert encoding.lookup_bytes(63, 4, 16, 2) == encoding.lookup_bytes(64, 4, 16, 2) + encoding.NODE_BYTES
    assert encoding.lookup_bytes(63, 4, 16, 2, True) == encoding.lookup_bytes(64, 4, 16, 2, True) + 2 * encoding.NODE_BYTES


def test_dense_bytes():
    assert encoding.dense_bytes(100, 2) == 400 + encoding.DENSE_BYTES + 6
    assert encoding.dense_bytes(100, 2, itemsize=2) == 200 + encoding.DENSE_BYTES + 6


def test_grouped_lookup_bytes_adds_codebooks_and_column_offsets():
    base = encoding.lookup_bytes(8192, 4, 16, 2)
    assert encoding.grouped_lookup_bytes(8192, 4, 8, 16, 2) == base + 4 * 7 * 16 + 8
    columns = encoding.grouped_lookup_bytes(8192, 4, 8, 16, 2, columns=64)
    assert columns == base + 4 * 7 * 16 + 4 * 64 + 3 * encoding.NODE_BYTES + 2 * encoding.INITIALIZER_BYTES + 16


def test_vector_pair_bits_only_where_pairs_pay():
    assert encoding.vector_pair_bits(4096, 4, 16, 4) == 8  # 256 pairs of 16 rows in 8 bits; table 2 KB vs 16K floats
    assert encoding.vector_pair_bits(4095, 4, 16, 4) == 0  # odd code count
    assert encoding.vector_pair_bits(4096, 4, 1, 4) == 0  # one row: nothing to pair
    assert encoding.vector_pair_bits(64, 4, 16, 4) == 0  # pair table too large next to the weight
    assert encoding.vector_pair_bits(1 << 22, 9, 512, 4) == 0  # pair codes of 18 bits


def test_vector_lookup_bytes_without_pairs():
    # 1024 entries in runs of 4: 256 codes of 8 bits, one per byte (the pair table would be too large)
    codes = 256
    assert encoding.vector_pair_bits(codes, 8, 64, 4) == 0
    expected = codes + 4 * 64 * 4 + 3 * encoding.NODE_BYTES + 4 * encoding.INITIALIZER_BYTES + 16
    assert encoding.vector_lookup_bytes(1024, 4, 8, 64, 2) == expected
    # 6-bit codes go five to a uint32 word (52 words, the last padded): BitShift, Cast, Mod, Reshape, Slice more
    packed = 208 + 4 * 64 * 4 + 8 * encoding.NODE_BYTES + 4 * encoding.INITIALIZER_BYTES + 16
    assert encoding.vector_lookup_bytes(1024, 4, 6, 64, 2) == packed


@pytest.mark.parametrize(("shape", "axis", "most", "counts"), [
    ((512, 512), 0, 1, [32]),  # 262144 entries: up to 64 groups of 4096; 32 divides the rows
    ((512, 512), 0, 2, [8, 32]),
    ((1000, 100), 0, 1, [8]),  # 100000 entries: at most 24 groups; 8 divides the 1000 rows
    ((512, 512), 1, 1, [32]),  # column groups: divisors of the last dimension
    ((4096,), 1, 1, []),  # column groups need rank 2
    ((100, 10), 0, 1, []),  # too small for one group of 4096
])
def test_group_counts(shape, axis, most, counts):
    assert encoding.group_counts(shape, axis, most=most) == counts


def test_cumsum_layout_and_grid_order():
    assert encoding.cumsum_layout(encoding.SPLIT_CUMSUM_MIN - 1) is None
    rows, width, padding = encoding.cumsum_layout(2048)
    assert (rows, width, padding) == (64, 32, 0)
    rows, width, padding = encoding.cumsum_layout(2053)  # prime: padded to a near-square product
    assert rows * width == 2053 + padding and 0 < padding < 45 and width >= 22
    # consecutive entries run down each column of the [rows, width] grid
    assert encoding.grid_order(np.arange(6), (3, 2, 0), steps=True).tolist() == [0, 3, 1, 4, 2, 5]
    assert encoding.grid_order(np.arange(1, 5), (3, 2, 2), steps=True).tolist() == [1, 4, 2, 0, 3, 0]
    assert encoding.grid_order(np.arange(1, 5), (3, 2, 2), steps=False).tolist() == [1, 4, 2, 4, 3, 4]


def test_uniform_grid_accepts_grids_and_refuses_the_rest():
    zero, scale, codes = encoding.uniform_grid(np.array([-0.5, 0.0, 1.0], np.float32), 4)
    assert zero == pytest.approx(1.0) and scale == pytest.approx(0.5) and codes.tolist() == [0, 1, 3]
    assert encoding.uniform_grid(np.array([0.0, 1.0, 2.5]), 4) is None  # not on one step
    assert encoding.uniform_grid(np.array([1.0]), 4) is None
    assert encoding.uniform_grid(np.arange(17.0), 4) is None  # 17 levels need 5 bits


def test_gap_histogram_and_price_sparse():
    gaps, counts = encoding.gap_histogram(np.array([3, 4, 5, 9]))
    assert gaps.tolist() == [1, 3, 4] and counts.tolist() == [2, 1, 1]
    assert encoding.price_sparse(np.array([], np.int64), 3, 2) is None
    positions = np.arange(0, 4000, 4)  # every 4th entry
    price = encoding.price_sparse(positions, 3, 2)
    candidates = {bits: encoding.sparse_bytes(encoding.sparse_entries(positions, bits),
                                              encoding.bits_for(3 + (encoding.sparse_entries(positions, bits) > 1000)),
                                              bits, 3 + (encoding.sparse_entries(positions, bits) > 1000), 2)
                  for bits in range(1, 9)}
    assert price.bytes == min(candidates.values())
    assert price.delta_bits == min(candidates, key=candidates.get) == 4
    assert (price.entries, price.fillers, price.value_bits) == (1000, False, 2)


def test_encoding_choices_for_a_clustered_sparse_weight(rng):
    values = rng.choice(np.array([-0.5, 0.3, 1.0], np.float32), (64, 64))
    values[rng.random((64, 64)) < 0.95] = 0
    choices = encoding.encoding_choices(values)
    assert set(choices) == {"dense", "lookup", "sparse"}  # -0.5, 0, 0.3, 1.0 are not on one grid
    sparsity = float(np.mean(values == 0))
    assert choices["dense"] == encoding.Choice("dense", encoding.dense_bytes(4096, 2), sparsity=sparsity)
    assert choices["lookup"] == encoding.Choice("lookup", encoding.lookup_bytes(4096, 2, 4, 2), 2, sparsity=sparsity, levels=4)
    price = encoding.price_sparse(np.flatnonzero(values), 3, 2)
    assert choices["sparse"] == encoding.Choice("sparse", price.bytes, price.value_bits, price.delta_bits, sparsity, 3)
    assert choices["sparse"].bytes < choices["lookup"].bytes
    restored = encoding.encoding_choices(values, itemsize=2, restore_bytes=50)
    assert restored["dense"].bytes == encoding.dense_bytes(4096, 2, 2)
    assert restored["lookup"].bytes == choices["lookup"].bytes + 50
    assert restored["sparse"].bytes == choices["sparse"].bytes + 50


def test_encoding_choices_linear_for_grids_and_dense_only_for_float_weights(rng):
    grid = (rng.integers(0, 16, (32, 32)) * 0.125 - 1.0).astype(np.float32)
    choices = encoding.encoding_choices(grid)
    assert choices["linear"].bits == 4 and choices["linear"].levels == 16
    assert choices["linear"].bytes == encoding.lookup_bytes(1024, 4, 0, 2, uniform=True)
    assert set(encoding.encoding_choices(rng.standard_normal((32, 32)))) == {"dense"}


def test_fold_cost():
    assert encoding.fold_cost("dense", 1000) == 0
    assert encoding.fold_cost("sparse", 1000, entries=10) == int(encoding.SPARSE_NS * 1000 + encoding.SPARSE_ENTRY_NS * 10)
    assert encoding.fold_cost("lookup", 1000, 8) == int(encoding.LOOKUP_NS * 1000)  # one code per byte: no unpacking
    assert encoding.fold_cost("lookup", 1000, 4) == int(encoding.LOOKUP_NS * 1000 + encoding.UNPACK_NS * 1000)
    # vector codes: one per 4 entries, unpacked in pairs where pairs pay
    assert encoding.fold_cost("vector", 16384, 4, dim=4) == int(encoding.LOOKUP_NS * 16384 + encoding.UNPACK_NS * 4096)
    assert encoding.fold_cost("vector", 16384, 4, dim=4, codebook_rows=16) == int(encoding.LOOKUP_NS * 16384)
