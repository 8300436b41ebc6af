"""Per-layer tables: for the compress report, and `onnxcomp inspect` of any model."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxcomp.encodings import encoding
from onnxcomp.model.canonicalize import canonicalize, holds_tensors
from onnxcomp.reporting.compression_report import LayerRow
from onnxcomp.reporting.floor import UNSTABLE_SLACK
from onnxcomp.sizes import format_size
from onnxcomp.encodings.stored import StoredWeight, stored_weights
from onnxcomp.text import printable

# Every figure measured on generated inputs says so (CLI summary, report, sweep.md, sweep.png).
GENERATED_INPUTS_NOTE = ("measured on generated inputs: how closely the compressed model follows the original on "
                         "made-up data, not task quality; pass --data with real samples (and labels) to measure that")
GENERATED_INPUTS_TAG = "generated inputs, see --data"


def uninformative_outputs(fidelity: dict) -> list[str]:
    """One line per output whose measures on generated inputs say little: it moves as much under a
    0.1% change of the weights (`floor.mark_unstable`), or the original gives it the same value on
    every input (a detector's map on noise) or one class to every input."""
    lines = []
    for name, entry in fidelity.get("outputs", {}).items():
        if entry.get("unstable") is not None:
            lines.append(f"output {name!r} moves about as much when every weight changes by 0.1% (measure "
                         f"{entry['unstable']:.4g} against the original): on generated inputs its measures "
                         f"tell only a collapse, so the quality floor asks it to lose at most {UNSTABLE_SLACK} "
                         "times what that change loses; --data with real samples would judge it")
        elif entry.get("labelled_positions") is not None and fidelity.get("generated_inputs"):
            labelled = entry["labelled_positions"]
            where = "every position" if labelled == 0 else f"all but {labelled} positions"
            lines.append(f"output {name!r} is a class distribution at each position, and the original gives its most "
                         f"frequent class (a blank, background) at {where} of the generated inputs: its cosine is "
                         "that class's and says nothing of what the model reads: only --data with real samples "
                         "would judge it")
        elif entry.get("flat_original"):
            lines.append(f"output {name!r} is the same on every generated input: its measures say little; "
                         "--data with real samples would")
        elif entry.get("swamped") is not None and fidelity.get("generated_inputs"):
            lines.append(f"output {name!r} spans only {entry['swamped']:.3g} over all generated inputs, less than the "
                         f"compressed model's error ({entry['max_abs_error']:.3g}): these inputs barely exercise it, "
                         "so its cosine says little of real inputs; --data with real samples would judge it")
        elif entry.get("original_top1_classes") == 1:
            lines.append(f"output {name!r}: the original gives one class to every generated input, so it is "
                         "judged by cosine, not agreement; --data with real samples would judge the decisions")
    return lines

def quality_measures(fidelity: dict) -> list[str]:
    """The summary's measures of a verified run: top-1 agreement (class scores), at labelled
    positions (class distributions at many positions), cosine, max abs error."""
    parts = [f"top-1 agreement {100 * fidelity['top1_agreement']:.2f}%"] if fidelity.get("top1_agreement") is not None else []
    if fidelity.get("position_top1_agreement") is not None:
        parts.append(f"top-1 agreement at labelled positions {100 * fidelity['position_top1_agreement']:.2f}%")
    parts += [f"cosine {fidelity['cosine']:.4f}"] if fidelity.get("cosine") is not None else []
    return parts + [f"max abs error {fidelity['max_abs_error']:.3g}"]


def floor_notes(report) -> list[str]:
    """Lines for a model written below the default quality floor (``--allow-low-fidelity``)."""
    below = (report.quality_floor or {}).get("below_default")
    return [f"below the default quality floor ({below}): written because of --allow-low-fidelity"] if below else []


logger = logging.getLogger(__name__)


def layer_rows(layers, allocation) -> list[LayerRow]:
    """Report rows from the allocator's choices (bytes_after from the encoder's byte model)."""
    rows = []
    for layer in layers:
        choice = allocation.choices[layer.name]
        params = int(np.prod(layer.shape)) if layer.shape else 1
        rows.append(LayerRow(
            name=layer.name,
            role=layer.role,
            shape=list(layer.shape),
            params=params,
            encoding=choice.kind,
            bits=(choice.bits / choice.quant.vector_dim if choice.kind == "vector" else choice.bits)
                 if choice.kind != "dense" else 8 * layer.itemsize,
            levels=(int(choice.quant.codebook.shape[0]) if choice.kind == "vector" else int(choice.quant.codebook.size))
                   if choice.quant is not None else None,
            sparsity=round(float(choice.sparsity), 4),
            bytes_before=layer.dense.bytes,
            bytes_after=choice.bytes,
            relative_error=round(float(np.sqrt(choice.distortion)), 6),
            sensitivity=float(layer.sensitivity),
        ))
    return rows


def format_table(rows: list[LayerRow], columns: list[tuple[str, str]]) -> str:
    """A plain aligned text table (fits an 80-120 column terminal); text cells are `printable`."""
    header = [title for _, title in columns]
    body = []
    for row in rows:
        cells = []
        for key, _ in columns:
            value = getattr(row, key)
            if key.startswith("bytes"):
                cells.append(format_size(value) if value is not None else "-")
            elif key == "sparsity" and value is not None:
                cells.append(f"{100 * value:.0f}%")
            elif key == "shape":
                cells.append("x".join(str(d) for d in value))
            elif isinstance(value, float):
                cells.append(f"{value:.3g}")
            else:
                cells.append("-" if value is None else printable(str(value)))
        body.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(header)]
    name_width = min(widths[0], 40)
    widths[0] = name_width

    def line(cells):
        first = cells[0] if len(cells[0]) <= name_width else "..." + cells[0][-(name_width - 3):]
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join([first.ljust(name_width), *rest])

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in body)])


