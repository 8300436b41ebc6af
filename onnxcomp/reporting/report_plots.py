"""The HTML report's figures, drawn with matplotlib as inline SVG.

Text stays text (`svg.fonttype: none`): tick labels are as sharp as the page's own text, a
browser's find reaches them, and a test can read them from the DOM. Figures are sized in
points for a page about 1300 px wide (1 pt = 4/3 CSS px), with 10 pt (13 px) tick labels.
Byte axes read in B/KB/MB (`format_size`), never in matplotlib's scientific offset ("1e6").
Dense point clouds (the weight scatter) are rasterized inside the SVG to keep the page small.
"""

from __future__ import annotations

import io
import logging
import re

import numpy as np

from onnxcomp.sizes import format_size

logger = logging.getLogger(__name__)

SCATTER_POINTS = 20_000
ORIGINAL_COLOR, COMPRESSED_COLOR, BOUND_COLOR, INT8_COLOR = "#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c"
ENCODING_COLORS = {"dense": "#7f7f7f", "lookup": "#1f77b4", "linear": "#2ca02c", "sparse": "#ff7f0e",
                   "grouped": "#8c564b", "vector": "#e377c2", "decoded": "#9467bd", "scaled": "#17becf",
                   "graph and other": "#d9d9d9"}
STYLE = {
    "svg.fonttype": "none", "font.family": "DejaVu Sans", "font.size": 10, "axes.titlesize": 11,
    "axes.labelsize": 10, "xtick.labelsize": 10, "ytick.labelsize": 10, "legend.fontsize": 10,
    "legend.frameon": False, "axes.spines.top": False, "axes.spines.right": False, "axes.axisbelow": True,
    "axes.grid": False, "grid.color": "#e6e6e6", "grid.linewidth": 0.8, "savefig.dpi": 150,
    "svg.hashsalt": "onnxcomp",  # the same ids for the same figure: reports differ only where the models do
}


def svg(plt, figure, plot_id: str) -> str:
    """The figure as an inline <svg> element (no XML prolog), closed afterwards; the ids inside
    it are prefixed with `plot_id` so that several figures share a page."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", pad_inches=0.05, metadata={"Date": None})
    plt.close(figure)
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    # matplotlib writes width="...pt" height="...pt": keep them (the size the fonts were laid out
    # for) and let CSS shrink the figure on narrow pages.
    text = re.sub(r'id="([^"]+)"', lambda m: f'id="{plot_id}-{m.group(1)}"', text)
    text = re.sub(r'(href="#|url\(#)([^")]+)', lambda m: f"{m.group(1)}{plot_id}-{m.group(2)}", text)
    return text


def bytes_axis(axis, which: str = "x") -> None:
    """Tick labels in B/KB/MB on a byte axis (linear or log)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    target = axis.xaxis if which == "x" else axis.yaxis
    scale = axis.get_xscale() if which == "x" else axis.get_yscale()
    if scale == "log":
        target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
        target.set_minor_formatter(NullFormatter())
    else:
        target.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10], min_n_ticks=3))
    target.set_major_formatter(FuncFormatter(lambda value, _: format_size(value) if value > 0 else "0"))


def quality_measure(points: list[dict]) -> tuple[str, str]:
    """(key, axis label) of the measure every point has: accuracy, else top-1 agreement, else cosine."""
    for key, label in (("accuracy", "accuracy (%)"), ("top1_agreement", "top-1 agreement with the original (%)"),
                       ("cosine", "cosine similarity of outputs")):
        if all(point.get(key) is not None for point in points if point.get("measured")):
            return key, label
    return "", ""


