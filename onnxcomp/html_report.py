"""A self-contained HTML report of one compression (plots embedded as PNG; no network resources).

What it shows, all measured on the two models rather than taken from the allocator's estimates:
the per-layer table; each encoded weight's distribution before and after (original weights
against the few values they collapsed onto, as in Ullrich et al.'s soft weight-sharing figure);
bits, sparsity and parameters kept per layer; bytes by encoding; fidelity and accuracy; and the
entropy bound of the encoded weights - the bytes an ideal entropy coder would need for the
codes (and, for sparse layers, the positions) - next to the actual bytes and the gzip'd file.
"""

from __future__ import annotations

import base64
import gzip
import html
import io as bytes_io
import json
import logging
import math
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxcomp import encoding, io
from onnxcomp.canonicalize import canonicalize
from onnxcomp.errors import OnnxcompError
from onnxcomp.passes.cleanup import clean_up
from onnxcomp.report import GENERATED_INPUTS_NOTE, StoredWeight, stored_weights
from onnxcomp.sizes import format_size

logger = logging.getLogger(__name__)

MAX_DISTRIBUTION_PANELS = 12  # the largest encoded layers get a distribution plot each
SCATTER_POINTS = 20_000
ORIGINAL_COLOR, COMPRESSED_COLOR, BOUND_COLOR = "#7f7f7f", "#1f77b4", "#ff7f0e"
ENCODING_COLORS = {"dense": "#7f7f7f", "lookup": "#1f77b4", "linear": "#2ca02c", "sparse": "#ff7f0e",
                   "grouped": "#8c564b", "vector": "#e377c2", "decoded": "#9467bd", "graph and other": "#d9d9d9"}


