"""Inputs of real shipped models: dynamic dims spelled four ways, sample axes other than 0,
scalar inputs given once, feeds of different shapes, probing for runnable sizes, pinned shapes
and values, and data files that are not what they claim."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxcomp.cli import main
from onnxcomp.samples.data import NoRunnableInputError, Samples, as_samples, batches, join_outputs, load_samples, sample_count
from onnxcomp.errors import OnnxcompError
from onnxcomp.samples.generated import generate_samples
from onnxcomp.pipeline import CompressOptions, compress_model
from onnxcomp.samples.probe import generated_samples
from onnxcomp.runtime.inference import run_batches, session
from onnxcomp.samples.signature import input_specs, parse_input_shape, parse_input_value

RNG = np.random.default_rng(0)

# An audio model as silero-vad declares it: samples on axis 1 of the recurrent state, a scalar
# sample rate that must be 16000 (a frame is sr / 31.25 samples: 512), frames of 512 samples.
AUDIO_TEXT = """
<ir_version: 8, opset_import: ["" : 17]>
vad (float[batch, sequence] input, int64 sr, float[2, batch, 128] state) => (float[batch, 128] output, float[2, batch, 128] stateN) {
  thousand = Constant <value = int64[1] {1000}> ()
  two = Constant <value = int64 {2}> ()
  sr1 = Unsqueeze(sr, zero1)
  k = Div(sr1, thousand)
  width = Mul(k, thirtytwo)
  target = Concat <axis = 0> (zero1, minus1, width)
  frames = Reshape(input, target)
  hidden = MatMul(frames, w)
  pooled = ReduceMean <axes = [1], keepdims = 0> (hidden)
  previous = Gather <axis = 0> (state, zero)
  mixed = Add(pooled, previous)
  output = Tanh(mixed)
  both = Unsqueeze(output, zero1)
  stateN = Concat <axis = 0> (both, both)
}
"""


def _audio_model(text: str = AUDIO_TEXT) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    for name, array in {"w": RNG.standard_normal((512, 128)).astype(np.float32) * 0.05,
                        "zero1": np.array([0], np.int64), "minus1": np.array([-1], np.int64),
                        "thirtytwo": np.array([32], np.int64),
                        "zero": np.array(0, np.int64)}.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def _image_model(dims: list, divide_at: int | None = None) -> ir.Model:
    """Conv (stride 2) -> global pool -> Gemm over x [dims]; ``divide_at``: the model divides an
    integer by (W - divide_at), so W = divide_at crashes ONNX Runtime natively (SIGFPE)."""
    extra = ""
    if divide_at is not None:
        extra = """
  shape = Shape(x)
  wide = Slice(shape, three, four)
  gap = Sub(wide, at)
  ratio = Div(hundred, gap)
  scale = Cast <to = 1> (ratio)
  scaled = Mul(y0, zerof)
  y1 = Mul(scaled, scale)
  y = Add(y0, y1)"""
    text = f"""
