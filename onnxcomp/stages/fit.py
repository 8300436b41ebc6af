"""Plan and build until the serialized model fits the target."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from onnxcomp import modelfile
from onnxcomp.planning.allocate import Allocation, LayerOptions, allocate, load_budget
from onnxcomp.samples.data import Samples
from onnxcomp.errors import TargetUnreachableError
from onnxcomp.planning.compensation import SAMPLES as GPTQ_SAMPLES, discount_compensated, input_hessians
from onnxcomp.model.memory import ActivationSizes
from onnxcomp.sizes import format_size
from onnxcomp.stages.build import build
from onnxcomp.stages.options import CompressOptions
from onnxcomp.stages.steps import Progress, Steps, log
from onnxcomp.model.weights import find_weights, kept_initializers

MAX_ATTEMPTS = 8
GROW_ATTEMPTS = 2  # re-plans with the unused bytes added when a fit leaves slack
SLACK_FRACTION = 0.01
SLACK_MIN_BYTES = 64


@dataclasses.dataclass
class Plan:
    """What builds are planned from: the analyzed model, its priced candidates, and the bytes
    every build spends beyond the weights' payload (`build.fixed_bytes`)."""

    model: ir.Model
    layers: list[LayerOptions]
    importances: dict
    fixed: int
    hessians: dict[str, np.ndarray] | None = None  # real samples without fine-tuning: GPTQ (onnxcomp.planning.gptq)
    max_load: int | None = None  # decode-time budget (allocate.load_budget), without fine-tuning


@dataclasses.dataclass
class Fit:
    """The kept build (or, when none fits, the last one tried)."""

    model: ir.Model
    allocation: Allocation
    data: bytes | None  # its serialized bytes; None over protobuf's 2 GB limit
    size: int  # serialized bytes
    attempts: int  # the attempt that built it
    fits: bool
    floor_bytes: int | None = None  # not fitting at the smallest plan: the size that plan came to
    decoded: dict[str, ir.Value] = dataclasses.field(default_factory=dict)  # see `build`, when asked for
    passes: dict[str, dict] = dataclasses.field(default_factory=dict)  # per pass what it did (`build`'s stats)


def fit(model: ir.Model, layers: list[LayerOptions], budget: int, options: CompressOptions, importances: dict,
        progress: Progress, hessians: dict | None = None, max_load: int | None = None,
        grow_attempts: int = GROW_ATTEMPTS, decoded: bool = False) -> Fit:
    """Allocate and build until the serialized model fits: tighten the budget by the overshoot,
    and when a fit leaves more than SLACK_FRACTION of the target unused, plan again with the
    slack added (at most `grow_attempts` times), keeping the largest build that fits."""
    floor_total = sum(layer.smallest.bytes for layer in layers)
    last = best = None
    grown = 0
    for attempt in range(1, MAX_ATTEMPTS + 1):
        # Never plan below the smallest candidates: the floor itself is always tried once.
        at_floor = budget <= floor_total
        allocation = allocate(layers, max(budget, floor_total), max_load)
        assert allocation is not None
        if best is not None and same_plan(allocation, best.allocation):  # the unused bytes buy no setting
            log(progress, f"attempt {attempt}: the plan of attempt {best.attempts} again ({format_size(best.size)}); kept")
            return best
        values: dict[str, ir.Value] | None = {} if decoded else None
        stats: dict[str, dict] = {}
        compressed = build(model, allocation, options.keep_metadata, importances, decoded=values, hessians=hessians,
                           stats=stats)
        proto = modelfile.to_proto(compressed)
        size = proto.ByteSize()
        data = proto.SerializeToString() if size < modelfile.MAX_PROTO_BYTES else None
        del proto
        last = Fit(compressed, allocation, data, size, attempt, size <= options.target_bytes, decoded=values or {},
                   passes=stats)
        tried = f"attempt {attempt}: {format_size(size)} (target {format_size(options.target_bytes)})"
        if last.fits:
            best = last
            slack = options.target_bytes - size
            if slack <= max(SLACK_MIN_BYTES, SLACK_FRACTION * options.target_bytes) or grown == grow_attempts:
                log(progress, f"{tried}: fits; kept")
                return best
            log(progress, f"{tried}: fits with {format_size(slack)} unused; planning again to use it")
            grown += 1
            budget += slack // 2  # the plan-to-file step is not exact: claim half
            continue
        if best is not None:  # the grown plan overshot: the last fit stands
            log(progress, f"{tried}: over; keeping attempt {best.attempts} ({format_size(best.size)})")
            return best
        if at_floor:
            log(progress, f"{tried}: over, and no smaller plan exists")
            last.floor_bytes = size
            return last
        log(progress, f"{tried}: over by {format_size(size - options.target_bytes)}; planning that much smaller")
        budget -= size - options.target_bytes + 16 * attempt
    if best is not None:
        log(progress, f"keeping attempt {best.attempts} ({format_size(best.size)})")
        return best
    return last


