"""ONNX Runtime mobile export: the .ort loads, matches the .onnx, and lists its operators."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import onnx
import pytest

from onnxcomp import modelfile
from onnxcomp.planning import pricing
from onnxcomp.pipeline import CompressOptions, compress_model
from onnxcomp.runtime import mobile_ops
from onnxcomp.runtime.mobile import (BUILD_ADVICE, NO_PACKAGE_CHECK, PACKAGE_NAME, check_ops, export_mobile, onnx_ops, ort_ready_model,
                                     package_config_path, package_operators, read_operators_config, sparse_form_bytes)
from tests.conftest import LENET5, REPO, build_model, single_matmul

onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

# One pre-norm transformer block: single-head attention, then a ReLU MLP, residuals, LayerNorm.
TRANSFORMER_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
block (float[N, 16, 64] x) => (float[N, 16, 64] y) {
  n1 = LayerNormalization <axis = -1> (x, g1, b1)
  q = MatMul(n1, wq)
  k = MatMul(n1, wk)
  v = MatMul(n1, wv)
  kt = Transpose <perm = [0, 2, 1]> (k)
  s = MatMul(q, kt)
  sc = Mul(s, scale)
  a = Softmax <axis = -1> (sc)
  c = MatMul(a, v)
  o = MatMul(c, wo)
  h = Add(x, o)
  n2 = LayerNormalization <axis = -1> (h, g2, b2)
  f = MatMul(n2, w1)
  fb = Add(f, bf)
  r = Relu(fb)
  m = MatMul(r, w2)
  y = Add(h, m)
}
"""

# Compressed model bytes are compared to their source; outputs of .ort vs .onnx are the same
# dense weights (folded at conversion vs at load), so only float rounding may differ.
ATOL = 1e-4
RTOL = 1e-4


def transformer_model(rng):
    d, ff = 64, 256
    arrays = {
        "g1": np.ones(d), "b1": np.zeros(d), "g2": np.ones(d), "b2": np.zeros(d),
        "wq": rng.standard_normal((d, d)) / 8, "wk": rng.standard_normal((d, d)) / 8,
        "wv": rng.standard_normal((d, d)) / 8, "wo": rng.standard_normal((d, d)) / 8,
        "scale": np.array(0.125), "w1": rng.standard_normal((d, ff)) / 8, "bf": rng.standard_normal(ff) / 10,
        "w2": rng.standard_normal((ff, d)) / 16,
    }
    return build_model(TRANSFORMER_TEXT, {name: np.asarray(a, dtype=np.float32) for name, a in arrays.items()})


