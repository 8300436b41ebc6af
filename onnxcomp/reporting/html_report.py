"""A self-contained HTML report of one compression (plots as inline SVG; no network resources).

What it shows, all measured on the models rather than taken from the allocator's estimates: at
the top, file size against quality for the original, its per-channel int8 version
(`onnxcomp.reporting.int8_reference`) and the compressed model, run on the same inputs; the per-layer
table; each encoded weight's distribution before and after (original weights against the few
values they collapsed onto, as in Ullrich et al.'s soft weight-sharing figure);
bits, sparsity and parameters kept per layer; bytes by encoding; fidelity and accuracy; and the
entropy bound of the encoded weights - the bytes an ideal entropy coder would need for the
codes (and, for sparse layers, the positions) - next to the actual bytes and the gzip'd file.
"""

from __future__ import annotations

import gzip
import html
import json
import logging
import math
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxcomp import modelfile
from onnxcomp.encodings import encoding
from onnxcomp.model.canonicalize import canonicalize
from onnxcomp.samples.data import Samples
from onnxcomp.errors import OnnxcompError
from onnxcomp.reporting.int8_reference import compare_with_int8
from onnxcomp.passes.cleanup import clean_up
from onnxcomp.reporting.compression_report import CompressionReport, LayerRow
from onnxcomp.reporting.report import GENERATED_INPUTS_NOTE, StoredWeight, inspect_weights, stored_weights, weight_row
from onnxcomp.reporting.report_plots import (COMPRESSED_COLOR, INT8_COLOR, ORIGINAL_COLOR, allocation_plot, distribution_plot,
                                   encoding_plot, entropy_plot, quality_measure, size_quality_plot)
from onnxcomp.sizes import format_size

logger = logging.getLogger(__name__)

MAX_DISTRIBUTION_PANELS = 12  # the largest encoded layers get a distribution plot each


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


def layer_analysis(compressed: StoredWeight, original: StoredWeight | None, row: LayerRow | None) -> dict:
    """Measured facts of one weight: stored bytes against its entropy bound.

    The bound is the empirical entropy of the codes including zero over all elements; for a
    sparse layer it is the smaller of that and the entropy of the non-zero codes plus the
    entropy of the position gaps (what an ideal coder of the stored form needs). The codebook
    (float values) is added as stored. Dense float weights count as their stored bytes. The
    name, shape, encoding, bits and bytes are `onnxcomp.reporting.report.weight_row`'s, as `inspect` and
    the compress summary show them.
    """
    values = compressed.array.ravel()
    analysis = weight_row(compressed).to_dict()
    analysis.update(params_original=int(original.array.size) if original is not None else None,
                    distinct=analysis["levels"], stored_bytes=analysis["bytes_after"],
                    relative_error=row.relative_error if row else None)
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
    side_bytes = 0
    if compressed.encoding == "scaled" and (scale := channel_scale(compressed)) is not None:
        # The codes index one shared grid; the decoded values are the grid times each channel's
        # scale, so every channel has its own values. The bound counts the codes, plus the scales.
        with np.errstate(divide="ignore", invalid="ignore"):
            normalized = np.where(scale != 0, compressed.array / scale.astype(np.float32), 0)
        values = np.round(normalized.astype(np.float64), 5).ravel()
        side_bytes = int(scale.nbytes)
    nonzero_levels = int(np.count_nonzero(np.unique(values)))
    codebook_bytes = (8 if compressed.encoding == "linear" else 4 * nonzero_levels) + side_bytes
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


def channel_scale(weight: StoredWeight) -> np.ndarray | None:
    """The per-channel scales of a "scaled" weight: the stored float tensor of its rank that
    broadcasts along exactly one of its axes (`onnxcomp.encodings.channel_scales.insert_scale`)."""
    shape = weight.array.shape
    for source in weight.sources:
        value = source.const_value
        if value is None or value.dtype not in (ir.DataType.FLOAT, ir.DataType.FLOAT16) or len(value.shape) != len(shape):
            continue
        dims = tuple(value.shape)
        spread = [axis for axis, dim in enumerate(dims) if dim != 1]
        if len(spread) == 1 and dims[spread[0]] == shape[spread[0]] and shape[spread[0]] > 1:
            return value.numpy()
    return None


