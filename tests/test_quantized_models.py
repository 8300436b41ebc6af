"""Already-quantized input (issue 6): a model whose weights are all int8 is refused with a reason
that says so (exit 2, no output, no traceback); a partly quantized one compresses its float
weights and the report names the quantized weights it left as they are."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import run
from tests.test_zoo import int8_dynamic_quantized, int8_qdq, int8_with_float_head

pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")


@pytest.mark.parametrize("build, ops", [(int8_dynamic_quantized, "MatMulInteger"), (int8_qdq, "DequantizeLinear")],
                         ids=["dynamic", "qdq"])
def test_fully_quantized_model_is_refused_as_already_quantized(build, ops, tmp_path, capsys):
    from onnxcomp.cli import main

    source = tmp_path / "q.onnx"
    source.write_bytes(build().SerializeToString())
    output = tmp_path / "out.onnx"
    code = main(["compress", str(source), "--target-size", str(source.stat().st_size // 2), "-o", str(output)])
    err = capsys.readouterr().err
    assert code == 2
    assert "already quantized" in err and "int8" in err and ops in err and "nothing to compress" in err
    assert "Traceback" not in err and not output.exists()


def test_partly_quantized_model_reports_what_it_left(tmp_path, capsys):
    from onnxcomp.cli import main

    proto = int8_with_float_head()
    source = tmp_path / "mixed.onnx"
    source.write_bytes(proto.SerializeToString())
    output, report = tmp_path / "out.onnx", tmp_path / "r.json"
    code = main(["compress", str(source), "--target-size", str(source.stat().st_size // 2), "-o", str(output),
                 "--report", str(report)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "left as they are: 1 already-quantized weights (w1 int8" in err
    left = json.loads(report.read_text())["quantized_left"]
    assert [(row["name"], row["dtype"], row["ops"]) for row in left] == [("w1", "int8", ["MatMulInteger"])]
    x = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    want, got = run(source.read_bytes(), {"x": x})[0], run(str(output), {"x": x})[0]
    assert np.allclose(want, got, atol=0.1 * np.abs(want).max())
