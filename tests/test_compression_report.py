"""The typed compression report and its JSON form."""

from __future__ import annotations

import json

from onnxcomp.reporting.compression_report import CompressionReport, LayerRow


def report(**extra) -> CompressionReport:
    row = LayerRow(name="w", shape=[4, 8], params=32, encoding="lookup", bits=3, bytes_before=128, bytes_after=20,
                   role="weight", levels=8, sparsity=0.0, stored_name="a", relative_error=0.01, sensitivity=2.5)
    return CompressionReport(input_bytes=1000, output_bytes=250, target_bytes=260, ratio=4.0, layers=[row],
                             fidelity={"cosine": 0.99, "top1_agreement": None, "samples": 8}, attempts=[],
                             verified=True, metadata_bytes=12, seconds={"total": 1.5}, **extra)


def test_optional_entries_are_absent_from_the_json_where_they_do_not_apply():
    data = report().to_dict()
    assert list(data) == ["input_bytes", "output_bytes", "target_bytes", "ratio", "layers", "fidelity", "attempts",
                          "verified", "metadata_bytes", "seconds"]
    assert "accuracy" not in data and "training" not in data and "neurons" not in data
    labelled = report(accuracy={"original": 0.98, "compressed": 0.97, "samples": 100, "held_out": True}).to_dict()
    assert labelled["accuracy"]["compressed"] == 0.97


def test_rows_leave_out_what_the_allocator_did_not_know():
    inspected = LayerRow(name="w", shape=[2], params=2, encoding="dense", bits=32, bytes_before=8, bytes_after=8)
    assert set(inspected.to_dict()) == {"name", "shape", "params", "encoding", "bits", "bytes_before", "bytes_after",
                                        "role", "levels", "sparsity"}
    assert report().to_dict()["layers"][0]["sensitivity"] == 2.5


def test_json_round_trip_gives_the_same_report():
    original = report(quality_floor={"floor": 0.97, "met": True}, output="out.onnx", input="in.onnx", peak_rss_bytes=2**20)
    text = json.dumps(original.to_dict())
    again = CompressionReport.from_dict(json.loads(text))
    assert again == original
    assert isinstance(again.layers[0], LayerRow) and again.layers[0].bits == 3


def test_save_writes_the_json_form_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("an older report")
    report(output="out.onnx").save(path)
    assert json.loads(path.read_text()) == report(output="out.onnx").to_dict()
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_report_carries_what_each_graph_pass_did(tmp_path):
    from pathlib import Path

    from onnxcomp.pipeline import CompressOptions, compress_file

    source = Path(__file__).resolve().parent.parent / "models" / "lenet300.onnx"
    compressed = compress_file(source, tmp_path / "out.onnx",
                               CompressOptions(target_bytes=source.stat().st_size // 12, sensitivity=False))
    passes = compressed.passes
    assert list(passes) == ["PruneWeightsPass", "ClusterWeightsPass", "SubstituteSparseOpsPass", "InsertDequantizeLookupPass"]
    encoded = [row for row in compressed.layers if row.encoding != "dense"]
    assert passes["SubstituteSparseOpsPass"]["weights"] + passes["InsertDequantizeLookupPass"]["weights"] == len(encoded) > 0
    lookup = passes["InsertDequantizeLookupPass"]
    assert lookup["bytes_after"] < lookup["bytes_before"] / 8
    assert compressed.to_dict()["passes"] == passes
