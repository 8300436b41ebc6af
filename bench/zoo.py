"""Real-model zoo: compress models that ship inside pip packages and judge them in their own apps.

    python -m bench.zoo [--models a,b] [--fractions 0.25,0.125] [--no-quantize] [--calibrate 64 [--no-data-free]]

For each model of `bench.zoo_apps.APPS` (installed by `bench/zoo-requirements.txt`): run the
`onnxcomp compress` command line data-free at each fraction of the model's bytes (exit code,
wall time, the child's peak RSS from `os.wait4`), run the package's own application on real
inputs with the original and with the compressed file (placed under the original file name),
and score task agreement. Per-channel int8 weights (`onnxcomp.reporting.int8_reference`) and ONNX
Runtime's `quantize_dynamic` (uint8 weights) on the same model are the comparison rows, and a
control: every weight rounded per channel to 10 bits (1,023 levels, kept as float), a change of
about 0.1% of each channel's range; a weight already stored as 8-bit integers (a quantized model's)
gets the smallest change it can take, every odd code moved one step to an even one. Where the
control already changes the task output, the
application's output sits on a knife edge for those inputs (a text line just above a detection
threshold, a space at a CTC tie), and "identical" there measures luck as much as compression. Every compression and every application run is a child process, so a
native crash is a row of the table, not the end of the benchmark.

With `--calibrate N`, each model is also compressed calibrated, without fine-tuning
(`--data FOLDER --epochs 0`): FOLDER holds up to N feeds recorded while the package's own
application ran on the app's calibration inputs (`ZooApp.calibration_inputs`, disjoint from the
evaluation inputs; `bench.feed_capture`), one .npz per feed. These rows (`"calibrated": true`,
under `compress_calibrated`) are judged exactly as the data-free ones and get a second table.

Writes `bench/results/zoo.json` and `bench/results/zoo.md`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.feed_capture import keep_evenly_spaced, recording_feeds
from bench.zoo_apps import APPS, ZooApp
from onnxcomp.reporting.int8_reference import CONTROL_BITS

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
COMPRESS_TIMEOUT_S = 1800
APP_TIMEOUT_S = 900


@dataclasses.dataclass
class ChildRun:
    """One child process: exit status, wall seconds, peak RSS and its last error line."""

    returncode: int
    seconds: float
    peak_rss_bytes: int
    error: str = ""


def run_child(command: list[str], log_path: Path, timeout_s: float) -> ChildRun:
    """Run `command` with output to `log_path`; peak RSS of the child and the children it waited
    for, from `os.wait4` (so concurrent children of this process do not count)."""
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    timer = threading.Timer(timeout_s, lambda: os.killpg(process.pid, signal.SIGKILL))
    timer.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    text = log_path.read_text(errors="replace")
    return ChildRun(process.returncode, seconds, usage.ru_maxrss * 1024, error_line(text, process.returncode, seconds >= timeout_s))


def error_line(log: str, returncode: int, timed_out: bool = False) -> str:
    """The line a user would read as the reason for a failure: onnxcomp's `error:` line, else the
    last line of the output (a traceback's exception), else the signal."""
    if returncode == 0:
        return ""
    if timed_out:
        return "timed out"
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if "error:" in line:
            return line
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}" + (f" after: {lines[-1]}" if lines else "")
    return lines[-1] if lines else f"exit {returncode}, no output"


def onnxcomp_command() -> list[str]:
    """The `onnxcomp` command of this interpreter's environment."""
    script = Path(sys.executable).parent / "onnxcomp"
    return [str(script)] if script.exists() else [sys.executable, "-c", "import sys; from onnxcomp.cli import main; sys.exit(main())"]


def evaluate(app: ZooApp, model: Path, work: Path, tag: str) -> tuple[list[Any] | None, str]:
    """Run the app on `model` (placed under the original file name) in a child process."""
    out_json = work / f"{app.name}.{tag}.outputs.json"
    run = run_child(
        [sys.executable, "-m", "bench.zoo", "--eval", app.name, str(model), str(out_json)],
        work / f"{app.name}.{tag}.app.log",
        APP_TIMEOUT_S,
    )
    if run.returncode != 0 or not out_json.exists():
        return None, run.error or "application produced no output"
    return json.loads(out_json.read_text()), ""


