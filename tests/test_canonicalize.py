"""model.canonicalize: opsets raised to 11, initializers listed as inputs (dropped by convention,
kept as overridable defaults), the interface kept and checked, Constant-node weights lifted,
BatchNormalization folded into the Conv before it with the same outputs, duplicate initializers
merged, unused nodes dropped, and NaN weights refused."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.errors import OnnxcompError
from onnxcomp.model.canonicalize import (InitializerInputs, RemoveConventionalInitializerInputsPass, canonicalize,
                                         check_interface, initializer_inputs, model_interface, upgrade_opset)
from tests.conftest import build_model, run
from tests.pass_helpers import check_valid, op_types


def _with_inputs(ir_version: int, listed: tuple[str, ...], rng) -> ir.Model:
    weights = {"w1": rng.standard_normal((4, 8)).astype(np.float32), "w2": rng.standard_normal((8, 2)).astype(np.float32)}
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])]
    inputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, weights[name].shape) for name in listed]
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("MatMul", ["h", "w2"], ["y"])],
                              "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                              [numpy_helper.from_array(array, name) for name, array in weights.items()])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=ir_version))


def test_initializer_inputs_removed_by_convention_or_kept_as_defaults(rng):
    assert initializer_inputs(_with_inputs(8, (), rng)) == InitializerInputs()
    assert initializer_inputs(_with_inputs(3, ("w2",), rng)) == InitializerInputs(removed=("w2",))  # IR 3: by convention
    assert initializer_inputs(_with_inputs(8, ("w1", "w2"), rng)) == InitializerInputs(removed=("w1", "w2"))  # all listed
    kept = initializer_inputs(_with_inputs(8, ("w2",), rng))
    assert kept == InitializerInputs(kept=("w2",)) and kept.as_dict() == {"removed": [], "kept": ["w2"]}


def test_remove_conventional_initializer_inputs_pass(rng):
    model = _with_inputs(3, ("w1", "w2"), rng)
    result = RemoveConventionalInitializerInputsPass()(model)
    assert result.modified and [v.name for v in model.graph.inputs] == ["x"] and model.ir_version == 4
    assert set(model.graph.initializers) == {"w1", "w2"}
    assert not RemoveConventionalInitializerInputsPass()(model).modified
    defaults = _with_inputs(8, ("w2",), rng)
    assert not RemoveConventionalInitializerInputsPass()(defaults).modified
    assert [v.name for v in defaults.graph.inputs] == ["x", "w2"]


def test_upgrade_opset_to_11_and_leave_newer_models(rng):
    model = _with_inputs(8, (), rng)
    assert upgrade_opset(model) is model and model.opset_imports[""] == 11
    newer = build_model("""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }
