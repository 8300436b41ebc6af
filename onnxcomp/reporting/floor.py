"""The quality floor: a compressed model whose verified outputs drift too far is not handed back.

After verification (`onnxcomp.reporting.verify.fidelity`), every numeric output is judged by the measure
that fits what it is: top-1 agreement for outputs that look like class scores
(`verify.looks_like_class_scores`: [N, C] floats), cosine similarity for the rest (regression
outputs, embeddings, feature maps). On generated inputs a class-score output passes on either
measure: made-up inputs give many near-tied top classes that flip under any perturbation
(LeNet-300-100 data-free at 1/12: 83.6% top-1 agreement on generated inputs, cosine 0.988, while
99.6% of real MNIST test digits keep their label), so agreement alone there refuses sound
models; the cosine still catches a broken one (1/21: cosine 0.950, refused). Where the original
gives one class to every generated input, agreement is 100% whatever the scores do (the PP-OCRv5
text-direction classifier at 1/8: 100%, cosine 0.852, every upright line of real text flipped), so
the cosine alone judges. Outputs of class distributions at many positions (a CTC recogniser's
[N, T, C]) are judged by their cosine and by top-1 agreement at the positions the original labels
(not its most frequent class, the blank): the cosine is the blank's. By default an output must keep top-1 agreement
`DEFAULT_AGREEMENT` or cosine `DEFAULT_COSINE`; ``--min-fidelity X`` sets both to X, and 0
switches the floor off. When an output falls below, a short search (`search_passing_size`,
`SEARCH_STEPS` compressions bisecting between the asked size and the original's) finds the
smallest size tried that meets the floor, and `QualityFloorError` (exit 4) names both.

Unverified compressions (no input ran the model) cannot be judged on their outputs: the floor is
reported as not checked; their decoded weights are judged instead
(`onnxcomp.streaming.MAX_UNVERIFIED_WEIGHT_ERROR`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence

from onnxcomp.errors import FidelityError
from onnxcomp.sizes import format_size, parse_size

logger = logging.getLogger(__name__)

DEFAULT_COSINE = 0.97  # regression / embedding outputs
DEFAULT_AGREEMENT = 0.95  # class-score outputs: share of samples whose top-1 class is unchanged
SEARCH_STEPS = 4  # compressions tried between the asked size and the original's
WRITE_ANYWAY_FLAG = "--allow-low-fidelity"
POSITION_METRIC = "top-1 agreement at labelled positions"  # verify's position_top1_agreement
# An output the 0.1% control already takes below the floor (`mark_unstable`) must still lose at
# most this many times what the control loses (1 - measure): PP-OCRv2's recogniser, control 93.3%
# of labelled positions, kept 84.6% at 1/4 (reads 20/20 real lines) and 0.79% at 1/8 (reads none).
UNSTABLE_SLACK = 4


@dataclasses.dataclass(frozen=True)
class Floor:
    """The smallest cosine and top-1 agreement each output must keep."""

    cosine: float
    agreement: float
    explicit: bool  # set by --min-fidelity (else the defaults)

    def as_dict(self) -> dict:
        return {"cosine": self.cosine, "top1_agreement": self.agreement, "explicit": self.explicit}


@dataclasses.dataclass(frozen=True)
class Shortfall:
    """One output below its floor: which, by which measure, how far."""

    output: str
    metric: str  # "cosine" | "top-1 agreement"
    value: float
    floor: float
    outputs: int = 1  # how many outputs were judged (the message names this one when several)
    cosine: float | None = None  # generated inputs: the class scores' cosine, below its floor too
    cosine_floor: float | None = None

    def describe(self, value: float | None = None) -> str:
        return f"{self.metric} {_format(self.metric, self.value if value is None else value)}"

    def verdict(self) -> str:
        """E.g. "top-1 agreement 72.27% < 95% and cosine 0.9502 < 0.97 on generated inputs"."""
        text = f"{self.describe()} < {_format(self.metric, self.floor)}"
        if self.cosine is not None:
            text += f" and cosine {_format('cosine', self.cosine)} < {_format('cosine', self.cosine_floor)} on generated inputs"
        return text


@dataclasses.dataclass(frozen=True)
class Probe:
    """One compression tried by the search: its target and how its outputs fared."""

    target_bytes: int
    target_text: str  # how a user writes it: parse_size(target_text) == target_bytes
    shortfall: Shortfall | None  # None: every output meets the floor
    value: float | None  # the failing output's measure at this size (None: not measured)

    @property
    def passed(self) -> bool:
        return self.shortfall is None

    def as_dict(self) -> dict:
        return {"target_bytes": self.target_bytes, "passed": self.passed, "value": self.value}


class QualityFloorError(FidelityError):
    """The compressed model's outputs fall below the quality floor (exit 4); nothing is written.

    Attributes:
        metric: "cosine" or "top-1 agreement" (of the output furthest below its floor).
        measured: that output's value at the asked size.
        floor: the value it had to keep.
        target_bytes: the asked size.
        suggested_bytes: the smallest size tried that meets the floor (None: none did).
        probes: every size the search tried, smallest first.
        entry: the report's ``quality_floor`` entry for this refusal (``passed`` false).
        report: the run's report, where the pipeline attaches it (the CLI's ``--report`` still
            gets it: what was measured and which size passes), else None.
    """

    def __init__(self, message: str, shortfall: Shortfall, target_bytes: int, suggested_bytes: int | None,
                 probes: Sequence[Probe]):
        super().__init__(message)
        self.metric = shortfall.metric
        self.output = shortfall.output
        self.measured = shortfall.value
        self.floor = shortfall.floor
        self.target_bytes = target_bytes
        self.suggested_bytes = suggested_bytes
        self.probes = list(probes)
        self.entry: dict = {}
        self.report = None


def floor_for(min_fidelity: float | None, force: bool, fine_tuned: bool = False) -> Floor | None:
    """The floor a run applies: None when `force` or ``min_fidelity <= 0`` turns it off, and for
    fine-tuned runs without an explicit `min_fidelity`: training moves the model away from the
    original on purpose (accuracy, `--max-accuracy-drop`, is their measure), and the search
    could not train again at each size it tries."""
    if force:
        return None
    if min_fidelity is None:
        return None if fine_tuned else Floor(DEFAULT_COSINE, DEFAULT_AGREEMENT, explicit=False)
    if min_fidelity <= 0:
        return None
    return Floor(min_fidelity, min_fidelity, explicit=True)


def worst_shortfall(fidelity: dict, floor: Floor, names: Sequence[str] | None = None) -> Shortfall | None:
    """The output furthest below its floor in a `verify.fidelity` report, or None if all meet it.

    Class-score outputs (those with a top-1 agreement) are judged by agreement, the others by
    cosine; on generated inputs (``fidelity["generated_inputs"]``) class scores pass on either
    measure (see the module docstring), or on the cosine alone where the original gave one class
    to every input. Outputs of class distributions at many positions must also keep their top-1
    class at the positions the original labels (``position_top1_agreement``, floored like
    agreement). Outputs without either measure (strings) or with NaN measures (infinite
    outputs) are skipped. An output marked unstable (`mark_unstable`) is held, on the measure the
    control failed, to `UNSTABLE_SLACK` times the control's loss instead of the floor.
    """
    worst = None
    judged = fidelity.get("outputs", {})
    generated = bool(fidelity.get("generated_inputs"))
    default = floor
    for index, (key, entry) in enumerate(judged.items()):
        floor = _unstable_floor(default, entry)  # this output's floor
        cosine = None
        # generated inputs the original gives one class on every input (a two-way text-direction
        # classifier on noise): agreement is 100% whatever the scores do, so only the cosine judges
        one_class = generated and entry.get("original_top1_classes", 2) < 2
        if entry.get("top1_agreement") is not None and not one_class:
            metric, value, limit = "top-1 agreement", entry["top1_agreement"], floor.agreement
            if generated and entry.get("cosine") is not None and not math.isnan(entry["cosine"]):
                if entry["cosine"] >= floor.cosine:
                    continue
                cosine = float(entry["cosine"])
        elif entry.get("cosine") is not None:
            metric, value, limit = "cosine", entry["cosine"], floor.cosine
        else:
            continue
        positional = entry.get("position_top1_agreement")
        if positional is not None and not math.isnan(positional) and positional < floor.agreement and \
                (math.isnan(value) or value >= limit or floor.agreement - positional > limit - value):
            # its cosine is the background class's (`verify._labelled_positions`): both must hold
            metric, value, limit, cosine = POSITION_METRIC, positional, floor.agreement, None
        if math.isnan(value) or value >= limit:
            continue
        name = names[index] if names is not None and index < len(names) else key
        if worst is None or limit - value > worst.floor - worst.value:
            worst = Shortfall(name, metric, float(value), limit, len(judged), cosine,
                              None if cosine is None else floor.cosine)
    return worst


def _unstable_floor(floor: Floor, entry: dict) -> Floor:
    """`floor`, relaxed for an output `mark_unstable` marked on the measure the control failed."""
    control = entry.get("unstable")
    if control is None:
        return floor
    relaxed = 1 - UNSTABLE_SLACK * (1 - float(control))
    if entry.get("unstable_metric") == "cosine":
        return dataclasses.replace(floor, cosine=min(floor.cosine, relaxed))
    return dataclasses.replace(floor, agreement=min(floor.agreement, relaxed))


def output_value(fidelity: dict, shortfall: Shortfall, names: Sequence[str] | None = None) -> float | None:
    """The measure `shortfall` names, read for the same output from another fidelity report (the
    cosine where generated inputs judged class scores by either measure: `Shortfall.cosine`)."""
    key = "top1_agreement" if shortfall.metric == "top-1 agreement" and shortfall.cosine is None else \
        "position_top1_agreement" if shortfall.metric == POSITION_METRIC else "cosine"
    for index, (name, entry) in enumerate(fidelity.get("outputs", {}).items()):
        label = names[index] if names is not None and index < len(names) else name
        if label == shortfall.output:
            return entry.get(key)
    return None


def round_size(size: float) -> tuple[int, str]:
    """`size` rounded up to three significant digits in decimal units: (bytes, text) with
    ``parse_size(text) == bytes``, so a suggested ``--target-size`` is exactly the size tried."""
    for unit, factor in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if size >= factor:
            value = size / factor
            decimals = 2 if value < 10 else 1 if value < 100 else 0
            text = f"{math.ceil(value * 10**decimals - 1e-9) / 10**decimals:.{decimals}f}".rstrip("0").rstrip(".") + unit
            bytes_ = parse_size(text)
            if bytes_ < size:  # float rounding in parse_size: one step more
                text = f"{(math.ceil(value * 10**decimals) + 1) / 10**decimals:.{decimals}f}".rstrip("0").rstrip(".") + unit
                bytes_ = parse_size(text)
            return bytes_, text
    return int(math.ceil(size)), f"{int(math.ceil(size))}B"


def search_passing_size(measure: Callable[[int], dict | None], floor: Floor, shortfall: Shortfall, target_bytes: int,
                        input_bytes: int, names: Sequence[str] | None = None, steps: int = SEARCH_STEPS,
                        log: Callable[[str], None] | None = None) -> list[Probe]:
    """Bisect (geometrically) between `target_bytes`, which failed, and `input_bytes` for the
    smallest size whose compression meets `floor`; `measure(target)` compresses to `target` and
    returns its fidelity report (None when that target could not be built). Returns the probes.
    """
    low, high = target_bytes, input_bytes
    probes: list[Probe] = []
    for _ in range(steps):
        size, text = round_size(math.sqrt(low * high))
        if size >= high or size <= low:
            break
        fidelity = measure(size)
        if fidelity is None:
            low = size
            continue
        failing = worst_shortfall(fidelity, floor, names)
        probe = Probe(size, text, failing, output_value(fidelity, shortfall, names))
        probes.append(probe)
        if log:
            verdict = "meets the floor" if probe.passed else f"{failing.output}: {failing.verdict()}"
            log(f"quality floor: at {format_size(size)} {verdict}")
        if probe.passed:
            high = size
        else:
            low = size
    return sorted(probes, key=lambda probe: probe.target_bytes)


def floor_error(shortfall: Shortfall, target_bytes: int, input_bytes: int, probes: Sequence[Probe],
                floor: Floor) -> QualityFloorError:
    """The one-line refusal: the measured value at the asked size and the smallest size that passed."""
    subject = "the outputs keep" if shortfall.outputs <= 1 else f"output {shortfall.output} keeps"
    asked = f"{_fraction(input_bytes, target_bytes)} ({format_size(target_bytes)})"
    kind = f"--min-fidelity {shortfall.floor:g}" if floor.explicit else "the default quality floor"
    message = f"at {asked} {subject} {shortfall.verdict()} ({kind}); "
    passing = next((probe for probe in probes if probe.passed), None)
    if passing is not None:
        # where generated inputs judged class scores by either measure, the probes recorded the cosine
        named = "cosine " if shortfall.cosine is not None else ""
        metric = "cosine" if named else shortfall.metric
        kept = "" if passing.value is None else f" keeps {named}{_format(metric, passing.value)}"
        message += (f"{_fraction(input_bytes, passing.target_bytes)} ({format_size(passing.target_bytes)}){kept}: "
                    f"use --target-size {passing.target_text}, or {WRITE_ANYWAY_FLAG} to write the "
                    f"{_fraction(input_bytes, target_bytes)} model anyway")
    else:
        largest = max(probes, key=lambda probe: probe.target_bytes, default=None)
        tried = "" if largest is None else f"no size tried up to {format_size(largest.target_bytes)} meets it; "
        message += f"{tried}lower --min-fidelity, or {WRITE_ANYWAY_FLAG} to write the model anyway"
    message += "; nothing written"
    error = QualityFloorError(message, shortfall, target_bytes, None if passing is None else passing.target_bytes, probes)
    error.entry = {**floor.as_dict(), "checked": True, "passed": False, "output": shortfall.output,
                   "metric": shortfall.metric, "measured": shortfall.value, "suggested_bytes": error.suggested_bytes,
                   "probes": [{"target_bytes": probe.target_bytes, "passed": probe.passed, "value": probe.value}
                              for probe in probes]}
    return error


def mark_unstable(fidelity: dict, control: dict, floor: Floor) -> list[str]:
    """Mark (in place, ``"unstable"``: the control's measure, ``"unstable_metric"``: which) each
    output of `fidelity` that the control already takes below `floor`. The control is the
    original with every float weight moved by about 0.1%
    (`onnxcomp.reporting.int8_reference.rounded_model`): an output that moves that far
    under so small a change, on these inputs, tells a collapse from the rest but not a good
    compression from a fair one (YOLOv10's top-300 detections on generated images, re-ordered
    among near-equal scores: cosine 0.81 at nine tenths of the original's bytes), so the floor
    holds it to `UNSTABLE_SLACK` times the control's loss. Returns the marked outputs' keys."""
    marked = []
    for (key, entry), reference in zip(fidelity.get("outputs", {}).items(), control.get("outputs", {}).values()):
        shortfall = worst_shortfall({**control, "outputs": {key: reference}}, floor)
        if shortfall is not None:
            entry["unstable"] = round(shortfall.value, 6)
            entry["unstable_metric"] = "cosine" if shortfall.metric == "cosine" else "agreement"
            marked.append(key)
    return marked


def _keeping_marks(measure: Callable[[int], dict | None], fidelity: dict) -> Callable[[int], dict | None]:
    """`measure`, its reports carrying `fidelity`'s unstable marks (outputs in the same order)."""
    marks = [{key: entry[key] for key in ("unstable", "unstable_metric") if key in entry} if entry.get("unstable") is not None
             else None for entry in fidelity.get("outputs", {}).values()]

    def marked(target_bytes: int) -> dict | None:
        result = measure(target_bytes)
        for entry, mark in zip((result or {}).get("outputs", {}).values(), marks):
            if mark is not None:
                entry.update(mark)
        return result
    return marked


def check_floor(fidelity: dict, floor: Floor | None, target_bytes: int, input_bytes: int,
                measure: Callable[[int], dict | None], names: Sequence[str] | None = None,
                log: Callable[[str], None] | None = None, off_reason: str = "off",
                control: Callable[[], dict | None] | None = None) -> dict:
    """Judge a verified compression against `floor`; raise `QualityFloorError` when it fails.

    Args:
        fidelity: `verify.fidelity`'s report of the compression at `target_bytes`.
        floor: from `floor_for`; None: off (the report says so, with `off_reason`).
        target_bytes: the asked size; input_bytes: the original's (the search's upper end).
        measure: compresses to a target and returns its fidelity report (see `search_passing_size`).
        names: the model's output names, in order (for the message).
        log: progress lines.
        control: on generated inputs, the control's fidelity report (`mark_unstable`), asked for
            only when an output falls short; outputs it marks are left out.

    Returns:
        The report's ``quality_floor`` entry.
    """
    if floor is None:
        return {"checked": False, "reason": off_reason}
    shortfall = worst_shortfall(fidelity, floor, names)
    if shortfall is not None and control is not None and fidelity.get("generated_inputs"):
        reference = control()
        if reference is not None and mark_unstable(fidelity, reference, floor):
            measure = _keeping_marks(measure, fidelity)
            shortfall = worst_shortfall(fidelity, floor, names)
    if shortfall is None:
        return {**floor.as_dict(), "checked": True, "passed": True}
    if log:
        log(f"quality floor: {shortfall.output}: {shortfall.verdict()}; "
            f"searching for a size that meets it")
    probes = search_passing_size(measure, floor, shortfall, target_bytes, input_bytes, names, log=log)
    raise floor_error(shortfall, target_bytes, input_bytes, probes, floor)


def off_reason(min_fidelity: float | None, force: bool) -> str:
    """Why `floor_for` gave no floor, for the report."""
    if force:
        return "off (--allow-low-fidelity)"
    if min_fidelity is not None:
        return "off (--min-fidelity 0)"
    return "not applied to fine-tuned models (their measure is accuracy: --max-accuracy-drop)"


def unverified_floor(reason: str) -> dict:
    """The report's ``quality_floor`` entry when the outputs could not be run."""
    return {"checked": False, "reason": f"outputs not verified ({reason})"}


def _fraction(input_bytes: int, size: int) -> str:
    ratio = input_bytes / max(size, 1)
    return f"1/{ratio:.2g}" if ratio < 10 else f"1/{ratio:.0f}"


def _format(metric: str, value: float) -> str:
    return f"{100 * value:.4g}%" if metric in ("top-1 agreement", POSITION_METRIC) else f"{value:.4g}"
