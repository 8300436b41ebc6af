"""patches (onnxcomp.planning.patches): a 2-D convolution's kernel as its groups' matrices and
back, the layout `ConvPatches.of` reads from a Conv node, and the H = P^T P sums over the
input patches (im2col) its kernel sees."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.planning.patches import ConvPatches, kernel, matrices
from tests.conftest import build_model

CONV_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
conv (float[N, {channels}, 7, 6] x) => (float[N, {out}, H, W] y) {{
  y = Conv <{attributes}> (x, w)
}}
"""


def conv_node(weight: np.ndarray, attributes: str = "", channels: int | None = None):
    out = weight.shape[0]
    channels = channels if channels is not None else weight.shape[1]
    text = CONV_TEXT.format(channels=channels, out=out, attributes=attributes)
    if not attributes:
        text = text.replace("Conv <>", "Conv")
    model = build_model(text, {"w": weight.astype(np.float32)})
    return next(iter(model.graph))


def naive_patches(x: np.ndarray, layout: ConvPatches) -> np.ndarray:
    """im2col by loops: [g, positions, K] for a padded input (explicit pads only)."""
    top, left, bottom, right = layout.pads
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    (kh, kw), (sh, sw), (dh, dw) = layout.kernel, layout.strides, layout.dilations
    per_group = x.shape[1] // layout.groups
    rows = [[] for _ in range(layout.groups)]
    for n in range(x.shape[0]):
        for y in range(0, padded.shape[2] - (kh - 1) * dh, sh):
            for col in range(0, padded.shape[3] - (kw - 1) * dw, sw):
                window = padded[n, :, y:y + (kh - 1) * dh + 1:dh, col:col + (kw - 1) * dw + 1:dw]
                for g in range(layout.groups):
                    rows[g].append(window[g * per_group:(g + 1) * per_group].ravel())
    return np.stack([np.stack(r) for r in rows]).astype(np.float64)


def test_matrices_are_each_groups_output_channels_transposed_and_kernel_inverts_them(rng):
    weight = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)  # 6 outputs, 2 groups of 3
    stacked = matrices(weight, 2)
    assert stacked.shape == (2, 2 * 3 * 3, 3)
    np.testing.assert_array_equal(stacked[1], weight[3:].reshape(3, -1).T)
    np.testing.assert_array_equal(kernel(stacked, weight.shape), weight)
    np.testing.assert_array_equal(matrices(weight, 1)[0], weight.reshape(6, -1).T)


def test_layout_of_a_conv_node(rng):
    weight = rng.standard_normal((4, 2, 3, 2)).astype(np.float32)
    node = conv_node(weight, "group: int = 2, strides: ints = [2, 1], dilations: ints = [1, 2], "
                             "pads: ints = [1, 0, 2, 1]", channels=4)
    assert ConvPatches.of(node) == ConvPatches(2, (3, 2), (2, 1), (1, 2), (1, 0, 2, 1), True)
    assert ConvPatches.of(conv_node(weight)) == ConvPatches(1, (3, 2), (1, 1), (1, 1), (0, 0, 0, 0), True)
    assert ConvPatches.of(conv_node(weight, 'auto_pad: string = "VALID"')).pads == (0, 0, 0, 0)
    upper = ConvPatches.of(conv_node(weight, 'auto_pad: string = "SAME_UPPER"'))
    lower = ConvPatches.of(conv_node(weight, 'auto_pad: string = "SAME_LOWER"'))
    assert (upper.pads, upper.same_upper) == (None, True)
    assert (lower.pads, lower.same_upper) == (None, False)


