"""What a compression run is asked for and what it returns."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxcomp.reporting.compression_report import CompressionReport


@dataclasses.dataclass
class CompressOptions:
    target_bytes: int
    keep_metadata: bool = False
    sensitivity: bool = True
    seed: int = 0
    min_fidelity: float | None = None  # per output: cosine, top-1 agreement for class scores (None: onnxcomp.reporting.floor defaults, 0: off)
    max_accuracy_drop: float | None = None  # percentage points, needs labels
    force: bool = False  # write even below the quality guards (the CLI's --allow-low-fidelity)
    epochs: int = 0  # > 0 with labelled or unlabelled --data: fine-tuning (see onnxcomp.training.retrain)
    batch_size: int = 64
    lr: float = 1e-3
    patience: int | None = None  # early stopping per training stage on the held-out metric
    epochs_given: bool = True  # False: `epochs` is the CLI default, skipped where fine-tuning cannot apply
    method: str = "auto"  # auto | prune | sws | admm | vib (see onnxcomp.training.retrain)
    vib_gamma: float = 1.6e-4  # VIB penalty weight per neuron group
    input_shapes: dict[str, tuple[int, ...]] = dataclasses.field(default_factory=dict)  # --input-shape NAME:D1,D2
    input_values: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # --input-value NAME=V
    equalize: bool = False  # cross-layer equalization before pricing (onnxcomp.passes.equalize)


@dataclasses.dataclass
class CompressResult:
    model: ir.Model
    data: bytes | None  # None: over protobuf's 2 GB limit, saved with external data
    report: CompressionReport
