"""PassResult with statistics, shared by onnxcomp's passes."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir


@dataclasses.dataclass
class StatsPassResult(ir.passes.PassResult):
    """A PassResult that also reports what the pass did, one row per weight it touched."""

    rows: list[dict] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.rows)} weights changed"
