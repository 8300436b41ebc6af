"""Embedding tables decoded per looked-up row at run time (onnxcomp.encodings.row_lookup)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxcomp.encodings import row_lookup
from onnxcomp.passes import InsertDequantizeLookupPass
from onnxcomp.reporting.report import inspect_model, stored_weights
from onnxcomp.runtime.mobile import ort_ready_model

V, D = 1000, 48


def clustered_table(groups: int, levels: int, axis: int = 0, seed: int = 0) -> np.ndarray:
    """A [V, D] table whose groups (see quantize.group_view) each hold `levels` distinct values."""
    rng = np.random.default_rng(seed)
    table = np.empty((V, D), np.float32)
    if axis == 0:
        view = table.reshape(groups, -1)
        for g in range(groups):
            view[g] = rng.choice(rng.normal(size=levels).astype(np.float32), size=view.shape[1])
    else:
        per = D // groups
        for g in range(groups):
            table[:, g * per:(g + 1) * per] = rng.choice(rng.normal(size=levels).astype(np.float32), size=(V, per))
    return table


def embedding_model(table: np.ndarray, index_type=TensorProto.INT64, tied: bool = False, axis: int | None = None) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    gather = helper.make_node("Gather", ["E", "ids"], ["e"], **({} if axis is None else {"axis": axis}))
    nodes = [gather, helper.make_node("MatMul", ["e", "W"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", 5])]
    if tied:  # the same table also read as a MatMul weight (tied input/output embeddings)
        nodes.append(helper.make_node("MatMul", ["h", "E"], ["logits"]))
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", D]))
    inputs = [helper.make_tensor_value_info("ids", index_type, ["batch", "sequence"])]
    if tied:
        inputs.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", V]))
        nodes[-1].input[:] = ["h", "E"]
    graph = helper.make_graph(nodes, "embedding", inputs, outputs,
                              [numpy_helper.from_array(table, "E"),
                               numpy_helper.from_array(rng.normal(size=(D, 5)).astype(np.float32), "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def encoded(proto: onnx.ModelProto, groups=None) -> tuple[ir.Model, list[dict]]:
    model = ir.serde.deserialize_model(proto)
    result = InsertDequantizeLookupPass(groups=groups or {})(model)
    return model, result.rows


def run(proto: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("columns", [7, 48, 385])
def test_pack_rows_round_trip(bits, columns):
    codes = np.random.default_rng(bits).integers(0, 1 << bits, size=(13, columns))
    words = row_lookup.pack_rows(codes, bits)
    assert words.shape[0] == 13
    assert np.array_equal(row_lookup.unpack_rows(words, bits, columns), codes)


@pytest.mark.parametrize("groups, levels, axis", [(None, 100, 0), (None, 16, 0), (16, 8, 0), (8, 16, 0), (4, 4, 1)])
@pytest.mark.parametrize("index_type", [TensorProto.INT64, TensorProto.INT32])
def test_row_decode_is_exact_and_not_folded(groups, levels, axis, index_type, tmp_path):
    # 16 groups of 3,000 entries end mid-row (62.5 rows): such rows straddle two codebooks.
    table = clustered_table(groups or 1, levels, axis)
    source = embedding_model(table, index_type)
    plan = {} if groups is None else {"E": (groups, axis)}
    model, report = encoded(source, plan)
    assert [r["rows"] for r in report] == ["run time"]
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto)
    ids = np.random.default_rng(2).integers(-V, V, size=(3, 11)).astype(np.int32 if index_type == TensorProto.INT32 else np.int64)
    assert np.array_equal(run(proto, {"ids": ids})[0], run(source, {"ids": ids})[0])
    # Nothing [V, D]-sized is built at load: the optimized session holds no float table.
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    assert all(t.data_type != TensorProto.FLOAT or np.prod(t.dims) < V * D for t in optimized.graph.initializer)
    # The byte model prices what is written (names not shortened here: allow their bytes).
    assert abs(report[0]["bytes_after"] - (len(proto.SerializeToString()) - 4 * D * 5 - 60)) < 1200


@pytest.mark.parametrize("groups, levels", [(8, 16), (16, 8)])  # 16 groups end mid-row
def test_inspect_and_mobile_see_the_whole_table(tmp_path, groups, levels):
    table = clustered_table(groups, levels)
    source = embedding_model(table)
    model, _ = encoded(source, {"E": (groups, 0)})
    weights = stored_weights(model)
    assert [w.use for w in weights] == [("Gather", 0, 0), ("MatMul", 0, 1)]
    assert np.array_equal(weights[0].array, table)
    row = inspect_model(model)[0]
    assert (row.encoding, row.bits, row.shape) == ("grouped", int(np.log2(levels)), [V, D])
    path = tmp_path / "m.onnx"
    onnx.save(ir.serde.serialize_model(model), str(path))
    ready, report = ort_ready_model(path)
    assert "BitShift" not in {n.op_type for n in ready.graph.node}
    ids = np.random.default_rng(3).integers(0, V, size=(2, 9))
    assert np.array_equal(run(ready, {"ids": ids})[0], run(source, {"ids": ids})[0])


def test_tied_table_decodes_at_load():
    """A table also read as a MatMul weight is decoded whole at load, as before."""
    table = clustered_table(1, 16)
    source = embedding_model(table, tied=True)
    assert row_lookup.row_gathers(ir.serde.deserialize_model(source).graph.initializers["E"]) is None
    model, report = encoded(source)
    assert report and "rows" not in report[0]
    feeds = {"ids": np.array([[1, 2]]), "h": np.ones((1, V), np.float32)}
    for got, want in zip(run(ir.serde.serialize_model(model), feeds), run(source, feeds)):
        np.testing.assert_array_equal(got, want)


def test_gather_along_columns_is_not_a_row_lookup():
    table = clustered_table(1, 16)
    node = helper.make_node("Gather", ["E", "ids"], ["e"], axis=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [4])],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)], [numpy_helper.from_array(table, "E")])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8))
    assert row_lookup.row_gathers(model.graph.initializers["E"]) is None


def test_second_pass_changes_nothing():
    model, _ = encoded(embedding_model(clustered_table(8, 16)), {"E": (8, 0)})
    before = ir.serde.serialize_model(model).SerializeToString()
    result = InsertDequantizeLookupPass(groups={"E": (8, 0)})(model)
    assert not result.modified
    assert ir.serde.serialize_model(model).SerializeToString() == before


def test_split_table_is_exact_and_each_part_decodes_by_rows():
    table = clustered_table(1, 64)
    source = embedding_model(table)
    model = ir.serde.deserialize_model(source)
    hot = np.zeros(V, bool)
    hot[np.random.default_rng(4).choice(V, 120, replace=False)] = True
    names = row_lookup.split_table(model, "E", hot)
    assert names == ("E_hot", "E_cold")
    ids = np.random.default_rng(5).integers(-V, V, size=(4, 9))
    assert np.array_equal(run(ir.serde.serialize_model(model), {"ids": ids})[0], run(source, {"ids": ids})[0])
    report = InsertDequantizeLookupPass()(model).rows
    assert sorted((r["name"], r["rows"]) for r in report) == [("E_cold", "run time"), ("E_hot", "run time")]
    assert np.array_equal(run(ir.serde.serialize_model(model), {"ids": ids})[0], run(source, {"ids": ids})[0])
    tables = sorted((w.array.shape[0] for w in stored_weights(model) if w.ids is not None))
    assert tables == [120, V - 120]


def test_split_table_refuses_tables_read_otherwise():
    model = ir.serde.deserialize_model(embedding_model(clustered_table(1, 16), tied=True))
    assert row_lookup.split_table(model, "E", np.arange(V) < 10) is None
    assert "E" in model.graph.initializers


def pooled_embedding_model(rows_count: int = 4000, width: int = 32) -> onnx.ModelProto:
    rng = np.random.default_rng(6)
    text = f"""
        <ir_version: 8, opset_import: ["" : 13]>
        g (int64[B, S] input_ids) => (float[B, 4] out) {{
            e = Gather <axis = 0> (table, input_ids)
            m = ReduceMean <axes = [1], keepdims = 0> (e)
            out = MatMul (m, head)
        }}
    """
    proto = onnx.parser.parse_model(text)
    proto.graph.initializer.extend([numpy_helper.from_array(rng.normal(size=(rows_count, width)).astype(np.float32), "table"),
                                    numpy_helper.from_array(rng.normal(size=(width, 4)).astype(np.float32), "head")])
    return proto


def test_calibrated_compress_gives_rows_the_samples_read_more_bits():
    from onnxcomp.samples.data import Samples
    from onnxcomp.pipeline import CompressOptions, compress_model

    proto = pooled_embedding_model()
    rng = np.random.default_rng(7)
    often = rng.choice(4000, 300, replace=False)  # the samples read 300 of the 4,000 rows, Zipf-like
    weights = 1.0 / np.arange(1, 301)
    ids = often[rng.choice(300, size=(256, 16), p=weights / weights.sum())]
    target = proto.ByteSize() // 6
    original = run(proto, {"input_ids": ids[:8]})[0]
    result = compress_model(ir.serde.deserialize_model(proto), CompressOptions(target_bytes=target),
                            samples=Samples({"input_ids": ids}))
    assert len(result.data) <= target
    layers = {row.name: row for row in result.report.layers}
    assert set(layers) >= {"table_hot", "table_cold"}
    assert layers["table_hot"].shape[0] == np.unique(ids).size
    assert layers["table_hot"].bits > layers["table_cold"].bits
    # The compressed model reads the right rows: close to the original on the samples' ids.
    compressed = ort.InferenceSession(result.data, providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids[:8]})[0]
    assert np.abs(compressed - original).max() < 0.1 * np.abs(original).max()


def test_split_never_makes_a_reachable_target_unreachable():
    """Just above the smallest size the row map does not fit: the table stays whole and the
    target is still met."""
    from onnxcomp.samples.data import Samples
    from onnxcomp.errors import TargetUnreachableError
    from onnxcomp.pipeline import CompressOptions, compress_model

    proto = pooled_embedding_model()
    samples = Samples({"input_ids": np.random.default_rng(8).choice(300, size=(64, 16))})
    with pytest.raises(TargetUnreachableError) as refused:
        compress_model(ir.serde.deserialize_model(proto), CompressOptions(target_bytes=1000), samples=samples)
    target = refused.value.smallest_bytes + 2000  # the row map alone is 8,000 B
    logged: list[str] = []
    # force: the tight target is the point (reachability), not quality; the floor would refuse it
    result = compress_model(ir.serde.deserialize_model(proto), CompressOptions(target_bytes=target, force=True), samples=samples,
                            progress=logged.append)
    assert len(result.data) <= target
    assert any("not split" in line for line in logged)
    assert "table" in {row.name for row in result.report.layers}


def test_compress_model_leaves_the_callers_model_alone():
    """The pipeline works on its own copy: the caller's ir.Model and the protos it wraps keep
    their graph and names (renaming an onnx_ir initializer writes through to its TensorProto)."""
    from onnxcomp.samples.data import Samples
    from onnxcomp.pipeline import CompressOptions, compress_model

    proto = pooled_embedding_model()
    before = proto.SerializeToString()
    model = ir.serde.deserialize_model(proto)
    nodes = [node.op_type for node in model.graph]
    ids = np.random.default_rng(9).choice(300, size=(64, 16))
    compress_model(model, CompressOptions(target_bytes=proto.ByteSize() // 6), samples=Samples({"input_ids": ids}))
    assert proto.SerializeToString() == before
    assert [node.op_type for node in model.graph] == nodes and set(model.graph.initializers) == {"table", "head"}


def test_scalar_and_three_dimensional_ids():
    table = clustered_table(16, 8)
    for shape, split in (([], True), ([], False), ([2, 3, 4], True), ([2, 3, 4], False)):  # the Gather output is the graph's
        gather = helper.make_node("Gather", ["E", "ids"], ["y"])
        graph = helper.make_graph([gather], "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, shape)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape + [D])],
                                  [numpy_helper.from_array(table, "E")])
        source = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
        model = ir.serde.deserialize_model(source)
        if split:
            row_lookup.split_table(model, "E", np.arange(V) % 7 == 0)
        report = InsertDequantizeLookupPass(groups={"E": (16, 0)})(model).rows
        assert all(r["rows"] == "run time" for r in report) and len(report) == (2 if split else 1)
        assert [o.name for o in model.graph.outputs] == ["y"]
        ids = np.random.default_rng(10).integers(-V, V, size=shape)
        assert np.array_equal(run(ir.serde.serialize_model(model), {"ids": ids})[0], table[ids])
