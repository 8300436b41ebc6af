"""Clean up: drop what is not needed to run, and shorten names that cost bytes.

What stays by default: the model-level `metadata_props` (applications read label maps,
character dictionaries, strides and input sizes from them) and the interface - graph input and
output names, order, types and declared shapes. What goes unless `keep_metadata`: doc strings,
graph/node/value metadata (e.g. exporter stack traces), `value_info` of intermediate values and
the original internal names.
"""

from __future__ import annotations

import logging

import onnx
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
    """Rename internal values and initializers to short base-36 names and drop node names.

    Graph inputs and outputs keep their names (the model's interface never changes). Names in
    subgraphs are shortened too; outer-scope references follow because they are the same values.
    Slice nodes keep a short unique name: ONNX Runtime's GatherSliceToSplitFusion (1.19 to at
    least 1.21) names the Split it makes after the Slice, so two such fusions of unnamed Slices
    give two nodes named "/GatherSliceToSplitFusion/" and the model does not load (silero-vad's
    OpenVINO export, compressed).
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        interface = {v.name for v in model.graph.inputs} | {v.name for v in model.graph.outputs}
        counter = slices = 0
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
            if node.op_type == "Slice" and node.domain in ("", "ai.onnx"):
                name = "_" + _short(slices)  # node names are their own namespace
                slices += 1
                modified |= node.name != name
                node.name = name
            elif node.name:
                node.name = None
                modified = True
            for output in node.outputs:
                if output.name not in interface and not output.is_graph_output():
                    name = fresh()
                    modified |= output.name != name
                    output.name = name
        return ir.passes.PassResult(model, modified)


class ClearValueInfoPass(ir.passes.InPlacePass):
    """Forget the declared types, shapes, doc strings and metadata of intermediate values.

    Those are what a saved model stores as `value_info`; ONNX Runtime infers them again at load.
    Graph inputs, outputs and initializers (of the main graph and of every subgraph) keep theirs:
    they are the interface, and a subgraph needs its inputs' and outputs' types.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in ir.traversal.RecursiveGraphIterator(model.graph):
            for value in node.outputs:
                if value.is_graph_output() or value.is_initializer():
                    continue
                if value.type is not None or value.shape is not None or value.doc_string or value.metadata_props:
                    value.type = None
                    value.shape = None
                    value.doc_string = None
                    value.metadata_props.clear()
                    modified = True
        return ir.passes.PassResult(model, modified)


def clean_up(model: ir.Model, keep_metadata: bool = False, shorten_names: bool = True) -> ir.Model:
    """Remove unused nodes, initializers, functions and opsets, then sort the nodes.

    Without `keep_metadata` also drop doc strings, graph/node/value metadata and intermediate
    `value_info`, and shorten internal names (`shorten_names`). Model-level `metadata_props`
    and the graph's inputs and outputs are always kept.
    """
    passes: list[ir.passes.PassBase] = [
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedFunctionsPass(),
        common.RemoveUnusedOpsetsPass(),
    ]
    if not keep_metadata:
        passes.append(common.ClearMetadataAndDocStringPass())
        passes.append(ClearValueInfoPass())
    # Sort first: onnx_ir's sort re-names unnamed nodes, and short names must be the last word.
    passes.append(common.TopologicalSortPass())
    if shorten_names:
        passes.append(ShortenNamesPass())
    else:  # names kept: ONNX Runtime refuses two nodes (or values) of one name, whoever made them
        passes.append(common.NameFixPass())
    model = ir.passes.Sequential(*passes)(model).model
    if not keep_metadata:
        model.producer_name = "onnxcomp"
        model.producer_version = None
        model.doc_string = None
        model.graph.name = "g"
        model.graph.doc_string = None
        model.graph.metadata_props.clear()
    return model


def _field_bytes(payload: int) -> int:
    """Bytes of a length-delimited protobuf field with a one-byte tag (field number < 16)."""
    length_bytes = 1
    while payload >= 1 << (7 * length_bytes):
        length_bytes += 1
    return 1 + length_bytes + payload


def _entries_bytes(props) -> int:
    return sum(_field_bytes(onnx.StringStringEntryProto(key=k, value=v).ByteSize()) for k, v in props.items())


def _text_bytes(text: str | None) -> int:
    return _field_bytes(len(text.encode())) if text else 0


def metadata_bytes(model: ir.Model) -> int:
    """Serialized bytes a model spends on metadata: model-level `metadata_props`, doc strings,
    graph/node/function/value metadata and the `value_info` of intermediate values.

    Counted from the IR, without serializing the weights (exact up to the few bytes by which the
    enclosing graph's length prefix grows).
    """
    total = _entries_bytes(model.metadata_props) + _text_bytes(model.doc_string)
    graphs = {id(model.graph): model.graph}
    for function in model.functions.values():
        total += _entries_bytes(function.metadata_props) + _text_bytes(function.doc_string)
        for node in function:
            total += _entries_bytes(node.metadata_props) + _text_bytes(node.doc_string)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        total += _entries_bytes(node.metadata_props) + _text_bytes(node.doc_string)
        if node.graph is not None:
            graphs.setdefault(id(node.graph), node.graph)
        for value in node.outputs:
            if value.name and not value.is_graph_output() and not value.is_initializer() and (
                    value.type is not None or value.shape is not None or value.doc_string or value.metadata_props):
                total += _field_bytes(ir.serde.serialize_value(value).ByteSize())
    for graph in graphs.values():
        total += _entries_bytes(graph.metadata_props) + _text_bytes(graph.doc_string)
    return total
