"""The all-MiniLM-L6-v2 exporter (models/minilm_l6.py) on a truncated one-layer encoder."""

from __future__ import annotations

import importlib.util
import json
import struct

import numpy as np
import pytest

from models import minilm_l6


def test_read_safetensors_round_trip(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([7, -1], dtype=np.int64)}
    header, offset, payload = {"__metadata__": {"format": "pt"}}, 0, b""
    for name, array in tensors.items():
        data = array.tobytes()
        header[name] = {"dtype": {"float32": "F32", "int64": "I64"}[array.dtype.name], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        payload += data
    encoded = json.dumps(header).encode()
    path = tmp_path / "t.safetensors"
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + payload)
    read = minilm_l6.read_safetensors(path)
    assert sorted(read) == ["a", "b"]
    for name, array in tensors.items():
        np.testing.assert_array_equal(read[name], array)


def _package_or_skip():
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (the train extra)")
    if importlib.util.find_spec("tokenizers") is None:
        pytest.skip("tokenizers is not installed")
    try:
        minilm_l6.package_file("model/model.safetensors")
    except minilm_l6.PackageMissing as error:
        pytest.skip(str(error))


def test_one_layer_export_matches_torch(tmp_path):
    _package_or_skip()
    import onnx

    path = minilm_l6.export(tmp_path / "l1.onnx", layers=1)
    model = onnx.load(str(path), load_external_data=False)
    assert model.ir_version == minilm_l6.IR_VERSION
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["last_hidden_state"]
    names = {t.name for t in model.graph.initializer}
    # The exporter's anonymous MatMul weights carry their torch names.
    assert {"word_embeddings.weight", "layers.0.query.weight", "layers.0.output.weight"} <= names
    assert not any(name.startswith("onnx::MatMul") for name in names)
    result = minilm_l6.check(path, layers=1)
    assert result["max_abs_difference"] < 1e-4
    assert result["paraphrase_cosine"] > result["unrelated_cosine"]


def test_mean_pool_ignores_padding():
    hidden = np.array([[[1.0, 0.0], [3.0, 0.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(minilm_l6.mean_pool(hidden, mask, normalize=False), [[2.0, 0.0]])
    np.testing.assert_allclose(minilm_l6.mean_pool(hidden, mask), [[1.0, 0.0]])
