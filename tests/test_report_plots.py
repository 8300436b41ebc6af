"""report_plots (onnxcomp.reporting.report_plots): each figure of the HTML report as inline SVG
with its text as text, ids prefixed per figure, byte axes in B/KB/MB, and what each figure
writes for the data it is given."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the report's figures need matplotlib")

from onnxcomp.reporting.html_report import require_matplotlib  # noqa: E402
from onnxcomp.reporting.report_plots import (allocation_plot, bytes_axis, distribution_plot, encoding_plot,  # noqa: E402
                                             entropy_plot, quality_measure, size_quality_plot, svg)

BYTE_TICK = re.compile(r"^(0|\d+(\.\d+)? (B|KB|MB|GB))$")


@pytest.fixture
def plt():
    return require_matplotlib()


def texts(page: str) -> list[str]:
    """The text of every <text> element (matplotlib writes text as text: svg.fonttype none)."""
    return [html.unescape(t).strip() for t in re.findall(r"<text[^>]*>(.*?)</text>", page, re.DOTALL)]


def layer(name: str, encoding: str, bits: float, params: int = 100, sparsity: float = 0.0, original=None) -> dict:
    return {"name": name, "encoding": encoding, "bits": bits, "params": params,
            "params_original": params if original is None else original, "sparsity": sparsity,
            "stored_bytes": params * bits // 8, "entropy_bound_bytes": params * bits // 10}


def test_svg_is_an_inline_element_with_ids_prefixed(plt):
    figure, axis = plt.subplots()
    axis.plot([0, 1], [0, 1])
    assert figure.number in plt.get_fignums()
    page = svg(plt, figure, "demo")
    assert page.startswith("<svg") and "<?xml" not in page
    ids = re.findall(r'id="([^"]+)"', page)
    assert ids and all(i.startswith("demo-") for i in ids)
    assert all(ref.startswith("demo-") for ref in re.findall(r'(?:href="#|url\(#)([^")]+)', page))
    assert figure.number not in plt.get_fignums()  # the figure was closed (others' figures may be open)


def test_bytes_axis_reads_in_kb_and_mb(plt):
    for scale in ("linear", "log"):
        figure, axis = plt.subplots()
        axis.set_xscale(scale)
        axis.set_xlim(1_000, 3_000_000)
        bytes_axis(axis, "x")
        figure.canvas.draw()
        labels = [tick.get_text() for tick in axis.get_xticklabels() if tick.get_text()]
        assert len(labels) >= 3 and all(BYTE_TICK.match(label) for label in labels), labels
        assert any(label.endswith("MB") for label in labels)
        plt.close(figure)


def test_quality_measure_is_the_one_every_measured_point_has():
    accuracy = [{"measured": True, "accuracy": 0.9, "top1_agreement": 1.0}, {"measured": False}]
    assert quality_measure(accuracy) == ("accuracy", "accuracy (%)")
    agreement = [{"measured": True, "accuracy": None, "top1_agreement": 0.9, "cosine": 0.99},
                 {"measured": True, "top1_agreement": 0.8, "cosine": 0.98}]
    assert quality_measure(agreement) == ("top1_agreement", "top-1 agreement with the original (%)")
    assert quality_measure([{"measured": True, "cosine": 0.9}]) == ("cosine", "cosine similarity of outputs")
    assert quality_measure([{"measured": True}]) == ("", "")


def test_size_quality_labels_each_point_and_the_target(plt):
    points = [{"label": "original (float32)", "bytes": 1_000_000, "measured": True, "accuracy": 0.9812, "color": "#777"},
              {"label": "this model", "bytes": 125_000, "measured": True, "accuracy": 0.9755, "color": "#17b",
               "highlight": True}]
    found = texts(size_quality_plot(plt, points, 125_000, floor=0.97))
    assert {"original (float32)", "1 MB, 98.12%", "this model", "125 KB, 97.55%"} <= set(found)
    assert {"target 125 KB", "quality floor", "accuracy (%)", "file size", "100 KB", "1 MB"} <= set(found)
    # the percent axis stops at the highest point (plus the markers' room), never past 100
    assert max(float(t) for t in found if re.fullmatch(r"\d+\.\d", t)) <= 98.12 + 0.12 * (98.12 - 97.0) + 1e-6
    unmeasured = [dict(point, measured=False) for point in points]
    found = texts(size_quality_plot(plt, unmeasured, 0))
    assert sum("quality not measured" in text for text in found) == 2
    assert not any(text.startswith("target") for text in found)


def test_distribution_plot_has_a_scatter_only_for_same_shaped_weights(plt, rng):
    original = rng.standard_normal((20, 30)).astype(np.float32)
    compressed = np.round(original * 2) / 2
    both = distribution_plot(plt, "w", original, compressed, "dist-0")
    assert {"count", "original weight", "compressed weight"} <= set(texts(both))
    assert 'id="dist-0-' in both
    alone = distribution_plot(plt, "w", None, compressed, "dist-1")
    assert "count" in texts(alone) and "original weight" not in texts(alone)


def test_allocation_plot_shows_panels_only_for_what_changed(plt):
    encoded = [layer("fc1.weight", "lookup", 4), layer("fc2.weight", "dense", 32)]
    found = texts(allocation_plot(plt, encoded))
    assert "bits per weight" in found and "32-bit float" in found and "4" in found
    assert "sparsity (% zeros)" not in found and "parameters kept (%)" not in found
    pruned = [layer("fc1.weight", "sparse", 3, sparsity=0.9), layer("fc2.weight", "lookup", 2, params=50, original=100)]
    found = texts(allocation_plot(plt, pruned))
    assert {"bits per weight", "sparsity (% zeros)", "parameters kept (%)", "90", "50"} <= set(found)
    long_name = "encoder.layer.11.attention.output.dense.weight"
    assert "..." + long_name[-25:] in texts(allocation_plot(plt, [layer(long_name, "lookup", 4)]))


def test_encoding_plot_stacks_bytes_by_encoding(plt):
    totals = {"original_bytes_by_encoding": {"dense": 400_000, "graph and other": 2_000},
              "bytes_by_encoding": {"lookup": 40_000, "sparse": 10_000, "graph and other": 3_000}}
    found = texts(encoding_plot(plt, totals))
    assert {"original", "compressed", "402 KB", "53 KB", "dense", "lookup", "sparse", "graph and other"} <= set(found)


def test_entropy_plot_lists_encoded_layers_and_file_totals(plt):
    layers = [layer("fc1.weight", "lookup", 4, params=8000), layer("fc2.weight", "dense", 32)]
    totals = {"file_bytes": 6_000, "gzip_bytes": 5_000, "file_entropy_bound_bytes": 4_500}
    found = texts(entropy_plot(plt, layers, totals, 40_000))
    assert {"fc1.weight", "stored", "entropy bound", "original file", "compressed file", "gzip(compressed)",
            "40 KB", "6 KB", "5 KB", "4.5 KB"} <= set(found)
    assert "fc2.weight" not in found  # dense layers have no bound to compare
