"""Byte sizes as users write them: B, KB/MB/GB (powers of 1000), KiB/MiB/GiB (powers of 1024);
and target sizes relative to the input model: 1/8, 12.5%, 8x (eight times smaller)."""

from __future__ import annotations

import re
from collections.abc import Callable

from onnxcomp.errors import OnnxcompError

UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
    "k": 1000, "m": 1000**2, "g": 1000**3,
}
_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)"
_PATTERN = re.compile(rf"^\s*{_NUMBER}\s*([A-Za-z]*)\s*$")
_FRACTION = re.compile(rf"^\s*{_NUMBER}\s*/\s*{_NUMBER}\s*$")
_PERCENT = re.compile(rf"^\s*{_NUMBER}\s*%\s*$")
_TIMES = re.compile(rf"^\s*{_NUMBER}\s*[xX]\s*$")
RELATIVE_FORMS = "1/8, 12.5%, 8x for eight times smaller"
SIZE_FORMS = f"a size (1MB, 500KiB, 90000) or a part of the input's size ({RELATIVE_FORMS})"


def parse_size(text: str) -> int:
    """Parse '1MB', '500 KiB', '12345' into bytes (rounded down); raise OnnxcompError if invalid."""
    match = _PATTERN.match(str(text))
    if not match or match.group(2).lower() not in UNITS:
        raise OnnxcompError(
            f"cannot read size {text!r}: use a number with an optional unit B, KB, MB, GB (x1000) or KiB, MiB, GiB (x1024), e.g. 1MB"
        )
    amount = float(match.group(1)) * UNITS[match.group(2).lower()]
    if not amount < 2**63:
        raise OnnxcompError(f"size {text!r} is too large")
    size = int(amount)
    if size <= 0:
        raise OnnxcompError(f"size must be positive, got {text!r}")
    return size


def relative_part(text: str) -> float | None:
    """The part of the input's size a relative target asks for ('1/8', '12.5%', '8x' -> 0.125);
    None for an absolute size (`parse_size`). Raises OnnxcompError for a part that is not in (0, 1]."""
    text = str(text)
    if match := _FRACTION.match(text):
        numerator, denominator = float(match.group(1)), float(match.group(2))
        part = numerator / denominator if denominator > 0 else float("inf")
    elif match := _PERCENT.match(text):
        part = float(match.group(1)) / 100
    elif match := _TIMES.match(text):
        times = float(match.group(1))
        part = 1 / times if times > 0 else float("inf")
    else:
        return None
    if not 0 < part <= 1:
        raise OnnxcompError(f"target {text!r} asks for {part:g} of the input's size; a relative target is a part of it "
                            f"in (0, 1], e.g. {RELATIVE_FORMS}")
    return part


def parse_target(text: str, input_bytes: Callable[[], int]) -> int:
    """A target size in bytes: absolute as `parse_size` reads it, or relative to the input model's
    bytes (`relative_part`), which `input_bytes` is called for only then."""
    part = relative_part(text)
    if part is not None:
        return max(1, int(input_bytes() * part))
    match = _PATTERN.match(str(text))
    if not match or match.group(2).lower() not in UNITS:
        raise OnnxcompError(f"cannot read target size {text!r}: use {SIZE_FORMS}")
    return parse_size(text)


def format_size(size: float) -> str:
    """Human-readable bytes with decimal units, e.g. 1.07 MB, 16.7 KB, 812 B."""
    for unit, factor in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if abs(size) >= factor:
            return f"{size / factor:.3g} {unit}" if size / factor < 100 else f"{size / factor:.0f} {unit}"
    return f"{int(size)} B"