COMPRESS_COLUMNS = [("name", "layer"), ("shape", "shape"), ("params", "params"), ("encoding", "encoding"),
                    ("bits", "bits"), ("sparsity", "sparsity"), ("bytes_before", "before"), ("bytes_after", "after")]


def weight_row(weight: StoredWeight) -> LayerRow:
    """The one per-weight row of every view (compress summary and --report, `inspect`, the HTML
    report): measured on the saved model.

    bytes_before: the weight stored dense (parameters x item size of its type); bytes_after: the
    tensor data it is stored in (`StoredWeight.stored_bytes`). Graph nodes, names, metadata and
    shared decode constants are the file's other bytes.
    """
    array = weight.array
    itemsize = weight.itemsize or array.itemsize
    distinct = int(np.unique(array).size) if array.size <= 50_000_000 else None
    if weight.ids is not None:
        bits = _row_bits(weight)
    elif weight.encoding == "grouped":
        bits = _grouped_bits(weight)
    elif weight.encoding == "vector":
        bits = _vector_bits(weight)
    elif weight.encoding == "scaled":
        bits = _scaled_bits(weight)
    else:
        bits = encoding.bits_for(distinct) if weight.encoding != "dense" and distinct else 8 * itemsize
    return LayerRow(
        name=weight.label,
        stored_name=weight.name,
        role=weight.role,
        shape=list(array.shape),
        params=int(array.size),
        encoding=weight.encoding,
        bits=bits,
        levels=distinct,
        sparsity=float(np.count_nonzero(array == 0) / max(array.size, 1)),
        bytes_before=itemsize * int(array.size),
        bytes_after=weight.stored_bytes,
    )


def inspect_weights(model: ir.Model) -> list[StoredWeight]:
    """`stored_weights` of any model, as `compress` sees it: canonicalized first (in place), so
    weights held in `Constant` nodes, in functions and in `If`/`Loop` subgraphs are listed like
    initializers."""
    if not holds_tensors(model):  # nothing to list: skip canonicalizing what may be a large graph
        return []
    try:
        model = canonicalize(model, check_weights=False)
    except MemoryError:
        raise
    except Exception as error:  # inspection is best-effort: show the model as stored
        logger.warning("could not canonicalize the model (%s); listing its weights as stored",
                       str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__)
    return stored_weights(model)


def inspect_model(model: ir.Model) -> list[LayerRow]:
    """Per-weight rows (`weight_row`) for any model; `onnxcomp inspect`."""
    return [weight_row(weight) for weight in inspect_weights(model)]


