"""A zoo of structurally different public-architecture models (issue 6): each one compresses to
half its file size with its outputs checked in ONNX Runtime, or is refused with a stated reason.

The models are small (10k-100k parameters, seeded random weights) and built here with
onnx.helper / the ONNX text format, so the zoo needs no downloads and runs in seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run

onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

OPSET = 17
RNG_SEED = 20240607


def _rng(salt: int) -> np.random.Generator:
    return np.random.default_rng(RNG_SEED + salt)


def _weights(rng: np.random.Generator, shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """He-style scaled weights (fan-in = product of all but the first dim, or the first for 2-D
    MatMul weights); biases small. Keeps activations O(1) through deep stacks."""
    arrays = {}
    for name, shape in shapes.items():
        if len(shape) == 1:
            arrays[name] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
            continue
        fan_in = shape[0] if name.startswith("m") else int(np.prod(shape[1:]))
        arrays[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return arrays


def _from_text(text: str, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    proto = onnx.parser.parse_model(text)
    for name, array in arrays.items():
        proto.graph.initializer.append(numpy_helper.from_array(np.asarray(array), name))
    return proto


def mlp() -> onnx.ModelProto:
    rng = _rng(1)
    arrays = _weights(rng, {"w1": (256, 64), "b1": (256,), "w2": (128, 256), "b2": (128,), "w3": (10, 128), "b3": (10,)})
    return _from_text("""
<ir_version: 8, opset_import: ["" : 17]>
mlp (float[N, 64] x) => (float[N, 10] y) {
  h1 = Gemm <transB = 1> (x, w1, b1)
  r1 = Relu(h1)
  h2 = Gemm <transB = 1> (r1, w2, b2)
  r2 = Relu(h2)
  y = Gemm <transB = 1> (r2, w3, b3)
}
""", arrays)


def lenet(header: str = '<ir_version: 7, opset_import: ["" : 13]>') -> onnx.ModelProto:
    rng = _rng(2)
    arrays = _weights(rng, {"c1": (8, 1, 5, 5), "cb1": (8,), "c2": (16, 8, 5, 5), "cb2": (16,),
                            "f1": (120, 256), "fb1": (120,), "f2": (10, 120), "fb2": (10,)})
    return _from_text(header + """
lenet (float[N, 1, 28, 28] x) => (float[N, 10] y) {
  a1 = Conv <kernel_shape = [5, 5]> (x, c1, cb1)
  r1 = Relu(a1)
  p1 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r1)
  a2 = Conv <kernel_shape = [5, 5]> (p1, c2, cb2)
  r2 = Relu(a2)
  p2 = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (r2)
  f = Flatten <axis = 1> (p2)
  h = Gemm <transB = 1> (f, f1, fb1)
  r3 = Relu(h)
  y = Gemm <transB = 1> (r3, f2, fb2)
}
""", arrays)


def lenet_opset9() -> onnx.ModelProto:
    """An old export (IR 4, opset 9): converted to opset 11 before compression."""
    return lenet('<ir_version: 4, opset_import: ["" : 9]>')


def resnet_block() -> onnx.ModelProto:
    rng = _rng(3)
    channels = 32
    arrays = _weights(rng, {"stem": (channels, 3, 3, 3), "k1": (channels, channels, 3, 3), "k2": (channels, channels, 3, 3),
                            "fc": (10, channels), "fcb": (10,)})
    for prefix in ("bn0", "bn1", "bn2"):
        arrays[f"{prefix}_s"] = (1.0 + 0.1 * rng.standard_normal(channels)).astype(np.float32)
        arrays[f"{prefix}_b"] = (0.1 * rng.standard_normal(channels)).astype(np.float32)
        arrays[f"{prefix}_m"] = (0.1 * rng.standard_normal(channels)).astype(np.float32)
        arrays[f"{prefix}_v"] = (1.0 + 0.1 * rng.random(channels)).astype(np.float32)
    return _from_text("""
