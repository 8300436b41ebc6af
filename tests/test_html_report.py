"""The HTML report of `onnxcomp compress --report-dir`: its sections, its embedded plots, its
numbers, and how it looks in a real headless browser."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from onnxcomp.reporting.compression_report import CompressionReport
from onnxcomp.reporting.html_report import channel_scale, entropy_bits, layer_analysis, size_quality_points, write_report
from onnxcomp.reporting.report import StoredWeight
from tests.conftest import LENET5, TEST_DATA

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")
pytest.importorskip("matplotlib", reason="the HTML report needs matplotlib")

CHROMIUM = next((path for path in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if path), None)
SECTIONS = ["summary", "quality", "layers", "distributions", "allocation", "encodings", "entropy"]
PLOT_BLUE = (0x1F, 0x77, 0xB4)  # matplotlib's first colour; the page's CSS never uses it
BYTE_TICK = re.compile(r"^(0|\d+(\.\d+)? (B|KB|MB|GB))$")
WIDTH, HEIGHT = 1400, 1000  # a laptop-sized window: the first viewport


@pytest.fixture(scope="module")
def lenet5_report(tmp_path_factory):
    """LeNet-5 compressed with labelled test samples (for accuracy), sensitivity off for speed."""
    from onnxcomp.cli import main

    folder = tmp_path_factory.mktemp("report")
    output = folder / "lenet5.small.onnx"
    code = main(["compress", str(LENET5), "--target-size", "170KB", "-o", str(output), "--data", str(TEST_DATA),
                 "--epochs", "0", "--no-sensitivity", "--report-dir", str(folder / "html"), "-q"])
    assert code == 0
    return folder / "html", output


class _AxisText(HTMLParser):
    """Text of every <text> element of each figure's matplotlib axes: {(figure id, axis group): [text]}."""

    def __init__(self):
        super().__init__()
        self.stack: list[tuple[str, str]] = []
        self.texts: dict[tuple[str, str], list[str]] = {}

    def handle_starttag(self, tag, attrs):
        self.stack.append((tag, dict(attrs).get("id") or ""))

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop()[0] != tag:
            pass

    def handle_data(self, data):
        if not self.stack or self.stack[-1][0] != "text" or not data.strip():
            return
        figure = next((i for t, i in self.stack if t == "figure"), None)
        axis = next((found.group(1) for _, i in self.stack if (found := re.search(r"matplotlib\.(axis_\d+)$", i))), None)
        if figure and axis:
            self.texts.setdefault((figure, axis), []).append(data.strip())


def axis_texts(page: str) -> dict[tuple[str, str], list[str]]:
    parser = _AxisText()
    parser.feed(page)
    return parser.texts


def test_report_has_sections_and_inline_svg_plots(lenet5_report):
    report_dir, output = lenet5_report
    page = (report_dir / "report.html").read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page, section
    figures = re.findall(r'<figure class="[^"]*" id="fig-([\w-]+)" data-plot="[\w-]+">(?:<figcaption>.*?</figcaption>)?<svg ', page)
    encoded = [layer for layer in json.loads((report_dir / "report.json").read_text())["analysis"]["layers"]
               if layer["encoding"] != "dense"]
    # size/quality first; then bytes by encoding, allocation, entropy and one distribution per encoded layer
    assert figures[:4] == ["size-quality", "encodings", "allocation", "entropy"], figures
    assert len(figures) == len(encoded) + 4
    assert page.index('id="fig-size-quality"') < page.index("<table")
    # self-contained: nothing fetched from anywhere
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<script" not in page and "<link" not in page
    assert "accuracy" in page and "gzip" in page and "entropy bound" in page.lower()


def test_byte_axes_read_in_kb_and_mb(lenet5_report):
    """Every byte axis is labelled in B/KB/MB, never in matplotlib's scientific offset (1e6)."""
    report_dir, _ = lenet5_report
    texts = axis_texts((report_dir / "report.html").read_text())
    byte_axes = [("fig-size-quality", "axis_1"), ("fig-encodings", "axis_1"), ("fig-entropy", "axis_1"),
                 ("fig-entropy", "axis_3")]  # entropy: the whole-file panel's x axis is the second axes' axis_1
    for figure, axis in byte_axes:
        ticks = [text for text in texts.get((figure, axis), []) if text not in ("bytes", "file size")]
        assert len(ticks) >= 3, (figure, axis, ticks)
        assert all(BYTE_TICK.match(tick) for tick in ticks), (figure, axis, ticks)
        assert any(tick.endswith(("KB", "MB")) for tick in ticks), (figure, axis, ticks)
    assert not any(re.search(r"\de[+-]?\d|\u00d710", text) for values in texts.values() for text in values)


