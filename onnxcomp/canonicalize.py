"""Canonicalization: bring any imported graph into the form the compression passes expect.

Only existing onnx_ir / onnxscript passes and rewrite rules are used here.
"""

from __future__ import annotations

import logging

import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript import rewriter
from onnxscript.rewriter.rules.common import (
    fuse_batchnorm_into_conv_rule,
    fuse_batchnorm_into_conv_transpose_rule,
    fuse_batchnorm_into_gemm_rule,
)

from onnxcomp.io import is_streamed
from onnxcomp.weights import check_finite, find_weights

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


def canonicalize(model: ir.Model) -> ir.Model:
    """Convert opsets below 11 up, inline functions, lift Constant-node weights (subgraphs
    too) to main-graph initializers, fold BatchNormalization into the preceding Conv/Gemm where
    exact, de-duplicate initializers and drop unused nodes. Graph inputs and outputs keep their names and types.
    Raises OnnxcompError if a weight holds NaN or infinity.
    """
    model = upgrade_opset(model)
    streamed = is_streamed(model)
    pipeline = ir.passes.Sequential(
        common.InlinePass(),
        common.RemoveUnusedFunctionsPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=16),
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.RemoveInitializersFromInputsPass(),
        common.DeduplicateHashedInitializersPass(**({"size_limit": STREAMED_DEDUPE_LIMIT} if streamed else {})),
        common.RemoveUnusedNodesPass(),
    )
    model = pipeline(model).model
    model = rewriter.rewrite(model, pattern_rewrite_rules=BATCHNORM_RULES)
    check_finite(find_weights(model))
    return model
