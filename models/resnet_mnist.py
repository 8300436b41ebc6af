"""A small residual CNN for MNIST (Add skips, BatchNorm, global average pooling, Flatten + Gemm).

    python -m models.resnet_mnist [--epochs 2] [--seed 0] [--threads 1]

Trains on full MNIST with the recipe loop of `models.train_mnist` (AdamW, lr 2e-3, weight decay
1e-4, batch 128, cosine; ~1.5 min per epoch on one CPU thread) and exports
models/resnet_mnist.onnx (opset 17, IR 10, dynamic batch; the exporter folds the inference-mode
BatchNorms into the convolutions, so the ONNX graph is Conv/Relu/Add, GlobalAveragePool,
Flatten, Gemm). Checks that ONNX Runtime gives the torch test accuracy and records it in
models/accuracy.json. Used by the channel-elimination benchmark of issue 4 (bench/resnet_channels.py).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import onnx
import torch
from torch import nn

from models.mnist import load_mnist
from models.train_mnist import Recipe, export_onnx, onnx_predictions, record_accuracy, torch_predictions, train

MODELS_DIR = Path(__file__).resolve().parent


class Block(nn.Module):
    """conv-bn-relu-conv-bn + identity skip, relu."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class ResNetMnist(nn.Module):
    """stem 16 @ 28x28 -> block -> stride-2 conv 32 @ 14x14 -> block -> stride-2 conv 64 @ 7x7 -> pool -> fc."""

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64)):
        super().__init__()
        first, second, third = widths
        self.stem = nn.Sequential(nn.Conv2d(1, first, 3, padding=1, bias=False), nn.BatchNorm2d(first), nn.ReLU())
        self.block1 = Block(first)
        self.down1 = nn.Sequential(nn.Conv2d(first, second, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(second), nn.ReLU())
        self.block2 = Block(second)
        self.down2 = nn.Sequential(nn.Conv2d(second, third, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(third), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(third, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.down1(self.block1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(self.down2(x)), 1))

    def channel_groups(self) -> list[list[nn.BatchNorm2d]]:
        """BatchNorms whose channels are one channel group (outputs meeting in a residual Add)."""
        return [[self.stem[1], self.block1.bn2], [self.block1.bn1], [self.down1[1], self.block2.bn2],
                [self.block2.bn1], [self.down2[1]]]

    def slimming_penalty(self) -> torch.Tensor:
        """Group lasso on the BatchNorm scales (network slimming, Liu et al. 2017), one group per channel.

        A channel of a residual group is scaled by several BatchNorms; the penalty is the L2 norm of
        its scales, so they shrink together and the channel can be removed from every layer at once.
        """
        return sum(torch.stack([bn.weight for bn in group]).norm(dim=0).sum() for group in self.channel_groups())


def onnx_parameters(path: Path) -> int:
    """Weights in the exported file (the BatchNorms are folded into the convolutions)."""
    return sum(math.prod(tensor.dims) for tensor in onnx.load(str(path)).graph.initializer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.resnet_mnist", description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--slimming", type=float, default=2e-2,
                        help="weight of the BatchNorm-scale group lasso that makes channels removable (0: none)")
    parser.add_argument("--output", type=Path, default=MODELS_DIR / "resnet_mnist.onnx")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    images, labels = load_mnist("train")
    test_images, test_labels = load_mnist("test")
    model = ResNetMnist()
    started = time.perf_counter()
    recipe = Recipe(epochs=args.epochs, batch_size=128, learning_rate=2e-3, weight_decay=1e-4, warmup_epochs=0.2)
    penalty = None
    if args.slimming > 0:
        # AdamW moves a scale by about lr per step: starting at 0.5, unneeded channels reach zero in two epochs.
        for group in model.channel_groups():
            for bn in group:
                nn.init.constant_(bn.weight, 0.5)
        penalty = lambda: args.slimming * model.slimming_penalty()  # noqa: E731
    train(model, torch.from_numpy(images), torch.from_numpy(labels), recipe, args.seed, penalty)
    scales = torch.cat([torch.stack([bn.weight for bn in g]).norm(dim=0) for g in model.channel_groups()]).detach()
    print(f"BatchNorm scale norms per channel: {int((scales < 0.05).sum())} of {scales.numel()} below 0.05, "
          f"quartiles {[round(float(q), 3) for q in scales.quantile(torch.tensor([0.25, 0.5, 0.75]))]}")
    seconds = time.perf_counter() - started
    torch_correct = int((torch_predictions(model, torch.from_numpy(test_images)) == test_labels).sum())
    export_onnx(model, args.output)
    onnx_correct = int((onnx_predictions(args.output, test_images) == test_labels).sum())
    onnx_accuracy = onnx_correct / len(test_labels)
    print(f"test accuracy: torch {torch_correct / len(test_labels):.4f}, onnxruntime {onnx_accuracy:.4f}; "
          f"trained in {seconds:.0f} s; wrote {args.output} ({args.output.stat().st_size} bytes)")
    # Float reassociation in ORT may flip a near-tie; more than that means a broken export.
    if abs(onnx_correct - torch_correct) > 1:
        raise RuntimeError(f"ONNX Runtime gets {onnx_correct} test images right, torch {torch_correct}")
    if args.output.resolve() == MODELS_DIR / "resnet_mnist.onnx":
        record_accuracy("resnet_mnist", {
            "file": args.output.name,
            "test_accuracy": round(onnx_accuracy, 4),
            "test_images": len(test_labels),
            "params": onnx_parameters(args.output),
            "bytes": args.output.stat().st_size,
            "epochs": args.epochs,
            "seed": args.seed,
            "threads": args.threads,
            "slimming": args.slimming,
            "train_seconds": round(seconds),
        })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
