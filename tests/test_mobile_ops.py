"""mobile_ops (onnxcomp.runtime.mobile_ops): the operators a model uses (subgraphs included), its
opset, reading a reduced-build operator config, and the check of a model's operators against
a package's config by kernel version. The export that uses them is tested in tests/test_mobile.py."""

from __future__ import annotations

import onnx
import pytest

from onnxcomp.runtime.mobile_ops import PackageCheck, check_ops, model_opset, onnx_ops, read_operators_config

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

# A package built for opsets 12 and 13 (the ai.onnx opset-1 entry is a contrib op), one contrib domain.
PACKAGE = {"ai.onnx": {1: ["FusedGemm"], 12: ["Add", "Relu"], 13: ["Add", "Relu", "Softmax"]},
           "com.microsoft": {1: ["QuickGelu"]}}


def test_onnx_ops_walks_subgraphs_and_skips_constants():
    model = onnx.parser.parse_model("""
        <ir_version: 8, opset_import: ["" : 14, "com.microsoft" : 1]>
        g (bool c, float[N] x) => (float[N] y) {
          k = Constant <value = float[1] {2.0}> ()
          s = Mul(x, k)
          y = If (c) <then_branch = then () => (float[N] a) { a = Relu(s) },
                      else_branch = else () => (float[N] b) { b = com.microsoft.QuickGelu(s) }>
        }
    """)
    assert onnx_ops(model) == {"ai.onnx": {14: {"Mul", "If", "Relu"}}, "com.microsoft": {1: {"QuickGelu"}}}
    assert model_opset(model) == 14
    # a graphs-valued attribute (a list of bodies) is walked too
    body = onnx.helper.make_graph([onnx.helper.make_node("Tanh", ["s"], ["t"])], "body", [], [])
    model.graph.node.append(onnx.helper.make_node("Custom", ["x"], ["z"], domain="com.microsoft"))
    model.graph.node[-1].attribute.append(onnx.helper.make_attribute("bodies", [body]))
    assert onnx_ops(model)["ai.onnx"] == {14: {"Mul", "If", "Relu", "Tanh"}}
    assert onnx_ops(model)["com.microsoft"] == {1: {"QuickGelu", "Custom"}}
    assert model_opset(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []), opset_imports=[])) == 0


def test_ops_are_checked_by_the_kernel_version_in_effect():
    # Softmax at opset 14 is still the since-13 kernel the package holds
    check = check_ops({"ai.onnx": {14: {"Softmax"}}}, 14, PACKAGE)
    assert check == PackageCheck(opset=14, package_opsets=[12, 13], opset_supported=False, unsupported=[])
    assert not check.ok  # the opset itself is not one the package was built for
    assert check_ops({"ai.onnx": {13: {"Add", "Relu", "Softmax"}}}, 13, PACKAGE).ok
    # Relu at 14 is since-14 and Softmax at 12 since-11, kernels neither listing holds
    check = check_ops({"ai.onnx": {14: {"Relu"}, 12: {"Softmax", "Add"}},
                       "com.microsoft": {1: {"QuickGelu", "Missing"}}}, 13, PACKAGE)
    assert check.unsupported == ["ai.onnx:11:Softmax", "ai.onnx:14:Relu", "com.microsoft:1:Missing"]
    assert check.opset_supported and not check.ok
    assert check_ops({"ai.onnx": {12: {"Softmax"}}}, 12, {}).package_opsets == []


def test_read_operators_config(tmp_path):
    config = tmp_path / "required_operators.config"
    config.write_text("# generated\nai.onnx;12;Add,Relu\nai.onnx;13;Softmax,Add\ncom.microsoft;1;QuickGelu\n")
    assert read_operators_config(config) == {"ai.onnx": {12: ["Add", "Relu"], 13: ["Add", "Softmax"]},
                                             "com.microsoft": {1: ["QuickGelu"]}}
