"""Fine-tuning benchmark on full MNIST, in the style of the papers' tables.

    python -m bench.finetune [--rows NAME,...|none] [--curve] [--throughput] [--epochs N] [--batch-size B]

Training data: MNIST train[5000:] (55,000 images); held out for epoch selection: a seeded 5,000 of
the training images (--eval-data); reported: error on the 10,000 test images, never seen in
compression. Every row is one `compress_model` call on the shipped float model with a byte
target; bytes are the runnable .onnx file. Published rows are the papers' own numbers with
idealised storage (bits counted, no file format), marked as such.

Writes bench/results/finetune.md and finetune.json (rows merge with earlier runs by name, so
rows can be re-run one at a time), finetune_curve.png with --curve, and the ONNX Runtime vs
PyTorch training throughput on LeNet-5-Caffe with --throughput.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np

from onnxcomp.samples.data import Samples
from onnxcomp.errors import TargetUnreachableError
from onnxcomp.modelfile import file_bytes, load_model
from onnxcomp.pipeline import CompressOptions, compress_model

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"

# name -> (model file, target divisor, method, epochs, labels)
ROWS = {
    "lenet300-64x-nodata": ("lenet300", 64, "none", 0, True),
    "lenet300-64x-prune": ("lenet300", 64, "prune", 40, True),
    "lenet300-64x-auto": ("lenet300", 64, "auto", 64, True),
    "lenet300-100x-auto": ("lenet300", 100, "auto", 64, True),
    "lenet5-162x-nodata": ("lenet5", 162, "none", 0, True),
    "lenet5-162x-auto": ("lenet5", 162, "auto", 32, True),
    "lenet5-100x-distill": ("lenet5", 100, "prune", 20, False),
}
# (model, paper, error, non-zero, ratio, what the ratio's size counts)
HAN_COUNTS = "non-zero weights at their bits, relative indices, codebooks, Huffman-coded; no file format"
PUBLISHED = [
    ("LeNet-300-100", "Han et al. 2015/2016 (prune+quant+Huffman)", "1.64% -> 1.58%", "8%", "40x", HAN_COUNTS),
    ("LeNet-300-100", "Ullrich et al. 2017 (soft weight-sharing)", "1.89% -> 1.94%", "4.3%", "64x",
     "non-zero weights at their bits and relative indices (Han's storage); no file format"),
    ("LeNet-300-100", "Dai et al. 2018 (VIBNet, neurons 97/71/33)", "1.6%", "", "", "neurons only (no size given)"),
    ("LeNet-5-Caffe", "Han et al. 2015/2016", "0.80% -> 0.74%", "8%", "39x", HAN_COUNTS),
    ("LeNet-5-Caffe", "Ullrich et al. 2017", "0.88% -> 0.97%", "0.5%", "162x",
     "non-zero weights at their bits and relative indices (Han's storage); no file format"),
    ("LeNet-5-Caffe", "Louizos et al. 2017 (Bayesian compression, group normal-Jeffreys)", "about 1%", "", "361x",
     "kept weights times their bits only (no indices, no codebooks, no graph)"),
    ("LeNet-5-Caffe", "Louizos et al. 2017 (Bayesian compression, group horseshoe)", "about 1%", "", "419x",
     "kept weights times their bits only (no indices, no codebooks, no graph)"),
]


def mnist_splits(seed: int = 0):
    from models.mnist import load_mnist

    images, labels = load_mnist("train")
    order = np.random.default_rng(seed).permutation(len(images))
    train = Samples({"input": images[order[5000:]]}, labels[order[5000:]])
    held = Samples({"input": images[order[:5000]]}, labels[order[:5000]])
    test = load_mnist("test")
    return train, held, test


def test_error(data: bytes | Path, test) -> float:
    import onnxruntime as ort

    source = data if isinstance(data, bytes) else str(data)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    images, labels = test
    scores = np.concatenate([session.run(None, {"input": images[i : i + 1000]})[0] for i in range(0, len(images), 1000)])
    return float(np.mean(scores.argmax(1) != labels))


@functools.cache
def _commit() -> str | None:
    """HEAD when the benchmark started (first call, in `main`): the code this process runs."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              check=True).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def nonzero_weights(data: bytes) -> int:
    """Non-zero entries of the decoded weight matrices (biases excluded), measured in ONNX Runtime."""
    import onnx_ir as ir
    import onnx

    from onnxcomp.reporting.report import stored_weights

    model = ir.serde.deserialize_model(onnx.load_from_string(data))
    return sum(int(np.count_nonzero(w.array)) for w in stored_weights(model) if w.role != "bias")