def size_quality_plot(plt, points: list[dict], target_bytes: int, floor: float | None = None) -> str:
    """File size (log, KB/MB) against quality: the original, per-channel int8 and this model.

    `points`: dicts with label, bytes, measured (bool) and the measures (fractions); a point
    whose quality was not measured is drawn as a vertical line at its size."""
    key, label = quality_measure(points)
    percent = key in ("accuracy", "top1_agreement")
    scale = 100.0 if percent else 1.0
    with plt.rc_context(STYLE):
        figure, axis = plt.subplots(figsize=(8.6, 4.6))
        axis.set_xscale("log")
        sizes = [point["bytes"] for point in points] + ([target_bytes] if target_bytes else [])
        axis.set_xlim(min(sizes) / 1.8, max(sizes) * 1.8)
        measured = [point for point in points if point.get("measured") and key]
        values = [scale * point[key] for point in measured]
        if values:
            top, bottom = max(values), min(values + ([scale * floor] if floor is not None else []))
            span = max(top - bottom, 1.0 if percent else 0.01)
            # room below for the labels; above, only the markers' (no tick past 100%, cosine 1)
            ceiling = 100.0 if percent else 1.0
            axis.set_ylim(bottom - 1.1 * span, top + 0.12 * span)
            limit = min(ceiling, top + 0.12 * span) + 1e-9 * span
            axis.set_yticks([tick for tick in axis.get_yticks() if bottom - 1.1 * span <= tick <= limit])
            axis.set_ylabel(label)
            axis.grid(True, which="major")
        else:
            axis.set_yticks([])
        if target_bytes:
            axis.axvline(target_bytes, color="#999999", linestyle="--", linewidth=1, zorder=1)
            axis.annotate(f"target {format_size(target_bytes)}", (target_bytes, 1), xycoords=("data", "axes fraction"),
                          xytext=(4, -4), textcoords="offset points", ha="left", va="top", color="#666666")
        if floor is not None and values:
            axis.axhline(scale * floor, color=BOUND_COLOR, linestyle=":", linewidth=1.2, zorder=1)
            axis.annotate("quality floor", (0, scale * floor), xycoords=("axes fraction", "data"), xytext=(4, 3),
                          textcoords="offset points", color=BOUND_COLOR, va="bottom")
        for point in points:
            # labels centred under their points, pushed apart where two sizes lie close on the axis
            neighbours = [other["bytes"] for other in points if other is not point and
                          max(other["bytes"], point["bytes"]) < 1.8 * min(other["bytes"], point["bytes"])]
            align, offset = ("center", 0) if not neighbours else \
                (("right", -8) if point["bytes"] <= min(neighbours) else ("left", 8))
            color, size = point["color"], 220 if point.get("highlight") else 120
            quality = f"{scale * point[key]:.2f}%" if percent and point in measured else \
                (f"{point[key]:.4f}" if point in measured else "quality not measured")
            text = f"{point['label']}\n{format_size(point['bytes'])}, {quality}"
            if point in measured:
                y = scale * point[key]
                axis.scatter([point["bytes"]], [y], s=size, color=color, zorder=3, edgecolors="white", linewidths=1.5)
                axis.annotate(text, (point["bytes"], y), xytext=(offset, -14), textcoords="offset points", ha=align, va="top",
                              fontsize=11 if point.get("highlight") else 10,
                              fontweight="bold" if point.get("highlight") else "normal", color="#222222")
            else:
                axis.axvline(point["bytes"], color=color, linewidth=2, zorder=2)
                axis.annotate(text, (point["bytes"], 0.5), xycoords=("data", "axes fraction"), xytext=(0, 0),
                              textcoords="offset points", ha="center", va="center", color="#222222",
                              bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.9})
        axis.set_xlabel("file size")
        bytes_axis(axis, "x")
        figure.tight_layout()
        return svg(plt, figure, "size-quality")


def _short_label(name: str, width: int = 28) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def distribution_plot(plt, name: str, original: np.ndarray | None, compressed: np.ndarray, plot_id: str) -> str:
    """Histogram of the original weights with the compressed values' counts as stems, and a
    scatter of original against compressed weight (the values they collapsed onto)."""
    same_shape = original is not None and original.shape == compressed.shape
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(2 if same_shape else 1, 1, figsize=(4.1, 4.9 if same_shape else 2.6), squeeze=False)
        top = axes[0][0]
        levels, counts = np.unique(compressed, return_counts=True)
        bins = np.histogram_bin_edges(original if original is not None else compressed, bins=120)
        if original is not None:
            top.hist(original.ravel(), bins=bins, color=ORIGINAL_COLOR, alpha=0.75)
        if levels.size <= 64:
            top.vlines(levels, 0.8, counts, color=COMPRESSED_COLOR, linewidth=1.6)
        else:  # too many values for stems: outline their histogram on the same bins
            top.hist(compressed.ravel(), bins=bins, histtype="step", color=COMPRESSED_COLOR, linewidth=1.2)
        top.set_yscale("log")
        top.set_ylabel("count")
        top.xaxis.set_major_locator(plt.MaxNLocator(5))
        if same_shape:
            bottom = axes[1][0]
            flat_original, flat_compressed = original.ravel(), compressed.ravel()
            if flat_original.size > SCATTER_POINTS:
                pick = np.random.default_rng(0).choice(flat_original.size, SCATTER_POINTS, replace=False)
                flat_original, flat_compressed = flat_original[pick], flat_compressed[pick]
            if levels.size <= 64:
                bottom.hlines(levels, flat_original.min(), flat_original.max(), color="#dddddd", linewidth=0.6, zorder=0)
            bottom.scatter(flat_original, flat_compressed, s=3, color=COMPRESSED_COLOR, alpha=0.35, linewidths=0,
                           rasterized=True)
            bottom.set_xlabel("original weight")
            bottom.set_ylabel("compressed weight")
            bottom.xaxis.set_major_locator(plt.MaxNLocator(5))
        figure.tight_layout()
        return svg(plt, figure, plot_id)


