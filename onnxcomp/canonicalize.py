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

logger = logging.getLogger(__name__)

BATCHNORM_RULES = [fuse_batchnorm_into_conv_rule, fuse_batchnorm_into_conv_transpose_rule, fuse_batchnorm_into_gemm_rule]


def canonicalize(model: ir.Model) -> ir.Model:
    """Inline functions, lift Constant-node weights (subgraphs too) to main-graph initializers,
    fold BatchNormalization into the preceding Conv/Gemm where exact, de-duplicate
    initializers and drop unused nodes. Graph inputs and outputs keep their names and types.
    """
    pipeline = ir.passes.Sequential(
        common.InlinePass(),
        common.RemoveUnusedFunctionsPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=False, size_limit=16),
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.RemoveInitializersFromInputsPass(),
        common.DeduplicateHashedInitializersPass(),
        common.RemoveUnusedNodesPass(),
    )
    model = pipeline(model).model
    model = rewriter.rewrite(model, pattern_rewrite_rules=BATCHNORM_RULES)
    return model