def capture_feeds(app: ZooApp, work: Path, limit: int) -> dict[str, Any]:
    """Record up to `limit` feeds of the app's own code on its calibration inputs, in a child
    process, into `work/NAME.feeds/`; returns what was recorded (`folder` set when any was)."""
    folder = work / f"{app.name}.feeds"
    summary_json = work / f"{app.name}.feeds.json"
    run = run_child([sys.executable, "-m", "bench.zoo", "--capture", app.name, str(folder), str(limit), str(summary_json)],
                    work / f"{app.name}.capture.log", APP_TIMEOUT_S)
    info: dict[str, Any] = {"exit_code": run.returncode, "seconds": round(run.seconds, 1), "error": run.error}
    if run.returncode == 0 and summary_json.exists():
        info |= json.loads(summary_json.read_text())
        if info["feeds"]:
            info["folder"] = str(folder)
    return info


def compress(app: ZooApp, fraction: float, work: Path, data: Path | None = None, repeat: int = 1) -> dict[str, Any]:
    """Compress to `fraction` of the model's bytes: data-free, or calibrated on the feed folder
    `data` without fine-tuning. With `repeat` > 1 the same compression runs that many times:
    seconds is their median, peak RSS their largest, and `same_bytes` whether every run wrote the
    same file."""
    original = app.model_path()
    target = int(original.stat().st_size * fraction)
    tag = f"{fraction:g}" + (".calibrated" if data else "")
    output = work / f"{app.name}.{tag}.onnx"
    command = onnxcomp_command() + ["compress", str(original), "--target-size", f"{target}B", "-o", str(output), "--force",
                                     "--allow-low-fidelity"]  # the table measures every fraction, low quality included
    if data is not None:
        command += ["--data", str(data), "--epochs", "0"]
    runs, digests = [], set()
    for _ in range(max(repeat, 1)):
        run = run_child(command, work / f"{app.name}.{tag}.compress.log", COMPRESS_TIMEOUT_S)
        runs.append(run)
        if run.returncode != 0:
            break
        digests.add(hashlib.sha256(output.read_bytes()).hexdigest() if output.exists() else None)
    row: dict[str, Any] = {
        "fraction": fraction,
        "target_bytes": target,
        "exit_code": run.returncode,
        "seconds": round(statistics.median(r.seconds for r in runs), 1),
        "peak_rss_bytes": max(r.peak_rss_bytes for r in runs),
        "error": run.error,
        "bytes": output.stat().st_size if run.returncode == 0 and output.exists() else None,
    }
    if repeat > 1:
        row["seconds_runs"] = [round(r.seconds, 1) for r in runs]
        row["same_bytes"] = len(digests) == 1
    if data is not None:
        row["calibrated"] = True
    if row["bytes"] is not None:
        row["model"] = str(output)
    return row


def reference_row(app: ZooApp, work: Path, kind: str) -> dict[str, Any]:
    """A comparison row made in a child process: `kind` is "quantize_dynamic" (ONNX Runtime's
    uint8 weights), "int8" (per-channel symmetric int8 weights, `onnxcomp.reporting.int8_reference`)
    or "control" (weights rounded per channel to CONTROL_BITS, stored as float)."""
    output = work / f"{app.name}.{kind}.onnx"
    run = run_child(
        [sys.executable, "-m", "bench.zoo", f"--{kind.replace('_', '-')}", str(app.model_path()), str(output)],
        work / f"{app.name}.{kind}.log",
        COMPRESS_TIMEOUT_S,
    )
    row: dict[str, Any] = {"exit_code": run.returncode, "seconds": round(run.seconds, 1), "error": run.error}
    row["bytes"] = output.stat().st_size if run.returncode == 0 and output.exists() else None
    if row["bytes"] is not None:
        row["model"] = str(output)
    return row