<ir_version: 8, opset_import: ["" : 15]>
resnet_block (float[N, 3, 16, 16] x) => (float[N, 10] y) {
  s = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, stem)
  sb = BatchNormalization (s, bn0_s, bn0_b, bn0_m, bn0_v)
  sr = Relu(sb)
  a1 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (sr, k1)
  n1 = BatchNormalization (a1, bn1_s, bn1_b, bn1_m, bn1_v)
  r1 = Relu(n1)
  a2 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (r1, k2)
  n2 = BatchNormalization (a2, bn2_s, bn2_b, bn2_m, bn2_v)
  skip = Add(n2, sr)
  r2 = Relu(skip)
  g = GlobalAveragePool(r2)
  f = Flatten <axis = 1> (g)
  y = Gemm <transB = 1> (f, fc, fcb)
}
""", arrays)


def mobilenet() -> onnx.ModelProto:
    rng = _rng(4)
    arrays = _weights(rng, {"stem": (32, 3, 3, 3), "dw1": (32, 1, 3, 3), "pw1": (64, 32, 1, 1), "dw2": (64, 1, 3, 3),
                            "pw2": (128, 64, 1, 1), "dw3": (128, 1, 3, 3), "pw3": (128, 128, 1, 1), "fc": (10, 128), "fcb": (10,)})
    for index, channels in ((1, 32), (2, 64), (3, 128)):
        arrays[f"db{index}"] = (0.1 * rng.standard_normal(channels)).astype(np.float32)
    return _from_text("""
<ir_version: 8, opset_import: ["" : 13]>
mobilenet (float[N, 3, 32, 32] x) => (float[N, 10] y) {
  s = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [2, 2]> (x, stem)
  s6 = Clip(s, lo, hi)
  d1 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = 32> (s6, dw1, db1)
  d1r = Clip(d1, lo, hi)
  p1 = Conv <kernel_shape = [1, 1]> (d1r, pw1)
  p1r = Clip(p1, lo, hi)
  d2 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], strides = [2, 2], group = 64> (p1r, dw2, db2)
  d2r = Clip(d2, lo, hi)
  p2 = Conv <kernel_shape = [1, 1]> (d2r, pw2)
  p2r = Clip(p2, lo, hi)
  d3 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = 128> (p2r, dw3, db3)
  d3r = Clip(d3, lo, hi)
  p3 = Conv <kernel_shape = [1, 1]> (d3r, pw3)
  p3r = Clip(p3, lo, hi)
  g = GlobalAveragePool(p3r)
  f = Flatten <axis = 1> (g)
  y = Gemm <transB = 1> (f, fc, fcb)
}
""", {**arrays, "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32)})


def lstm() -> onnx.ModelProto:
    rng = _rng(5)
    hidden, features = 64, 32
    arrays = {
        "W": (rng.standard_normal((1, 4 * hidden, features)) / np.sqrt(features)).astype(np.float32),
        "R": (rng.standard_normal((1, 4 * hidden, hidden)) / np.sqrt(hidden)).astype(np.float32),
        "B": (0.1 * rng.standard_normal((1, 8 * hidden))).astype(np.float32),
    }
    return _from_text(f"""
<ir_version: 8, opset_import: ["" : 14]>
lstm (float[S, N, {features}] x) => (float[S, 1, N, {hidden}] y, float[1, N, {hidden}] y_h) {{
  y, y_h = LSTM <hidden_size = {hidden}> (x, W, R, B)
}}
""", arrays)


def gru() -> onnx.ModelProto:
    rng = _rng(6)
    hidden, features = 64, 48
    arrays = {
        "W": (rng.standard_normal((1, 3 * hidden, features)) / np.sqrt(features)).astype(np.float32),
        "R": (rng.standard_normal((1, 3 * hidden, hidden)) / np.sqrt(hidden)).astype(np.float32),
        "B": (0.1 * rng.standard_normal((1, 6 * hidden))).astype(np.float32),
        "fc": (rng.standard_normal((hidden, 16)) / np.sqrt(hidden)).astype(np.float32),
    }
    return _from_text(f"""
