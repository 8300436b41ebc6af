"""Weights that are not float32: float16/bfloat16 weights and already-quantized integer weights
(onnxruntime.quantization's dynamic MatMulInteger/ConvInteger/DynamicQuantizeLSTM models and
static QDQ models) compress to a target, decode to their own type at load (ONNX Runtime folds
the decode), and the quantized kernels run unchanged on the re-coded integers."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run

ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

DECODE_OPS = {"BitShift", "Mod", "GatherElements", "ScatterElements", "CumSum", "Compress"}
HALF_TYPES = {"float16": (np.float16, TensorProto.FLOAT16), "bfloat16": (ml_dtypes.bfloat16, TensorProto.BFLOAT16)}


def _model(nodes, inputs, outputs, arrays) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def _float_mlp(rng) -> tuple[list, dict, tuple]:
    arrays = {"w1": (rng.standard_normal((96, 256)) / 10).astype(np.float32),
              "b1": (rng.standard_normal(256) / 10).astype(np.float32),
              "w2": (rng.standard_normal((256, 10)) / 16).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]), helper.make_node("MatMul", ["r", "w2"], ["y"])]
    return nodes, arrays, (["N", 96], ["N", 10])


def _float_conv(rng) -> tuple[list, dict, tuple]:
    arrays = {"w1": (rng.standard_normal((32, 3, 3, 3)) / 5).astype(np.float32),
              "w2": (rng.standard_normal((64, 32, 3, 3)) / 17).astype(np.float32),
              "wf": (rng.standard_normal((64, 10)) / 8).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "wf"], ["y"])]
    return nodes, arrays, (["N", 3, 12, 12], ["N", 10])


def _float_lstm(rng) -> tuple[list, dict, tuple]:
    hidden, features = 64, 32
    arrays = {"W": (rng.standard_normal((1, 4 * hidden, features)) / 6).astype(np.float32),
              "R": (rng.standard_normal((1, 4 * hidden, hidden)) / 8).astype(np.float32),
              "B": (rng.standard_normal((1, 8 * hidden)) / 10).astype(np.float32),
              "wo": (rng.standard_normal((hidden, 10)) / 8).astype(np.float32), "axes": np.array([0], np.int64)}
    nodes = [helper.make_node("LSTM", ["x", "W", "R", "B"], ["seq", "last"], hidden_size=hidden),
             helper.make_node("Squeeze", ["last", "axes"], ["h"]), helper.make_node("MatMul", ["h", "wo"], ["y"])]
    return nodes, arrays, ([6, "N", features], ["N", 10])


BUILDERS = {"mlp": _float_mlp, "conv": _float_conv, "lstm": _float_lstm}


def float_model(kind: str, seed: int = 0) -> onnx.ModelProto:
    nodes, arrays, (x_shape, y_shape) = BUILDERS[kind](np.random.default_rng(seed))
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], arrays)


def half_model(kind: str, dtype: str) -> onnx.ModelProto:
    """float16: the whole graph in float16 (as fp16 exports ship). bfloat16: bfloat16 weights cast
    to float32 before use (ONNX Runtime's CPU kernels compute in float32)."""
    nodes, arrays, (x_shape, y_shape) = BUILDERS[kind](np.random.default_rng(1))
    np_type, elem = HALF_TYPES[dtype]
    if dtype == "float16":
        arrays = {name: a.astype(np_type) if a.dtype == np.float32 else a for name, a in arrays.items()}
        return _model(nodes, [helper.make_tensor_value_info("x", elem, x_shape)],
                      [helper.make_tensor_value_info("y", elem, y_shape)], arrays)
    casts = []
    for name in [n for n, a in arrays.items() if a.dtype == np.float32]:
        arrays[name] = arrays[name].astype(np_type)
        casts.append(helper.make_node("Cast", [name], [name + "_f"], to=TensorProto.FLOAT))
        for node in nodes:
            node.input[:] = [name + "_f" if i == name else i for i in node.input]
    return _model(casts + nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], arrays)


