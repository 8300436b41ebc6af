"""runtime.training_graph: the graph builder regularizers use (fresh names, opset-dependent
reductions, trainable parameters), and the forward training model build_training_graph makes -
its loss values against numpy, its inputs and outputs, the free batch dim, and the errors on
models and constraints it cannot train."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.errors import OnnxcompError
from onnxcomp.runtime.training_graph import (
    BATCH_DIM,
    LABELS_INPUT,
    SOFT_TARGETS_INPUT,
    GraphBuilder,
    LossSpec,
    PenaltyInputs,
    Regularizer,
    TrainingGraph,
    build_training_graph,
    free_batch_dimension,
)
from tests.conftest import run

HARD = LossSpec(hard_weight=1.0, soft_weight=0.0)


def classifier(opset: int = 17, batch: int | str = "N", extra_output: bool = False, weight_as_input: bool = False,
               logits_dims: list | None = None, logits_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """x [batch, 4] -> MatMul(w [4, 3]) -> Add(b) -> logits; optionally a second output (Relu of
    the logits through its own node) and w listed as a graph input too."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["logits"])]
    outputs = [helper.make_tensor_value_info("logits", logits_type, logits_dims or [batch, 3])]
    if extra_output:
        nodes.append(helper.make_node("Relu", ["h"], ["extra"]))
        outputs.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, [batch, 3]))
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])]
    if weight_as_input:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3]))
    graph = helper.make_graph(nodes, "classifier", inputs, outputs, [
        numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(np.array([0.1, -0.2, 0.3], np.float32), "b")])
    graph.value_info.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, [batch, 3]))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def build(model: onnx.ModelProto, loss: LossSpec = HARD, trainable=("w", "b"), masks=None, codebooks=None,
          regularizers=(), num_classes: int = 3) -> TrainingGraph:
    return build_training_graph(model, list(trainable), loss, num_classes=num_classes, masks=masks or {},
                                codebooks=codebooks or {}, regularizers=list(regularizers), num_samples=10)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


# ---- GraphBuilder ------------------------------------------------------------------------------

def empty_graph(opset: int) -> tuple[ir.Model, GraphBuilder, ir.Value]:
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2, 3]))
    graph = ir.Graph([x], [], nodes=[], name="g", opset_imports={"": opset})
    return ir.Model(graph, ir_version=8), GraphBuilder(graph, opset), x


def test_fresh_names_avoid_every_name_in_the_graph():
    _, builder, x = empty_graph(17)
    assert [builder.fresh_name("x"), builder.fresh_name("x"), builder.fresh_name("y")] == ["x_1", "x_2", "y"]
    doubled = builder.op("Add", x, x)
    assert doubled.name == "onnxcomp_add" and doubled.producer().name == "onnxcomp_Add"
    assert builder.op("Add", doubled, x).name == "onnxcomp_add_1"
    first, second = builder.op("Split", x, builder.constant(np.array([1, 2], np.int64), "sizes"), num_outputs=2, axis=1)
    assert (first.name, second.name) == ("onnxcomp_split", "onnxcomp_split_1")


def test_constants_and_parameters_are_initializers():
    _, builder, _ = empty_graph(17)
    frozen = builder.constant(np.array([1, 2], np.int64), "table")
    trained = builder.parameter(np.array([1.0, 2.0]), "means")
    again = builder.parameter(np.zeros(1), "means")
    assert frozen.name == "table" and frozen.const_value.numpy().tolist() == [1, 2] and frozen.dtype == ir.DataType.INT64
    assert trained.dtype == ir.DataType.FLOAT and set(builder.graph.initializers) == {"table", "onnxcomp_means", "onnxcomp_means_1"}
    assert builder.parameter_keys == {"onnxcomp_means": "means", "onnxcomp_means_1": "means"}
    assert builder.scalar(2.5).const_value.numpy().shape == ()


