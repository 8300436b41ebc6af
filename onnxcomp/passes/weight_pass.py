"""What onnxcomp's passes share: the result with statistics, and the contract every pass that
changes weights keeps (the model's interface is the same after it as before)."""

from __future__ import annotations

import dataclasses

import onnx_ir as ir


@dataclasses.dataclass
class StatsPassResult(ir.passes.PassResult):
    """A PassResult that also reports what the pass did, one row per weight it touched."""

    rows: list[dict] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        return f"{len(self.rows)} weights changed"


def interface(model: ir.Model) -> list[tuple]:
    """Name, type and declared shape of each graph input and output, in order: what an
    application binds to, which no onnxcomp pass may change."""
    return [
        (v.name, v.dtype, None if v.shape is None else tuple(v.shape.dims))
        for v in [*model.graph.inputs, *model.graph.outputs]
    ]


class WeightPass(ir.passes.InPlacePass):
    """An in-place pass that rewrites weights (their values, or how they are stored and decoded).

    requires: the model imports the default ONNX opset (the decode subgraphs and rewrites are
    standard ops). ensures: the graph's inputs and outputs (names, order, types, declared
    shapes) are those it had before the pass.
    """

    _interface_before: list[tuple] | None = None

    def requires(self, model: ir.Model) -> None:
        if "" not in model.opset_imports and "ai.onnx" not in model.opset_imports:
            raise ir.passes.PreconditionError(f"{type(self).__name__}: the model imports no ONNX opset")
        self._interface_before = interface(model)

    def ensures(self, model: ir.Model) -> None:
        before, self._interface_before = self._interface_before, None
        if before is not None and interface(model) != before:
            raise ir.passes.PostconditionError(f"{type(self).__name__} changed the model's inputs or outputs")