def test_size_quality_points_are_measured_on_the_compressors_inputs(lenet5_report):
    report_dir, output = lenet5_report
    report = json.loads((report_dir / "report.json").read_text())
    comparison = report["analysis"]["size_quality"]
    models = comparison["models"]
    assert comparison["samples"] == report["fidelity"]["samples"] == 1000 and not comparison["generated"]
    # the same inputs as the compressor's check: the same numbers for the compressed model
    assert models["compressed"]["bytes"] == output.stat().st_size
    assert models["compressed"]["accuracy"] == pytest.approx(report["accuracy"]["compressed"])
    assert models["original"]["accuracy"] == pytest.approx(report["accuracy"]["original"])
    assert models["compressed"]["top1_agreement"] == pytest.approx(report["fidelity"]["top1_agreement"])
    assert models["original"]["bytes"] == report["input_bytes"]
    # int8: a byte per weight plus float biases and scales, about a quarter of the float file
    assert 0.24 < models["int8"]["bytes"] / report["input_bytes"] < 0.27
    assert models["int8"]["top1_agreement"] > 0.98 and models["int8"]["cosine"] > 0.999


def test_report_json_measures_the_saved_model(lenet5_report):
    report_dir, output = lenet5_report
    report = json.loads((report_dir / "report.json").read_text())
    totals = report["analysis"]["totals"]
    layers = {layer["name"]: layer for layer in report["analysis"]["layers"]}
    assert totals["file_bytes"] == output.stat().st_size == report["output_bytes"]
    assert 0 < totals["gzip_bytes"] < totals["file_bytes"]
    # matched to the original by position although the saved model's names are shortened
    assert {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"} <= set(layers)
    assert layers["fc1.weight"]["stored_name"] != "fc1.weight"
    for layer in layers.values():
        assert layer["params_original"] == layer["params"]
        if layer["encoding"] != "dense":
            # an ideal entropy coder never needs more than the packed codes
            assert 0 < layer["entropy_bound_bytes"] <= layer["stored_bytes"], layer["name"]
            assert layer["distinct"] <= 256 and layer["relative_error"] < 1
    assert totals["file_entropy_bound_bytes"] <= totals["file_bytes"]
    assert sum(totals["bytes_by_encoding"].values()) == totals["file_bytes"]
    assert "accuracy" in report and report["accuracy"]["samples"] == 1000


def test_entropy_bits_counts_the_empirical_distribution():
    assert entropy_bits(np.array([0, 0, 1, 1])) == pytest.approx(4.0)
    assert entropy_bits(np.array([3.0, 3.0, 3.0])) == 0.0
    assert entropy_bits(np.array([0, 1, 2, 3, 0, 1, 2, 3])) == pytest.approx(16.0)


def test_sparse_bound_uses_codes_and_position_gaps():
    values = np.zeros(1000, dtype=np.float32)
    values[::10] = np.tile(np.array([-0.5, 0.5], dtype=np.float32), 50)  # regular gaps: zero position entropy
    weight = StoredWeight("w", "weight", values, "sparse", 500, [], ("MatMul", 0, 1))
    analysis = layer_analysis(weight, None, None)
    # 100 non-zeros, 1 bit each; gaps all 10 except the first (0): ~8 bits; codebook 2 floats
    assert analysis["sparse_entropy_bytes"] == 14
    assert analysis["entropy_bound_bytes"] == 14 + 8
    assert analysis["code_entropy_bytes"] > analysis["sparse_entropy_bytes"]
    assert analysis["sparsity"] == pytest.approx(0.9)


def test_report_dir_without_matplotlib_fails_before_compressing(tmp_path, monkeypatch, capsys):
    from onnxcomp.cli import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    output = tmp_path / "out.onnx"
    code = main(["compress", str(LENET5), "--target-size", "170KB", "-o", str(output), "--no-sensitivity",
                 "--report-dir", str(tmp_path / "html"), "-q"])
    assert code == 2
    assert "needs matplotlib" in capsys.readouterr().err
    assert not output.exists()


MEASURE_SCRIPT = """<script>
addEventListener("load", () => {
  const box = e => { const r = e.getBoundingClientRect(); return {top: r.top, bottom: r.bottom, left: r.left, width: r.width, height: r.height}; };
  const figures = [...document.querySelectorAll("figure")].map(f => ({id: f.id, box: box(f),
    smallest_text: Math.min(...[...f.querySelectorAll("svg text")].map(t => t.getBoundingClientRect().height))}));
  const ticks = [...document.querySelectorAll('#fig-size-quality g[id$="matplotlib.axis_1"] text')]
    .map(t => ({text: t.textContent.trim(), box: box(t)}));
  const out = document.createElement("pre");
  out.id = "measured";
  out.textContent = JSON.stringify({viewport: [innerWidth, innerHeight], figures, ticks});
  document.body.appendChild(out);
});
</script>"""


def _chromium(tmp_path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}", f"--window-size={WIDTH},{HEIGHT}",
                           *arguments], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium; `make setup` tries it as root)")
