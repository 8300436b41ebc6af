"""runtime.training_data: the arrays fine-tuning consumes checked and cast (inputs, labels, teacher
logits), the class count, the loss mix and its targets, and the held-out reference classes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.errors import OnnxcompError
from onnxcomp.runtime.training_data import (
    Evaluation,
    check_inputs,
    check_labels,
    check_teacher,
    feature_dtypes,
    loss_and_targets,
    num_classes,
    prepare_evaluation,
    softmax,
)
from onnxcomp.runtime.training_graph import LossSpec

DTYPES = {"x": np.dtype("float32"), "ids": np.dtype("int64")}


def classifier(output_dims: list) -> onnx.ModelProto:
    """x [N, 4] float, ids [N] int64 -> logits [output_dims]; the weight w is also listed as an input."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"])], "c",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, output_dims)],
        [numpy_helper.from_array(np.zeros((4, 3), np.float32), "w")])
    return helper.make_model(graph)


def no_forward(model, features):
    raise AssertionError("no run expected")


def test_feature_dtypes_skip_initializers_listed_as_inputs():
    assert feature_dtypes(classifier(["N", 3])) == DTYPES


def test_check_inputs_casts_to_the_graphs_dtypes():
    checked = check_inputs({"x": np.arange(8.0).reshape(4, 2).T, "ids": [3, 4]}, DTYPES, "inputs")
    assert checked["x"].dtype == np.float32 and checked["x"].flags.c_contiguous
    assert checked["ids"].dtype == np.int64 and checked["ids"].tolist() == [3, 4]
    assert list(checked) == ["x", "ids"]


@pytest.mark.parametrize(("arrays", "message"), [
    ({"x": np.zeros((2, 4))}, r"inputs lacks graph input\(s\) 'ids'"),
    ({"x": np.zeros((2, 4)), "ids": np.zeros(2), "z": np.zeros(2)}, r"inputs has 'z', not a graph input \(inputs: x, ids\)"),
    ({"x": np.zeros((2, 4)), "ids": np.array(3)}, r"inputs\['ids'\] needs a first axis of samples"),
    ({"x": np.array([[np.nan, np.inf, 0, 1], [0, 0, 0, -np.inf]]), "ids": np.zeros(2)}, r"inputs\['x'\] contains 3 NaN/inf"),
    ({"x": np.zeros((2, 4)), "ids": np.zeros(3)}, r"inputs disagree on the number of samples: \{'x': 2, 'ids': 3\}"),
    ({"x": np.zeros((0, 4)), "ids": np.zeros(0)}, "inputs hold no samples"),
])
def test_check_inputs_errors(arrays, message):
    with pytest.raises(OnnxcompError, match=message):
        check_inputs(arrays, DTYPES, "inputs")


def test_check_inputs_with_no_graph_inputs_holds_no_samples():
    with pytest.raises(OnnxcompError, match="eval_inputs hold no samples"):
        check_inputs({}, {}, "eval_inputs")


def test_num_classes_from_the_shape_the_teacher_or_one_run():
    assert num_classes(classifier(["N", 3]), {}, None, no_forward) == 3
    assert num_classes(classifier(["N", "C"]), {}, np.zeros((5, 7)), no_forward) == 7
    seen = []

    def forward(model, features):
        seen.append(features["x"].shape)
        return np.zeros((1, 6))

    assert num_classes(classifier(["N", "C"]), {"x": np.zeros((5, 4))}, None, forward) == 6
    assert seen == [(1, 4)]  # one sample is enough
    with pytest.raises(OnnxcompError, match=r"class logits \[batch, classes\] as the first output; got shape \[1, 2, 6\]"):
        num_classes(classifier(["N", "C"]), {"x": np.zeros((5, 4))}, np.zeros(5), lambda m, f: np.zeros((1, 2, 6)))


def test_check_labels_accepts_integral_floats_and_returns_int64():
    labels = check_labels(np.array([0.0, 2.0, 1.0]), 3, 3, "labels", "inputs")
    assert labels.dtype == np.int64 and labels.tolist() == [0, 2, 1]


@pytest.mark.parametrize(("labels", "message"), [
    (np.zeros(4, np.int64), r"labels has 4 entries \(shape \(4,\)\) but inputs have 3 samples"),
    (np.zeros((3, 1), np.int64), r"labels has 3 entries \(shape \(3, 1\)\) but inputs have 3 samples"),
    (np.array(1), r"labels has 0 entries"),
    (np.array([0.0, 0.5, 1.0]), "labels must be integer class indices, got dtype float64"),
    (np.array([0.0, np.nan, 1.0]), "labels must be integer class indices"),
    (np.array(["a", "b", "c"]), "labels must be integer class indices"),
    (np.array([0, 3, 1]), r"labels range over \[0, 3\] but the model has 3 classes: labels must lie in \[0, 3\)"),
    (np.array([-1, 0, 1]), r"range over \[-1, 1\]"),
])
def test_check_labels_errors(labels, message):
    with pytest.raises(OnnxcompError, match=message):
        check_labels(labels, 3, 3, "labels", "inputs")