def compressed(model, path, ratio: int) -> bytes:
    """Compress data-free to 1/ratio of the dense size and write it to `path`."""
    dense = len(modelfile.serialized_bytes(model))
    result = compress_model(model, CompressOptions(target_bytes=dense // ratio, sensitivity=False))
    path.write_bytes(result.data)
    return result.data


@pytest.fixture(scope="module")
def lenet5_compressed(tmp_path_factory):
    path = tmp_path_factory.mktemp("lenet5") / "lenet5.onnx"
    # These tests export a pruned (sparse) layer; without vector codebooks, which store the
    # 500x800 layer unpruned at 1/10, the plan prunes it.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pricing, "VECTOR_SHAPES", ())
        compressed(modelfile.load_model(LENET5), path, 10)
    return path


def run_file(path, feeds, optimize=True):
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if not optimize:  # as a minimal build loads an .ort: no graph optimizers at all
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def assert_same_outputs(onnx_path, ort_path, feeds, optimize=True):
    expected, actual = run_file(onnx_path, feeds), run_file(ort_path, feeds, optimize)
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual):
        np.testing.assert_allclose(a, e, atol=ATOL, rtol=RTOL)


def config_ops(path) -> set[str]:
    return {op for by_opset in read_operators_config(path).values() for ops in by_opset.values() for op in ops}


def test_lenet5_ort_matches_onnx(lenet5_compressed, tmp_path):
    before = hashlib.sha256(lenet5_compressed.read_bytes()).hexdigest()
    result = export_mobile(lenet5_compressed, tmp_path / "mobile", measure_speed=False)

    assert hashlib.sha256(lenet5_compressed.read_bytes()).hexdigest() == before  # input only read
    assert result.ort_path == tmp_path / "mobile" / "lenet5.ort" and result.ort_path.is_file()
    assert result.onnx_path.read_bytes() == lenet5_compressed.read_bytes()
    assert result.onnx_bytes == lenet5_compressed.stat().st_size
    assert result.ort_bytes == result.ort_path.stat().st_size
    # The .ort carries decoded float weights again: the 60%-sparse 500x800 layer as a sparse
    # initializer (smaller than the converter's dense fold), the others dense.
    assert result.ort_bytes > 5 * result.onnx_bytes
    assert result.ort_weights == "sparse" and result.ort_bytes < 0.9 * result.dense_ort_bytes
    assert [row["shape"] for row in result.weights if row["form"] == "sparse"] == [[500, 800]]
    assert sorted(p.name for p in (tmp_path / "mobile").iterdir()) == ["lenet5.onnx", "lenet5.ort", "required_operators.config"]

    images = np.load(REPO / "models" / "data" / "mnist_test_1k.npz")["input"][:32]
    assert_same_outputs(lenet5_compressed, result.ort_path, {"input": images})
    assert result.max_abs_diff is not None and result.max_abs_diff < ATOL

    ops = config_ops(result.config_path)
    assert {"Conv", "MaxPool"} <= ops
    assert not ops & {"BitShift", "Gather", "GatherElements", "ScatterElements", "CumSum"}  # decode ops are folded away
    assert result.required_ops == read_operators_config(result.config_path)
    assert str(result.ort_path) in result.config_path.read_text()  # header names the final file, not a staging one


def test_lenet5_packed_ort_keeps_decode_graphs(lenet5_compressed, tmp_path):
    """--ort-weights packed: the .ort is saved unoptimized, so the decode subgraphs stay in it: about
    the .onnx's size, far smaller than the dense and sparse .ort, same outputs as the .onnx."""
    packed = export_mobile(lenet5_compressed, tmp_path / "packed", ort_weights="packed")
    dense = export_mobile(lenet5_compressed, tmp_path / "dense", measure_speed=False, ort_weights="dense")
    sparse = export_mobile(lenet5_compressed, tmp_path / "sparse", measure_speed=False, ort_weights="sparse")

    assert packed.ort_weights == "packed" and packed.ort_bytes == packed.ort_path.stat().st_size
    assert packed.ort_bytes < 1.3 * packed.onnx_bytes
    assert 4 * packed.ort_bytes < sparse.ort_bytes < dense.ort_bytes
    assert packed.dense_ort_bytes is None and packed.weights == []

    images = np.load(REPO / "models" / "data" / "mnist_test_1k.npz")["input"][:32]
    assert_same_outputs(lenet5_compressed, packed.ort_path, {"input": images})
    assert_same_outputs(lenet5_compressed, packed.ort_path, {"input": images}, optimize=False)
    assert packed.max_abs_diff is not None and packed.max_abs_diff < ATOL
    # The decode ops are in the .ort, so a minimal build must include them.
    decode_ops = {node.op_type for node in onnx.load(str(lenet5_compressed)).graph.node} - {"Conv", "MaxPool", "Relu", "Gemm", "MatMul", "Add", "Flatten", "Reshape", "Softmax"}
    assert decode_ops and decode_ops <= config_ops(packed.config_path)
    assert not decode_ops & config_ops(dense.config_path)
    assert packed.onnx_timing.load_s > 0 and packed.ort_timing.run_s > 0


def test_transformer_ort_matches_onnx(tmp_path, rng):
    model = transformer_model(rng)
    path = tmp_path / "block.onnx"
    compressed(model, path, 6)
    result = export_mobile(path, tmp_path / "out")
    feeds = {"x": rng.standard_normal((3, 16, 64)).astype(np.float32)}
    assert_same_outputs(path, result.ort_path, feeds)
    assert {"MatMul", "Softmax"} <= config_ops(result.config_path) | {"FusedMatMul"}
    assert result.onnx_timing.load_s > 0 and result.ort_timing.run_s > 0


# A reduced-build operator config in ONNX Runtime's format, shaped like the one the pre-built mobile
# package was built with (onnxruntime 1.19 ships that one; 1.32 ships none): opsets 12-15, no
# BitShift or ScatterElements, and a contrib op listed under ai.onnx opset 1 (not a package opset).
PACKAGE_CONFIG = """# test package
!globally_allowed_types;float,int8_t,uint8_t
ai.onnx;12,13,14,15;Add,Cast,Conv,Flatten,Gather,Gemm,MatMul,MaxPool,Mul,Relu,Reshape,Shape,Sub
ai.onnx;1;LayerNormalization
"""


@pytest.fixture
def package(tmp_path):
    path = tmp_path / "package.config"
    path.write_text(PACKAGE_CONFIG)
    return read_operators_config(path)


def test_package_check_names_decode_ops(lenet5_compressed, package):
    proto = onnx.load(str(lenet5_compressed))
    check = check_ops(onnx_ops(proto), 17, package)
    assert check.package_opsets == [12, 13, 14, 15] and not check.opset_supported
    # The package has no BitShift kernel; Conv (version 11, registered from opset 12 on) it has.
    assert "ai.onnx:11:BitShift" in check.unsupported
    assert not any(entry.endswith(":Conv") or entry.endswith(":Gemm") for entry in check.unsupported)


def test_package_check_passes_plain_ops(package):
    check = check_ops({"ai.onnx": {13: {"Conv", "Relu", "Gemm", "MaxPool"}}}, 13, package)
    assert check.ok and check.unsupported == []
    assert not check_ops({"ai.onnx": {13: {"BitShift"}}}, 13, package).ok


def test_package_list_is_read_where_onnxruntime_ships_it():
    """onnxruntime 1.19 ships the pre-built mobile package's operator list (with its checker); 1.32
    removed both. Where it is shipped it is read (the package was built for opsets 12-15);
    where not, there is no list and no error."""
    import importlib.util

    try:
        shipped = importlib.util.find_spec(mobile_ops.PACKAGE_CHECKER) is not None
    except ModuleNotFoundError:
        shipped = False
    if shipped:
        assert package_config_path().is_file()
        operators = package_operators()
        assert sorted(o for o in operators["ai.onnx"] if o != 1) == [12, 13, 14, 15]
        assert "Conv" in operators["ai.onnx"][12] and "BitShift" not in {op for ops in operators["ai.onnx"].values() for op in ops}
    else:
        assert package_config_path() is None and package_operators() is None


def test_export_without_a_package_list(lenet5_compressed, tmp_path, monkeypatch):
    """An onnxruntime that ships no mobile package operator list (1.32) still exports; the check is left out."""
    monkeypatch.setattr(mobile_ops, "package_config_path", lambda: None)
    result = export_mobile(lenet5_compressed, tmp_path / "mobile", measure_speed=False)
    assert result.onnx_check is None and result.ort_check is None
    assert result.ort_path.is_file() and result.config_path.is_file()
    assert result.as_dict()["onnx_check"] is None


def test_refuses_to_overwrite(lenet5_compressed, tmp_path):
    from onnxcomp.errors import OnnxcompError

    export_mobile(lenet5_compressed, tmp_path, measure_speed=False)
    stamp = (tmp_path / "lenet5.ort").stat().st_mtime_ns
    with pytest.raises(OnnxcompError, match="--force"):
        export_mobile(lenet5_compressed, tmp_path, measure_speed=False)
    assert (tmp_path / "lenet5.ort").stat().st_mtime_ns == stamp
    export_mobile(lenet5_compressed, tmp_path, overwrite=True, measure_speed=False)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def onnxcomp(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxcomp.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, timeout=300)


def test_cli_export_mobile(lenet5_compressed, tmp_path):
    result = onnxcomp("export-mobile", lenet5_compressed, "-o", tmp_path / "m")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    onnx_line = next(line for line in lines if line.startswith(".onnx"))
    ort_line = next(line for line in lines if line.startswith(".ort"))
    assert f"{lenet5_compressed.stat().st_size:,}" in onnx_line
    assert ort_line.startswith(".ort (sparse)") and f"{(tmp_path / 'm' / 'lenet5.ort').stat().st_size:,}" in ort_line
    assert BUILD_ADVICE in result.stdout  # which file suits which build, every time
    if package_config_path() is not None:
        # The op findings name the one package they concern and say the current packages run every op.
        header = lines.index(next(line for line in lines if line.startswith(f"operator check against {PACKAGE_NAME} only")))
        assert "1.18" in lines[header] and "full builds that run every operator" in lines[header]
        assert any("BitShift" in line and line.startswith("  the .onnx: ops not in that package") for line in lines[header + 1:])
    else:
        assert NO_PACKAGE_CHECK.format(version=onnxruntime.__version__) in lines
    assert (tmp_path / "m" / "required_operators.config").is_file()


def test_cli_export_mobile_packed(lenet5_compressed, tmp_path):
    result = onnxcomp("export-mobile", lenet5_compressed, "-o", tmp_path / "m", "--ort-weights", "packed")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    ort_line = next(line for line in lines if line.startswith(".ort"))
    assert ort_line.startswith(".ort (packed)") and f"{(tmp_path / 'm' / 'lenet5.ort').stat().st_size:,}" in ort_line
    assert any(line.startswith("the .ort keeps the decode subgraphs:") for line in lines)
    assert BUILD_ADVICE in result.stdout
    refused = onnxcomp("export-mobile", lenet5_compressed, "-o", tmp_path / "n", "--ort-weights", "folded")
    assert refused.returncode == 2 and "invalid choice" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize("kind", ["missing", "not_onnx"])
def test_cli_bad_input(kind, tmp_path):
    path = tmp_path / "model.onnx"
    if kind == "not_onnx":
        path.write_text("this is not a protobuf\n" * 10)
    result = onnxcomp("export-mobile", path, "-o", tmp_path / "out")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("onnxcomp: error:") and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def pruned_matmul(rng, sparsity=0.9, shape=(256, 128)):
    weight = rng.standard_normal(shape).astype(np.float32)
    weight[rng.random(shape) < sparsity] = 0
    return single_matmul(weight)


def test_sparse_form_bytes_follow_ort_index_widths():
    flat = np.zeros(100_000, np.float32)
    flat[[0, 127]] = 1
    assert sparse_form_bytes(flat) == 2 * (4 + 1)  # largest index fits int8
    flat[32_767] = 1
    assert sparse_form_bytes(flat) == 3 * (4 + 2)  # int16
    flat[99_999] = -0.0  # ONNX Runtime keeps -0.0 (it tests the bits)
    assert sparse_form_bytes(flat) == 4 * (4 + 4)  # int32
    assert sparse_form_bytes(np.zeros(10, np.float32)) == 0


def test_pruned_compressed_model_gives_small_sparse_ort(tmp_path, rng):
    """A pruned layer's decode subgraph becomes a sparse initializer: the .ort is far smaller than
    the converter's dense fold, outputs match the .onnx, and no decode op is left."""
    model = pruned_matmul(rng)
    path = tmp_path / "pruned.onnx"
    compressed(model, path, 8)
    assert "ScatterElements" in {node.op_type for node in onnx.load(str(path)).graph.node}
    result = export_mobile(path, tmp_path / "out", measure_speed=False)

    assert result.ort_weights == "sparse"
    assert result.ort_bytes < result.dense_ort_bytes / 3  # 10% of 256x128 kept: ~6 bytes each vs 4 per entry
    assert [row["form"] for row in result.weights] == ["sparse"]
    feeds = {"x": rng.standard_normal((5, 256)).astype(np.float32)}
    assert_same_outputs(path, result.ort_path, feeds)
    assert result.max_abs_diff < ATOL
    assert config_ops(result.config_path) == {"MatMul"}

    # The old behaviour stays available: the converter's dense fold.
    dense = export_mobile(path, tmp_path / "dense", measure_speed=False, ort_weights="dense")
    assert dense.ort_weights == "dense" and dense.ort_bytes == result.dense_ort_bytes > 4 * 256 * 128
    assert_same_outputs(path, dense.ort_path, feeds)


def test_sparse_dense_initializer_and_dense_kept(tmp_path, rng):
    """Plain float initializers are sparsified too when that is smaller; a dense weight stays dense."""
    path = tmp_path / "plain.onnx"
    path.write_bytes(modelfile.serialized_bytes(pruned_matmul(rng, sparsity=0.8)))
    proto, rows = ort_ready_model(path)
    assert [row["form"] for row in rows] == ["sparse"] and not proto.graph.initializer
    assert len(proto.graph.sparse_initializer) == 1
    feeds = {"x": rng.standard_normal((2, 256)).astype(np.float32)}
    expected = run_file(path, feeds)[0]
    np.testing.assert_allclose(onnxruntime.InferenceSession(proto.SerializeToString()).run(None, feeds)[0], expected,
                               atol=ATOL, rtol=RTOL)

    dense_path = tmp_path / "dense.onnx"
    dense_path.write_bytes(modelfile.serialized_bytes(pruned_matmul(rng, sparsity=0.2)))
    result = export_mobile(dense_path, tmp_path / "out", measure_speed=False)
    assert result.ort_weights == "dense" and [row["form"] for row in result.weights] == ["dense"]
    assert result.ort_bytes == result.dense_ort_bytes