""", {})
    assert upgrade_opset(newer).opset_imports[""] == 17


def test_model_interface_and_check_interface(rng):
    model = _with_inputs(8, ("w2",), rng)
    interface = model_interface(model)
    assert interface == [("input", "x", ir.DataType.FLOAT, ("N", 4)), ("input", "w2", ir.DataType.FLOAT, (8, 2)),
                         ("output", "y", ir.DataType.FLOAT, ("N", 2))]
    assert model_interface(model, without=("w2",)) == [interface[0], interface[2]]
    check_interface(interface, model)
    model.graph.outputs[0].shape = ir.Shape(["M", 2])
    with pytest.raises(OnnxcompError, match=r"compression changed the model's interface \(\('output', 'y', .*\('N', 2\)\) "
                                            r"became \('output', 'y', FLOAT, \('M', 2\)\)\); nothing written"):
        check_interface(interface, model)


def _conv_bn(rng, epsilon: float = 1e-5) -> ir.Model:
    return build_model(f"""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 3, 6, 6] x) => (float[N, 4, 6, 6] y) {{
  c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
  y = BatchNormalization <epsilon = {epsilon}> (c, scale, shift, mean, var)
}}
""", {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "b": rng.standard_normal(4).astype(np.float32),
      "scale": rng.uniform(0.5, 2, 4).astype(np.float32), "shift": rng.standard_normal(4).astype(np.float32),
      "mean": rng.standard_normal(4).astype(np.float32), "var": rng.uniform(0.5, 2, 4).astype(np.float32)})


def test_batchnorm_is_folded_into_the_conv(rng):
    model = _conv_bn(rng)
    feeds = {"x": rng.standard_normal((2, 3, 6, 6)).astype(np.float32)}
    expected = run(model, feeds)[0]
    folded = canonicalize(model)
    assert op_types(folded) == ["Conv"]
    check_valid(folded)
    np.testing.assert_allclose(run(folded, feeds)[0], expected, rtol=1e-4, atol=1e-4)
    assert model_interface(folded) == [("input", "x", ir.DataType.FLOAT, ("N", 3, 6, 6)),
                                       ("output", "y", ir.DataType.FLOAT, ("N", 4, 6, 6))]


def test_constants_lifted_duplicates_merged_and_unused_nodes_dropped(rng):
    weight = rng.standard_normal((4, 4)).astype(np.float32)
    model = build_model("""
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) {
  c = Constant <value = float[4, 4] {""" + ", ".join(map(str, weight.ravel().tolist())) + """}> ()
  h = MatMul(x, c)
  r = MatMul(h, twin)
  y = MatMul(r, same)
  dead = Relu(x)
}
""", {"twin": weight, "same": weight.copy()})
    feeds = {"x": rng.standard_normal((3, 4)).astype(np.float32)}
    expected = run(model, feeds)[0]
    canonicalize(model)
    assert op_types(model) == ["MatMul"] * 3
    assert len(model.graph.initializers) == 1  # the lifted constant and both copies are one tensor
    (shared,) = model.graph.initializers.values()
    assert all(node.inputs[1] is shared for node in model.graph)
    np.testing.assert_array_equal(run(model, feeds)[0], expected)


def test_conventional_initializer_inputs_are_dropped_by_canonicalize(rng):
    model = canonicalize(_with_inputs(3, ("w1", "w2"), rng))
    assert [v.name for v in model.graph.inputs] == ["x"] and model.opset_imports[""] == 11
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)


def test_nan_weights_are_refused_unless_unchecked(rng):
    array = rng.standard_normal((4, 4)).astype(np.float32)
    array[0, 0] = np.nan
    text = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) { y = MatMul(x, w) }
"""
    with pytest.raises(OnnxcompError, match=r"weight 'w' \(4x4, used by MatMul\) contains 1 NaN"):
        canonicalize(build_model(text, {"w": array}))
    assert np.isnan(canonicalize(build_model(text, {"w": array}), check_weights=False).graph.initializers["w"]
                    .const_value.numpy()[0, 0])


def test_declared_output_shape_survives_the_opset_conversion():
    """The converter's shape inference rewrites the declared output [M, 2] as [3, 2]; canonicalize puts it back."""
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", 2])],
                              [numpy_helper.from_array(np.ones((4, 2), np.float32), "w")])
    model = canonicalize(ir.serde.deserialize_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)], ir_version=8)))
    assert model.opset_imports[""] == 11
    assert model_interface(model) == [("input", "x", ir.DataType.FLOAT, (3, 4)), ("output", "y", ir.DataType.FLOAT, ("M", 2))]


def test_a_model_without_tensors_is_refused_before_any_session():
    """Nothing to compress is known from the graph alone: refused before ONNX Runtime loads the
    model (this one it cannot load at all) or canonicalization copies it."""
    from onnxcomp.model.canonicalize import holds_tensors
    from onnxcomp.pipeline import CompressOptions, compress_model

    node = helper.make_node("TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", n_targets=1,
                            nodes_featureids=[0], nodes_modes=["LEAF"], nodes_nodeids=[0], nodes_treeids=[0],
                            nodes_values=[0.0], target_ids=[0], target_nodeids=[0], target_treeids=[0],
                            target_weights=[1.5], nodes_falsenodeids=[0], nodes_truenodeids=[0])
    graph = helper.make_graph([node, helper.make_node("Unknown", ["y"], ["z"], domain="example.custom")], "trees",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3),
                                                    helper.make_opsetid("example.custom", 1)], ir_version=8)
    model = ir.serde.deserialize_model(proto)
    assert not holds_tensors(model)
    with pytest.raises(OnnxcompError, match="TreeEnsembleRegressor operators .ai.onnx.ml. hold their parameters in attributes"):
        compress_model(model, CompressOptions(target_bytes=100))
    proto.graph.initializer.append(helper.make_tensor("w", TensorProto.FLOAT, [2], [1.0, 2.0]))
    assert holds_tensors(ir.serde.deserialize_model(proto))