<ir_version: 8, opset_import: ["" : 14]>
gru (float[S, N, {features}] x) => (float[1, N, 16] y) {{
  seq, last = GRU <hidden_size = {hidden}, linear_before_reset = 1> (x, W, R, B)
  y = MatMul(last, fc)
}}
""", arrays)


def transformer_block() -> onnx.ModelProto:
    rng = _rng(7)
    d, ff = 64, 256
    arrays = _weights(rng, {"mq": (d, d), "mk": (d, d), "mv": (d, d), "mo": (d, d), "mf1": (d, ff), "mf2": (ff, d)})
    arrays.update({
        "bq": np.zeros(d, np.float32), "bf1": (0.1 * rng.standard_normal(ff)).astype(np.float32),
        "g1": np.ones(d, np.float32), "be1": np.zeros(d, np.float32),
        "g2": np.ones(d, np.float32), "be2": np.zeros(d, np.float32),
        "scale": np.array(1.0 / np.sqrt(d), np.float32),
    })
    return _from_text(f"""
<ir_version: 8, opset_import: ["" : 17]>
encoder (float[N, S, {d}] x) => (float[N, S, {d}] y) {{
  q0 = MatMul(x, mq)
  q = Add(q0, bq)
  k = MatMul(x, mk)
  v = MatMul(x, mv)
  kt = Transpose <perm = [0, 2, 1]> (k)
  s0 = MatMul(q, kt)
  s = Mul(s0, scale)
  p = Softmax <axis = -1> (s)
  c = MatMul(p, v)
  o = MatMul(c, mo)
  r1 = Add(x, o)
  n1 = LayerNormalization <axis = -1> (r1, g1, be1)
  f1 = MatMul(n1, mf1)
  f1b = Add(f1, bf1)
  f1r = Relu(f1b)
  f2 = MatMul(f1r, mf2)
  r2 = Add(n1, f2)
  y = LayerNormalization <axis = -1> (r2, g2, be2)
}}
""", arrays)


def embedding_pooling() -> onnx.ModelProto:
    rng = _rng(8)
    arrays = {"table": rng.standard_normal((1000, 48)).astype(np.float32),
              "fc": (rng.standard_normal((48, 8)) / np.sqrt(48)).astype(np.float32)}
    return _from_text("""
<ir_version: 8, opset_import: ["" : 13]>
embed (int64[N, S] ids) => (float[N, 8] y) {
  e = Gather(table, ids)
  m = ReduceMean <axes = [1], keepdims = 0> (e)
  y = MatMul(m, fc)
}
""", arrays)


def convtranspose_decoder() -> onnx.ModelProto:
    rng = _rng(9)
    arrays = _weights(rng, {"fc": (512, 32), "fcb": (512,), "t1": (32, 32, 4, 4), "t2": (32, 16, 4, 4), "t3": (16, 1, 4, 4),
                            "tb1": (32,), "tb2": (16,)})
    arrays.update({"shape": np.array([-1, 32, 4, 4], np.int64)})
    return _from_text("""
