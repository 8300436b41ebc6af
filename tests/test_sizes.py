"""Sizes as users write them (onnxcomp.sizes): absolute sizes with units, and targets relative
to the input model's bytes, on the command line of compress and sweep."""

from __future__ import annotations

import pytest

from onnxcomp.cli import main
from onnxcomp.errors import OnnxcompError
from onnxcomp.sizes import parse_size, parse_target, relative_part
from onnxcomp.sweep import parse_targets


@pytest.mark.parametrize(("text", "expected"), [
    ("12345", 12345),
    ("100B", 100),
    ("1KB", 1000),
    ("1MB", 1000**2),
    ("2GB", 2 * 1000**3),
    ("1KiB", 1024),
    ("1MiB", 1024**2),
    ("1GiB", 1024**3),
    ("1.5MB", 1_500_000),
    ("0.5KiB", 512),
    (".25MB", 250_000),
    ("500 KiB", 512_000),
    ("  90 kb  ", 90_000),
    ("10mb", 10_000_000),
    ("10Mb", 10_000_000),
    ("3mIb", 3 * 1024**2),
    ("1e3", 1000),
    ("2.5e-3GB", 2_500_000),
    ("1.0009KB", 1000),  # rounded down
])
def test_parse_size_accepts(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "abc", "-5MB", "1XB", "MB", "1.2.3MB", "1 M B", "0", "0.4B", "5 MBs"])
def test_parse_size_rejects(text):
    with pytest.raises(OnnxcompError, match=r"size"):
        parse_size(text)


@pytest.mark.parametrize(("text", "part"), [
    ("1/8", 0.125), (" 1 / 4 ", 0.25), ("3/16", 0.1875), ("12.5%", 0.125), ("100%", 1.0), ("8x", 0.125),
    ("2.5X", 0.4), ("1x", 1.0), ("1MB", None), ("90000", None),
])
def test_relative_part(text, part):
    assert relative_part(text) == part


@pytest.mark.parametrize("text", ["0/8", "1/0", "5/4", "0%", "150%", "0x", "0.5x"])
def test_relative_part_outside_the_input_is_refused(text):
    with pytest.raises(OnnxcompError, match=r"part of it in \(0, 1\]"):
        relative_part(text)


def test_parse_target_reads_the_input_size_only_for_relative_targets():
    asked = []

    def input_bytes():
        asked.append(True)
        return 1_000_003

    assert parse_target("500KB", input_bytes) == 500_000 and not asked
    assert parse_target("1/8", input_bytes) == 125_000  # rounded down: never over the part asked for
    assert parse_target("4x", input_bytes) == 250_000
    assert parse_target("10%", input_bytes) == 100_000


@pytest.mark.parametrize(("text", "message"), [("abc", "cannot read target size 'abc': use a size"), ("0", "size must be positive")])
def test_parse_target_errors_name_every_form(text, message):
    with pytest.raises(OnnxcompError, match=message):
        parse_target(text, lambda: 1000)


def test_sweep_targets_relative_to_the_input(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x" * 8000)
    # labels name the output files; a target of the same bytes as an earlier one is dropped
    assert parse_targets("1/4,1/8,1KB,8x,25%", model) == [("1-4", 2000), ("1-8", 1000)]
    assert parse_targets("12.5%", model) == [("12.5pct", 1000)]


def test_compress_relative_target_of_a_missing_input_is_a_clear_error(tmp_path, capsys):
    code = main(["compress", str(tmp_path / "missing.onnx"), "--target-size", "1/8"])
    assert code == 2
    assert "missing.onnx: no such file" in capsys.readouterr().err