def allocation_plot(plt, layers: list[dict]) -> str:
    """Bits, sparsity and parameters kept per layer, as horizontal bars.

    The bits axis spans the encoded layers' widths: float layers (32 bits) would squash them into
    a quarter of it, so their bars stop at the axis edge with "32-bit float" written on them."""
    names = [_short_label(layer["name"]) for layer in layers]
    positions = np.arange(len(layers))
    kept = [100 * layer["params"] / layer["params_original"] if layer["params_original"] else 100 for layer in layers]
    sparsity = [100 * layer["sparsity"] for layer in layers]
    encoded_bits = [layer["bits"] for layer in layers if layer["encoding"] != "dense"]
    bits_limit = max(encoded_bits) + 1 if encoded_bits else 34
    panels = [("bits per weight", "bits", COMPRESSED_COLOR, bits_limit)]
    if any(s > 0 for s in sparsity):
        panels.append(("sparsity (% zeros)", sparsity, BOUND_COLOR, 105))
    if any(k < 100 for k in kept):
        panels.append(("parameters kept (%)", kept, "#2ca02c", 105))
    with plt.rc_context(STYLE):
        figure, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels) + 2.0, 0.9 + 0.3 * len(layers)),
                                    sharey=True, squeeze=False)
        for axis, (title, data, color, limit) in zip(axes[0], panels):
            axis.set_title(title, loc="left")
            axis.set_xlim(0, limit)
            axis.grid(True, axis="x")
            if data == "bits":
                for y, layer in zip(positions, layers):
                    if layer["encoding"] == "dense" and layer["bits"] > limit:
                        axis.barh(y, limit, color="#d9d9d9", height=0.7)
                        axis.text(0.15, y, f"{layer['bits']}-bit float", va="center", color="#444444")
                    else:
                        bits = layer["bits"]
                        axis.barh(y, bits, color=ORIGINAL_COLOR if layer["encoding"] == "dense" else color, height=0.7)
                        axis.text(bits, y, f" {bits:g}", va="center")
            else:
                axis.barh(positions, data, color=color, height=0.7)
                for y, value in zip(positions, data):
                    axis.text(value, y, f" {value:.0f}", va="center")
        axes[0][0].set_yticks(positions, names)
        axes[0][0].invert_yaxis()
        figure.tight_layout()
        return svg(plt, figure, "allocation")


def encoding_plot(plt, totals: dict) -> str:
    """Bytes of the original and compressed files split by how weights are stored."""
    with plt.rc_context(STYLE):
        figure, axis = plt.subplots(figsize=(9.0, 2.0))
        bars = [("original", totals["original_bytes_by_encoding"]), ("compressed", totals["bytes_by_encoding"])]
        for row, (label, parts) in enumerate(bars):
            left = 0
            for kind, size in parts.items():
                axis.barh(row, size, left=left, color=ENCODING_COLORS.get(kind, "#bcbd22"), edgecolor="white", height=0.6,
                          label=kind if row == 1 or kind == "dense" else None)
                left += size
            axis.text(left, row, f" {format_size(left)}", va="center")
        axis.set_yticks(range(len(bars)), [label for label, _ in bars])
        axis.invert_yaxis()
        axis.set_xlabel("bytes")
        axis.grid(True, axis="x")
        bytes_axis(axis, "x")
        axis.set_xlim(0, max(sum(parts.values()) for _, parts in bars) * 1.12)
        handles, labels = axis.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        axis.legend(unique.values(), unique.keys(), loc="upper left", bbox_to_anchor=(1.01, 1.0))
        figure.tight_layout()
        return svg(plt, figure, "encodings")


def entropy_plot(plt, layers: list[dict], totals: dict, input_bytes: int) -> str:
    """Stored bytes against the entropy bound per encoded layer, and file totals with gzip."""
    encoded = [layer for layer in layers if layer["encoding"] != "dense"]
    with plt.rc_context(STYLE):
        figure, (left, right) = plt.subplots(1, 2, figsize=(12.0, 1.4 + 0.42 * max(len(encoded), 4)),
                                             gridspec_kw={"width_ratios": [3, 2]})
        positions = np.arange(len(encoded))
        stored, bounds = [layer["stored_bytes"] for layer in encoded], [layer["entropy_bound_bytes"] for layer in encoded]
        left.barh(positions - 0.2, stored, 0.4, color=COMPRESSED_COLOR, label="stored")
        left.barh(positions + 0.2, bounds, 0.4, color=BOUND_COLOR, label="entropy bound")
        left.set_yticks(positions, [_short_label(layer["name"]) for layer in encoded])
        left.invert_yaxis()
        left.set_xlabel("bytes")
        left.set_title("encoded weights", loc="left")
        left.grid(True, axis="x")
        left.set_xlim(0, max(stored + bounds + [1]) * 1.05)
        bytes_axis(left, "x")
        # above the bars, never on them
        left.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, borderaxespad=0.2)
        labels = ["original file", "compressed file", "gzip(compressed)", "entropy bound"]
        sizes = [input_bytes, totals["file_bytes"], totals["gzip_bytes"], totals["file_entropy_bound_bytes"]]
        colors = [ORIGINAL_COLOR, COMPRESSED_COLOR, "#2ca02c", BOUND_COLOR]
        right.barh(range(4), sizes, color=colors)
        for y, size in enumerate(sizes):
            right.text(size, y, f" {format_size(size)}", va="center")
        right.set_yticks(range(4), labels)
        right.invert_yaxis()
        right.set_xlabel("bytes")
        right.set_title("whole file", loc="left")
        right.grid(True, axis="x")
        right.set_xlim(0, max(sizes + [1]) * 1.25)
        bytes_axis(right, "x")
        figure.tight_layout()
        return svg(plt, figure, "entropy-plot")