def _canonical(model: ir.Model) -> ir.Model:
    # The pipeline's own canonical form and node order, so weights match by position.
    return clean_up(canonicalize(model.clone()), keep_metadata=True, shorten_names=False)


def analyze(original: ir.Model, compressed: ir.Model, report: CompressionReport, compressed_data: bytes) -> tuple[dict, dict]:
    """Per-layer and whole-file measurements; also returns {name: (original, compressed) arrays}."""
    originals = {w.use: w for w in stored_weights(_canonical(original))}
    rows = {row.name: row for row in report.layers}
    layers, arrays = [], {}
    for weight in inspect_weights(compressed):  # the rows `onnxcomp inspect` lists for the saved file
        source = originals.get(weight.use)
        analysis = layer_analysis(weight, source, rows.get(weight.label))
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
                                       "graph and other": max(report.input_bytes - original_weights, 0)},
    }
    return {"layers": layers, "totals": totals}, arrays


STYLE = """
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; color: #1f2328; margin: 0;
       background: #fff; }
main { max-width: 1320px; margin: 0 auto; padding: 20px 32px 48px; }
header h1 { font-size: 24px; margin: 0 0 2px; font-weight: 650; } header h1 span { color: #57606a; font-weight: 400; }
header p { margin: 0; color: #57606a; font-size: 14px; overflow-wrap: anywhere; }
h2 { font-size: 19px; font-weight: 650; margin: 36px 0 10px; padding-bottom: 6px; border-bottom: 1px solid #d8dee4; }
.top { display: grid; grid-template-columns: minmax(0, 1fr) 330px; gap: 20px 28px; align-items: start; margin-top: 14px; }
figure { margin: 0; } figcaption { font-size: 14px; color: #57606a; margin: 0 0 6px; }
figcaption b { color: #1f2328; font-size: 16px; margin-right: 6px; }
figure svg { display: block; max-width: 100%; height: auto; }
.lead { border: 1px solid #d8dee4; border-radius: 8px; padding: 12px 14px 8px; }
.cards { display: flex; flex-direction: column; gap: 10px; }
.card { border: 1px solid #d8dee4; border-radius: 8px; padding: 10px 14px; font-size: 14px; color: #57606a; }
.card b { display: block; font-size: 22px; color: #1f2328; font-weight: 650; font-variant-numeric: tabular-nums; }
.card.hero { background: #f0f6fc; border-color: #b6d3f2; } .card.hero b { font-size: 30px; color: #0b5cad; }
table { border-collapse: collapse; font-size: 14px; font-variant-numeric: tabular-nums; margin: 4px 0; }
td, th { padding: 5px 12px; border-bottom: 1px solid #eaeef2; text-align: left; }
th { font-weight: 600; border-bottom: 2px solid #d8dee4; background: #f6f8fa; } tr:hover td { background: #f6f8fa; }
td.n, th.n { text-align: right; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(390px, 1fr)); gap: 18px 24px; }
.grid figure { border: 1px solid #eaeef2; border-radius: 8px; padding: 8px 10px; }
.grid figcaption b { font-size: 15px; }
.row { display: flex; flex-wrap: wrap; gap: 16px 32px; align-items: flex-start; }
.note { color: #57606a; font-size: 14px; max-width: 1100px; }
@media (max-width: 1100px) { .top { grid-template-columns: minmax(0, 1fr); } .cards { flex-flow: row wrap; } }
.generated { background: #fff8c5; border: 1px solid #eed888; border-radius: 6px; padding: 8px 12px; color: #3b2e00; }
"""