<ir_version: 8, opset_import: ["" : 13]>
decoder (float[N, 32] z) => (float[N, 1, 32, 32] y) {
  h = Gemm <transB = 1> (z, fc, fcb)
  hr = Relu(h)
  g = Reshape(hr, shape)
  u1 = ConvTranspose <kernel_shape = [4, 4], strides = [2, 2], pads = [1, 1, 1, 1]> (g, t1, tb1)
  r1 = Relu(u1)
  u2 = ConvTranspose <kernel_shape = [4, 4], strides = [2, 2], pads = [1, 1, 1, 1]> (r1, t2, tb2)
  r2 = Relu(u2)
  u3 = ConvTranspose <kernel_shape = [4, 4], strides = [2, 2], pads = [1, 1, 1, 1]> (r2, t3)
  y = Tanh(u3)
}
""", arrays)


def constant_node_weights() -> onnx.ModelProto:
    """The MLP with every initializer turned into a Constant node (old exporters do this)."""
    proto = mlp()
    constants = [helper.make_node("Constant", [], [tensor.name], value=tensor) for tensor in proto.graph.initializer]
    del proto.graph.initializer[:]
    nodes = constants + list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    return proto


def if_subgraph_weights() -> onnx.ModelProto:
    """Weights live inside the branches of an If: one as a Constant node, subgraph initializers
    (one applied to a branch-internal value); a main-graph weight is read from inside a branch
    (outer scope)."""
    rng = _rng(10)
    w_then = (rng.standard_normal((64, 96)) / 8).astype(np.float32)
    w_else = (rng.standard_normal((64, 96)) / 8).astype(np.float32)
    w_shared = (rng.standard_normal((96, 10)) / np.sqrt(96)).astype(np.float32)
    w_in = (rng.standard_normal((32, 64)) / np.sqrt(32)).astype(np.float32)

    then_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["wt"], value=numpy_helper.from_array(w_then, "wt")),
         helper.make_node("MatMul", ["h", "wt"], ["t1"]),
         helper.make_node("Relu", ["t1"], ["t2"]),
         helper.make_node("MatMul", ["t2", "ws"], ["then_out"])],
        "then", [], [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)])
    # we2 reads a value that exists only inside the branch (ONNX Runtime cannot fetch it as a graph output).
    w_else2 = (rng.standard_normal((96, 96)) / np.sqrt(96)).astype(np.float32)
    else_graph = helper.make_graph(
        [helper.make_node("MatMul", ["h", "we"], ["e1"]),
         helper.make_node("Tanh", ["e1"], ["e2"]),
         helper.make_node("MatMul", ["e2", "we2"], ["e3"]),
         helper.make_node("MatMul", ["e3", "ws"], ["else_out"])],
        "else", [], [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(w_else, "we"), numpy_helper.from_array(w_else2, "we2")])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "win"], ["h0"]),
         helper.make_node("Relu", ["h0"], ["h"]),
         helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)],
        "if_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(w_shared, "ws"), numpy_helper.from_array(w_in, "win")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)], ir_version=8)


def int8_dynamic_quantized() -> onnx.ModelProto:
    """A dynamically quantized MLP (DynamicQuantizeLinear + MatMulInteger), as
    onnxruntime.quantization.quantize_dynamic writes it: int8 weights only, re-coded in fewer bits."""
    rng = _rng(11)
    w1 = rng.integers(-127, 128, size=(64, 128), dtype=np.int8)
    w2 = rng.integers(-127, 128, size=(128, 10), dtype=np.int8)
    arrays = {"w1": w1, "w1_zp": np.array(0, np.int8), "w1_s": np.array(0.002, np.float32),
              "w2": w2, "w2_zp": np.array(0, np.int8), "w2_s": np.array(0.003, np.float32)}
    return _from_text("""
<ir_version: 8, opset_import: ["" : 13]>
qmlp (float[N, 64] x) => (float[N, 10] y) {
  xq, xs, xz = DynamicQuantizeLinear(x)
  a = MatMulInteger(xq, w1, xz, w1_zp)
  af = Cast <to = 1> (a)
  s1 = Mul(xs, w1_s)
  h = Mul(af, s1)
  r = Relu(h)
  rq, rs, rz = DynamicQuantizeLinear(r)
  b = MatMulInteger(rq, w2, rz, w2_zp)
  bf = Cast <to = 1> (b)
  s2 = Mul(rs, w2_s)
  y = Mul(bf, s2)
}
""", arrays)


def int8_qdq() -> onnx.ModelProto:
    """A QDQ model (static quantization format): int8 weights behind DequantizeLinear."""
    rng = _rng(12)
    arrays = {"w1": rng.integers(-127, 128, size=(64, 128), dtype=np.int8), "w1_s": np.array(0.002, np.float32),
              "w1_zp": np.array(0, np.int8), "x_s": np.array(0.05, np.float32), "x_zp": np.array(0, np.uint8),
              "w2": rng.integers(-127, 128, size=(128, 10), dtype=np.int8), "w2_s": np.array(0.003, np.float32),
              "w2_zp": np.array(0, np.int8)}
    return _from_text("""
