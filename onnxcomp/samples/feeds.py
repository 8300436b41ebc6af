"""Feeds: a model's input arrays with each one's sample axis, and batching over them.

Each input's samples lie along its own sample axis (``onnxcomp.samples.signature``); an input without
one is fed whole with every batch. Feeds whose shapes differ are kept as groups of equal-shaped
feeds, and :func:`batches` goes through them group by group.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np


class Feeds(dict):
    """Arrays named after the model's inputs, with each one's sample axis.

    ``axes[name]`` is the axis samples are stacked along (None: one value fed with every batch;
    inputs not listed: axis 0, or None for rank 0). When feeds differ in shape, ``groups`` holds
    the equal-shaped parts (each a Feeds) and the mapping itself shows the first of them.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray] = (), axes: Mapping[str, int | None] | None = None,
                 groups: list[Feeds] | None = None):
        super().__init__(arrays)
        self.axes: dict[str, int | None] = dict(axes or {})
        self.groups: list[Feeds] | None = groups if groups and len(groups) > 1 else None

    def axis(self, name: str) -> int | None:
        if name in self.axes:
            return self.axes[name]
        return 0 if np.ndim(self[name]) else None


def as_feeds(inputs: Mapping[str, np.ndarray]) -> Feeds:
    return inputs if isinstance(inputs, Feeds) else Feeds(inputs)


def feed_groups(inputs: Mapping[str, np.ndarray]) -> list[Feeds]:
    feeds = as_feeds(inputs)
    return feeds.groups or [feeds]


def group_count(feeds: Feeds) -> int:
    counts = [np.shape(array)[feeds.axis(name)] for name, array in feeds.items() if feeds.axis(name) is not None]
    return counts[0] if counts else 1


def sample_count(inputs: Mapping[str, np.ndarray]) -> int:
    """Samples along each input's sample axis, over all groups. Inputs without a sample axis
    (a scalar flag or rate) are one value fed with every batch."""
    return sum(group_count(part) for part in feed_groups(inputs))


def slice_feeds(feeds: Feeds, start: int, stop: int) -> Feeds:
    arrays = {}
    for name, array in feeds.items():
        axis = feeds.axis(name)
        if axis is None:
            arrays[name] = array
        else:
            index = [slice(None)] * np.ndim(array)
            index[axis] = slice(start, stop)
            arrays[name] = array[tuple(index)]
    return Feeds(arrays, feeds.axes)


def batch(inputs: Mapping[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Samples [start, stop) of every input along its sample axis, within the group of feeds
    that holds sample ``start``; inputs without a sample axis are passed whole."""
    parts = feed_groups(inputs)
    for part in parts[:-1]:
        count = group_count(part)
        if start < count:
            return slice_feeds(part, start, min(stop, count))
        start, stop = start - count, stop - count
    return slice_feeds(parts[-1], start, stop)


def batches(inputs: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Every sample once, in feeds of at most ``batch_size`` samples, group by group."""
    size = max(int(batch_size), 1)  # a model may declare a batch of 0
    for part in feed_groups(inputs):
        for start in range(0, group_count(part), size):
            yield slice_feeds(part, start, start + size)


def first_group(inputs: Mapping[str, np.ndarray]) -> Feeds:
    """The largest group of equal-shaped feeds (all of them when they share one shape)."""
    return feed_groups(inputs)[0]


def join_outputs(chunks: list, sizes: list[int]) -> np.ndarray:
    """One output over consecutive batches of ``sizes`` samples: concatenated along the axis
    whose length follows the batch sizes (the output's sample axis), else - outputs that do not
    stack, e.g. from feeds of different shapes - flattened and concatenated, so that outputs are
    still compared element by element (outputs of rank 3 or more with one last-axis size keep
    it: [1, positions, C], so that per-position class agreement is still measured).

    Each chunk is copied into the joined array and dropped from ``chunks`` (set to None), so that
    the batches and the joined output are not held at once (the caller's list is left holding None)."""
    if len(chunks) == 1:
        return chunks[0]
    first = chunks[0]
    for axis in range(first.ndim):
        if all(c.ndim == first.ndim and c.shape[axis] == n and c.shape[:axis] + c.shape[axis + 1:]
               == first.shape[:axis] + first.shape[axis + 1:] for c, n in zip(chunks, sizes)):
            return _concatenate(chunks, axis)
    if first.ndim >= 3 and all(c.ndim == first.ndim and c.shape[-1] == first.shape[-1] for c in chunks):
        # Values at positions along a last axis of classes (a detector's per-pixel face/background
        # scores from images of different sizes): [1, positions, C], so each position stays one.
        for index, chunk in enumerate(chunks):
            chunks[index] = np.reshape(chunk, (1, -1, first.shape[-1]))
        return _concatenate(chunks, 1)
    for index, chunk in enumerate(chunks):
        chunks[index] = np.ravel(chunk)
    return _concatenate(chunks, 0)


def _concatenate(chunks: list, axis: int) -> np.ndarray:
    """`np.concatenate(chunks, axis)`, releasing each chunk once it is copied."""
    shape = list(chunks[0].shape)
    shape[axis] = sum(chunk.shape[axis] for chunk in chunks)
    joined = np.empty(shape, np.result_type(*chunks))
    start = 0
    for index, chunk in enumerate(chunks):
        place = [slice(None)] * joined.ndim
        place[axis] = slice(start, start + chunk.shape[axis])
        joined[tuple(place)] = chunk
        start += chunk.shape[axis]
        chunks[index] = None
    return joined