def test_report_in_headless_chromium_leads_with_size_quality(lenet5_report, tmp_path):
    """At 1400 px the size/quality figure is the page's first figure, wholly in the first
    viewport, wide and with legible KB/MB tick labels; no plot's text is under 12 px; the
    screenshot shows plots and text."""
    from PIL import Image

    report_dir, _ = lenet5_report
    page = (report_dir / "report.html").read_text()
    measured_page = tmp_path / "measure.html"
    measured_page.write_text(page.replace("</body>", MEASURE_SCRIPT + "</body>"))
    dump = _chromium(tmp_path, "--run-all-compositor-stages-before-draw", "--virtual-time-budget=5000", "--dump-dom",
                     measured_page.as_uri())
    found = re.search(r'<pre id="measured">(.*?)</pre>', dump.stdout, re.S)
    assert found, f"chromium laid out no page: {dump.stderr[-500:]}"
    layout = json.loads(html.unescape(found.group(1)))
    view_width, view_height = layout["viewport"]
    assert view_width == WIDTH
    first = layout["figures"][0]
    assert first["id"] == "fig-size-quality", [figure["id"] for figure in layout["figures"]]
    assert 0 <= first["box"]["top"] and first["box"]["bottom"] <= view_height, (first, view_height)
    assert first["box"]["width"] >= 0.5 * WIDTH  # the lead figure, not a thumbnail
    ticks = [tick for tick in layout["ticks"] if tick["text"] != "file size"]
    assert len(ticks) >= 3 and all(BYTE_TICK.match(tick["text"]) for tick in ticks), ticks
    assert any(tick["text"].endswith("MB") for tick in ticks) and any(tick["text"].endswith("KB") for tick in ticks), ticks
    assert all(tick["box"]["height"] >= 12 for tick in ticks), ticks  # ~13 px text, not 7
    small = [(figure["id"], figure["smallest_text"]) for figure in layout["figures"] if not figure["smallest_text"] >= 12]
    assert not small, f"plot text under 12 px: {small}"
    assert all(0 <= tick["box"]["top"] and tick["box"]["bottom"] <= view_height for tick in ticks)

    screenshot = tmp_path / "report.png"
    _chromium(tmp_path, f"--screenshot={screenshot}", (report_dir / "report.html").as_uri())
    assert screenshot.is_file(), "chromium wrote no screenshot"
    pixels = np.asarray(Image.open(screenshot).convert("RGB"))
    assert pixels.shape[:2] == (HEIGHT, WIDTH)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200, "the page rendered nearly flat"
    assert (pixels < 96).all(axis=2).sum() > 2000, "no dark text on the first screen"
    # the plot's blue (this model's point) inside the first figure's box, in the first screen
    box = first["box"]
    region = pixels[int(box["top"]):int(box["bottom"]), int(box["left"]):int(box["left"] + box["width"])].astype(int)
    assert (np.abs(region - PLOT_BLUE) <= 12).all(axis=2).sum() > 100, "no plotted point in the size/quality figure"


