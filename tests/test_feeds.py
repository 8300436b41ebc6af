"""samples.feeds: each input's sample axis, sample counts over groups of equal-shaped feeds,
slicing and batching along each input's own axis, and joining batched outputs."""

from __future__ import annotations

import numpy as np
import pytest

from onnxcomp.samples.feeds import (
    Feeds,
    as_feeds,
    batch,
    batches,
    feed_groups,
    first_group,
    group_count,
    join_outputs,
    sample_count,
    slice_feeds,
)


def audio_feeds(count: int, offset: int = 0) -> Feeds:
    """Waveforms [count, 4] on axis 0, a state [2, count, 3] on axis 1 and a scalar rate fed whole;
    sample i holds the value offset + i everywhere."""
    ids = np.arange(offset, offset + count, dtype=np.float32)
    return Feeds({"input": np.repeat(ids[:, None], 4, axis=1), "state": np.broadcast_to(ids[None, :, None], (2, count, 3)).copy(),
                  "sr": np.array(16000)}, {"state": 1, "sr": None})


def test_axis_defaults_to_0_and_none_for_scalars():
    feeds = Feeds({"x": np.zeros((3, 2)), "flag": np.array(True), "state": np.zeros((2, 3))}, {"state": 1})
    assert (feeds.axis("x"), feeds.axis("flag"), feeds.axis("state")) == (0, None, 1)
    assert Feeds({"x": np.zeros(3)}, {"x": None}).axis("x") is None  # listed: the mapping decides


def test_groups_are_kept_only_when_there_are_several():
    part = Feeds({"x": np.zeros((2, 3))})
    assert Feeds(part, groups=[part]).groups is None
    assert feed_groups(Feeds(part, groups=[part])) == [part]
    other = Feeds({"x": np.zeros((1, 5))})
    grouped = Feeds(part, groups=[part, other])
    assert feed_groups(grouped) == [part, other] and first_group(grouped) is part


def test_as_feeds_keeps_feeds_and_wraps_plain_mappings():
    feeds = audio_feeds(2)
    assert as_feeds(feeds) is feeds
    wrapped = as_feeds({"x": np.zeros((4, 2))})
    assert isinstance(wrapped, Feeds) and wrapped.axes == {} and sample_count(wrapped) == 4


def test_sample_count_reads_each_inputs_own_axis_and_sums_groups():
    assert group_count(audio_feeds(5)) == 5
    assert sample_count(audio_feeds(5)) == 5
    assert sample_count(Feeds({"sr": np.array(16000)}, {"sr": None})) == 1  # nothing stacked: one run
    grouped = Feeds(audio_feeds(3), groups=[audio_feeds(3), audio_feeds(2, offset=3)])
    assert sample_count(grouped) == 5


def test_slice_feeds_cuts_along_each_axis_and_passes_shared_values_whole():
    part = slice_feeds(audio_feeds(5), 1, 3)
    assert part["input"][:, 0].tolist() == [1.0, 2.0] and part["input"].shape == (2, 4)
    assert part["state"].shape == (2, 2, 3) and part["state"][1, :, 0].tolist() == [1.0, 2.0]
    assert int(part["sr"]) == 16000 and part.axes == {"state": 1, "sr": None}


def test_batch_finds_the_group_that_holds_the_start():
    grouped = Feeds(audio_feeds(3), groups=[audio_feeds(3), audio_feeds(4, offset=3)])
    assert batch(grouped, 1, 3)["input"][:, 0].tolist() == [1.0, 2.0]
    assert batch(grouped, 2, 6)["input"][:, 0].tolist() == [2.0]  # cut at the end of its group
    assert batch(grouped, 4, 6)["state"][0, :, 0].tolist() == [4.0, 5.0]
    assert batch({"x": np.arange(6)}, 2, 4)["x"].tolist() == [2, 3]  # a plain dict: axis 0


def test_batches_cover_every_sample_once_group_by_group():
    grouped = Feeds(audio_feeds(3), groups=[audio_feeds(3), audio_feeds(4, offset=3)])
    parts = list(batches(grouped, 2))
    assert [p["input"][:, 0].tolist() for p in parts] == [[0, 1], [2], [3, 4], [5, 6]]
    assert [p["state"].shape for p in parts] == [(2, 2, 3), (2, 1, 3), (2, 2, 3), (2, 2, 3)]
    assert all(int(p["sr"]) == 16000 for p in parts)


@pytest.mark.parametrize("size", [0, -3])
def test_batches_of_no_size_take_one_sample_each(size):
    assert [p["x"].tolist() for p in batches({"x": np.arange(3)}, size)] == [[0], [1], [2]]


def test_join_outputs_returns_a_single_chunk_as_it_is():
    chunk = np.arange(6.0).reshape(2, 3)
    assert join_outputs([chunk], [2]) is chunk


def test_join_outputs_picks_the_axis_that_follows_the_batch_sizes():
    # axis 0 is 3 in every chunk (not the batch sizes); axis 1 follows [2, 1]
    chunks = [np.zeros((3, 2), np.float16), np.ones((3, 1), np.float32)]
    joined = join_outputs(chunks, [2, 1])
    assert joined.shape == (3, 3) and joined.dtype == np.float32
    assert joined[:, 2].tolist() == [1.0] * 3 and chunks == [None, None]
    # chunks of another rank do not stack: flattened in order
    flat = join_outputs([np.arange(2.0), np.arange(4.0).reshape(2, 2)], [2, 2])
    assert flat.tolist() == [0.0, 1.0, 0.0, 1.0, 2.0, 3.0]