<ir_version: 8, opset_import: ["" : 17]>
image (float[N, 3, H, W] x) => (float[N, 10] y) {{
  c = Conv <strides = [2, 2], pads = [1, 1, 1, 1]> (x, k, kb)
  r = Relu(c)
  p = GlobalAveragePool(r)
  f = Flatten(p)
  {"y0" if divide_at is not None else "y"} = Gemm(f, g, gb){extra}
}}
"""
    proto = onnx.parser.parse_model(text)
    arrays = {"k": RNG.standard_normal((16, 3, 3, 3)).astype(np.float32), "kb": np.zeros(16, np.float32),
              "g": RNG.standard_normal((16, 10)).astype(np.float32), "gb": np.zeros(10, np.float32)}
    if divide_at is not None:
        arrays |= {"three": np.array([3], np.int64), "four": np.array([4], np.int64),
                   "at": np.array([divide_at], np.int64), "hundred": np.array([100], np.int64),
                   "zerof": np.array(0, np.float32)}
    for name, array in arrays.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    shape = proto.graph.input[0].type.tensor_type.shape
    for dim, value in zip(shape.dim, dims):
        dim.Clear()
        if isinstance(value, str):
            dim.dim_param = value
        elif value is not None:
            dim.dim_value = value
    onnx.checker.check_model(proto)
    return ir.serde.deserialize_model(proto)


# ---- dynamic dims spelled dim_param, -1, 0 or missing -----------------------------------------

def test_zero_and_minus_one_dims_are_dynamic():
    spec = input_specs(_image_model([0, 3, 0, -1]))[0]
    assert spec.dims == (None, 3, None, None) and spec.sample_axis == 0
    # (ONNX Runtime itself enforces a declared 0 as size 0, so such a model runs on nothing.)


@pytest.mark.parametrize("dims", [[-1, 3, None, None], ["N", 3, "H", "W"]])
def test_dynamic_dims_in_every_spelling_generate_and_compress(dims):
    model = _image_model(dims)
    spec = input_specs(model)[0]
    assert spec.sample_axis == 0 and spec.dims[1] == 3 and spec.dims[2:] == (("H", "W") if dims[2] == "H" else (None, None))
    samples = generated_samples(model, count=4)
    assert samples.inputs["x"].shape == (4, 3, 224, 224)  # image-sized, a multiple of the stride
    if dims[0] == -1:  # the whole flow once (it refused "a negative dimension" before)
        result = compress_model(model, CompressOptions(target_bytes=1500))
        assert len(result.data) <= 1500 and result.report.fidelity["samples"] > 0


# ---- samples on axis 1, scalar inputs given once ----------------------------------------------

def test_sample_axis_is_where_the_shared_batch_dim_sits():
    specs = {s.name: s for s in input_specs(_audio_model())}
    assert specs["input"].sample_axis == 0
    assert specs["state"].sample_axis == 1
    assert specs["sr"].sample_axis is None


def test_anonymous_dims_beside_a_dynamic_leading_dim_are_sample_axes():
    """silero-vad's spox export: input [?, ?], state [2, ?, 128], sr []; Paddle2ONNX's '?' names no dim."""
    proto = onnx.parser.parse_model(AUDIO_TEXT)
    for value in proto.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.Clear()
    model = ir.serde.deserialize_model(proto)
    specs = {s.name: s for s in input_specs(model)}
    assert (specs["input"].sample_axis, specs["state"].sample_axis, specs["sr"].sample_axis) == (0, 1, None)
    proto.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "?"
    proto.graph.input[2].type.tensor_type.shape.dim[1].dim_param = "?"
    assert input_specs(ir.serde.deserialize_model(proto))[0].dims == (None, None)


def test_leading_dims_named_apart_on_every_input_are_one_sample_axis():
    """tf2onnx names each dynamic dim apart: input1 [unk__6134, 21], input2 [unk__6135, 21], ... (an
    LSTM word segmenter). Taking the first input's name for the batch made the others shared values
    of a different size, and no generated input ran."""
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[unk__1, 21] a, float[unk__2, 21] b, float[unk__3, 21] c) => (float[unk__4, 21] y) {
      ab = Add(a, b)
      y = Add(ab, c)
    }""")
    model = ir.serde.deserialize_model(proto)
    assert [s.sample_axis for s in input_specs(model)] == [0, 0, 0]
    samples = generated_samples(model, count=5)
    assert {array.shape for array in samples.inputs.values()} == {(5, 21)}
    single = ir.serde.deserialize_model(onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[unk__1, 21] a, float[2, 21] b) => (float[unk__1, 21] y) {
      y = Add(a, b)
    }"""))
    assert [s.sample_axis for s in input_specs(single)] == [0, None]  # one input's name: its batch, as before


def test_a_batch_pinned_to_one_runs_one_sample_at_a_time():
    """A model exported for one sample (a Reshape to [1, 8] behind a dynamic [N, 8]) runs when the
    user pins the batch: --input-shape x:1,8 sets the batch of every run, not just the generated shape."""
    from onnxcomp.stages.analyze import batch_size

    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 8] x) => (float[N, 256] y) {
      shape = Constant <value = int64[2] {1, 8}> ()
      one = Reshape(x, shape)
      y = MatMul(one, w)
    }""")
    proto.graph.initializer.append(onnx.numpy_helper.from_array(RNG.standard_normal((8, 256)).astype(np.float32), "w"))
    model = ir.serde.deserialize_model(proto)
    assert batch_size(model, None, {"x": (1, 8)}) == 1 and batch_size(model, None, {"x": (4, 8)}) == 4
    pinned = compress_model(ir.serde.deserialize_model(proto),
                            CompressOptions(target_bytes=3000, sensitivity=False, input_shapes={"x": (1, 8)}))
    assert pinned.report.verified is True and pinned.report.fidelity["samples"] > 1