def judge(app: ZooApp, row: dict[str, Any], reference: list[Any] | None, work: Path, tag: str) -> None:
    """Add the task agreement of the row's model to the row."""
    if reference is None or row.get("bytes") is None:
        return
    outputs, error = evaluate(app, Path(row["model"]), work, tag)
    if outputs is None:
        row["app_error"] = error
        restored = _with_original_metadata(app, Path(row["model"]))
        if restored is None:
            return
        # Diagnostic: does the compressed graph itself keep the task, once its metadata is back?
        outputs, _ = evaluate(app, restored, work, f"{tag}.metadata_restored")
        if outputs is None:
            return
        row["metadata_restored"] = True
    agreement = app.compare(reference, outputs)
    row["agreement"] = dataclasses.asdict(agreement) | {"score": agreement.score}


def _with_original_metadata(app: ZooApp, model: Path) -> Path | None:
    """A copy of `model` with the original's metadata_props, when it lost some; else None."""
    import onnx

    original = {p.key: p.value for p in onnx.load(str(app.model_path()), load_external_data=False).metadata_props}
    candidate = onnx.load(str(model), load_external_data=False)
    if not original or {p.key: p.value for p in candidate.metadata_props} == original:
        return None
    onnx.helper.set_model_props(candidate, original)
    restored = model.with_name(model.stem + ".metadata_restored.onnx")
    onnx.save(candidate, str(restored))
    return restored


def bench_model(app: ZooApp, fractions: list[float], work: Path, with_quantize: bool, calibrate: int = 0,
                data_free: bool = True, repeat: int = 1) -> dict[str, Any]:
    original = app.model_path()
    logger.info("%s: %s (%d bytes)", app.name, original, original.stat().st_size)
    result: dict[str, Any] = {
        "model": app.name,
        "package": app.package,
        "version": _version(app.package),
        "file": str(original.relative_to(original.parents[len(app.model_file.split("/"))])),
        "exporter": app.exporter,
        "features": list(app.features),
        "metric": app.metric,
        "light": app.light,
        "bytes": original.stat().st_size,
    }
    reference, error = evaluate(app, original, work, "original")
    result["app_error"] = error
    result["compress"] = []
    for fraction in fractions if data_free else ():
        row = compress(app, fraction, work, repeat=repeat)
        judge(app, row, reference, work, f"{fraction:g}")
        logger.info("%s at %g: %s", app.name, fraction, {k: v for k, v in row.items() if k != "model"})
        result["compress"].append(row)
    if calibrate:
        result["calibration"] = capture_feeds(app, work, calibrate)
        logger.info("%s calibration feeds: %s", app.name, result["calibration"])
        result["compress_calibrated"] = []
        folder = result["calibration"].get("folder")
        for fraction in fractions if folder else ():
            row = compress(app, fraction, work, Path(folder), repeat=repeat)
            judge(app, row, reference, work, f"{fraction:g}.calibrated")
            logger.info("%s at %g calibrated: %s", app.name, fraction, {k: v for k, v in row.items() if k != "model"})
            result["compress_calibrated"].append(row)
    for kind in ("int8", "quantize_dynamic", "control") if with_quantize else ():
        row = reference_row(app, work, kind)
        judge(app, row, reference, work, kind)
        logger.info("%s %s: %s", app.name, kind, {k: v for k, v in row.items() if k != "model"})
        result[kind] = row
    return result


def _version(distribution: str) -> str:
    from importlib.metadata import version

    return version(distribution)


def _cell(row: dict[str, Any] | None, original_bytes: int) -> str:
    if row is None:
        return "-"
    if row.get("bytes") is None:
        return f"FAIL (exit {row['exit_code']}): {_shorten(row['error'])}".replace("|", "\\|")
    ratio = original_bytes / row["bytes"]
    text = f"{row['bytes']:,} B ({ratio:.1f}x)"
    if "app_error" in row:
        text += f", app fails: {row['app_error'][:100]}"
        if row.get("metadata_restored"):
            text += "; with the original metadata put back"
    if "agreement" in row:
        a = row["agreement"]
        text += f", {'identical' if a['identical'] else 'differs'} {a['matched']}/{a['total']}"
        if not a["identical"] and a["detail"]:
            text += f" ({a['detail'][:80]})"
    return text.replace("|", "\\|").replace("\n", " ")