def test_check_teacher():
    assert check_teacher([[1, 2], [3, 4]], 2, 2, "teacher_logits").dtype == np.float32
    with pytest.raises(OnnxcompError, match=r"teacher_logits has shape \(2, 3\); expected \(2, 2\)"):
        check_teacher(np.zeros((2, 3)), 2, 2, "teacher_logits")
    with pytest.raises(OnnxcompError, match="teacher_logits contains NaN/inf values"):
        check_teacher(np.array([[0.0, np.inf], [0.0, 0.0]]), 2, 2, "teacher_logits")


def test_softmax_rows_sum_to_one_even_for_large_logits():
    probabilities = softmax(np.array([[0.0, np.log(3.0)], [1000.0, 1000.0]]))
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, [[0.25, 0.75], [0.5, 0.5]], rtol=1e-6)


def test_loss_and_targets_with_labels_only():
    spec, labels, soft = loss_and_targets(np.array([1, 0]), None, None, 1.0, 2, 2)
    assert spec == LossSpec(hard_weight=1.0, soft_weight=0.0) and labels.tolist() == [1, 0] and soft is None


def test_loss_and_targets_distill_at_the_temperature():
    teacher = np.array([[0.0, 2 * np.log(3.0)], [4.0, 4.0]])
    spec, labels, soft = loss_and_targets(None, teacher, None, 2.0, 2, 2)
    assert spec == LossSpec(hard_weight=0.0, soft_weight=1.0, temperature=2.0) and labels is None
    np.testing.assert_allclose(soft, [[0.25, 0.75], [0.5, 0.5]], rtol=1e-6)
    spec, labels, soft = loss_and_targets(np.array([1, 0]), teacher, None, 1.0, 2, 2)
    assert (spec.hard_weight, spec.soft_weight) == (0.5, 0.5) and labels is not None and soft is not None
    spec, labels, soft = loss_and_targets(np.array([1, 0]), teacher, 1.0, 1.0, 2, 2)
    assert (spec.hard_weight, labels) == (0.0, None)  # all weight on the teacher: no labels input
    spec, labels, soft = loss_and_targets(np.array([1, 0]), teacher, 0.0, 1.0, 2, 2)
    assert (spec.soft_weight, soft) == (0.0, None)


@pytest.mark.parametrize(("labels", "teacher", "weight", "temperature", "message"), [
    (None, None, None, 1.0, r"finetune needs labels or teacher_logits \(distillation works without labels\)"),
    (None, np.zeros((2, 2)), None, 0.0, "temperature must be > 0, got 0.0"),
    (None, np.zeros((2, 2)), None, float("nan"), "temperature must be > 0, got nan"),
    (np.array([0, 1]), np.zeros((2, 2)), 1.5, 1.0, r"distill_weight must lie in \[0, 1\], got 1.5"),
    (np.array([0, 5]), None, None, 1.0, r"labels range over \[0, 5\]"),
])
def test_loss_and_targets_errors(labels, teacher, weight, temperature, message):
    with pytest.raises(OnnxcompError, match=message):
        loss_and_targets(labels, teacher, weight, temperature, 2, 2)


def test_prepare_evaluation_picks_its_reference():
    model = classifier(["N", 3])
    inputs = {"x": np.zeros((2, 4)), "ids": np.zeros(2)}
    assert prepare_evaluation(model, None, None, None, DTYPES, 3, no_forward) is None
    with pytest.raises(OnnxcompError, match="eval_labels / eval_teacher_logits need eval_inputs"):
        prepare_evaluation(model, None, np.zeros(2), None, DTYPES, 3, no_forward)
    labelled = prepare_evaluation(model, inputs, [2, 1], np.zeros((2, 3)), DTYPES, 3, no_forward)
    assert isinstance(labelled, Evaluation) and labelled.reference.tolist() == [2, 1]
    assert labelled.metric == "held-out accuracy" and labelled.features["x"].dtype == np.float32
    taught = prepare_evaluation(model, inputs, None, [[0, 0, 1], [5, 0, 0]], DTYPES, 3, no_forward)
    assert taught.reference.tolist() == [2, 0] and taught.metric == "held-out top-1 agreement with the original"
    own = prepare_evaluation(model, inputs, None, None, DTYPES, 3, lambda m, f: np.array([[0, 1, 0], [0, 0, 1]]))
    assert own.reference.tolist() == [1, 2] and own.metric == "held-out top-1 agreement with the input model"
    with pytest.raises(OnnxcompError, match=r"eval_labels has 3 entries \(shape \(3,\)\) but eval_inputs have 2 samples"):
        prepare_evaluation(model, inputs, [0, 1, 2], None, DTYPES, 3, no_forward)
    with pytest.raises(OnnxcompError, match=r"eval_teacher_logits has shape \(2, 2\); expected \(2, 3\)"):
        prepare_evaluation(model, inputs, None, np.zeros((2, 2)), DTYPES, 3, no_forward)