def test_a_fixed_batch_of_one_is_found_on_the_axis_that_holds_it():
    """silero-vad's OpenVINO export: input [1, 576], state [2, 1, 128], every dim fixed. State's
    samples are on axis 1; axis 0 (2) made generated states [1, 1, 128], which ONNX Runtime
    refuses, and compression fell back to unverified."""
    model = _audio_model(AUDIO_TEXT.replace("float[batch, sequence] input", "float[1, 512] input")
                         .replace("float[2, batch, 128] state", "float[2, 1, 128] state")
                         .replace("float[batch, 128] output", "float[1, 128] output"))
    specs = {s.name: s for s in input_specs(model)}
    assert (specs["input"].sample_axis, specs["state"].sample_axis, specs["sr"].sample_axis) == (0, 1, None)
    samples = generated_samples(model, count=4, values={"sr": np.array(16000)})
    assert samples.inputs["state"].shape[0] == 2 and samples.inputs["state"].shape[1] == samples.inputs["input"].shape[0]


def test_generated_audio_inputs_find_the_sample_rate_and_frame_size():
    model = _audio_model()
    samples = generated_samples(model, count=8)
    assert samples.inputs["sr"].shape == () and int(samples.inputs["sr"]) == 16000
    assert samples.inputs["input"].shape == (8, 512)
    assert samples.inputs["state"].shape == (2, 8, 128)
    outputs = run_batches(session(ir.serde.serialize_model(model)), samples.inputs, batch_size=3)
    assert outputs[0].shape == (8, 128) and outputs[1].shape == (2, 8, 128)  # joined on each output's own axis


def test_npz_with_state_on_axis_1_and_the_rate_given_once(tmp_path):
    model = _audio_model()
    path = tmp_path / "audio.npz"
    np.savez(path, input=RNG.standard_normal((5, 512)).astype(np.float32), sr=np.array(16000),
             state=np.zeros((2, 5, 128), np.float32))
    samples = load_samples(path, model)
    assert samples.count == 5
    feeds = list(batches(samples.inputs, 2))
    assert [f["state"].shape for f in feeds] == [(2, 2, 128), (2, 2, 128), (2, 1, 128)]
    assert all(f["sr"].shape == () for f in feeds)
    assert samples.take(np.array([4, 0])).inputs["state"].shape == (2, 2, 128)
    result = compress_model(model, CompressOptions(target_bytes=60_000), samples=samples)
    assert result.report.fidelity["samples"] == 5


def test_a_rate_given_per_sample_names_the_input_and_the_form(tmp_path):
    path = tmp_path / "audio.npz"
    np.savez(path, input=np.zeros((4, 512), np.float32), sr=np.full(4, 16000), state=np.zeros((2, 4, 128), np.float32))
    with pytest.raises(OnnxcompError, match=r"'sr' has shape \[4\], the model expects \[\] \(one value shared by "
                                            r"all samples: give it once"):
        load_samples(path, _audio_model())


def test_sample_counts_that_disagree_name_both_inputs(tmp_path):
    path = tmp_path / "audio.npz"
    np.savez(path, input=np.zeros((1, 512), np.float32), sr=np.array(16000), state=np.zeros((2, 1, 128), np.float32)[:, [0, 0]])
    with pytest.raises(OnnxcompError, match=r"'state' has 2 samples along axis 1, 'input' has 1"):
        load_samples(path, _audio_model())


