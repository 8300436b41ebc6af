"""Structural neuron/channel elimination: analysis, removal, numerics, idempotence, validity."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.channels import analyze_channels
from onnxcomp.errors import OnnxcompError
from onnxcomp.passes.eliminate_neurons import EliminateNeuronsPass

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's legacy exporter

FLOAT = TensorProto.FLOAT


def _model(nodes, inputs, outputs, weights: dict[str, np.ndarray], opset: int = 17) -> ir.Model:
    initializers = [numpy_helper.from_array(array, name) for name, array in weights.items()]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid("my.ops", 1)]
    proto = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    return ir.from_proto(proto)


def _input(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, FLOAT, shape)


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    proto = ir.to_proto(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _eliminate(model: ir.Model, feeds: dict[str, np.ndarray], atol: float = 1e-5, **options):
    """Run the pass; check validity, identical outputs and idempotence."""
    before = _run(model, feeds)
    interface = [(v.name, v.dtype, v.shape) for v in [*model.graph.inputs, *model.graph.outputs]]
    result = EliminateNeuronsPass(**options)(model)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    after = _run(model, feeds)
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, atol=atol, rtol=0)
    assert interface == [
        (v.name, v.dtype, v.shape) for v in [*model.graph.inputs, *model.graph.outputs]
    ]
    again = EliminateNeuronsPass(**options)(model)
    assert not again.modified and again.neurons_removed == 0
    return result


def _weight(model: ir.Model, name: str) -> tuple[int, ...]:
    return model.graph.initializers[name].const_value.shape.numpy()


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _randn(rng, *shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


# -- models ----------------------------------------------------------------------------------


def _mlp(rng) -> ir.Model:
    w1, b1 = _randn(rng, 32, 16), _randn(rng, 32)
    w2, b2 = _randn(rng, 24, 32), _randn(rng, 24)
    w3, b3 = _randn(rng, 10, 24), _randn(rng, 10)
    w2[:, [3, 7]] = 0  # hidden 3 and 7 are never read
    w1[11], b1[11] = 0, -1.0  # ReLU(-1) = 0: dead
    w1[12], b1[12] = 0, 0.5  # constant 0.5: folded into fc2's bias
    w3[:, 5] = 0
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], name="fc1", transB=1),
        helper.make_node("Relu", ["h1"], ["a1"], name="relu1"),
        helper.make_node("Gemm", ["a1", "w2", "b2"], ["h2"], name="fc2", transB=1),
        helper.make_node("Relu", ["h2"], ["a2"], name="relu2"),
        helper.make_node("Gemm", ["a2", "w3", "b3"], ["y"], name="fc3", transB=1),
    ]
    weights = dict(w1=w1, b1=b1, w2=w2, b2=b2, w3=w3, b3=b3)
    return _model(nodes, [_input("x", ["N", 16])], [_input("y", ["N", 10])], weights)


def _conv_bn(name, x, out, rng, weights, c_in, c_out, k=3, pad=1, group=1):
    weights[f"{name}.w"] = _randn(rng, c_out, c_in // group, k, k) * 0.3
    weights[f"{name}.b"] = _randn(rng, c_out) * 0.1
    weights[f"{name}.scale"] = rng.uniform(0.5, 1.5, c_out).astype(np.float32)
    weights[f"{name}.beta"] = _randn(rng, c_out) * 0.1
    weights[f"{name}.mean"] = _randn(rng, c_out) * 0.1
    weights[f"{name}.var"] = rng.uniform(0.5, 1.5, c_out).astype(np.float32)
    return [
        helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.c"], name=name,
                         pads=[pad] * 4, group=group),
        helper.make_node("BatchNormalization",
                         [f"{name}.c", f"{name}.scale", f"{name}.beta", f"{name}.mean",
                          f"{name}.var"], [out], name=f"{name}.bn"),
    ]


def _resnet_block(rng) -> ir.Model:
    weights: dict[str, np.ndarray] = {}
    nodes = [
        *_conv_bn("conv0", "x", "bn0", rng, weights, 3, 8),
        helper.make_node("Relu", ["bn0"], ["a0"]),
        *_conv_bn("conv1", "a0", "bn1", rng, weights, 8, 6),
        helper.make_node("Relu", ["bn1"], ["a1"]),
        *_conv_bn("conv2", "a1", "bn2", rng, weights, 6, 8, k=1, pad=0),
        helper.make_node("Add", ["bn2", "a0"], ["sum"]),
        helper.make_node("Relu", ["sum"], ["a2"]),
        helper.make_node("GlobalAveragePool", ["a2"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc", transB=1),
    ]
    weights["fc.w"], weights["fc.b"] = _randn(rng, 10, 8), _randn(rng, 10)
    # conv1 channel 2: zero weights and bias, BN shifts it to -1, ReLU makes it 0.
    weights["conv1.w"][2], weights["conv1.b"][2] = 0, 0
    weights["conv1.beta"][2], weights["conv1.mean"][2] = -1.0, 0.0
    # conv1 channel 4: constant 0.7 after BN and ReLU, folded into conv2's bias (1x1, no pad).
    weights["conv1.w"][4], weights["conv1.b"][4] = 0, 0
    weights["conv1.beta"][4], weights["conv1.mean"][4] = 0.7, 0.0
    # residual channel 5 (conv0 + conv2 through the Add): nobody reads it.
    weights["conv1.w"][:, 5] = 0
    weights["fc.w"][:, 5] = 0
    return _model(nodes, [_input("x", [2, 3, 8, 8])], [_input("y", [2, 10])], weights)


# -- tests -----------------------------------------------------------------------------------


def test_mlp_gemm_chain_removes_planted_neurons():
    model = _mlp(_rng())
    feeds = {"x": _randn(_rng(1), 5, 16)}
    result = _eliminate(model, feeds)
    assert result.modified
    assert result.removed == {"fc1": 4, "fc2": 1}
    assert _weight(model, "w1") == (28, 16)
    assert _weight(model, "b1") == (28,)
    assert _weight(model, "w2") == (23, 28)
    assert _weight(model, "w3") == (10, 23)
    assert result.sizes["fc1"] == (32, 28)
    assert "fc3" in result.blocked and "graph output" in result.blocked["fc3"]
    assert {layer.node for layer in result.layers} == {"fc1", "fc2", "fc3"}
    assert result.params_after < result.params_before
    assert result.summary().startswith("5 channels removed in 2 groups")
    assert {row["name"]: row["after"] for row in result.rows}["w2"] == [23, 28]


def test_analysis_groups_of_mlp():
    analysis = analyze_channels(_mlp(_rng()))
    by_name = {group.name: group for group in analysis.groups}
    assert set(by_name) == {"input:x", "fc1", "fc2", "fc3"}
    fc1 = by_name["fc1"]
    assert fc1.size == 32 and not fc1.blocked
    assert {(r.node, r.tensor, r.axis) for r in fc1.producers} == {("fc1", "w1", 0),
                                                                   ("fc1", "b1", -1)}
    assert {(r.node, r.tensor, r.axis) for r in fc1.consumers} == {("fc2", "w2", 1)}


def test_torch_exported_mlp():
    torch = pytest.importorskip("torch")
    import io

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(12, 20), torch.nn.ReLU(), torch.nn.Linear(20, 6)
    ).eval()
    with torch.no_grad():
        net[2].weight[:, [1, 4, 9]] = 0
    buffer = io.BytesIO()
    torch.onnx.export(net, (torch.randn(2, 12),), buffer, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    proto = onnx.load_from_string(buffer.getvalue())
    proto.ir_version = 10
    model = ir.from_proto(proto)
    result = _eliminate(model, {"x": _randn(_rng(2), 3, 12)})
    assert result.neurons_removed == 3
    assert _weight(model, "0.weight") == (17, 12)
    assert _weight(model, "2.weight") == (6, 17)


def test_flatten_into_gemm_after_conv():
    rng = _rng(3)
    conv_w, conv_b = _randn(rng, 6, 2, 3, 3), _randn(rng, 6)
    fc_w, fc_b = _randn(rng, 5, 6 * 4 * 4), _randn(rng, 5)
    conv_w[2], conv_b[2] = 0, -0.5  # ReLU(-0.5) = 0
    fc_w[:, 4 * 16 : 5 * 16] = 0  # channel 4's whole block of 16 features is never read
    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], name="conv", pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1),
    ]
    weights = {"conv.w": conv_w, "conv.b": conv_b, "fc.w": fc_w, "fc.b": fc_b}
    model = _model(nodes, [_input("x", ["N", 2, 8, 8])], [_input("y", ["N", 5])], weights)
    group = analyze_channels(model).group("conv")
    assert [(r.node, r.offset, r.inner) for r in group.consumers] == [("fc", 0, 16)]
    result = _eliminate(model, {"x": _randn(rng, 2, 2, 8, 8)})
    assert result.removed == {"conv": 2}
    assert _weight(model, "conv.w") == (4, 2, 3, 3)
    assert _weight(model, "fc.w") == (5, 64)


def test_resnet_block_with_batchnorm_and_residual():
    model = _resnet_block(_rng(4))
    analysis = analyze_channels(model)
    residual = analysis.group("conv0")
    assert len(residual.origins) == 2  # conv0 and conv2 meet in the Add
    assert not residual.blocked
    result = _eliminate(model, {"x": _randn(_rng(5), 2, 3, 8, 8)})
    assert result.removed == {"conv0": 1, "conv1": 2}
    assert _weight(model, "conv0.w") == (7, 3, 3, 3)
    assert _weight(model, "conv2.w") == (7, 4, 1, 1)
    assert _weight(model, "conv1.w") == (4, 7, 3, 3)
    assert _weight(model, "conv0.scale") == (7,)
    assert _weight(model, "conv2.var") == (7,)
    assert _weight(model, "fc.w") == (10, 7)


def test_constant_channel_before_padded_conv_is_kept():
    # conv1 -> conv2 with padding: a constant 0.7 channel cannot move into conv2's bias exactly.
    rng = _rng(6)
    weights: dict[str, np.ndarray] = {}
    nodes = [
        *_conv_bn("conv1", "x", "bn1", rng, weights, 3, 4),
        helper.make_node("Relu", ["bn1"], ["a1"]),
        helper.make_node("Conv", ["a1", "conv2.w"], ["y"], name="conv2", pads=[1] * 4),
    ]
    weights["conv2.w"] = _randn(rng, 2, 4, 3, 3)
    weights["conv1.w"][1], weights["conv1.b"][1] = 0, 0
    weights["conv1.beta"][1], weights["conv1.mean"][1] = 0.7, 0.0
    model = _model(nodes, [_input("x", [1, 3, 6, 6])], [_input("y", [1, 2, 6, 6])], weights)
    result = _eliminate(model, {"x": _randn(rng, 1, 3, 6, 6)})
    assert not result.modified


def test_concat_of_two_conv_branches():
    rng = _rng(7)
    weights = {
        "a.w": _randn(rng, 4, 3, 3, 3), "a.b": _randn(rng, 4),
        "b.w": _randn(rng, 6, 3, 1, 1), "b.b": _randn(rng, 6),
        "c.w": _randn(rng, 5, 10, 1, 1), "c.b": _randn(rng, 5),
        "fc.w": _randn(rng, 3, 5), "fc.b": _randn(rng, 3),
    }
    weights["c.w"][:, 1] = 0  # branch a, channel 1
    weights["c.w"][:, 4 + 2] = 0  # branch b, channel 2 (offset 4 in the Concat)
    weights["c.w"][:, 4 + 5] = 0  # branch b, channel 5
    nodes = [
        helper.make_node("Conv", ["x", "a.w", "a.b"], ["ca"], name="a", pads=[1] * 4),
        helper.make_node("Relu", ["ca"], ["ra"]),
        helper.make_node("Conv", ["x", "b.w", "b.b"], ["cb"], name="b"),
        helper.make_node("Relu", ["cb"], ["rb"]),
        helper.make_node("Concat", ["ra", "rb"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "c.w", "c.b"], ["cc"], name="c"),
        helper.make_node("Relu", ["cc"], ["rc"]),
        helper.make_node("GlobalAveragePool", ["rc"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc", transB=1),
    ]
    model = _model(nodes, [_input("x", [1, 3, 5, 5])], [_input("y", [1, 3])], weights)
    offsets = {r.offset for r in analyze_channels(model).group("b").consumers}
    assert offsets == {4}
    result = _eliminate(model, {"x": _randn(rng, 1, 3, 5, 5)})
    assert result.removed == {"a": 1, "b": 2}
    assert _weight(model, "a.w") == (3, 3, 3, 3)
    assert _weight(model, "b.w") == (4, 3, 1, 1)
    assert _weight(model, "c.w") == (5, 7, 1, 1)


def test_depthwise_conv_shrinks_with_its_channels():
    rng = _rng(8)
    weights = {
        "pw1.w": _randn(rng, 8, 3, 1, 1), "pw1.b": _randn(rng, 8),
        "dw.w": _randn(rng, 8, 1, 3, 3), "dw.b": _randn(rng, 8),
        "pw2.w": _randn(rng, 4, 8, 1, 1),
    }
    weights["pw2.w"][:, [3, 6]] = 0
    nodes = [
        helper.make_node("Conv", ["x", "pw1.w", "pw1.b"], ["c1"], name="pw1"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "dw.w", "dw.b"], ["c2"], name="dw", group=8, pads=[1] * 4),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "pw2.w"], ["y"], name="pw2"),
    ]
    model = _model(nodes, [_input("x", [1, 3, 6, 6])], [_input("y", [1, 4, 6, 6])], weights)
    result = _eliminate(model, {"x": _randn(rng, 1, 3, 6, 6)})
    assert result.removed == {"pw1": 2}
    assert _weight(model, "dw.w") == (6, 1, 3, 3)
    assert _weight(model, "dw.b") == (6,)
    assert model.graph.node("dw").attributes.get_int("group") == 6
    assert _weight(model, "pw2.w") == (4, 6, 1, 1)


def test_grouped_conv_blocks_its_input_channels():
    rng = _rng(9)
    weights = {"c1.w": _randn(rng, 8, 3, 1, 1), "g.w": _randn(rng, 4, 4, 3, 3)}
    weights["g.w"][:, 1] = 0
    nodes = [
        helper.make_node("Conv", ["x", "c1.w"], ["c1"], name="c1"),
        helper.make_node("Conv", ["c1", "g.w"], ["y"], name="g", group=2, pads=[1] * 4),
    ]
    model = _model(nodes, [_input("x", [1, 3, 4, 4])], [_input("y", [1, 4, 4, 4])], weights)
    result = _eliminate(model, {"x": _randn(rng, 1, 3, 4, 4)})
    assert not result.modified
    assert "grouped" in result.blocked["c1"]


def _blocked_after(op_nodes, extra_weights=None, out_shape=(1, 6, 4, 4)):
    rng = _rng(10)
    weights = {"c.w": _randn(rng, 6, 3, 3, 3), "c.b": _randn(rng, 6), "d.w": _randn(rng, 2, 6, 1, 1)}
    weights["c.w"][1], weights["c.b"][1] = 0, -1  # dead after ReLU
    weights["d.w"][:, 4] = 0  # never read by d
    weights.update(extra_weights or {})
    nodes = [
        helper.make_node("Conv", ["x", "c.w", "c.b"], ["c"], name="c", pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Conv", ["r", "d.w"], ["y1"], name="d"),
        *op_nodes,
    ]
    outputs = [_input("y1", [1, 2, 4, 4]), _input("y2", list(out_shape))]
    model = _model(nodes, [_input("x", [1, 3, 4, 4])], outputs, weights)
    result = _eliminate(model, {"x": _randn(rng, 1, 3, 4, 4)})
    assert not result.modified
    assert _weight(model, "c.w") == (6, 3, 3, 3)
    return result.blocked["c"]


def test_graph_output_blocks_the_group():
    reason = _blocked_after([helper.make_node("Identity", ["r"], ["y2"])])
    assert "graph output 'y2'" in reason


def test_softmax_over_channels_blocks_the_group():
    nodes = [
        helper.make_node("Softmax", ["r"], ["s"], name="sm", axis=1),
        helper.make_node("ReduceSum", ["s", "axes"], ["y2"], keepdims=1),
    ]
    reason = _blocked_after(nodes, {"axes": np.array([1], np.int64)}, (1, 1, 4, 4))
    assert "Softmax 'sm'" in reason and "channel axis" in reason


def test_reshape_splitting_channels_blocks_the_group():
    nodes = [
        helper.make_node("Reshape", ["r", "shape"], ["y2"], name="split"),
    ]
    reason = _blocked_after(nodes, {"shape": np.array([1, 2, 3, 16], np.int64)}, (1, 2, 3, 16))
    assert "Reshape 'split'" in reason


def test_computed_reshape_blocks_the_group():
    nodes = [
        helper.make_node("Shape", ["x"], ["xs"], start=0, end=1),
        helper.make_node("Concat", ["xs", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["r", "target"], ["y2"], name="view"),
    ]
    reason = _blocked_after(nodes, {"rest": np.array([-1], np.int64)}, (1, 96))
    assert "Reshape 'view'" in reason and "computed" in reason


def test_unknown_op_blocks_the_group():
    nodes = [helper.make_node("Swish", ["r"], ["y2"], name="custom", domain="my.ops")]
    rng = _rng(10)
    weights = {"c.w": _randn(rng, 6, 3, 3, 3), "d.w": _randn(rng, 2, 6, 1, 1)}
    weights["d.w"][:, 4] = 0
    graph_nodes = [
        helper.make_node("Conv", ["x", "c.w"], ["c"], name="c", pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Conv", ["r", "d.w"], ["y1"], name="d"),
        *nodes,
    ]
    model = _model(graph_nodes, [_input("x", [1, 3, 4, 4])],
                   [_input("y1", [1, 2, 4, 4]), _input("y2", [1, 6, 4, 4])], weights)
    assert "unsupported Swish 'custom'" in analyze_channels(model).group("c").blocked_reason
    assert not EliminateNeuronsPass()(model).modified


def test_reshape_to_flat_updates_the_shape_constant():
    rng = _rng(11)
    weights = {
        "c.w": _randn(rng, 4, 1, 3, 3), "c.b": _randn(rng, 4),
        "fc.w": _randn(rng, 4 * 9, 3), "shape": np.array([-1, 36], np.int64),
    }
    weights["fc.w"][2 * 9 : 3 * 9] = 0
    nodes = [
        helper.make_node("Conv", ["x", "c.w", "c.b"], ["c"], name="c"),
        helper.make_node("Reshape", ["c", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc.w"], ["y"], name="fc"),
    ]
    model = _model(nodes, [_input("x", ["N", 1, 5, 5])], [_input("y", ["N", 3])], weights)
    result = _eliminate(model, {"x": _randn(rng, 2, 1, 5, 5)})
    assert result.removed == {"c": 1}
    assert model.graph.initializers["shape"].const_value.numpy().tolist() == [-1, 27]
    assert _weight(model, "fc.w") == (27, 3)


def test_matmul_with_bias_add_folds_constant_neurons():
    rng = _rng(12)
    weights = {
        "w1": _randn(rng, 8, 12), "b1": _randn(rng, 12),
        "w2": _randn(rng, 12, 4), "b2": _randn(rng, 4),
    }
    weights["w1"][:, 3], weights["b1"][3] = 0, 2.0  # constant tanh(2.0), folded into b2
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["m1"], name="l1"),
        helper.make_node("Add", ["m1", "b1"], ["h1"]),
        helper.make_node("Tanh", ["h1"], ["a1"]),
        helper.make_node("MatMul", ["a1", "w2"], ["m2"], name="l2"),
        helper.make_node("Add", ["m2", "b2"], ["y"]),
    ]
    model = _model(nodes, [_input("x", ["B", "T", 8])], [_input("y", ["B", "T", 4])], weights)
    result = _eliminate(model, {"x": _randn(rng, 2, 3, 8)})
    assert result.removed == {"l1": 1}
    assert _weight(model, "w1") == (8, 11) and _weight(model, "b1") == (11,)
    assert _weight(model, "w2") == (11, 4)


def test_input_pixels_removed_by_gather_inside_the_graph():
    rng = _rng(13)
    weights = {"w1": _randn(rng, 16, 36), "b1": _randn(rng, 16),
               "w2": _randn(rng, 4, 16), "b2": _randn(rng, 4)}
    weights["w1"][:, [0, 5, 30]] = 0  # pixels 0, 5 and 30 are never read
    nodes = [
        helper.make_node("Flatten", ["x"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], name="fc2", transB=1),
    ]
    model = _model(nodes, [_input("x", ["N", 1, 6, 6])], [_input("y", ["N", 4])], weights)
    feeds = {"x": _randn(rng, 3, 1, 6, 6)}
    result = _eliminate(model, feeds)
    assert result.removed == {"input:x": 3}
    assert _weight(model, "w1") == (16, 33)
    gathers = [node for node in model.graph if node.op_type == "Gather"]
    assert len(gathers) == 1 and gathers[0].inputs[0].name == "flat"
    assert model.graph.inputs[0].shape.dims[1:] == (1, 6, 6)

    # Planting more zeros later narrows the same Gather instead of adding another.
    fc1 = model.graph.node("fc1")
    w1 = fc1.inputs[1].const_value.numpy().copy()
    w1[:, [0, 1]] = 0
    fc1.inputs[1].const_value = ir.tensor(w1, name="w1")
    result = _eliminate(model, feeds)
    assert result.removed == {"input:x": 2}
    assert [node.op_type for node in model.graph].count("Gather") == 1
    assert _weight(model, "w1") == (16, 31)


def test_direct_input_features_removed():
    model = _mlp(_rng(14))
    fc1 = model.graph.node("fc1")
    w1 = fc1.inputs[1].const_value.numpy().copy()
    w1[:, [2, 9]] = 0
    fc1.inputs[1].const_value = ir.tensor(w1, name="w1")
    result = _eliminate(model, {"x": _randn(_rng(1), 4, 16)})
    assert result.removed["input:x"] == 2
    assert _weight(model, "w1") == (28, 14)


def test_norm_selection_removes_near_dead_neurons():
    model = _mlp(_rng(15))
    fc1, fc2 = model.graph.node("fc1"), model.graph.node("fc2")
    w1 = fc1.inputs[1].const_value.numpy().copy()
    b1 = fc1.inputs[2].const_value.numpy().copy()
    w2 = fc2.inputs[1].const_value.numpy().copy()
    w2[:, 20] = 1e-7  # almost never read
    w1[25], b1[25] = 1e-7 * w1[25], 0.3  # almost constant 0.3: folded into fc2's bias
    fc1.inputs[1].const_value = ir.tensor(w1, name="w1")
    fc1.inputs[2].const_value = ir.tensor(b1, name="b1")
    fc2.inputs[1].const_value = ir.tensor(w2, name="w2")
    assert EliminateNeuronsPass()(model).removed["fc1"] == 4  # only the exactly dead ones
    result = _eliminate(model, {"x": _randn(_rng(1), 4, 16)}, atol=1e-4,
                        select="norm", threshold=1e-4)
    assert result.removed == {"fc1": 2}


def test_explicit_keep_masks():
    model = _mlp(_rng(16))
    group = analyze_channels(model).group("fc2")
    keep = np.ones(group.size, dtype=bool)
    keep[[0, 1, 2]] = False
    result = EliminateNeuronsPass(keep={group.id: keep})(model)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    assert result.removed == {"fc2": 3}
    assert _weight(model, "w2") == (21, 32) and _weight(model, "w3") == (10, 21)
    _run(model, {"x": _randn(_rng(1), 2, 16)})

    with pytest.raises(OnnxcompError, match="keeps no channel"):
        EliminateNeuronsPass(keep={"fc1": np.zeros(32, bool)})(model)
    with pytest.raises(OnnxcompError, match="no channel group"):
        EliminateNeuronsPass(keep={"nope": np.ones(3, bool)})(model)


def test_whole_group_dead_keeps_one_channel():
    model = _mlp(_rng(17))
    fc2 = model.graph.node("fc2")
    fc2.inputs[1].const_value = ir.tensor(np.zeros((24, 32), np.float32), name="w2")
    result = _eliminate(model, {"x": _randn(_rng(1), 2, 16)})
    assert result.sizes["fc1"] == (32, 1)
    assert _weight(model, "w1") == (1, 16)


# -- exporter-made models, with dead channels planted where the analysis says they are read ---


def _plant_dead_channels(model: ir.Model, per_group: int = 2) -> dict[str, int]:
    """Zero the outgoing weights of ``per_group`` channels in every removable group."""
    rng = _rng(20)
    planted = {}
    for group in analyze_channels(model).groups:
        readers = [ref for ref in group.consumers if ref.role == "consumer"]
        if group.blocked or group.size <= per_group or not readers:
            continue
        chosen = rng.choice(group.size, per_group, replace=False)
        for ref in readers:
            value = model.graph.initializers[ref.tensor]
            weight = value.const_value.numpy().copy()
            rows = np.moveaxis(weight, ref.axis, 0)
            for channel in chosen:
                rows[ref.offset + channel * ref.inner : ref.offset + (channel + 1) * ref.inner] = 0
            value.const_value = ir.tensor(weight, name=value.name)
        planted[group.name] = per_group
    return planted


def test_channels_pass_through_many_ops():
    rng = _rng(21)
    weights = {
        "c1": _randn(rng, 8, 3, 3, 3), "b1": _randn(rng, 8), "scale": _randn(rng, 1, 8, 1, 1),
        "slope": np.abs(_randn(rng, 8, 1, 1)) * 0.1,
        "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
        "scales": np.array([1, 1, 2, 2], np.float32),
        "low": np.array(-0.5, np.float32), "high": np.array(2.0, np.float32),
        "ct": _randn(rng, 8, 5, 2, 2), "ctb": _randn(rng, 5), "c2": _randn(rng, 6, 5, 1, 1),
        "in_scale": _randn(rng, 6), "in_bias": _randn(rng, 6),
        "squeeze": np.array([3], np.int64), "fc": _randn(rng, 6, 4), "fcb": _randn(rng, 1),
    }
    make = helper.make_node
    nodes = [
        make("Conv", ["x", "c1", "b1"], ["a"], name="c1", pads=[1] * 4),
        make("Mul", ["a", "scale"], ["a2"]),
        make("PRelu", ["a2", "slope"], ["a3"]),
        make("Pad", ["a3", "pads"], ["a4"], mode="reflect"),
        make("Resize", ["a4", "", "scales"], ["a5"], mode="nearest"),
        make("Transpose", ["a5"], ["t1"], perm=[0, 2, 3, 1]),
        make("Clip", ["t1", "low", "high"], ["t2"]),
        make("Transpose", ["t2"], ["t3"], perm=[0, 3, 1, 2]),
        make("ConvTranspose", ["t3", "ct", "ctb"], ["u"], name="ct", strides=[2, 2]),
        make("Dropout", ["u"], ["u2"]),
        make("Conv", ["u2", "c2"], ["v"], name="c2"),
        make("InstanceNormalization", ["v", "in_scale", "in_bias"], ["v2"]),
        make("ReduceMean", ["v2"], ["m"], axes=[2, 3], keepdims=1),
        make("Squeeze", ["m", "squeeze"], ["m2"]),
        make("Flatten", ["m2"], ["m3"]),
        make("Gemm", ["m3", "fc", "fcb"], ["y"], name="fc"),
    ]
    model = _model(nodes, [_input("x", ["N", 3, 6, 6])], [_input("y", ["N", 4])], weights)
    planted = _plant_dead_channels(model)
    assert planted == {"input:x": 2, "c1": 2, "ct": 2, "c2": 2}
    result = _eliminate(model, {"x": _randn(rng, 2, 3, 6, 6)})
    assert result.removed == planted
    assert _weight(model, "scale") == (1, 6, 1, 1) and _weight(model, "slope") == (6, 1, 1)
    assert _weight(model, "ct") == (6, 3, 2, 2) and _weight(model, "in_bias") == (4,)


def _export(net, example) -> ir.Model:
    torch = pytest.importorskip("torch")
    import io

    buffer = io.BytesIO()
    torch.onnx.export(net.eval(), (example,), buffer, dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    proto = onnx.load_from_string(buffer.getvalue())
    proto.ir_version = 10
    return ir.from_proto(proto)


def _torch_nets():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.block = nn.Sequential(nn.Conv2d(16, 12, 3, padding=1), nn.BatchNorm2d(12),
                                       nn.ReLU(), nn.Conv2d(12, 16, 3, padding=1))
            self.down = nn.Conv2d(16, 24, 1, stride=2)
            self.branch = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.ReLU(),
                                        nn.Conv2d(24, 24, 3, padding=1))
            self.depthwise = nn.Conv2d(24, 24, 3, padding=1, groups=24)
            self.fc = nn.Linear(24, 10)

        def forward(self, x):
            a = self.stem(x)
            a = torch.relu(a + self.block(a))
            a = torch.relu(self.down(a) + self.branch(a))
            a = torch.relu(self.depthwise(a))
            return self.fc(nn.functional.adaptive_avg_pool2d(a, 1).flatten(1))

    class Inception(nn.Module):  # a Concat that also carries the model input
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 6, 3, padding=1)
            self.c, self.fc = nn.Conv2d(17, 10, 1), nn.Linear(10 * 4 * 4, 5)

        def forward(self, x):
            y = torch.cat([torch.relu(self.a(x)), x, nn.functional.leaky_relu(self.b(x))], 1)
            y = nn.functional.avg_pool2d(torch.relu(self.c(y)), 2)
            return self.fc(y.view(-1, 160))

    class Mixer(nn.Module):  # MatMul + Add layers on a sequence, GELU, residual from the input
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = nn.Linear(16, 32), nn.Linear(32, 16)
            self.out = nn.Linear(16, 8)

        def forward(self, x):
            return self.out(torch.tanh(x + self.l2(nn.functional.gelu(self.l1(x)))))

    torch.manual_seed(0)
    nets = {"residual": (Residual(), (2, 3, 8, 8)), "inception": (Inception(), (2, 3, 8, 8)),
            "mixer": (Mixer(), (2, 5, 16))}
    for net, _ in nets.values():
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return nets


@pytest.mark.parametrize("name", ["residual", "inception", "mixer"])
def test_exported_models_lose_exactly_the_planted_channels(name):
    net, shape = _torch_nets()[name]
    import torch

    example = torch.randn(*shape)
    model = _export(net, example)
    planted = _plant_dead_channels(model)
    assert len(planted) >= 2 and "input:x" in planted
    result = _eliminate(model, {"x": example.numpy()})
    assert result.removed == planted


# -- compensation: a removed channel's constant (or mean) moves into the next layers' biases --


def _constant_channel_net(rng, pad: int = 0) -> ir.Model:
    """stem conv + 1x1 conv meet in a residual Add; a conv feeds global pool -> Flatten -> Gemm.

    Planted: residual channel 2 (stem: zero weights, bias 0.6; conv1: zero weights, bias 0.3)
    is the constant 0.6 after the stem's ReLU and 0.9 after the Add's; conv2 channel 3 (zero
    weights, bias 0.4) is 0.4 after its ReLU and the pool. ``pad`` pads conv1 and conv2.
    """
    k = 2 * pad + 1
    weights = {
        "c0.w": 0.3 * _randn(rng, 6, 3, 3, 3), "c0.b": 0.1 * _randn(rng, 6),
        "c1.w": 0.3 * _randn(rng, 6, 6, k, k), "c1.b": 0.1 * _randn(rng, 6),
        "c2.w": 0.3 * _randn(rng, 5, 6, k, k), "c2.b": 0.1 * _randn(rng, 5),
        "fc.w": _randn(rng, 4, 5), "fc.b": _randn(rng, 4),
    }  # fmt: skip
    weights["c0.w"][2], weights["c0.b"][2] = 0, 0.6
    weights["c1.w"][2], weights["c1.b"][2] = 0, 0.3
    weights["c2.w"][3], weights["c2.b"][3] = 0, 0.4
    nodes = [
        helper.make_node("Conv", ["x", "c0.w", "c0.b"], ["c0"], name="c0", pads=[1] * 4),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "c1.w", "c1.b"], ["c1"], name="c1", pads=[pad] * 4),
        helper.make_node("Add", ["c1", "r0"], ["s"]),
        helper.make_node("Relu", ["s"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["c2"], name="c2", pads=[pad] * 4),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["y"], name="fc", transB=1),
    ]
    return _model(nodes, [_input("x", ["N", 3, 6, 6])], [_input("y", ["N", 4])], weights)


_PLANTED = {"c0": np.arange(6) != 2, "c2": np.arange(5) != 3}


def test_removed_constant_channels_fold_through_relu_add_and_pool():
    feeds = {"x": _randn(_rng(31), 3, 3, 6, 6)}
    model = _constant_channel_net(_rng(30))
    before = _run(model, feeds)[0]
    result = EliminateNeuronsPass(keep=_PLANTED)(model)
    onnx.checker.check_model(ir.to_proto(model), full_check=True)
    np.testing.assert_allclose(_run(model, feeds)[0], before, atol=1e-5, rtol=0)
    assert result.removed == {"c0": 1, "c2": 1}
    assert _weight(model, "c1.w") == (5, 5, 1, 1) and _weight(model, "fc.w") == (4, 4)
    # The lossless "dead" rule finds the same channels (no padding around them).
    assert _eliminate(_constant_channel_net(_rng(30)), feeds).removed == {"c0": 1, "c2": 1}


def test_without_compensation_removing_constant_channels_changes_the_outputs(monkeypatch):
    from onnxcomp.passes import eliminate_neurons

    model = _constant_channel_net(_rng(30))
    feeds = {"x": _randn(_rng(31), 3, 3, 6, 6)}
    before = _run(model, feeds)[0]
    monkeypatch.setattr(eliminate_neurons, "fold_constants", lambda *args: None)
    EliminateNeuronsPass(keep=_PLANTED)(model)
    assert np.abs(_run(model, feeds)[0] - before).max() > 0.1


def _two_convs(rng, **conv1) -> ir.Model:
    """x -> c0 (3x3, pad 1) -> ReLU -> c1 (3x3, ``conv1`` attributes) -> y; c0 channel 2 is 0.6."""
    weights = {"c0.w": 0.3 * _randn(rng, 6, 3, 3, 3), "c0.b": 0.1 * _randn(rng, 6),
               "c1.w": 0.3 * _randn(rng, 4, 6, 3, 3)}
    weights["c0.w"][2], weights["c0.b"][2] = 0, 0.6
    nodes = [
        helper.make_node("Conv", ["x", "c0.w", "c0.b"], ["c0"], name="c0", pads=[1] * 4),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "c1.w"], ["y"], name="c1", **conv1),
    ]
    return _model(nodes, [_input("x", ["N", 3, 7, 7])], [_input("y", ["N", 4, "H", "W"])], weights)


def test_constant_before_padded_conv_keeps_the_mean_over_positions():
    # Zero padding makes a constant channel's contribution smaller at the borders: one bias
    # cannot be exact there. It gets the contribution averaged over the output positions.
    feeds = {"x": _randn(_rng(32), 2, 3, 7, 7)}
    model = _two_convs(_rng(33), pads=[1] * 4)
    before = _run(model, feeds)[0]
    assert not EliminateNeuronsPass()(model).modified  # not exact: "dead" leaves it
    EliminateNeuronsPass(keep={"c0": np.arange(6) != 2})(model)
    after = _run(model, feeds)[0]
    np.testing.assert_allclose(after.mean(axis=(2, 3)), before.mean(axis=(2, 3)), atol=1e-5)
    assert np.abs(after - before).max() > 1e-3  # the borders differ


@pytest.mark.parametrize("conv1", [
    {"pads": [1] * 4}, {"pads": [0, 1, 2, 1], "strides": [2, 2]}, {"dilations": [2, 2], "pads": [2] * 4},
    {"auto_pad": "SAME_UPPER", "strides": [2, 1]}, {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
])  # fmt: skip
def test_mean_replacement_before_a_conv_keeps_the_mean_output(conv1):
    rng = _rng(35)
    feeds = {"x": _randn(rng, 16, 3, 7, 7)}
    model = _two_convs(rng, **conv1)
    before = _run(model, feeds)[0]
    keep = np.ones(6, bool)
    keep[[0, 2, 5]] = False  # two live channels and the constant one
    EliminateNeuronsPass(keep={"c0": keep}, samples=feeds)(model)
    after = _run(model, feeds)[0]
    assert after.shape == before.shape
    np.testing.assert_allclose(after.mean(axis=(0, 2, 3)), before.mean(axis=(0, 2, 3)), atol=1e-5)


def test_mean_replacement_with_samples_keeps_the_mean_output():
    feeds = {"x": _randn(_rng(33), 64, 16)}
    keep = np.ones(24, bool)
    keep[[0, 4, 9, 17]] = False  # live neurons of fc2, read by fc3 (linear up to the output)
    errors = []
    for samples in (None, feeds):
        model = _mlp(_rng(34))
        before = _run(model, feeds)[0]
        EliminateNeuronsPass(keep={"fc2": keep}, samples=samples)(model)
        errors.append(np.abs(_run(model, feeds)[0].mean(0) - before.mean(0)).max())
    assert errors[1] < 1e-4 < errors[0]


def test_replacement_errors_are_zero_for_constant_channels():
    from onnxcomp.passes.eliminate_neurons import replacement_errors

    model = _constant_channel_net(_rng(30))
    errors = replacement_errors(model, {"x": _randn(_rng(36), 8, 3, 6, 6)})
    assert set(errors) == {"input:x", "c0", "c2"}  # fc reaches the graph output: blocked
    assert errors["c0"][2] == 0 and errors["c2"][3] == 0
    assert (np.delete(errors["c0"], 2) > 0).all() and errors["c2"].max() > 0
