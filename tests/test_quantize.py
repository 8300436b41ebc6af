"""quantize: saliency pruning thresholds (plain, importance-weighted, integer weights held as
distinct values), k-means codebooks and their squared error, group views, snapping to scalar,
grouped and vector codebooks, prune masks, and apply_quantization with outliers kept exact.
Candidate pricing across sparsities and bits is in tests/test_allocate.py, grouped and vector
k-means in tests/test_grouped.py and tests/test_vector.py."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.encodings.quantize import (Quantization, SortedWeights, apply_quantization, from_group_view, group_view,
                                         nearest_rows, prune_mask, sample_positions, snap_to_codebook,
                                         snap_to_grouped_codebooks, snap_to_vectors)


def test_sample_positions_one_per_stride():
    assert sample_positions(5, 10).tolist() == [0, 1, 2, 3, 4]
    picked = sample_positions(1000, 10)
    assert picked.size == 10 and np.all(np.diff(picked) > 0)
    assert np.array_equal(picked // 100, np.arange(10))  # one in each stride of 100
    assert len(set((picked % 100).tolist())) > 1  # at random offsets, not a fixed comb
    assert np.array_equal(picked, sample_positions(1000, 10))  # seeded


def test_saliency_threshold_prunes_the_smallest_magnitudes():
    weights = SortedWeights(np.array([0.1, -0.2, 0.3, -0.4, 0.5], np.float32))
    assert weights.saliency_threshold(0.0) == np.nextafter(0.0, 1.0)  # only exact zeros
    threshold = weights.saliency_threshold(0.4)  # 2 of 5: 0.1 and -0.2 go
    kept = prune_mask(np.array([0.1, -0.2, 0.3, -0.4, 0.5]), None, threshold)
    assert kept.tolist() == [False, False, True, True, True]
    assert weights.saliency_threshold(1.0) > 0.25  # everything goes


def test_importance_changes_which_entries_are_pruned():
    values = np.array([0.1, -0.2, 0.3, -0.4], np.float32)
    importance = np.array([100.0, 1.0, 1.0, 1.0])  # the smallest entry matters most
    threshold = SortedWeights(values, importance).saliency_threshold(0.5)
    assert prune_mask(values, importance, threshold).tolist() == [True, False, False, True]


def test_quantize_reports_codebook_nonzeros_and_exact_sse():
    values = np.array([0.0, 1.0, 1.2, 3.0, 3.0, 3.4, -2.0, 0.05], np.float32)
    quant = SortedWeights(values).quantize(0.25, 3)  # prunes 0.0 and 0.05
    assert quant.nonzeros == 6
    np.testing.assert_allclose(quant.codebook, [-2.0, 1.1, 9.4 / 3], rtol=1e-6)
    applied = apply_quantization(values, quant)
    assert applied[0] == 0 and applied[7] == 0
    np.testing.assert_allclose(quant.sse, np.sum((applied.astype(np.float64) - values) ** 2), rtol=1e-5)
    empty = SortedWeights(np.zeros(4, np.float32)).quantize(0.0, 4)
    assert empty.nonzeros == 0 and empty.codebook.size == 0 and empty.sse == 0


def test_integer_weights_held_as_distinct_values_give_the_same_results(rng):
    values = rng.integers(-20, 21, 5000).astype(np.float32)
    distinct = SortedWeights(values)
    per_entry = SortedWeights(values, np.ones(values.size))  # importance: held entry by entry
    assert distinct.counts is not None and distinct.sorted.size == 41 and per_entry.counts is None
    assert distinct.energy == per_entry.energy
    for sparsity, clusters in ((0.0, 8), (0.3, 4), (0.7, 16)):
        a, b = distinct.quantize(sparsity, clusters), per_entry.quantize(sparsity, clusters)
        assert a.nonzeros == b.nonzeros
        np.testing.assert_array_equal(a.codebook, b.codebook)
        assert a.sse == pytest.approx(b.sse, rel=1e-9)
        assert np.array_equal(prune_mask(values, None, a.saliency_threshold),
                              prune_mask(values, None, b.saliency_threshold))


@pytest.mark.parametrize("axis", [0, 1])
def test_group_view_rows_and_columns(axis):
    values = np.arange(24).reshape(4, 6)
    rows = group_view(values, 2, axis)
    if axis == 0:
        assert rows.tolist() == [list(range(12)), list(range(12, 24))]
    else:  # columns 0-2, then columns 3-5, each column whole
        assert rows[0].tolist() == [0, 6, 12, 18, 1, 7, 13, 19, 2, 8, 14, 20]
        assert set(rows[1].tolist()) == set(values[:, 3:].ravel().tolist())
    assert np.array_equal(from_group_view(rows, values.shape, axis), values)


def test_snap_to_codebook():
    codebook = np.array([-1.0, 0.5, 2.0], np.float32)
    values = np.array([-3.0, -0.25, -0.24, 1.25, 1.26, 9.0], np.float32)
    assert snap_to_codebook(values, codebook).tolist() == [-1.0, -1.0, 0.5, 0.5, 2.0, 2.0]  # ties go down
    assert snap_to_codebook(values, np.zeros(0, np.float32)).tolist() == [0.0] * 6
    assert snap_to_codebook(values, np.array([0.75], np.float32)).tolist() == [0.75] * 6


def test_snap_to_grouped_codebooks_uses_each_groups_own_codebook():
    values = np.array([[0.1, 0.9], [0.2, 0.8], [10.1, 19.0], [11.0, 20.5]], np.float32)
    codebooks = np.array([[0.0, 1.0], [10.0, 20.0]], np.float32)
    snapped = snap_to_grouped_codebooks(values, codebooks, axis=0)
    assert snapped.tolist() == [[0, 1], [0, 1], [10, 20], [10, 20]]
    by_column = snap_to_grouped_codebooks(np.array([[0.4, 12.0], [0.7, 19.0]], np.float32), codebooks, axis=1)
    assert by_column.tolist() == [[0, 10], [1, 20]]


def test_prune_mask_keeps_no_exact_zero_and_handles_scalars():
    values = np.array([[0.0, 0.5], [-2.0, 0.1]], np.float32)
    assert prune_mask(values, None, 0.0).tolist() == [[False, True], [True, True]]
    assert prune_mask(values, None, 0.05).tolist() == [[False, True], [True, False]]
    assert prune_mask(values, np.array([[1.0, 1.0], [1.0, 100.0]]), 0.05).tolist() == [[False, True], [True, True]]
    assert prune_mask(np.float32(3.0), None, 1.0).shape == () and prune_mask(np.float32(3.0), None, 1.0)


def test_apply_quantization_prunes_snaps_and_keeps_outliers_exact():
    values = np.array([0.01, 0.9, 1.1, -1.05, 7.3], np.float32)
    quant = Quantization(saliency_threshold=0.01, codebook=np.array([-1.0, 1.0], np.float32), sse=0.0, nonzeros=4)
    assert apply_quantization(values, quant).tolist() == [0.0, 1.0, 1.0, -1.0, 1.0]
    kept = Quantization(0.01, np.array([-1.0, 1.0], np.float32), 0.0, 4, outlier_threshold=5.0)
    np.testing.assert_array_equal(apply_quantization(values, kept), np.float32([0.0, 1.0, 1.0, -1.0, 7.3]))
    grouped = Quantization(np.nextafter(0.0, 1.0), np.array([[0.0, 1.0], [-1.0, 7.0]], np.float32), 0.0, 4, groups=2)
    np.testing.assert_array_equal(apply_quantization(values[:4], grouped), np.float32([0.0, 1.0, -1.0, -1.0]))


def test_nearest_rows_and_snap_to_vectors():
    centres = np.array([[0.0, 0.0], [1.0, 1.0], [5.0, -5.0]], np.float32)
    x = np.array([[0.1, -0.2], [0.9, 1.4], [4.0, -3.0], [0.6, 0.6]], np.float32)
    assert nearest_rows(x, centres, chunk=3).tolist() == [0, 1, 2, 1]
    values = x.reshape(2, 4)
    assert snap_to_vectors(values, centres).tolist() == [[0, 0, 1, 1], [5, -5, 1, 1]]
    vq = Quantization(np.nextafter(0.0, 1.0), centres, 0.0, 8, vector_dim=2)
    assert apply_quantization(values, vq).tolist() == [[0, 0, 1, 1], [5, -5, 1, 1]]  # zeros are coded too: no pruning
