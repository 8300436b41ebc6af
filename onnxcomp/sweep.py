"""Size-quality sweeps: compress one model to several targets in parallel processes.

The unit of work is `compress_target`, a pure function of (input path, target bytes, output
path, options) that writes one file and returns a JSON-able result dict. `run_sweep` maps it
over the targets with `onnxcomp.executors.map_unordered`: local spawned processes by default, or
Ray tasks on a cluster (`--executor ray`), as long as the paths are on storage every worker sees.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import resource
import time
from collections.abc import Callable
from pathlib import Path

from onnxcomp import modelfile
from onnxcomp.errors import OnnxcompError, TargetUnreachableError
from onnxcomp.executors import map_unordered, require_ray
from onnxcomp.outputs import Output, check_new_folder, check_outputs, input_files, make_folder
from onnxcomp.progress import task as live_task
from onnxcomp.reporting.compression_report import CompressionReport
from onnxcomp.reporting.report import GENERATED_INPUTS_NOTE, GENERATED_INPUTS_TAG
from onnxcomp.sizes import format_size, parse_target

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SweepOptions:
    """Options shared by every target of a sweep (a subset of `compress`'s)."""

    data: str | None = None  # .npz samples (labels optional), loaded by each worker
    sensitivity: bool = True
    seed: int = 0
    keep_metadata: bool = False
    overwrite: bool = False
    input_shapes: dict = dataclasses.field(default_factory=dict)  # --input-shape: {name: dims}
    input_values: dict = dataclasses.field(default_factory=dict)  # --input-value: {name: array}


def parse_targets(text: str, input_path: str | Path | None = None) -> list[tuple[str, int]]:
    """'1MB,500KB,200KB' -> [(label, bytes), ...], largest first, duplicates (by bytes) dropped.
    Relative targets ('1/8', '12.5%', '8x') are parts of the bytes of the model at `input_path`."""
    targets: dict[int, str] = {}
    input_bytes = functools.cache(lambda: _input_bytes(input_path))  # read once, and only for a relative target
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        size = parse_target(item, input_bytes)
        safe = item.replace(" ", "").replace("/", "-").replace("%", "pct")  # labels name the output files
        label = safe if re.fullmatch(r"[0-9A-Za-z.-]+", safe) else f"{size}B"
        targets.setdefault(size, label)
    if not targets:
        raise OnnxcompError("--targets needs at least one size, e.g. --targets 1MB,500KB,200KB")
    return sorted(((label, size) for size, label in targets.items()), key=lambda target: -target[1])


def _input_bytes(input_path: str | Path | None) -> int:
    if input_path is None:
        raise OnnxcompError("a relative target (1/8, 12.5%, 8x) needs the input model")
    return modelfile.file_bytes(input_path)


def compress_target(input_path: str, target_bytes: int, output_path: str, options: SweepOptions) -> dict:
    """Compress `input_path` to at most `target_bytes` into `output_path`; never raises for a
    target that cannot be met or a model that fails - the result's ``status`` says so."""
    from onnxcomp.samples.data import load_samples
    from onnxcomp.pipeline import CompressOptions, compress_file

    started, cpu_started = time.perf_counter(), _cpu_seconds()
    result: dict = {"target_bytes": target_bytes, "output": output_path, "pid": os.getpid()}
    try:
        samples = load_samples(options.data, modelfile.load_model(input_path), options.input_values) if options.data else None
        compress_options = CompressOptions(target_bytes=target_bytes, keep_metadata=options.keep_metadata,
                                           sensitivity=options.sensitivity, seed=options.seed,
                                           input_shapes=options.input_shapes, input_values=options.input_values,
                                           force=True)  # a curve shows its low-quality points; no quality floor
        result["report"] = compress_file(input_path, output_path, compress_options, samples=samples,
                                         overwrite=options.overwrite).to_dict()  # JSON: back from a worker, into sweep.json
        result["status"] = "ok"
    except TargetUnreachableError as error:
        result.update(status="unreachable", smallest_bytes=error.smallest_bytes, message=str(error))
    except Exception as error:  # one failing target must not end the sweep
        result.update(status="error", message=f"{type(error).__name__}: {error}")
    result["seconds"] = round(time.perf_counter() - started, 3)
    result["cpu_seconds"] = round(_cpu_seconds() - cpu_started, 3)
    return result


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def report_of(result: dict) -> CompressionReport:
    """The compression report of a reached target's result."""
    return CompressionReport.from_dict(result["report"])


def quality(report: CompressionReport) -> tuple[str, float | None, float | None]:
    """(metric name, original value, compressed value): accuracy with labels, else fidelity."""
    if report.accuracy is not None:
        return "accuracy", report.accuracy["original"], report.accuracy["compressed"]
    fid = report.fidelity
    if fid.get("top1_agreement") is not None:
        return "top-1 agreement", 1.0, fid["top1_agreement"]
    return "cosine", 1.0, fid.get("cosine")


def run_sweep(input_path: str | Path, targets: list[tuple[str, int]], output_dir: str | Path,
              options: SweepOptions, jobs: int | None = None,
              progress: Callable[[str], None] | None = None, executor: str = "process",
              ray_address: str | None = None) -> dict:
    """Compress to every target in parallel; write the models, sweep.json, sweep.md and sweep.png.

    Returns the sweep summary (also in sweep.json). Unreachable targets are results with
    status "unreachable", not errors. `executor` "ray" runs the targets as Ray tasks
    (`onnxcomp.executors`; `ray_address` names the cluster, else RAY_ADDRESS or a local Ray).
    """
    input_path, output_dir = Path(input_path), Path(output_dir)
    model = modelfile.load_model(input_path)  # a bad input fails once, here, not once per worker
    if options.data and not Path(options.data).exists():
        raise OnnxcompError(f"{options.data}: no such file")
    if options.data:
        from onnxcomp.samples.data import check_samples

        check_samples(options.data, model)  # so do unreadable or oversized samples (headers only)
    outputs = {size: output_dir / f"{input_path.stem}.{label}.onnx" for label, size in targets}
    check_sweep_outputs(input_path, output_dir, [(label, outputs[size]) for label, size in targets], options)
    if executor == "ray":
        require_ray()  # before the folder is made
    make_folder(output_dir, "the sweep folder", parents=True)
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(targets)))
    started = time.perf_counter()
    results = []
    calls = [(str(input_path), size, str(outputs[size]), options) for _, size in targets]
    crashed = (f"ONNX Runtime crashed in a sweep worker process (a native crash such as SIGFPE, or an out-of-memory "
               f"kill) while sweeping {input_path}; the model cannot run on these inputs")
    waiting = [label for label, _ in targets]

    def announce(count: int) -> None:
        # Both executors start the targets in the order given, `jobs` at a time, and each result
        # frees a worker for the next one: that is when the next target starts.
        for _ in range(min(count, len(waiting))):
            label = waiting.pop(0)
            if progress:
                progress(f"{label}: started ({len(targets) - len(waiting)} of {len(targets)})")

    announce(jobs)
    with live_task("sweep", total=len(targets), unit="targets") as bar:
        for result in map_unordered(compress_target, calls, executor=executor, jobs=jobs, ray_address=ray_address,
                                    crashed=crashed):
            results.append(result)
            bar.advance()
            if progress:
                progress(_progress_line(result))
            announce(1)
    labels = {size: label for label, size in targets}
    for result in results:
        result["target"] = labels[result["target_bytes"]]
    results.sort(key=lambda result: -result["target_bytes"])
    summary = {
        "input": str(input_path),
        "input_bytes": modelfile.file_bytes(input_path),
        "jobs": jobs,
        "executor": executor,
        "wall_seconds": round(time.perf_counter() - started, 3),
        "cpu_seconds": round(sum(result["cpu_seconds"] for result in results), 3),
        "pids": sorted({result["pid"] for result in results}),
        "results": results,
    }
    reached = [result for result in results if result["status"] == "ok"]
    if reached:
        metric, original, _ = quality(report_of(reached[0]))
        summary["original"] = {"metric": metric, "value": original}
    modelfile.atomic_write(output_dir / "sweep.json", lambda handle: handle.write(json.dumps(summary, indent=2).encode()))
    modelfile.atomic_write(output_dir / "sweep.md", lambda handle: handle.write(markdown_table(summary).encode()))
    plot = output_dir / "sweep.png"
    if reached and plot_curve(summary, plot):
        summary["plot"] = str(plot)
    return summary


