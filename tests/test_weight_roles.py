"""Weights reached through the ops exporters put between a stacked weight and its consumers."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import numpy_helper

from onnxcomp.model.weights import find_weights

HIDDEN, FEATURES = 8, 6


def _model(text: str, arrays: dict[str, np.ndarray]) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    for name, array in arrays.items():
        proto.graph.initializer.append(numpy_helper.from_array(array, name))
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def test_lstm_weight_with_gates_reordered_by_slice_and_concat_is_a_weight():
    rng = np.random.default_rng(0)
    arrays = {
        "w": rng.standard_normal((4 * HIDDEN, FEATURES)).astype(np.float32),
        "r": rng.standard_normal((1, 4 * HIDDEN, HIDDEN)).astype(np.float32),
        "s0": np.array([0], np.int64), "s1": np.array([HIDDEN], np.int64),
        "s2": np.array([2 * HIDDEN], np.int64), "s4": np.array([4 * HIDDEN], np.int64),
        "zero": np.array([0], np.int64),
    }
    model = _model(f"""
<ir_version: 8, opset_import: ["" : 17]>
g (float[T, N, {FEATURES}] x) => (float[T, 1, N, {HIDDEN}] y) {{
  i = Slice(w, s0, s1)
  f = Slice(w, s1, s2)
  rest = Slice(w, s2, s4)
  reordered = Concat <axis = 0> (f, i, rest)
  w3 = Unsqueeze(reordered, zero)
  y = LSTM <hidden_size = {HIDDEN}> (x, w3, r)
}}
""", arrays)
    assert {w.name for w in find_weights(model)} == {"w", "r"}


def test_weight_split_between_two_matmuls_is_a_weight():
    rng = np.random.default_rng(1)
    arrays = {"w": rng.standard_normal((FEATURES, 2 * HIDDEN)).astype(np.float32)}
    model = _model(f"""
<ir_version: 8, opset_import: ["" : 18]>
g (float[N, {FEATURES}] x) => (float[N, {HIDDEN}] y) {{
  a, b = Split <axis = 1, num_outputs = 2> (w)
  ya = MatMul(x, a)
  yb = MatMul(x, b)
  y = Add(ya, yb)
}}
""", arrays)
    assert [w.name for w in find_weights(model)] == ["w"]


def test_weight_sliced_into_a_non_weight_slot_is_left_alone():
    rng = np.random.default_rng(2)
    arrays = {"w": rng.standard_normal((FEATURES, HIDDEN)).astype(np.float32),
              "s0": np.array([0], np.int64), "s1": np.array([1], np.int64)}
    model = _model(f"""
<ir_version: 8, opset_import: ["" : 17]>
g (float[N, {HIDDEN}] x) => (float[N, {HIDDEN}] y) {{
  row = Slice(w, s0, s1)
  y = Add(x, row)
}}
""", arrays)
    assert find_weights(model) == []
