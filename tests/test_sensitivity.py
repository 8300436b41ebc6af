"""Output distortion as the allocator measures it (onnxcomp.planning.sensitivity with
onnxcomp.reporting.verify.output_weights): box coordinates in pixels beside class scores below 1,
in one output or in two, must not let the boxes' energy hide the scores; a recurrent state keeps
its weight."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.pipeline import CompressOptions, compress_model
from onnxcomp.planning.sensitivity import carried_outputs
from onnxcomp.reporting.verify import OutputWeights, output_distortion, output_weights
from onnxcomp.runtime.inference import session

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

IN, HIDDEN, BOXES, CLASSES, ANCHORS = 64, 256, 4, 8, 16


def detector_head(seed: int = 0, concat: bool = True) -> onnx.ModelProto:
    """x [N, IN, ANCHORS] -> two 1x1-conv branches of equal size: boxes (scaled to hundreds of
    pixels) and class scores (Sigmoid, mostly small) -> Concat on the channel axis [N, 12, ANCHORS],
    the layout of a YOLOv8 export's single output; or (`concat` False) the two as outputs of
    their own, as PicoDet's export returns them."""
    rng = np.random.default_rng(seed)

    def conv(rows, cols):
        return (rng.standard_normal((rows, cols, 1)) / np.sqrt(cols)).astype(np.float32)

    arrays = {"wb1": conv(HIDDEN, IN), "wb2": conv(BOXES, HIDDEN), "wc1": conv(HIDDEN, IN), "wc2": conv(CLASSES, HIDDEN),
              "scale": np.array(160.0, np.float32), "offset": np.array(160.0, np.float32),
              "bias": np.full((1, CLASSES, 1), -3.0, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "wb1"], ["hb"]), helper.make_node("Relu", ["hb"], ["rb"]),
             helper.make_node("Conv", ["rb", "wb2"], ["b"]), helper.make_node("Mul", ["b", "scale"], ["bs"]),
             helper.make_node("Add", ["bs", "offset"], ["boxes"]),
             helper.make_node("Conv", ["x", "wc1"], ["hc"]), helper.make_node("Relu", ["hc"], ["rc"]),
             helper.make_node("Conv", ["rc", "wc2"], ["c"]), helper.make_node("Add", ["c", "bias"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["scores"])]
    if concat:
        nodes.append(helper.make_node("Concat", ["boxes", "scores"], ["y"], axis=1))
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", BOXES + CLASSES, ANCHORS])]
    else:
        outputs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", BOXES, ANCHORS]),
                   helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", CLASSES, ANCHORS])]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", IN, ANCHORS])],
                              outputs,
                              [numpy_helper.from_array(array, name) for name, array in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def channel_errors(original: onnx.ModelProto, compressed: bytes) -> tuple[float, float]:
    """Relative errors of the box and of the class-score channels on seeded inputs."""
    feed = {"x": np.random.default_rng(1).standard_normal((64, IN, ANCHORS)).astype(np.float32)}
    reference = np.concatenate(session(original).run(None, feed), axis=1)
    output = np.concatenate(session(compressed).run(None, feed), axis=1)

    def relative(part):  # against how much the channels vary (the boxes' anchor offset is no signal)
        spread = reference[:, part] - reference[:, part].mean(axis=(0, 2), keepdims=True)
        return round(float(np.linalg.norm(output[:, part] - reference[:, part]) / np.linalg.norm(spread)), 4)
    return relative(slice(0, BOXES)), relative(slice(BOXES, None))


def compress(model: onnx.ModelProto) -> bytes:
    options = CompressOptions(target_bytes=model.ByteSize() // 8, force=True)
    return compress_model(ir.serde.deserialize_model(model), options).data


def test_weights_follow_the_axis_whose_channels_differ_in_scale():
    rng = np.random.default_rng(0)
    output = rng.standard_normal((5, 6, 40)).astype(np.float32)
    output[:, :2] *= 300.0  # two "box" channels in pixels beside four "score" channels
    weights = output_weights([output])[0]
    assert weights.axis == 1
    weights = weights.channels
    energies = np.sum(np.square(output.astype(np.float64)), axis=(0, 2))
    assert weights[2:].min() > 1e4 * weights[:2].max()
    assert weights[0] == weights[1]  # the large-scale group (box coordinates, one unit) shares one weight
    assert np.isclose(np.sum(weights * energies), energies.sum())  # the output's weight among outputs stays
    # Channels of one scale: no weighting, and the weighted distortion is the plain one.
    plain = rng.standard_normal((5, 6, 40)).astype(np.float32)
    assert output_weights([plain]) == [OutputWeights()]
    noisy = plain + 0.01 * rng.standard_normal(plain.shape).astype(np.float32)
    assert output_distortion([plain], [noisy], output_weights([plain])) == output_distortion([plain], [noisy])


def test_a_recurrent_state_with_constant_units_is_weighed_as_before():
    """Units spread evenly over three decades of scale, and a quarter of them constant (the
    saturated units of silero-vad's LSTM state on generated audio): no gap between live units,
    so no weighting; the constant ones must not count as a group of their own."""
    rng = np.random.default_rng(0)
    state = rng.standard_normal((2, 64, 128)) * np.logspace(-3, 0, 128)[None, None, :]
    state[:, :, :32] = 0.5
    assert output_weights([state.astype(np.float32)]) == [OutputWeights()]


def test_outputs_of_two_scales_are_weighted_as_groups_and_a_carried_state_is_not():
    rng = np.random.default_rng(0)
    boxes = (300.0 * rng.standard_normal((5, 4, 40))).astype(np.float32)
    scores = (0.05 * rng.random((5, 8, 40))).astype(np.float32)
    plain_boxes, plain_scores = output_weights([boxes, scores])
    assert plain_boxes.channels is None and plain_scores.channels is None
    assert plain_scores.scale > 1e6 * plain_boxes.scale
    # A speech probability beside the LSTM state it hands to the next call (silero-vad's outputs).
    probability = (0.01 * rng.random((64, 1))).astype(np.float32)
    state = rng.standard_normal((2, 64, 128)).astype(np.float32)
    assert carried_outputs([probability, state], {"input": np.zeros((64, 512), np.float32), "state": state}) == {1}
    assert output_weights([probability, state], carried={1}) == [OutputWeights(), OutputWeights()]
    assert output_weights([probability, state])[0].scale > 1e3  # what the carried state is kept from


def test_a_class_the_samples_never_show_counts_at_the_floor():
    """A class channel that never moves on the samples (nudenet's body parts on calibration photos
    without them) is weighted at the floor, above the class the samples show: a score that jumps
    from zero is a false detection."""
    rng = np.random.default_rng(0)
    output = np.zeros((5, 6, 40), np.float32)
    output[:, :2] = 300.0 * rng.standard_normal((5, 2, 40))  # boxes
    output[:, 2] = 0.05 * rng.random((5, 40))  # the one class the samples show
    output[:, 3:] = 1e-6  # classes never shown
    weights = output_weights([output])[0]
    assert weights.axis == 1
    channels = weights.channels
    assert np.allclose(channels[3:], channels[3])
    assert channels[3] > channels[2] > 1e6 * channels[:2].max()


def test_an_error_in_the_small_channels_counts_as_much_as_in_the_large_ones():
    rng = np.random.default_rng(0)
    output = rng.standard_normal((5, 6, 40)).astype(np.float32)
    output[:, :2] *= 300.0
    channels = output_weights([output])
    in_boxes, in_scores = output.copy(), output.copy()
    in_boxes[:, :2] *= 1.01
    in_scores[:, 2:] *= 1.01
    # Unweighted, 1% off in every score is 10^4 times smaller than 1% off in the boxes.
    assert output_distortion([output], [in_scores]) < 1e-3 * output_distortion([output], [in_boxes])
    weighted_boxes = output_distortion([output], [in_boxes], channels)
    weighted_scores = output_distortion([output], [in_scores], channels)
    assert 1.5 < weighted_scores / weighted_boxes < 2.5  # four score channels against two box channels


@pytest.mark.parametrize("concat", [True, False], ids=["one output", "two outputs"])
def test_class_scores_keep_their_precision_beside_pixel_boxes(monkeypatch, concat):
    """At 1/8 of the bytes (about 4 bits a weight: neither branch can be exact) weighting each
    group of channels by its own variance spreads the error over boxes and scores alike; with every output
    element weighed alike (the allocator before channel weighting) the score branch was pruned to
    98% zeros for the boxes' sake and its error was several times the weighted one."""
    model = detector_head(concat=concat)
    weighted = channel_errors(model, compress(model))
    monkeypatch.setattr("onnxcomp.planning.sensitivity.output_weights", lambda reference, carried: [OutputWeights()] * len(reference))
    unweighted = channel_errors(model, compress(model))
    print(f"relative errors (boxes, scores): weighted {weighted}, unweighted {unweighted}")
    assert 3 * weighted[1] < unweighted[1]
    assert max(weighted) < 4 * min(weighted)  # the same order of error: one quantizer step decides
    assert unweighted[1] > 10 * unweighted[0]


def if_model(rng) -> onnx.ModelProto:
    """y = x @ w_then if flag else x @ w_else: two networks, one per branch (silero-vad's 16 kHz
    and 8 kHz), reading outer-scope weights."""
    def branch(weight: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("MatMul", ["x", weight], [f"y_{weight}"])], f"b_{weight}", [],
                                 [helper.make_tensor_value_info(f"y_{weight}", TensorProto.FLOAT, None)])

    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=branch("w_then"), else_branch=branch("w_else"))], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
        [numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), name) for name in ("w_then", "w_else")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_weights_of_a_branch_the_samples_never_take_are_kept_as_the_most_sensitive():
    rng = np.random.default_rng(3)
    lines = []
    options = CompressOptions(target_bytes=4000, input_values={"flag": np.asarray(True)})
    result = compress_model(ir.serde.deserialize_model(if_model(rng)), options, progress=lines.append)
    err = "\n".join(lines)
    assert "1 weight (8.21 KB: w_else) never changed an output on these samples" in err, err
    assert "--input-value or --data with inputs that take the other branches" in err
    bits = {row.name: row.bits for row in result.report.layers}
    # counted as free (distortion 0), the never-run weight had taken 4 bits to the other's 6
    assert bits["w_else"] >= bits["w_then"], bits
