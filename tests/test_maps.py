"""maps (onnxcomp.model.maps): scikit-learn's ZipMap outputs (sequences of maps, which onnx_ir
cannot import) set aside at load and put back in the written file, in place, name and type."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxcomp.errors import OnnxcompError
from onnxcomp.model.maps import META_KEY, attach_maps, detach_maps, is_map, reserved_bytes
from onnxcomp.modelfile import load_model
from onnxcomp.pipeline import CompressOptions, compress_file

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


def mlp_classifier(zipmap: bool = True) -> onnx.ModelProto:
    """What skl2onnx writes for an MLPClassifier: a label and, through ZipMap, {class: probability}."""
    rng = np.random.default_rng(0)
    weights = {"w1": rng.standard_normal((20, 64)) * 0.3, "b1": rng.standard_normal(64) * 0.1,
               "w2": rng.standard_normal((64, 3)) * 0.3, "b2": np.zeros(3)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["z0"]),
             helper.make_node("Add", ["z0", "b2"], ["z"]), helper.make_node("Softmax", ["z"], ["probability_tensor"], axis=1),
             helper.make_node("ArgMax", ["probability_tensor"], ["label"], axis=1, keepdims=0)]
    map_type = helper.make_sequence_type_proto(helper.make_map_type_proto(onnx.TensorProto.INT64,
                                                                          helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, [])))
    outputs = [helper.make_tensor_value_info("label", onnx.TensorProto.INT64, ["N"])]
    if zipmap:
        nodes.append(helper.make_node("ZipMap", ["probability_tensor"], ["output_probability"], domain="ai.onnx.ml",
                                      classlabels_int64s=[0, 1, 2]))
        outputs.append(helper.make_value_info("output_probability", map_type))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 20])], outputs,
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)],
                             ir_version=8)


def test_detach_puts_the_tensor_in_place_and_attach_restores_the_file():
    proto = mlp_classifier()
    original_output = proto.graph.output[1].SerializeToString()
    detached = detach_maps(proto)
    assert [(d.position, d.tensor) for d in detached] == [(1, "probability_tensor")]
    assert [o.name for o in proto.graph.output] == ["label", "probability_tensor"]
    assert proto.graph.output[1].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # from shape inference
    assert not any(node.op_type == "ZipMap" for node in proto.graph.node)
    restored = onnx.load_from_string(attach_maps(proto.SerializeToString(), detached))
    assert [o.name for o in restored.graph.output] == ["label", "output_probability"]
    assert restored.graph.output[1].SerializeToString() == original_output and is_map(restored.graph.output[1].type)
    assert sum(node.op_type == "ZipMap" for node in restored.graph.node) == 1
    onnx.checker.check_model(restored)
    added = len(restored.SerializeToString()) - proto.ByteSize()
    assert 0 < added <= reserved_bytes(detached)
    assert detach_maps(mlp_classifier(zipmap=False)) == [] and attach_maps(b"x", []) == b"x"


def test_a_map_that_is_not_a_zipmap_output_is_still_refused(tmp_path):
    proto = mlp_classifier()
    proto.graph.node[-1].input[0] = "z"  # a ZipMap of logits that another output also is: nothing to set aside
    proto.graph.output.append(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", 3]))
    path = tmp_path / "m.onnx"
    onnx.save(proto, str(path))
    assert detach_maps(mlp_classifier()) and not detach_maps(onnx.load(str(path)))
    with pytest.raises(OnnxcompError, match="'output_probability' is a map or a sequence of maps that is not a ZipMap"):
        load_model(path)


def test_a_classifier_with_zipmap_compresses_and_hands_back_its_maps(tmp_path):
    import onnxruntime as ort

    source = tmp_path / "mlp.onnx"
    onnx.save(mlp_classifier(), str(source))
    assert load_model(source).meta[META_KEY][0].tensor == "probability_tensor"
    out = tmp_path / "out.onnx"
    report = compress_file(source, out, CompressOptions(target_bytes=source.stat().st_size // 2))
    assert report.output_bytes == out.stat().st_size <= source.stat().st_size // 2
    written = onnx.load(str(out))
    assert [o.name for o in written.graph.output] == ["label", "output_probability"]
    x = np.random.default_rng(1).standard_normal((64, 20)).astype(np.float32)
    original = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    compressed = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    assert isinstance(compressed[1], list) and set(compressed[1][0]) == {0, 1, 2}  # the application's dicts
    assert np.mean(original[0] == compressed[0]) > 0.9
    assert max(abs(a[k] - b[k]) for a, b in zip(original[1], compressed[1]) for k in a) < 0.1


def test_a_linear_classifier_says_its_parameters_are_attributes(tmp_path):
    # skl2onnx's LogisticRegression: LinearClassifier (coefficients in attributes) + Normalizer + ZipMap,
    # only ai.onnx.ml operators; inspect lists no weights and compress says why
    from onnxcomp.reporting.report import inspect_model

    nodes = [helper.make_node("LinearClassifier", ["x"], ["label", "scores"], domain="ai.onnx.ml",
                              coefficients=[0.5] * 12, intercepts=[0.0, 0.1, 0.2], classlabels_ints=[0, 1, 2]),
             helper.make_node("ZipMap", ["scores"], ["probabilities"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2])]
    map_type = helper.make_sequence_type_proto(helper.make_map_type_proto(onnx.TensorProto.INT64,
                                                                          helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, [])))
    graph = helper.make_graph(nodes, "lr", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("label", onnx.TensorProto.INT64, ["N"]),
                               helper.make_value_info("probabilities", map_type)])
    source = tmp_path / "lr.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx.ml", 1)], ir_version=8), str(source))
    assert inspect_model(load_model(source)) == []
    with pytest.raises(OnnxcompError, match=r"no compressible weights: its LinearClassifier operators \(ai\.onnx\.ml\) hold "
                                            "their parameters in attributes"):
        compress_file(source, tmp_path / "out.onnx", CompressOptions(target_bytes=100))
