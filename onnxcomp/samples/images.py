"""Generated images with the structure real ones have, for image inputs without data.

I.i.d. noise is a poor stand-in for a photo or a scanned line: a text recogniser says "blank" at
every position of it (PP-OCRv4's English recogniser labelled none of 640 positions of 16 noise
images), so neither the sensitivities measured on it nor the check of the output see what the
model reads. Generated image batches therefore mix three kinds, sample by sample:

* i.i.d. standard normal noise (what every input got before);
* dead-leaves images: discs of flat colour occluding each other, radii from a power law, the
  model of natural-image statistics of Lee, Mumford and Huang (2001), on which networks learn
  features close to those of real photos (Baradad et al. 2021) - 71 labelled positions;
* dark strokes on a light ground, in groups like the glyphs of a text line - 138 labelled
  positions (these counts measured by hand on 16 images of 48x320, 2026-12-07, not by a bench
  command).

Values span about [-1.5, 1.5], the range of normalised pixels (and of the noise's bulk).
"""

from __future__ import annotations

import numpy as np

IMAGE_CHANNELS = (1, 3, 4)
MIN_SIDE = 16  # smaller spatial inputs (feature maps, spectrogram patches) stay noise
DISCS = 80  # per dead-leaves image
KINDS = 4  # noise, noise, dead leaves, strokes


def image_layout(shape: list[int], sample_axis: int | None) -> tuple[int, int, int] | None:
    """(channel axis, height axis, width axis) of a float input shaped like an image batch
    ([N, C, H, W] or [N, H, W, C], C in IMAGE_CHANNELS, both sides at least MIN_SIDE), else None."""
    if len(shape) != 4 or sample_axis != 0:
        return None
    if shape[1] in IMAGE_CHANNELS and min(shape[2], shape[3]) >= MIN_SIDE:
        return 1, 2, 3
    if shape[3] in IMAGE_CHANNELS and min(shape[1], shape[2]) >= MIN_SIDE:
        return 3, 1, 2
    return None


def generated_images(shape: list[int], layout: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A float32 batch of `shape`: sample i is noise, noise, dead leaves or strokes as i % 4."""
    channel_axis, height_axis, width_axis = layout
    count, channels, height, width = shape[0], shape[channel_axis], shape[height_axis], shape[width_axis]
    batch = rng.standard_normal((count, channels, height, width)).astype(np.float32)
    for index in range(count):
        kind = index % KINDS
        if kind == 2:
            batch[index] = _dead_leaves(channels, height, width, rng)
        elif kind == 3:
            batch[index] = _strokes(channels, height, width, rng)
    return batch if channel_axis == 1 else np.ascontiguousarray(np.moveaxis(batch, 1, 3))


def _dead_leaves(channels: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    image = np.empty((channels, height, width), np.float32)
    image[:] = rng.uniform(-1.5, 1.5, (channels, 1, 1))
    rows, columns = np.ogrid[:height, :width]
    side = min(height, width)
    for _ in range(DISCS):
        radius = side * 0.5 * rng.uniform(0.02, 1.0) ** 2  # many small discs, few large ones
        y, x = rng.uniform(0, height), rng.uniform(0, width)
        inside = (rows - y) ** 2 + (columns - x) ** 2 < radius * radius
        image[:, inside] = rng.uniform(-1.5, 1.5, (channels, 1))
    return image


def _strokes(channels: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    ground, ink = rng.uniform(0.3, 1.5), rng.uniform(-1.5, -0.3)
    plane = np.full((height, width), ground, np.float32)
    glyph = max(4.0, min(height, width) * 0.5)
    thickness = max(1, int(round(glyph / 12)))
    x = rng.uniform(0, glyph / 2)
    while x < width - glyph / 4:
        for _ in range(rng.integers(1, 4)):  # a glyph: one to three strokes
            y0, y1 = rng.uniform(0.2, 0.8, 2) * height
            x0, x1 = x + rng.uniform(0, glyph * 0.8, 2)
            steps = np.linspace(0, 1, int(max(abs(y1 - y0), abs(x1 - x0))) + 2)
            for y, xx in zip(y0 + (y1 - y0) * steps, x0 + (x1 - x0) * steps):
                plane[max(0, int(y) - thickness):int(y) + thickness + 1, max(0, int(xx) - thickness):int(xx) + thickness + 1] = ink
        x += glyph * rng.uniform(0.6, 1.1) + (glyph if rng.random() < 0.15 else 0.0)  # now and then a space
    return np.broadcast_to(plane, (channels, height, width)).copy()