def test_pinned_value_fills_an_input_the_data_lacks(tmp_path):
    path = tmp_path / "audio.npz"
    np.savez(path, input=np.zeros((3, 512), np.float32), state=np.zeros((2, 3, 128), np.float32))
    with pytest.raises(OnnxcompError, match="no array for model input.*sr.*--input-value"):
        load_samples(path, _audio_model())
    samples = load_samples(path, _audio_model(), values={"sr": np.asarray(16000)})
    assert samples.inputs["sr"].dtype == np.int64 and int(samples.inputs["sr"]) == 16000


# ---- feeds of different shapes ----------------------------------------------------------------

def test_folder_of_feeds_with_different_shapes_runs_group_by_group(tmp_path):
    model = _image_model(["N", 3, "H", "W"])
    folder = tmp_path / "feeds"
    folder.mkdir()
    for number, (height, width) in enumerate([(32, 32), (64, 48), (32, 32)]):
        np.savez(folder / f"{number}.npz", x=RNG.standard_normal((1, 3, height, width)).astype(np.float32))
    samples = load_samples(folder, model)
    assert samples.count == 3 and samples.grouped
    assert [f["x"].shape for f in batches(samples.inputs, 8)] == [(2, 3, 32, 32), (1, 3, 64, 48)]
    outputs = run_batches(session(ir.serde.serialize_model(model)), samples.inputs)
    assert outputs[0].shape == (3, 10)  # class scores stack whatever the image size
    result = compress_model(model, CompressOptions(target_bytes=1500), samples=samples)
    assert result.report.fidelity["samples"] == 3


def test_python_feeds_of_different_shapes_like_a_calibration_reader():
    model = _image_model(["N", 3, "H", "W"])
    feeds = [{"x": RNG.standard_normal((2, 3, size, size)).astype(np.float32)} for size in (32, 40, 32)]
    samples = as_samples(iter(feeds), model)
    assert samples.count == 6 and len(samples.inputs.groups) == 2
    assert samples.head(3).count == 3


def test_join_outputs_uses_each_outputs_sample_axis():
    assert join_outputs([np.zeros((2, 3, 4)), np.zeros((2, 1, 4))], [3, 1]).shape == (2, 4, 4)
    assert join_outputs([np.zeros((3, 5)), np.zeros((1, 7))], [3, 1]).shape == (22,)  # not stackable: flattened


def test_join_outputs_equals_concatenate_and_lets_each_batch_go():
    chunks = [RNG.standard_normal((2, 3, 4)), RNG.standard_normal((2, 1, 4)).astype(np.float32)]
    expected = np.concatenate(chunks, axis=1)
    joined = join_outputs(chunks, [3, 1])
    np.testing.assert_array_equal(joined, expected)
    assert joined.dtype == expected.dtype
    assert chunks == [None, None]  # copied and dropped: the batches and the joined output are not held at once
    ragged = [np.arange(6.0).reshape(2, 3), np.arange(4.0).reshape(2, 2).T]
    expected = np.concatenate([np.ravel(c) for c in ragged])
    np.testing.assert_array_equal(join_outputs(ragged, [2, 2]), expected)


# ---- probing ----------------------------------------------------------------------------------

def test_probing_survives_a_native_crash_and_moves_on():
    model = _image_model(["N", 3, "H", "W"], divide_at=224)  # W = 224 divides by zero: SIGFPE
    samples = generated_samples(model, count=2)
    assert samples.inputs["x"].shape[3] != 224
    assert samples.inputs["x"].shape[3] % 2 == 0