def check_sweep_outputs(input_path: Path, output_dir: Path, models: list[tuple[str, Path]], options: SweepOptions) -> None:
    """Before any work: the folder can be made or written, no model or summary file is an input
    file (model, external data, samples) or exists without `options.overwrite`."""
    check_new_folder(output_dir, "the sweep folder", parents=True)
    existing = [str(path) for _, path in models if path.exists()]
    if existing and not options.overwrite:
        raise OnnxcompError(f"{existing[0]} exists ({len(existing)} outputs in all); pass --force to overwrite")
    planned = [Output(path, f"the {label} model", folder_later=True) for label, path in models]
    planned += [Output(output_dir / name, name, overwrite=True, folder_later=True) for name in ("sweep.json", "sweep.md", "sweep.png")]
    check_outputs(planned, input_files(input_path, options.data), force=options.overwrite)


def _progress_line(result: dict) -> str:
    target = format_size(result["target_bytes"])
    if result["status"] == "ok":
        report = report_of(result)
        metric, _, value = quality(report)
        if value is None:  # compressed unverified: no input ran the model
            shown = "outputs not verified"
        else:
            shown = f"{metric} {100 * value:.2f}%" if metric != "cosine" else f"cosine {value:.4f}"
            if _generated(report):
                shown += f" ({GENERATED_INPUTS_TAG})"
        return f"{target}: {format_size(report.output_bytes)}, {shown} ({result['seconds']:.1f} s, pid {result['pid']})"
    if result["status"] == "unreachable":
        return f"{target}: unreachable (smallest {format_size(result['smallest_bytes'] or 0)})"
    return f"{target}: failed: {result['message']}"