def inputs_for(model: onnx.ModelProto, count: int = 32, seed: int = 5) -> dict[str, np.ndarray]:
    value = model.graph.input[0]
    dims = [d.dim_value if d.dim_value else count for d in value.type.tensor_type.shape.dim]
    array = np.random.default_rng(seed).standard_normal(dims).astype(np.float32)
    return {"x": array.astype(np.float16) if value.type.tensor_type.elem_type == TensorProto.FLOAT16 else array}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def compress(source: onnx.ModelProto, tmp_path, fraction: float) -> tuple[dict, str, int]:
    from onnxcomp.cli import main

    path = tmp_path / "in.onnx"
    path.write_bytes(source.SerializeToString())
    target = int(path.stat().st_size * fraction)
    output, report = tmp_path / "out.onnx", tmp_path / "report.json"
    # --allow-low-fidelity: dtype handling is tested at fixed fractions, where toy models can fall below the quality floor
    assert main(["compress", str(path), "--target-size", f"{target}B", "-o", str(output), "--report", str(report),
                 "--allow-low-fidelity"]) == 0
    assert output.stat().st_size <= target
    return json.loads(report.read_text()), str(output), target


def folded(path: str, tmp_path) -> onnx.ModelProto:
    """The graph ONNX Runtime runs after constant folding at session creation."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return onnx.load(str(tmp_path / "optimized.onnx"))


def weight_inputs(model: onnx.ModelProto, slots: dict[str, tuple[int, ...]]) -> list[tuple[str, str]]:
    """(op type, input name) of every weight slot of the named ops."""
    return [(node.op_type, node.input[i]) for node in model.graph.node for i in slots.get(node.op_type, ())
            if i < len(node.input) and node.input[i]]


def through_casts(model: onnx.ModelProto, name: str) -> str:
    """The value `name` is cast from (ONNX Runtime's CPU provider runs float16 MatMul in float32
    behind inserted Casts)."""
    made = producers(model)
    while name in made and made[name].op_type == "Cast":
        name = made[name].input[0]
    return name


def constant_values(model: onnx.ModelProto) -> set[str]:
    """Values computed from initializers alone (decode subgraphs), not from the graph inputs."""
    constant = {t.name for t in model.graph.initializer}
    for node in model.graph.node:  # topologically sorted
        if all(not name or name in constant for name in node.input):
            constant.update(node.output)
    return constant


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output}


def inferred_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every value, by ONNX shape inference (decode outputs carry none)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    return {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}


# -- float16 / bfloat16 ------------------------------------------------------------------------

def weight_sources(model: onnx.ModelProto) -> list[str]:
    """What each MatMul/Conv weight input is made from, looking through the model's own Cast to float."""
    made = producers(model)
    names = []
    for _, name in weight_inputs(model, {"MatMul": (1,), "Conv": (1,)}):
        node = made.get(name)
        if node is not None and node.op_type == "Cast" and node.attribute[0].i == TensorProto.FLOAT:
            name = node.input[0]
        names.append(name)
    return names


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("kind", ["mlp", "conv"])
def test_half_precision_weights_compress_to_a_target_in_their_own_type(kind, dtype, tmp_path):
    source = half_model(kind, dtype)
    report, output, _ = compress(source, tmp_path, 1 / 3)
    elem = HALF_TYPES[dtype][1]
    # The report prices the dense weights at their real 2 bytes per value.
    for layer in report["layers"]:
        assert layer["bytes_before"] < 2 * layer["params"] + 64, layer
    assert any(layer["encoding"] != "dense" for layer in report["layers"])
    compressed = onnx.load(output)
    assert [(v.name, v.type.tensor_type.elem_type) for v in compressed.graph.input] == \
        [(v.name, v.type.tensor_type.elem_type) for v in source.graph.input]
    # Every decoded weight comes out in the weight's own type; its readers are unchanged.
    made, types = producers(compressed), inferred_types(compressed)
    decoded = [name for name in weight_sources(compressed) if name in made]
    assert decoded and all(types[name] == elem for name in decoded)
    feeds = inputs_for(source)
    want, got = run(source, feeds)[0], run(output, feeds)[0]
    assert got.dtype == want.dtype
    assert cosine(want, got) > 0.97
    # ONNX Runtime folds the decode at load: the weights are plain initializers of their type.
    optimized = folded(output, tmp_path)
    assert not DECODE_OPS & {node.op_type for node in optimized.graph.node}
    readers = weight_inputs(optimized, {"MatMul": (1,), "Conv": (1,)})
    assert readers and all(through_casts(optimized, name) in {t.name for t in optimized.graph.initializer}
                           for _, name in readers)