def _control_cell(row: dict[str, Any] | None) -> str:
    """The control's agreement alone (its bytes are the float model's)."""
    if row is None:
        return "-"
    if "agreement" not in row:
        return f"FAIL (exit {row['exit_code']}): {_shorten(row.get('error') or row.get('app_error') or '')}".replace("|", "\\|")
    a = row["agreement"]
    text = f"{'identical' if a['identical'] else 'differs'} {a['matched']}/{a['total']}"
    if not a["identical"] and a["detail"]:
        text += f" ({a['detail'][:80]})"
    return text.replace("|", "\\|").replace("\n", " ")


def _shorten(text: str, head: int = 70, tail: int = 130) -> str:
    """Long ONNX Runtime messages keep their start and their cause (the end)."""
    return text if len(text) <= head + tail + 5 else f"{text[:head]} ... {text[-tail:]}"


def _fraction_name(fraction: float) -> str:
    """0.25 -> '1/4', 0.1667 -> '1/6'."""
    inverse = 1 / fraction
    return f"1/{round(inverse)}" if abs(inverse - round(inverse)) < 0.02 else f"{fraction:g}"


def write_markdown(results: list[dict[str, Any]], path: Path, command: str, revision: str | None = None, notes: str = "") -> None:
    """The results table: one column per fraction measured on any model (largest first)."""
    fractions = sorted({row["fraction"] for r in results for row in r["compress"]}, reverse=True) or [0.25, 0.125]
    lines = [
        "# Real-model zoo: shipped models, compressed data-free, judged in their own applications",
        "",
        f"`{command}` on {platform.machine()} ({os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}, "
        f"onnxcomp at `{revision or git_head()}`. Agreement = task outputs of the package's own pre- and "
        "post-processing on real inputs (shipped in packages), compressed vs original; 'identical' "
        "means every input gave the same output. Per-channel int8 = symmetric int8 weights with one scale per "
        "output channel (`onnxcomp.reporting.int8_reference`, decoded by Cast and Mul); quantize_dynamic = "
        "onnxruntime.quantization, uint8 weights. 10-bit control = every weight per-channel int8 quantizes rounded "
        f"per channel to {CONTROL_BITS} bits and kept as float, and every 8-bit integer weight of an already-quantized "
        "model moved to the even code nearest it (one step; `onnxcomp.reporting.int8_reference.rounded_model`): "
        "where it already changes the task output, that output sits on a knife edge for these inputs.",
        *(["", notes] if notes else []),
        "",
        "| model | package | exporter | features | bytes | metric | " + " | ".join(_fraction_name(f) for f in fractions)
        + f" | per-channel int8 | quantize_dynamic | {CONTROL_BITS}-bit control | peak RSS ({', '.join(map(_fraction_name, fractions))}) | time ({', '.join(map(_fraction_name, fractions))}) |",
        "|---|---|---|---|---|---|" + "---|" * len(fractions) + "---|---|---|---|---|",
    ]
    for r in results:
        rows = {row["fraction"]: row for row in r["compress"]}
        measured = [rows.get(f) for f in fractions]
        rss = ", ".join(f"{row['peak_rss_bytes'] / 2**20:,.0f} MB" if row else "-" for row in measured)
        secs = ", ".join(_seconds_cell(row) for row in measured)
        app_note = f" (app fails on the original: {r['app_error'][:80]})" if r.get("app_error") else ""
        # A row measured at another onnxcomp revision than the header's says so.
        revision_note = f" (onnxcomp `{r['revision']}`)" if r.get("revision") else ""
        lines.append(
            f"| {r['model']}{' (CI)' if r['light'] else ''}{revision_note} | {r['package']} {r['version']} | {r['exporter']} | "
            f"{'; '.join(r['features'])} | {r['bytes']:,} | {r['metric']}{app_note} | "
            + " | ".join(_cell(row, r['bytes']) for row in measured)
            + f" | {_cell(r.get('int8'), r['bytes'])} | {_cell(r.get('quantize_dynamic'), r['bytes'])} | {_control_cell(r.get('control'))}"
            f" | {rss} | {secs} |"
        )
    moved = [r["model"] for r in results if not (r.get("control") or {}).get("agreement", {}).get("identical", True)]
    if moved:
        lines += ["", f"The {CONTROL_BITS}-bit control changes the task output of {len(moved)} of {len(results)} models "
                  f"({', '.join(moved)}): on these inputs their 'identical' cells measure chance as much as compression."]
    lines += _calibrated_table(results)
    path.write_text("\n".join(lines) + "\n")