def require_matplotlib():
    """matplotlib.pyplot on the Agg backend, or a one-line error saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise OnnxcompError("--report-dir needs matplotlib: pip install matplotlib (or 'onnxcomp[report]')") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def entropy_bits(symbols: np.ndarray) -> float:
    """Total bits an ideal coder needs for these symbols under their empirical distribution."""
    if symbols.size == 0:
        return 0.0
    _, counts = np.unique(symbols, return_counts=True)
    return float(-(counts * np.log2(counts / counts.sum())).sum())


def layer_analysis(compressed: StoredWeight, original: StoredWeight | None, row: dict | None) -> dict:
    """Measured facts of one weight: stored bytes against its entropy bound.

    The bound is the empirical entropy of the codes including zero over all elements; for a
    sparse layer it is the smaller of that and the entropy of the non-zero codes plus the
    entropy of the position gaps (what an ideal coder of the stored form needs). The codebook
    (float values) is added as stored. Dense float weights count as their stored bytes.
    """
    values = compressed.array.ravel()
    distinct = int(np.unique(values).size)
    analysis = {
        "name": original.name if original is not None else compressed.name,
        "stored_name": compressed.name,
        "role": compressed.role,
        "encoding": compressed.encoding,
        "shape": list(compressed.array.shape),
        "params": int(values.size),
        "params_original": int(original.array.size) if original is not None else None,
        "distinct": distinct,
        "bits": encoding.bits_for(distinct) if compressed.encoding != "dense" else 32,
        "sparsity": float(np.count_nonzero(values == 0) / max(values.size, 1)),
        "stored_bytes": compressed.stored_bytes,
        "relative_error": row.get("relative_error") if row else None,
    }
    if original is not None and original.array.shape == compressed.array.shape:
        reference = original.array.ravel().astype(np.float64)
        analysis["relative_error"] = float(np.linalg.norm(values - reference) / max(np.linalg.norm(reference), 1e-30))
    if compressed.encoding == "dense":
        analysis.update(code_entropy_bytes=None, codebook_bytes=0, entropy_bound_bytes=compressed.stored_bytes)
        return analysis
    if compressed.encoding == "vector":
        # Codes stand for runs of `dim` weights: the bound is the entropy of those runs.
        tables = [v.const_value.numpy() for v in compressed.sources
                  if v.const_value is not None and v.const_value.dtype == ir.DataType.FLOAT and len(v.const_value.shape) == 2]
        if tables and values.size % tables[0].shape[1] == 0:
            dim = tables[0].shape[1]
            _, run_codes = np.unique(values.reshape(-1, dim), axis=0, return_inverse=True)
            all_bits = entropy_bits(run_codes.ravel())
            analysis["bits"] = encoding.bits_for(tables[0].shape[0]) / dim
            analysis.update(code_entropy_bytes=math.ceil(all_bits / 8), codebook_bytes=4 * tables[0].size,
                            entropy_bound_bytes=math.ceil(all_bits / 8) + 4 * tables[0].size)
            return analysis
    nonzero_levels = int(np.count_nonzero(np.unique(values)))
    codebook_bytes = 8 if compressed.encoding == "linear" else 4 * nonzero_levels
    bound_bits = all_bits = entropy_bits(values)
    if compressed.encoding == "sparse":
        positions = np.flatnonzero(values)
        gaps = np.diff(positions, prepend=0)
        sparse_bits = entropy_bits(values[positions]) + entropy_bits(gaps)
        analysis["sparse_entropy_bytes"] = math.ceil(sparse_bits / 8)
        bound_bits = min(all_bits, sparse_bits)
    analysis.update(code_entropy_bytes=math.ceil(all_bits / 8), codebook_bytes=codebook_bytes,
                    entropy_bound_bytes=math.ceil(bound_bits / 8) + codebook_bytes)
    return analysis


def _canonical(model: ir.Model) -> ir.Model:
    # The pipeline's own canonical form and node order, so weights match by position.
    return clean_up(canonicalize(model.clone()), keep_metadata=True, shorten_names=False)


def analyze(original: ir.Model, compressed: ir.Model, report: dict, compressed_data: bytes) -> tuple[dict, dict]:
    """Per-layer and whole-file measurements; also returns {name: (original, compressed) arrays}."""
    originals = {w.use: w for w in stored_weights(_canonical(original))}
    rows = {row["name"]: row for row in report.get("layers", [])}
    layers, arrays = [], {}
    for weight in stored_weights(compressed):
        source = originals.get(weight.use)
        analysis = layer_analysis(weight, source, rows.get(source.name) if source is not None else None)
        layers.append(analysis)
        arrays[analysis["name"]] = (source.array if source is not None else None, weight.array)
    stored_total = sum(layer["stored_bytes"] for layer in layers)
    bound_total = sum(layer["entropy_bound_bytes"] for layer in layers)
    other = len(compressed_data) - stored_total
    by_encoding: dict[str, int] = {}
    for layer in layers:
        by_encoding[layer["encoding"]] = by_encoding.get(layer["encoding"], 0) + layer["stored_bytes"]
    by_encoding["graph and other"] = other
    original_weights = sum(4 * (layer["params_original"] or layer["params"]) for layer in layers)
    totals = {
        "file_bytes": len(compressed_data),
        "gzip_bytes": len(gzip.compress(compressed_data, compresslevel=9)),
        "weights_stored_bytes": stored_total,
        "weights_entropy_bound_bytes": bound_total,
        "file_entropy_bound_bytes": other + bound_total,
        "bytes_by_encoding": by_encoding,
        "original_bytes_by_encoding": {"dense": original_weights,
                                       "graph and other": max(report.get("input_bytes", 0) - original_weights, 0)},
    }
    return {"layers": layers, "totals": totals}, arrays


def _png(figure) -> str:
    buffer = bytes_io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    figure.clf()
    import matplotlib.pyplot as plt

    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _short_label(name: str, width: int = 28) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def distribution_plot(plt, name: str, original: np.ndarray | None, compressed: np.ndarray) -> str:
    """Histogram of the original weights with the compressed values' counts as stems, and a
    scatter of original against compressed weight (the values they collapsed onto)."""
    same_shape = original is not None and original.shape == compressed.shape
    figure, axes = plt.subplots(2 if same_shape else 1, 1, figsize=(4.4, 5.2 if same_shape else 2.8), squeeze=False)
    top = axes[0][0]
    levels, counts = np.unique(compressed, return_counts=True)
    bins = np.histogram_bin_edges(original if original is not None else compressed, bins=120)
    if original is not None:
        top.hist(original.ravel(), bins=bins, color=ORIGINAL_COLOR, alpha=0.8, label="original")
    if levels.size <= 64:
        top.vlines(levels, 0.8, counts, color=COMPRESSED_COLOR, linewidth=1.6, label=f"compressed ({levels.size} values)")
    else:  # too many values for stems: outline their histogram on the same bins
        top.hist(compressed.ravel(), bins=bins, histtype="step", color=COMPRESSED_COLOR, linewidth=1.2,
                 label=f"compressed ({levels.size} values)")
    top.set_yscale("log")
    top.set_ylabel("count")
    top.set_title(_short_label(name, 40), fontsize=9)
    top.legend(fontsize=7, loc="upper right")
    if same_shape:
        bottom = axes[1][0]
        flat_original, flat_compressed = original.ravel(), compressed.ravel()
        if flat_original.size > SCATTER_POINTS:
            pick = np.random.default_rng(0).choice(flat_original.size, SCATTER_POINTS, replace=False)
            flat_original, flat_compressed = flat_original[pick], flat_compressed[pick]
        if levels.size <= 64:
            bottom.hlines(levels, flat_original.min(), flat_original.max(), color="#dddddd", linewidth=0.6, zorder=0)
        bottom.scatter(flat_original, flat_compressed, s=2, color=COMPRESSED_COLOR, alpha=0.3, linewidths=0)
        bottom.set_xlabel("original weight")
        bottom.set_ylabel("compressed weight")
    figure.tight_layout()
    return _png(figure)


def allocation_plot(plt, layers: list[dict]) -> str:
    """Bits, sparsity and parameters kept per layer, as horizontal bars."""
    names = [_short_label(layer["name"]) for layer in layers]
    positions = np.arange(len(layers))
    height = 1.2 + 0.28 * len(layers)
    kept = [100 * layer["params"] / layer["params_original"] if layer["params_original"] else 100 for layer in layers]
    panels = [("bits per weight", [layer["bits"] for layer in layers], COMPRESSED_COLOR),
              ("sparsity (% zeros)", [100 * layer["sparsity"] for layer in layers], BOUND_COLOR)]
    if any(k < 100 for k in kept):
        panels.append(("parameters kept (%)", kept, "#2ca02c"))
    figure, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 1.5, height), sharey=True, squeeze=False)
    for axis, (title, data, color) in zip(axes[0], panels):
        axis.barh(positions, data, color=color)
        axis.set_title(title, fontsize=9)
        for y, value in zip(positions, data):
            axis.text(value, y, f" {value:.0f}", va="center", fontsize=7)
    axes[0][0].set_yticks(positions, names, fontsize=7)
    axes[0][0].invert_yaxis()
    figure.tight_layout()
    return _png(figure)


def encoding_plot(plt, totals: dict) -> str:
    """Bytes of the original and compressed files split by how weights are stored."""
    figure, axis = plt.subplots(figsize=(8, 2.2))
    bars = [("original", totals["original_bytes_by_encoding"]), ("compressed", totals["bytes_by_encoding"])]
    for row, (label, parts) in enumerate(bars):
        left = 0
        for kind, size in parts.items():
            axis.barh(row, size, left=left, color=ENCODING_COLORS.get(kind, "#bcbd22"), edgecolor="white",
                      label=kind if row == 1 or kind == "dense" else None)
            left += size
        axis.text(left, row, f" {format_size(left)}", va="center", fontsize=8)
    axis.set_yticks(range(len(bars)), [label for label, _ in bars])
    axis.set_xlabel("bytes")
    handles, labels = axis.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axis.legend(unique.values(), unique.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    return _png(figure)


def entropy_plot(plt, layers: list[dict], totals: dict, input_bytes: int) -> str:
    """Stored bytes against the entropy bound per encoded layer, and file totals with gzip."""
    encoded = [layer for layer in layers if layer["encoding"] != "dense"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 1.6 + 0.35 * max(len(encoded), 4)),
                                         gridspec_kw={"width_ratios": [3, 2]})
    positions = np.arange(len(encoded))
    left.barh(positions - 0.2, [layer["stored_bytes"] for layer in encoded], 0.4, color=COMPRESSED_COLOR, label="stored")
    left.barh(positions + 0.2, [layer["entropy_bound_bytes"] for layer in encoded], 0.4, color=BOUND_COLOR,
              label="entropy bound")
    left.set_yticks(positions, [_short_label(layer["name"]) for layer in encoded], fontsize=7)
    left.invert_yaxis()
    left.set_xlabel("bytes")
    left.set_title("encoded weights", fontsize=9)
    left.legend(fontsize=7)
    labels = ["original file", "compressed file", "gzip(compressed)", "entropy bound"]
    sizes = [input_bytes, totals["file_bytes"], totals["gzip_bytes"], totals["file_entropy_bound_bytes"]]
    colors = [ORIGINAL_COLOR, COMPRESSED_COLOR, "#2ca02c", BOUND_COLOR]
    right.barh(range(4), sizes, color=colors)
    for y, size in enumerate(sizes):
        right.text(size, y, f" {format_size(size)}", va="center", fontsize=7)
    right.set_yticks(range(4), labels, fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("bytes")
    right.set_title("whole file", fontsize=9)
    figure.tight_layout()
    return _png(figure)


STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1250px; }
h1 { font-size: 22px; } h2 { font-size: 17px; border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 28px; }
table { border-collapse: collapse; font-size: 12px; } td, th { padding: 3px 8px; border-bottom: 1px solid #eee; }
td.n, th.n { text-align: right; } .grid { display: flex; flex-wrap: wrap; gap: 8px; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; } .card { border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; }
.card b { display: block; font-size: 18px; } .note { color: #666; font-size: 12px; }
"""