def test_nothing_runnable_is_one_error_with_the_runtime_cause():
    text = """
<ir_version: 8, opset_import: ["" : 17]>
odd (float[N, L] x) => (float[N, 7919] y) {
  y = Reshape(x, target)
}
"""
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array([-1, 7919], np.int64), "target"))
    with pytest.raises(NoRunnableInputError, match=r"no generated input ran .*last error: .*Reshape.*--input-shape") as info:
        generated_samples(ir.serde.deserialize_model(proto))
    assert "7919" in info.value.last_error or "reshape" in info.value.last_error.lower()


def test_sweep_of_a_model_no_generated_input_runs(tmp_path, capsys):
    text = """
<ir_version: 8, opset_import: ["" : 17]>
odd (float[N, L] x) => (float[N, 4] y) {
  r = Reshape(x, target)
  y = MatMul(r, w)
}
"""
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(np.array([-1, 7919], np.int64), "target"))
    proto.graph.initializer.append(onnx.numpy_helper.from_array(RNG.standard_normal((7919, 4)).astype(np.float32), "w"))
    model_path = tmp_path / "odd.onnx"
    onnx.save(proto, model_path)
    code = main(["sweep", str(model_path), "--targets", "40000", "-o", str(tmp_path / "sweep"), "-j", "1"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "outputs not verified" in captured.out + captured.err and "Traceback" not in captured.err


def test_generated_ids_cover_every_row_of_the_table():
    text = """
<ir_version: 8, opset_import: ["" : 17]>
bytes_model (int64[batch, sequence] ids) => (float[batch, sequence, 8] y) {
  y = Gather(table, ids)
}
"""
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(RNG.standard_normal((257, 8)).astype(np.float32), "table"))
    ids = generate_samples(ir.serde.deserialize_model(proto), count=64).inputs["ids"]
    assert set(np.unique(ids).tolist()) == set(range(257))


def test_generated_ids_cover_a_hand_built_one_hot():
    """magika (tf2onnx): bytes int32 [batch, 2048] -> Equal(arange(257)) -> Cast -> MatMul."""
    text = """
<ir_version: 8, opset_import: ["" : 17]>
bytes_model (int32[batch, 64] bytes) => (float[batch, 64, 8] y) {
  ids = Unsqueeze(bytes, minus1)
  hot = Equal(ids, levels)
  dense = Cast <to = 1> (hot)
  y = MatMul(dense, table)
}
"""
    proto = onnx.parser.parse_model(text)
    for name, array in {"minus1": np.array([-1], np.int64), "levels": np.arange(257, dtype=np.int32).reshape(1, 1, 257),
                        "table": RNG.standard_normal((257, 8)).astype(np.float32)}.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    ids = generate_samples(ir.serde.deserialize_model(proto), count=16).inputs["bytes"]
    assert set(np.unique(ids).tolist()) == set(range(257))


# ---- pinned shapes and values -----------------------------------------------------------------

def test_pinned_shape_and_value_decide_generated_inputs():
    model = _audio_model()
    samples = generated_samples(model, count=3, shapes={"input": (1, 512)}, values={"sr": np.asarray(16000)})
    assert samples.inputs["input"].shape == (3, 512) and int(samples.inputs["sr"]) == 16000
    image = generated_samples(_image_model([-1, 3, -1, -1]), count=2, shapes={"x": (1, 3, 64, 96)})
    assert image.inputs["x"].shape == (2, 3, 64, 96)


@pytest.mark.parametrize("shapes, values, fragment", [
    ({"y": (1, 3, 8, 8)}, {}, "'y', not a model input"),
    ({"x": (1, 3, 8)}, {}, "rank 3"),
    ({"x": (1, 4, 8, 8)}, {}, "axis 1 is fixed to 3"),
    ({}, {"nope": np.asarray(1)}, "'nope', not a model input"),
])
def test_bad_pins_are_one_line_errors(shapes, values, fragment):
    with pytest.raises(OnnxcompError, match=fragment):
        generated_samples(_image_model(["N", 3, "H", "W"]), count=2, shapes=shapes, values=values)


def test_pinned_values_take_the_inputs_shape_and_type():
    from onnxcomp.samples.signature import InputSpec, pinned_value

    table = InputSpec("v", np.dtype("float32"), ("batch", 2, 3), 0)
    assert pinned_value(table, np.arange(6), count=2).shape == (2, 2, 3)  # a flat list, per sample
    assert np.all(pinned_value(table, np.asarray(5), count=3) == 5)  # one number fills it
    rate = InputSpec("sr", np.dtype("int64"), (), None)
    assert pinned_value(rate, np.asarray(16000.0)).dtype == np.int64
    with pytest.raises(OnnxcompError, match=r"shape \[5\] does not fit v \[batch, 2, 3\]"):
        pinned_value(table, np.arange(5))
    with pytest.raises(OnnxcompError, match="expects int64 values, got 1.5"):
        pinned_value(rate, np.asarray(1.5))


def test_flag_spellings():
    assert parse_input_shape("x:1,3,640,640") == ("x", (1, 3, 640, 640))
    assert parse_input_shape("sr:") == ("sr", ())
    name, value = parse_input_value("sr=16000")
    assert name == "sr" and value.shape == () and int(value) == 16000
    assert parse_input_value("v=1,2.5")[1].tolist() == [1.0, 2.5]
    for bad in ("x", "x:1,a"):
        with pytest.raises(OnnxcompError, match="--input-shape"):
            parse_input_shape(bad)
    with pytest.raises(OnnxcompError, match="--input-value"):
        parse_input_value("sr=fast")


def test_cli_takes_input_shape_and_value(tmp_path, capsys):
    model_path = tmp_path / "vad.onnx"
    onnx.save(ir.serde.serialize_model(_audio_model()), model_path)
    code = main(["compress", str(model_path), "--target-size", "60000", "-o", str(tmp_path / "out.onnx"), "-q",
                 "--input-shape", "input:1,512", "--input-value", "sr=16000", "--report", str(tmp_path / "r.json")])
    assert code == 0 and (tmp_path / "out.onnx").exists()
    code = main(["compress", str(model_path), "--target-size", "60000", "-o", str(tmp_path / "out2.onnx"), "-q",
                 "--input-shape", "input:1,2,3"])
    assert code == 2
    assert "rank 3" in capsys.readouterr().err


def test_sweep_takes_the_same_flags(tmp_path, capsys):
    model_path = tmp_path / "vad.onnx"
    onnx.save(ir.serde.serialize_model(_audio_model()), model_path)
    code = main(["sweep", str(model_path), "--targets", "60000", "-o", str(tmp_path / "sweep"), "-q",
                 "--input-value", "rate=16000"])
    assert code == 2 and "--input-value names 'rate', not a model input" in capsys.readouterr().err


# ---- data files that are not what they claim --------------------------------------------------

def test_a_plain_npy_is_a_clear_error(tmp_path, capsys):
    model_path = tmp_path / "image.onnx"
    onnx.save(ir.serde.serialize_model(_image_model(["N", 3, "H", "W"])), model_path)
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 32, 32), np.float32))
    code = main(["compress", str(model_path), "--target-size", "1500", "--data", str(tmp_path / "x.npy"), "-q"])
    assert code == 2
    assert "single .npy array" in capsys.readouterr().err


