"""Self-decoding weight encodings built from standard ONNX ops.

Every encoding stores compact integer codes in initializers and rebuilds the dense float weight
with a small subgraph whose inputs are all initializers, so ONNX Runtime constant-folds it once
at session creation and inference runs at dense speed. DequantizeLinear is never used: ONNX
Runtime does not fold it and decodes on every run (see shared/notes/onnxruntime-facts.md).

Encodings (the byte model in `estimate_bytes` prices each one for the allocator):

* ``lookup``: codes bit-packed into uint8/uint32/uint64 words ->
  BitShift(RIGHT) -> [Cast(UINT8)] -> Mod -> Reshape [-1] -> Cast(INT32) -> GatherElements(codebook) -> Reshape.
* ``linear``: as lookup, but a uniform codebook is rebuilt arithmetically:
  -> Cast(FLOAT) -> Sub(zero) -> Mul(scale) -> Reshape.
* ``vector``: as lookup, but each code stands for `dim` consecutive entries (flat order) and
  the Gather reads rows of a [K, dim] codebook -> Reshape (vector quantization). Where no bigger,
  two consecutive codes are stored as one pair code and gathered from a [K*K, 2*dim] pair table
  built at load (`vector_pair_bits`): half the Gather indices.
* ``grouped``: as lookup, with one codebook per group of rows or columns (`quantize.group_view`):
  row groups -> Reshape [G, M] -> Cast(INT32) -> GatherElements(codebooks [G, K], axis 1) -> Reshape;
  column groups -> Reshape -> Cast(INT32) -> Add(INT32 code offsets) -> Reshape [-1] -> GatherElements -> Reshape.
* ``sparse``: non-zero values as packed codebook codes plus relative position deltas packed in
  narrow words, with filler entries (delta = max, value = 0) for gaps too long for a delta
  (Han et al. 2015) -> CumSum -> ScatterElements into ConstantOfShape -> Reshape; or, where
  smaller (denser weights), positions as a packed 1-bit mask -> Cast(BOOL) -> Compress(Range).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir

WORD_DTYPES = {8: (np.uint8, ir.DataType.UINT8), 32: (np.uint32, ir.DataType.UINT32), 64: (np.uint64, ir.DataType.UINT64)}

# Serialized bytes of the graph structure around the payload, measured on saved models with
# short names (a node ~30-40 B, an initializer header ~12 B). The saved file is the judge; these
# only need to be close, and the pipeline re-tightens when a saved file comes out over budget.
NODE_BYTES = 34
INITIALIZER_BYTES = 14
DENSE_BYTES = 16
# Sparse decodes chain more intermediate values, each with its own (shortened) name and type
# annotation: measured ~16 B per node beyond NODE_BYTES.
SPARSE_NODE_BYTES = NODE_BYTES + 16


@dataclasses.dataclass(frozen=True)
class Packing:
    bits: int
    word_bits: int
    per_word: int
    words: int

    @property
    def payload_bytes(self) -> int:
        return self.words * self.word_bits // 8


def choose_packing(count: int, bits: int) -> Packing:
    """The word size (8/32/64 bits) that stores `count` codes of `bits` bits in the fewest bytes."""
    best = None
    for word_bits in (8, 32, 64):
        per_word = word_bits // bits
        if per_word == 0:
            continue
        words = math.ceil(count / per_word) if count else 0
        candidate = Packing(bits, word_bits, per_word, words)
        if best is None or candidate.payload_bytes < best.payload_bytes:
            best = candidate
    assert best is not None
    return best


def pack_codes(codes: np.ndarray, bits: int) -> tuple[np.ndarray, Packing]:
    """Pack unsigned codes (< 2**bits) into words, planar: with W words and K fields per word,
    field i of word j holds code i * W + j. Returns a [1, W] array.

    Planar, not word by word, because decoding broadcasts the [1, W] words against [K, 1] shift
    amounts: ONNX Runtime then shifts K long rows by one amount each, where the interleaved
    layout ([W, 1] against [K]) runs its broadcast loop once per word (~20 ns per word: 113 ms
    for MiniLM-L3's 11.7M-entry embedding table, against ~3 ms per planar row)."""
    codes = np.asarray(codes).ravel()
    packing = choose_packing(codes.size, bits)
    np_dtype = WORD_DTYPES[packing.word_bits][0]
    padded = np.zeros(packing.words * packing.per_word, dtype=np.uint64)
    padded[: codes.size] = codes
    grid = padded.reshape(packing.per_word, packing.words)
    shifts = (np.arange(packing.per_word, dtype=np.uint64) * np.uint64(bits)).reshape(-1, 1)
    words = np.bitwise_or.reduce(grid << shifts, axis=0) if packing.per_word > 1 else grid[0]
    return words.astype(np_dtype).reshape(1, -1), packing


def unpack_codes(words: np.ndarray, packing: Packing, count: int) -> np.ndarray:
    """Numpy reference of the decode subgraph's unpacking (used by tests and inspection)."""
    words = np.asarray(words).astype(np.uint64).reshape(1, -1)
    shifts = (np.arange(packing.per_word, dtype=np.uint64) * np.uint64(packing.bits)).reshape(-1, 1)
    mask = np.uint64((1 << packing.bits) - 1)
    return ((words >> shifts) & mask).ravel()[:count]


def bits_for(levels: int) -> int:
    return max(1, int(math.ceil(math.log2(max(levels, 2)))))


def sparse_entries(positions: np.ndarray, delta_bits: int) -> int:
    """Entries (real + filler) needed to store sorted flat positions as deltas of `delta_bits` bits."""
    if positions.size == 0:
        return 0
    max_delta = (1 << delta_bits) - 1
    gaps = np.diff(positions, prepend=0)
    # The first delta counts from position 0 and may be 0; a gap g needs ceil(g / max) entries.
    needed = np.maximum(1, -(-gaps // max_delta))
    return int(needed.sum())


def sparse_deltas(positions: np.ndarray, delta_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Deltas with fillers, and for each entry the index of its real non-zero (-1 for fillers)."""
    max_delta = (1 << delta_bits) - 1
    positions = np.asarray(positions, dtype=np.int64)
    gaps = np.diff(positions, prepend=0)
    counts = np.maximum(1, -(-gaps // max_delta))
    last = np.cumsum(counts) - 1  # each real entry comes after its fillers
    deltas = np.full(int(counts.sum()), max_delta, dtype=np.uint64)
    deltas[last] = (gaps - (counts - 1) * max_delta).astype(np.uint64)
    owners = np.full(deltas.size, -1, dtype=np.int64)
    owners[last] = np.arange(positions.size)
    return deltas, owners


def narrow_bits(bits: int) -> int:
    """Width of the unsigned integer type unpacked codes are narrowed to: 8, or 16 for 9-16-bit codes."""
    return 8 if bits <= 8 else 16


def unpack_nodes(packing: Packing) -> int:
    """Nodes that unpack a packed stream: BitShift(RIGHT), Cast(UINT8, or UINT16 for 9-16-bit codes)
    for words wider than that, Mod (unless the codes fill the narrow type)."""
    if packing.per_word == 1:
        return 0
    narrow = narrow_bits(packing.bits)
    return 1 + (1 if packing.word_bits > narrow else 0) + (0 if packing.bits == narrow else 1)


def lookup_bytes(count: int, bits: int, codebook_size: int, rank: int, uniform: bool = False) -> int:
    packing = choose_packing(count, bits)
    padded = packing.words * packing.per_word != count
    if packing.per_word == 1:
        nodes = 2 + (0 if rank == 1 else 1) + (1 if uniform else 0)
    elif uniform:  # unpack, [Reshape, Slice], Cast, Sub, Mul, Reshape
        nodes = unpack_nodes(packing) + 4 + (2 if padded else 0)
    else:  # unpack, Reshape, [Slice], Cast, GatherElements, Reshape
        nodes = unpack_nodes(packing) + 4 + (1 if padded else 0)
    table = 8 if uniform else 4 * codebook_size
    return packing.payload_bytes + table + nodes * NODE_BYTES + 4 * INITIALIZER_BYTES + 8 * rank


def grouped_lookup_bytes(count: int, bits: int, groups: int, codebook_size: int, rank: int,
                         columns: int | None = None) -> int:
    """Lookup with one `codebook_size`-entry codebook per group: codes as in `lookup_bytes`, plus
    G codebooks. Row groups (`columns` None) gather along the codebooks' axis 1 with the codes
    reshaped to [G, M] (a Reshape more where the unpacked codes were cut to length); column
    groups also store one INT32 code offset per column (`columns`, the last dimension) and add
    them (Reshape, Add, Reshape nodes) before a flat GatherElements."""
    base = lookup_bytes(count, bits, codebook_size, rank) + 4 * (groups - 1) * codebook_size
    packing = choose_packing(count, bits)
    if columns is None:
        padded = packing.per_word > 1 and packing.words * packing.per_word != count
        return base + (1 if padded else 0) * NODE_BYTES + 8
    extra_nodes = 3 + (1 if packing.per_word == 1 and rank == 1 else 0)
    return base + 4 * columns + extra_nodes * NODE_BYTES + 2 * INITIALIZER_BYTES + 16


# Vector codes are gathered in pairs (see `vector_pair_bits`) only while the [K*K, 2*dim] pair table
# the graph builds at load holds at most this many floats per float of the weight.
PAIR_TABLE_SHARE = 0.25


def vector_pair_bits(codes: int, bits: int, codebook_rows: int, dim: int) -> int:
    """Bits of a pair code a + K * b for two consecutive vector codes, or 0 where pairs are not used.

    Pairs halve the indices of the decode's Gather (ONNX Runtime's Gather pays ~8 ns per index
    while folding at session creation). Used when the code count is even, pair codes fit 16 bits,
    the pair table is small next to the weight (PAIR_TABLE_SHARE) and the packed pair codes take
    no more bytes than the single codes."""
    if codes % 2 or codebook_rows < 2:
        return 0
    pair_bits = bits_for(codebook_rows * codebook_rows)
    if pair_bits > 16 or codebook_rows * codebook_rows * 2 * dim > PAIR_TABLE_SHARE * codes * dim:
        return 0
    if choose_packing(codes // 2, pair_bits).payload_bytes > choose_packing(codes, bits).payload_bytes:
        return 0
    return pair_bits


def vector_lookup_bytes(count: int, dim: int, bits: int, codebook_rows: int, rank: int) -> int:
    """Vector lookup: one `bits`-bit code per `dim` consecutive entries, a [K, dim] float
    codebook; decoded like a lookup whose Gather yields rows, then always a Reshape. With pairs
    (`vector_pair_bits`): pair codes unpacked flat, and 5 nodes and 3 shape constants that build
    the pair table."""
    codes = -(-count // dim)
    pair_bits = vector_pair_bits(codes, bits, codebook_rows, dim)
    if pair_bits:
        packing = choose_packing(codes // 2, pair_bits)
        padded = packing.words * packing.per_word != codes // 2
        nodes = 3 + 5 + (0 if packing.per_word == 1 else unpack_nodes(packing) + 1 + (1 if padded else 0))
        shapes = 64 if packing.per_word > 1 else 32  # the pair table's shape constants (measured on saved files)
        return (packing.payload_bytes + 4 * codebook_rows * dim + nodes * NODE_BYTES + 7 * INITIALIZER_BYTES
                + 8 * rank + shapes)
    packing = choose_packing(codes, bits)
    padded = packing.words * packing.per_word != codes
    nodes = 3 if packing.per_word == 1 else unpack_nodes(packing) + 3 + (2 if padded else 0)  # unpack, [Reshape, Slice], Cast, Gather, Reshape
    return packing.payload_bytes + 4 * codebook_rows * dim + nodes * NODE_BYTES + 4 * INITIALIZER_BYTES + 8 * rank


def group_counts(shape: tuple[int, ...], axis: int = 0, min_group: int = 4096,
                 wanted: tuple[int, ...] = (8, 32, 128, 512), most: int = 1) -> list[int]:
    """Group counts G for a grouped lookup; groups hold >= `min_group` entries. The `most`
    largest of `wanted` that fit, each moved to the nearest divisor of the size for row groups
    (axis 0; a divisor of the first dimension when one is as near, so groups are whole rows) or
    of the last dimension for column groups (axis 1, rank >= 2 only)."""
    count = int(np.prod(shape)) if shape else 1
    if axis == 1 and len(shape) < 2:
        return []
    divides = count if axis == 0 else int(shape[-1])
    limit = count // min_group
    found: list[int] = []
    for target in wanted:
        if target > limit:
            break
        near = [g for g in range(max(2, target // 2), min(limit, 2 * target) + 1) if divides % g == 0]
        if not near:
            continue
        rows = [g for g in near if axis == 0 and shape and shape[0] % g == 0]
        best = min(near, key=lambda g: (abs(math.log(g / target)), g))
        if rows:
            aligned = min(rows, key=lambda g: abs(math.log(g / target)))
            if abs(math.log(aligned / target)) <= abs(math.log(best / target)):
                best = aligned
        if best not in found:
            found.append(best)
    return found[-most:]


# ONNX Runtime's CumSum pays ~0.7 us per index along its axis (it builds slice iterators per
# index), which made a 400k-weight sparse layer take 120 ms to fold at session creation. From
# this many entries, positions are summed in two levels: the entries are stored column by
# column of a [rows, width] grid, CumSum runs down axis 0 (rows indices, each a contiguous row:
# 3x faster than strided axis-1 slices), and an exclusive CumSum over the width adds each
# column's offset.
SPLIT_CUMSUM_MIN = 2048


def cumsum_layout(entries: int) -> tuple[int, int, int] | None:
    """(rows, width, padding) for the two-level prefix sum, or None below SPLIT_CUMSUM_MIN.

    rows ~ width ~ sqrt(entries) minimises the per-index cost (rows + width indices). `padding`
    entries (step 0, repeating the last value: they rewrite the last non-zero with its own
    value) are stored to fill the grid; the smallest count that gives a near-square factorisation
    is taken, usually 0-3."""
    if entries < SPLIT_CUMSUM_MIN:
        return None
    for total in range(entries, entries + math.isqrt(entries)):
        root = math.isqrt(total)
        for width in range(root, max(1, root // 2) - 1, -1):
            if total % width == 0:
                return total // width, width, total - entries
    root = math.isqrt(entries)
    rows = -(-entries // root)
    return rows, root, rows * root - entries


def grid_order(stream: np.ndarray, layout: tuple[int, int, int], steps: bool) -> np.ndarray:
    """Entries reordered so that a row-major [rows, width] reshape holds consecutive entries down
    each column; padded with steps of 0 (`steps`) or by repeating the last value code."""
    rows, width, padding = layout
    stream = np.asarray(stream).ravel()
    if padding:
        fill = np.zeros(padding, stream.dtype) if steps else np.repeat(stream[-1:], padding)
        stream = np.concatenate([stream, fill])
    return stream.reshape(width, rows).T.ravel()


def shift_table_bytes(packing: Packing) -> int:
    """The per-field shift amounts a packed stream's unpacking reads (one word each), and its Mod divisor."""
    return packing.per_word * packing.word_bits // 8 + 2 * INITIALIZER_BYTES if packing.per_word > 1 else 0


def sparse_bytes(entries: int, value_bits: int, delta_bits: int, codebook_size: int, rank: int) -> int:
    values = choose_packing(entries, value_bits)
    deltas = choose_packing(entries, delta_bits)
    nodes = 6
    initializers = 7
    layout = cumsum_layout(entries)
    if layout is not None:
        entries += layout[2]
        values = choose_packing(entries, value_bits)
        deltas = choose_packing(entries, delta_bits)
        nodes += 5
        initializers += 4
    for packing in (values, deltas):
        if packing.per_word > 1:
            nodes += unpack_nodes(packing) + 1 + (1 if packing.words * packing.per_word != entries else 0)
    return (
        values.payload_bytes + deltas.payload_bytes + 4 * codebook_size
        + shift_table_bytes(values) + shift_table_bytes(deltas)
        + nodes * SPARSE_NODE_BYTES + initializers * INITIALIZER_BYTES + 8 * rank + 8
    )


# Positions as a 1-bit mask are smaller than relative deltas from ~20% density up (LeNet-5 at 1/10:
# 164.5 KB instead of 171.6 KB at the same accuracy), but slower to fold at session creation:
# Compress (or NonZero) walks every weight, ~10 ns each while folding, against a CumSum over the
# non-zeros only. Off by default while session creation must stay within 3x of the original's
# (LeNet-5 at 1/10: 5.1x with the mask, 3.1x without); the byte model and decoder are kept.
MASK_POSITIONS = False


def mask_sparse_bytes(count: int, entries: int, value_bits: int, codebook_size: int, rank: int) -> int:
    """Sparse weight stored as a 1-bit mask over all `count` positions plus the `entries`
    non-zero codes: mask -> Cast(BOOL) -> Compress(Range) -> ScatterElements. Beats relative positions
    from about 20% density up (a mask bit per weight against ~4-5 delta bits per non-zero)."""
    mask = choose_packing(count, 1)
    values = choose_packing(entries, value_bits)
    nodes = unpack_nodes(mask) + 1 + (1 if mask.words * mask.per_word != count else 0) + 3  # mask unpack + Cast/Range/Compress
    nodes += 2 + (unpack_nodes(values) + 1 + (1 if values.words * values.per_word != entries else 0) if values.per_word > 1 else 0)
    return (mask.payload_bytes + values.payload_bytes + 4 * codebook_size
            + shift_table_bytes(mask) + shift_table_bytes(values)
            + nodes * SPARSE_NODE_BYTES + 8 * INITIALIZER_BYTES + 8 * rank + 8)


def dense_bytes(count: int, rank: int, itemsize: int = 4) -> int:
    """A weight stored as it is: `itemsize` bytes per value (2 for float16, 1 for int8)."""
    return itemsize * count + DENSE_BYTES + 3 * rank


def uniform_grid(codebook: np.ndarray, bits: int) -> tuple[float, float, np.ndarray] | None:
    """If the codebook lies on a uniform grid addressable with `bits`, return (zero, scale, codes)."""
    values = np.sort(np.asarray(codebook, dtype=np.float64))
    if values.size < 2:
        return None
    scale = float(np.min(np.diff(values)))
    if scale <= 0:
        return None
    offsets = values - values[0]
    # The smallest gap is off by float32 rounding (~1e-7 of the values' magnitude), which over a
    # 4095-level grid adds up to a whole step: refit the step on the codes of the low levels
    # first (where the drift is far below half a step), then on all of them.
    for trusted in (256.0, np.inf):
        codes = np.round(offsets / scale)
        low = codes <= trusted
        if np.any(codes[low] > 0):
            scale = float(np.dot(codes[low], offsets[low]) / np.dot(codes[low], codes[low]))
    steps = offsets / scale
    codes = np.round(steps)
    tolerance = 1e-6 * max(1.0, float(np.max(np.abs(values))) / scale)
    if np.max(np.abs(steps - codes)) > tolerance or codes[-1] >= (1 << bits):
        return None
    zero = -values[0] / scale
    return zero, scale, codes.astype(np.int64)


MAX_CODEBOOK = 256
# Uniform grids (kind "linear": rebuilt arithmetically, no codebook) are addressed with up to this
# many bits: per-channel grids of 9-12 bits sit between int8 and float32 for the weights that
# matter most at ~4x.
MAX_GRID_BITS = 12


@dataclasses.dataclass(frozen=True)
class SparsePrice:
    bytes: int
    delta_bits: int  # 0: positions as a 1-bit mask (see mask_sparse_bytes)
    value_bits: int
    entries: int
    fillers: bool


def gap_histogram(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct gaps between consecutive flat non-zero positions (from 0), with their counts."""
    gaps = np.diff(np.asarray(positions, dtype=np.int64), prepend=0)
    return np.unique(gaps, return_counts=True)


def price_sparse(positions: np.ndarray | tuple[np.ndarray, np.ndarray], nonzero_levels: int, rank: int,
                 size: int | None = None) -> SparsePrice | None:
    """Cheapest delta width for these flat non-zero positions (or their gap histogram); with the
    weight's `size`, a position mask too where that is smaller (delta_bits 0)."""
    unique_gaps, gap_counts = positions if isinstance(positions, tuple) else gap_histogram(positions)
    if gap_counts.size == 0:
        return None
    count = int(gap_counts.sum())
    best = None
    for delta_bits in range(1, 9):
        max_delta = (1 << delta_bits) - 1
        entries = int(np.sum(gap_counts * np.maximum(1, -(-unique_gaps // max_delta))))
        fillers = entries > count
        value_bits = bits_for(nonzero_levels + (1 if fillers else 0))
        priced = sparse_bytes(entries, value_bits, delta_bits, nonzero_levels + (1 if fillers else 0), rank)
        if best is None or priced < best.bytes:
            best = SparsePrice(priced, delta_bits, value_bits, entries, fillers)
    if MASK_POSITIONS and size is not None and best is not None:
        value_bits = bits_for(nonzero_levels)
        masked = mask_sparse_bytes(size, count, value_bits, nonzero_levels, rank)
        if masked < best.bytes:
            best = SparsePrice(masked, 0, value_bits, count, False)
    return best


@dataclasses.dataclass(frozen=True)
class Choice:
    """The smallest encoding for one (already clustered) weight."""

    kind: str  # dense | lookup | linear | sparse
    bytes: int
    bits: int = 32
    delta_bits: int = 0
    sparsity: float = 0.0
    levels: int = 0


def encoding_choices(values: np.ndarray, itemsize: int = 4, restore_bytes: int = 0) -> dict[str, Choice]:
    """Price every applicable encoding for a weight's actual (working, float32) values.

    `itemsize` is the bytes per value of the weight's own type (dense storage); `restore_bytes`
    what every decode adds to give the weight back that type (`onnxcomp.model.weights.Storage`)."""
    values = np.asarray(values, dtype=np.float32)
    rank = values.ndim
    count = values.size
    sparsity = float(np.count_nonzero(values == 0) / max(count, 1))
    choices = {"dense": Choice("dense", dense_bytes(count, rank, itemsize), sparsity=sparsity)}
    encoded = _encoded_choices(values, sparsity)
    return choices | {kind: dataclasses.replace(c, bytes=c.bytes + restore_bytes) for kind, c in encoded.items()}


def _encoded_choices(values: np.ndarray, sparsity: float) -> dict[str, Choice]:
    rank = values.ndim
    count = values.size
    choices: dict[str, Choice] = {}
    unique = np.unique(values)
    grid = uniform_grid(unique, MAX_GRID_BITS) if unique.size <= 1 << MAX_GRID_BITS else None
    if grid is not None:
        grid_bits = bits_for(int(grid[2][-1]) + 1)
        choices["linear"] = Choice("linear", lookup_bytes(count, grid_bits, 0, rank, uniform=True), grid_bits,
                                   sparsity=sparsity, levels=int(grid[2][-1]) + 1)
    if unique.size > MAX_CODEBOOK:
        return choices
    bits = bits_for(unique.size)
    choices["lookup"] = Choice("lookup", lookup_bytes(count, bits, unique.size, rank), bits,
                               sparsity=sparsity, levels=int(unique.size))
    nonzero_levels = int(np.count_nonzero(unique))
    if nonzero_levels and sparsity > 0:
        price = price_sparse(np.flatnonzero(values.ravel()), nonzero_levels, rank, count)
        if price is not None:
            choices["sparse"] = Choice("sparse", price.bytes, price.value_bits, price.delta_bits,
                                       sparsity=sparsity, levels=nonzero_levels)
    return choices


# -- load cost ------------------------------------------------------------------------------
# ONNX Runtime folds decode subgraphs node by node at session creation, single-threaded, copying
# every folded output several times. `fold_cost` estimates what one weight's decode adds to
# session creation, in nanoseconds, from per-op costs measured on ONNX Runtime 1.19 (2-core
# x86 machine; one-off profiles of the LeNet decodes, see the README): float outputs of the
# lookup chain (Cast to INT32, Gather/GatherElements, Reshape) ~4-5 ns per weight, unpacking
# ~1 ns per packed code, and for sparse weights the dense-size ConstantOfShape ->
# ScatterElements -> Reshape chain ~4 ns per weight plus ~50 ns per stored entry (two
# unpacked streams, CumSum, the scatter itself). The original model's load is ~1.1 ns per byte
# (`allocate.LOAD_NS_PER_BYTE`).
LOOKUP_NS = 5.0
UNPACK_NS = 1.0
SPARSE_NS = 4.0
SPARSE_ENTRY_NS = 50.0


def fold_cost(kind: str, count: int, bits: int = 8, entries: int = 0, dim: int = 1, codebook_rows: int = 0) -> int:
    """Estimated nanoseconds ONNX Runtime spends folding one weight's decode at session creation."""
    if kind == "dense":
        return 0
    if kind == "sparse":
        return int(SPARSE_NS * count + SPARSE_ENTRY_NS * entries)
    codes = count
    if kind == "vector":
        codes = -(-count // dim)
        pair_bits = vector_pair_bits(codes, bits, codebook_rows, dim) if codebook_rows else 0
        if pair_bits:
            codes, bits = codes // 2, pair_bits
    unpack = UNPACK_NS * codes if choose_packing(codes, bits).per_word > 1 else 0.0
    return int(LOOKUP_NS * count + unpack)