def run_row(name: str, splits, out: Path, epochs_override: int | None = None, batch_size: int = 64,
            seed: int = 0) -> dict:
    file, divisor, method, epochs, with_labels = ROWS[name]
    if epochs_override is not None and method != "none":
        epochs = epochs_override
    train, held, test = splits
    source = ROOT / "models" / f"{file}.onnx"
    original = file_bytes(source)
    target = original // divisor
    if method == "none":
        samples = eval_samples = None  # data-free: generated inputs only
    else:
        samples = train if with_labels else Samples(train.inputs, None)
        eval_samples = held if with_labels else Samples(held.inputs, None)
    options = CompressOptions(target_bytes=target, epochs=epochs, method=method if method != "none" else "auto",
                              batch_size=batch_size, seed=seed, force=True)  # measured at every size: no quality floor
    started, cpu = time.perf_counter(), time.process_time()
    try:
        result = compress_model(load_model(source), options, samples=samples, eval_samples=eval_samples,
                                input_bytes=original, progress=lambda line: print(f"  [{name}] {line}", flush=True))
    except TargetUnreachableError as error:
        print(f"  [{name}] unreachable: {error}", flush=True)
        return {"name": name, "model": file, "method": method, "epochs": epochs, "labels": with_labels,
                "original_bytes": original, "target_bytes": target, "unreachable": str(error), "commit": _commit()}
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    (out / f"{name}{'' if seed == 0 else f'-seed{seed}'}.onnx").write_bytes(result.data)
    nonzero = nonzero_weights(result.data)
    row = {
        "name": name, "model": file, "method": method, "epochs": epochs, "labels": with_labels,
        "original_bytes": original, "target_bytes": target, "bytes": len(result.data), "ratio": original / len(result.data),
        "error_original": test_error(source, test), "error_compressed": test_error(result.data, test),
        "nonzero_weights": nonzero, "seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
        "neurons": result.report.neurons, "commit": _commit(), "batch_size": batch_size, "seed": seed,
    }
    row["error_increase_points"] = 100 * (row["error_compressed"] - row["error_original"])
    print(json.dumps({k: v for k, v in row.items() if k != "neurons"}), flush=True)
    return row


