"""CleanUpPass: drop what is not needed to run, and shorten names that cost bytes."""

from __future__ import annotations

import logging

import onnx_ir as ir
import onnx_ir.passes.common as common

logger = logging.getLogger(__name__)

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def _short(index: int) -> str:
    text = ""
    while True:
        index, digit = divmod(index, len(_ALPHABET))
        text = _ALPHABET[digit] + text
        if index == 0:
            return text


class ShortenNamesPass(ir.passes.InPlacePass):
    """Rename internal values, initializers and nodes to short base-36 names.

    Graph inputs and outputs keep their names (the model's interface never changes). Names in
    subgraphs are shortened too; outer-scope references follow because they are the same values.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        interface = {v.name for v in model.graph.inputs} | {v.name for v in model.graph.outputs}
        counter = 0
        modified = False

        def fresh() -> str:
            nonlocal counter
            while True:
                name = "_" + _short(counter)
                counter += 1
                if name not in interface:
                    return name

        initializers = list(model.graph.initializers.values())
        model.graph.initializers.clear()
        for value in initializers:
            if value.name not in interface:
                name = fresh()
                modified |= value.name != name
                value.name = name
        for value in initializers:
            model.graph.initializers[value.name] = value  # type: ignore[index]
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            if node.name:
                node.name = None
                modified = True
            for output in node.outputs:
                if output.name not in interface and not output.is_graph_output():
                    name = fresh()
                    modified |= output.name != name
                    output.name = name
        return ir.passes.PassResult(model, modified)


def clean_up(model: ir.Model, keep_metadata: bool = False, shorten_names: bool = True) -> ir.Model:
    """Remove unused nodes/initializers/opsets, doc strings and metadata (unless kept), sort."""
    passes: list[ir.passes.PassBase] = [
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedFunctionsPass(),
        common.RemoveUnusedOpsetsPass(),
    ]
    if not keep_metadata:
        passes.append(common.ClearMetadataAndDocStringPass())
    # Sort first: onnx_ir's sort re-names unnamed nodes, and short names must be the last word.
    passes.append(common.TopologicalSortPass())
    if shorten_names:
        passes.append(ShortenNamesPass())
    model = ir.passes.Sequential(*passes)(model).model
    if not keep_metadata:
        model.producer_name = "onnxcomp"
        model.producer_version = None
        model.doc_string = None
        model.metadata_props.clear()
        model.graph.name = "g"
        model.graph.doc_string = None
    return model
