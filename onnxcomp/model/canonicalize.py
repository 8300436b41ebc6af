"""Canonicalization: bring any imported graph into the form the compression passes expect.

Only existing onnx_ir / onnxscript passes and rewrite rules are used here.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging

import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript import rewriter
from onnxscript.rewriter.rules.common import (
    fuse_batchnorm_into_conv_rule,
    fuse_batchnorm_into_conv_transpose_rule,
    fuse_batchnorm_into_gemm_rule,
)

from onnxcomp.errors import OnnxcompError
from onnxcomp.modelfile import is_streamed
from onnxcomp.model.weights import check_finite, find_weights

logger = logging.getLogger(__name__)

BATCHNORM_RULES = [fuse_batchnorm_into_conv_rule, fuse_batchnorm_into_conv_transpose_rule, fuse_batchnorm_into_gemm_rule]


MIN_OPSET = 11  # decode subgraphs need BitShift (opset 11)
# Memory-mapped weights above this many entries are not hashed for de-duplication: hashing
# reads (maps) every one of them at once, and exporters tie large weights by name anyway.
STREAMED_DEDUPE_LIMIT = 1 << 20


def upgrade_opset(model: ir.Model) -> ir.Model:
    """Convert a model below opset 11 up to 11 (in place), if the converters can; otherwise
    leave it as it is for the caller to refuse."""
    version = model.opset_imports.get("")
    if version is None or version >= MIN_OPSET:
        return model
    from onnxscript import version_converter

    converter_logger = logging.getLogger("onnxscript.version_converter")
    level = converter_logger.level
    converter_logger.setLevel(logging.ERROR)  # it warns when falling back to onnx's C++ converter
    try:
        version_converter.convert_version(model, MIN_OPSET, fallback=True)
    except Exception as error:  # the converters raise assorted errors for unsupported ops
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        logger.warning("could not convert the model from opset %s to %s: %s", version, MIN_OPSET, reason)
        model.opset_imports[""] = version
    finally:
        converter_logger.setLevel(level)
    return model


@dataclasses.dataclass(frozen=True)
class InitializerInputs:
    """Main-graph inputs that also have an initializer: a default value the caller may override.

    Attributes:
        removed: inputs listed only by convention - an IR < 4 file (ONNX Runtime treats them as
            constants there: they cannot be fed) or a file listing every initializer as an input
            (an exporter's ``keep_initializers_as_inputs``). They become plain initializers and are
            compressed like any weight; the compressed model no longer lists them.
        kept: overridable defaults (IR >= 4, only some initializers listed): they stay inputs with
            their default values, stored dense, so a caller that feeds them still can.
    """

    removed: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, list[str]]:
        return {"removed": list(self.removed), "kept": list(self.kept)}


def initializer_inputs(model: ir.Model) -> InitializerInputs:
    """Which of the main graph's inputs with an initializer canonicalization removes or keeps."""
    names = tuple(v.name for v in model.graph.inputs if v.is_initializer())
    if not names:
        return InitializerInputs()
    if model.ir_version < 4 or len(names) == len(model.graph.initializers):
        return InitializerInputs(removed=names)
    return InitializerInputs(kept=names)


class RemoveConventionalInitializerInputsPass(ir.passes.InPlacePass):
    """Drop initializers from the graph inputs where they are listed by convention only.

    Subgraph inputs never need them; the main graph drops those `initializer_inputs` calls
    removed and keeps overridable defaults. An IR < 4 model is raised to IR 4, where initializers
    need not be inputs (the onnx checker rejects an IR 3 file whose initializers are not inputs).
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        removed = set(initializer_inputs(model).removed)
        modified = False
        for graph in model.graphs():
            main = graph is model.graph
            keep = [v for v in graph.inputs if not v.is_initializer() or (main and v.name not in removed)]
            if len(keep) != len(graph.inputs):
                graph.inputs.clear()
                graph.inputs.extend(keep)
                modified = True
        if removed and model.ir_version < 4:
            model.ir_version = 4
            modified = True
        return ir.passes.PassResult(model, modified)


def model_interface(model: ir.Model, without: tuple[str, ...] = ()) -> list[tuple]:
    """(kind, name, dtype, dims) of each graph input, then each output, in order; dims keep their
    `dim_param` names. `without` leaves out inputs (those `initializer_inputs` removes)."""
    def dims(shape: ir.Shape | None) -> tuple | None:
        return None if shape is None else tuple(d if isinstance(d, int) else str(d.value) for d in shape)

    return ([("input", v.name, v.dtype, dims(v.shape)) for v in model.graph.inputs if v.name not in without]
            + [("output", v.name, v.dtype, dims(v.shape)) for v in model.graph.outputs])


def check_interface(expected: list[tuple], model: ir.Model) -> None:
    """Raise OnnxcompError unless `model` has exactly the `expected` `model_interface`."""
    actual = model_interface(model)
    if actual != expected:
        before, after = next((a, b) for a, b in itertools.zip_longest(expected, actual) if a != b)
        raise OnnxcompError(f"internal error: compression changed the model's interface ({before} became {after}); "
                            "nothing written")


def _declared_interface(model: ir.Model) -> dict[str, tuple]:
    return {v.name: (v.type, v.shape) for v in (*model.graph.inputs, *model.graph.outputs)}


def _restore_interface(model: ir.Model, declared: dict[str, tuple]) -> None:
    """Put back the declared types and shapes of graph inputs and outputs: the opset converter's
    shape inference would otherwise replace e.g. a dim_param by the size it infers."""
    for value in (*model.graph.inputs, *model.graph.outputs):
        if value.name in declared:
            value.type, value.shape = declared[value.name]


def canonicalize(model: ir.Model, check_weights: bool = True) -> ir.Model:
    """Convert opsets below 11 up, inline functions, lift Constant-node weights (subgraphs
    too) to main-graph initializers, fold BatchNormalization into the preceding Conv/Gemm where
    exact, de-duplicate initializers and drop unused nodes. Graph inputs and outputs keep their names and types;
    inputs with an initializer are removed or kept as `initializer_inputs` says.
    Raises OnnxcompError if a weight holds NaN or infinity (unless `check_weights` is False, as
    for `onnxcomp inspect`, which shows any model).
    """
    declared = _declared_interface(model)
    model = upgrade_opset(model)
    streamed = is_streamed(model)
    pipeline = ir.passes.Sequential(
        RemoveConventionalInitializerInputsPass(),  # first: before lifting adds initializers
        common.InlinePass(),
        common.RemoveUnusedFunctionsPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=16),
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.DeduplicateHashedInitializersPass(**({"size_limit": STREAMED_DEDUPE_LIMIT} if streamed else {})),
        common.RemoveUnusedNodesPass(),
    )
    model = pipeline(model).model
    model = rewriter.rewrite(model, pattern_rewrite_rules=BATCHNORM_RULES)
    _restore_interface(model, declared)
    if check_weights:
        check_finite(find_weights(model))
    return model


def holds_tensors(model: ir.Model) -> bool:
    """Whether any graph of the model holds a tensor of two or more values (an initializer or a
    Constant node's): a model without one has nothing to compress, and is refused before
    ONNX Runtime and canonicalization spend on it (a 195 MB LightGBM export, parameters all in
    TreeEnsemble attributes, had taken 8.2 GB and 42 s to reach that refusal)."""
    graphs = {id(model.graph): model.graph}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.graph is not None:
            graphs.setdefault(id(node.graph), node.graph)
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attribute in node.attributes.values():  # value (a tensor), value_floats, value_ints, ...
                value = attribute.value
                if (value.size if hasattr(value, "numpy") else len(value) if isinstance(value, (list, tuple)) else 0) >= 2:
                    return True
    return any(value.const_value is not None and value.const_value.size >= 2
               for graph in graphs.values() for value in graph.initializers.values())
