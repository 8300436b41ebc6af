"""Trains a reference LeNet on full MNIST and exports it to ONNX.

    python -m models.train_mnist --model lenet300|lenet5 [--epochs N] [--seed S]

Writes `models/<model>.onnx` (opset 17, IR version 10, dynamic batch axis, weights as
initializers of Gemm/Conv nodes), checks that ONNX Runtime reproduces the torch test
accuracy on the full 10k test set, and records the ONNX Runtime accuracy, parameter count
and file bytes in `models/accuracy.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from models.lenet import INPUT_NAME, MODELS, OUTPUT_NAME
from models.mnist import load_mnist

logger = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).resolve().parent
ACCURACY_FILE = MODELS_DIR / "accuracy.json"
OPSET = 17
IR_VERSION = 10


@dataclass(frozen=True)
class Recipe:
    """How one model is trained: Adam with linear warm-up then cosine decay to zero."""

    epochs: int
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_epochs: float = 0.5


# Chosen so each run stays under ~5 minutes on 2 CPU cores.
RECIPES = {
    "lenet300": Recipe(epochs=20, learning_rate=1e-3, weight_decay=1e-5),
    "lenet5": Recipe(epochs=10, learning_rate=1e-3, weight_decay=1e-5),
}


def _learning_rate_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe,
          seed: int, penalty: Callable[[], torch.Tensor] | None = None) -> None:
    """Trains `model` in place with the given recipe; shuffling is seeded by `seed`.

    `penalty`, if given, is added to every batch's loss (e.g. a sparsity regularizer).
    """
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay
    )
    steps_per_epoch = math.ceil(images.shape[0] / recipe.batch_size)
    total_steps = recipe.epochs * steps_per_epoch
    warmup_steps = max(1, int(recipe.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _learning_rate_factor(step, warmup_steps, total_steps)
    )
    shuffle_generator = torch.Generator().manual_seed(seed)
    loss_function = nn.CrossEntropyLoss()
    for epoch in range(recipe.epochs):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(images.shape[0], generator=shuffle_generator)
        loss_sum = 0.0
        for batch in order.split(recipe.batch_size):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(model(images[batch]), labels[batch])
            (loss if penalty is None else loss + penalty()).backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * batch.numel()
        print(
            f"epoch {epoch + 1}/{recipe.epochs}: loss {loss_sum / images.shape[0]:.4f}, "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )


@torch.no_grad()
def torch_predictions(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    model.eval()
    return torch.cat([model(chunk).argmax(dim=1) for chunk in images.split(batch_size)]).numpy()


def onnx_predictions(path: Path, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Runs the ONNX file in ONNX Runtime (CPU) and returns the predicted classes."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    chunks = [
        session.run([OUTPUT_NAME], {INPUT_NAME: images[start:start + batch_size]})[0]
        for start in range(0, images.shape[0], batch_size)
    ]
    return np.concatenate(chunks).argmax(axis=1)


def export_onnx(model: nn.Module, path: Path) -> None:
    """Exports with the TorchScript exporter, then stamps IR version 10 and re-saves."""
    model.eval()
    example = torch.zeros(1, 1, 28, 28)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but gives plain Gemm/Conv with initializers.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    exported = onnx.load(str(path))
    exported.ir_version = IR_VERSION
    onnx.checker.check_model(exported, full_check=True)
    weight_ops = {"Gemm", "Conv", "MatMul"}
    weight_op_inputs = {
        name for node in exported.graph.node if node.op_type in weight_ops for name in node.input
    }
    for initializer in exported.graph.initializer:
        if initializer.name not in weight_op_inputs:
            raise RuntimeError(f"initializer {initializer.name!r} does not feed a Gemm/Conv node")
    if any(node.op_type == "Constant" for node in exported.graph.node):
        raise RuntimeError(f"{path.name}: export left Constant nodes; weights must be initializers")
    onnx.save(exported, str(path))


def record_accuracy(name: str, entry: dict) -> None:
    """Merges one model's entry into `models/accuracy.json`."""
    table = json.loads(ACCURACY_FILE.read_text()) if ACCURACY_FILE.exists() else {}
    table[name] = entry
    ACCURACY_FILE.write_text(json.dumps(dict(sorted(table.items())), indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models.train_mnist", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--model", choices=sorted(MODELS), required=True)
    parser.add_argument("--epochs", type=int, default=None, help="default: the model's recipe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=None, help="default: models/<model>.onnx")
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    recipe = RECIPES[args.model]
    if args.epochs is not None:
        recipe = Recipe(**{**recipe.__dict__, "epochs": args.epochs})
    output = args.output or MODELS_DIR / f"{args.model}.onnx"

    train_images, train_labels = load_mnist("train")
    test_images, test_labels = load_mnist("test")
    model = MODELS[args.model]()
    parameters = sum(parameter.numel() for parameter in model.parameters())
    print(f"{args.model}: {parameters} parameters, {recipe}, seed {args.seed}", flush=True)

    started = time.perf_counter()
    train(model, torch.from_numpy(train_images), torch.from_numpy(train_labels), recipe, args.seed)
    train_seconds = time.perf_counter() - started

    torch_predicted = torch_predictions(model, torch.from_numpy(test_images))
    torch_correct = int((torch_predicted == test_labels).sum())
    export_onnx(model, output)
    onnx_correct = int((onnx_predictions(output, test_images) == test_labels).sum())
    torch_accuracy = torch_correct / test_labels.shape[0]
    onnx_accuracy = onnx_correct / test_labels.shape[0]
    print(
        f"test accuracy: torch {torch_accuracy:.4f}, onnxruntime {onnx_accuracy:.4f}; "
        f"trained in {train_seconds:.0f} s; wrote {output} ({output.stat().st_size} bytes)"
    )
    # Float reassociation in ORT may flip a near-tie; more than that means a broken export.
    if abs(onnx_correct - torch_correct) > 1:
        raise RuntimeError(
            f"ONNX Runtime accuracy {onnx_accuracy:.4f} differs from torch {torch_accuracy:.4f}"
        )
    if output.resolve() == MODELS_DIR / f"{args.model}.onnx":
        record_accuracy(args.model, {
            "file": output.name,
            "test_accuracy": round(onnx_accuracy, 4),
            "test_images": int(test_labels.shape[0]),
            "params": parameters,
            "bytes": output.stat().st_size,
            "epochs": recipe.epochs,
            "seed": args.seed,
            "train_seconds": round(train_seconds),
        })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