def _npz_with_declared_member(path: Path, arrays: dict[str, np.ndarray], name: str, shape: tuple[int, ...]) -> None:
    """An .npz whose member ``name`` declares ``shape`` (float64) but holds only its header."""
    np.savez(path, **arrays)
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    with zipfile.ZipFile(path, "a") as archive, archive.open(f"{name}.npy", "w") as member:
        np.lib.format.write_array_header_1_0(member, header)
        member.write(b"\0" * 1024)


def test_unused_huge_npz_member_is_never_read(tmp_path):
    path = tmp_path / "data.npz"
    _npz_with_declared_member(path, {"x": np.zeros((2, 3, 32, 32), np.float32)}, "unused", (1 << 28,))  # 2 GiB
    samples = load_samples(path, _image_model(["N", 3, "H", "W"]))
    assert samples.count == 2 and "unused" not in samples.inputs


def test_needed_member_declaring_too_much_is_refused_before_reading(tmp_path):
    path = tmp_path / "data.npz"
    _npz_with_declared_member(path, {}, "x", (1 << 20, 3, 32, 32))  # 24 GiB declared
    with pytest.raises(OnnxcompError, match="GiB limit"):
        load_samples(path, _image_model(["N", 3, "H", "W"]))


def test_plain_dict_samples_keep_axis_0():
    samples = Samples({"x": np.zeros((5, 3)), "flag": np.array(True)})
    assert samples.count == 5 and sample_count({"x": np.zeros((4, 2))}) == 4
    assert [f["x"].shape[0] for f in batches(samples.inputs, 2)] == [2, 2, 1]