@pytest.mark.parametrize(("opset", "op_type", "axes_as_input"), [
    (13, "ReduceSum", True), (13, "ReduceMean", False), (17, "ReduceLogSumExp", False), (18, "ReduceMean", True),
])
def test_reductions_take_axes_as_the_opset_wants(opset, op_type, axes_as_input):
    model, builder, x = empty_graph(opset)
    reduced = builder.reduce(op_type, x, axes=[1], keepdims=True)
    node = reduced.producer()
    assert (len(node.inputs) == 2) == axes_as_input and ("axes" in node.attributes) != axes_as_input
    everything = builder.reduce(op_type, x)
    assert len(everything.producer().inputs) == 1 and everything.producer().attributes["keepdims"].as_int() == 0
    model.graph.outputs.extend([reduced, everything])
    data = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]], np.float32)
    expected = {"ReduceSum": np.sum, "ReduceMean": np.mean, "ReduceLogSumExp": np.logaddexp.reduce}[op_type]
    got_rows, got_all = run(model, {"x": data})
    np.testing.assert_allclose(got_rows, expected(data, axis=1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(got_all, expected(data.ravel()), rtol=1e-6)


def test_builder_shortcuts_compute_what_they_say():
    model, builder, x = empty_graph(17)
    assert builder.scale(x, 1.0) is x
    flat = builder.concat_flat([x])
    assert flat.producer().op_type == "Reshape"
    total = builder.add_all([builder.sum_of_squares(x), builder.scale(builder.reduce("ReduceSum", x), 3.0), builder.scalar(1.0)])
    model.graph.outputs.extend([flat, builder.concat_flat([x, builder.unsqueeze(builder.scalar(7.0), [0])]), total])
    assert builder.add_all([x]) is x and {n.op_type for n in model.graph} >= {"Add", "Mul"} and "Sum" not in {n.op_type for n in model.graph}
    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    got_flat, got_joined, got_total = run(model, {"x": data})
    assert got_flat.tolist() == list(range(6)) and got_joined.tolist() == [*range(6), 7.0]
    assert float(got_total) == pytest.approx(55.0 + 3 * 15.0 + 1.0)


# ---- build_training_graph ----------------------------------------------------------------------

def test_hard_loss_is_the_mean_cross_entropy():
    model = classifier()
    graph = build(model)
    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    labels = np.array([0, 2, 1, 1, 0], np.int64)
    loss, logits = run(graph.model, {"x": x, LABELS_INPUT: labels})
    arrays = weights(model)
    expected_logits = x @ arrays["w"] + arrays["b"]
    np.testing.assert_allclose(logits, expected_logits, rtol=1e-5)
    assert float(loss) == pytest.approx(-log_softmax(expected_logits)[np.arange(5), labels].mean(), rel=1e-5)
    assert (graph.feature_inputs, graph.target_inputs, graph.logits) == (["x"], [LABELS_INPUT], "logits")


def test_soft_and_hard_terms_are_weighted_and_scaled_by_the_temperature():
    model = classifier()
    spec = LossSpec(hard_weight=0.25, soft_weight=0.75, temperature=2.0)
    graph = build(model, spec)
    assert graph.target_inputs == [LABELS_INPUT, SOFT_TARGETS_INPUT]
    soft_input = next(i for i in graph.model.graph.input if i.name == SOFT_TARGETS_INPUT)
    assert [d.dim_param or d.dim_value for d in soft_input.type.tensor_type.shape.dim] == [BATCH_DIM, 3]
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 4)).astype(np.float32)
    labels = np.array([1, 0, 2, 2], np.int64)
    targets = rng.dirichlet(np.ones(3), 4).astype(np.float32)
    loss, logits = run(graph.model, {"x": x, LABELS_INPUT: labels, SOFT_TARGETS_INPUT: targets})
    hard = -log_softmax(logits)[np.arange(4), labels].mean()
    soft = -(targets * log_softmax(logits / 2.0)).sum(axis=1).mean() * 4.0
    assert float(loss) == pytest.approx(0.25 * hard + 0.75 * soft, rel=1e-5)
    distill_only = build(model, LossSpec(hard_weight=0.0, soft_weight=1.0))
    assert [i.name for i in distill_only.model.graph.input] == ["x", SOFT_TARGETS_INPUT]


def test_other_outputs_and_weight_inputs_are_dropped_and_the_batch_freed():
    graph = build(classifier(batch=1, extra_output=True, weight_as_input=True))
    model = graph.model
    assert [o.name for o in model.graph.output] == ["onnxcomp_loss", "logits"]
    assert "Relu" not in {n.op_type for n in model.graph.node}  # only the dropped output needed it
    assert [i.name for i in model.graph.input] == ["x", LABELS_INPUT]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert (dims[0].dim_param, dims[1].dim_value) == (BATCH_DIM, 4)
    assert model.graph.output[1].type.tensor_type.shape.dim[0].dim_param == BATCH_DIM
    x = np.ones((6, 4), np.float32)  # a batch of 6 runs where the input model declared 1
    assert run(model, {"x": x, LABELS_INPUT: np.zeros(6, np.int64)})[1].shape == (6, 3)


def test_free_batch_dimension_forgets_inner_shapes():
    model = ir.serde.deserialize_model(classifier(batch=2))
    free_batch_dimension(model.graph)
    assert [str(d) for d in model.graph.inputs[0].shape] == [BATCH_DIM, "4"]
    assert [str(d) for d in model.graph.outputs[0].shape] == [BATCH_DIM, "3"]
    assert next(n for n in model.graph if n.op_type == "MatMul").outputs[0].shape is None


