"""Hostile input (issue 6): a seeded, bounded fuzz of the CLI with broken and adversarial models.

Every case runs `onnxcomp inspect` and `onnxcomp compress` in this process and asserts that no
exception escapes, the exit code is documented (0, 2 bad input, 3 target unreachable, 4 quality
guard), the input files are byte-identical afterwards, a failure leaves nothing (no output, no
temporary file) in the output folder, and a success is within the target and loads in ONNX
Runtime. Most cases are byte-level mutations that only reach the loader; the structured and
random-valid cases go through the whole compression pipeline on tiny models.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import REPO, STALLED_WRITE_SCRIPT

onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

ALLOWED_CODES = {0, 2, 3, 4}
SEED = 6_000


def _rng(*salt: int) -> np.random.Generator:
    return np.random.default_rng([SEED, *salt])


# --- base models (a few hundred parameters, so a full compress takes a fraction of a second) ----

def tiny_mlp(rng: np.random.Generator, hidden: int = 16, features: int = 8, outputs: int = 4) -> onnx.ModelProto:
    proto = onnx.parser.parse_model(f"""
<ir_version: 8, opset_import: ["" : 13]>
tiny (float[N, {features}] x) => (float[N, {outputs}] y) {{
  h = Gemm <transB = 1> (x, w1, b1)
  r = Relu(h)
  y = MatMul(r, w2)
}}
""")
    for name, shape in {"w1": (hidden, features), "b1": (hidden,), "w2": (hidden, outputs)}.items():
        proto.graph.initializer.append(numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    return proto


def tiny_structured(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv + Constant-node weight + If subgraph: more graph structure per byte than the MLP."""
    then_graph = helper.make_graph(
        [helper.make_node("Constant", [], ["wt"], value=numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "wt")),
         helper.make_node("MatMul", ["f", "wt"], ["then_out"])],
        "then", [], [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)])
    else_graph = helper.make_graph(
        [helper.make_node("MatMul", ["f", "we"], ["else_out"])],
        "else", [], [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "we")])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(rng.standard_normal((8, 2, 3, 3)).astype(np.float32), "k")),
         helper.make_node("Conv", ["x", "k"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["cr"]),
         helper.make_node("MaxPool", ["cr"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("GlobalAveragePool", ["p"], ["g"]),
         helper.make_node("Flatten", ["g"], ["g8"], axis=1),
         helper.make_node("MatMul", ["g8", "wu"], ["f"]),
         helper.make_node("If", ["flag"], ["y"], then_branch=then_graph, else_branch=else_graph)],
        "structured",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 8, 8]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(rng.standard_normal((8, 32)).astype(np.float32), "wu")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def tiny_embedding(rng: np.random.Generator) -> onnx.ModelProto:
    """Token ids -> Gather (embedding table, decoded per looked-up row at run time) -> mean -> MatMul."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["e"], axis=0),
         helper.make_node("ReduceMean", ["e"], ["m"], axes=[1], keepdims=0),
         helper.make_node("MatMul", ["m", "head"], ["y"])],
        "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "S"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(rng.standard_normal((300, 8)).astype(np.float32), "table"),
                     numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "head")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


BASES = {"mlp": tiny_mlp(_rng(0)), "structured": tiny_structured(_rng(1)), "embedding": tiny_embedding(_rng(2))}
BASE_BYTES = {name: proto.SerializeToString() for name, proto in BASES.items()}


# --- byte-level mutations: mostly stopped by the loader ------------------------------------------

def truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(0, len(data)))]


def flip(data: bytes, rng: np.random.Generator) -> bytes:
    mutable = bytearray(data)
    for _ in range(int(rng.integers(1, 9))):
        position = int(rng.integers(0, len(mutable)))
        mutable[position] ^= int(rng.integers(1, 256))
    return bytes(mutable)


def splice(data: bytes, rng: np.random.Generator) -> bytes:
    start = int(rng.integers(0, len(data)))
    stop = min(len(data), start + int(rng.integers(0, 64)))
    filler = rng.integers(0, 256, size=int(rng.integers(0, 64)), dtype=np.uint8).tobytes()
    return data[:start] + filler + data[stop:]


def _npz_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((2, 8), np.float32))
    return buffer.getvalue()


GARBAGE = {
    "empty": b"",
    "one_byte": b"\x08",
    "text": b"this is not an onnx model\n" * 20,
    "json": b'{"graph": {"node": [{"op_type": "MatMul"}]}}',
    "png": b"\x89PNG\r\n\x1a\n" + bytes(200),
    "zip": b"PK\x03\x04" + bytes(100),
    "npz": _npz_bytes(),
    "elf": b"\x7fELF\x02\x01\x01" + bytes(120),
    "zeros": bytes(4096),
    "ones": b"\xff" * 4096,
    "varint_overflow": b"\x0a" + b"\xff" * 12,
    "huge_length": b"\x3a\xff\xff\xff\xff\x0f" + bytes(16),  # field graph, 4 GB length, 16 bytes present
    "tensor_proto": numpy_helper.from_array(np.ones((4, 4), np.float32), "t").SerializeToString(),
    "graph_proto": BASES["mlp"].graph.SerializeToString(),
    "no_graph": helper.make_model(helper.make_graph([], "g", [], []), ir_version=8).SerializeToString(),
    "utf8_bom": b"\xef\xbb\xbf<ir_version: 8>",
    "onnx_text": b'<ir_version: 8, opset_import: ["" : 13]>\ng (float[1] x) => (float[1] y) { y = Relu(x) }\n',
}
for index in range(13):  # random bytes of assorted lengths
    GARBAGE[f"random_{index}"] = _rng(90, index).integers(0, 256, size=int(2 ** (index % 13)), dtype=np.uint8).tobytes()


# --- structured mutations of the proto: most parse, many reach compress ----------------------------

def _weights(proto: onnx.ModelProto) -> list[TensorProto]:
    return [t for t in proto.graph.initializer if t.data_type == TensorProto.FLOAT]


def _pick(rng, items):
    return items[int(rng.integers(0, len(items)))]


def wrong_dtype(proto, rng):
    tensor = _pick(rng, list(proto.graph.initializer))
    tensor.data_type = int(_pick(rng, [0, 2, 3, 6, 7, 8, 9, 10, 11, 16, 17, 21, 22, 99, -1]))


def wrong_dims(proto, rng):
    tensor = _pick(rng, list(proto.graph.initializer))
    choice = int(rng.integers(0, 5))
    if choice == 0:
        tensor.dims[0] = 10**12
    elif choice == 1:
        tensor.dims[0] = -3
    elif choice == 2:
        del tensor.dims[:]
    elif choice == 3:
        tensor.dims.append(2)
    else:
        tensor.dims[0] = 0


def short_data(proto, rng):
    tensor = _pick(rng, _weights(proto))
    tensor.raw_data = tensor.raw_data[: int(rng.integers(0, len(tensor.raw_data)))]


def non_finite_weights(proto, rng):
    for tensor in _weights(proto):
        array = numpy_helper.to_array(tensor).copy()
        flat = array.reshape(-1)
        count = int(rng.integers(1, flat.size + 1)) if rng.random() < 0.5 else 1
        flat[rng.choice(flat.size, size=count, replace=False)] = _pick(rng, [np.nan, np.inf, -np.inf])
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def huge_weights(proto, rng):
    for tensor in _weights(proto):
        with np.errstate(over="ignore"):  # 3e38 * w overflows to inf on purpose
            array = numpy_helper.to_array(tensor) * np.float32(_pick(rng, [1e30, 1e-30, 3e38, 0.0]))
        tensor.CopyFrom(numpy_helper.from_array(array.astype(np.float32), tensor.name))


def dangling_edge(proto, rng):
    node = _pick(rng, list(proto.graph.node))
    if node.input:
        node.input[int(rng.integers(0, len(node.input)))] = "does_not_exist"
    else:
        node.input.append("does_not_exist")


def cycle(proto, rng):
    nodes = [n for n in proto.graph.node if n.input]
    first = nodes[int(rng.integers(0, len(nodes) - 1))]
    first.input[0] = nodes[-1].output[0]


def duplicate_output(proto, rng):
    nodes = list(proto.graph.node)
    nodes[-1].output[0] = nodes[0].output[0]


def huge_input_shape(proto, rng):
    value = proto.graph.input[0]
    dims = value.type.tensor_type.shape.dim
    dim = dims[int(rng.integers(0, len(dims)))]
    dim.Clear()
    choice = int(rng.integers(0, 5))
    if choice == 0:
        dim.dim_value = 10**12
    elif choice == 1:
        dim.dim_value = 2**31
    elif choice == 2:
        dim.dim_value = -7
    elif choice == 3:
        dim.dim_param = "weird"
    else:
        dim.dim_value = 0


def drop_input_type(proto, rng):
    proto.graph.input[0].type.Clear()


def unknown_op(proto, rng):
    node = _pick(rng, list(proto.graph.node))
    if rng.random() < 0.5:
        node.op_type = "NoSuchOp"
    else:
        node.domain = "com.example.custom"


def bad_opset(proto, rng):
    choice = int(rng.integers(0, 4))
    if choice == 0:
        proto.opset_import[0].version = int(_pick(rng, [1, 7, 9, 10, 99, 10**6]))
    elif choice == 1:
        del proto.opset_import[:]
    elif choice == 2:
        proto.opset_import.append(helper.make_opsetid("", 11))
    else:
        proto.opset_import[0].domain = "ai.onnx.ml"


def bad_ir_version(proto, rng):
    proto.ir_version = int(_pick(rng, [0, 1, 2, 3, 11, 12, 99, 2**40]))


def bad_attribute(proto, rng):
    node = _pick(rng, [n for n in proto.graph.node if n.attribute] or list(proto.graph.node))
    if node.attribute:
        attribute = node.attribute[0]
        if attribute.type == onnx.AttributeProto.INT:
            attribute.i = int(_pick(rng, [-1, 5, 2**40]))
        elif attribute.type == onnx.AttributeProto.INTS:
            attribute.ints[:] = [int(v) for v in _pick(rng, [[], [0, 0], [99, 99], [-1, -1, -1]])]
        else:
            attribute.type = onnx.AttributeProto.FLOAT
    else:
        node.attribute.append(helper.make_attribute("no_such_attribute", 3))


def remove_graph_output(proto, rng):
    del proto.graph.output[:]


def initializer_shadows_input(proto, rng):
    name = proto.graph.input[0].name
    shape = [d.dim_value or 2 for d in proto.graph.input[0].type.tensor_type.shape.dim]
    proto.graph.initializer.append(numpy_helper.from_array(np.ones(shape, np.float32), name))


def float64_weights(proto, rng):
    for tensor in _weights(proto):
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name))


def weight_as_graph_output(proto, rng):
    tensor = _pick(rng, _weights(proto))
    proto.graph.output.append(helper.make_tensor_value_info(tensor.name, TensorProto.FLOAT, list(tensor.dims)))


def external_inside_proto(proto, rng):
    tensor = _pick(rng, _weights(proto))
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    location = _pick(rng, ["../../etc/passwd", "/etc/passwd", "missing.bin", "", "a\x00b", "."])
    for key, value in (("location", location), ("offset", str(_pick(rng, ["0", "-5", "abc", "1e3", "99999999999"]))),
                       ("length", str(_pick(rng, ["4", "-1", "xyz", "", "10**9"])))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


PROTO_MUTATIONS = [wrong_dtype, wrong_dims, short_data, non_finite_weights, huge_weights, dangling_edge, cycle,
                   duplicate_output, huge_input_shape, drop_input_type, unknown_op, bad_opset, bad_ir_version,
                   bad_attribute, remove_graph_output, initializer_shadows_input, float64_weights,
                   weight_as_graph_output, external_inside_proto]


# --- external data: weights in a file beside the model; locations that escape are refused ------------

EXTERNAL_LOCATIONS = ["../outside.bin", "OUTSIDE_ABSOLUTE", "sub/../../outside.bin", "", "missing.bin", ".", "sub",
                      "link_outside.bin", "weights.bin\x00x", "weights.bin"]


def external_model(folder: Path, rng: np.random.Generator, location: str, damage: bool = True) -> Path:
    """tiny_mlp with its weights in weights.bin, then one tensor's location/offset/length set
    (left valid without `damage`)."""
    proto = tiny_mlp(rng)
    blob = b""
    for tensor in proto.graph.initializer:
        raw = tensor.raw_data
        offset = len(blob)
        blob += raw
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", "weights.bin"), ("offset", str(offset)), ("length", str(len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    (folder / "weights.bin").write_bytes(blob)
    (folder / "sub").mkdir()
    outside = folder.parent / "outside.bin"
    outside.write_bytes(blob)
    os.symlink(outside, folder / "link_outside.bin")
    victim = _pick(rng, list(proto.graph.initializer))
    info = {e.key: e for e in victim.external_data}
    info["location"].value = str(outside) if location == "OUTSIDE_ABSOLUTE" else location
    offset_choice = int(rng.integers(0, 6)) if damage else 0
    if offset_choice == 1:
        info["offset"].value = str(len(blob) + 100)
    elif offset_choice == 2:
        info["length"].value = str(10**12)
    elif offset_choice == 3:
        info["offset"].value = _pick(rng, ["abc", "-4", "1.5", ""])
    path = folder / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


# --- the checks every case shares ------------------------------------------------------------------

def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(folder.rglob("*")) if not p.is_symlink()}


def _invoke(capsys, args: list[str]) -> tuple[int, str]:
    from onnxcomp.cli import main

    capsys.readouterr()
    code = main(args)  # any exception escaping here fails the test, as a traceback would
    return code, capsys.readouterr().err


def check_cli(path: Path, capsys, target: int | None = None, extra: tuple[str, ...] = ("--no-sensitivity",)) -> int:
    """inspect + compress `path`; asserts the contract; returns compress's exit code."""
    inputs = path.parent
    outputs = inputs.parent / "out"
    outputs.mkdir(exist_ok=True)
    before = _snapshot(inputs)
    output = outputs / "small.onnx"

    code, stderr = _invoke(capsys, ["inspect", str(path)])
    assert code in (0, 2), stderr
    assert "Traceback" not in stderr
    if code:
        assert "onnxcomp: error:" in stderr

    if target is None:
        target = max(1, (path.stat().st_size if path.is_file() else 0) // 2)
    code, stderr = _invoke(capsys, ["compress", str(path), "--target-size", str(target), "-o", str(output), "-q", *extra])
    assert isinstance(code, int) and code in ALLOWED_CODES, (code, stderr)
    assert "Traceback" not in stderr
    assert _snapshot(inputs) == before, "the input folder changed"
    left = sorted(p.name for p in outputs.iterdir())
    if code == 0:
        assert left == ["small.onnx"], left
        assert output.stat().st_size <= target
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        onnxruntime.InferenceSession(str(output), options, providers=["CPUExecutionProvider"])
        output.unlink()
    else:
        assert left == [], f"exit {code} left {left}"
        assert "onnxcomp: error:" in stderr, stderr
    return code


def _write(folder: Path, data: bytes, name: str = "model.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(data)
    return path


# --- the cases (seeded; counts chosen so the file runs in well under a minute) ------------------------

BYTE_CASES = [(kind, base, seed) for kind, count in (("truncate", 50), ("flip", 130), ("splice", 40))
              for seed in range(count) for base in [("mlp", "structured", "embedding")[seed % 3]]]
PROTO_CASES = [(mutation.__name__, base, seed) for mutation in PROTO_MUTATIONS for seed in range(10)
               for base in [("mlp", "structured", "embedding")[seed % 3]]]
EXTERNAL_CASES = [(location, seed) for location in EXTERNAL_LOCATIONS for seed in range(4)]
VALID_CASES = list(range(40))


@pytest.mark.parametrize(("kind", "base", "seed"), BYTE_CASES, ids=[f"{k}-{b}-{s}" for k, b, s in BYTE_CASES])
def test_byte_mutations(kind, base, seed, tmp_path, capsys):
    mutate = {"truncate": truncate, "flip": flip, "splice": splice}[kind]
    data = mutate(BASE_BYTES[base], _rng(1, seed, len(kind)))
    check_cli(_write(tmp_path / "in", data), capsys, target=len(BASE_BYTES[base]) // 2)


@pytest.mark.parametrize("name", list(GARBAGE), ids=list(GARBAGE))
def test_not_a_model(name, tmp_path, capsys):
    code = check_cli(_write(tmp_path / "in", GARBAGE[name]), capsys, target=1000)
    assert code == 2


@pytest.mark.parametrize(("mutation", "base", "seed"), PROTO_CASES, ids=[f"{m}-{b}-{s}" for m, b, s in PROTO_CASES])
def test_structured_mutations(mutation, base, seed, tmp_path, capsys):
    proto = copy.deepcopy(BASES[base])
    globals()[mutation](proto, _rng(2, seed, PROTO_MUTATIONS.index(globals()[mutation])))
    path = _write(tmp_path / "in", proto.SerializeToString())
    target = len(BASE_BYTES[base]) // int(_rng(3, seed).choice([1, 2, 4]))
    check_cli(path, capsys, target=target)


@pytest.mark.parametrize(("location", "seed"), EXTERNAL_CASES, ids=[f"{ascii(loc)}-{s}" for loc, s in EXTERNAL_CASES])
def test_external_data_locations(location, seed, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    path = external_model(folder, _rng(4, seed), location)
    outside_before = (tmp_path / "outside.bin").read_bytes()
    code = check_cli(path, capsys, target=2000)
    assert (tmp_path / "outside.bin").read_bytes() == outside_before
    if location != "weights.bin":
        assert code == 2  # never read a file outside the model's folder, or a broken reference


@pytest.mark.parametrize("seed", VALID_CASES)
def test_random_valid_models(seed, tmp_path, capsys):
    """Valid tiny models and assorted targets through the whole pipeline: 0 (fits), 3 (cannot) or 4
    (fits, but the outputs fall below the quality floor: nothing written)."""
    rng = _rng(5, seed)
    if seed % 3 == 2:
        proto = tiny_structured(rng)
    elif seed % 5 == 4:
        proto = tiny_embedding(rng)
    else:
        proto = tiny_mlp(rng, hidden=int(rng.integers(4, 64)), features=int(rng.integers(1, 32)), outputs=int(rng.integers(1, 12)))
    data = proto.SerializeToString()
    target = max(1, int(len(data) * float(rng.choice([0.05, 0.3, 0.5, 0.8, 1.5]))))
    extra = ("--no-sensitivity",) if seed % 4 else ()
    code = check_cli(_write(tmp_path / "in", data), capsys, target=target, extra=extra)
    assert code in (0, 3, 4)


# --- interrupted runs leave no partial output ------------------------------------------------------

def test_keyboard_interrupt_leaves_no_output(tmp_path, capsys, monkeypatch):
    import onnxcomp.modelfile

    path = _write(tmp_path / "in", BASE_BYTES["mlp"])
    original_write = onnxcomp.modelfile.atomic_write

    def interrupted_write(target, write):
        def half_then_interrupt(handle):
            handle.write(b"partial")
            raise KeyboardInterrupt

        return original_write(target, half_then_interrupt)

    monkeypatch.setattr(onnxcomp.modelfile, "atomic_write", interrupted_write)
    outputs = tmp_path / "out"
    outputs.mkdir()
    code, stderr = _invoke(capsys, ["compress", str(path), "--target-size", "2000", "-o", str(outputs / "o.onnx"),
                                    "-q", "--no-sensitivity"])
    assert code == 130, stderr
    assert list(outputs.iterdir()) == []
    assert path.read_bytes() == BASE_BYTES["mlp"]


def test_keyboard_interrupt_during_compress_leaves_no_output(tmp_path, capsys, monkeypatch):
    import onnxcomp.stages.analyze

    path = _write(tmp_path / "in", BASE_BYTES["mlp"])

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnxcomp.stages.analyze, "canonicalize", interrupt)
    outputs = tmp_path / "out"
    outputs.mkdir()
    code, _ = _invoke(capsys, ["compress", str(path), "--target-size", "2000", "-o", str(outputs / "o.onnx"), "-q"])
    assert code == 130
    assert list(outputs.iterdir()) == []


def test_killed_process_leaves_no_output_file(tmp_path):
    """SIGKILL while the output is being written: the output name never appears (only the
    dot-prefixed temporary file may remain, which is never mistaken for a model)."""
    path = _write(tmp_path / "in", BASE_BYTES["mlp"])
    outputs = tmp_path / "out"
    outputs.mkdir()
    output = outputs / "o.onnx"
    process = subprocess.Popen([sys.executable, "-c", STALLED_WRITE_SCRIPT, "in-process", "compress", str(path), "--target-size", "2000",
                                "-o", str(output), "-q", "--no-sensitivity"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = process.stdout.readline()
        assert line.strip() == "WRITING", process.stderr.read()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == -signal.SIGKILL
    assert not output.exists()
    assert all(p.name.startswith(".") and p.name.endswith(".tmp") for p in outputs.iterdir())
    assert path.read_bytes() == BASE_BYTES["mlp"]


# --- write paths: outputs that alias the inputs or cannot be written are refused before any work --------

def _alias(target: Path, link: Path, how: str) -> Path:
    if how == "symlink":
        os.symlink(target, link)
    elif how == "hardlink":
        os.link(target, link)
    else:
        return target
    return link


WRITE_PATH_KINDS = ["output_is_input", "output_is_external_data", "output_is_folder", "output_in_missing_folder",
                    "output_under_a_file", "report_is_input", "report_is_output", "report_exists", "report_is_external_data",
                    "report_dir_is_file", "report_dir_in_missing_folder", "sweep_under_a_file", "sweep_model_is_input",
                    "mobile_under_a_file", "mobile_file_is_input"]
WRITE_PATH_CASES = [(kind, seed) for kind in WRITE_PATH_KINDS for seed in range(3)]


def write_path_case(kind: str, rng: np.random.Generator, folder: Path, out: Path) -> list[str]:
    """Lay out the input and the outputs for one case; return the command line (all refused)."""
    how = _pick(rng, ["same", "symlink", "hardlink"])
    external = "external" in kind
    model = external_model(folder, rng, "weights.bin", damage=False) if external else _write(folder, BASE_BYTES[_pick(rng, list(BASES))])
    data = folder / "weights.bin"
    compress = ["compress", str(model), "--target-size", "100000", "-q", "--no-sensitivity"]
    afile = out / "afile"
    afile.write_text("not a folder")
    if kind == "output_is_input":
        return compress + ["-o", str(_alias(model, out / "alias.onnx", how)), "--force"]
    if kind == "output_is_external_data":
        return compress + ["-o", str(_alias(data, out / "alias.onnx", how)), "--force"]
    if kind == "output_is_folder":
        return compress + ["-o", str(_pick(rng, [out, folder])), "--force"]
    if kind == "output_in_missing_folder":
        return compress + ["-o", str(out / "missing" / "o.onnx")]
    if kind == "output_under_a_file":
        return compress + ["-o", str(afile / "o.onnx")]
    if kind == "report_is_input":
        return compress + ["-o", str(out / "o.onnx"), "--report", str(_alias(model, out / "alias.json", how)), "--force"]
    if kind == "report_is_output":
        return compress + ["-o", str(out / "o.onnx"), "--report", str(_alias(out / "o.onnx", out / "alias.json", "same"))]
    if kind == "report_exists":
        return compress + ["-o", str(out / "o.onnx"), "--report", str(afile)]
    if kind == "report_is_external_data":
        return compress + ["-o", str(out / "o.onnx"), "--report", str(_alias(data, out / "alias.json", how)), "--force"]
    if kind == "report_dir_is_file":
        return compress + ["-o", str(out / "o.onnx"), "--report-dir", str(afile)]
    if kind == "report_dir_in_missing_folder":
        return compress + ["-o", str(out / "o.onnx"), "--report-dir", str(out / "missing" / "report")]
    if kind == "sweep_under_a_file":
        return ["sweep", str(model), "--targets", "100000", "-o", str(afile / "sub"), "-q", "--jobs", "1"]
    if kind == "sweep_model_is_input":
        (out / "sweep").mkdir()
        os.link(model, out / "sweep" / "model.100000.onnx")
        return ["sweep", str(model), "--targets", "100000", "-o", str(out / "sweep"), "-q", "--jobs", "1", "--force"]
    if kind == "mobile_under_a_file":
        return ["export-mobile", str(model), "-o", str(afile / "mobile")]
    assert kind == "mobile_file_is_input"
    (out / "mobile").mkdir()
    os.link(model, out / "mobile" / _pick(rng, ["model.ort", "required_operators.config"]))
    return ["export-mobile", str(model), "-o", str(out / "mobile"), "--force"]


@pytest.mark.parametrize(("kind", "seed"), WRITE_PATH_CASES, ids=[f"{k}-{s}" for k, s in WRITE_PATH_CASES])
def test_write_paths(kind, seed, tmp_path, capsys, monkeypatch):
    import onnxcomp.pipeline

    if "report_dir" in kind:
        pytest.importorskip("matplotlib")
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    args = write_path_case(kind, _rng(7, seed, WRITE_PATH_KINDS.index(kind)), folder, out)
    before, outputs_before = _snapshot(folder), _snapshot(out)

    def started(*args, **kwargs):
        raise AssertionError("compression started before the outputs were checked")

    monkeypatch.setattr(onnxcomp.pipeline, "compress_model", started)
    code, stderr = _invoke(capsys, args)
    assert code == 2, stderr
    assert "Traceback" not in stderr and stderr.count("onnxcomp: error:") == 1, stderr
    assert _snapshot(folder) == before, "the input folder changed"
    assert _snapshot(out) == outputs_before, "something was written"
    assert not (out / "missing").exists()


# --- resources: a few KB that would ask for unbounded time or memory are refused quickly ---------------

def loop_bomb(proto, rng):
    """A Loop after the graph output, with a huge constant trip count."""
    trips = int(_pick(rng, [10**6, 10**9, 10**15, 2**62]))
    _append_loop(proto, rng, trips=trips)


def loop_forever(proto, rng):
    """A Loop without trip count whose body passes its condition through unchanged."""
    _append_loop(proto, rng, trips=None)


def _append_loop(proto, rng, trips: int | None):
    output = proto.graph.output[0]
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["acc_in"], ["acc_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None)])
    if trips is not None and rng.random() < 0.5:  # the trip count from a Constant node instead of an initializer
        proto.graph.node.append(helper.make_node("Constant", [], ["trips"], value=numpy_helper.from_array(np.array(trips, np.int64))))
    elif trips is not None:
        proto.graph.initializer.append(numpy_helper.from_array(np.array(trips, np.int64), "trips"))
    proto.graph.initializer.append(numpy_helper.from_array(np.array(True), "keep_going"))
    for node in proto.graph.node:
        node.output[:] = [f"{name}_pre" if name == output.name else name for name in node.output]
        node.input[:] = [f"{name}_pre" if name == output.name else name for name in node.input]
    proto.graph.node.append(helper.make_node("Loop", ["trips" if trips is not None else "", "keep_going", f"{output.name}_pre"],
                                             [output.name], body=body))


def deep_nesting(proto, rng):
    """The graph's first node wrapped in If nodes nested 13-30 deep (protobuf's parser stops near 33)."""
    depth = int(rng.integers(13, 31))
    first = proto.graph.node[0]
    inner = helper.make_graph([copy.deepcopy(first)], "level0", [], [helper.make_tensor_value_info(first.output[0], TensorProto.UNDEFINED, None)])
    for level in range(1, depth):  # the else branches stay one node: the file grows linearly with the depth
        name = f"nest{level}"
        leaf = helper.make_graph([helper.make_node("Identity", ["nest_leaf"], [f"{name}_else"])], f"leaf{level}", [],
                                 [helper.make_tensor_value_info(f"{name}_else", TensorProto.UNDEFINED, None)])
        inner = helper.make_graph(
            [helper.make_node("If", ["nest_flag"], [name], then_branch=inner, else_branch=leaf)], f"level{level}", [],
            [helper.make_tensor_value_info(name, TensorProto.UNDEFINED, None)])
    proto.graph.initializer.append(numpy_helper.from_array(np.array(True), "nest_flag"))
    proto.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), "nest_leaf"))
    proto.graph.node.remove(first)
    proto.graph.node.insert(0, helper.make_node("If", ["nest_flag"], [first.output[0]], then_branch=inner, else_branch=inner))


def sparse_bomb(proto, rng):
    """A sparse initializer of one value declaring a dense shape of up to exabytes."""
    dims = [int(_pick(rng, [10**5, 10**6, 10**9]))] * int(rng.integers(2, 4))
    proto.graph.sparse_initializer.append(helper.make_sparse_tensor(
        numpy_helper.from_array(np.ones(1, np.float32), "bomb"),
        numpy_helper.from_array(np.zeros((1, len(dims)) if rng.random() < 0.5 else 1, np.int64), "bomb_index"), dims))


def node_flood(proto, rng):
    """Over the node limit with a chain of Identity nodes (a few MB)."""
    from onnxcomp.model.limits import MAX_NODES

    output = proto.graph.output[0].name
    for node in proto.graph.node:
        node.output[:] = ["flood0" if name == output else name for name in node.output]
    count = MAX_NODES + int(rng.integers(1, 100))
    proto.graph.node.extend(onnx.NodeProto(op_type="Identity", input=[f"flood{i}"], output=[f"flood{i + 1}"]) for i in range(count - 1))
    proto.graph.node.append(onnx.NodeProto(op_type="Identity", input=[f"flood{count - 1}"], output=[output]))


def value_bomb(proto, rng):
    """An extra graph output that constant operands make terabytes: ConstantOfShape, Range, Expand
    of a constant or of the model's input, or Tile (ONNX Runtime folds the constant ones when it
    creates a session, the others run out of memory; 20 GB peak for Expand before the bound)."""
    kind = _pick(rng, ["ConstantOfShape", "Range", "Expand_constant", "Expand_input", "Tile"])
    huge = int(_pick(rng, [10**5, 10**6, 10**9]))
    first = proto.graph.input[0]
    rank = len(first.type.tensor_type.shape.dim)
    constants = {"bomb_shape": np.array([huge] * 2, np.int64), "bomb_one": np.ones(1, np.float32),
                 "bomb_start": np.array(0, np.int64), "bomb_limit": np.array(huge * huge, np.int64),
                 "bomb_delta": np.array(1, np.int64), "bomb_repeats": np.array([huge] * rank, np.int64)}
    if kind == "Expand_input":  # broadcast from the right: [huge, huge, *input dims]
        constants["bomb_shape"] = np.array([huge, huge] + [1] * rank, np.int64)
    proto.graph.initializer.extend(numpy_helper.from_array(array, name) for name, array in constants.items())
    node = {"ConstantOfShape": helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb"]),
            "Range": helper.make_node("Range", ["bomb_start", "bomb_limit", "bomb_delta"], ["bomb"]),
            "Expand_constant": helper.make_node("Expand", ["bomb_one", "bomb_shape"], ["bomb"]),
            "Expand_input": helper.make_node("Expand", [first.name, "bomb_shape"], ["bomb"]),
            "Tile": helper.make_node("Tile", [first.name, "bomb_repeats"], ["bomb"])}[kind]
    proto.graph.node.append(node)
    proto.graph.output.append(helper.make_tensor_value_info("bomb", TensorProto.UNDEFINED, None))


RESOURCE_MUTATIONS = [loop_bomb, loop_forever, deep_nesting, sparse_bomb, node_flood, value_bomb]
RESOURCE_CASES = [(mutation.__name__, base, seed) for mutation in RESOURCE_MUTATIONS
                  for seed in range({node_flood: 1, value_bomb: 8}.get(mutation, 4))
                  for base in [("mlp", "structured", "embedding")[seed % 3]]]


@pytest.mark.parametrize(("mutation", "base", "seed"), RESOURCE_CASES, ids=[f"{m}-{b}-{s}" for m, b, s in RESOURCE_CASES])
def test_resource_mutations(mutation, base, seed, tmp_path, capsys):
    import time

    proto = copy.deepcopy(BASES[base])
    globals()[mutation](proto, _rng(8, seed, [m.__name__ for m in RESOURCE_MUTATIONS].index(mutation)))
    path = _write(tmp_path / "in", proto.SerializeToString())
    started = time.perf_counter()
    code = check_cli(path, capsys, target=len(BASE_BYTES[base]))
    assert code == 2
    assert time.perf_counter() - started < 30


def test_case_count():
    total = (len(BYTE_CASES) + len(GARBAGE) + len(PROTO_CASES) + len(EXTERNAL_CASES) + len(VALID_CASES) + len(WRITE_PATH_CASES)
             + len(RESOURCE_CASES))
    assert total >= 500, total