def test_clustering_a_float16_weight_keeps_its_type_and_is_idempotent():
    from onnxcomp.passes.cluster_weights import ClusterWeightsPass
    from onnxcomp.model.weights import find_weights

    model = ir.serde.deserialize_model(half_model("mlp", "float16"))
    first = ClusterWeightsPass(bits=3)(model)
    assert first.modified
    for weight in find_weights(model):
        assert weight.value.const_value.dtype == ir.DataType.FLOAT16
        assert np.unique(weight.numpy()).size <= 8
    assert not ClusterWeightsPass(bits=3)(model).modified


# -- already-quantized weights ------------------------------------------------------------------

class _Reader:
    """A CalibrationDataReader over seeded samples, one per call."""

    def __init__(self, feeds: dict[str, np.ndarray]):
        name, array = next(iter(feeds.items()))
        axis = 1 if array.ndim == 3 else 0  # LSTM inputs are [seq, batch, features]
        self.items = iter([{name: np.take(array, [i], axis=axis)} for i in range(array.shape[axis])])

    def get_next(self):
        return next(self.items, None)


def quantized_model(kind: str, tmp_path) -> onnx.ModelProto:
    """`dynamic-*`: onnxruntime.quantization.quantize_dynamic (int8 weights; uint8 for the conv
    net, whose weights then have non-zero zero points). `qdq-*`: quantize_static in QDQ format,
    per-channel int8 weights; `qop-*`: quantize_static in operator format (QLinearConv/QLinearMatMul)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    method, builder = kind.split("-")
    source, target = tmp_path / "float.onnx", tmp_path / f"{kind}.onnx"
    model = float_model(builder, seed=3)
    onnx.save(model, str(source))
    if method == "dynamic":
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QUInt8 if builder == "conv" else QuantType.QInt8)
    else:
        quantize_static(str(source), str(target), _Reader(inputs_for(model, count=16, seed=9)),
                        quant_format=QuantFormat.QDQ if method == "qdq" else QuantFormat.QOperator, per_channel=True)
    return onnx.load(str(target))


QUANTIZED_SLOTS = {"MatMulInteger": (1,), "ConvInteger": (1,), "DynamicQuantizeLSTM": (1, 2), "DequantizeLinear": (0,),
                   "QLinearConv": (3,), "QLinearMatMul": (3,)}
INTEGER_TYPES = {TensorProto.INT8, TensorProto.UINT8}


@pytest.mark.parametrize("kind, ops", [("dynamic-mlp", {"MatMulInteger"}), ("dynamic-lstm", {"DynamicQuantizeLSTM"}),
                                       ("dynamic-conv", {"ConvInteger"}), ("qdq-conv", {"DequantizeLinear"}),
                                       ("qop-conv", {"QLinearConv", "QLinearMatMul"})])
def test_quantized_model_compresses_to_half_and_its_kernels_run_unchanged(kind, ops, tmp_path):
    source = quantized_model(kind, tmp_path)
    assert ops <= {node.op_type for node in source.graph.node}
    report, output, _ = compress(source, tmp_path, 1 / 2)
    recoded = [layer for layer in report["layers"] if layer["encoding"] != "dense"]
    assert recoded and all(layer["bytes_before"] < layer["params"] + 64 for layer in report["layers"])
    compressed = onnx.load(output)
    assert {node.op_type for node in source.graph.node} <= {node.op_type for node in compressed.graph.node}
    # The quantized ops read their re-coded weights in the original integer type.
    stored_types = {t.name: t.data_type for t in source.graph.initializer}
    made = producers(compressed)
    constant = constant_values(compressed)
    decoded = [(op, name) for op, name in weight_inputs(compressed, QUANTIZED_SLOTS) if name in made and name in constant]
    assert {op for op, _ in decoded} & ops
    types = inferred_types(compressed)
    for _, name in decoded:
        assert types[name] in INTEGER_TYPES
    feeds = inputs_for(source, seed=21)
    want, got = run(source, feeds)[0], run(output, feeds)[0]
    assert cosine(want, got) > 0.98, cosine(want, got)
    optimized = folded(output, tmp_path)
    assert not DECODE_OPS & {node.op_type for node in optimized.graph.node}
    folded_types = {t.name: t.data_type for t in optimized.graph.initializer}
    readers = weight_inputs(optimized, QUANTIZED_SLOTS)
    assert readers and all(folded_types.get(name) in INTEGER_TYPES for op, name in readers if op != "DequantizeLinear"
                           or name in folded_types)
    assert stored_types  # the source held integer weights to begin with
    assert any(t in INTEGER_TYPES for t in stored_types.values())


def test_pruned_integer_weight_is_stored_as_its_zero_point():
    from onnxcomp.passes.prune_weights import PruneWeightsPass
    from onnxcomp.model.weights import find_weights

    rng = np.random.default_rng(4)
    weight = rng.integers(0, 256, size=(8, 4, 3, 3), dtype=np.uint8)
    proto = _model([helper.make_node("ConvInteger", ["x", "w", "", "w_zp"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 6, 6])],
                   [helper.make_tensor_value_info("y", TensorProto.INT32, [1, 8, 4, 4])],
                   {"w": weight, "w_zp": np.array(131, np.uint8)})
    model = ir.serde.deserialize_model(proto)
    (found,) = find_weights(model)
    np.testing.assert_array_equal(found.numpy(), weight.astype(np.float32) - 131)
    assert PruneWeightsPass(sparsity=0.5)(model).modified
    stored = model.graph.initializers["w"].const_value.numpy()
    assert stored.dtype == np.uint8
    near_zero_point = np.abs(weight.astype(np.int64) - 131) < np.median(np.abs(weight.astype(np.int64) - 131))
    assert np.all(stored[near_zero_point] == 131)
    assert np.count_nonzero(stored == 131) >= weight.size // 2


def folded_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every value ONNX Runtime computes while folding the decode subgraphs at load (it
    keeps them all until folding ends), from ONNX shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    constant = constant_values(model) - {t.name for t in model.graph.initializer}
    total = 0
    for v in inferred.graph.value_info:
        if v.name in constant:
            dims = [d.dim_value for d in v.type.tensor_type.shape.dim]
            total += int(np.prod(dims)) * helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).itemsize
    return total


@pytest.mark.parametrize("sparse", [False, True])
def test_integer_weight_with_one_zero_point_is_gathered_in_its_own_type(sparse):
    """A per-tensor zero point is added to the codebook and the codebook cast, not the decoded
    tensor: the same integers come out, and no intermediate of the fold is a float32 tensor of
    the weight's size (an int8 model's load peak had grown 4.6x from four of them per weight)."""
    from onnxcomp.passes.cluster_weights import ClusterWeightsPass
    from onnxcomp.passes.insert_dequantize_lookup import InsertDequantizeLookupPass
    from onnxcomp.passes.prune_weights import PruneWeightsPass
    from onnxcomp.passes.substitute_sparse_ops import SubstituteSparseOpsPass

    rng = np.random.default_rng(7)
    weight = np.clip(rng.normal(128, 30, size=(256, 64)), 0, 255).astype(np.uint8)
    proto = _model([helper.make_node("MatMulInteger", ["x", "w", "", "w_zp"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", 256])],
                   [helper.make_tensor_value_info("y", TensorProto.INT32, ["N", 64])],
                   {"w": weight, "w_zp": np.array(131, np.uint8)})
    model = ir.serde.deserialize_model(proto)
    if sparse:
        PruneWeightsPass(sparsity=0.9)(model)
    ClusterWeightsPass(bits=4)(model)
    clustered = model.graph.initializers["w"].const_value.numpy().copy()
    encode = SubstituteSparseOpsPass() if sparse else InsertDequantizeLookupPass()
    assert encode(model).modified and "w" not in model.graph.initializers
    ops = {node.op_type for node in model.graph}
    assert ("ConstantOfShape" in ops) == sparse
    matmul = next(node for node in model.graph if node.op_type == "MatMulInteger")
    out = ir.serde.serialize_model(model)
    x = rng.integers(0, 256, size=(5, 256), dtype=np.uint8)
    got, decoded = run(out, {"x": x}, extra_outputs={matmul.inputs[1].name: TensorProto.UINT8})
    np.testing.assert_array_equal(decoded, clustered)
    want = (x.astype(np.int64) @ (clustered.astype(np.int64) - 131)).astype(np.int32)
    np.testing.assert_array_equal(got, want)
    inferred = onnx.shape_inference.infer_shapes(out)
    constant = constant_values(out)
    full_float = [v.name for v in inferred.graph.value_info if v.name in constant
                  and v.type.tensor_type.elem_type == TensorProto.FLOAT
                  and np.prod([d.dim_value for d in v.type.tensor_type.shape.dim]) >= weight.size]
    assert not full_float
    assert folded_bytes(out) < 12 * weight.size  # 9 here; 20 when the decoded tensor was restored


def test_integer_decode_adds_the_zero_point_back_and_casts_exactly(tmp_path):
    from onnxcomp.passes.cluster_weights import ClusterWeightsPass
    from onnxcomp.passes.insert_dequantize_lookup import InsertDequantizeLookupPass

    rng = np.random.default_rng(6)
    weight = np.clip(rng.normal(128, 30, size=(64, 32)), 0, 255).astype(np.uint8)
    zero_points = rng.integers(120, 136, size=32, dtype=np.uint8)  # per column
    proto = _model([helper.make_node("MatMulInteger", ["x", "w", "", "w_zp"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", 64])],
                   [helper.make_tensor_value_info("y", TensorProto.INT32, ["N", 32])],
                   {"w": weight, "w_zp": zero_points})
    model = ir.serde.deserialize_model(proto)
    ClusterWeightsPass(bits=4)(model)
    clustered = model.graph.initializers["w"].const_value.numpy().copy()
    assert clustered.dtype == np.uint8 and np.unique(clustered - zero_points.astype(np.int64)).size <= 16
    assert InsertDequantizeLookupPass()(model).modified
    assert "w" not in model.graph.initializers
    matmul = next(node for node in model.graph if node.op_type == "MatMulInteger")
    assert matmul.inputs[1].producer().op_type == "Cast" and matmul.inputs[1].dtype == ir.DataType.UINT8
    out = ir.serde.serialize_model(model)
    x = rng.integers(0, 256, size=(5, 64), dtype=np.uint8)
    got, decoded = run(out, {"x": x}, extra_outputs={matmul.inputs[1].name: TensorProto.UINT8})
    np.testing.assert_array_equal(decoded, clustered)
    want = (x.astype(np.int64) @ (clustered.astype(np.int64) - zero_points.astype(np.int64))).astype(np.int32)
    np.testing.assert_array_equal(got, want)


def test_already_quantized_weights_are_found_with_their_scales(tmp_path):
    from onnxcomp.model.weights import find_weights, quantized_weights

    model = ir.serde.deserialize_model(quantized_model("dynamic-lstm", tmp_path))
    found = {w.name: w for w in find_weights(model)}
    listed = {row["name"]: row["ops"] for row in quantized_weights(model)}
    lstm = [name for name, ops in listed.items() if ops == ["DynamicQuantizeLSTM"]]
    assert len(lstm) == 2 and set(lstm) <= set(found)  # W and R: the refusal once never named them
    assert all(found[name].storage.scale is not None for name in lstm)

    qdq = ir.serde.deserialize_model(quantized_model("qdq-conv", tmp_path))
    convs = [w for w in find_weights(qdq) if len(w.shape) == 4]
    assert convs and all(w.storage.importance is not None and w.storage.importance.shape == (w.shape[0], 1, 1, 1)
                         for w in convs)  # per-channel scales weight the errors


def heavy_tailed_int8(rng, shape) -> np.ndarray:
    """Most entries within 3 of zero, about 1% spread out to the int8 limits (a per-tensor scale
    set by rare large weights, as in ddddocr's quantized classifier)."""
    values = np.clip(np.rint(rng.normal(0, 1.4, size=shape)), -3, 3)
    wild = rng.random(shape) < 0.01
    values[wild] = np.clip(np.rint(rng.laplace(0, 30, size=int(wild.sum()))), -127, 127)
    return values.astype(np.int8)


def test_heavy_tailed_integer_weight_keeps_its_outliers_exact(tmp_path):
    rng = np.random.default_rng(8)
    weight = heavy_tailed_int8(rng, (256, 512))
    proto = _model([helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]),
                    helper.make_node("MatMulInteger", ["xq", "w", "xz", "w_zp"], ["a"]),
                    helper.make_node("Cast", ["a"], ["af"], to=TensorProto.FLOAT),
                    helper.make_node("Mul", ["xs", "w_s"], ["s"]), helper.make_node("Mul", ["af", "s"], ["y"])],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 512])],
                   {"w": weight, "w_zp": np.array(0, np.int8), "w_s": np.array(0.01, np.float32)})
    report, output, _ = compress(proto, tmp_path, 1 / 2)
    (layer,) = report["layers"]
    assert layer["encoding"] == "outliers", layer
    compressed = onnx.load(output)
    matmul = next(node for node in compressed.graph.node if node.op_type == "MatMulInteger")
    got = run(compressed, {"x": np.zeros((1, 256), np.float32)}, extra_outputs={matmul.input[1]: TensorProto.INT8})[1]
    wild = np.abs(weight.astype(np.int64)) > 3
    np.testing.assert_array_equal(got[wild], weight[wild])  # every outlier exact
    assert np.mean(got == weight) > 0.99
    assert not DECODE_OPS & {node.op_type for node in folded(output, tmp_path).graph.node}