class Offset(Regularizer):
    """A trainable offset: penalty = sum(offset) + sum of every weight (a plain value to check)."""

    name = "offset"

    def __init__(self, key: str):
        self.key = key

    def add_penalty(self, graph: GraphBuilder, inputs: PenaltyInputs) -> ir.Value:
        self.seen = inputs
        offset = graph.parameter(np.array([2.0, 3.0]), self.key)
        sums = [graph.reduce("ReduceSum", inputs.weights[name]) for name in inputs.weights]
        return graph.add_all([graph.reduce("ReduceSum", offset), *sums])


def test_regularizers_see_the_effective_weights_and_declare_parameters():
    model = classifier()
    mask = np.array([[1, 0, 1]] * 4, np.float32)
    codebook, indices = np.array([-1.0, 0.5], np.float32), np.array([1, 0, 1], np.int64)
    first, second = Offset("shift"), Offset("offset")
    graph = build(model, masks={"w": mask}, codebooks={"b": (codebook, indices)}, regularizers=[first, second])
    assert graph.regularizer_parameters == [{"shift": "onnxcomp_shift"}, {"offset": "onnxcomp_offset"}]
    assert graph.weight_parameters == {"w": "w", "b": "b.codebook"}
    assert graph.trainable_parameters == ["w", "b.codebook", "onnxcomp_shift", "onnxcomp_offset"]
    np.testing.assert_array_equal(first.seen.initial["w"], weights(model)["w"] * mask)
    np.testing.assert_array_equal(first.seen.initial["b"], [0.5, -1.0, 0.5])
    assert first.seen.num_samples == 10
    x = np.ones((2, 4), np.float32)
    with_penalty = float(run(graph.model, {"x": x, LABELS_INPUT: np.zeros(2, np.int64)})[0])
    without = float(run(build(model, masks={"w": mask}, codebooks={"b": (codebook, indices)}).model,
                        {"x": x, LABELS_INPUT: np.zeros(2, np.int64)})[0])
    penalty = 5.0 + float((weights(model)["w"] * mask).sum()) + 0.0  # b decodes to 0.5 - 1 + 0.5
    assert with_penalty - without == pytest.approx(2 * penalty, rel=1e-5)
    assert Regularizer.report(first, {"shift": np.ones(2)})["shift"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize(("model", "arguments", "message"), [
    (classifier(opset=22), {}, r"fine-tuning needs opset <= 21 \(ONNX Runtime training 1.19\); the model uses opset 22"),
    (classifier(opset=12), {}, r"fine-tuning needs opset >= 13; the model uses opset 12 \(convert it"),
    (classifier(), {"trainable": ["w", "v", "u"]}, r"trainable: no initializer named 'v', 'u' in the model"),
    (classifier(), {"masks": {"h": np.ones((2, 3))}}, r"masks: no initializer named 'h'"),
    (classifier(), {"masks": {"w": np.ones((3, 4))}}, r"mask for 'w' has shape \(3, 4\), the weight \(4, 3\)"),
    (classifier(), {"masks": {"w": np.full((4, 3), np.nan)}}, "mask for 'w' contains NaN or inf"),
    (classifier(), {"codebooks": {"b": (np.ones(2), np.zeros(2, np.int64))}},
     r"codebook indices for 'b' have shape \(2,\), the weight \(3,\)"),
    (classifier(), {"codebooks": {"b": (np.ones((2, 1)), np.zeros(3, np.int64))}}, "must be a 1-D float array with integer indices"),
    (classifier(), {"codebooks": {"b": (np.ones(2), np.zeros(3))}}, "must be a 1-D float array with integer indices"),
    (classifier(), {"codebooks": {"b": (np.ones(2), np.array([0, 2, 1]))}}, r"codebook indices for 'b' fall outside \[0, 2\)"),
    (classifier(), {"codebooks": {"b": (np.array([1.0, np.inf]), np.zeros(3, np.int64))}}, "codebook for 'b' contains NaN or inf"),
    (classifier(logits_dims=["N", 3, 1]), {}, r"class logits \[batch, classes\] as the first output; 'logits' has shape"),
])
def test_models_and_constraints_it_cannot_train(model, arguments, message):
    with pytest.raises(OnnxcompError, match=message):
        build(model, **arguments)


def test_integer_weights_and_logits_and_taken_names_are_refused():
    model = classifier()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.int64), "steps"))
    with pytest.raises(OnnxcompError, match="trainable weight 'steps' is INT64; only float32 weights train"):
        build(model, trainable=["w", "steps"])
    double = classifier()
    double.graph.output[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    with pytest.raises(OnnxcompError, match="fine-tuning needs float32 logits; output 'logits' is DOUBLE"):
        build(double)
    taken = classifier()
    taken.graph.input.append(helper.make_tensor_value_info(LABELS_INPUT, TensorProto.INT64, ["N"]))
    with pytest.raises(OnnxcompError, match=f"the model already has a tensor named '{LABELS_INPUT}'; rename it"):
        build(taken)