def test_report_without_a_runnable_comparison_still_leads_with_sizes(lenet5_report, tmp_path, monkeypatch):
    """Where the three models cannot be run, the figure shows their sizes and says why."""
    from onnxcomp import modelfile
    from onnxcomp.reporting import html_report
    from onnxcomp.errors import OnnxcompError

    def cannot_run(*args, **kwargs):
        raise OnnxcompError("no input ran")

    monkeypatch.setattr(html_report, "compare_with_int8", cannot_run)
    _, output = lenet5_report
    report = json.loads((lenet5_report[0] / "report.json").read_text())
    report.pop("analysis")
    page = html_report.write_report(tmp_path / "html", modelfile.load_model(LENET5), modelfile.load_model(output),
                                    CompressionReport.from_dict(report)).read_text()
    assert page.index('id="fig-size-quality"') < page.index("<table")
    assert "sizes only: the models could not be run (no input ran)" in page
    texts = axis_texts(page)[("fig-size-quality", "axis_1")]
    assert any(text.endswith("MB") for text in texts) and any(text.endswith("KB") for text in texts), texts
    assert json.loads((tmp_path / "html" / "report.json").read_text())["analysis"]["size_quality"] is None


def test_scaled_bound_counts_the_shared_codes_not_the_decoded_values():
    import onnx_ir as ir

    rng = np.random.default_rng(0)
    grid = np.linspace(-1, 1, 15, dtype=np.float32)  # 4-bit symmetric grid, no zero-level skew
    codes = rng.integers(0, grid.size, (64, 128))
    scales = (10.0 ** rng.uniform(-3, 0, (64, 1))).astype(np.float16)
    values = grid[codes] * scales.astype(np.float32)  # 64 x 15 distinct decoded values
    source = ir.Value(name="w_scale", const_value=ir.tensor(scales, name="w_scale"))
    packed = values.size // 2  # 4-bit codes
    weight = StoredWeight("w", "weight", values, "scaled", packed + scales.nbytes, [source], ("MatMul", 0, 1))
    analysis = layer_analysis(weight, None, None)
    # ~log2(15) bits per code: below the packed 4 bits; the scales are counted once
    assert analysis["code_entropy_bytes"] <= packed
    assert analysis["entropy_bound_bytes"] <= weight.stored_bytes + 4 * grid.size
    assert analysis["codebook_bytes"] == 4 * np.count_nonzero(grid) + scales.nbytes


# --- the page's parts on small in-test models -------------------------------------------------


def test_dense_weight_is_bounded_by_its_stored_bytes_and_compared_with_the_original():
    original = np.arange(1, 13, dtype=np.float32).reshape(3, 4)
    compressed = original.copy()
    compressed[0, 0] = 2.0  # one weight off by 1
    stored = StoredWeight("w", "weight", compressed, "dense", 48, [], ("MatMul", 0, 1))
    analysis = layer_analysis(stored, StoredWeight("w", "weight", original, "dense", 48, [], ("MatMul", 0, 1)), None)
    assert (analysis["code_entropy_bytes"], analysis["codebook_bytes"], analysis["entropy_bound_bytes"]) == (None, 0, 48)
    assert analysis["params_original"] == 12 and analysis["stored_bytes"] == 48
    assert analysis["relative_error"] == pytest.approx(1 / np.linalg.norm(original))
    assert layer_analysis(stored, None, None)["relative_error"] is None


def test_vector_bound_is_the_entropy_of_the_runs():
    import onnx_ir as ir

    table = np.array([[0.5, -0.5], [1.0, 1.0], [0.0, 2.0], [3.0, 3.0]], np.float32)  # 4 runs of 2: 2 bits a run
    values = table[np.tile([0, 1], 64)].reshape(16, 16)  # only two runs used, equally often: 1 bit a run
    source = ir.Value(name="book", const_value=ir.tensor(table, name="book"))
    analysis = layer_analysis(StoredWeight("w", "weight", values, "vector", 40, [source], ("MatMul", 0, 1)), None, None)
    assert analysis["bits"] == 1.0  # 2 code bits over runs of 2
    assert analysis["code_entropy_bytes"] == 128 // 8
    assert analysis["codebook_bytes"] == 4 * table.size
    assert analysis["entropy_bound_bytes"] == 16 + 32


