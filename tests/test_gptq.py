"""GPTQ error compensation (onnxcomp.planning.gptq): same codebooks, lower output error than snapping."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxcomp.planning.compensation import compensate, input_hessians
from onnxcomp.planning.gptq import gptq, output_error, row_snapper, vector_gptq
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
    from onnxcomp.planning.compensation import discount_compensated

    _, weight, hessian = _problem(64, 1024)  # 65,536 entries: grouped and vector candidates too
    layer = layer_options("w", weight, "weight")
    before = {(c.kind, c.bytes, c.sparsity): c.distortion for c in layer.candidates}
    discount_compensated([layer], {"w": weight}, {"w": hessian})
    after = {(c.kind, c.bytes, c.sparsity): c.distortion for c in layer.candidates}
    lowered = [key for key, value in after.items() if key in before and value < before[key]]
    assert all(kind in ("lookup", "grouped", "vector", "scaled") and sparsity == 0 for kind, _, sparsity in lowered)
    assert {kind for kind, _, _ in lowered} >= {"grouped", "vector", "scaled"}
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


def _conv_model(weight: np.ndarray, group: int, attributes: str) -> ir.Model:
    proto = onnx.parser.parse_model(f"""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N, {weight.shape[1] * group}, H, W] x) => (float[N, {weight.shape[0]}, P, Q] y) {{
            y = Conv <group = {group}{attributes}> (x, w)
        }}
    """)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(weight, "w"))
    return ir.serde.deserialize_model(proto)


@pytest.mark.parametrize("group, attributes", [
    (1, ", pads = [1, 1, 1, 1]"),
    (1, ", strides = [2, 2], auto_pad = \"SAME_UPPER\""),
    (2, ", dilations = [2, 2]"),
    (6, ", pads = [1, 0, 1, 0]"),  # depthwise
])
def test_conv_hessians_are_im2col_and_compensation_lowers_the_output_error(group, attributes):
    """A convolution's H per group is P^T P over its input patches (what torch's unfold cuts);
    GPTQ on the group matrices, with per-channel scales, lowers the error ONNX Runtime measures
    at the Conv's output, and the written kernel stays on the codebook times the scales."""
    import torch

    from onnxcomp.encodings.channel_scales import ChannelScales
    from onnxcomp.runtime.inference import session

    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((6, 6 // group, 3, 3)) * np.logspace(-2, 0, 6)[:, None, None, None]).astype(np.float32)
    model = _conv_model(weight, group, attributes)
    x = rng.standard_normal((40, 6, 10, 10)).astype(np.float32)
    for _ in range(2):  # spatially smooth, as images and feature maps are: neighbouring taps correlate
        x = (x + np.roll(x, 1, 2) + np.roll(x, 1, 3) + np.roll(x, (1, 1), (2, 3))) / 2
    hessians = input_hessians(model, find_weights(model), {"x": x}, 16)
    assert hessians["w"].shape == (group, 6 // group * 9, 6 // group * 9)
    pads = [int(p) for p in attributes.split("pads = [")[1].split("]")[0].split(",")] if "pads = [" in attributes else [0] * 4
    if "SAME_UPPER" in attributes:
        pads = [0, 0, 1, 1]  # 10 -> 5 with stride 2 and a 3x3 kernel: one row and column at the end
    dilation = 2 if "dilations" in attributes else 1
    stride = 2 if "strides" in attributes else 1
    padded = torch.from_numpy(np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3]))))
    for g, expected in enumerate(hessians["w"]):
        part = padded[:, g * 6 // group:(g + 1) * 6 // group]
        patches = torch.nn.functional.unfold(part, 3, dilation=dilation, stride=stride).numpy()  # [N, K, L]
        rows = patches.transpose(0, 2, 1).reshape(-1, patches.shape[1]).astype(np.float64)
        np.testing.assert_allclose(expected, rows.T @ rows / len(rows), rtol=1e-4, atol=1e-6)

    scales = ChannelScales(0, np.abs(weight).reshape(6, -1).max(1).astype(np.float32))
    quant = SortedWeights(scales.normalize(weight)).quantize(0.0, 3)

    class Choice:
        pass

    choice = Choice()
    choice.quant, choice.scales = quant, scales
    original = session(ir.serde.serialize_model(model)).run(None, {"x": x})[0]
    plain = scales.restore(row_snapper(quant, (6, weight[0].size))(0, scales.normalize(weight).reshape(6, -1)).reshape(weight.shape))
    assert compensate(model, {"w": choice}, hessians) == 1
    written = find_weights(model)[0].numpy()
    np.testing.assert_allclose(written, scales.restore(row_snapper(quant, (6, weight[0].size))(
        0, scales.normalize(written).reshape(6, -1)).reshape(weight.shape)), rtol=1e-6)

    def error(kernel):
        _conv = _conv_model(kernel, group, attributes)
        return float(np.sum((session(ir.serde.serialize_model(_conv)).run(None, {"x": x})[0] - original) ** 2))

    assert error(written) < (0.9 if dilation == 1 else 1.0) * error(plain)  # dilated taps correlate less


def test_stacked_gptq_is_gptq_on_each_matrix():
    """Batched over matrices (a depthwise convolution's groups), GPTQ gives what it gives on
    each matrix alone, scales included."""
    from onnxcomp.planning.gptq import inverse_factor, stacked_gptq

    rng = np.random.default_rng(5)
    stack = rng.standard_normal((5, 9, 2)).astype(np.float32)
    hessians = []
    for _ in range(5):
        inputs = rng.standard_normal((200, 9)) @ rng.standard_normal((9, 9))
        hessians.append(inputs.T @ inputs / 200)
    spread = np.broadcast_to(rng.uniform(0.5, 2.0, (5, 1, 2)), stack.shape).astype(np.float32)
    book = np.linspace(-1, 1, 7).astype(np.float32)
    together = stacked_gptq(stack, [inverse_factor(h) for h in hessians], book, spread)
    for m, h in enumerate(hessians):
        def snap(i, row, m=m):
            return (book[np.abs(row[:, None] / spread[m, i][:, None] - book).argmin(1)] * spread[m, i]).astype(np.float32)
        np.testing.assert_allclose(together[m], gptq(stack[m], h, snap), rtol=1e-6)


def test_conv_hessians_in_chunks_match_one_run(monkeypatch):
    """With a budget too small for two layers' inputs at once, each convolution's input is
    fetched in its own run of the model, and H is what one run gives."""
    from onnxcomp.planning import compensation

    rng = np.random.default_rng(2)
    proto = onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N, 4, 8, 8] x) => (float[N, 4, 8, 8] y) {
            h = Conv <pads = [1, 1, 1, 1]> (x, a)
            r = Relu (h)
            k = Conv <pads = [1, 1, 1, 1]> (r, b)
            s = Relu (k)
            y = Conv <pads = [1, 1, 1, 1]> (s, c)
        }
    """)
    for name in "abc":
        proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), name))
    model = ir.serde.deserialize_model(proto)
    x = rng.standard_normal((6, 4, 8, 8)).astype(np.float32)
    runs = []
    original_run = compensation.session

    def counting_session(proto):
        sess = original_run(proto)

        class Counted:
            def run(self, names, feed):
                runs.append(list(names))
                return sess.run(names, feed)
        return Counted()

    monkeypatch.setattr(compensation, "session", counting_session)
    whole = input_hessians(model, find_weights(model), {"x": x}, 16)
    assert [sorted(names) for names in runs] == [["r", "s"]]
    runs.clear()
    monkeypatch.setattr(compensation, "ACTIVATION_BUDGET", 1)
    chunked = input_hessians(model, find_weights(model), {"x": x}, 16)
    assert sorted(whole) == sorted(chunked) == ["a", "b", "c"]
    assert runs == [["r"], ["s"]]  # x is a graph input: no run
    for name in whole:
        np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-6)
