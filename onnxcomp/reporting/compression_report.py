"""The compression report as types: one `LayerRow` per weight, one `CompressionReport` per run.

The pipeline's stages fill a `CompressionReport`; the command line prints it, writes it as JSON
(`to_dict`), the HTML report and the sweep read it (the sweep's children send it back as JSON:
`from_dict`). The JSON keeps the shape it always had: the same keys, the optional ones absent where
they do not apply (no `accuracy` without labels, no `training` without fine-tuning).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from onnxcomp.modelfile import atomic_write

# Row fields left out of the JSON when unknown (a row of `inspect`, or of a weight the allocator
# did not price, has no planned error or sensitivity).
_ROW_OPTIONAL = ("stored_name", "relative_error", "sensitivity", "measured_relative_error")


@dataclasses.dataclass
class LayerRow:
    """One weight of a model as stored (`onnxcomp.reporting.report.weight_row`), plus what the
    allocator knew of it when it priced it.

    bytes_before: the weight stored dense (parameters x item size of its type); bytes_after: the
    tensor data it is stored in. `bits` is the code width (32 for dense float32; a fraction for
    vector codes: bits per weight). `relative_error` is the allocator's planned error (RMS error /
    RMS weight), `sensitivity` the measured output distortion per unit of weight distortion,
    `measured_relative_error` (weights checked one at a time, models too large to run whole) the
    decoded weight's error as ONNX Runtime computes it.
    """

    name: str
    shape: list[int]
    params: int
    encoding: str
    bits: float
    bytes_before: int
    bytes_after: int
    role: str | None = None
    levels: int | None = None  # distinct values (a vector lookup: its codebook's vectors)
    sparsity: float | None = None
    stored_name: str | None = None  # the initializer's name in the saved file, where it differs
    relative_error: float | None = None
    sensitivity: float | None = None
    measured_relative_error: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)
                if not (field.name in _ROW_OPTIONAL and getattr(self, field.name) is None)}

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> LayerRow:
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in row.items() if key in known})


# Report fields left out of the JSON when they do not apply to a run.
_REPORT_OPTIONAL = ("initializer_inputs", "neurons", "quantized_left", "training", "accuracy", "streamed",
                    "unverified_reason", "quality_floor", "peak_rss_bytes", "opset", "passes", "output", "input")


@dataclasses.dataclass
class CompressionReport:
    """What one compression did and measured.

    fidelity: `onnxcomp.reporting.verify.fidelity` of the compressed model's outputs against the
    original's (cosine, top-1 agreement, errors per output; `generated_inputs` when measured on
    made-up inputs), or, where the model was not run (`verified` False), the decoded weights'
    errors (`mode: "weights"`). attempts: the allocator's tries (target, estimated and real bytes).
    seconds: per stage and `total`. quality_floor: `onnxcomp.reporting.floor.check_floor`'s entry.
    """

    input_bytes: int
    output_bytes: int
    target_bytes: int
    ratio: float
    layers: list[LayerRow]
    fidelity: dict[str, Any]
    attempts: list[dict[str, Any]]
    verified: bool
    metadata_bytes: int
    seconds: dict[str, float]
    initializer_inputs: dict[str, Any] | None = None  # graph inputs with initializer defaults: kept or removed
    neurons: dict[str, Any] | None = None  # neuron elimination (VIB): kept neurons per group
    quantized_left: list[dict[str, Any]] | None = None  # already-quantized weights kept as they are
    training: dict[str, Any] | None = None  # fine-tuning: method, epochs, samples
    accuracy: dict[str, Any] | None = None  # with labels: original and compressed accuracy
    streamed: bool | None = None  # weights encoded one at a time (True), or the unverified path (False)
    unverified_reason: str | None = None  # why no input ran the model
    quality_floor: dict[str, Any] | None = None
    peak_rss_bytes: int | None = None
    opset: dict[str, int] | None = None  # the default-domain opset, where the output's differs: input, output
    passes: dict[str, Any] | None = None  # per graph pass of the kept build: weights changed (and encoded bytes)
    output: str | None = None
    input: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (`onnxcomp compress --report`)."""
        report: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in _REPORT_OPTIONAL and value is None:
                continue
            report[field.name] = [row.to_dict() for row in value] if field.name == "layers" else value
        return report

    def save(self, path: str | Path) -> None:
        """Write the JSON form to `path`, whole or not at all."""
        atomic_write(Path(path), lambda handle: handle.write(json.dumps(self.to_dict(), indent=2).encode()))

    @classmethod
    def from_dict(cls, report: dict[str, Any]) -> CompressionReport:
        known = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in report.items() if key in known}
        values["layers"] = [LayerRow.from_dict(row) for row in report.get("layers", [])]
        return cls(**values)
