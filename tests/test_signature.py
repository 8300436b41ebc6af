"""samples.signature: declared dims normalized, the symbolic dim that stands for samples, each
input's sample axis, the fixed batch, pinned shapes and values checked against the model, and
the --input-shape / --input-value spellings."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxcomp.errors import OnnxcompError
from onnxcomp.samples.signature import (
    InputSpec,
    check_pins,
    check_values,
    declared_dims,
    fixed_batch,
    input_specs,
    normalize_dim,
    parse_input_shape,
    parse_input_value,
    pinned_value,
    sample_dim,
)


def parse(inputs: str, body: str = "y = Identity(x)", outputs: str = "float[N, 8] y") -> ir.Model:
    return ir.serde.deserialize_model(onnx.parser.parse_model(f"""<ir_version: 8, opset_import: ["" : 17]>
    g ({inputs}) => ({outputs}) {{
      {body}
    }}"""))


@pytest.mark.parametrize(("dim", "expected"), [
    (3, 3), (0, None), (-1, None), (None, None), ("batch", "batch"), (" seq ", "seq"),
    ("?", None), ("-1", None), ("0", None), ("None", None), ("", None),
    (ir.SymbolicDim("N"), "N"), (ir.SymbolicDim(None), None),
])
def test_normalize_dim(dim, expected):
    assert normalize_dim(dim) == expected


def test_declared_dims_and_describe():
    model = parse("float[N, 3, ?, 224] x, float s", outputs="float[N, 3, a, 224] y")
    proto = ir.serde.serialize_model(model)
    proto.graph.input[1].type.tensor_type.ClearField("shape")
    shapeless = ir.serde.deserialize_model(proto)
    assert declared_dims(shapeless.graph.inputs[0]) == ("N", 3, None, 224)
    assert declared_dims(shapeless.graph.inputs[1]) is None
    spec = InputSpec("x", np.dtype("float32"), ("N", 3, None, 224), 0)
    assert (spec.rank, spec.describe()) == (4, "[N, 3, ?, 224]")
    assert (InputSpec("s", None, None, None).rank, InputSpec("s", None, None, None).describe()) == (None, "(no shape)")
    assert InputSpec("r", None, (), None).describe() == "[]"


@pytest.mark.parametrize(("dims_of", "expected"), [
    ([("seq", 3), ("batch", "seq")], "seq"),  # shared by most inputs
    ([("N", "M"), ("M", 2), ("N",)], "N"),  # a tie: the batch-like name
    ([("M", "N"), ("M", 2, "N")], "N"),  # a tie: the batch-like name, though M leads more often
    ([("p", 2), ("q", 2), ("p", 3), ("c", "q")], "p"),  # a tie of names neither batch-like: leading more often
    ([(1, "L")], None),  # neither batch-like nor leading anywhere: a size
    ([(1, "batch_size")], "batch_size"),
    ([None, ()], None),
])
def test_sample_dim(dims_of, expected):
    assert sample_dim(dims_of) == expected


def test_input_specs_read_dtypes_sample_axes_and_shapeless_pins():
    proto = ir.serde.serialize_model(parse("float[N, 8] x, string[N] s, float t, int64 k"))
    proto.graph.input[2].type.tensor_type.ClearField("shape")
    model = ir.serde.deserialize_model(proto)
    specs = input_specs(model)
    assert [(s.name, s.dtype, s.dims, s.sample_axis) for s in specs] == [
        ("x", np.dtype("float32"), ("N", 8), 0), ("s", np.dtype("O"), ("N",), 0),
        ("t", np.dtype("float32"), None, None), ("k", np.dtype("int64"), (), None)]
    pinned = input_specs(model, {"t": (2, 3)})[2]
    assert (pinned.dims, pinned.pinned, pinned.sample_axis) == ((None, None), (2, 3), 0)


def test_a_shared_value_beside_a_batch_has_no_sample_axis():
    specs = input_specs(parse("float[batch, 8] x, float[2, 8] table, float[4, batch, 8] state"))
    assert [s.sample_axis for s in specs] == [0, None, 1]


def test_a_leading_fixed_dim_is_the_batch_without_a_dynamic_one():
    assert [s.sample_axis for s in input_specs(parse("float[3, 8] x, float[2, 8] c"))] == [0, 0]
    assert [s.sample_axis for s in input_specs(parse("float[1, 8] x, float[2, 1, 8] state"))] == [0, 1]


@pytest.mark.parametrize(("shapes", "message"), [
    ({"z": (1, 8)}, r"--input-shape names 'z', not a model input \(inputs: x, c\)"),
    ({"x": (0, 8)}, r"--input-shape x:0,8: every dim must be >= 1"),
    ({"x": (1, 8, 1)}, r"--input-shape x:1,8,1 has rank 3, the model declares x \[N, 8\]"),
    ({"c": (2, 4)}, r"--input-shape c:2,4: axis 1 is fixed to 8 in the model \(c \[2, 8\]\)"),
])
def test_input_specs_refuse_pins_that_do_not_fit(shapes, message):
    with pytest.raises(OnnxcompError, match=message):
        input_specs(parse("float[N, 8] x, float[2, 8] c"), shapes)


def test_fixed_batch_prefers_the_pinned_size_then_the_declared_one():
    free = parse("float[N, 8] x")
    assert fixed_batch(free) is None
    assert fixed_batch(free, {"x": (3, 8)}) == 3
    declared = parse("float[10, 8] x", outputs="float[10, 8] y")
    assert fixed_batch(declared) == 10
    assert fixed_batch(parse("float r, float[N, 8] x")) is None  # a scalar has no sample axis
    # dims named apart (tf2onnx) are anonymous sample dims beside a fixed 3: the pin comes first
    apart = parse("float[unk1, 8] x, float[unk2, 8] y, float[3, 8] z", body="y2 = Identity(x)", outputs="float[unk1, 8] y2")
    assert fixed_batch(apart) == 3 and fixed_batch(apart, {"x": (5, 8)}) == 5


@pytest.mark.parametrize(("text", "expected"), [
    ("x:1,3,640,640", ("x", (1, 3, 640, 640))),
    ("x: 2 , 8", ("x", (2, 8))),
    ("sr:", ("sr", ())),
    ("a:b:4", ("a:b", (4,))),  # the name may hold a colon: the dims follow the last one
])
def test_parse_input_shape(text, expected):
    assert parse_input_shape(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("x", "expected NAME:D1,D2,..."), (":1,2", "expected NAME:D1,D2,..."), ("x:1,b", "dims must be integers"),
    ("x:1.5", "dims must be integers"),
])
def test_parse_input_shape_errors(text, message):
    with pytest.raises(OnnxcompError, match=f"--input-shape '{text}': {message}"):
        parse_input_shape(text)


def test_parse_input_value_types_and_shapes():
    name, value = parse_input_value("v=-2")
    assert name == "v" and value.shape == () and value.dtype.kind == "i" and int(value) == -2
    assert parse_input_value("v=1e3")[1].dtype.kind == "f"
    pair = parse_input_value("v=2, 3")[1]
    assert pair.shape == (2,) and pair.tolist() == [2, 3]


@pytest.mark.parametrize(("text", "message"), [
    ("sr", "expected NAME=V"), ("=3", "expected NAME=V"), ("sr= ", "expected NAME=V"),
    ("sr=fast", "values must be numbers"), ("v=1,", "values must be numbers"),
    ("x=inf", "values must be finite"), ("x=1,nan", "values must be finite"),
])
def test_parse_input_value_errors(text, message):
    with pytest.raises(OnnxcompError, match=f"--input-value '{text}': {message}"):
        parse_input_value(text)


def test_check_values_and_check_pins():
    model = parse("float[N, 8] x, int64 sr")
    specs = input_specs(model)
    check_values(specs, {"sr": 16000})
    with pytest.raises(OnnxcompError, match=r"--input-value names 'a', 'b', not a model input \(inputs: x, sr\)"):
        check_values(specs, {"b": 1, "a": 2, "sr": 3})
    check_pins(model, {"x": (2, 8)}, {"sr": np.asarray(16000)})
    with pytest.raises(OnnxcompError, match="expects int64 values, got 0.5"):
        check_pins(model, {}, {"sr": np.asarray(0.5)})
    with pytest.raises(OnnxcompError, match="rank 1"):
        check_pins(model, {"x": (8,)}, {})


def test_pinned_value_shapes_casts_and_repeats():
    table = InputSpec("t", np.dtype("float32"), (2, "batch", 3), 1)
    repeated = pinned_value(table, np.arange(6), count=4)
    assert repeated.shape == (2, 4, 3) and repeated.dtype == np.float32
    np.testing.assert_array_equal(repeated[:, 2], np.arange(6).reshape(2, 3))
    shared = InputSpec("s", np.dtype("int32"), ("L",), None)
    assert pinned_value(shared, np.asarray([1.0, 2.0, 3.0]), count=5).tolist() == [1, 2, 3]  # no sample axis
    assert pinned_value(shared, np.asarray(7)).tolist() == [7]  # one number, a dynamic dim: size 1
    flag = InputSpec("f", np.dtype("bool"), (), None)
    assert pinned_value(flag, np.asarray(1)).dtype == np.bool_
    shapeless = InputSpec("u", np.dtype("float32"), None, None)
    assert pinned_value(shapeless, np.ones((2, 2))).shape == (2, 2)
    with pytest.raises(OnnxcompError, match=r"a value of shape \[4\] does not fit t \[2, batch, 3\]"):
        pinned_value(table, np.arange(4))
    with pytest.raises(OnnxcompError, match=r"a value of shape \[3, 3\] does not fit t \[2, batch, 3\]"):
        pinned_value(table, np.zeros((3, 3)))


def test_a_graph_network_has_no_sample_axis():
    """minimol's shape: node rows, edge indices into them and per-graph outputs; the dim most inputs
    share (num_nodes) is on no output while another input dim (num_graphs) is, so no input is sliced."""
    model = parse("float[num_nodes, 4] feat, int64[2, num_edges] edge_index, int64[num_nodes] batch, "
                  "float[num_graphs] graph_slots", "y = Identity(graph_slots)", "float[num_graphs] y")
    assert [s.sample_axis for s in input_specs(model)] == [None, None, None, None]
    # the same inputs with an output that runs along the shared dim keep it as the sample axis
    per_node = parse("float[num_nodes, 4] feat, int64[num_nodes] batch", "y = Identity(feat)", "float[num_nodes, 4] y")
    assert [s.sample_axis for s in input_specs(per_node)] == [0, 0]
    # outputs that name no input's dim (an exporter's own names) say nothing either way
    renamed = parse("float[batch, 4] x, float[batch, 2] m", "y = Identity(x)", "float[unk_7, 4] y")
    assert [s.sample_axis for s in input_specs(renamed)] == [0, 0]


def test_outputs_that_lead_with_a_fixed_size_fix_the_batch():
    """khmersm: x [batch, seq] -> emissions [1, seq, 2]: samples stay on axis 0 and run one at a
    time (every batch of 64 generated samples failed, and the run fell back to weights alone)."""
    model = parse("int64[batch, seq] x, bool[batch, seq] mask", "y = Identity(x)", "float[1, seq, 2] y")
    assert [s.sample_axis for s in input_specs(model)] == [0, 0]
    assert fixed_batch(model) == 1
    assert fixed_batch(model, {"x": (4, 48)}) == 4  # a pinned batch comes first
    assert fixed_batch(parse("float[batch, 8] x", "y = Identity(x)", "float[batch, 8] y")) is None