<ir_version: 8, opset_import: ["" : 13]>
qdq (float[N, 64] x) => (float[N, 10] y) {
  xq = QuantizeLinear(x, x_s, x_zp)
  xd = DequantizeLinear(xq, x_s, x_zp)
  w1d = DequantizeLinear(w1, w1_s, w1_zp)
  h = MatMul(xd, w1d)
  r = Relu(h)
  w2d = DequantizeLinear(w2, w2_s, w2_zp)
  y = MatMul(r, w2d)
}
""", arrays)


def int8_with_float_head() -> onnx.ModelProto:
    """Partly quantized: an int8 MatMulInteger body and a large float classifier head (the
    usual result of excluding the last layer from quantization). The float part compresses."""
    rng = _rng(13)
    arrays = {"w1": rng.integers(-127, 128, size=(64, 64), dtype=np.int8), "w1_zp": np.array(0, np.int8),
              "w1_s": np.array(0.002, np.float32),
              "head": (rng.standard_normal((64, 512)) / 8).astype(np.float32),
              "head2": (rng.standard_normal((512, 10)) / np.sqrt(512)).astype(np.float32)}
    return _from_text("""
<ir_version: 8, opset_import: ["" : 13]>
mixed (float[N, 64] x) => (float[N, 10] y) {
  xq, xs, xz = DynamicQuantizeLinear(x)
  a = MatMulInteger(xq, w1, xz, w1_zp)
  af = Cast <to = 1> (a)
  s1 = Mul(xs, w1_s)
  h = Mul(af, s1)
  r = Relu(h)
  g = MatMul(r, head)
  gr = Relu(g)
  y = MatMul(gr, head2)
}
""", arrays)


def shared_and_transposed_weights() -> onnx.ModelProto:
    """A tied-embedding language-model head: the embedding table is read by Gather and, through
    Transpose, by the output MatMul (as many exporters write weight tying)."""
    rng = _rng(14)
    arrays = {"table": (rng.standard_normal((800, 48)) / np.sqrt(48)).astype(np.float32),
              "mix": (rng.standard_normal((48, 48)) / np.sqrt(48)).astype(np.float32)}
    return _from_text("""
<ir_version: 8, opset_import: ["" : 13]>
tied (int64[N, S] ids) => (float[N, S, 800] logits) {
  e = Gather(table, ids)
  h = MatMul(e, mix)
  t = Tanh(h)
  tt = Transpose <perm = [1, 0]> (table)
  logits = MatMul(t, tt)
}
""", arrays)


def unrolled_rnn() -> onnx.ModelProto:
    """A recurrent cell unrolled over 3 steps into Gemm + Sigmoid/Tanh, one weight pair shared
    by every step (how tracing exporters write RNN loops)."""
    rng = _rng(15)
    hidden, features = 96, 32
    arrays = {"wx": (rng.standard_normal((2 * hidden, features)) / np.sqrt(features)).astype(np.float32),
              "wh": (rng.standard_normal((2 * hidden, hidden)) / np.sqrt(hidden)).astype(np.float32),
              "b": (0.1 * rng.standard_normal(2 * hidden)).astype(np.float32)}
    steps = []
    state = "h0"
    for step in range(3):
        steps.append(f"""
  gx{step} = Gemm <transB = 1> (x{step}, wx, b)
  gh{step} = Gemm <transB = 1> ({state}, wh)
  g{step} = Add(gx{step}, gh{step})
  z{step}, c{step} = Split <axis = 1> (g{step})
  zs{step} = Sigmoid(z{step})
  ct{step} = Tanh(c{step})
  h{step + 1} = Mul(zs{step}, ct{step})""")
        state = f"h{step + 1}"
    return _from_text(f"""
<ir_version: 8, opset_import: ["" : 13]>
unrolled (float[N, {features}] x0, float[N, {features}] x1, float[N, {features}] x2, float[N, {hidden}] h0) => (float[N, {hidden}] h3) {{{"".join(steps)}
}}
""", arrays)


def ml_domain() -> onnx.ModelProto:
    """A float network followed by an ai.onnx.ml operator (as scikit-learn converters write)."""
    rng = _rng(16)
    arrays = _weights(rng, {"m1": (64, 128), "m2": (128, 32)})
    return _from_text("""
