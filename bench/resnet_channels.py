"""Channel elimination on the small MNIST ResNet (issue 4, criterion 2): mean replacement + fine-tune.

    python -m bench.resnet_channels [--keep 0.5] [--score replacement] [--mean-samples 2000]
                                    [--finetune-samples 20000] [--epochs 1] [--out bench/results]

Keeps the ``--keep`` fraction of channels (rounded up) with the largest ``--score`` in every
unblocked channel group of models/resnet_mnist.onnx - a residual group (the layers whose outputs
meet in an Add) shares one mask, as `onnxcomp.channels.analyze_channels` dictates -, removes the
rest with `EliminateNeuronsPass`, and fine-tunes the smaller network on ONNX Runtime's training
backend (`onnxcomp.runtime.training.finetune`) on the first ``--finetune-samples`` MNIST training
images with labels plus distillation from the original model (50/50, temperature 2, as
`onnxcomp.training.vib.vib_eliminate` does); train[55000:] is the held-out set that picks the epoch.

The default score is `replacement_errors`: the output error replacing a channel by its mean
causes (its variance on the first ``--mean-samples`` training images times the squared weights
that read it). Weight norms mislead here: the model's slimming penalty drives BatchNorm scales
towards zero, but folding the BatchNorm into the convolution divides by the (equally small)
standard deviation, so a near-constant channel can keep large folded weights. The pass replaces
every removed channel by its mean activation on the same images, folded into the next layers'
biases; the table also shows the accuracy of the same removal with the removed channels simply
dropped (no compensation: their constant part is lost).

Reports test accuracy on the 10,000 test images (original, pruned without and with
compensation before fine-tuning, pruned after) and the latency of original and pruned model
measured side by side in this run (interleaved, 1 thread, medians, batch 1 and batch 64).
Writes bench/results/resnet_channels.md, resnet_channels.json and resnet_channels.onnx.

Issue 4, criterion 2: at least 50% of the channels removed at most 0.5 points accuracy loss.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import onnx_ir as ir

from bench.vib_lenet300 import latencies, test_error
from models.mnist import load_mnist
from onnxcomp.channels import ChannelAnalysis, analyze_channels, constant, segment_offsets
from onnxcomp.modelfile import load_model, save_model
from onnxcomp.passes import eliminate_neurons
from onnxcomp.passes.eliminate_neurons import EliminateNeuronsPass, outgoing_norms, replacement_errors
from onnxcomp.runtime.training import TrainConfig, finetune, model_forward_logits
from onnxcomp.model.weights import find_weights

ROOT = Path(__file__).resolve().parent.parent
HELD_OUT = slice(55000, None)


def incoming_norms(analysis: ChannelAnalysis) -> dict[int, np.ndarray]:
    """Per group: L2 norm of each channel's incoming weights, over every layer that makes it.

    With the BatchNorms folded into the convolutions this carries the BatchNorm scale, which the
    model's slimming penalty drives to zero for removable channels.
    """
    norms2 = {group.id: np.zeros(group.size) for group in analysis.groups}
    for edit in analysis.tensor_edits:
        if edit.role != "weight":
            continue
        weight = constant(edit.node.inputs[edit.input_index]).astype(np.float64)
        rows = np.moveaxis(weight, edit.axis, 0).reshape(weight.shape[edit.axis], -1)
        for segment, offset, _ in segment_offsets(edit.layout):
            if segment.origin is not None:
                norms2[analysis.group_of_origin[segment.origin]] += (rows[offset : offset + segment.size] ** 2).sum(1)
    return {group_id: np.sqrt(n) for group_id, n in norms2.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=float, default=0.5, help="fraction of each group's channels kept")
    parser.add_argument("--score", choices=("replacement", "in", "out", "inout"), default="replacement",
                        help="rank channels by the error their mean replacement causes on --mean-samples images "
                             "(onnxcomp.passes.eliminate_neurons.replacement_errors), or by incoming, outgoing or "
                             "the product of both weight norms")
    parser.add_argument("--mean-samples", type=int, default=2000,
                        help="training images that measure the removed channels' mean activations (0: data-free)")
    parser.add_argument("--finetune-samples", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=200, help="latency runs per model and batch size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, default=Path("models/resnet_mnist.onnx"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    command = " ".join(["python -m bench.resnet_channels", *(sys.argv[1:] if argv is None else argv)])

    images, labels = load_mnist("train")
    test_images, test_labels = load_mnist("test")
    original_path = args.model
    original = load_model(original_path)
    model = load_model(original_path)
    started = time.perf_counter()
    analysis = analyze_channels(model)
    outgoing, incoming = outgoing_norms(analysis), incoming_norms(analysis)
    samples = {"input": images[: args.mean_samples]} if args.mean_samples else None
    if args.score == "replacement":
        if samples is None:
            parser.error("--score replacement needs --mean-samples")
        replacement = replacement_errors(model, samples, analysis)
    keep, members = {}, {}
    for group in analysis.groups:
        if group.blocked or group.name.startswith("input:"):  # the one-channel image stays
            continue
        mask = np.zeros(group.size, bool)
        score = {"in": incoming, "out": outgoing}.get(args.score, incoming)[group.id]
        if args.score == "inout":
            score = incoming[group.id] * outgoing[group.id]
        elif args.score == "replacement":
            score = replacement[group.name]
        mask[np.argsort(-score, kind="stable")[: max(1, math.ceil(args.keep * group.size))]] = True
        keep[group.name] = mask
        members[group.name] = [analysis.origins[o].label for o in group.origins]
    uncompensated = load_model(original_path)
    elimination = EliminateNeuronsPass(keep=keep, samples=samples)(model)

    args.out.mkdir(parents=True, exist_ok=True)
    pruned_path = args.out / "resnet_channels.onnx"
    save_model(model, pruned_path, overwrite=True)
    untuned_error = test_error(pruned_path, test_images, test_labels)
    # The same removal with the removed channels' contribution simply dropped, for comparison.
    with _without_compensation():
        EliminateNeuronsPass(keep=keep)(uncompensated)
    save_model(uncompensated, pruned_path, overwrite=True)
    uncompensated_error = test_error(pruned_path, test_images, test_labels)

    train = slice(0, args.finetune_samples)
    train_inputs = {"input": images[train]}
    teacher = model_forward_logits(ir.to_proto(original), train_inputs)
    tuned = finetune(
        ir.to_proto(model), [w.name for w in find_weights(model) if w.value.dtype == ir.DataType.FLOAT],
        train_inputs, labels[train], teacher_logits=teacher, distill_weight=0.5, temperature=2.0,
        eval_inputs={"input": images[HELD_OUT]}, eval_labels=labels[HELD_OUT],
        config=TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, log=print),
    )  # fmt: skip
    for name, array in tuned.weights.items():
        model.graph.initializers[name].const_value = ir.tensor(array, name=name)
    seconds = time.perf_counter() - started
    pruned_bytes = save_model(model, pruned_path, overwrite=True)

    errors = {p: test_error(p, test_images, test_labels) for p in (original_path, pruned_path)}
    latency = {batch: latencies([original_path, pruned_path], test_images[:batch], args.repeats) for batch in (1, 64)}
    sizes = {name: elimination.sizes[name] for name in keep}
    total, kept = sum(b for b, _ in sizes.values()), sum(a for _, a in sizes.values())
    accuracy = {
        "original": 1 - errors[original_path],
        "pruned_uncompensated": 1 - uncompensated_error,
        "pruned": 1 - untuned_error,
        "pruned_finetuned": 1 - errors[pruned_path],
    }
    drop_points = 100 * (accuracy["original"] - accuracy["pruned_finetuned"])
    summary = {
        "command": command,
        "settings": vars(args) | {"model": str(args.model), "out": str(args.out)},
        "groups": {name: {"layers": members[name], "before": b, "after": a} for name, (b, a) in sizes.items()},
        "blocked": elimination.blocked,
        "channels": [total, kept],
        "removed_fraction": 1 - kept / total,
        "params": [elimination.params_before, elimination.params_after],
        "bytes": [original_path.stat().st_size, pruned_bytes],
        "accuracy": accuracy,
        "accuracy_drop_points": drop_points,
        "latency_ms": {
            str(batch): {"original": 1e3 * times[original_path], "pruned": 1e3 * times[pruned_path],
                         "ratio": times[pruned_path] / times[original_path]}
            for batch, times in latency.items()
        },
        "criterion_met": kept / total <= 0.5 and drop_points <= 0.5,
        "seconds": seconds,
        "layers": elimination.rows,
        "finetune_history": tuned.history,
    }
    (args.out / "resnet_channels.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    text = _markdown(summary)
    (args.out / "resnet_channels.md").write_text(text)
    print(text)
    return summary


@contextlib.contextmanager
def _without_compensation():
    """EliminateNeuronsPass that drops removed channels without folding them into biases."""
    fold = eliminate_neurons.fold_constants
    eliminate_neurons.fold_constants = lambda *args: None
    try:
        yield
    finally:
        eliminate_neurons.fold_constants = fold


def _markdown(summary: dict) -> str:
    total, kept = summary["channels"]
    accuracy, latency = summary["accuracy"], summary["latency_ms"]
    lines = [
        "# Channel elimination on the MNIST ResNet (mean replacement + fine-tuning)",
        "",
        f"Command: `{summary['command']}` (pruning + fine-tuning {summary['seconds']:.0f} s on a shared 2-core CPU).",
        f"Model: {summary['settings']['model']} (`python -m models.resnet_mnist`; BatchNorm folded into the "
        "convolutions at export). Fine-tuned on MNIST train[:N] (labels + distillation from the original), held out "
        "train[55000:]; accuracy on the 10,000 test images.",
        "",
        "| channel group (layers whose outputs share the channels) | before | after |",
        "|---|---|---|",
        *[f"| {', '.join(g['layers'])} | {g['before']} | {g['after']} |" for g in summary["groups"].values()],
        f"| **all prunable channels** | **{total}** | **{kept}** ({100 * (1 - kept / total):.0f}% removed) |",
        "",
        "| | parameters | file bytes | test accuracy | latency batch 1 | latency batch 64 |",
        "|---|---|---|---|---|---|",
        f"| original | {summary['params'][0]:,} | {summary['bytes'][0]:,} | {100 * accuracy['original']:.2f}% | "
        f"{latency['1']['original']:.3f} ms | {latency['64']['original']:.2f} ms |",
        f"| pruned, removed channels dropped (no compensation) | | | {100 * accuracy['pruned_uncompensated']:.2f}% | | |",
        f"| pruned, mean replacement, before fine-tuning | | | {100 * accuracy['pruned']:.2f}% | | |",
        f"| pruned + fine-tuned | {summary['params'][1]:,} | {summary['bytes'][1]:,} | "
        f"{100 * accuracy['pruned_finetuned']:.2f}% | {latency['1']['pruned']:.3f} ms | {latency['64']['pruned']:.2f} ms |",
        f"| ratio pruned / original | {summary['params'][1] / summary['params'][0]:.2f} | "
        f"{summary['bytes'][1] / summary['bytes'][0]:.2f} | {-summary['accuracy_drop_points']:+.2f} points | "
        f"{latency['1']['ratio']:.2f} | {latency['64']['ratio']:.2f} |",
        "",
        "Latency: ONNX Runtime CPU, 1 intra-op thread, original and pruned runs interleaved in the same process, "
        f"median of {summary['settings']['repeats']} runs each.",
        f"Criterion (>= 50% of channels removed, <= 0.5 points accuracy loss) met: "
        f"{'yes' if summary['criterion_met'] else 'NO'}. Blocked groups: "
        + ("; ".join(f"{name}: {reason}" for name, reason in summary["blocked"].items()) or "none") + ".",
        f"Settings: {json.dumps(summary['settings'])}",
        "",
        "Weight shapes after elimination:",
        "",
        "| layer | weight before | weight after |",
        "|---|---|---|",
        *[f"| {row['node']} | {row['before']} | {row['after']} |" for row in summary["layers"]],
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