def markdown_table(summary: dict) -> str:
    """The sweep as a Markdown table, original first."""
    lines = [f"# Sweep of {summary['input']}", "",
             f"{len(summary['results'])} targets, {summary['jobs']} processes, {summary['wall_seconds']:.1f} s wall, "
             f"{summary['cpu_seconds']:.1f} s CPU in the workers", ""]
    generated = generated_inputs(summary)
    if generated:
        lines += [f"Quality {GENERATED_INPUTS_NOTE}.", ""]
    lines += [f"| target | file | ratio | quality{f' ({GENERATED_INPUTS_TAG})' if generated else ''} | seconds | pid | status |",
              "|---|---|---|---|---|---|---|"]
    original = summary.get("original")
    if original:
        lines.append(f"| original | {summary['input_bytes']:,} B | 1.0x | {original['metric']} {_percent(original['value'])} | | | |")
    for result in summary["results"]:
        if result["status"] == "ok":
            report = report_of(result)
            metric, _, value = quality(report)
            lines.append(f"| {result['target']} | {report.output_bytes:,} B | {report.ratio:.1f}x | {metric} {_percent(value)} "
                         f"| {result['seconds']:.1f} | {result['pid']} | ok |")
        elif result["status"] == "unreachable":
            lines.append(f"| {result['target']} | - | - | - | {result['seconds']:.1f} | {result['pid']} | "
                         f"unreachable: smallest {result['smallest_bytes']:,} B |")
        else:
            message = result["message"].replace("|", "/").splitlines()[0][:200]
            lines.append(f"| {result['target']} | - | - | - | {result['seconds']:.1f} | {result['pid']} | failed: {message} |")
    return "\n".join(lines) + "\n"


def _generated(report: CompressionReport) -> bool:
    return bool(report.fidelity.get("generated_inputs"))


def generated_inputs(summary: dict) -> bool:
    """Whether the sweep's quality figures were measured on generated inputs (no --data)."""
    return any(result["status"] == "ok" and _generated(report_of(result)) for result in summary["results"])


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def plot_curve(summary: dict, path: Path) -> bool:
    """Size-quality curve with the original marked; False (and a warning) without matplotlib."""
    try:
        from onnxcomp.reporting.html_report import require_matplotlib

        plt = require_matplotlib()
    except OnnxcompError:
        logger.warning("matplotlib is not installed: %s not written (pip install matplotlib)", path.name)
        return False
    reached = [result for result in summary["results"] if result["status"] == "ok"
               and quality(report_of(result))[2] is not None]  # unverified models have no quality to plot
    if not reached or summary["original"].get("value") is None:
        logger.warning("no verified result: %s not written", path.name)
        return False
    metric = summary["original"]["metric"]
    sizes = [report_of(result).output_bytes for result in reached]
    values = [100 * quality(report_of(result))[2] for result in reached]
    figure, axis = plt.subplots(figsize=(7, 4.2))
    axis.plot(sizes, values, "o-", color="#1f77b4", label="compressed")
    labels: dict[tuple[int, float], list[str]] = {}
    for result, size, value in zip(reached, sizes, values):  # targets that gave the same file share a label
        labels.setdefault((size, value), []).append(result["target"])
    for (size, value), names in labels.items():
        axis.annotate(", ".join(names), (size, value), textcoords="offset points", xytext=(4, -12), fontsize=7)
    axis.plot([summary["input_bytes"]], [100 * summary["original"]["value"]], "*", markersize=14, color="#d62728",
              label=f"original ({format_size(summary['input_bytes'])})")
    for result in summary["results"]:
        if result["status"] == "unreachable":
            axis.axvline(result["target_bytes"], color="#999999", linestyle=":", linewidth=1)
            axis.annotate(f"{result['target']}\nunreachable", (result["target_bytes"], min(values)), fontsize=7, color="#666666")
    axis.set_xscale("log")
    axis.set_xlabel("file size (bytes, log scale)")
    generated = generated_inputs(summary)
    axis.set_ylabel(f"{metric} (%)" + (" on generated inputs" if generated else ""))
    axis.set_title(f"{Path(summary['input']).name}: size vs {metric}" + (f"\n({GENERATED_INPUTS_TAG}: not task quality)"
                                                                         if generated else ""), fontsize=10)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    modelfile.atomic_write(path, lambda handle: figure.savefig(handle, format="png", dpi=100))
    plt.close(figure)
    return True
