"""samples.dims: the dynamic dims generated inputs must choose, their kind (image side, audio
length, token count, other), their candidate sizes (stride multiples, Reshape hints), pinned
shapes, and integer scalars named like a sample rate."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxcomp.samples.dims import (
    AUDIO_LENGTHS,
    IMAGE_SIZES,
    OTHER_SIZES,
    TOKEN_COUNTS,
    DimVariable,
    dim_key,
    dim_sizes,
    dim_variables,
    pinned_sizes,
    rate_inputs,
    stride_product,
)
from onnxcomp.samples.signature import InputSpec, input_specs


def parse(text: str, initializers: dict[str, np.ndarray] | None = None) -> ir.Model:
    proto = onnx.parser.parse_model(text)
    for name, array in (initializers or {}).items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(array, name))
    return ir.serde.deserialize_model(proto)


def conv_model(strides: list[int], dims: str = "N, 3, height, width") -> ir.Model:
    """One Conv per entry of ``strides`` over x [dims]."""
    lines, previous = [], "x"
    for index, stride in enumerate(strides):
        lines.append(f"  c{index} = Conv <strides = [{stride}, {stride}]> ({previous}, k{index})")
        previous = f"c{index}"
    lines.append(f"  y = Identity({previous})")
    text = f"""<ir_version: 8, opset_import: ["" : 17]>
    g (float[{dims}] x) => (float[N, 3, a, b] y) {{
    {chr(10).join(lines)}
    }}"""
    return parse(text, {f"k{i}": np.zeros((3, 3, 1, 1), np.float32) for i in range(len(strides))})


def test_dim_key_is_the_dim_param_or_input_and_axis():
    spec = InputSpec("x", np.dtype("float32"), ("N", 3, None, "W"), 0)
    assert [dim_key(spec, axis) for axis in range(4)] == ["N", "x[1]", "x[2]", "W"]


@pytest.mark.parametrize(("strides", "product"), [([], 1), ([2], 2), ([2, 2], 4), ([3], 3), ([2] * 6, 32)])
def test_stride_product_multiplies_strides_up_to_32(strides, product):
    assert stride_product(conv_model(strides)) == product


def test_stride_product_counts_poolings_and_ignores_unstrided_ops():
    model = parse("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 3, H, W] x) => (float[N, 3, a, b] y) {
      c = Conv(x, k)
      p = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (c)
      y = AveragePool <kernel_shape = [3, 3], strides = [3, 1]> (p)
    }""", {"k": np.zeros((3, 3, 1, 1), np.float32)})
    assert stride_product(model) == 6  # the largest stride of each op: 2 * 3


def test_image_sides_are_multiples_of_the_stride_product():
    model = conv_model([3])  # stride 3: only 480 and 96 of the usual sizes divide
    specs = input_specs(model)
    variables = dim_variables(model, specs)
    expected = (480, 96, 21, 30, 12, 6, 3)
    assert variables == [DimVariable("height", "spatial", expected), DimVariable("width", "spatial", expected)]
    assert dim_sizes(model, specs) == {"height": 480, "width": 480}
    assert dim_variables(conv_model([]), input_specs(conv_model([])))[0].candidates == (*IMAGE_SIZES, 7, 10, 4, 2, 1)


def test_anonymous_trailing_dims_of_a_float_rank_4_input_are_spatial():
    model = conv_model([2], dims="N, 3, ?, ?")
    assert [(v.key, v.kind) for v in dim_variables(model, input_specs(model))] == [("x[2]", "spatial"), ("x[3]", "spatial")]


@pytest.mark.parametrize(("declaration", "kind", "candidates"), [
    ("float[batch, sequence] x", "audio", AUDIO_LENGTHS),
    ("int64[batch, sequence] x", "tokens", TOKEN_COUNTS),
    ("int64[batch, L] x", "tokens", TOKEN_COUNTS),  # integer ids on axis 1 of a rank-2 input
    ("float[batch, time, features] x", "other", OTHER_SIZES),  # a sequence of feature vectors
    ("float[batch, L] x", "other", OTHER_SIZES),
])
def test_kinds_from_names_dtypes_and_ranks(declaration, kind, candidates):
    rank = declaration.count(",") + 1
    dims = ", ".join(["batch"] + [f"o{i}" for i in range(rank - 1)])
    model = parse(f"""<ir_version: 8, opset_import: ["" : 17]>
    g ({declaration}) => ({declaration.split()[0].split("[")[0]}[{dims}] y) {{
      y = Identity(x)
    }}""")
    (variable,) = [v for v in dim_variables(model, input_specs(model)) if v.key != "features"]
    assert (variable.kind, variable.candidates) == (kind, candidates)


def test_a_float_waveform_beside_a_sample_rate_is_audio_and_the_rate_is_found():
    model = parse("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[batch, L] x, int64 sr) => (float[batch, L] y) {
      y = Identity(x)
    }""")
    specs = input_specs(model)
    assert [(v.key, v.kind) for v in dim_variables(model, specs)] == [("L", "audio")]
    assert rate_inputs(specs, {}) == ["sr"]
    assert rate_inputs(specs, {"sr": np.asarray(16000)}) == []  # pinned by the user: nothing to guess


@pytest.mark.parametrize(("declaration", "found"), [
    ("int64 sr", True), ("int32 sample_rate", True), ("int64 samplingrate", True), ("uint16 fs", True),
    ("float sr", False),  # not an integer
    ("int64[1] sr", False),  # not a scalar
    ("int64 sr2", False), ("int64 rates", False),
])
def test_rate_inputs_are_integer_scalars_named_like_a_rate(declaration, found):
    model = parse(f"""<ir_version: 8, opset_import: ["" : 17]>
    g (float[batch, 8] x, {declaration}) => (float[batch, 8] y) {{
      y = Identity(x)
    }}""")
    name = declaration.split()[1]
    assert rate_inputs(input_specs(model), {}) == ([name] if found else [])


def test_reshape_targets_add_candidates():
    model = parse("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N, L] x) => (float[N, a, b] y) {
      y = Reshape(x, shape)
    }""", {"shape": np.array([-1, 4, 400, 5000], np.int64)})
    (variable,) = dim_variables(model, input_specs(model))
    assert variable.kind == "other"
    assert variable.candidates == (*OTHER_SIZES, 400)  # 4 is already a candidate; -1 and 5000 are outside [8, 4096]


def test_a_dim_shared_by_inputs_is_one_variable_and_the_sample_axis_none():
    model = parse("""<ir_version: 8, opset_import: ["" : 17]>
    g (int64[batch, sequence] ids, int64[batch, sequence] mask) => (int64[batch, sequence] y) {
      y = Mul(ids, mask)
    }""")
    specs = input_specs(model)
    assert [v.key for v in dim_variables(model, specs)] == ["sequence"]
    assert dim_sizes(model, specs) == {"sequence": TOKEN_COUNTS[0]}


def test_pinned_shapes_decide_their_dims_and_leave_the_sample_axis():
    model = conv_model([2])
    specs = input_specs(model, {"x": (5, 3, 64, 96)})
    assert pinned_sizes(specs) == {"height": 64, "width": 96}  # not N: samples are counted, not pinned
    assert dim_variables(model, specs) == []
    assert dim_sizes(model, specs) == {"height": 64, "width": 96}
