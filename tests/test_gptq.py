"""GPTQ error compensation (onnxcomp.planning.gptq): same codebooks, lower output error than snapping."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxcomp.planning.gptq import compensate, gptq, input_hessians, output_error, row_snapper, vector_gptq
from onnxcomp.encodings.quantize import SortedWeights, grouped_quantize, snap_to_vectors, vector_quantize
from onnxcomp.model.weights import find_weights


def _problem(rows: int = 64, columns: int = 96):
    rng = np.random.default_rng(0)
    inputs = rng.standard_normal((2000, rows)) @ rng.standard_normal((rows, rows)) * 0.3 + rng.standard_normal((2000, rows))
    weight = (rng.standard_normal((rows, columns)) * 0.05).astype(np.float32)
    return inputs, weight, inputs.T @ inputs / len(inputs)


@pytest.mark.parametrize("kind", ["single", "grouped-rows", "grouped-columns", "vector"])
def test_gptq_stays_on_codebook_and_lowers_output_error(kind):
    inputs, weight, hessian = _problem()
    quant = {
        "single": lambda: SortedWeights(weight).quantize(0.0, 8),
        "grouped-rows": lambda: grouped_quantize(weight, None, 16, (8,), 0)[0],
        "grouped-columns": lambda: grouped_quantize(weight, None, 8, (8,), 1)[0],
        "vector": lambda: vector_quantize(weight, None, 2, (32,))[0],
    }[kind]()
    snap = row_snapper(quant, weight.shape)
    plain = np.stack([snap(i, weight[i]) for i in range(weight.shape[0])])
    compensated = gptq(weight, hessian, snap)

    def output_error(quantized):
        return float(np.sum((inputs @ (weight - quantized)) ** 2))

    assert output_error(compensated) < 0.8 * output_error(plain)
    resnapped = np.stack([snap(i, compensated[i]) for i in range(weight.shape[0])])
    np.testing.assert_array_equal(resnapped, compensated)


def test_hessians_skip_padding_and_compensate_in_place():
    text = """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[B, S, 8] x, int64[B, S] attention_mask) => (float[B, S, 12] y) {
            y = MatMul (x, w)
        }
    """
    proto = onnx.parser.parse_model(text)
    rng = np.random.default_rng(1)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal((8, 12)).astype(np.float32), "w"))
    model = ir.serde.deserialize_model(proto)
    x = rng.standard_normal((3, 5, 8)).astype(np.float32)
    mask = np.ones((3, 5), np.int64)
    mask[:, 3:] = 0
    x[:, 3:] = 100.0  # padding: must not count
    hessians = input_hessians(model, find_weights(model), {"x": x, "attention_mask": mask}, 2)
    rows = x[:, :3].reshape(-1, 8).astype(np.float64)
    np.testing.assert_allclose(hessians["w"], rows.T @ rows / len(rows), rtol=1e-5)

    quant = SortedWeights(find_weights(model)[0].numpy()).quantize(0.0, 4)

    class Choice:
        pass

    choice = Choice()
    choice.quant = quant
    assert compensate(model, {"w": choice}, hessians) == 1
    values = find_weights(model)[0].numpy()
    assert set(np.unique(values)) <= set(quant.codebook.tolist())


def test_discount_lowers_only_compensable_candidates():
    from onnxcomp.planning.allocate import layer_options
    from onnxcomp.planning.gptq import discount_compensated

    _, weight, hessian = _problem(64, 1024)  # 65,536 entries: grouped and vector candidates too
    layer = layer_options("w", weight, "weight")
    before = {(c.kind, c.bytes, c.sparsity): c.distortion for c in layer.candidates}
    discount_compensated([layer], {"w": weight}, {"w": hessian})
    after = {(c.kind, c.bytes, c.sparsity): c.distortion for c in layer.candidates}
    lowered = [key for key, value in after.items() if key in before and value < before[key]]
    assert all(kind in ("lookup", "grouped", "vector") and sparsity == 0 for kind, _, sparsity in lowered)
    assert {kind for kind, _, _ in lowered} >= {"grouped", "vector"}
    assert all(value == before[key] for key, value in after.items() if key in before and key[0] in ("sparse", "dense"))


@pytest.mark.parametrize("dim, clusters", [(2, 32), (4, 16)])
def test_vector_gptq_refits_the_codebook_and_beats_snapping(dim, clusters):
    """GPTVQ: with the centres moved along, GPTQ beats snapping by far more than GPTQ on the
    k-means centres alone, and every written vector is a row of the returned codebook."""
    inputs, weight, _ = _problem(64, 128)
    inputs[:, :4] *= 10  # a few inputs with outsized activations, as in MiniLM's FFNs
    hessian = inputs.T @ inputs / len(inputs)
    codebook = vector_quantize(weight, None, dim, (clusters,))[0].codebook
    plain = output_error(weight, snap_to_vectors(weight, codebook), hessian)
    fixed = output_error(weight, gptq(weight, hessian, row_snapper(
        vector_quantize(weight, None, dim, (clusters,))[0], weight.shape)), hessian)
    quantized, refitted = vector_gptq(weight, hessian, codebook)
    assert refitted.shape == codebook.shape and not np.array_equal(refitted, codebook)
    error = output_error(weight, quantized, hessian)
    assert error < 0.6 * plain and error < 0.8 * fixed
    np.testing.assert_array_equal(snap_to_vectors(quantized, refitted), quantized)
    assert {tuple(row) for row in quantized.reshape(-1, dim)} <= {tuple(row) for row in refitted}


def test_vector_compensation_survives_encoding():
    """The pipeline's build encodes the compensated weight with the refitted codebook: the
    compressed model reads back exactly vector_gptq's weight."""
    from onnxcomp.planning.allocate import Allocation, Candidate
    from onnxcomp.stages.build import build
    from onnxcomp.runtime.inference import session

    inputs, weight, hessian = _problem(64, 128)
    proto = onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N, 64] x) => (float[N, 128] y) {
            y = MatMul (x, w)
        }
    """)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(weight, "w"))
    model = ir.serde.deserialize_model(proto)
    hessians = input_hessians(model, find_weights(model), {"x": inputs.astype(np.float32)}, 500)
    quant = vector_quantize(weight, None, 2, (32,))[0]
    allocation = Allocation({"w": Candidate("vector", 1, 0.0, 0.0, 5, quant)}, 1, 0.0)
    built = build(model, allocation, False, {}, hessians=hessians)
    assert any(node.op_type == "Gather" for node in built.graph)
    expected, codebook = vector_gptq(weight, hessians["w"], quant.codebook)
    np.testing.assert_array_equal(allocation.choices["w"].quant.codebook, codebook)
    decoded = session(ir.serde.serialize_model(built)).run(None, {"x": np.eye(64, dtype=np.float32)})[0]
    np.testing.assert_array_equal(decoded, expected)
    plain = snap_to_vectors(weight, quant.codebook)
    assert output_error(weight, expected, hessians["w"]) < output_error(weight, plain, hessians["w"])
