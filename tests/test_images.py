"""Generated image batches: noise, dead leaves and strokes, in the input's own layout."""

from __future__ import annotations

import numpy as np

from onnxcomp.samples.images import generated_images, image_layout


def test_only_image_shaped_inputs_get_images():
    assert image_layout([8, 3, 48, 320], 0) == (1, 2, 3)
    assert image_layout([8, 224, 224, 3], 0) == (3, 1, 2)
    assert image_layout([8, 64, 32, 32], 0) is None  # a feature map
    assert image_layout([8, 3, 8, 8], 0) is None  # too small to hold structure
    assert image_layout([2, 8, 3, 48], 1) is None  # samples not on axis 0
    assert image_layout([8, 3, 48], 0) is None


def test_each_kind_has_its_structure():
    rng = np.random.default_rng(0)
    batch = generated_images([8, 3, 48, 320], (1, 2, 3), rng)
    assert batch.shape == (8, 3, 48, 320) and batch.dtype == np.float32
    noise, leaves, strokes = batch[1], batch[2], batch[3]  # two noise samples in every four
    # noise: every value its own; dead leaves: flat patches (few distinct values per channel);
    # strokes: two levels (ground and ink), the same in every channel, mostly ground
    assert np.unique(noise[0]).size > 0.9 * noise[0].size
    assert np.unique(leaves[0]).size <= 81 and np.abs(np.diff(leaves[0], axis=1)).mean() < 0.5 * np.abs(np.diff(noise[0], axis=1)).mean()
    levels, counts = np.unique(strokes[0], return_counts=True)
    assert levels.size == 2 and counts[levels.argmax()] > counts[levels.argmin()]
    assert np.array_equal(strokes[0], strokes[2])
    assert np.abs(batch).max() <= 5


def test_channels_last_batches_come_back_in_their_layout():
    rng = np.random.default_rng(1)
    batch = generated_images([4, 32, 40, 3], (3, 1, 2), rng)
    assert batch.shape == (4, 32, 40, 3) and batch.flags.c_contiguous
    assert np.unique(batch[3, ..., 0]).size == 2  # strokes: ground and ink along H, W
