"""The HTML report of `onnxcomp compress --report-dir`: its sections, its embedded plots, its
numbers, and how it looks in a real headless browser."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from onnxcomp.html_report import entropy_bits, layer_analysis
from onnxcomp.report import StoredWeight
from tests.conftest import LENET5, TEST_DATA

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")
pytest.importorskip("matplotlib", reason="the HTML report needs matplotlib")

CHROMIUM = "/usr/bin/chromium"
SECTIONS = ["summary", "quality", "layers", "distributions", "allocation", "encodings", "entropy"]
PLOT_BLUE = (0x1F, 0x77, 0xB4)  # matplotlib's first colour; the page's CSS never uses it
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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


def test_report_has_sections_and_embedded_plots(lenet5_report):
    report_dir, output = lenet5_report
    page = (report_dir / "report.html").read_text()
    for section in SECTIONS:
        assert f'<section id="{section}">' in page, section
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    encoded = [layer for layer in json.loads((report_dir / "report.json").read_text())["analysis"]["layers"]
               if layer["encoding"] != "dense"]
    # one distribution plot per encoded layer + allocation + encodings + entropy
    assert len(images) == len(encoded) + 3
    assert all(base64.b64decode(image).startswith(PNG_MAGIC) for image in images)
    # self-contained: nothing fetched from anywhere
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<script" not in page and "<link" not in page
    assert "accuracy" in page and "gzip" in page and "entropy bound" in page.lower()


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


@pytest.mark.skipif(shutil.which(CHROMIUM) is None,
                    reason=f"{CHROMIUM} not installed (apt-get install chromium; `make setup` tries it)")
def test_report_renders_in_headless_chromium(lenet5_report, tmp_path):
    from PIL import Image

    report_dir, _ = lenet5_report
    screenshot = tmp_path / "report.png"
    width, height = 1300, 3200
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={screenshot}",
                    f"--window-size={width},{height}", (report_dir / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=False)
    assert screenshot.is_file(), "chromium wrote no screenshot"
    pixels = np.asarray(Image.open(screenshot).convert("RGB"))
    assert pixels.shape[:2] == (height, width)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 500, "the page rendered nearly flat (no plots?)"
    # The plots' blue must show up in several separate vertical bands of the page: distributions,
    # per-layer bars, bytes by encoding, entropy bound.
    blue = np.all(np.abs(pixels.astype(int) - PLOT_BLUE) <= 12, axis=2)
    band_rows = height // 16
    bands_with_plots = [band for band in range(16) if blue[band * band_rows:(band + 1) * band_rows].sum() > 300]
    assert len(bands_with_plots) >= 4, bands_with_plots
    # text and tables above the first plot: not all white
    assert (pixels[:400] < 128).any()