def test_channel_scale_is_the_tensor_broadcast_along_one_axis():
    import onnx_ir as ir

    def stored(*arrays):
        sources = [ir.Value(name=f"s{i}", const_value=ir.tensor(a, name=f"s{i}")) for i, a in enumerate(arrays)]
        return StoredWeight("w", "weight", np.ones((4, 6), np.float32), "scaled", 10, sources, ("MatMul", 0, 1))

    scales = np.arange(1, 5, dtype=np.float32).reshape(4, 1)
    found = channel_scale(stored(np.zeros(6, np.float32), np.ones((4, 6), np.float32), scales))
    np.testing.assert_array_equal(found, scales)
    assert channel_scale(stored(np.ones((1, 6), np.float16))).shape == (1, 6)
    assert channel_scale(stored(np.ones((4, 6), np.float32), np.ones((1, 1), np.float32))) is None
    assert channel_scale(stored(np.ones((4, 1), np.int32))) is None


def _small_report(input_bytes: int, output_bytes: int) -> CompressionReport:
    return CompressionReport(input_bytes=input_bytes, output_bytes=output_bytes, target_bytes=output_bytes,
                             ratio=input_bytes / output_bytes, layers=[], fidelity={"samples": 4, "generated_inputs": True,
                                                                                    "cosine": 0.99},
                             attempts=[], verified=True, metadata_bytes=0, seconds={}, input="in.onnx", output="out.onnx")


def test_size_quality_points_are_sizes_only_without_a_comparison():
    report = _small_report(1000, 200)
    points = size_quality_points(report, None)
    assert [(p["label"], p["bytes"], p["measured"], p.get("highlight", False)) for p in points] == [
        ("original (float32)", 1000, False, False), ("this model", 200, False, True)]
    comparison = {"models": {"original": {"bytes": 1000, "cosine": 1.0}, "int8": {"bytes": 260, "cosine": 0.999},
                             "compressed": {"bytes": 200, "cosine": 0.99}}}
    points = size_quality_points(report, comparison)
    assert [(p["label"], p["bytes"], p["cosine"], p["highlight"]) for p in points] == [
        ("original (float32)", 1000, 1.0, False), ("per-channel int8", 260, 0.999, False), ("this model", 200, 0.99, True)]
    assert all(p["measured"] for p in points)


def test_write_report_of_a_small_model(tmp_path, rng):
    import onnx
    import onnx_ir as ir

    from onnxcomp.passes.insert_dequantize_lookup import InsertDequantizeLookupPass
    from tests.conftest import single_matmul, to_proto
    from tests.pass_helpers import prune_and_cluster

    weight = rng.standard_normal((64, 64)).astype(np.float32)
    original = single_matmul(weight)
    compressed = prune_and_cluster(single_matmul(weight), None, 3)
    InsertDequantizeLookupPass()(compressed)
    data = to_proto(compressed).SerializeToString()
    report = _small_report(len(to_proto(original).SerializeToString()), len(data))
    page = write_report(tmp_path / "html", original, compressed, report, data).read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page, section
    assert "Generated inputs." in page and "onnxcomp report <span>in.onnx</span>" in page
    saved = json.loads((tmp_path / "html" / "report.json").read_text())
    (row,) = saved["analysis"]["layers"]
    assert (row["encoding"], row["bits"], row["distinct"], row["params_original"]) == ("lookup", 3, 8, 4096)
    decoded = _decoded(ir.serde.deserialize_model(onnx.load_from_string(data)))
    assert row["relative_error"] == pytest.approx(np.linalg.norm(decoded - weight) / np.linalg.norm(weight), rel=1e-5)
    totals = saved["analysis"]["totals"]
    assert totals["file_bytes"] == len(data) and sum(totals["bytes_by_encoding"].values()) == len(data)
    assert saved["analysis"]["size_quality"]["models"]["compressed"]["bytes"] == len(data)


def _decoded(model) -> np.ndarray:
    from onnxcomp.reporting.report import inspect_weights

    (weight,) = inspect_weights(model)
    return weight.array
