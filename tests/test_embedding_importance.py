"""Row importance of embedding tables from the token ids real samples look up."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp.planning.sensitivity import embedding_importance, row_counts
from onnxcomp.model.weights import find_weights


def _embedding_model(rows: int = 300, width: int = 4) -> ir.Model:
    text = """
        <ir_version: 10, opset_import: ["" : 17]>
        g (int64[B, S] input_ids, int64[B, S] attention_mask) => (float[B, S, W] out) {
            ids = Cast <to = 7> (input_ids)
            out = Gather <axis = 0> (table, ids)
        }
    """
    proto = onnx.parser.parse_model(text)
    table = np.random.default_rng(0).standard_normal((rows, width)).astype(np.float32)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(table, "table"))
    return ir.serde.deserialize_model(proto)


def test_counts_lookups_and_skips_padding():
    model = _embedding_model()
    ids = np.array([[5, 5, 7, 0], [5, 9, 0, 0]], dtype=np.int64)
    mask = (ids != 0).astype(np.int64)
    importance = embedding_importance(model, find_weights(model), {"input_ids": ids, "attention_mask": mask}, 1)
    table = importance["table"]
    assert table.shape == (300, 1)
    counts = table[:, 0] / table[:, 0].min() - 1  # smoothing 1: unseen rows are the minimum
    np.testing.assert_allclose(counts[[5, 7, 9, 0, 1]], [3, 1, 1, 0, 0])
    assert np.isclose(table.mean(), 1.0)


def test_no_mask_counts_every_lookup():
    model = _embedding_model()
    ids = np.array([[3, 3, 3]], dtype=np.int64)
    importance = embedding_importance(model, find_weights(model), {"input_ids": ids, "attention_mask": np.zeros((1, 2), np.int64)}, 4)
    counts = importance["table"][:, 0] / importance["table"][:, 0].min() - 1
    assert counts[3] == 3 and counts.sum() == 3


def test_row_counts_inverts_the_importance():
    model = _embedding_model()
    ids = np.array([[5, 5, 7, 3], [5, 9, 3, 3]], dtype=np.int64)
    importance = embedding_importance(model, find_weights(model), {"input_ids": ids, "attention_mask": np.ones_like(ids)}, 1)
    counts = row_counts(importance["table"])
    expected = np.bincount(ids.ravel(), minlength=300)
    np.testing.assert_array_equal(counts, expected)


def test_untyped_int32_ids_from_float_inputs():
    """tf2onnx feeds Keras embeddings float ids cast to int32, with no value_info: the fetched ids
    keep the type ONNX Runtime infers (a guessed int64 output failed to load, exit 2 on --data)."""
    text = """
        <ir_version: 10, opset_import: ["" : 17]>
        g (float[B, S] chars) => (float[B, S, W] out) {
            ids = Cast <to = 6> (chars)
            out = Gather <axis = 0> (table, ids)
        }
    """
    proto = onnx.parser.parse_model(text)
    table = np.random.default_rng(0).standard_normal((300, 4)).astype(np.float32)
    proto.graph.initializer.append(onnx.numpy_helper.from_array(table, "table"))
    model = ir.serde.deserialize_model(proto)
    chars = np.array([[4, 4, 8], [8, 2, 4]], dtype=np.float32)
    importance = embedding_importance(model, find_weights(model), {"chars": chars}, 2)
    np.testing.assert_array_equal(row_counts(importance["table"])[[2, 4, 8]], [1, 3, 2])