@pytest.mark.parametrize("kind", ["float16", "dynamic-conv"])
def test_inspect_lists_weights_decoded_to_their_own_type(kind, tmp_path):
    from onnxcomp import modelfile
    from onnxcomp.reporting.report import inspect_model

    source = half_model("mlp", kind) if kind == "float16" else quantized_model(kind, tmp_path)
    _, output, _ = compress(source, tmp_path, 1 / 2)
    itemsize = 2 if kind == "float16" else 1
    rows = inspect_model(modelfile.load_model(output))
    before = inspect_model(ir.serde.deserialize_model(source))
    assert [row.shape for row in rows] == [row.shape for row in before] and rows
    assert all(row.bytes_before == itemsize * row.params for row in rows)
    encoded = [row for row in rows if row.encoding != "dense"]
    assert encoded and all(row.encoding in ("lookup", "linear", "sparse", "vector", "grouped", "outliers")
                           and row.bits < 8 * itemsize for row in encoded)


def test_streamed_float16_model_is_priced_and_verified_in_its_own_type(tmp_path, monkeypatch):
    """Models too large to hold (external data) take the one-weight-at-a-time path; float16
    weights there are priced at 2 bytes and their decodes checked against the stored values."""
    from onnxcomp import modelfile
    from onnxcomp.pipeline import CompressOptions, compress_file

    monkeypatch.setattr(modelfile, "IN_MEMORY_EXTERNAL_BYTES", 1 << 12)
    source = half_model("mlp", "float16")
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / "half.onnx"
    stored = onnx.ModelProto()
    stored.CopyFrom(source)  # saving with external data rewrites the proto's tensors
    onnx.save(stored, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="half.data",
              size_threshold=0)
    assert modelfile.is_streamed(modelfile.load_model(path))
    target = modelfile.file_bytes(path) // 3
    report = compress_file(path, tmp_path / "out.onnx", CompressOptions(target_bytes=target))
    assert report.streamed and report.output_bytes <= target
    assert report.fidelity["weights"] >= 2 and 0 < report.fidelity["relative_error"] < 0.2
    assert all(layer.bytes_before < 2 * layer.params + 64 for layer in report.layers)
    feeds = inputs_for(source)
    got = run(str(tmp_path / "out.onnx"), feeds)[0]
    assert got.dtype == np.float16 and cosine(run(source, feeds)[0], got) > 0.97
