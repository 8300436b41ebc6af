"""Byte sizes as users write them: B, KB/MB/GB (powers of 1000), KiB/MiB/GiB (powers of 1024)."""

from __future__ import annotations

import re

from onnxcomp.errors import OnnxcompError

UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
    "k": 1000, "m": 1000**2, "g": 1000**3,
}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


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


def format_size(size: float) -> str:
    """Human-readable bytes with decimal units, e.g. 1.07 MB, 16.7 KB, 812 B."""
    for unit, factor in (("GB", 1000**3), ("MB", 1000**2), ("KB", 1000)):
        if abs(size) >= factor:
            return f"{size / factor:.3g} {unit}" if size / factor < 100 else f"{size / factor:.0f} {unit}"
    return f"{int(size)} B"
