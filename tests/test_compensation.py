"""compensation (onnxcomp.planning.compensation): which weights get an input Hessian and what it
holds, which weights `compensate` leaves alone, and when `discount_compensated` changes the
allocator's prices. GPTQ itself and its numeric gains are tested in tests/test_gptq.py."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.encodings.quantize import SortedWeights
from onnxcomp.model.weights import find_weights
from onnxcomp.planning.compensation import compensate, discount_compensated, input_hessians
from onnxcomp.planning.pricing import Candidate, layer_options
from tests.conftest import build_model, run

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

GEMM_TRANSPOSED = """
<ir_version: 10, opset_import: ["" : 17]>
gemm (float[N, 16] x) => (float[N, 8] y) {
  y = Gemm <transB: int = 1> (x, w, b)
}
"""


def correlated_inputs(rng, count: int = 300, width: int = 16) -> np.ndarray:
    mixing = rng.standard_normal((width, width)).astype(np.float32)
    return (rng.standard_normal((count, width)).astype(np.float32) @ mixing).astype(np.float32)


def snapped_choice(values: np.ndarray, levels: int = 8, sparsity: float = 0.0) -> Candidate:
    quant = SortedWeights(values).quantize(sparsity, levels)
    return Candidate("lookup", 100, 0.1, sparsity, 3, quant)


def test_hessians_are_input_second_moments_of_each_matmul_and_gemm_weight(mlp_model, rng):
    x = rng.standard_normal((37, 16)).astype(np.float32)
    hessians = input_hessians(mlp_model, find_weights(mlp_model), {"x": x}, batch_size=10)
    assert set(hessians) == {"w1", "w2"}  # the bias b1 has none
    hidden = run(mlp_model, {"x": x}, extra_outputs=["r"])[1].astype(np.float64)
    np.testing.assert_allclose(hessians["w1"], x.astype(np.float64).T @ x / 37, rtol=1e-5)
    np.testing.assert_allclose(hessians["w2"], hidden.T @ hidden / 37, rtol=1e-5, atol=1e-6)
    assert hessians["w2"].dtype == np.float64 and hessians["w2"].shape == (32, 32)


def test_transposed_gemm_and_shared_weights_get_no_hessian(shared_model, rng):
    gemm = build_model(GEMM_TRANSPOSED, {"w": rng.standard_normal((8, 16)).astype(np.float32),
                                         "b": np.zeros(8, np.float32)})
    x = rng.standard_normal((5, 16)).astype(np.float32)
    assert input_hessians(gemm, find_weights(gemm), {"x": x}, 8) == {}
    assert input_hessians(shared_model, find_weights(shared_model), {"x": np.ones((5, 64), np.float32)}, 8) == {}


def test_compensate_replaces_a_weight_by_codebook_entries_that_lower_the_output_error(rng):
    model = build_model("""
        <ir_version: 10, opset_import: ["" : 17]>
        single (float[N, 16] x) => (float[N, 12] y) { y = MatMul(x, w) }
    """, {"w": (0.1 * rng.standard_normal((16, 12))).astype(np.float32)})
    original = find_weights(model)[0].numpy().copy()
    x = correlated_inputs(rng)
    hessians = input_hessians(model, find_weights(model), {"x": x}, 64)
    choice = snapped_choice(original)
    assert compensate(model, {"w": choice}, hessians) == 1
    compensated = find_weights(model)[0].numpy()
    assert set(np.unique(compensated).tolist()) <= set(choice.quant.codebook.tolist())
    plain = choice.quant.codebook[np.abs(original[..., None] - choice.quant.codebook).argmin(-1)]
    output_error = lambda weight: float(np.sum((x @ (original - weight)) ** 2))  # noqa: E731
    assert output_error(compensated) < output_error(plain)


def test_compensate_leaves_pruned_unplanned_and_unmeasured_weights(mlp_model, rng):
    x = correlated_inputs(rng)
    hessians = input_hessians(mlp_model, find_weights(mlp_model), {"x": x}, 64)
    before = {w.name: w.numpy().copy() for w in find_weights(mlp_model)}
    pruned = snapped_choice(before["w1"], 8, sparsity=0.5)
    assert pruned.quant.nonzeros < before["w1"].size
    assert compensate(mlp_model, {"w1": pruned}, hessians) == 0  # pruned: its mask came from the original values
    assert compensate(mlp_model, {}, hessians) == 0  # no choice
    assert compensate(mlp_model, {"w2": snapped_choice(before["w2"])}, {"w1": hessians["w1"]}) == 0  # no H
    assert compensate(mlp_model, {"w2": Candidate("dense", 10, 0.0)}, hessians) == 0  # nothing to snap to
    for weight in find_weights(mlp_model):
        np.testing.assert_array_equal(weight.numpy(), before[weight.name])


def test_compensate_keeps_plain_snapping_where_inputs_are_uncorrelated(rng):
    """With H the identity GPTQ has no error to spread: its result is plain snapping, which is
    not lower, so the weight is left as it is."""
    weight = (0.1 * rng.standard_normal((16, 12))).astype(np.float32)
    model = build_model("""
        <ir_version: 10, opset_import: ["" : 17]>
        single (float[N, 16] x) => (float[N, 12] y) { y = MatMul(x, w) }
    """, {"w": weight})
    assert compensate(model, {"w": snapped_choice(weight)}, {"w": np.eye(16)}) == 0
    np.testing.assert_array_equal(find_weights(model)[0].numpy(), weight)


def test_discount_leaves_layers_without_a_hessian_or_without_a_gain(rng):
    weight = (0.1 * rng.standard_normal((16, 12))).astype(np.float32)
    original = {(c.kind, c.bytes, c.sparsity): c.distortion for c in layer_options("w", weight, "weight").candidates}
    unmeasured, uncorrelated, correlated = (layer_options("w", weight, "weight") for _ in range(3))
    discount_compensated([unmeasured], {"w": weight}, {})
    discount_compensated([uncorrelated], {"w": weight}, {"w": np.eye(16)})
    assert {(c.kind, c.bytes, c.sparsity): c.distortion for c in unmeasured.candidates} == original
    # uncorrelated inputs: GPTQ is plain snapping on a per-tensor codebook, no discount
    plain = {(c.kind, c.bytes, c.sparsity): c.distortion for c in uncorrelated.candidates if c.kind == "lookup"}
    assert plain and all(original[key] == distortion for key, distortion in plain.items())
    x = correlated_inputs(rng)
    discount_compensated([correlated], {"w": weight}, {"w": x.astype(np.float64).T @ x / len(x)})
    after = {(c.kind, c.bytes, c.sparsity): c.distortion for c in correlated.candidates}
    changed = {key for key in after if key in original and after[key] != original[key]}
    # only unpruned candidates are discounted, by at most 20x (the ratio's floor of 0.05)
    assert changed and all(after[key] < original[key] and key[2] == 0 for key in changed)
    assert all(after[key] >= 0.05 * original[key] * (1 - 1e-9) for key in changed)
