"""onnxcomp.errors: the user-facing error classes, their exit codes, and the smallest size a
TargetUnreachableError carries; the CLI turns each into its exit code and one stderr line."""

from __future__ import annotations

import pytest

from onnxcomp import cli
from onnxcomp.errors import FidelityError, OnnxcompError, TargetUnreachableError
from onnxcomp.modelfile import serialized_bytes


def test_exit_codes_tell_the_three_kinds_apart():
    assert OnnxcompError("bad input").exit_code == 2
    assert TargetUnreachableError("too small").exit_code == 3
    assert FidelityError("below the floor").exit_code == 4


def test_every_error_is_an_onnxcomp_error_and_an_exception():
    for kind in (TargetUnreachableError, FidelityError):
        assert issubclass(kind, OnnxcompError)
    assert issubclass(OnnxcompError, Exception)
    assert not issubclass(FidelityError, TargetUnreachableError)


def test_target_unreachable_carries_the_smallest_size():
    error = TargetUnreachableError("target 1 KB is below 3 KB", smallest_bytes=3072)
    assert str(error) == "target 1 KB is below 3 KB"
    assert error.smallest_bytes == 3072
    assert TargetUnreachableError("no size known").smallest_bytes is None
    with pytest.raises(OnnxcompError, match="below 3 KB") as caught:
        raise error
    assert caught.value.exit_code == 3


def test_cli_turns_an_input_error_into_exit_2_and_one_line(tmp_path, capsys):
    code = cli.main(["inspect", str(tmp_path / "missing\x1b[2J.onnx")], isolate=False)
    err = capsys.readouterr().err
    assert code == OnnxcompError.exit_code
    assert err == f"onnxcomp: error: {tmp_path}/missing\\x1b[2J.onnx: no such file\n"


def test_cli_turns_an_unreachable_target_into_exit_3(tmp_path, capsys, mlp_model):
    model = tmp_path / "mlp.onnx"
    model.write_bytes(serialized_bytes(mlp_model))
    code = cli.main(["compress", str(model), "-o", str(tmp_path / "out.onnx"), "--target-size", "100B"], isolate=False)
    err = capsys.readouterr().err
    assert code == TargetUnreachableError.exit_code
    assert "target 100 B (100 B) is below the smallest size onnxcomp can reach for this model" in err
    assert not (tmp_path / "out.onnx").exists()