def _calibrated_table(results: list[dict[str, Any]]) -> list[str]:
    """The calibrated rows' table and the share of models with identical outputs per fraction
    and mode; empty when no model was calibrated."""
    calibrated = [r for r in results if "calibration" in r]
    if not calibrated:
        return []
    fractions = sorted({row["fraction"] for r in calibrated for row in r["compress_calibrated"]}, reverse=True)
    columns = ", ".join(map(_fraction_name, fractions))
    lines = [
        "",
        "## Calibrated, no fine-tuning",
        "",
        "`onnxcomp compress --data FEEDS --epochs 0`: FEEDS = the feeds the package's own application passed to the "
        "model on calibration inputs disjoint from the evaluation inputs (recorded by wrapping "
        "`InferenceSession.run`, evenly spaced over the calls when there were more), one .npz per feed. Judged as above.",
        "",
        "| model | calibration inputs | feeds (of calls) | " + " | ".join(f"{_fraction_name(f)} calibrated" for f in fractions)
        + f" | peak RSS ({columns}) | time ({columns}) |",
        "|---|---|---|" + "---|" * len(fractions) + "---|---|",
    ]
    for r in calibrated:
        info = r["calibration"]
        rows = {row["fraction"]: row for row in r["compress_calibrated"]}
        measured = [rows.get(f) for f in fractions]
        feeds = f"{info['feeds']} (of {info['recorded']})" if "feeds" in info else f"capture fails: {_shorten(info.get('error', ''))}"
        names_in = info.get("inputs", [])
        inputs = f"{len(names_in)} files: {', '.join(names_in[:4])}{', ...' if len(names_in) > 4 else ''}"
        rss = ", ".join(f"{row['peak_rss_bytes'] / 2**20:,.0f} MB" if row else "-" for row in measured)
        secs = ", ".join(_seconds_cell(row) for row in measured)
        lines.append(f"| {r['model']} | {inputs} | {feeds} | " + " | ".join(_cell(row, r["bytes"]) for row in measured) + f" | {rss} | {secs} |")
    lines += ["", "Models with identical task outputs, and mean agreement (a failed compression counts 0), of the models above:", ""]
    for fraction in fractions:
        for label, key in (("data-free", "compress"), ("calibrated", "compress_calibrated")):
            rows = [row for r in calibrated for row in r.get(key, []) if row["fraction"] == fraction]
            if rows:
                scores = [row["agreement"]["score"] if "agreement" in row else 0.0 for row in rows]
                identical = sum(bool(row.get("agreement", {}).get("identical")) for row in rows)
                lines.append(f"- {_fraction_name(fraction)} {label}: {identical}/{len(rows)} identical, mean agreement {sum(scores) / len(scores):.3f}")
    return lines


def _seconds_cell(row: dict[str, Any] | None) -> str:
    if not row:
        return "-"
    return f"{row['seconds']:.0f} s" + (" (runs wrote different bytes)" if row.get("same_bytes") is False else "")


def write_results(results: list[dict[str, Any]], folder: Path, command: str, revision: str | None = None, notes: str = "",
                  stem: str = "zoo") -> None:
    """`<stem>.json` (without the temporary model paths) and `<stem>.md` in `folder`."""
    public = json.loads(json.dumps(results))
    for result in public:
        for row in [*result["compress"], *result.get("compress_calibrated", []),
                    *(result.get(kind) or {} for kind in ("int8", "quantize_dynamic", "control"))]:
            row.pop("model", None)
        (result.get("calibration") or {}).pop("folder", None)
    (folder / f"{stem}.json").write_text(json.dumps(public, indent=1) + "\n")
    write_markdown(public, folder / f"{stem}.md", command, revision, notes)


