"""Finding input sizes and values a model runs on when no data gives them.

A dynamic dim gets candidate sizes from its name (``height``/``W`` -> image sizes in multiples
of the graph's stride product, ``sequence`` -> audio lengths or token counts, ``batch`` -> the
sample count) and from constant ``Reshape`` targets; an int scalar named like a sample rate
(``sr``) tries 16000 and 8000. Configurations are probed in order, one sample each, in an
isolated child process (ONNX Runtime can die natively - SIGFPE - on a wrong size), and the first
that runs gives the generated samples.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp.samples.data import NoRunnableInputError, Samples
from onnxcomp.samples.dims import dim_variables, pinned_sizes, rate_inputs
from onnxcomp.errors import OnnxcompError
from onnxcomp.samples.generated import generate_samples
from onnxcomp.samples.signature import InputSpec, check_pins, input_specs

logger = logging.getLogger(__name__)

SAMPLE_RATES = (16000, 8000)
MAX_PROBES = 24
PROBE_TIMEOUT_S = 120.0  # one child's whole run: session creation plus its configurations


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One assignment of dynamic dims and guessed scalar values."""

    sizes: dict[str, int]
    values: dict[str, np.ndarray]

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.sizes.items()] + [f"{k}={v.tolist()}" for k, v in self.values.items()]
        return ", ".join(parts) or "the declared shapes"


def configurations(model: ir.Model, specs: list[InputSpec], values: Mapping[str, np.ndarray]) -> list[Configuration]:
    """Configurations to probe, best first: every dim at its k-th candidate, for k = 0, 1, ...,
    each with every sample rate; at most ``MAX_PROBES``."""
    variables = dim_variables(model, specs)
    rates = rate_inputs(specs, values)
    pinned = pinned_sizes(specs)
    depth = max([len(v.candidates) for v in variables] or [1])
    found: dict[tuple, Configuration] = {}
    for level in range(depth):
        sizes = {v.key: v.candidates[min(level, len(v.candidates) - 1)] for v in variables} | pinned
        for rate in SAMPLE_RATES if rates else (None,):
            guessed = {name: np.asarray(rate, dtype=next(s.dtype for s in specs if s.name == name)) for name in rates}
            key = (tuple(sorted(sizes.items())), rate)
            found.setdefault(key, Configuration(sizes, guessed))
            if len(found) >= MAX_PROBES:
                return list(found.values())
    return list(found.values())


def generated_samples(model: ir.Model, count: int = 64, seed: int = 0,
                      shapes: Mapping[str, Iterable[int]] | None = None,
                      values: Mapping[str, np.ndarray] | None = None) -> Samples:
    """Generated samples in the first configuration ONNX Runtime runs.

    Models whose inputs leave nothing to choose (static shapes, no guessed values) are not probed.

    Raises:
        NoRunnableInputError: no configuration ran; carries ONNX Runtime's last error line.
    """
    shapes = {k: tuple(v) for k, v in (shapes or {}).items()}
    values = dict(values or {})
    specs = input_specs(model, shapes)
    check_pins(model, shapes, values)  # a bad pin is the user's error, not a configuration that fails
    if not dim_variables(model, specs) and not rate_inputs(specs, values):
        return generate_samples(model, count, seed, shapes, values)
    candidates = configurations(model, specs, values)
    chosen, tried, last_error = _first_runnable(model, candidates, seed, shapes, values)
    if chosen is None:
        raise NoRunnableInputError(
            f"no generated input ran in ONNX Runtime ({tried} configurations tried, from "
            f"{candidates[0].describe()}); last error: {last_error}. Give the inputs' shapes and values with "
            "--input-shape NAME:D1,D2,... and --input-value NAME=V, or sample inputs with --data", last_error)
    logger.info("generated inputs run with %s", chosen.describe())
    return generate_samples(model, count, seed, shapes, values | chosen.values, chosen.sizes)


def _first_runnable(model: ir.Model, candidates: list[Configuration], seed: int, shapes: dict, values: dict
                    ) -> tuple[Configuration | None, int, str]:
    """Probe ``candidates`` in children: one child runs them in turn until one works; a child
    that crashes or hangs costs the configuration it was on, and the next child goes on after it."""
    from onnxcomp.runtime.isolated import call_isolated

    model_bytes = ir.serde.serialize_model(model).SerializeToString()
    start, last_error = 0, ""
    while start < len(candidates):
        current: list[int | None] = [None]

        def on_stage(stage: str, current: list[int | None] = current) -> None:
            if stage.startswith("probe "):
                current[0] = int(stage.split()[1])

        try:
            index, errors = call_isolated(_probe_child, model_bytes, candidates, start, seed, shapes, values,
                                          timeout=PROBE_TIMEOUT_S, stage="probing generated input sizes",
                                          on_stage=on_stage)
        except OnnxcompError as error:  # a native crash or a hang on configuration current[0]
            if current[0] is None:
                raise  # before any configuration: the model itself does not load
            last_error = str(error)
            logger.info("probe %s: %s", candidates[current[0]].describe(), last_error)
            start = current[0] + 1
            continue
        if errors:
            last_error = errors[-1]
        if index is not None:
            return candidates[index], index + 1, last_error
        return None, len(candidates), last_error
    return None, len(candidates), last_error


def _probe_child(model_bytes: bytes, candidates: list[Configuration], start: int, seed: int, shapes: dict,
                 values: dict) -> tuple[int | None, list[str]]:
    """(In the isolated child.) Index of the first configuration from ``start`` that runs, and the errors before it."""
    from onnxcomp.runtime.inference import session
    from onnxcomp.runtime.isolated import report_stage

    report_stage("loading the model in ONNX Runtime")
    sess = session(model_bytes)
    model = ir.serde.deserialize_model(onnx.load_model_from_string(model_bytes))
    names = [o.name for o in sess.get_outputs()]
    errors = []
    for index in range(start, len(candidates)):
        configuration = candidates[index]
        report_stage(f"probe {index}")
        try:
            feed = generate_samples(model, 1, seed, shapes, values | configuration.values, configuration.sizes).inputs
            sess.run(names, dict(feed))
        except OnnxcompError as error:
            errors.append(str(error))
            continue
        except Exception as error:  # ONNX Runtime raises its own exception types
            errors.append(_error_line(error))
            logger.debug("probe %s: %s", configuration.describe(), errors[-1])
            continue
        return index, errors
    return None, errors


def _error_line(error: BaseException) -> str:
    """ONNX Runtime's message on one line, its cause (at the end of a long message) kept."""
    from onnxcomp.runtime.inference import describe_error

    return describe_error(error)