def compressed_rows(data: bytes, layers, allocation) -> list[LayerRow]:
    """The compress report's rows: `inspect_model` of the saved file's bytes, plus what the
    allocator knew of each weight it priced (planned relative error, sensitivity)."""
    import onnx

    rows = inspect_model(ir.serde.deserialize_model(onnx.ModelProto.FromString(data)))
    planned = {layer.name: layer for layer in layers}
    for row in rows:
        layer = planned.get(row.name)
        choice = allocation.choices.get(row.name) if layer is not None else None
        if choice is not None:
            row.relative_error = round(float(np.sqrt(choice.distortion)), 6)
            row.sensitivity = float(layer.sensitivity)
    return rows


def _row_bits(weight: StoredWeight) -> int:
    """Code width of a run-time row-decoded table: K of its [G, K] codebooks."""
    tables = [s.const_value for s in weight.sources if s.const_value is not None and s.const_value.dtype == ir.DataType.FLOAT]
    table = next((t for t in tables if len(t.shape) == 2), None)
    return 32 if table is None else encoding.bits_for(int(table.shape[1]))


def _scaled_bits(weight: StoredWeight) -> int:
    """Code width of a per-channel-scaled lookup: its codebook's entries (the scales, one per
    channel, excluded), or for a uniform grid the width its packed codes take."""
    arrays = [s.const_value for s in weight.sources if s.const_value is not None]
    codebooks = [a for a in arrays if a.dtype == ir.DataType.FLOAT and len(a.shape) == 1 and a.size > 1]
    if codebooks:
        return encoding.bits_for(max(a.size for a in codebooks))
    shifts = [a.numpy().ravel() for a in arrays if a.dtype in _WORDS and len(a.shape) == 2 and a.shape[1] == 1 and a.size > 1]
    steps = {int(d) for shift in shifts for d in np.diff(shift.astype(np.int64))}
    if len(steps) == 1:  # the packed fields' right shifts: 0, bits, 2 bits, ...
        return steps.pop()
    codes = max((a.nbytes for a in arrays if a.dtype in _WORDS), default=0)
    size = int(weight.array.size)
    return next((bits for bits in range(1, 9) if encoding.choose_packing(size, bits).payload_bytes >= codes), 8)


_WORDS = (ir.DataType.UINT8, ir.DataType.UINT32, ir.DataType.UINT64)


def _vector_bits(weight: StoredWeight) -> float:
    """Bits per weight of a vector lookup: code bits / vector width (codebook [K, dim])."""
    tables = [s.const_value.numpy() for s in weight.sources if s.const_value is not None and s.const_value.dtype == ir.DataType.FLOAT]
    table = next((t for t in tables if t.ndim == 2), None)
    return 32 if table is None else encoding.bits_for(table.shape[0]) / table.shape[1]


def _grouped_bits(weight: StoredWeight) -> int:
    """Code width of a grouped lookup: codebook entries per group (row groups: the [G, K]
    codebooks' K; column groups: codebooks / distinct offsets)."""
    arrays = [s.const_value.numpy() for s in weight.sources if s.const_value is not None]
    offsets = [a for a in arrays if a.dtype == np.int32 and a.ndim == 2]
    tables = [a for a in arrays if a.dtype == np.float32]
    if not offsets and len(tables) == 1 and tables[0].ndim == 2:  # row groups: [G, K] codebooks
        return encoding.bits_for(tables[0].shape[1])
    if len(offsets) != 1 or len(tables) != 1:
        return 32
    return encoding.bits_for(tables[0].size // max(np.unique(offsets[0]).size, 1))


def inspect_summary(rows: list[LayerRow], file_bytes: int) -> str:
    weights = sum(r.bytes_after for r in rows)
    params = sum(r.params for r in rows)
    per_parameter = f" ({8 * file_bytes / params:.2f} bits per parameter)" if params else \
        " (no weights: the bytes are graph structure, other tensors or operator attributes, e.g. a tree ensemble's)"
    return (f"{len(rows)} weights, {params:,} parameters, stored in {format_size(weights)}; "
            f"file {format_size(file_bytes)}{per_parameter}")
