"""Metadata and the model's interface: what a compressed model keeps so that it stays a drop-in
replacement, and `onnxcomp inspect` on models as they ship (Constant-node weights, hostile names).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxcomp.model.canonicalize import initializer_inputs
from onnxcomp.encodings.decode import DecodeBuilder
from onnxcomp.modelfile import to_proto
from onnxcomp.passes.cleanup import clean_up, metadata_bytes
from onnxcomp.pipeline import CompressOptions, compress_file
from onnxcomp.reporting.compression_report import CompressionReport, LayerRow
from onnxcomp.reporting.report import format_table, inspect_model
from onnxcomp.text import printable
from tests.conftest import LENET5, run

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

# Two inputs and three outputs of three dtypes, symbolic dims: the interface must not move.
INTERFACE_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
app (float[batch, 32] image, float[batch, 16] bias_in) => (float[batch, 16] logits, int64[batch] label,
                                                           float[batch, seq] features) {
  h = Gemm(image, w1, b1)
  r = Relu(h)
  m = MatMul(r, w2)
  logits = Add(m, bias_in)
  label = ArgMax<axis = 1, keepdims = 0>(logits)
  features = Identity(r)
}
"""
SHAPES = {"w1": (32, 64), "b1": (64,), "w2": (64, 16)}
CHARACTERS = "".join(chr(0x4E00 + i) + "\n" for i in range(600))  # a character dictionary, as OCR apps read it
STACK = "File \"model.py\", line 12, in forward\n    return self.fc(x)\n" * 4


def interface(proto: onnx.ModelProto) -> list[tuple]:
    """Names, order, element types and declared dims (values and dim_params) of inputs and outputs."""
    def describe(info: onnx.ValueInfoProto) -> tuple:
        tensor = info.type.tensor_type
        dims = tuple(d.dim_param or d.dim_value for d in tensor.shape.dim) if tensor.HasField("shape") else None
        return info.name, tensor.elem_type, dims
    return [tuple(describe(v) for v in proto.graph.input), tuple(describe(v) for v in proto.graph.output)]


@pytest.fixture
def shipped(tmp_path, rng) -> onnx.ModelProto:
    """A model as exporters ship it: metadata the application reads, doc strings, node stack traces
    (node metadata_props) and value_info from shape inference."""
    proto = onnx.parser.parse_model(INTERFACE_TEXT)
    for name, shape in SHAPES.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    declared = list(proto.graph.output)
    proto = onnx.shape_inference.infer_shapes(proto)
    assert proto.graph.value_info
    del proto.graph.output[:]
    proto.graph.output.extend(declared)  # inference would replace `seq`: the declared outputs stand
    onnx.helper.set_model_props(proto, {"character": CHARACTERS, "stride": "32", "labels": json.dumps(list("abcdefgh"))})
    proto.doc_string = "exported by a test"
    for index, node in enumerate(proto.graph.node):
        node.name = f"/model/layer{index}/{node.op_type}"
        node.doc_string = STACK
        node.metadata_props.add(key="pkg.torch.onnx.stack_trace", value=STACK)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def compress(proto: onnx.ModelProto, folder, target: int, **options) -> tuple[onnx.ModelProto, CompressionReport]:
    source, output = folder / "in.onnx", folder / "out.onnx"
    onnx.save(proto, str(source))
    # force: these tests check metadata at tight targets, not quality (the floor would refuse some)
    report = compress_file(source, output, CompressOptions(target_bytes=target, sensitivity=False, force=True, **options))
    assert output.stat().st_size <= target
    return onnx.load(str(output)), report


def feeds(rng, count: int = 5) -> dict[str, np.ndarray]:
    return {"image": rng.standard_normal((count, 32)).astype(np.float32),
            "bias_in": rng.standard_normal((count, 16)).astype(np.float32)}


