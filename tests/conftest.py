"""Shared fixtures: tiny seeded models built from ONNX text, and running models in ONNX Runtime."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest

# An internal error (a defect, not bad input) is one line for users; tests see it whole, in this
# process and in the CLI children they start.
os.environ.setdefault("ONNXCOMP_TRACEBACK", "1")

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / "models"
LENET300 = MODELS_DIR / "lenet300.onnx"
LENET5 = MODELS_DIR / "lenet5.onnx"
TEST_DATA = MODELS_DIR / "data" / "mnist_test_1k.npz"
TRAIN_DATA = MODELS_DIR / "data" / "mnist_train_2k.npz"

# Gemm with a bias, then a plain MatMul: two prunable weights and one bias.
MLP_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
mlp (float[N, 16] x) => (float[N, 8] y) {
  h = Gemm(x, w1, b1)
  r = Relu(h)
  y = MatMul(r, w2)
}
"""
MLP_SHAPES = {"w1": (16, 32), "b1": (32,), "w2": (32, 8)}

# One weight shared by two MatMuls.
SHARED_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
shared (float[N, 64] x) => (float[N, 64] y) {
  h = MatMul(x, w)
  r = Relu(h)
  y = MatMul(r, w)
}
"""

# A single MatMul: the weight's effect on the output is easy to bound.
SINGLE_TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
single (float[N, {rows}] x) => (float[N, {cols}] y) {{
  y = MatMul(x, w)
}}
"""


def build_model(text: str, initializers: dict[str, np.ndarray]) -> ir.Model:
    """Parse an ONNX text model, attach the given arrays as initializers, import into onnx_ir."""
    proto = onnx.parser.parse_model(text)
    for name, array in initializers.items():
        proto.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(array), name))
    onnx.checker.check_model(proto, full_check=True)
    return ir.serde.deserialize_model(proto)


def single_matmul(weight: np.ndarray) -> ir.Model:
    rows, cols = weight.shape
    return build_model(SINGLE_TEXT.format(rows=rows, cols=cols), {"w": weight.astype(np.float32)})


def to_proto(model: ir.Model | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    return ir.serde.serialize_model(model)


def run(model: ir.Model | onnx.ModelProto | bytes | str, feeds: dict[str, np.ndarray],
        extra_outputs: dict[str, int] | list[str] = ()) -> list[np.ndarray]:
    """Run a model once in ONNX Runtime (CPU).

    `extra_outputs` names intermediate values to return after the graph outputs (float unless
    given as a mapping name -> onnx.TensorProto element type).
    """
    import onnxruntime

    if isinstance(model, (bytes, str)):
        source = model
    else:
        proto = onnx.ModelProto()
        proto.CopyFrom(to_proto(model))
        types = extra_outputs if isinstance(extra_outputs, dict) else dict.fromkeys(extra_outputs, onnx.TensorProto.FLOAT)
        for name, elem_type in types.items():
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, None))
        source = proto.SerializeToString()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240607)


@pytest.fixture
def mlp_model(rng) -> ir.Model:
    arrays = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in MLP_SHAPES.items()}
    return build_model(MLP_TEXT, arrays)


@pytest.fixture
def shared_model(rng) -> ir.Model:
    return build_model(SHARED_TEXT, {"w": (0.2 * rng.standard_normal((64, 64))).astype(np.float32)})


# Cross-version compatibility (tests/compat): with ONNXCOMP_COMPAT_DIR set, every model that
# onnxcomp.pipeline.compress_model returns during the run is saved with inputs and outputs, for
# tests/compat/run_compat.py to re-run in the latest onnxruntime (`make test` does both).
_undo_compat_collector = None


def pytest_configure(config):
    global _undo_compat_collector
    # A shell starts background jobs with SIGINT ignored, and every process inherits that (Python
    # then installs no KeyboardInterrupt handler): the Ctrl-C tests need what a terminal gives.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    from tests.compat import collect

    folder = collect.enabled_folder()
    if folder is not None:
        _undo_compat_collector = collect.install(folder)


def pytest_unconfigure(config):
    if _undo_compat_collector is not None:
        _undo_compat_collector()


def pytest_collection_modifyitems(config, items):
    """Tests marked `training` (they fine-tune) skip, with the one-line reason, where this
    environment has no ONNX Runtime training build (onnxcomp.runtime.training_support); the
    check imports the training build (and torch) only when such a test was collected."""
    marked = [item for item in items if item.get_closest_marker("training") is not None]
    if not marked:
        return
    from onnxcomp.runtime.training_support import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=reason))


def assert_single_matmul_decodes_exactly_and_folds(model: ir.Model, reference: ir.Model, weight: np.ndarray,
                                                  rng: np.random.Generator, folder) -> None:
    """A compressed `single_matmul`: valid, its decoded weight equals `weight` bit for bit, its
    output matches `reference`, and ONNX Runtime folds the decode graph at load (only the MatMul
    is left in the optimized graph)."""
    import onnxruntime

    onnx.checker.check_model(to_proto(model), full_check=True)
    feeds = {"x": rng.standard_normal((5, 64)).astype(np.float32)}
    matmul = next(n for n in model.graph if n.op_type == "MatMul")
    outputs = run(model, feeds, extra_outputs=[matmul.inputs[1].name])
    np.testing.assert_array_equal(outputs[1], weight)
    np.testing.assert_allclose(outputs[0], run(reference, feeds)[0], rtol=1e-5, atol=1e-5)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    onnxruntime.InferenceSession(to_proto(model).SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert [node.op_type for node in onnx.load(str(folder / "optimized.onnx")).graph.node] == ["MatMul"]


# A CLI run whose output write stalls after "WRITING" (for signals mid-write): argv[1] is
# "isolated" (the job in the CLI's child process) or "in-process", the rest the CLI's arguments.
STALLED_WRITE_SCRIPT = """
import sys, time
import onnxcomp.modelfile
original = onnxcomp.modelfile.atomic_write
def slow_write(path, write):
    def stall(handle):
        handle.write(b"partial")
        handle.flush()
        print("WRITING", flush=True)
        time.sleep(60)
    return original(path, stall)
onnxcomp.modelfile.atomic_write = slow_write
from onnxcomp.cli import main
sys.exit(main(sys.argv[2:], isolate=sys.argv[1] == "isolated"))
"""
