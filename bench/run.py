"""Foundation benchmark: sizes, MNIST accuracy and ONNX Runtime cost of compressed LeNets.

    python -m bench.run [--out bench/results] [--repeats 200] [--models LeNet-300-100,...] [--no-curve]

Writes bench/results/foundation.md (tables), foundation.json and lenet300_curve.png. Latency and
session-creation times of original and compressed models are measured side by side in one run,
interleaved, and reported as ratios (machines here are noisy; absolute times are not compared).
Session creation is measured twice: sessions created again and again in one process, and the
first session of a fresh process (what an application pays once at start).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from models.demo import test_set
from onnxcomp.samples.data import load_samples
from onnxcomp.modelfile import load_model
from onnxcomp.pipeline import CompressOptions, compress_file

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"LeNet-300-100": ("lenet300.onnx", 12), "LeNet-5-Caffe": ("lenet5.onnx", 10)}
CALIBRATION = ROOT / "models" / "data" / "mnist_train_2k.npz"


def accuracy(path: Path, images: np.ndarray, labels: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    scores = np.concatenate([session.run(None, {"input": images[i : i + 1000]})[0] for i in range(0, len(images), 1000)])
    return float(np.mean(scores.argmax(1) == labels))


def timings(paths: list[Path], batch: np.ndarray, repeats: int, rounds: int = 21) -> dict[str, dict[str, float]]:
    """Session-creation and inference time per model, interleaved round-robin.

    Every model is loaded once untimed first (file cache, allocator warm-up); each timed session
    is kept alive until its clock has stopped (freeing the previous one is not counted) and the
    garbage collector is off while timing. Session creation is reported as the median CPU time
    of this thread (ONNX Runtime builds a 1-thread session, folding included, in the calling
    thread) and, for reference, the median and minimum wall time: on a shared machine a process
    is often preempted for several milliseconds, which lands at random in millisecond-long
    measurements and makes wall-time medians of small models noise. Inference: median wall time.
    """
    import gc

    import onnxruntime as ort

    def make(path: Path):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    create = {p: [] for p in paths}
    create_cpu = {p: [] for p in paths}
    infer = {p: [] for p in paths}
    for path in paths:
        make(path)
    gc.disable()
    try:
        for _ in range(rounds):
            for path in paths:
                start, start_cpu = time.perf_counter(), time.thread_time()
                created = make(path)
                create_cpu[path].append(time.thread_time() - start_cpu)
                create[path].append(time.perf_counter() - start)
                del created
        sessions = {p: make(p) for p in paths} if repeats else {}
        for _ in range(repeats):
            for path in paths:
                start = time.perf_counter()
                sessions[path].run(None, {"input": batch})
                infer[path].append(time.perf_counter() - start)
    finally:
        gc.enable()
    return {str(p): {"create_cpu_s": statistics.median(create_cpu[p]), "create_s": statistics.median(create[p]),
                     "create_min_s": min(create[p]), "infer_s": statistics.median(infer[p]) if infer[p] else None} for p in paths}


FIRST_SESSION = r"""
import sys, time
import onnxruntime as ort
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
start = time.thread_time()
session = ort.InferenceSession(sys.argv[1], options, providers=["CPUExecutionProvider"])
print(time.thread_time() - start)
"""


def first_session_times(paths: list[Path], rounds: int = 15) -> dict[str, float]:
    """Median CPU time of creating the first session in a fresh process (what an application pays
    once at start), per model, interleaved round-robin; each process imports onnxruntime untimed."""
    import subprocess

    times = {str(p): [] for p in paths}
    for _ in range(rounds):
        for path in paths:
            done = subprocess.run([sys.executable, "-c", FIRST_SESSION, str(path)], capture_output=True, text=True, check=True)
            times[str(path)].append(float(done.stdout.strip().splitlines()[-1]))
    return {p: statistics.median(t) for p, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated rows to run (default: all)")
    parser.add_argument("--no-curve", action="store_true", help="skip the LeNet-300-100 size/accuracy curve")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels, test_name = test_set()
    rows = []
    for name, (file, ratio) in MODELS.items():
        if name not in args.models.split(","):
            continue
        source = ROOT / "models" / file
        target = source.stat().st_size // ratio
        base = accuracy(source, images, labels)
        for mode in ("calibrated", "no data"):
            output = out / f"{source.stem}.{ratio}x.{mode.replace(' ', '')}.onnx"
            samples = load_samples(CALIBRATION, load_model(source)) if mode == "calibrated" else None
            started = time.perf_counter()
            report = compress_file(source, output, CompressOptions(target_bytes=target, force=True), samples=samples, overwrite=True)
            seconds = time.perf_counter() - started
            compressed = accuracy(output, images, labels)
            cost = timings([source, output], images[:64], args.repeats)
            first = first_session_times([source, output])
            rows.append({
                "model": name, "mode": mode, "input_bytes": report.input_bytes, "target_bytes": target,
                "output_bytes": report.output_bytes, "ratio": report.input_bytes / report.output_bytes,
                "accuracy_original": base, "accuracy_compressed": compressed, "drop_points": 100 * (base - compressed),
                "latency_ratio": cost[str(output)]["infer_s"] / cost[str(source)]["infer_s"],
                "session_ratio": cost[str(output)]["create_cpu_s"] / cost[str(source)]["create_cpu_s"],
                "session_ms": {kind: {"cpu": round(1e3 * cost[str(path)]["create_cpu_s"], 2),
                                      "wall": round(1e3 * cost[str(path)]["create_s"], 2),
                                      "wall_min": round(1e3 * cost[str(path)]["create_min_s"], 2)}
                               for kind, path in (("original", source), ("compressed", output))},
                "first_session_ratio": first[str(output)] / first[str(source)],
                "first_session_ms": {"original": round(1e3 * first[str(source)], 2), "compressed": round(1e3 * first[str(output)], 2)},
                "session_ratio_wall": cost[str(output)]["create_s"] / cost[str(source)]["create_s"],
                "session_ratio_wall_min": cost[str(output)]["create_min_s"] / cost[str(source)]["create_min_s"],
                "compress_seconds": round(seconds, 2),
            })
            print(json.dumps(rows[-1]), flush=True)
    curve = []
    source = ROOT / "models" / "lenet300.onnx"
    for ratio in () if args.no_curve else (4, 8, 12, 16, 20, 24, 28):
        output = out / f"lenet300.curve.{ratio}x.onnx"
        report = compress_file(source, output, CompressOptions(target_bytes=source.stat().st_size // ratio, force=True),
                               samples=load_samples(CALIBRATION, load_model(source)), overwrite=True)
        curve.append({"bytes": report.output_bytes, "accuracy": accuracy(output, images, labels)})
        output.unlink()
    (out / "foundation.json").write_text(json.dumps({"test_set": test_name, "rows": rows, "lenet300_curve": curve}, indent=2))
    lines = [f"Accuracy on the {test_name}. Calibrated = 2,000 training images as `--data` (no training); "
             "no data = generated inputs only. Latency/session ratios: compressed / original, same run, interleaved, 1 thread; "
             "session creation: median of 21 sessions created again and again in one process (CPU time of the creating thread; wall-time median and minimum for reference), "
             "and median of 15 first sessions, each in a fresh process (CPU time; what an application pays once at start). See bench/run.py.", "",
             "| model | mode | original | target | compressed file | ratio | accuracy orig -> compressed | drop (pts) | latency ratio | session-creation ratio, repeated, CPU time (ms orig / compressed) | session-creation ratio, repeated, wall median / min | first-session ratio, fresh process, CPU time (ms orig / compressed) | compress time |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['mode']} | {r['input_bytes']:,} B | {r['target_bytes']:,} B | {r['output_bytes']:,} B | {r['ratio']:.1f}x | "
                     f"{100 * r['accuracy_original']:.2f}% -> {100 * r['accuracy_compressed']:.2f}% | {r['drop_points']:.2f} | "
                     f"{r['latency_ratio']:.2f} | {r['session_ratio']:.2f} ({r['session_ms']['original']['cpu']:.1f} / {r['session_ms']['compressed']['cpu']:.1f} ms) | "
                     f"{r['session_ratio_wall']:.2f} / {r['session_ratio_wall_min']:.2f} | "
                     f"{r['first_session_ratio']:.2f} ({r['first_session_ms']['original']:.1f} / {r['first_session_ms']['compressed']:.1f} ms) | {r['compress_seconds']:.1f} s |")
    lines += ["", "LeNet-300-100 size/accuracy curve (calibrated):", "", "| bytes | accuracy |", "|---|---|"]
    lines += [f"| {c['bytes']:,} | {100 * c['accuracy']:.2f}% |" for c in curve]
    (out / "foundation.md").write_text("\n".join(lines) + "\n")
    try:
        if not curve or not any(r["model"] == "LeNet-300-100" for r in rows):
            raise ImportError("no curve to plot")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 4))
        axis.plot([c["bytes"] / 1000 for c in curve], [100 * c["accuracy"] for c in curve], "o-", label="onnxcomp (calibrated, no training)")
        original = next(r for r in rows if r["model"] == "LeNet-300-100")
        axis.axhline(100 * original["accuracy_original"], color="gray", linestyle="--", label=f"original ({original['input_bytes'] / 1000:.0f} KB)")
        axis.set_xscale("log")
        axis.set_xlabel("file size (KB, log)")
        axis.set_ylabel("MNIST test accuracy (%)")
        axis.set_title("LeNet-300-100: size vs accuracy")
        axis.legend()
        figure.tight_layout()
        figure.savefig(out / "lenet300_curve.png", dpi=120)
    except ImportError as error:
        print(f"no plot: {error}", file=sys.stderr)
    print((out / "foundation.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
