"""samples.probe: the configurations of dynamic dims and guessed sample rates to try, in order,
and generated samples in the first one ONNX Runtime runs (probed in a child process)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxcomp.errors import OnnxcompError
from onnxcomp.samples.data import NoRunnableInputError
from onnxcomp.samples.dims import AUDIO_LENGTHS, OTHER_SIZES
from onnxcomp.samples.probe import MAX_PROBES, SAMPLE_RATES, Configuration, configurations, generated_samples
from onnxcomp.samples.signature import input_specs
from tests.test_generated import parsed




def framed(frame: int) -> ir.Model:
    """x [N, L] reshaped to frames of ``frame``: runs only where L divides by it."""
    return parsed("float[N, L] x", "y = Reshape(x, shape)", f"float[M, {frame}] y",
                  {"shape": np.array([-1, frame], np.int64)})


def test_describe_names_sizes_and_values():
    assert Configuration({}, {}).describe() == "the declared shapes"
    assert Configuration({"H": 32, "W": 64}, {"sr": np.asarray(16000)}).describe() == "H=32, W=64, sr=16000"


def test_every_dim_moves_to_its_next_candidate_together():
    model = parsed("float[N, L] x, int64[N, S] ids", "y = Identity(x)", "float[N, L] y")
    found = configurations(model, input_specs(model), {})
    # L (other) has 10 candidates, S (tokens) 5: S stays at its last one from level 5 on
    assert [c.sizes for c in found[:6]] == [{"L": 16, "S": 16}, {"L": 1, "S": 32}, {"L": 32, "S": 64},
                                            {"L": 64, "S": 128}, {"L": 8, "S": 8}, {"L": 100, "S": 8}]
    assert len(found) == len(OTHER_SIZES) and all(c.values == {} for c in found)


def test_sample_rates_are_tried_with_each_size_and_pins_stay():
    model = parsed("float[batch, L] x, int64 sr, float[batch, H] h", "y = Identity(x)", "float[batch, L] y")
    found = configurations(model, input_specs(model, {"h": (1, 7)}), {})
    assert len(found) == 2 * len(AUDIO_LENGTHS)
    assert [(c.sizes["L"], int(c.values["sr"])) for c in found[:3]] == [(512, 16000), (512, 8000), (1600, 16000)]
    assert {c.sizes["H"] for c in found} == {7} and found[0].values["sr"].dtype == np.int64
    assert [int(rate) for rate in SAMPLE_RATES] == [16000, 8000]
    given = configurations(model, input_specs(model), {"sr": np.asarray(16000)})
    assert len(given) == len(AUDIO_LENGTHS) and given[0].values == {}  # a pinned rate is not guessed


def test_configurations_are_capped_at_max_probes():
    model = parsed("float[batch, 3, H, W] x, int64 sr", "y = Identity(x)", "float[batch, 3, H, W] y")
    found = configurations(model, input_specs(model), {})
    assert len(found) == MAX_PROBES and len({(tuple(c.sizes.items()), int(c.values["sr"])) for c in found}) == MAX_PROBES


def test_the_first_configuration_that_runs_gives_the_samples():
    samples = generated_samples(framed(400), count=3, seed=1)
    assert samples.inputs["x"].shape == (3, 400)  # 400, the Reshape's hint, after the usual sizes that do not divide
    assert samples.generated


def test_static_inputs_are_not_probed():
    # every dim fixed: generated as declared even though ONNX Runtime would refuse the Reshape
    model = parsed("float[2, 6] x", "y = Reshape(x, shape)", "float[M, 5] y", {"shape": np.array([-1, 5], np.int64)})
    assert generated_samples(model, count=2).inputs["x"].shape == (2, 6)


def test_pins_are_checked_before_probing_and_nothing_runnable_names_the_first_guess():
    with pytest.raises(OnnxcompError, match="--input-shape x:1,2,3 has rank 3"):
        generated_samples(framed(400), shapes={"x": (1, 2, 3)})
    rated = parsed("float[batch, L] x, int64 sr", "y = Identity(x)", "float[batch, L] y")
    with pytest.raises(OnnxcompError, match=r"--input-value sr: the model expects int64 values, got 0.5") as info:
        generated_samples(rated, values={"sr": np.asarray(0.5)})
    assert not isinstance(info.value, NoRunnableInputError)  # the user's error, not a configuration that fails
    with pytest.raises(NoRunnableInputError, match=r"no generated input ran in ONNX Runtime \(10 configurations tried, "
                                                   r"from L=16\); last error: .*--input-shape NAME:D1,D2") as info:
        generated_samples(framed(7919))  # a prime over 4096: no candidate divides by it
    assert info.value.last_error and info.value.last_error in str(info.value)
