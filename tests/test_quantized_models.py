"""Already-quantized input (issue 6): int8/uint8 weights of quantized ops are re-coded in fewer
bits within the budget and decoded back to their integer type at load; integer weights that stay
as they are (here: the small ones the allocator keeps dense) are named in the output and the
report; a model whose only weights are packed 4-bit ones is refused with a reason that names them
(exit 2, no output, no traceback)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run
from tests.test_zoo import int8_dynamic_quantized, int8_qdq, int8_with_float_head

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


@pytest.mark.parametrize("build, op", [(int8_dynamic_quantized, "MatMulInteger"), (int8_qdq, "DequantizeLinear")],
                         ids=["dynamic", "qdq"])
def test_fully_quantized_model_compresses_further_in_its_integer_type(build, op, tmp_path, capsys):
    from onnxcomp.cli import main

    source = tmp_path / "q.onnx"
    source.write_bytes(build().SerializeToString())
    output, report = tmp_path / "out.onnx", tmp_path / "r.json"
    target = source.stat().st_size // 2
    # uniformly drawn int8 weights at half: top-1 agreement ~78% on generated inputs, below the quality floor;
    # the cosine bound below is this test's measure
    code = main(["compress", str(source), "--target-size", str(target), "-o", str(output), "--report", str(report),
                 "--allow-low-fidelity"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert output.stat().st_size <= target
    compressed = onnx.load(str(output))
    made = {out: node for node in compressed.graph.node for out in node.output}
    weights = [node.input[1 if op == "MatMulInteger" else 0] for node in compressed.graph.node if node.op_type == op]
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(compressed).graph.value_info}
    constant = {t.name for t in compressed.graph.initializer}
    for node in compressed.graph.node:  # decode outputs: computed from initializers alone
        if all(not name or name in constant for name in node.input):
            constant.update(node.output)
    decoded = [name for name in weights if name in made and name in constant]
    assert decoded and all(types[name] == TensorProto.INT8 for name in decoded)
    assert any(row["encoding"] != "dense" for row in json.loads(report.read_text())["layers"])
    x = np.random.default_rng(0).standard_normal((16, 64)).astype(np.float32)
    want, got = run(source.read_bytes(), {"x": x})[0], run(str(output), {"x": x})[0]
    cosine = float(np.sum(want * got) / (np.linalg.norm(want) * np.linalg.norm(got)))
    # Uniformly drawn integers are the hardest case for a codebook (no value is rarer than another).
    assert cosine > 0.93, cosine


def test_partly_quantized_model_names_the_integer_weights_it_left(tmp_path, capsys):
    from onnxcomp.cli import main

    source = tmp_path / "mixed.onnx"
    source.write_bytes(int8_with_float_head().SerializeToString())
    output, report = tmp_path / "out.onnx", tmp_path / "r.json"
    # A loose target: the small int8 body is worth more dense than any re-coding saves.
    code = main(["compress", str(source), "--target-size", str(int(source.stat().st_size * 0.6)), "-o", str(output),
                 "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 0, err
    result = json.loads(report.read_text())
    dense = {row["name"] for row in result["layers"] if row["encoding"] == "dense"}
    left = result.get("quantized_left", [])
    assert {row["name"] for row in left} == dense & {"w1"}
    for row in left:
        assert f"{row['name']} int8" in err and "left as they are" in err
        assert row["ops"] == ["MatMulInteger"]
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    want, got = run(source.read_bytes(), {"x": x})[0], run(str(output), {"x": x})[0]
    assert np.allclose(want, got, atol=0.1 * np.abs(want).max())


def packed_4bit_model() -> onnx.ModelProto:
    """A MatMulNBits layer (4-bit weights packed two per byte, blocks of 32): nothing onnxcomp re-codes."""
    rng = np.random.default_rng(3)
    packed = rng.integers(0, 256, size=(16, 2, 16), dtype=np.uint8)
    scales = (rng.random(32) / 50).astype(np.float32)
    node = helper.make_node("MatMulNBits", ["x", "packed", "scales"], ["y"], domain="com.microsoft",
                            K=64, N=16, bits=4, block_size=32)
    graph = helper.make_graph([node], "nbits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
                              [numpy_helper.from_array(packed, "packed"), numpy_helper.from_array(scales, "scales")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                             ir_version=8)


def test_packed_quantized_model_is_refused_naming_its_weights(tmp_path, capsys):
    from onnxcomp.cli import main

    source = tmp_path / "nbits.onnx"
    source.write_bytes(packed_4bit_model().SerializeToString())
    output = tmp_path / "out.onnx"
    code = main(["compress", str(source), "--target-size", str(source.stat().st_size // 2), "-o", str(output)])
    err = capsys.readouterr().err
    assert code == 2
    assert "already-quantized" in err and "uint8" in err and "MatMulNBits" in err and "packed" in err
    assert "Traceback" not in err and not output.exists()


def test_int8_weights_dequantized_by_cast_and_mul_are_compressed(tmp_path, capsys):
    """Weight-only int8 exports dequantize by hand: int8 -> Cast(float) -> Mul(a scale per row)
    -> MatMul (a MiniLM of 22.9 MB was refused at every size). Those weights are re-coded in their
    integer type, the Cast and Mul left as they are."""
    from onnxcomp.cli import main
    from onnxcomp.model.weights import find_weights
    from onnxcomp.modelfile import load_model

    rng = np.random.default_rng(0)
    codes = np.clip(np.round(rng.standard_normal((64, 128)) * 30), -127, 127).astype(np.int8)
    scale = (0.01 + 0.01 * rng.random((64, 1))).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Cast", ["w_q"], ["w_f"], to=TensorProto.FLOAT), helper.make_node("Mul", ["w_f", "w_s"], ["w"]),
         helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 128])],
        [numpy_helper.from_array(codes, "w_q"), numpy_helper.from_array(scale, "w_s")])
    source = tmp_path / "int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), source)
    (weight,) = find_weights(load_model(source))
    assert weight.name == "w_q" and weight.storage.integer and weight.storage.scale.shape == (64, 1)
    output = tmp_path / "out.onnx"
    target = source.stat().st_size // 2
    assert main(["compress", str(source), "--target-size", str(target), "-o", str(output)]) == 0, capsys.readouterr().err
    assert output.stat().st_size <= target
    x = rng.standard_normal((32, 64)).astype(np.float32)
    want, got = run(source.read_bytes(), {"x": x})[0], run(str(output), {"x": x})[0]
    assert float(np.sum(want * got) / (np.linalg.norm(want) * np.linalg.norm(got))) > 0.97


def test_a_quantized_embedding_table_is_re_coded_in_its_integer_type():
    """quantize_dynamic's embedding: uint8 table -> Gather -> DequantizeLinear; the table is stored
    in fewer bits and decoded back to uint8 at load, so the Gather and its dequantization stay."""
    from onnxcomp.pipeline import CompressOptions, compress_model
    from onnxcomp.runtime.inference import session
    from tests.conftest import build_model

    text = """
<ir_version: 10, opset_import: ["" : 17]>
g (int64[N, 4] ids) => (float[N, 4, 64] y) {
  rows = Gather(table, ids)
  y = DequantizeLinear(rows, scale, zero)
}
"""
    rng = np.random.default_rng(0)
    table = np.clip(np.round(128 + 20 * rng.standard_normal((512, 64))), 0, 255).astype(np.uint8)
    model = build_model(text, {"table": table, "scale": np.array(0.05, np.float32), "zero": np.array(128, np.uint8)})
    result = compress_model(model, CompressOptions(target_bytes=table.nbytes * 3 // 4, sensitivity=False))
    compressed = onnx.ModelProto.FromString(result.data)
    assert len(result.data) <= table.nbytes * 3 // 4
    assert [n.op_type for n in compressed.graph.node][-2:] == ["Gather", "DequantizeLinear"]
    ids = rng.integers(0, 512, (32, 4)).astype(np.int64)
    expected = (table[ids].astype(np.float32) - 128) * 0.05
    got = session(result.data).run(None, {"ids": ids})[0]
    assert np.linalg.norm(got - expected) / np.linalg.norm(expected) < 0.1  # 5-bit codes of a 256-level table
