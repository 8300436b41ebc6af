"""model.limits: the bounds checked on the protobuf before any work (node count, subgraph depth,
Loop trip counts and endless loops, the size of one value from declared and inferred shapes),
sparse initializers made dense with their checks, and the shape-only copy of a graph. The CLI's
refusals of such files are in tests/test_hostile.py."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.errors import OnnxcompError
from onnxcomp.model import limits


def _model(nodes, inputs=(), outputs=(), initializers=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "main", list(inputs), list(outputs), initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def _info(name: str, shape, elem_type: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def _loop_body(condition_out: str = "cond_out", changes_condition: bool = True) -> onnx.GraphProto:
    nodes = [helper.make_node("Not", ["cond_in"], [condition_out])] if changes_condition else \
        [helper.make_node("Identity", ["cond_in"], [condition_out])]
    nodes.append(helper.make_node("Identity", ["v_in"], ["v_out"]))
    return helper.make_graph(nodes, "body", [_info("i", [], TensorProto.INT64), _info("cond_in", [], TensorProto.BOOL),
                                             _info("v_in", [1])],
                             [_info(condition_out, [], TensorProto.BOOL), _info("v_out", [1])])


def _loop_model(trips_input: str, initializers=(), extra_nodes=(), body=None) -> onnx.ModelProto:
    loop = helper.make_node("Loop", [trips_input, "cond", "v"], ["v_final"], name="spin", body=body or _loop_body())
    return _model([*extra_nodes, loop], [_info("v", [1])], [_info("v_final", [1])],
                  [numpy_helper.from_array(np.array(True), "cond"), *initializers])


def test_loop_trip_count_from_an_initializer_or_constant_node():
    limits.check_graph(_loop_model("n", [numpy_helper.from_array(np.array(limits.MAX_LOOP_TRIPS, np.int64), "n")]))
    too_many = _loop_model("n", [numpy_helper.from_array(np.array(limits.MAX_LOOP_TRIPS + 1, np.int64), "n")])
    with pytest.raises(OnnxcompError, match=r"Loop node 'spin' runs 100,001 iterations; the limit is 100,000"):
        limits.check_graph(too_many)
    constant = helper.make_node("Constant", [], ["n"], value=numpy_helper.from_array(np.array(10**15, np.int64)))
    with pytest.raises(OnnxcompError, match=r"runs 1,000,000,000,000,000 iterations"):
        limits.check_graph(_loop_model("n", extra_nodes=[constant]))


def test_loop_without_trip_count_must_change_its_condition():
    limits.check_graph(_loop_model(""))  # the body negates the condition
    with pytest.raises(OnnxcompError, match=r"Loop node 'spin' has no trip count and its body never changes the loop condition"):
        limits.check_graph(_loop_model("", body=_loop_body(changes_condition=False)))
    with pytest.raises(OnnxcompError, match="never ends"):
        limits.check_graph(_loop_model("", body=_loop_body(condition_out="cond_in")))


def test_trip_count_of_an_outer_graph_is_seen_inside_a_body():
    inner = _loop_body()
    inner.node.append(helper.make_node("Loop", ["n", "c2", "v_in"], ["unused"], name="inner", body=_loop_body()))
    inner.initializer.append(numpy_helper.from_array(np.array(True), "c2"))
    model = _loop_model("", [numpy_helper.from_array(np.array(10**6, np.int64), "n")], body=inner)
    with pytest.raises(OnnxcompError, match=r"Loop node 'inner' runs 1,000,000 iterations"):
        limits.check_graph(model)


def _nested_ifs(depth: int) -> onnx.ModelProto:
    def branch(level: int) -> onnx.GraphProto:
        if level == depth:
            node = helper.make_node("Identity", ["x"], [f"y{level}"])
        else:
            node = helper.make_node("If", ["c"], [f"y{level}"], then_branch=branch(level + 1), else_branch=branch(level + 1))
        return helper.make_graph([node], f"level{level}", [], [_info(f"y{level}", [1])])

    top = helper.make_node("If", ["c"], ["y"], then_branch=branch(1), else_branch=branch(1))
    return _model([top], [_info("c", [], TensorProto.BOOL), _info("x", [1])], [_info("y", [1])])


def test_subgraph_depth_is_bounded():
    limits.check_graph(_nested_ifs(limits.MAX_SUBGRAPH_DEPTH))
    with pytest.raises(OnnxcompError, match=r"subgraph 'level13' is nested 13 deep .* the limit is 12"):
        limits.check_graph(_nested_ifs(limits.MAX_SUBGRAPH_DEPTH + 1))


def test_node_count_counts_every_graph(monkeypatch):
    monkeypatch.setattr(limits, "MAX_NODES", 7)
    limits.check_graph(_nested_ifs(2))  # one If, two in its branches, four Identity nodes in theirs
    with pytest.raises(OnnxcompError, match=r"the model has more than 7 nodes \(graph 'level3'\); the limit is 7"):
        limits.check_graph(_nested_ifs(3))


def test_value_sizes_from_declared_and_inferred_shapes():
    constant_of_shape = _model(
        [helper.make_node("ConstantOfShape", ["shape"], ["big"]), helper.make_node("Add", ["x", "big"], ["y"])],
        [_info("x", [1])], [_info("y", None)],
        [numpy_helper.from_array(np.array([1 << 20, 128], np.int64), "shape")])
    with pytest.raises(OnnxcompError, match=r"value 'big' of graph 'main' is declared or inferred as \[1048576, 128\] "
                                            r"\(536,870,912 B\); the limit for one value is 268,435,456 B"):
        limits.check_value_sizes(constant_of_shape, 1000)
    limits.check_value_sizes(constant_of_shape, 1 << 30)  # a model that large may hold values that large
    declared = _model([helper.make_node("Relu", ["x"], ["y"])], [_info("x", ["N", 1 << 27])], [_info("y", ["N", 1 << 27])])
    with pytest.raises(OnnxcompError, match=r"value 'x' .* \['N', 134217728\] \(536,870,912 B\)"):
        limits.check_value_sizes(declared, 0)


def test_value_sizes_see_through_small_constant_arithmetic():
    """Range(0, 30000 * 30000) from two small constants: folded so that shape inference sees the limit."""
    model = _model(
        [helper.make_node("Mul", ["a", "a"], ["limit"]), helper.make_node("Range", ["zero", "limit", "one"], ["r"]),
         helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT)],
        [], [_info("y", None)],
        [numpy_helper.from_array(np.array(30000, np.int64), name) for name in ("a",)]
        + [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(1, np.int64), "one")])
    with pytest.raises(OnnxcompError, match=r"value 'r' .* \[900000000\] \(7,200,000,000 B\)"):
        limits.check_value_sizes(model, 0)


def test_large_initializers_are_not_values_and_are_stripped_for_inference():
    weight = numpy_helper.from_array(np.zeros((64, 64), np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    model = _model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Reshape", ["h", "shape"], ["y"])],
                   [_info("x", ["N", 64])], [_info("y", None)], [weight, shape])
    limits.check_value_sizes(model, 0)
    stripped = limits.shape_only(model.graph)
    assert [t.name for t in stripped.initializer] == ["shape"]
    assert [(v.name, [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]) for v in stripped.input] == \
        [("x", ["N", 64]), ("w", [64, 64])]
    assert list(stripped.node) == list(model.graph.node) and len(model.graph.initializer) == 2


def _sparse(values: np.ndarray, indices: np.ndarray, dims) -> onnx.SparseTensorProto:
    return helper.make_sparse_tensor(numpy_helper.from_array(values, "s"), numpy_helper.from_array(indices), dims)


@pytest.mark.parametrize("indices", [np.array([1, 5]), np.array([[0, 1], [1, 2]])])
def test_densify_sparse_initializers(indices):
    graph = _model([]).graph
    assert not limits.densify_sparse_initializers(graph)
    graph.sparse_initializer.append(_sparse(np.array([2.0, 3.0], np.float32), indices.astype(np.int64), [2, 3]))
    assert limits.densify_sparse_initializers(graph)
    assert not graph.sparse_initializer
    (dense,) = graph.initializer
    assert dense.name == "s" and numpy_helper.to_array(dense).tolist() == [[0, 2, 0], [0, 0, 3]]


@pytest.mark.parametrize(("values", "indices", "dims", "message"), [
    (np.array([1.0], np.float32), np.array([6]), [2, 3], r"'s' has indices outside its shape \[2, 3\]"),
    (np.array([1.0], np.float32), np.array([[2, 0]]), [2, 3], "indices outside its shape"),
    (np.array([1.0, 2.0], np.float32), np.array([0]), [2, 3], r"\(1,\) indices do not fit 2 values of rank 2"),
    (np.array([1.0], np.float32), np.array([0]), [1 << 20, 1 << 9], r"would take 2,147,483,648 B dense \(shape \[1048576, 512\]\)"),
    (np.array([True]), np.array([0]), [-1, 3], "negative dimension"),
])
def test_densify_refuses_bad_sparse_initializers(values, indices, dims, message):
    graph = _model([]).graph
    graph.sparse_initializer.append(_sparse(values, indices.astype(np.int64), dims))
    with pytest.raises(OnnxcompError, match=message):
        limits.densify_sparse_initializers(graph)