def _img(data: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _table(headers: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    head = "".join(f'<th class="{"n" if i in numeric else ""}">{html.escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="{"n" if i in numeric else ""}">{html.escape(c)}</td>'
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _generated_note(report: dict) -> str:
    """A visible note when fidelity was measured on generated inputs (no --data), else ''."""
    if not report.get("fidelity", {}).get("generated_inputs"):
        return ""
    return f'<p class="note generated"><b>Generated inputs.</b> {html.escape(GENERATED_INPUTS_NOTE[0].upper() + GENERATED_INPUTS_NOTE[1:])}.</p>'


def _quality_rows(report: dict) -> list[list[str]]:
    fid = report.get("fidelity", {})
    rows = []
    source = f"{fid.get('samples', '?')} {'generated' if fid.get('generated_inputs') else 'sample'} inputs"
    if fid.get("top1_agreement") is not None:
        rows.append(["top-1 agreement with the original", f"{100 * fid['top1_agreement']:.2f}%", source])
    if fid.get("cosine") is not None:
        rows.append(["cosine similarity of outputs", f"{fid['cosine']:.5f}", source])
    if fid.get("max_abs_error") is not None:
        rows.append(["max abs output error", f"{fid['max_abs_error']:.4g}", source])
    if "accuracy" in report:
        acc = report["accuracy"]
        rows.append(["accuracy original -> compressed",
                     f"{100 * acc['original']:.2f}% -> {100 * acc['compressed']:.2f}%", f"{acc['samples']} labelled samples"])
    return rows


def render_html(report: dict, analysis: dict, arrays: dict) -> str:
    """The report page; every plot is an inline base64 PNG."""
    plt = require_matplotlib()
    layers, totals = analysis["layers"], analysis["totals"]
    input_bytes = report.get("input_bytes", 0)
    cards = [("file", f"{format_size(input_bytes)} -> {format_size(totals['file_bytes'])}"),
             ("smaller", f"{input_bytes / max(totals['file_bytes'], 1):.1f}x"),
             ("gzip'd file", format_size(totals["gzip_bytes"])),
             ("entropy-bound file", format_size(totals["file_entropy_bound_bytes"]))]
    if "accuracy" in report:
        cards.append(("accuracy", f"{100 * report['accuracy']['original']:.2f}% -> {100 * report['accuracy']['compressed']:.2f}%"))
    card_html = "".join(f'<div class="card">{html.escape(k)}<b>{html.escape(v)}</b></div>' for k, v in cards)
    table_rows = [[layer["name"], "x".join(map(str, layer["shape"])), f"{layer['params']:,}", layer["encoding"],
                   str(layer["bits"]), str(layer["distinct"]), f"{100 * layer['sparsity']:.0f}%",
                   format_size(4 * (layer["params_original"] or layer["params"])), format_size(layer["stored_bytes"]),
                   format_size(layer["entropy_bound_bytes"]),
                   "-" if layer["relative_error"] is None else f"{layer['relative_error']:.3g}"] for layer in layers]
    layer_table = _table(["layer", "shape", "params", "encoding", "bits", "distinct", "sparsity", "before", "stored",
                          "entropy bound", "rel. L2 error"], table_rows, {2, 4, 5, 6, 7, 8, 9, 10})
    encoded = sorted((layer for layer in layers if layer["encoding"] != "dense"), key=lambda layer: -layer["params"])
    shown = encoded[:MAX_DISTRIBUTION_PANELS]
    panels = "".join(_img(distribution_plot(plt, layer["name"], *arrays[layer["name"]]), f"distribution of {layer['name']}")
                     for layer in shown)
    omitted = f'<p class="note">{len(encoded) - len(shown)} smaller encoded layers not shown.</p>' if len(encoded) > len(shown) else ""
    encoding_rows = [[kind, format_size(size), f"{100 * size / max(totals['file_bytes'], 1):.1f}%"]
                     for kind, size in totals["bytes_by_encoding"].items()]
    sections = [
        ("summary", "Summary", f'<div class="cards">{card_html}</div>'
         f'<p class="note">{html.escape(report.get("input", ""))} -> {html.escape(report.get("output", ""))}, '
         f'target {format_size(report.get("target_bytes", 0))}</p>'),
        ("quality", "Fidelity and accuracy",
         _generated_note(report) + _table(["measure", "value", "measured on"], _quality_rows(report), {1})),
        ("layers", "Layers", layer_table + '<p class="note">Measured on the saved model: decoded weights are '
         "evaluated in ONNX Runtime; stored = bytes of the initializers the weight is decoded from.</p>"),
        ("distributions", "Weight distributions before and after",
         '<p class="note">Top: histogram of the original weights (grey) and how many compressed weights take each '
         "of the few stored values (blue stems; the stem at 0 counts pruned weights). Bottom: each weight's original "
         "value against its compressed value - weights collapse onto the codebook values.</p>"
         f'<div class="grid">{panels}</div>{omitted}'),
        ("allocation", "Bits, sparsity and parameters kept per layer", _img(allocation_plot(plt, layers), "allocation")),
        ("encodings", "Bytes by encoding", _img(encoding_plot(plt, totals), "bytes by encoding")
         + _table(["stored as", "bytes", "of file"], encoding_rows, {1, 2})),
        ("entropy", "Entropy bound and gzip",
         '<p class="note">Entropy bound: the bytes an ideal entropy coder would need for the codes of each encoded '
         "weight under their empirical distribution (codes including zero; for sparse layers the smaller of that and "
         "non-zero codes plus position gaps), plus the codebook. The file's bound replaces the stored weights by their "
         "bounds and keeps the rest of the file. gzip -9 of the file is what an app download would cost.</p>"
         + _img(entropy_plot(plt, layers, totals, input_bytes), "entropy bound")
         + _table(["", "bytes"], [["compressed file", f"{totals['file_bytes']:,}"], ["gzip -9 of the file", f"{totals['gzip_bytes']:,}"],
                                  ["stored weights", f"{totals['weights_stored_bytes']:,}"],
                                  ["entropy bound of the weights", f"{totals['weights_entropy_bound_bytes']:,}"],
                                  ["file with weights at the bound", f"{totals['file_entropy_bound_bytes']:,}"]], {1})),
    ]
    body = "".join(f'<section id="{key}"><h2>{html.escape(title)}</h2>{content}</section>' for key, title, content in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>onnxcomp report</title>'
            f"<style>{STYLE}</style></head><body><h1>onnxcomp compression report</h1>{body}</body></html>")


def write_report(report_dir: str | Path, original: ir.Model, compressed: ir.Model, report: dict,
                 compressed_data: bytes | None = None) -> Path:
    """Write DIR/report.html and DIR/report.json (the compress report plus the measured analysis).

    Returns the path of the HTML file. `compressed_data` is the saved file's bytes (serialized
    from `compressed` when not given).
    """
    require_matplotlib()
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    if compressed_data is None:
        compressed_data = io.serialized_bytes(compressed)
    analysis, arrays = analyze(original, compressed, report, compressed_data)
    page = render_html(report, analysis, arrays)
    html_path = report_dir / "report.html"
    io.atomic_write(html_path, lambda handle: handle.write(page.encode("utf-8")))
    full = dict(report, analysis=analysis)
    io.atomic_write(report_dir / "report.json", lambda handle: handle.write(json.dumps(full, indent=2).encode()))
    return html_path