def _figure(svg_text: str, plot_id: str, caption: str = "", css_class: str = "plot") -> str:
    """A figure holding one inline SVG plot; `caption` is HTML."""
    head = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure class="{css_class}" id="fig-{plot_id}" data-plot="{plot_id}">{head}{svg_text}</figure>'


def _table(headers: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    head = "".join(f'<th class="{"n" if i in numeric else ""}">{html.escape(h)}</th>' for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="{"n" if i in numeric else ""}">{html.escape(c)}</td>'
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _generated_note(report: CompressionReport) -> str:
    """A visible note when fidelity was measured on generated inputs (no --data), else ''."""
    if not report.fidelity.get("generated_inputs"):
        return ""
    return f'<p class="note generated"><b>Generated inputs.</b> {html.escape(GENERATED_INPUTS_NOTE[0].upper() + GENERATED_INPUTS_NOTE[1:])}.</p>'


def _quality_rows(report: CompressionReport) -> list[list[str]]:
    fid = report.fidelity
    rows = []
    source = f"{fid.get('samples', '?')} {'generated' if fid.get('generated_inputs') else 'sample'} inputs"
    if fid.get("top1_agreement") is not None:
        rows.append(["top-1 agreement with the original", f"{100 * fid['top1_agreement']:.2f}%", source])
    if fid.get("cosine") is not None:
        rows.append(["cosine similarity of outputs", f"{fid['cosine']:.5f}", source])
    if fid.get("max_abs_error") is not None:
        rows.append(["max abs output error", f"{fid['max_abs_error']:.4g}", source])
    if report.accuracy is not None:
        acc = report.accuracy
        rows.append(["accuracy original -> compressed",
                     f"{100 * acc['original']:.2f}% -> {100 * acc['compressed']:.2f}%", f"{acc['samples']} labelled samples"])
    return rows


def size_quality_points(report: CompressionReport, comparison: dict | None) -> list[dict]:
    """The size/quality figure's points: measured ones where the comparison ran, else sizes only."""
    labels = {"original": ("original (float32)", ORIGINAL_COLOR), "int8": ("per-channel int8", INT8_COLOR),
              "compressed": ("this model", COMPRESSED_COLOR)}
    if comparison is None:
        return [dict(label=labels["original"][0], color=ORIGINAL_COLOR, bytes=report.input_bytes, measured=False),
                dict(label=labels["compressed"][0], color=COMPRESSED_COLOR, bytes=report.output_bytes,
                     measured=False, highlight=True)]
    return [dict(measures, label=labels[name][0], color=labels[name][1], measured=True, highlight=name == "compressed")
            for name, measures in comparison["models"].items()]


def _summary(report: CompressionReport, totals: dict, comparison: dict | None, comparison_error: str) -> str:
    """The top of the page: the size/quality figure and the few numbers beside it."""
    plt = require_matplotlib()
    input_bytes, file_bytes = report.input_bytes, totals["file_bytes"]
    points = size_quality_points(report, comparison)
    key, measure_label = quality_measure(points)
    if comparison is not None:
        source = f"{comparison['samples']} {'generated' if comparison['generated'] else 'sample'} inputs"
        caption = (f"<b>Size against quality</b> {html.escape(measure_label.replace(' (%)', ''))} on {source}, "
                   "each model run in ONNX Runtime. int8: weight-only, per output channel, symmetric.")
    else:
        caption = f"<b>Size against quality</b> sizes only: {html.escape(comparison_error)}"
    figure = _figure(size_quality_plot(plt, points, report.target_bytes), "size-quality", caption, "plot lead")
    cards = [("hero", f"{input_bytes / max(file_bytes, 1):.1f}x smaller", f"{format_size(input_bytes)} -> {format_size(file_bytes)}")]
    if comparison is not None:
        int8_bytes = comparison["models"]["int8"]["bytes"]
        cards.append(("", f"{int8_bytes / max(file_bytes, 1):.1f}x smaller than int8", f"per-channel int8: {format_size(int8_bytes)}"))
        if key:
            percent = key != "cosine"
            show = (lambda v: f"{100 * v:.2f}%") if percent else (lambda v: f"{v:.4f}")
            models = comparison["models"]
            detail = f"int8 {show(models['int8'][key])}" + (f", original {show(models['original'][key])}" if key == "accuracy" else "")
            cards.append(("", show(models["compressed"][key]), f"{measure_label.replace(' (%)', '')}; {detail}"))
    cards.append(("", format_size(totals["gzip_bytes"]), "gzip -9 of the file (a download)"))
    cards.append(("", format_size(totals["file_entropy_bound_bytes"]), "file with weights at their entropy bound"))
    card_html = "".join(f'<div class="card {kind}"><b>{html.escape(value)}</b>{html.escape(text)}</div>'
                        for kind, value, text in cards)
    return f'<div class="top">{figure}<div class="cards">{card_html}</div></div>{_generated_note(report)}'


def render_html(report: CompressionReport, analysis: dict, arrays: dict, comparison: dict | None = None,
                comparison_error: str = "") -> str:
    """The report page; every plot is an inline SVG with its text as text."""
    plt = require_matplotlib()
    layers, totals = analysis["layers"], analysis["totals"]
    input_bytes = report.input_bytes
    table_rows = [[layer["name"], "x".join(map(str, layer["shape"])), f"{layer['params']:,}", layer["encoding"],
                   f"{layer['bits']:g}", str(layer["distinct"]), f"{100 * layer['sparsity']:.0f}%",
                   format_size(layer["bytes_before"]), format_size(layer["bytes_after"]),
                   format_size(layer["entropy_bound_bytes"]),
                   "-" if layer["relative_error"] is None else f"{layer['relative_error']:.3g}"] for layer in layers]
    layer_table = _table(["layer", "shape", "params", "encoding", "bits", "distinct", "sparsity", "before", "stored",
                          "entropy bound", "rel. L2 error"], table_rows, {2, 4, 5, 6, 7, 8, 9, 10})
    encoded = sorted((layer for layer in layers if layer["encoding"] != "dense"), key=lambda layer: -layer["params"])
    shown = encoded[:MAX_DISTRIBUTION_PANELS]
    panels = "".join(_figure(distribution_plot(plt, layer["name"], *arrays[layer["name"]], plot_id=f"dist-{index}"),
                             f"dist-{index}", f"<b>{html.escape(layer['name'])}</b> {html.escape(layer['encoding'])}, "
                             f"{layer['bits']:g} bits, {layer['distinct']} values, {layer['params']:,} weights")
                     for index, layer in enumerate(shown))
    omitted = f'<p class="note">{len(encoded) - len(shown)} smaller encoded layers not shown.</p>' if len(encoded) > len(shown) else ""
    encoding_rows = [[kind, format_size(size), f"{100 * size / max(totals['file_bytes'], 1):.1f}%"]
                     for kind, size in totals["bytes_by_encoding"].items()]
    sections = [
        ("summary", "", _summary(report, totals, comparison, comparison_error)),
        ("quality", "Fidelity and accuracy",
         _table(["measure", "value", "measured on"], _quality_rows(report), {1})
         + '<p class="note">Measured by the compressor against the original model.</p>'),
        ("encodings", "Bytes by encoding",
         f'<div class="row">{_figure(encoding_plot(plt, totals), "encodings")}'
         f'{_table(["stored as", "bytes", "of file"], encoding_rows, {1, 2})}</div>'),
        ("allocation", "Bits, sparsity and parameters kept per layer", _figure(allocation_plot(plt, layers), "allocation")),
        ("layers", "Layers", layer_table + '<p class="note">Measured on the saved model: decoded weights are '
         "evaluated in ONNX Runtime; before = the weight stored dense; stored = bytes of the initializers the weight is "
         "decoded from (a constant several decodes share counts as graph). The rows and bytes are those of the "
         "compress summary and <code>onnxcomp inspect</code>.</p>"),
        ("entropy", "Entropy bound and gzip",
         '<p class="note">Entropy bound: the bytes an ideal entropy coder would need for the codes of each encoded '
         "weight under their empirical distribution (codes including zero; for sparse layers the smaller of that and "
         "non-zero codes plus position gaps), plus the codebook. The file's bound replaces the stored weights by their "
         "bounds and keeps the rest of the file. gzip -9 of the file is what an app download would cost.</p>"
         + _figure(entropy_plot(plt, layers, totals, input_bytes), "entropy")
         + _table(["", "bytes"], [["compressed file", f"{totals['file_bytes']:,}"], ["gzip -9 of the file", f"{totals['gzip_bytes']:,}"],
                                  ["stored weights", f"{totals['weights_stored_bytes']:,}"],
                                  ["entropy bound of the weights", f"{totals['weights_entropy_bound_bytes']:,}"],
                                  ["file with weights at the bound", f"{totals['file_entropy_bound_bytes']:,}"]], {1})),
        ("distributions", "Weight distributions before and after",
         '<p class="note">Top: histogram of the original weights (grey) and how many compressed weights take each '
         "of the few stored values (blue stems; the stem at 0 counts pruned weights). Bottom: each weight's original "
         "value against its compressed value - weights collapse onto the codebook values.</p>"
         f'<div class="grid">{panels}</div>{omitted}'),
    ]
    body = "".join(f'<section id="{key}">{f"<h2>{html.escape(title)}</h2>" if title else ""}{content}</section>'
                   for key, title, content in sections)
    name = Path(report.input or "model").name
    header = (f"<header><h1>onnxcomp report <span>{html.escape(name)}</span></h1>"
              f"<p>{html.escape(report.input or '')} -> {html.escape(report.output or '')}, "
              f"target {format_size(report.target_bytes)}</p></header>")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>onnxcomp report: {html.escape(name)}</title>'
            f"<style>{STYLE}</style></head><body><main>{header}{body}</main></body></html>")


def write_report(report_dir: str | Path, original: ir.Model, compressed: ir.Model, report: CompressionReport,
                 compressed_data: bytes | None = None, *, samples: Samples | None = None, seed: int = 0,
                 input_shapes: dict | None = None, input_values: dict | None = None) -> Path:
    """Write DIR/report.html and DIR/report.json (the compress report plus the measured analysis).

    Returns the path of the HTML file. `compressed_data` is the saved file's bytes (serialized
    from `compressed` when not given). The size/quality figure runs the original, its int8
    version and the compressed model on `samples` (the compressor's check data), else on the
    compressor's generated inputs (`seed`, `input_shapes`, `input_values` as given to it).
    """
    require_matplotlib()
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    if compressed_data is None:
        compressed_data = modelfile.serialized_bytes(compressed)
    analysis, arrays = analyze(original, compressed, report, compressed_data)
    comparison, comparison_error = None, ""
    if modelfile.is_streamed(original):
        comparison_error = "the model is too large to run three copies of it"
    else:
        try:
            comparison = compare_with_int8(original, compressed_data, samples, seed, input_shapes, input_values,
                                           original_bytes=report.input_bytes)
        except OnnxcompError as error:
            comparison_error = f"the models could not be run ({error})"
            logger.info("size/quality comparison skipped: %s", error)
    page = render_html(report, analysis, arrays, comparison, comparison_error)
    html_path = report_dir / "report.html"
    modelfile.atomic_write(html_path, lambda handle: handle.write(page.encode("utf-8")))
    full = dict(report.to_dict(), analysis=dict(analysis, size_quality=comparison))
    modelfile.atomic_write(report_dir / "report.json", lambda handle: handle.write(json.dumps(full, indent=2).encode()))
    return html_path
