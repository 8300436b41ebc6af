"""inference (onnxcomp.runtime.inference): sessions on the CPU provider, batched runs joined
along the sample axis, ONNX Runtime's errors on one line, the flag hint after a failed run, and
the integer divisions that can crash ONNX Runtime."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import pytest

from onnxcomp.errors import OnnxcompError
from onnxcomp.runtime.inference import (MAX_MESSAGE_CHARS, RunFailedError, describe_error, input_hint,
                                        integer_divisions, run_batches, session)

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

DOUBLE = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
g (float[N, 3] x) => (float[N, 3] y, float[N] s) {
  y = Add(x, x)
  s = ReduceSum <keepdims = 0> (x, axes)
}""")
DOUBLE.graph.initializer.append(onnx.numpy_helper.from_array(np.array([1], np.int64), "axes"))


def test_run_batches_joins_every_output_along_the_sample_axis(tmp_path):
    x = np.arange(21, dtype=np.float32).reshape(7, 3)
    doubled, sums = run_batches(session(DOUBLE), {"x": x}, batch_size=3)
    np.testing.assert_array_equal(doubled, 2 * x)
    np.testing.assert_array_equal(sums, x.sum(axis=1))
    path = tmp_path / "double.onnx"
    onnx.save(DOUBLE, str(path))
    np.testing.assert_array_equal(run_batches(session(path, threads=1, arena=False), {"x": x})[0], 2 * x)


def test_session_refuses_what_onnx_runtime_cannot_load():
    with pytest.raises(OnnxcompError, match=r"^ONNX Runtime \d+\.\d+\.\d+ cannot load the model: ") as caught:
        session(b"not a model")
    assert "\n" not in str(caught.value)


def test_failed_run_keeps_the_cause_and_suggests_the_data_flags():
    feed = {"x": np.ones((2, 4), np.float32)}
    with pytest.raises(RunFailedError) as caught:
        run_batches(session(DOUBLE), feed)
    message = str(caught.value)
    assert message.startswith("ONNX Runtime failed to run the model on the sample inputs: ")
    assert message.endswith("check the inputs' shapes and types in --data (or pin a shared value with --input-value NAME=V)")
    assert caught.value.cause and caught.value.cause.rstrip(". ") in message


@pytest.mark.parametrize(("raw", "described"), [
    ("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: x",
     "Got invalid dimensions for input: x"),
    ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Add node. "
     "Name:'/block/Add' Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/math/element_wise_ops.h:540 "
     "void onnxruntime::BroadcastIterator::Append(ptrdiff_t, ptrdiff_t) axis == 1 || axis == largest was false. "
     "Attempting to broadcast an axis by a dimension other than 1. 3 by 5",
     "Add node '/block/Add': Attempting to broadcast an axis by a dimension other than 1. 3 by 5"),
    ("Non-zero status code returned while running Reshape node. Name:'' Status Message: "
     "/src/reshape_helper.h:39 onnxruntime::ReshapeHelper::ReshapeHelper(const TensorShape&, TensorShapeVector&, bool) "
     "size != 0 && (input_shape_size % size) == 0 was false. The input tensor cannot be reshaped",
     "Reshape node: The input tensor cannot be reshaped"),
    ("Non-zero status code returned while running Gather node. Name:'g' Status Message: "
     "/src/gather.cc:12 Status f(int) indices element out of data bounds, idx=9",
     "Gather node 'g': indices element out of data bounds, idx=9"),
    ("first line\n   second line  \n", "first line second line"),
])
def test_describe_error_keeps_node_and_cause_on_one_line(raw, described):
    assert describe_error(RuntimeError(raw)) == described


def test_describe_error_of_nothing_and_of_a_flood():
    assert describe_error(ValueError()) == "ValueError"
    assert describe_error("") == "unknown error"
    long = describe_error("x" * (MAX_MESSAGE_CHARS + 50))
    assert long == "x" * MAX_MESSAGE_CHARS + " ..."


def test_input_hint_names_the_input_onnx_runtime_names():
    message = "Got invalid dimensions for input: attention_mask for the following indices"
    assert input_hint(message, True, ["input_ids", "attention_mask"]) == (
        "pin the input's shape or value ONNX Runtime expects with --input-shape attention_mask:DIMS or "
        "--input-value attention_mask=V, or give sample inputs with --data")
    assert "--input-shape NAME:DIMS" in input_hint(message, True, ["input_ids"])  # not one of the model's inputs
    assert input_hint(message, False, ["attention_mask"]).startswith("check the inputs' shapes and types in --data")


def test_integer_divisions_lists_integer_div_and_mod_nodes():
    model = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (int64[N] a, int64[N] b, float[N] f) => (int64[N] q, int64[N] r, float[N] h, int64[N] w) {
      q = Div(a, b)
      r = Mod(a, b)
      h = Div(f, f)
      c = Add(a, b)
      w = Div(c, b)
    }""")
    model.graph.node[0].name = "divide"
    assert integer_divisions(model) == "Div 'divide', Mod, Div"
    assert integer_divisions(model, limit=1) == "Div 'divide' and 2 more"
    assert integer_divisions(DOUBLE) == ""


LOWER = onnx.parser.parse_model("""<ir_version: 10, opset_import: ["" : 17, "ai.onnx.contrib" : 1]>
g (string[N] text) => (string[N] lower) {
  lower = ai.onnx.contrib.StringLower(text)
}""")


def test_custom_operators_without_onnxruntime_extensions_name_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime_extensions", None)  # as where it is not installed
    with pytest.raises(OnnxcompError, match=r"StringLower.*'ai\.onnx\.contrib' domain come from onnxruntime-extensions: "
                                            r"install it") as caught:
        session(LOWER)
    assert "\n" not in str(caught.value)


def test_custom_operators_of_onnxruntime_extensions_are_registered_where_it_is_installed():
    pytest.importorskip("onnxruntime_extensions", reason="onnxruntime-extensions is not installed")
    lowered = session(LOWER).run(None, {"text": np.array(["AbC", "XY"], dtype=object)})[0]
    assert lowered.tolist() == ["abc", "xy"]
