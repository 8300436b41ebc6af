"""The contract of the passes that rewrite weights (onnxcomp.passes.weight_pass.WeightPass): they
need an ONNX opset, and leave the model's inputs and outputs as they found them."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxcomp.passes import (ClusterWeightsPass, InsertDequantizeLookupPass, PruneWeightsPass,
                             SubstituteSparseOpsPass)
from onnxcomp.passes.weight_pass import WeightPass, interface
from onnxcomp.passes.equalize import EqualizeCrossLayerPass
from tests.conftest import single_matmul


class RenamesOutput(WeightPass):
    """A faulty pass: renames the graph output while it 'rewrites weights'."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        model.graph.outputs[0].name = "renamed"
        return ir.passes.PassResult(model, modified=True)


class ChangesNothing(WeightPass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, modified=False)


@pytest.fixture
def model(rng) -> ir.Model:
    return single_matmul(rng.standard_normal((16, 8)).astype(np.float32))


def test_a_pass_that_changes_the_interface_fails_its_postcondition(model):
    with pytest.raises(ir.passes.PostconditionError, match="RenamesOutput changed the model's inputs or outputs"):
        RenamesOutput()(model)


def test_a_model_without_an_onnx_opset_fails_the_precondition(model):
    model.opset_imports.clear()
    with pytest.raises(ir.passes.PreconditionError, match="imports no ONNX opset"):
        ChangesNothing()(model)


def test_a_pass_that_keeps_the_interface_passes_and_can_run_again(model):
    before = interface(model)
    ChangesNothing()(model)
    ChangesNothing()(model)
    assert interface(model) == before


@pytest.mark.parametrize("make_pass", [
    lambda: PruneWeightsPass(sparsity=0.5), lambda: ClusterWeightsPass(bits=3), SubstituteSparseOpsPass,
    InsertDequantizeLookupPass, EqualizeCrossLayerPass,
])
def test_every_weight_pass_keeps_the_contract(model, make_pass):
    onnx_pass = make_pass()
    assert isinstance(onnx_pass, WeightPass)
    before = interface(model)
    onnx_pass(model)
    assert interface(model) == before