def props(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


# -- metadata ---------------------------------------------------------------------------------


def test_metadata_kept_by_default_and_counted(shipped, tmp_path, rng):
    weights = sum(int(np.prod(shape)) for shape in SHAPES.values()) * 4
    target = weights // 3 + len(CHARACTERS.encode())  # the dictionary alone is ~2/3 of the target
    out, report = compress(shipped, tmp_path, target)
    assert props(out) == props(shipped)
    assert [p.key for p in out.metadata_props] == ["character", "stride", "labels"]  # in the input's order, not sorted
    # the report's count is what the entries take in the file: the model's, and the graph's map of
    # the weights' original names (onnxcomp.weight_names)
    bare = onnx.ModelProto()
    bare.CopyFrom(out)
    del bare.metadata_props[:]
    del bare.graph.metadata_props[:]
    # (plus the byte or two by which the graph's length prefix grows with the graph's entry)
    assert report.metadata_bytes <= out.ByteSize() - bare.ByteSize() <= report.metadata_bytes + 2
    assert report.metadata_bytes > len(CHARACTERS.encode())
    assert report.output_bytes <= target
    # what only documents the export is dropped by default
    assert not out.graph.value_info
    assert all(not node.doc_string and not node.metadata_props for node in out.graph.node)
    # export names are dropped; only Slice nodes get short unique names of their own (ONNX
    # Runtime's GatherSliceToSplitFusion names its Split after the Slice)
    assert all(not node.name for node in out.graph.node if node.op_type != "Slice")
    slices = [node.name for node in out.graph.node if node.op_type == "Slice"]
    assert all(name.startswith("_") and len(name) <= 4 for name in slices)
    assert len(set(slices)) == len(slices)
    assert interface(out) == interface(shipped)
    onnx.checker.check_model(out, full_check=True)


def test_keep_metadata_gives_a_valid_model(shipped, tmp_path, rng):
    target = sum(int(np.prod(shape)) for shape in SHAPES.values()) * 4 // 4 + 8000
    out, report = compress(shipped, tmp_path, target, keep_metadata=True)
    onnx.checker.check_model(out, full_check=True)
    names = [node.name for node in out.graph.node]
    assert len(set(names)) == len(names)
    values = [o for node in out.graph.node for o in node.output]
    assert len(set(values)) == len(values)
    assert props(out) == props(shipped)
    kept = {node.name: node for node in out.graph.node if node.name.startswith("/model/")}
    assert len(kept) == len(shipped.graph.node)
    assert all(node.doc_string == STACK and node.metadata_props[0].value == STACK for node in kept.values())
    assert {v.name for v in out.graph.value_info} >= {"h", "r", "m"}
    assert report.metadata_bytes > len(CHARACTERS.encode()) + len(shipped.graph.node) * 2 * len(STACK)
    assert interface(out) == interface(shipped)
    sample = feeds(rng)
    compressed, original = run(out, sample), run(shipped, sample)
    assert [a.dtype for a in compressed] == [a.dtype for a in original]
    assert [a.shape for a in compressed] == [a.shape for a in original]


def test_decode_builders_on_one_graph_name_nodes_apart():
    """Two passes each build decode nodes into the same graph: their names must not collide
    with each other's or with the names already there (ONNX Runtime refuses duplicate node names)."""
    x = ir.Value(name="x")
    existing = [ir.node("Relu", [x], name=f"Reshape_{i}") for i in range(1, 40)]
    for i, node in enumerate(existing, start=1):
        node.outputs[0].name = f"reshape_{i}"
    graph = ir.Graph([x], [], nodes=existing, name="g")
    for _ in range(2):
        builder = DecodeBuilder(graph)
        shape = builder.constant(np.array([2, 3], np.int64), "shape")
        value = builder.constant(np.arange(6, dtype=np.int32), "codes")
        builder.op("Reshape", [builder.op("Reshape", [value, shape]), shape])
        builder.flush()
    nodes = [node.name for node in graph]
    values = [o.name for node in graph for o in node.outputs] + list(graph.initializers)
    assert len(set(nodes)) == len(nodes), nodes
    assert len(set(values)) == len(values), values


def test_keep_metadata_on_lenet5_runs(tmp_path, rng):
    """LeNet-5 at 1/29 uses sparse and lookup decodes (two builders): with original names kept,
    ONNX Runtime refused the result ("two nodes with same node name")."""
    output = tmp_path / "kept.onnx"
    report = compress_file(LENET5, output, CompressOptions(target_bytes=60_000, keep_metadata=True, sensitivity=False,
                                                           force=True))  # a tight target on purpose: no quality floor
    proto = onnx.load(str(output))
    onnx.checker.check_model(proto, full_check=True)
    assert {row.encoding for row in report.layers} >= {"sparse"}
    original = onnx.load(str(LENET5))
    assert interface(proto) == interface(original)
    image = rng.standard_normal((2, *[d.dim_value for d in original.graph.input[0].type.tensor_type.shape.dim[1:]]))
    assert run(proto, {original.graph.input[0].name: image.astype(np.float32)})[0].shape == (2, 10)


def test_clean_up_keeping_names_makes_them_unique(shipped):
    """Whatever pass made two nodes (or values) of one name, a model saved with its names kept
    must still load in ONNX Runtime."""
    model = ir.serde.deserialize_model(shipped)
    nodes = list(model.graph)
    nodes[1].name = nodes[0].name
    nodes[2].outputs[0].name = nodes[0].outputs[0].name
    clean_up(model, keep_metadata=True, shorten_names=False)
    proto = to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    names = [node.name for node in proto.graph.node]
    assert len(set(names)) == len(names)
    assert interface(proto) == interface(shipped)
    assert run(proto, feeds(np.random.default_rng(0)))[0].shape == (5, 16)


def test_clean_up_default_keeps_model_metadata_drops_the_rest(shipped):
    model = ir.serde.deserialize_model(shipped)
    before = metadata_bytes(model)
    clean_up(model)
    proto = to_proto(model)  # as saved
    assert props(proto) == props(shipped)
    assert not proto.graph.value_info and not proto.doc_string
    assert metadata_bytes(model) < before
    assert interface(proto) == interface(shipped)


# -- interface: initializers that are also graph inputs -----------------------------------------


def with_initializer_inputs(rng, ir_version: int, opset: int, listed: tuple[str, ...]) -> onnx.ModelProto:
    declared = ", ".join(f"float[{', '.join(map(str, SHAPES[name]))}] {name}" for name in listed)
    text = INTERFACE_TEXT.replace("<ir_version: 8, opset_import: [\"\" : 17]>",
                                  f"<ir_version: {ir_version}, opset_import: [\"\" : {opset}]>")
    text = text.replace("float[batch, 16] bias_in)", f"float[batch, 16] bias_in, {declared})")
    proto = onnx.parser.parse_model(text)
    for name, shape in SHAPES.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    return proto


def test_ir3_initializer_inputs_are_compressed_and_reported(tmp_path, rng):
    """IR < 4 lists every initializer as an input (ONNX Runtime treats them as constants): they
    become plain initializers, compressed, the output passes the checker, the report says so."""
    proto = with_initializer_inputs(rng, 3, 9, ("w1", "b1", "w2"))
    assert initializer_inputs(ir.serde.deserialize_model(proto)).removed == ("w1", "b1", "w2")
    target = sum(int(np.prod(shape)) for shape in SHAPES.values()) * 4 // 4
    out, report = compress(proto, tmp_path, target)
    onnx.checker.check_model(out, full_check=True)
    assert out.ir_version >= 4
    assert [v.name for v in out.graph.input] == ["image", "bias_in"]
    assert report.initializer_inputs == {"removed": ["w1", "b1", "w2"], "kept": []}
    assert {row.name for row in report.layers} >= {"w1", "w2"}
    before, after = interface(proto), interface(out)
    assert after == [before[0][:2], before[1]]  # the two real inputs, every output, as they were
    sample = feeds(rng)
    assert [a.shape for a in run(out, sample)] == [a.shape for a in run(proto, sample)]


def test_overridable_initializer_input_stays_an_input(tmp_path, rng):
    """IR >= 4 with only some initializers listed: a default the caller may override. It stays an
    input with its default value (stored dense); the other weights are compressed."""
    proto = with_initializer_inputs(rng, 8, 17, ("w2",))
    dense = 4 * int(np.prod(SHAPES["w2"]))
    out, report = compress(proto, tmp_path, dense + sum(int(np.prod(shape)) for shape in SHAPES.values()) * 4 // 3)
    onnx.checker.check_model(out, full_check=True)
    assert interface(out) == interface(proto)
    assert report.initializer_inputs == {"removed": [], "kept": ["w2"]}
    default = next(t for t in out.graph.initializer if t.name == "w2")
    original = next(t for t in proto.graph.initializer if t.name == "w2")
    assert np.array_equal(onnx.numpy_helper.to_array(default), onnx.numpy_helper.to_array(original))
    rows = {row.name: row for row in report.layers}
    assert rows["w2"].encoding == "dense" and rows["w2"].bytes_after == dense  # stored as it was
    sample = feeds(rng)
    override = {**sample, "w2": np.zeros(SHAPES["w2"], np.float32)}  # the caller's value is used
    assert np.array_equal(run(out, override)[0], sample["bias_in"])
    assert np.array_equal(run(out, override)[0], run(proto, override)[0])


# -- inspect ----------------------------------------------------------------------------------


CONSTANT_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
consts (float[N, 32] x, bool flag) => (float[N, 16] y) {
  w1 = Constant<value = float[32, 64] {WEIGHTS1}>()
  h = MatMul(x, w1)
  r = Relu(h)
  y = If(flag) <then_branch = g1 () => (float[N, 16] a) {
      w2 = Constant<value = float[64, 16] {WEIGHTS2}>()
      a = MatMul(r, w2)
    }, else_branch = g2 () => (float[N, 16] b) {
      b = MatMul(r, w3)
    }>
}
"""


def constant_model(rng) -> onnx.ModelProto:
    text = CONSTANT_TEXT.replace("{WEIGHTS1}", "{" + ", ".join(f"{v:.4f}" for v in rng.standard_normal(32 * 64)) + "}")
    text = text.replace("{WEIGHTS2}", "{" + ", ".join(f"{v:.4f}" for v in rng.standard_normal(64 * 16)) + "}")
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal((64, 16)).astype(np.float32), "w3"))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def cli(capsys, *args) -> tuple[int, str, str]:
    from onnxcomp.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_inspect_lists_constant_node_and_subgraph_weights(tmp_path, rng, capsys):
    proto = constant_model(rng)
    rows = inspect_model(ir.serde.deserialize_model(proto))
    assert sorted(tuple(row.shape) for row in rows) == [(32, 64), (64, 16), (64, 16)]
    path = tmp_path / "consts.onnx"
    onnx.save(proto, str(path))
    code, out, err = cli(capsys, "inspect", path)
    assert code == 0, err
    assert out.splitlines()[-1].startswith("3 weights, 4,096 parameters")


HOSTILE = "w\x1b]0;owned\x07\x1b[2J\nfake row 1x1\u202e\x9b"


def test_inspect_prints_names_escaped(tmp_path, rng, capsys):
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 32] x) => (float[N, 16] y) {
      y = MatMul(x, w)
    }
    """)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), HOSTILE))
    proto.graph.node[0].input[1] = HOSTILE
    path = tmp_path / "hostile.onnx"
    onnx.save(proto, str(path))
    code, out, err = cli(capsys, "inspect", path)
    assert code == 0, err
    assert all(ch.isprintable() for line in out.splitlines() for ch in line)
    lines = out.splitlines()
    assert len(lines) == 4  # header, rule, one weight, summary: no name broke the table
    assert printable(HOSTILE)[-30:] in lines[2]  # long names keep their tail
    code, out, err = cli(capsys, "inspect", path, "--json")
    assert json.loads(out)[0]["name"] == HOSTILE  # JSON escapes by itself and keeps the real name