def test_layout_is_none_where_patches_cannot_be_cut(rng):
    one_d = build_model("""
        <ir_version: 10, opset_import: ["" : 17]>
        conv (float[N, 2, 9] x) => (float[N, 4, W] y) { y = Conv (x, w) }
    """, {"w": rng.standard_normal((4, 2, 3)).astype(np.float32)})
    assert ConvPatches.of(next(iter(one_d.graph))) is None  # a 1-D convolution's 3-D kernel
    matmul = build_model("""
        <ir_version: 10, opset_import: ["" : 17]>
        mm (float[N, 4] x) => (float[N, 4] y) { y = MatMul (x, w) }
    """, {"w": rng.standard_normal((4, 4)).astype(np.float32)})
    assert ConvPatches.of(next(iter(matmul.graph))) is None
    # 3 output channels do not split into 2 groups
    assert ConvPatches.of(conv_node(rng.standard_normal((3, 1, 3, 3)).astype(np.float32), "group: int = 2",
                                    channels=2)) is None


@pytest.mark.parametrize("layout", [
    ConvPatches(1, (3, 3), (1, 1), (1, 1), (0, 0, 0, 0)),
    ConvPatches(2, (3, 2), (2, 1), (1, 2), (1, 0, 2, 1)),
    ConvPatches(4, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1)),  # depthwise
])
def test_hessian_sums_are_im2col_products(rng, layout):
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    sums, count = layout.hessian_sums(x, 10_000, rng)
    patches = naive_patches(x, layout)
    assert count == patches.shape[1]
    assert sums.dtype == np.float64 and sums.shape == (layout.groups, patches.shape[2], patches.shape[2])
    np.testing.assert_allclose(sums, np.matmul(patches.transpose(0, 2, 1), patches), rtol=1e-5, atol=1e-5)  # products summed in float32


def test_hessian_sums_sample_at_most_the_rows_asked(rng):
    layout = ConvPatches(1, (3, 3), (1, 1), (1, 1), (0, 0, 0, 0))
    x = rng.standard_normal((3, 2, 7, 6)).astype(np.float32)  # 3 * 5 * 4 = 60 positions
    sums, count = layout.hessian_sums(x, 17, np.random.default_rng(1))
    assert count == 17
    patches = naive_patches(x, layout)[0]
    # 17 distinct positions of the full im2col, drawn by the generator passed in
    pick = np.sort(np.random.default_rng(1).choice(60, 17, replace=False))
    rows = naive_patches(x, layout)[0][pick]
    np.testing.assert_allclose(sums[0], rows.T @ rows, rtol=1e-5, atol=1e-5)  # products summed in float32


def test_same_padding_gives_ceil_of_size_over_stride_positions(rng):
    x = rng.standard_normal((1, 1, 7, 6)).astype(np.float32)
    for same_upper in (True, False):
        layout = ConvPatches(1, (4, 3), (2, 2), (1, 1), None, same_upper)
        _, count = layout.hessian_sums(x, 10_000, rng)
        assert count == 4 * 3  # ceil(7 / 2) * ceil(6 / 2)
    # an even kernel pads one more at the end (upper) or at the start (lower): a corner patch
    # sees the input's first row in a different place
    ones = np.ones((1, 1, 2, 2), np.float32)
    upper, _ = ConvPatches(1, (2, 2), (1, 1), (1, 1), None, True).hessian_sums(ones, 100, rng)
    lower, _ = ConvPatches(1, (2, 2), (1, 1), (1, 1), None, False).hessian_sums(ones, 100, rng)
    assert np.diag(upper[0]).tolist() == [4.0, 2.0, 2.0, 1.0]  # pads after: the first tap sees every input
    assert np.diag(lower[0]).tolist() == [1.0, 2.0, 2.0, 4.0]


def test_hessian_sums_refuse_inputs_the_kernel_does_not_fit(rng):
    layout = ConvPatches(2, (3, 3), (1, 1), (1, 1), (0, 0, 0, 0))
    assert layout.hessian_sums(rng.standard_normal((2, 4, 5)).astype(np.float32), 100, rng) is None  # rank 3
    assert layout.hessian_sums(rng.standard_normal((1, 3, 5, 5)).astype(np.float32), 100, rng) is None  # 3 % 2
    assert layout.hessian_sums(rng.standard_normal((1, 4, 2, 5)).astype(np.float32), 100, rng) is None  # 2 < 3 rows