def same_plan(first: Allocation, second: Allocation) -> bool:
    """Whether two allocations choose the same setting for every weight (a build of either is the same)."""
    def key(choice):
        return choice.kind, choice.bytes, choice.bits, choice.sparsity, choice.distortion
    return first.choices.keys() == second.choices.keys() and all(
        key(choice) == key(second.choices[name]) for name, choice in first.choices.items())


def fit_plan(plan: Plan, options: CompressOptions, progress: Progress) -> Fit:
    """`fit` the plan to `options.target_bytes`."""
    return fit(plan.model, plan.layers, options.target_bytes - plan.fixed, options, plan.importances, progress,
               hessians=plan.hessians, max_load=plan.max_load)


def fit_calibrated(plan: Plan, options: CompressOptions, samples: Samples, batch: int, sizes: ActivationSizes,
                   input_bytes: int, steps: Steps) -> tuple[Plan, Fit]:
    """Without fine-tuning: with real samples, plan for GPTQ error compensation (input Hessians
    per weight); keep session creation within allocate.MAX_LOAD_RATIO of the original's (every
    encoding is open, where fine-tuned weights keep the zero pattern they were trained with); fit."""
    layers, hessians = plan.layers, None
    if not samples.generated and not modelfile.is_streamed(plan.model):
        with steps.timed("hessians"):
            hessians = input_hessians(plan.model, [w for w in find_weights(plan.model) if w.storage.plain],
                                      samples.head(GPTQ_SAMPLES).inputs, batch, sizes=sizes)
            layers = discount_compensated(layers, {w.name: w.numpy().astype(np.float32) for w in find_weights(plan.model)
                                                   if w.name in hessians}, hessians)
    plan = dataclasses.replace(plan, layers=layers, hessians=hessians, max_load=load_budget(input_bytes))
    with steps.timed("allocate_and_encode"):
        return plan, fit_plan(plan, options, steps.progress)


def unreachable(model: ir.Model, layers: list[LayerOptions], options: CompressOptions, importances: dict,
                floor_bytes: int | None) -> TargetUnreachableError:
    """The error for a target below the smallest build (built here when `floor_bytes` is None)."""
    if floor_bytes is None:
        smallest = allocate(layers, sum(layer.smallest.bytes for layer in layers))
        floor_bytes = len(modelfile.serialized_bytes(build(model, smallest, options.keep_metadata, importances)))
    kept, readers = kept_initializers(model)
    why = (f"; {format_size(kept)} of it are initializers onnxcomp keeps as they are (read by {', '.join(readers[:6])})"
           if kept >= floor_bytes // 10 else "")
    return TargetUnreachableError(
        f"target {format_size(options.target_bytes)} ({options.target_bytes} B) is below the smallest size onnxcomp can "
        f"reach for this model: {format_size(floor_bytes)} ({floor_bytes} B){why}",
        smallest_bytes=floor_bytes,
    )