def test_printable_escapes_only_what_a_terminal_would_interpret():
    assert printable("conv1.weight") == "conv1.weight"
    assert printable("层.权重") == "层.权重"
    assert printable("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert printable("a\nb\tc") == "a\\nb\\tc"
    assert printable("C:\\models\\w") == "C:\\models\\w"  # paths read as they are
    assert printable("\u202e\x9b") == "\\u202e\\x9b"
    row = LayerRow(name="x\ny", shape=[2], params=2, encoding="dense", bits=32, bytes_before=8, bytes_after=8)
    table = format_table([row], [("name", "layer"), ("shape", "shape")])
    assert len(table.splitlines()) == 3


def test_compress_prints_names_escaped(tmp_path, rng, capsys):
    """Progress lines, the table and errors quote names from the file: escaped, one line each."""
    proto = onnx.parser.parse_model("""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 32] x, float[32, 32] w0) => (float[N, 16] y) {
      h = MatMul(x, w0)
      y = MatMul(h, w)
    }
    """)
    proto.graph.input[1].name = HOSTILE  # an overridable default: compress names it in a progress line
    proto.graph.node[0].input[1] = HOSTILE
    proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), HOSTILE))
    proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "w"))
    path = tmp_path / "hostile.onnx"
    onnx.save(proto, str(path))
    code, out, err = cli(capsys, "compress", path, "--target-size", "5000", "-o", tmp_path / "out.onnx",
                         "--allow-low-fidelity")  # names in progress lines are tested here, not quality
    assert code == 0, err
    assert printable(HOSTILE) in err
    assert all(ch.isprintable() for text in (out, err) for line in text.splitlines() for ch in line)
    code, out, err = cli(capsys, "compress", path, "--target-size", "100", "-o", tmp_path / "small.onnx", "-q")
    assert code == 3 and err.count("\n") == 1 and all(ch.isprintable() for ch in err.rstrip("\n"))


def test_check_interface_names_the_first_change(shipped):
    from onnxcomp.model.canonicalize import check_interface, model_interface
    from onnxcomp.errors import OnnxcompError

    model = ir.serde.deserialize_model(shipped)
    expected = model_interface(model)
    assert expected[4] == ("output", "features", ir.DataType.FLOAT, ("batch", "seq"))
    check_interface(expected, model)
    model.graph.outputs[2].shape = ir.Shape(["batch", 64])  # what shape inference would write
    with pytest.raises(OnnxcompError, match="features"):
        check_interface(expected, model)
