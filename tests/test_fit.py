"""onnxcomp.stages.fit: plan and build until the serialized model fits the target (tightening by
the overshoot, growing into slack, ending at the smallest plan), with GPTQ Hessians only for
real samples, and the error for a target below the smallest build."""

from __future__ import annotations

import re

import numpy as np
import pytest

from onnxcomp import modelfile
from onnxcomp.errors import TargetUnreachableError
from onnxcomp.planning.allocate import load_budget
from onnxcomp.samples.data import Samples
from onnxcomp.stages.analyze import canonical_weights, price
from onnxcomp.stages.build import fixed_bytes
from onnxcomp.stages.fit import MAX_ATTEMPTS, Plan, fit, fit_calibrated, fit_plan, unreachable
from onnxcomp.stages.options import CompressOptions
from onnxcomp.stages.steps import Steps
from onnxcomp.sizes import format_size
from tests.conftest import build_model

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

# A weight and a 2.4 KB int64 table that onnxcomp keeps as it is.
KEPT_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 16] x, int64[300] i) => (float[N, 8] y, int64[300] z) {
  y = MatMul(x, w)
  z = Add(i, table)
}
"""


@pytest.fixture
def plan(mlp_model) -> Plan:
    model, _ = canonical_weights(mlp_model)
    layers = price(model, {}, {})
    return Plan(model, layers, {}, fixed_bytes(model, layers, False))


def attempt_lines(lines):
    return [re.sub(r"attempt (\d+): .*?\): ", r"\1: ", line) for line in lines]


def test_a_fit_with_slack_plans_again_and_keeps_the_largest_that_fits(plan):
    lines = []
    result = fit(plan.model, plan.layers, 1500 - plan.fixed, CompressOptions(1500), {}, lines.append, decoded=True)
    assert result.fits and result.size == len(result.data) <= 1500
    assert result.attempts == len(lines) == 3
    assert attempt_lines(lines)[-1] == "3: fits; kept"
    assert all("fits with" in line and "planning again to use it" in line for line in lines[:2])
    assert set(result.decoded) == {"w1", "b1", "w2"} and result.passes["ClusterWeightsPass"] == {"weights": 2}
    once = fit(plan.model, plan.layers, 1500 - plan.fixed, CompressOptions(1500), {}, None, grow_attempts=0)
    assert once.attempts == 1 and once.fits and once.size < result.size and once.decoded == {}


def test_an_overshoot_tightens_the_budget_by_it(plan):
    lines = []
    result = fit(plan.model, plan.layers, 3000, CompressOptions(1200), {}, lines.append, grow_attempts=0)
    assert result.fits and result.size <= 1200 and result.attempts == len(lines) > 1
    assert all(re.fullmatch(r"\d: over by [\d.]+ K?B; planning that much smaller", line) for line in attempt_lines(lines)[:-1])
    assert attempt_lines(lines)[-1] == f"{len(lines)}: fits; kept"


def test_below_the_smallest_plan_it_ends_with_the_floor(plan):
    lines = []
    result = fit(plan.model, plan.layers, 100, CompressOptions(100), {}, lines.append)
    assert not result.fits and result.attempts == 1 and result.floor_bytes == result.size > 100
    assert attempt_lines(lines) == ["1: over, and no smaller plan exists"]
    error = unreachable(plan.model, plan.layers, CompressOptions(100), {}, None)  # builds the smallest itself
    assert isinstance(error, TargetUnreachableError) and error.smallest_bytes == result.size
    assert str(error) == (f"target 100 B (100 B) is below the smallest size onnxcomp can reach for this model: "
                          f"{result.size} B ({result.size} B)")


def test_unreachable_names_the_initializers_onnxcomp_keeps(rng):
    model = build_model(KEPT_TEXT, {"w": rng.standard_normal((16, 8)).astype(np.float32),
                                    "table": np.arange(300, dtype=np.int64)})
    model, _ = canonical_weights(model)
    error = unreachable(model, price(model, {}, {}), CompressOptions(100), {}, 2900)
    assert str(error).endswith("2.9 KB (2900 B); 2.4 KB of it are initializers onnxcomp keeps as they are (read by Add)")
    assert "keeps" not in str(unreachable(model, price(model, {}, {}), CompressOptions(100), {}, 30000))  # under a tenth


def test_a_budget_that_never_comes_down_far_enough_ends_after_max_attempts(rng):
    model = build_model(KEPT_TEXT, {"w": rng.standard_normal((16, 8)).astype(np.float32),
                                    "table": np.arange(300, dtype=np.int64)})
    model, _ = canonical_weights(model)
    lines = []
    result = fit(model, price(model, {}, {}), 5000, CompressOptions(2800), {}, lines.append)  # 5000 ignores the table
    assert not result.fits and result.attempts == MAX_ATTEMPTS == len(lines) and result.floor_bytes is None


def test_fit_plan_spends_the_target_less_the_fixed_bytes(plan):
    result = fit_plan(plan, CompressOptions(1500), None)
    same = fit(plan.model, plan.layers, 1500 - plan.fixed, CompressOptions(1500), {}, None)
    assert result.fits and result.data == same.data


def test_fit_calibrated_plans_gptq_only_for_real_samples(plan, rng):
    inputs = {"x": rng.standard_normal((32, 16)).astype(np.float32)}
    steps = Steps()
    planned, result = fit_calibrated(plan, CompressOptions(1500), Samples(inputs, generated=True), 32, None, 3000, steps)
    assert planned.hessians is None and planned.max_load == load_budget(3000) and result.fits
    assert set(steps.seconds) == {"allocate_and_encode"}
    steps = Steps()
    planned, result = fit_calibrated(plan, CompressOptions(1500), Samples(inputs), 32, None, 3000, steps)
    assert set(planned.hessians) == {"w1", "w2"} and planned.hessians["w1"].shape == (16, 16)
    assert set(steps.seconds) == {"hessians", "allocate_and_encode"}
    assert result.fits and len(modelfile.serialized_bytes(result.model)) == result.size <= 1500
    assert plan.hessians is None  # the plan handed in is left as it was


def test_slack_no_setting_can_use_is_not_built_again(plan, monkeypatch):
    """Where the unused bytes buy no weight a larger setting, the grown plan is the kept one: it is
    not built again (a 19 MB recogniser was built three times to the same bytes)."""
    import dataclasses

    import onnxcomp.stages.fit as fit_module

    coarse = [dataclasses.replace(layer, candidates=[layer.smallest, layer.dense]) for layer in plan.layers]
    builds = []
    real_build = fit_module.build
    monkeypatch.setattr(fit_module, "build", lambda *args, **kwargs: builds.append(1) or real_build(*args, **kwargs))
    lines = []
    target = sum(layer.smallest.bytes for layer in coarse) + plan.fixed + 300
    result = fit(plan.model, coarse, target - plan.fixed, CompressOptions(target), {}, lines.append)
    assert result.fits and result.attempts == 1 and len(builds) == 1
    assert attempt_lines(lines) == ["1: fits with " + lines[0].split("fits with ")[1],
                                    f"attempt 2: the plan of attempt 1 again ({format_size(result.size)}); kept"]