<ir_version: 8, opset_import: ["" : 13, "ai.onnx.ml" : 3]>
ml (float[N, 64] x) => (float[N, 32] y) {
  h = MatMul(x, m1)
  r = Relu(h)
  o = MatMul(r, m2)
  y = ai.onnx.ml.Normalizer <norm = "L2"> (o)
}
""", arrays)


@dataclasses.dataclass
class Case:
    build: Callable[[], onnx.ModelProto]
    refused: str | None = None  # expected fragment of the refusal message, None = must compress
    min_cosine: float = 0.98

def lstm_gates_in_if() -> onnx.ModelProto:
    """As PyTorch's TorchScript exporter writes an LSTM inside an If (silero-vad's op15 file): each
    branch slices the outer weight_ih/weight_hh into gates, concatenates them in ONNX's order and
    unsqueezes them; the bias slot concatenates bias_ih and bias_hh."""
    rng = _rng(12)
    hidden, features = 32, 16
    outer = {
        "weight_ih": (rng.standard_normal((4 * hidden, features)) / np.sqrt(features)).astype(np.float32),
        "weight_hh": (rng.standard_normal((4 * hidden, hidden)) / np.sqrt(hidden)).astype(np.float32),
        "bias_ih": (0.1 * rng.standard_normal(4 * hidden)).astype(np.float32),
        "bias_hh": (0.1 * rng.standard_normal(4 * hidden)).astype(np.float32),
    }

    def branch(tag: str) -> onnx.GraphProto:
        nodes, parts = [], {}
        for name in outer:
            pieces = []
            for gate, (start, end) in enumerate(((0, hidden), (3 * hidden, 4 * hidden), (hidden, 3 * hidden))):
                nodes.append(helper.make_node("Constant", [], [f"{tag}{name}_s{gate}"], value_ints=[start]))
                nodes.append(helper.make_node("Constant", [], [f"{tag}{name}_e{gate}"], value_ints=[end]))
                nodes.append(helper.make_node("Slice", [name, f"{tag}{name}_s{gate}", f"{tag}{name}_e{gate}"], [f"{tag}{name}_{gate}"]))
                pieces.append(f"{tag}{name}_{gate}")
            nodes.append(helper.make_node("Concat", pieces, [f"{tag}{name}_iofc"], axis=0))
            parts[name] = f"{tag}{name}_iofc"
        nodes.append(helper.make_node("Concat", [parts["bias_ih"], parts["bias_hh"]], [f"{tag}b"], axis=0))
        nodes.append(helper.make_node("Constant", [], [f"{tag}axes"], value_ints=[0]))
        for name, slot in (("weight_ih", "W"), ("weight_hh", "R")):
            nodes.append(helper.make_node("Unsqueeze", [parts[name], f"{tag}axes"], [f"{tag}{slot}"]))
        nodes.append(helper.make_node("Unsqueeze", [f"{tag}b", f"{tag}axes"], [f"{tag}B"]))
        nodes.append(helper.make_node("LSTM", ["x", f"{tag}W", f"{tag}R", f"{tag}B", "", "h0", "c0"],
                                      [f"{tag}y", f"{tag}out"], hidden_size=hidden))
        return helper.make_graph(nodes, tag, [], [helper.make_tensor_value_info(f"{tag}out", TensorProto.FLOAT, None)])

    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["h"], then_branch=branch("t_"), else_branch=branch("e_"))],
        "lstm_if",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, "N", features]),
         helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "N", hidden]),
         helper.make_tensor_value_info("c0", TensorProto.FLOAT, [1, "N", hidden]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, "N", hidden])],
        initializer=[numpy_helper.from_array(array, name) for name, array in outer.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)], ir_version=8)


ZOO = {
    "mlp": Case(mlp),
    "lenet": Case(lenet),
    "lenet_opset9": Case(lenet_opset9),
    "resnet_block": Case(resnet_block),
    "mobilenet_depthwise": Case(mobilenet),
    "lstm": Case(lstm),
    "gru": Case(gru),
    "transformer_block": Case(transformer_block),
    "embedding_pooling": Case(embedding_pooling),
    "convtranspose_decoder": Case(convtranspose_decoder),
    "constant_node_weights": Case(constant_node_weights),
    "if_subgraph_weights": Case(if_subgraph_weights),
    "lstm_gates_in_if": Case(lstm_gates_in_if),
    "int8_dynamic": Case(int8_dynamic_quantized, min_cosine=0.9),  # uniform random int8: the hardest case
    "int8_qdq": Case(int8_qdq, min_cosine=0.9),
    "int8_with_float_head": Case(int8_with_float_head),
    "tied_embedding": Case(shared_and_transposed_weights),
    "unrolled_rnn": Case(unrolled_rnn),
    "ml_domain": Case(ml_domain),
}


def _random_feeds(proto: onnx.ModelProto, rng: np.random.Generator, batch: int = 4) -> dict[str, np.ndarray]:
    initializers = {t.name for t in proto.graph.initializer}
    feeds = {}
    for value in proto.graph.input:
        if value.name in initializers:
            continue
        tensor_type = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (batch if i == 0 else 5)
                for i, d in enumerate(tensor_type.shape.dim)]
        if value.name in ("x",) and proto.graph.name in ("lstm", "gru"):
            dims = [5, batch, dims[2]]
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if dtype == np.bool_:
            feeds[value.name] = np.array(True)
        elif dtype.kind == "f":
            feeds[value.name] = rng.standard_normal(dims).astype(dtype)
        else:
            feeds[value.name] = rng.integers(0, 800, size=dims).astype(dtype)
    return feeds


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))


@pytest.fixture
def cli_main(capsys):
    from onnxcomp.cli import main

    def invoke(*args) -> tuple[int, str]:
        capsys.readouterr()
        code = main([str(a) for a in args])
        return code, capsys.readouterr().err

    return invoke


@pytest.mark.parametrize("name", list(ZOO), ids=list(ZOO))
def test_zoo_model_compresses_to_half_or_is_refused(name, tmp_path, cli_main):
    case = ZOO[name]
    proto = case.build()
    onnx.checker.check_model(proto, full_check=True)
    source = tmp_path / f"{name}.onnx"
    source.write_bytes(proto.SerializeToString())
    original = source.read_bytes()
    target = len(original) // 2
    output = tmp_path / "out" / f"{name}.small.onnx"
    output.parent.mkdir()

    # the interface and dtypes are tested here; toy weights at half can fall below the quality floor
    code, stderr = cli_main("compress", source, "--target-size", target, "-o", output, "-q", "--allow-low-fidelity")

    assert "Traceback" not in stderr
    assert source.read_bytes() == original
    if case.refused is not None:
        assert code == 2, stderr
        assert case.refused in stderr, stderr
        assert list(output.parent.iterdir()) == []
        return
    assert code == 0, stderr
    assert list(output.parent.iterdir()) == [output]
    assert output.stat().st_size <= target
    feeds = _random_feeds(proto, _rng(100))
    expected = run(original, feeds)
    actual = run(str(output), feeds)
    assert len(actual) == len(expected)
    for want, got in zip(expected, actual):
        assert got.shape == want.shape and got.dtype == want.dtype
        assert np.all(np.isfinite(got))
        assert _cosine(want, got) >= case.min_cosine, (name, _cosine(want, got))


@pytest.mark.parametrize("name", ["mlp", "if_subgraph_weights", "int8_qdq"], ids=str)
def test_zoo_model_inspects(name, tmp_path, capsys):
    from onnxcomp.cli import main

    source = tmp_path / f"{name}.onnx"
    source.write_bytes(ZOO[name].build().SerializeToString())
    assert main(["inspect", str(source)]) == 0
    assert "parameters" in capsys.readouterr().out


def test_weights_read_through_gate_slices_in_a_branch_are_listed_once_by_name(tmp_path, cli_main, capsys):
    """inspect and the compress report list the outer weights an If branch slices into LSTM gates
    (not the branch's sliced views, and not once per branch), with the bytes they are stored in."""
    import json

    source = tmp_path / "lstm_if.onnx"
    source.write_bytes(lstm_gates_in_if().SerializeToString())
    names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    from onnxcomp.reporting.report import inspect_model

    assert [row.name for row in inspect_model(ir.load(str(source)))] == names
    report = tmp_path / "report.json"
    code, stderr = cli_main("compress", source, "--target-size", source.stat().st_size // 4, "-o", tmp_path / "small.onnx",
                            "--report", report, "-q", "--allow-low-fidelity")
    assert code == 0, stderr
    rows = json.loads(report.read_text())["layers"]
    assert [row["name"] for row in rows] == names
    assert all(0 < row["bytes_after"] < row["bytes_before"] for row in rows[:2]), rows
