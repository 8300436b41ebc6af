"""Prune/retrain through the pipeline on the ONNX Runtime training backend (small data, fast)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxcomp.samples.data import load_samples
from onnxcomp.errors import OnnxcompError
from onnxcomp.modelfile import load_model
from onnxcomp.pipeline import CompressOptions, compress_file
from onnxcomp.runtime.inference import session

pytestmark = pytest.mark.training  # skipped with the reason where no training build exists (conftest)

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "models" / "lenet300.onnx"
TRAIN = ROOT / "models" / "data" / "mnist_train_2k.npz"
TEST = ROOT / "models" / "data" / "mnist_test_1k.npz"


def _accuracy(path: Path) -> float:
    data = np.load(TEST)
    scores = session(str(path)).run(None, {"input": data["input"]})[0]
    return float(np.mean(scores.argmax(1) == data["labels"]))


def test_retraining_meets_budget_and_beats_calibration_only(tmp_path):
    target = 30_000
    samples = load_samples(TRAIN, load_model(MODEL))
    # force: calibration alone at this tight target is below the quality floor; it is the baseline compared against
    plain = compress_file(MODEL, tmp_path / "plain.onnx", CompressOptions(target_bytes=target, force=True), samples=samples)
    tuned = compress_file(MODEL, tmp_path / "tuned.onnx", CompressOptions(target_bytes=target, epochs=3), samples=samples)
    assert plain.output_bytes <= target and tuned.output_bytes <= target
    assert (tmp_path / "tuned.onnx").stat().st_size == tuned.output_bytes
    assert _accuracy(tmp_path / "tuned.onnx") > _accuracy(tmp_path / "plain.onnx")


def test_retraining_without_labels_distills_from_original(tmp_path):
    samples = load_samples(TRAIN, load_model(MODEL))
    samples.labels = None
    report = compress_file(MODEL, tmp_path / "out.onnx", CompressOptions(target_bytes=40_000, epochs=1), samples=samples)
    assert report.output_bytes <= 40_000
    assert _accuracy(tmp_path / "out.onnx") > 0.85


def test_epochs_without_data_is_a_clear_error(tmp_path):
    with pytest.raises(OnnxcompError, match="--data"):
        compress_file(MODEL, tmp_path / "out.onnx", CompressOptions(target_bytes=80_000, epochs=2))
    assert not (tmp_path / "out.onnx").exists()


@pytest.fixture(scope="module")
def train_samples():
    return load_samples(TRAIN, load_model(MODEL))


@pytest.mark.parametrize("method", ["prune", "sws", "admm", "vib"])
def test_each_method_meets_the_budget_and_keeps_accuracy(tmp_path, train_samples, method):
    target = 40_000
    # On 1,800 samples (28 steps an epoch) the gates' noise (log-variance from -9) needs a higher
    # rate and penalty to reach the removal threshold at all.
    epochs, gamma, lr = (8, 3e-3, 1e-2) if method == "vib" else (2, 1.6e-4, 1e-3)
    options = CompressOptions(target_bytes=target, epochs=epochs, method=method, vib_gamma=gamma, lr=lr)
    report = compress_file(MODEL, tmp_path / "out.onnx", options, samples=train_samples)
    assert report.output_bytes == (tmp_path / "out.onnx").stat().st_size <= target
    assert report.training["method"] == method
    assert report.accuracy["held_out"] and report.accuracy["samples"] == 200  # a tenth of 2k held out
    assert _accuracy(tmp_path / "out.onnx") > (0.6 if method == "vib" else 0.8)  # vib: rate 1e-2 on 1.8k samples
    if method == "vib":
        kept = report.neurons["groups"]
        assert all(group["kept"] <= group["size"] for group in kept.values())
        assert report.neurons["parameters_after"] < report.neurons["parameters_before"]


def test_vib_needs_labels(tmp_path, train_samples):
    unlabeled = train_samples.head(train_samples.count)
    unlabeled.labels = None
    with pytest.raises(OnnxcompError, match="labels"):
        compress_file(MODEL, tmp_path / "out.onnx", CompressOptions(target_bytes=40_000, epochs=1, method="vib"),
                      samples=unlabeled)
    assert not (tmp_path / "out.onnx").exists()


def test_eval_samples_are_used_for_selection_and_report(tmp_path, train_samples):
    held_out = load_samples(TEST, load_model(MODEL))
    report = compress_file(MODEL, tmp_path / "out.onnx", CompressOptions(target_bytes=40_000, epochs=1, method="prune"),
                           samples=train_samples, eval_samples=held_out)
    assert report.training["samples"] == train_samples.count and report.training["held_out"] == held_out.count
    assert report.accuracy["samples"] == held_out.count
    assert report.accuracy["compressed"] == pytest.approx(_accuracy(tmp_path / "out.onnx"))


def test_prune_rounds_and_cubic_schedule():
    from onnxcomp.training.retrain import prune_rounds, sparsity_schedule

    assert prune_rounds(64, 40) == 3 and prune_rounds(2, 40) == 1 and prune_rounds(1000, 2) == 2
    schedule = sparsity_schedule(4)
    assert schedule == sorted(schedule) and schedule[-1] == 1.0 and schedule[0] > 0.25


def _npz(path: Path, count: int, labels=None) -> Path:
    data = np.load(TRAIN)
    arrays = {"input": data["input"][:count]}
    arrays["labels"] = data["labels"][:count] if labels is None else labels
    np.savez(path, **arrays)
    return path


def test_cli_fine_tunes_by_default_with_data(tmp_path, capsys):
    from onnxcomp.cli import DEFAULT_EPOCHS, main

    report = tmp_path / "r.json"
    code = main(["compress", str(MODEL), "--target-size", "40KB", "-o", str(tmp_path / "o.onnx"), "--data", str(TRAIN),
                 "--eval-data", str(TEST), "--method", "prune", "--report", str(report), "-q"])
    assert code == 0, capsys.readouterr().err
    import json

    saved = json.loads(report.read_text())
    assert saved["training"]["epochs"] == DEFAULT_EPOCHS and saved["training"]["method"] == "prune"
    assert saved["accuracy"]["samples"] == 1000 and saved["accuracy"]["compressed"] > 0.9


@pytest.mark.parametrize("case,fragment", [
    ("labels-out-of-range", "label"),
    ("labels-wrong-count", "label"),
    ("fewer-than-a-batch", "batch"),
    ("eval-without-data", "--eval-data needs --data"),
    ("vib-without-labels", "labels"),
    ("bad-patience", "--patience"),
])
def test_cli_bad_training_input_is_a_clean_error(tmp_path, capsys, case, fragment):
    from onnxcomp.cli import main

    output = tmp_path / "o.onnx"
    args = ["compress", str(MODEL), "--target-size", "40KB", "-o", str(output), "--epochs", "1", "-q"]
    if case == "labels-out-of-range":
        args += ["--data", str(_npz(tmp_path / "d.npz", 300, labels=np.full(300, 12, np.int64)))]
    elif case == "labels-wrong-count":
        args += ["--data", str(_npz(tmp_path / "d.npz", 300, labels=np.zeros(299, np.int64)))]
    elif case == "fewer-than-a-batch":
        args += ["--data", str(_npz(tmp_path / "d.npz", 20)), "--batch-size", "64"]
    elif case == "eval-without-data":
        args += ["--eval-data", str(TEST)]
    elif case == "bad-patience":
        args += ["--data", str(TRAIN), "--patience", "0"]
    else:
        data = np.load(TRAIN)
        np.savez(tmp_path / "d.npz", input=data["input"][:300])
        args += ["--data", str(tmp_path / "d.npz"), "--method", "vib"]
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment.lower() in err.lower() and "Traceback" not in err
    assert not output.exists()


def test_default_epochs_skip_models_that_are_not_classifiers(tmp_path, capsys):
    """--data without --epochs fine-tunes classifiers only; other models calibrate as before."""
    import onnx
    from onnx import TensorProto, helper

    from onnxcomp.cli import main

    rng = np.random.default_rng(0)
    weight = helper.make_tensor("W", TensorProto.FLOAT, [16, 8, 32], rng.standard_normal(16 * 8 * 32).astype(np.float32).ravel())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16, 1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16, 1, 32])], [weight])
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((200, 16, 1, 8)).astype(np.float32))
    report = tmp_path / "r.json"
    code = main(["compress", str(model), "--target-size", "10KB", "-o", str(tmp_path / "o.onnx"), "--data", str(tmp_path / "d.npz"),
                 "--report", str(report), "-q"])
    assert code == 0, capsys.readouterr().err
    import json

    assert "training" not in json.loads(report.read_text())
    explicit = main(["compress", str(model), "--target-size", "10KB", "-o", str(tmp_path / "o2.onnx"), "--data", str(tmp_path / "d.npz"),
                     "--epochs", "2", "-q"])
    assert explicit == 2 and "logits" in capsys.readouterr().err


def test_auto_eliminates_neurons_only_at_tight_targets(tmp_path, train_samples):
    from onnxcomp.stages.finetune import wants_vib
    from onnxcomp.training.retrain import TrainingData
    from onnxcomp.model.weights import find_weights

    weights = find_weights(load_model(MODEL))  # 266,200 weights: 2 bits each is 66,550 B
    training = TrainingData(train=train_samples, held_out=None, teacher=None, held_out_teacher=None)
    assert wants_vib(CompressOptions(target_bytes=60_000, epochs=1), training, weights)
    assert not wants_vib(CompressOptions(target_bytes=70_000, epochs=1), training, weights)
    unlabeled = train_samples.head(train_samples.count)
    unlabeled.labels = None
    assert not wants_vib(CompressOptions(target_bytes=10_000, epochs=1), TrainingData(unlabeled, None, None, None), weights)
    assert wants_vib(CompressOptions(target_bytes=10**6, epochs=1, method="vib"), training, weights)
    # end to end at a loose target: auto prunes, nothing is gated or removed
    report = compress_file(MODEL, tmp_path / "out.onnx", CompressOptions(target_bytes=80_000, epochs=1), samples=train_samples)
    assert report.training["method"] == "auto" and report.neurons is None
    assert report.output_bytes <= 80_000


@pytest.mark.parametrize("min_gap", [0.0, 10.0])
def test_rounds_with_nothing_to_prune_train_towards_the_quantized_weights(tmp_path, train_samples, monkeypatch, min_gap):
    # At 300 KB (8 bits per weight) clustering alone meets the budget: no round prunes, and its
    # epoch goes to ADMM towards the allocation's projection when that moves the weights by at
    # least ADMM_MIN_GAP of their norm (forced here both ways), else it is left unused.
    from onnxcomp.training import retrain

    monkeypatch.setattr(retrain, "ADMM_MIN_GAP", min_gap)
    lines: list[str] = []
    report = compress_file(MODEL, tmp_path / "out.onnx", CompressOptions(target_bytes=300_000, epochs=2, method="prune"),
                           samples=train_samples, progress=lines.append)
    assert any("nothing more to prune" in line for line in lines)
    moved = next(line for line in lines if line.startswith("quantizing moves the weights by"))
    gap = float(moved.split("by ")[1].split(" ")[0])
    assert 0 < gap < 0.15  # 8-bit codebooks barely move the weights
    if min_gap == 0.0:
        assert moved.endswith("1 epochs without pruning go to quantization-aware training (ADMM)")
        assert any(line.startswith("admm iteration 1/1") for line in lines)
    else:
        assert moved.endswith("1 epochs without pruning left unused")
        assert not any(line.startswith("admm iteration") for line in lines)
    assert report.output_bytes <= 300_000
    assert _accuracy(tmp_path / "out.onnx") > 0.9


def test_codebook_finetune_trains_vector_codebooks_as_vectors(train_samples):
    from onnxcomp.planning.allocate import Allocation
    from onnxcomp.planning.pricing import vector_candidates
    from onnxcomp.encodings.quantize import snap_to_vectors
    from onnxcomp.training.retrain import RetrainOptions, TrainingData, finetune_codebooks
    from onnxcomp.model.weights import find_weights

    model = load_model(MODEL)
    weight = next(w for w in find_weights(model) if w.shape == (100, 300))
    values = weight.numpy().astype(np.float32)
    candidate = next(c for c in vector_candidates(values, None, float(np.sum(values**2))) if c.quant.vector_dim == 2)
    rows = candidate.quant.codebook
    teacher = session(str(MODEL)).run(None, {"input": train_samples.inputs["input"]})[0]
    training = TrainingData(train=train_samples, held_out=None, teacher=teacher, held_out_teacher=None)
    tuned = finetune_codebooks(model, Allocation({weight.name: candidate}, candidate.bytes, 0.0), {}, training,
                               RetrainOptions(batch_size=64), epochs=1)[weight.name]
    pairs = np.unique(tuned.reshape(-1, 2), axis=0)
    assert len(pairs) <= len(rows)  # still K vectors: the vector encoding stores it as before
    assert not np.allclose(np.sort(pairs, axis=0), np.sort(np.unique(snap_to_vectors(values, rows).reshape(-1, 2), axis=0), axis=0))
    assert len(np.unique(tuned)) > len(rows)  # components train separately (not K scalar levels)


def test_held_out_scores_rank_candidates(tmp_path, train_samples):
    from onnxcomp.stages.finetune import held_out_scores
    from onnxcomp.training.retrain import TrainingData

    good = MODEL.read_bytes()
    compress_file(MODEL, tmp_path / "tiny.onnx", CompressOptions(target_bytes=8_000, force=True))  # data-free at 1/133: broken
    training = TrainingData(train=train_samples, held_out=train_samples.head(500), teacher=None, held_out_teacher=None)
    scores = held_out_scores(training, (good, (tmp_path / "tiny.onnx").read_bytes()), 256)
    assert scores[0] > 0.9 > scores[1]
    assert held_out_scores(TrainingData(train_samples, None, None, None), (good,), 256) == []


def test_vib_gates_twice_the_second_time_on_the_smaller_network():
    from onnxcomp.stages.finetune import vib_epochs

    assert vib_epochs(10) == (3, 12, 1)  # 3 on the whole network, 12 on what it keeps, 1 fine-tuning
    assert vib_epochs(1) == (1, 4, 1) and vib_epochs(40) == (15, 60, 5)


def test_projection_decodes_per_channel_scaled_choices():
    # Rows of very different ranges (as BatchNorm folding leaves them) make the allocator pick a
    # per-channel-scaled lookup; the projection (ADMM's Z, and the test that decides whether ADMM
    # runs) must decode it with its scales, not snap the raw weight to the normalised codebook.
    import onnx_ir as ir

    from onnxcomp.planning.pricing import decoded_values, layer_options
    from onnxcomp.training.retrain import Planner, project, relative_distance, with_weights

    model = load_model(MODEL)
    name = next(n for n, v in model.graph.initializers.items() if v.const_value.shape == (300, 784))
    rng = np.random.default_rng(0)
    ranged = (rng.standard_normal((300, 784)) * 10.0 ** np.linspace(-2, 2, 300)[:, None]).astype(np.float32)
    model = with_weights(model, {name: ranged})

    def price(m: ir.Model):
        return [layer_options(name, m.graph.initializers[name].const_value.numpy(), "weight")]

    layers = price(model)
    budget = next(c.bytes for c in layers[0].candidates if c.kind == "scaled" and c.bits == 4)
    projected, allocation = project(model, Planner(price=price, importances={}), budget)
    choice = allocation.choices[name]
    assert choice.kind == "scaled"
    np.testing.assert_array_equal(projected[name], decoded_values(ranged, None, choice))
    assert relative_distance({name: ranged}, projected) < 0.2  # 4 uniform levels a channel (the raw weight snapped: ~1)


def test_codebook_finetune_keeps_per_channel_scaled_weights_decoded(train_samples):
    # A per-channel-scaled choice is a codebook times one scale per row, not one shared codebook:
    # it keeps its decoded values (re-clustered into one codebook it lost most of its levels)
    from onnxcomp.model.weights import find_weights
    from onnxcomp.planning.allocate import Allocation
    from onnxcomp.planning.pricing import decoded_values, scaled_candidates
    from onnxcomp.training.retrain import RetrainOptions, TrainingData, finetune_codebooks

    model = load_model(MODEL)
    first, second = (w for w in find_weights(model) if w.shape in ((300, 784), (100, 300)))
    values = {w.name: w.numpy().astype(np.float32) for w in (first, second)}
    scaled = next(c for c in scaled_candidates(values[first.name], None, float(np.sum(values[first.name] ** 2)))
                  if c.bits == 3)
    lookup = next(c for c in layer_candidates(values[second.name]) if c.kind == "lookup" and c.bits == 4)
    teacher = session(str(MODEL)).run(None, {"input": train_samples.inputs["input"]})[0]
    training = TrainingData(train=train_samples, held_out=None, teacher=teacher, held_out_teacher=None)
    choices = {first.name: scaled, second.name: lookup}
    tuned = finetune_codebooks(model, Allocation(choices, scaled.bytes + lookup.bytes, 0.0), {}, training,
                               RetrainOptions(batch_size=64), epochs=1)
    np.testing.assert_array_equal(tuned[first.name], decoded_values(values[first.name], None, scaled))
    assert len(np.unique(tuned[first.name])) > 100  # 7 levels times 300 row scales, not 7 values
    assert len(np.unique(tuned[second.name])) <= 16  # the other weight trains its shared codebook


def layer_candidates(values: np.ndarray):
    from onnxcomp.planning.pricing import layer_options

    return layer_options("w", values, "weight", grouped=False).candidates


def test_projection_can_keep_an_earlier_allocations_encodings():
    # ADMM's later Z-steps keep the first one's encoding and bits per layer (left free, the
    # knapsack switched encodings between iterations and W chased a moving target)
    import onnx_ir as ir

    from onnxcomp.planning.allocate import Allocation
    from onnxcomp.planning.pricing import layer_options
    from onnxcomp.training.retrain import Planner, project

    model = load_model(MODEL)
    name = next(n for n, v in model.graph.initializers.items() if v.const_value.shape == (100, 300))

    def price(m: ir.Model):
        return [layer_options(name, m.graph.initializers[name].const_value.numpy(), "weight", grouped=False)]

    layers = price(model)
    kept = next(c for c in layers[0].candidates if c.kind == "lookup" and c.bits == 3)
    budget = layers[0].dense.bytes // 4  # room for 8 bits: free, the allocator would take more than 3
    free = project(model, Planner(price=price, importances={}), budget)[1].choices[name]
    assert (free.kind, free.bits) != ("lookup", 3)
    _, allocation = project(model, Planner(price=price, importances={}), budget,
                            keep=Allocation({name: kept}, kept.bytes, 0.0))
    assert (allocation.choices[name].kind, allocation.choices[name].bits) == ("lookup", 3)