def git_head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _child_eval(name: str, model: str, out_json: str) -> None:
    app = APPS[name]
    with app.placed(Path(model)) as placed:
        outputs = app.run(placed)
    Path(out_json).write_text(json.dumps(outputs))


def _child_capture(name: str, folder: str, limit: str, summary_json: str) -> None:
    """Run the app on its calibration inputs with the shipped model, recording its feeds."""
    app = APPS[name]
    inputs = app.calibration_inputs()
    shared = {p.resolve() for p in inputs} & {p.resolve() for p in app.inputs()}
    if shared:
        raise ValueError(f"{name}: calibration inputs also evaluate: {sorted(map(str, shared))}")
    with app.placed(app.model_path()) as placed, recording_feeds(placed, Path(folder)) as recorder:
        app.run(placed, inputs)
    kept = keep_evenly_spaced(Path(folder), int(limit))
    Path(summary_json).write_text(json.dumps({
        "inputs": [p.name for p in inputs],
        "recorded": recorder.recorded,
        "feeds": len(kept),
        "feed_bytes": sum(p.stat().st_size for p in kept),
    }))


def _child_quantize(model: str, output: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(model, output, weight_type=QuantType.QUInt8)


def _child_int8(model: str, output: str) -> None:
    import onnx_ir as ir

    from onnxcomp.reporting.int8_reference import int8_model

    ir.save(int8_model(ir.load(model)), output)


def _child_control(model: str, output: str) -> None:
    import onnx_ir as ir

    from onnxcomp.reporting.int8_reference import rounded_model

    ir.save(rounded_model(ir.load(model), CONTROL_BITS), output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(APPS), help="comma-separated names (default: all)")
    parser.add_argument("--fractions", default="0.25,0.125")
    parser.add_argument("--no-quantize", action="store_true",
                        help="skip the comparison rows (per-channel int8, quantize_dynamic, the 10-bit control)")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep compressed models and logs here")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--calibrate", type=int, default=0, metavar="N",
                        help="also compress calibrated (--data, no fine-tuning) on up to N feeds the app passes the model on its calibration inputs")
    parser.add_argument("--no-data-free", action="store_true", help="with --calibrate: only the calibrated rows")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run each compression N times: the time column is the median, peak RSS the largest; "
                             "writes zoo_median<N>.md and .json")
    parser.add_argument("--capture", nargs=4, metavar=("NAME", "FOLDER", "N", "SUMMARY_JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--eval", nargs=3, metavar=("NAME", "MODEL", "OUT_JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--quantize-dynamic", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--int8", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--control", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.eval:
        _child_eval(*args.eval)
        return 0
    if args.capture:
        _child_capture(*args.capture)
        return 0
    if args.quantize_dynamic:
        _child_quantize(*args.quantize_dynamic)
        return 0
    if args.int8:
        _child_int8(*args.int8)
        return 0
    if args.control:
        _child_control(*args.control)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in APPS]
    if unknown:
        parser.error(f"unknown models {unknown}; known: {', '.join(APPS)}")
    fractions = [float(f) for f in args.fractions.split(",")]
    command = "python -m bench.zoo" + ("" if args.models == ",".join(APPS) else f" --models {args.models}") \
        + ("" if args.fractions == parser.get_default("fractions") else f" --fractions {args.fractions}") \
        + (f" --calibrate {args.calibrate}" if args.calibrate else "") + (" --no-data-free" if args.no_data_free else "") \
        + (" --no-quantize" if args.no_quantize else "") + (f" --repeat {args.repeat}" if args.repeat > 1 else "")
    stem = "zoo" if args.repeat <= 1 else f"zoo_median{args.repeat}"
    notes = "" if args.repeat <= 1 else (
        f"Each compression ran {args.repeat} times one after another: time is the median of the runs, peak RSS the "
        "largest, and every run wrote the same bytes unless a cell says otherwise.")
    args.results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zoo-") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results: list[dict[str, Any]] = []
        for name in names:
            results.append(bench_model(APPS[name], fractions, work, not args.no_quantize, args.calibrate, not args.no_data_free,
                                       args.repeat))
            write_results(results, args.results, command, notes=notes, stem=stem)  # after each model: a long run keeps what it measured
    print((args.results / f"{stem}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