def test_corrupt_npz_bytes_are_one_line_errors(tmp_path):
    model = _image_model(["N", 3, "H", "W"])
    good = tmp_path / "good.npz"
    np.savez(good, x=RNG.standard_normal((2, 3, 8, 8)).astype(np.float32), labels=np.arange(2))
    data = good.read_bytes()
    rng = np.random.default_rng(3)
    for case in range(60):
        mutated = bytearray(data)
        if case % 3 == 0:
            mutated = mutated[: int(rng.integers(0, len(data)))]
        else:
            for position in rng.integers(0, len(data), size=1 + case % 5):
                mutated[position] = int(rng.integers(0, 256))
        path = tmp_path / f"{case}.npz"
        path.write_bytes(bytes(mutated))
        try:
            load_samples(path, model)
        except OnnxcompError as error:
            assert "\n" not in str(error)


def test_a_fixed_batch_runs_whole_batches_only():
    """CenterFace declares [10, 3, 32, 32]: 256 generated samples left a last run of 6, which ONNX
    Runtime refuses; a declared batch of 1 with 16 calibration samples went to the convolutions'
    GPTQ statistics 16 at a time (an FSMN VAD). Every run now takes the declared batch."""
    rng = np.random.default_rng(0)
    ten = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[10, 8] x) => (float[10, 256] y) {
      y = MatMul(x, w)
    }""")
    ten.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal((8, 256)).astype(np.float32), "w"))
    result = compress_model(ir.serde.deserialize_model(ten), CompressOptions(target_bytes=3000))
    assert result.report.verified and result.report.fidelity["samples"] % 10 == 0
    one = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 3, 16, 16] x) => (float[1, 32, 14, 14] y) {
      y = Conv(x, w)
    }""")
    one.graph.initializer.append(onnx.numpy_helper.from_array(rng.standard_normal((32, 3, 3, 3)).astype(np.float32), "w"))
    samples = Samples({"x": rng.standard_normal((16, 3, 16, 16)).astype(np.float32)})
    calibrated = compress_model(ir.serde.deserialize_model(one), CompressOptions(target_bytes=1500, epochs=0), samples=samples)
    assert calibrated.report.verified and calibrated.report.fidelity["cosine"] > 0.9


# A graph network as minimol declares it: node rows, edges that index them, per-graph outputs.
GRAPH_TEXT = """
<ir_version: 8, opset_import: ["" : 18]>
gnn (float[num_nodes, 16] feat, int64[2, num_edges] edge_index, int64[num_nodes] batch, float[num_graphs] graph_slots)
    => (float[num_graphs, 32] fingerprint) {
  zero = Constant <value = int64 {0}> ()
  one = Constant <value = int64 {1}> ()
  axis1 = Constant <value = int64[1] {1}> ()
  hidden = MatMul(feat, w1)
  source = Gather <axis = 0> (edge_index, zero)
  target = Gather <axis = 0> (edge_index, one)
  messages = Gather <axis = 0> (hidden, source)
  target2 = Unsqueeze(target, axis1)
  target_shape = Shape(messages)
  targets = Expand(target2, target_shape)
  summed = ScatterElements <axis = 0, reduction = "add"> (hidden, targets, messages)
  nodes = Relu(summed)
  slots = Unsqueeze(graph_slots, axis1)
  empty = Mul(slots, zeros_row)
  batch2 = Unsqueeze(batch, axis1)
  node_shape = Shape(nodes)
  owners = Expand(batch2, node_shape)
  pooled = ScatterElements <axis = 0, reduction = "add"> (empty, owners, nodes)
  fingerprint = MatMul(pooled, w2)
}
"""