def throughput(steps: int = 300, batch: int = 64) -> dict:
    """Training steps/s on LeNet-5-Caffe: ONNX Runtime training backend vs a plain PyTorch loop."""
    import torch

    from models.lenet import LeNet5Caffe
    from onnxcomp.runtime.training import TrainConfig, finetune

    rng = np.random.default_rng(0)
    images = rng.random((steps * batch, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, steps * batch)
    proto_model = load_model(ROOT / "models" / "lenet5.onnx")
    from onnxcomp.modelfile import to_proto

    proto = to_proto(proto_model)
    names = [i.name for i in proto.graph.initializer if len(i.dims) > 1]
    result = finetune(proto, names, {"input": images}, labels, config=TrainConfig(epochs=1, batch_size=batch, lr=1e-3))
    ort_rate = result.history[0]["steps"] / result.history[0]["seconds"]

    net = LeNet5Caffe()
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    started = time.perf_counter()
    for step in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(net(x[step * batch : (step + 1) * batch]), y[step * batch : (step + 1) * batch])
        loss.backward()
        optimizer.step()
    torch_rate = steps / (time.perf_counter() - started)
    return {"steps": steps, "batch": batch, "onnxruntime_steps_per_s": ort_rate, "torch_steps_per_s": torch_rate,
            "ratio_ort_over_torch": ort_rate / torch_rate, "torch_threads": torch.get_num_threads()}


def write_tables(results: dict, out: Path) -> None:
    lines = ["Full MNIST: fine-tuned on 55,000 training images, 5,000 held out for epoch selection, errors on the "
             "10,000 test images. Bytes = the runnable .onnx file. Reproduce: `python -m bench.finetune`.", "",
             "| model | method | epochs | labels | test error orig -> compressed | +pts | non-zero weights | file bytes | ratio | wall / CPU time | commit |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"].values():
        if "unreachable" in row:
            lines.append(f"| {row['model']} | {row['method']}{' (data-free)' if row['method'] == 'none' else ''} | {row['epochs']} | "
                         f"{'yes' if row['labels'] else 'no'} | unreachable: {row['unreachable']} | | | | | | {row.get('commit') or '?'} |")
            continue
        lines.append(
            f"| {row['model']} | {row['method']}{' (data-free)' if row['method'] == 'none' else ''} | {row['epochs']}"
            f"{' (batch ' + str(row['batch_size']) + ')' if row.get('batch_size', 64) != 64 else ''}"
            f"{' (seed ' + str(row['seed']) + ')' if row.get('seed', 0) else ''} | "
            f"{'yes' if row['labels'] else 'no (distillation)'} | {100 * row['error_original']:.2f}% -> {100 * row['error_compressed']:.2f}% | "
            f"{row['error_increase_points']:+.2f} | {row['nonzero_weights']:,} | {row['bytes']:,} B | {row['ratio']:.1f}x | "
            f"{row['seconds']:.0f} s / {row['cpu_seconds']:.0f} s | {row.get('commit') or '?'} |")
        if row.get("neurons"):
            kept = ", ".join(f"{g} {v['kept']}/{v['size']}" for g, v in row["neurons"]["groups"].items())
            lines.append(f"| | (VIB kept: {kept}) | | | | | | | | | |")
    lines += ["", "Published (the papers' numbers, not re-run here; the rows above count every byte of the runnable file):", "",
              "| model | paper | error | non-zero | ratio | the size counts |", "|---|---|---|---|---|---|"]
    lines += [f"| {m} | {p} | {e} | {n} | {r} | {c} |" for m, p, e, n, r, c in PUBLISHED]
    if results.get("throughput"):
        t = results["throughput"]
        lines += ["", f"Training throughput, LeNet-5-Caffe, batch {t['batch']}, {t['steps']} steps, same run: ONNX Runtime "
                      f"{t['onnxruntime_steps_per_s']:.0f} steps/s, PyTorch {t['torch_steps_per_s']:.0f} steps/s "
                      f"(ratio {t['ratio_ort_over_torch']:.2f}, torch threads {t['torch_threads']})."]
    if results.get("curve"):
        lines += ["", "LeNet-300-100 size/accuracy curve: fine-tuned (auto, 40 epochs) vs data-free at the same target:", "",
                  "| target | fine-tuned bytes | fine-tuned test error | data-free bytes | data-free test error |",
                  "|---|---|---|---|---|"]
        lines += [f"| {c['target']:,} B | {c['bytes']:,} B | {100 * c['error']:.2f}% | "
                  f"{c['bytes_data_free']:,} B | {100 * c['error_data_free']:.2f}% |" for c in results["curve"]]
    (out / "finetune.md").write_text("\n".join(lines) + "\n")


def curve(splits, out: Path, epochs: int = 40) -> list[dict]:
    train, held, test = splits
    source = ROOT / "models" / "lenet300.onnx"
    points = []
    for target in (100_000, 50_000, 25_000, 16_700, 12_000, 8_000):
        result = compress_model(load_model(source), CompressOptions(target_bytes=target, epochs=epochs, force=True),
                                samples=train, eval_samples=held)
        data_free = compress_model(load_model(source), CompressOptions(target_bytes=target, force=True))
        points.append({"target": target, "bytes": len(result.data), "error": test_error(result.data, test),
                       "bytes_data_free": len(data_free.data), "error_data_free": test_error(data_free.data, test)})
        print(json.dumps(points[-1]), flush=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot([p["bytes"] / 1000 for p in points], [100 * p["error"] for p in points], "o-", label=f"onnxcomp auto, {epochs} epochs")
    axis.plot([p["bytes_data_free"] / 1000 for p in points], [100 * p["error_data_free"] for p in points], "s--",
              label="onnxcomp data-free")
    axis.set_yscale("log")
    axis.axhline(100 * test_error(source, test), color="gray", linestyle="--", label="original (1,067 KB)")
    axis.set_xscale("log")
    axis.set_xlabel("file size (KB, log)")
    axis.set_ylabel("MNIST test error (%)")
    axis.set_title("LeNet-300-100: size vs error")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "finetune_curve.png", dpi=120)
    return points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", help=f"comma-separated subset of: {', '.join(ROWS)} (default all; 'none' with --curve "
                                       "or --throughput runs only those)")
    parser.add_argument("--curve", action="store_true", help="also the LeNet-300 size/error curve (6 targets)")
    parser.add_argument("--throughput", action="store_true", help="also ONNX Runtime vs PyTorch training throughput")
    parser.add_argument("--epochs", type=int, help="override the rows' epochs")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (shuffling, gates); rows with a seed other "
                                                            "than 0 are kept beside the seed-0 row")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "finetune.json"
    results = json.loads(path.read_text()) if path.exists() else {"rows": {}}
    names = [] if args.rows == "none" else args.rows.split(",") if args.rows else list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        parser.error(f"unknown rows: {', '.join(unknown)}")
    _commit()  # pin the commit of the code this process imported
    splits = mnist_splits()
    for name in names:
        key = name if args.seed == 0 else f"{name}-seed{args.seed}"
        results["rows"][key] = run_row(name, splits, out, args.epochs, args.batch_size, args.seed)
        path.write_text(json.dumps(results, indent=2))
    if args.throughput:
        results["throughput"] = throughput()
        print(json.dumps(results["throughput"]))
    if args.curve:
        results["curve"] = curve(splits, out)
    path.write_text(json.dumps(results, indent=2))
    write_tables(results, out)
    print((out / "finetune.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
