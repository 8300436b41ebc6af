"""Shared helpers of the pass tests: interface, validity and exact-decode checks in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp.encodings import encoding
from onnxcomp.passes.cluster_weights import ClusterWeightsPass
from onnxcomp.passes.prune_weights import PruneWeightsPass
from tests.conftest import run, to_proto

CODE_WORD_TYPES = {ir.DataType.UINT8, ir.DataType.UINT32, ir.DataType.UINT64}
SHAPE_TYPES = {ir.DataType.INT64, ir.DataType.INT32}


def arrays(model: ir.Model) -> dict[str, np.ndarray]:
    return {name: value.const_value.numpy().copy() for name, value in model.graph.initializers.items()}


def op_types(model: ir.Model) -> list[str]:
    return [node.op_type for node in ir.traversal.RecursiveGraphIterator(model.graph)]


def interface(model: ir.Model) -> tuple[list[str], list[str]]:
    return [v.name for v in model.graph.inputs], [v.name for v in model.graph.outputs]


def check_valid(model: ir.Model) -> onnx.ModelProto:
    proto = to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    return proto


def feeds_for(model: ir.Model, rng: np.random.Generator, batch: int = 5) -> dict[str, np.ndarray]:
    value = model.graph.inputs[0]
    return {value.name: rng.standard_normal((batch, value.shape[1])).astype(np.float32)}


def weight_input(model: ir.Model, op_type: str = "MatMul", index: int = 1) -> ir.Value:
    node = next(n for n in model.graph if n.op_type == op_type)
    return node.inputs[index]


def prune_and_cluster(model: ir.Model, sparsity: float | None, bits: int) -> ir.Model:
    if sparsity:
        PruneWeightsPass(sparsity=sparsity)(model)
    ClusterWeightsPass(bits=bits)(model)
    return model


def assert_encoded_like(reference: ir.Model, encoded: ir.Model, rng: np.random.Generator, exact: bool = True) -> None:
    """Same interface, valid, and ORT outputs (and every decoded MatMul weight) match the reference.

    `exact=False` is for the linear form, rebuilt as (code - zero) * scale in float32: weights
    within 1e-6, outputs (sums of up to 64 products) within 1e-5.
    """
    assert interface(encoded) == interface(reference)
    check_valid(encoded)
    feeds = feeds_for(reference, rng)
    weight_names = [n.inputs[1].name for n in encoded.graph if n.op_type in ("MatMul", "Gemm")]
    reference_names = [n.inputs[1].name for n in reference.graph if n.op_type in ("MatMul", "Gemm")]
    expected_outputs = run(reference, feeds)
    extra = sorted(set(weight_names))
    actual = run(encoded, feeds, extra_outputs=extra)
    actual_outputs, decoded = actual[: len(expected_outputs)], dict(zip(extra, actual[len(expected_outputs):]))
    pairs = [(decoded[name], reference.graph.initializers[ref].const_value.numpy(), 1e-6)
             for name, ref in zip(weight_names, reference_names)]
    pairs += [(got, expected, 1e-5) for got, expected in zip(actual_outputs, expected_outputs)]
    for got, expected, tolerance in pairs:
        assert got.shape == expected.shape
        if exact:
            assert np.array_equal(got, expected)
        else:
            np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance)


def new_initializers(before: ir.Model, after: ir.Model) -> dict[str, ir.Value]:
    return {name: v for name, v in after.graph.initializers.items() if name not in before.graph.initializers}


def assert_codes_stored_narrow(reference: ir.Model, encoded: ir.Model, weight_name: str) -> None:
    """The float weight is gone; what replaced it is uint words, a small float codebook/scale,
    and a few shape constants."""
    assert weight_name not in encoded.graph.initializers
    assert "DequantizeLinear" not in op_types(encoded)
    added = new_initializers(reference, encoded)
    words = [v for v in added.values() if v.dtype in CODE_WORD_TYPES and v.const_value.size > 1]
    assert words, "no packed code initializer"
    for value in added.values():
        size = value.const_value.size
        if value.dtype == ir.DataType.FLOAT:
            assert size <= encoding.MAX_CODEBOOK, f"{value.name} looks like a dense weight ({size} floats)"
        elif value.dtype in SHAPE_TYPES:
            assert size <= 4, f"{value.name}: {size} int32/int64 entries"
        else:
            assert value.dtype in CODE_WORD_TYPES, f"{value.name} stored as {value.dtype}"
    payload = sum(v.const_value.nbytes for v in added.values())
    weight = reference.graph.initializers[weight_name].const_value
    assert payload < weight.nbytes


def assert_shared_weight_decoded_once(result, model: ir.Model, decode_op: str) -> ir.Value:
    """A weight read by two MatMuls is encoded once (one row, one `decode_op`), and both read the
    same decoded value, which is returned."""
    assert [row["name"] for row in result.rows] == ["w"]
    assert op_types(model).count(decode_op) == 1
    first, second = [n for n in model.graph if n.op_type == "MatMul"]
    assert first.inputs[1] is second.inputs[1]
    return first.inputs[1]