def _graph_model() -> ir.Model:
    proto = onnx.parser.parse_model(GRAPH_TEXT)
    rng = np.random.default_rng(3)
    proto.graph.initializer.extend([
        onnx.numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1"),
        onnx.numpy_helper.from_array(np.zeros((1, 32), np.float32), "zeros_row"),
        onnx.numpy_helper.from_array(rng.standard_normal((32, 32)).astype(np.float32), "w2")])
    return ir.serde.deserialize_model(proto)


def _graph_feed(graphs: int, nodes_each: int) -> dict[str, np.ndarray]:
    """`graphs` chains of `nodes_each` nodes, numbered globally as graph batching does."""
    nodes = graphs * nodes_each
    starts = np.array([n for n in range(nodes - 1) if (n + 1) % nodes_each])
    return {"feat": RNG.standard_normal((nodes, 16)).astype(np.float32),
            "edge_index": np.stack([starts, starts + 1]).astype(np.int64),
            "batch": np.repeat(np.arange(graphs), nodes_each).astype(np.int64),
            "graph_slots": np.zeros(graphs, np.float32)}


def test_folder_of_graph_feeds_runs_each_feed_whole(tmp_path):
    """Each .npz of a folder is one complete feed: a graph network's feed (96 nodes whose edges index
    them) was cut into slices of nodes, and ONNX Runtime refused the edges ('idx=14 must be within
    [-14,13]')."""
    folder = tmp_path / "feeds"
    folder.mkdir()
    for number, (graphs, nodes_each) in enumerate([(8, 12), (5, 9), (8, 12)]):
        np.savez(folder / f"{number}.npz", **_graph_feed(graphs, nodes_each))
    model = _graph_model()
    source = tmp_path / "gnn.onnx"
    source.write_bytes(ir.serde.serialize_model(model).SerializeToString())
    samples = load_samples(folder, model)
    assert samples.count == 3  # three feeds, none split or joined
    assert [f["feat"].shape[0] for f in batches(samples.inputs, 64)] == [96, 45, 96]
    output = tmp_path / "small.onnx"
    code = main(["compress", str(source), "--target-size", "1/3", "--data", str(folder), "--epochs", "0",
                 "-o", str(output), "-q", "--allow-low-fidelity"])
    assert code == 0
    feed = _graph_feed(3, 7)
    want = session(source.read_bytes()).run(None, feed)[0]
    got = session(output.read_bytes()).run(None, feed)[0]
    assert want.shape == got.shape == (3, 32)


def test_per_position_class_scores_from_feeds_of_different_sizes_keep_their_positions():
    """A face detector's [N, h, w, 2] softmax from pyramid images of different sizes: joined as
    [1, positions, 2], so the per-position agreement is measured (flattened, it was not, and a
    detector losing 20% of its face positions passed on cosine)."""
    from onnxcomp.reporting.verify import fidelity

    def softmax(logits):
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return (e / e.sum(-1, keepdims=True)).astype(np.float32)

    logits = [RNG.standard_normal((1, side, side + 3, 2)) - [0, 2] for side in (12, 7, 5)]
    flipped = [np.where(RNG.random(chunk.shape[:-1] + (1,)) < 0.3, chunk[..., ::-1], chunk) for chunk in logits]
    original = join_outputs([softmax(chunk) for chunk in logits], [1, 1, 1])
    compressed = join_outputs([softmax(chunk) for chunk in flipped], [1, 1, 1])
    assert original.shape == (1, 12 * 15 + 7 * 10 + 5 * 8, 2)
    measured = fidelity([original], [compressed])
    assert measured["position_top1_agreement"] < 0.9
    assert measured["outputs"]["output_0"]["positions"] >= 20
