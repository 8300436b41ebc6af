"""Command line: `onnxcomp compress`, `onnxcomp inspect`, `onnxcomp export-mobile`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

from onnxcomp import __version__
from onnxcomp.errors import OnnxcompError
from onnxcomp.progress import live as live_progress
from onnxcomp.progress import wanted as wanted_progress
from onnxcomp.progress import write as write_progress
from onnxcomp.text import printable
from onnxcomp.training.retrain import METHODS
from onnxcomp.runtime.isolated import ChildCrashed, call_isolated, remove_temporaries, report_stage

DEFAULT_EPOCHS = 10
from onnxcomp.sizes import SIZE_FORMS, format_size, parse_target

logger = logging.getLogger("onnxcomp")

EXAMPLES = """\
examples:
  onnxcomp compress model.onnx --target-size 1MB -o small.onnx
  onnxcomp compress model.onnx --target-size 90KB --data samples.npz --epochs 0 --report report.json   (calibrate only)
  onnxcomp compress model.onnx --target-size 16KB --data train.npz --eval-data val.npz --epochs 60   (fine-tune, method auto)
  onnxcomp compress model.onnx --target-size 90KB --report-dir report/   (then open report/report.html)
  onnxcomp sweep model.onnx --targets 1MB,500KB,200KB,100KB --data samples.npz -o sweep/ --jobs 2
  onnxcomp inspect small.onnx

sizes: B, KB/MB/GB (x1000), KiB/MiB/GiB (x1024); the size that counts is the output file(s) on disk.
data: an .npz with one array per model input, named like the input, samples stacked on each input's
      sample axis (the symbolic dim the inputs share; a scalar input given once), optional integer
      'labels' for task accuracy; or a folder of .npz files, one complete feed each (shapes may differ).
fine-tuning: with --data, onnxcomp trains on ONNX Runtime's training backend (onnxcomp[train]) unless --epochs 0.
"""


KEEP_METADATA_HELP = ("also keep doc strings, node and value metadata (e.g. exporter stack traces), value_info and "
                      "the original internal names (default: dropped; the model's metadata_props - label maps, "
                      "dictionaries - and its inputs and outputs are always kept)")


def build_parser() -> argparse.ArgumentParser:
    """The `onnxcomp` command line: its subcommands (compress, inspect, sweep, export-mobile) and flags."""
    parser = argparse.ArgumentParser(
        prog="onnxcomp",
        description="Compress ONNX models to a byte budget; outputs run on stock ONNX Runtime.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"onnxcomp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    compress = commands.add_parser("compress", help="compress a model to a target size",
                                   epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    compress.add_argument("input", help="input .onnx model (never modified)")
    compress.add_argument("--target-size", required=True, help="maximum output size: " + SIZE_FORMS.replace("%", "%%"))
    compress.add_argument("-o", "--output", help="output .onnx (default: INPUT.compressed.onnx next to the input)")
    compress.add_argument("--data", help="sample inputs (.npz, or a folder of .npz feeds) for sensitivity and verification; labels optional")
    compress.add_argument("--report", help="write the JSON report here")
    compress.add_argument("--report-dir", help="write a self-contained HTML report (report.html: size against quality "
                                               "next to the original and per-channel int8, fidelity, bytes by encoding, "
                                               "bits/sparsity, per-layer table, entropy bound and gzip'd size, weight "
                                               "distributions before/after) and report.json into this folder; needs matplotlib")
    compress.add_argument("--force", action="store_true", help="overwrite an existing output (and --report file)")
    compress.add_argument("--allow-low-fidelity", action="store_true",
                          help="write the model even when it fails the quality floor or --max-accuracy-drop")
    compress.add_argument("--keep-metadata", action="store_true", help=KEEP_METADATA_HELP)
    compress.add_argument("--equalize", action="store_true",
                          help="cross-layer equalization first (Nagel et al. 2019): rescale consecutive Conv/Gemm/MatMul "
                               "layers joined by Relu-like activations so their per-channel ranges match; the float "
                               "model's outputs do not change (experimental, off by default)")
    compress.add_argument("--min-fidelity", type=float,
                          help="quality floor: refuse to write (exit 4, with the smallest size that meets it) if an output's "
                               "top-1 agreement (class scores) or cosine falls below this (default 0.95 agreement, 0.97 "
                               "cosine; on generated inputs class scores pass on either; 0 turns the floor off)")
    compress.add_argument("--max-accuracy-drop", type=float, help="refuse to write if accuracy drops by more than this many points (needs labels)")
    compress.add_argument("--no-sensitivity", action="store_true", help="allocate bits by weight error alone (skip measuring layer sensitivity)")
    compress.add_argument("--eval-data", help="held-out samples (.npz) that pick the best epoch and measure the report's accuracy "
                                               "(default when fine-tuning: a tenth of --data, at most 5000)")
    compress.add_argument("--method", choices=METHODS, default="auto",
                          help="fine-tuning method with --data: prune (iterative pruning + retraining, Han et al.), sws (soft "
                               "weight-sharing prior, Ullrich et al.), admm (budget-constrained ADMM, Yang et al.), vib (remove "
                               "neurons with VIB gates, Dai et al., then prune; needs labels), auto (vib then prune with labels and a "
                               "target under 2 bits per weight, else prune). Default auto")
    compress.add_argument("--epochs", type=int, default=None,
                          help=f"training epochs on ONNX Runtime's training backend (default {DEFAULT_EPOCHS} with --data, 0 without); "
                               "labels -> cross-entropy mixed with distillation, no labels -> distillation from the original. "
                               "0: calibration only")
    compress.add_argument("--patience", type=int, help="stop a training stage after this many epochs without a better held-out "
                                                     "metric (default: run all epochs; the best epoch's weights are kept either way)")
    compress.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    compress.add_argument("--lr", type=float, default=1e-3, help="training learning rate (default 1e-3, cosine schedule)")
    compress.add_argument("--seed", type=int, default=0, help="seed for generated inputs and training shuffles (default 0)")
    _add_input_flags(compress)
    compress.add_argument("-q", "--quiet", action="store_true", help="print only errors")

    sweep = commands.add_parser("sweep", help="compress to several targets in parallel and plot size against accuracy/fidelity")
    sweep.add_argument("input", help="input .onnx model (never modified)")
    sweep.add_argument("--targets", required=True, help="comma-separated target sizes, e.g. 1MB,500KB,200KB or 1/4,1/8,1/16 (each as --target-size)")
    sweep.add_argument("-o", "--output-dir", help="folder for the models, sweep.json, sweep.md and sweep.png (default: INPUT.sweep next to the input)")
    sweep.add_argument("--data", help="sample inputs (.npz or a folder of .npz feeds); with labels the curve is accuracy, else fidelity")
    sweep.add_argument("-j", "--jobs", type=int, help="parallel processes, or Ray tasks in flight (default: the number of CPUs)")
    sweep.add_argument("--executor", choices=("process", "ray"), default="process",
                       help="run targets in local processes (default) or as Ray tasks (pip install 'onnxcomp[ray]'; "
                            "paths must be on storage every node sees)")
    sweep.add_argument("--ray-address", help="the Ray cluster to join, e.g. ray://head:10001 or 10.0.0.5:6379 "
                                             "(default: RAY_ADDRESS, else a local Ray)")
    sweep.add_argument("--no-sensitivity", action="store_true", help="allocate bits by weight error alone")
    sweep.add_argument("--keep-metadata", action="store_true", help=KEEP_METADATA_HELP)
    sweep.add_argument("--seed", type=int, default=0, help="seed for generated inputs (default 0)")
    _add_input_flags(sweep)
    sweep.add_argument("--force", action="store_true", help="overwrite existing outputs")
    sweep.add_argument("-q", "--quiet", action="store_true", help="print only errors")

    inspect = commands.add_parser("inspect", help="print the per-layer table of any model")
    inspect.add_argument("model", help=".onnx model")
    inspect.add_argument("--json", action="store_true", help="print JSON rows instead of a table")

    mobile = commands.add_parser("export-mobile", help="write an ORT-format .ort + required_operators.config for ONNX Runtime mobile")
    mobile.add_argument("model", help="compressed .onnx model (never modified)")
    mobile.add_argument("-o", "--output-dir", required=True, help="folder for MODEL.onnx (a copy), MODEL.ort and required_operators.config")
    mobile.add_argument("--force", action="store_true", help="overwrite existing outputs")
    mobile.add_argument("--ort-weights", choices=["auto", "dense", "sparse", "packed"], default="auto",
                        help="how the .ort stores weights: 'sparse' = decoded weights, sparse ones as sparse "
                             "initializers (dense speed); 'dense' = as ONNX Runtime's converter folds them "
                             "(dense floats, dense speed); 'auto' (default) = the smaller of the two whose outputs "
                             "match the .onnx; 'packed' = decode subgraphs kept, graph optimizations off (about the "
                             ".onnx's size, decodes on every run: for minimal builds where download size matters)")
    mobile.add_argument("--json", action="store_true", help="print the export report as JSON")
    return parser


def _add_input_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-shape", action="append", default=[], metavar="NAME:D1,D2,...",
                        help="the shape of input NAME for generated inputs, e.g. x:1,3,640,640; its batch (sample axis) size "
                             "is the batch every run uses (repeatable)")
    parser.add_argument("--input-value", action="append", default=[], metavar="NAME=V",
                        help="the value of input NAME, e.g. sr=16000 or a 1-D value v=1,2,3; used for generated "
                             "inputs and where --data lacks NAME (repeatable)")


def _input_pins(args, model_path: Path) -> tuple[dict, dict]:
    """--input-shape and --input-value as {name: dims} and {name: array}, checked against the model."""
    from onnxcomp.samples.signature import check_pins, parse_input_shape, parse_input_value

    shapes, values = dict(map(parse_input_shape, args.input_shape)), dict(map(parse_input_value, args.input_value))
    if shapes or values:
        from onnxcomp import modelfile

        check_pins(modelfile.load_model(model_path), shapes, values)  # before any work
    return shapes, values


def _default_output(input_path: Path) -> Path:
    return input_path.with_name(input_path.stem + ".compressed.onnx")


def _compress(args) -> int:
    from onnxcomp import modelfile
    from onnxcomp.samples.data import load_samples
    from onnxcomp.pipeline import CompressOptions, compress_file
    from onnxcomp.reporting.floor import QualityFloorError
    from onnxcomp.reporting.report import (COMPRESS_COLUMNS, GENERATED_INPUTS_NOTE, floor_notes, format_table, quality_measures,
                                           uninformative_outputs)

    input_path = Path(args.input)
    target = parse_target(args.target_size, lambda: modelfile.file_bytes(input_path))
    output_path = Path(args.output) if args.output else _default_output(input_path)
    quiet = args.quiet

    def progress(message: str) -> None:
        report_stage(f"compressing {input_path} ({message})")  # named if ONNX Runtime crashes the job
        if not quiet:
            write_progress(f"  {printable(message)}")  # above the live progress bar, if one shows

    _check_numbers(args)
    _check_compress_outputs(args, input_path, output_path)  # before any work: nothing over the input, all writable
    samples = eval_samples = None
    input_shapes, input_values = _input_pins(args, input_path)
    if args.data:
        samples = load_samples(args.data, modelfile.load_model(input_path), input_values)
    if args.eval_data:
        if not args.data:
            raise OnnxcompError("--eval-data needs --data (the training samples)")
        eval_samples = load_samples(args.eval_data, modelfile.load_model(input_path), input_values)
    if args.max_accuracy_drop is not None and all(s is None or s.labels is None for s in (samples, eval_samples)):
        raise OnnxcompError("--max-accuracy-drop needs labels (a 'labels' array in --data) to measure accuracy")
    epochs = args.epochs if args.epochs is not None else (DEFAULT_EPOCHS if args.data else 0)
    options = CompressOptions(target_bytes=target, keep_metadata=args.keep_metadata, sensitivity=not args.no_sensitivity,
                              seed=args.seed, min_fidelity=args.min_fidelity, max_accuracy_drop=args.max_accuracy_drop,
                              force=args.allow_low_fidelity, epochs=epochs, batch_size=args.batch_size, lr=args.lr,
                              method=args.method, epochs_given=args.epochs is not None, patience=args.patience,
                              input_shapes=input_shapes, input_values=input_values, equalize=args.equalize)
    if epochs < 0 or args.batch_size < 1 or args.lr <= 0 or (args.patience is not None and args.patience < 1):
        raise OnnxcompError("--epochs must be >= 0, --batch-size >= 1, --lr > 0 and --patience >= 1")
    if args.report_dir:
        from onnxcomp.reporting.html_report import require_matplotlib

        require_matplotlib()  # fail before compressing, not after
    if not quiet:
        print(f"onnxcomp: compressing {input_path} to at most {format_size(target)}", file=sys.stderr)
    try:
        report = compress_file(input_path, output_path, options, samples=samples, progress=progress,
                               overwrite=args.force, eval_samples=eval_samples)
    except QualityFloorError as error:  # nothing written, but --report says what was measured and what passes
        if args.report and error.report is not None:
            error.report.input = str(input_path)
            error.report.save(args.report)
        raise
    if args.report:
        report.save(args.report)
    if args.report_dir:
        from onnxcomp.reporting.html_report import write_report

        progress(f"write HTML report to {args.report_dir}")
        write_report(args.report_dir, modelfile.load_model(input_path), modelfile.load_model(output_path), report, output_path.read_bytes(),
                     samples=eval_samples or samples, seed=args.seed, input_shapes=input_shapes, input_values=input_values)
    if not quiet:
        print(format_table(report.layers, COMPRESS_COLUMNS))
        fid = report.fidelity
        parts = [f"{format_size(report.input_bytes)} -> {format_size(report.output_bytes)} ({report.ratio:.1f}x smaller, target {format_size(target)})"]
        quality = quality_measures(fid)
        if fid.get("mode") == "weights":
            parts.append(f"weights checked one at a time in ONNX Runtime ({fid['weights']} decoded): relative error "
                         f"{fid['relative_error']:.3g} (worst weight {fid['max_relative_error']:.3g}), max abs error "
                         f"{fid['max_abs_error']:.3g}; model outputs not run ("
                         + ("too large to hold in memory)" if report.streamed else
                            "no generated input gave outputs to compare: --data, --input-shape or --input-value would verify them)"))
        else:
            parts.append(", ".join(quality) + f" on {fid['samples']} {'generated' if fid['generated_inputs'] else 'sample'} inputs")
            if fid["generated_inputs"]:
                parts.append(f"  ({GENERATED_INPUTS_NOTE})")
                parts.extend(f"  ({line})" for line in uninformative_outputs(fid))
            parts.extend(f"  ({line})" for line in floor_notes(report))
        if report.accuracy is not None:
            acc = report.accuracy
            parts.append(f"accuracy {100 * acc['original']:.2f}% -> {100 * acc['compressed']:.2f}% on {acc['samples']} labelled samples")
        if report.opset is not None:
            parts.append(f"opset {report.opset['input']} -> {report.opset['output']} (the decode subgraphs' ops): "
                         f"runtimes must support opset {report.opset['output']}")
        parts.append(f"wrote {output_path} in {report.seconds['total']:.1f} s"
                     + (f", peak memory {format_size(report.peak_rss_bytes)}" if report.peak_rss_bytes else ""))
        print("\n".join(parts))
    return 0


def _check_numbers(args) -> None:
    """Refuse numbers that would be ignored or crash later: NaN/inf guards, a negative seed."""
    import math

    for flag, value in (("--min-fidelity", args.min_fidelity), ("--max-accuracy-drop", args.max_accuracy_drop), ("--lr", args.lr)):
        if value is not None and not math.isfinite(value):
            raise OnnxcompError(f"{flag} must be a finite number, not {value}")
    if args.min_fidelity is not None and not -1 <= args.min_fidelity <= 1:
        raise OnnxcompError(f"--min-fidelity is a top-1 agreement or cosine between -1 and 1, not {args.min_fidelity}")
    if args.max_accuracy_drop is not None and args.max_accuracy_drop < 0:
        raise OnnxcompError(f"--max-accuracy-drop is in points and must be >= 0, not {args.max_accuracy_drop}")
    _check_seed(args.seed)


def _check_seed(seed: int) -> None:
    if not 0 <= seed < 2**32:
        raise OnnxcompError(f"--seed must be between 0 and {2**32 - 1}, not {seed}")


def _check_compress_outputs(args, input_path: Path, output_path: Path) -> None:
    from onnxcomp.outputs import Output, check_new_folder, check_outputs, input_files

    planned = [Output(output_path, "the output model")]
    if args.report:
        planned.append(Output(Path(args.report), "the --report file"))
    if args.report_dir:
        report_dir = Path(args.report_dir)
        check_new_folder(report_dir, "the --report-dir folder")
        planned += [Output(report_dir / name, f"the report's {name}", overwrite=True, folder_later=True)
                    for name in ("report.html", "report.json")]
    check_outputs(planned, input_files(input_path, args.data, args.eval_data), force=args.force)


def _sweep(args) -> int:
    from onnxcomp.sweep import SweepOptions, markdown_table, parse_targets, run_sweep

    input_path = Path(args.input)
    output_dir = Path(args.output_dir) if args.output_dir else input_path.with_name(input_path.stem + ".sweep")
    if args.jobs is not None and args.jobs < 1:
        raise OnnxcompError("--jobs must be >= 1")
    _check_seed(args.seed)
    targets = parse_targets(args.targets, input_path)
    input_shapes, input_values = _input_pins(args, input_path)
    options = SweepOptions(data=args.data, sensitivity=not args.no_sensitivity, seed=args.seed,
                           keep_metadata=args.keep_metadata, overwrite=args.force,
                           input_shapes=input_shapes, input_values=input_values)
    def progress(line: str) -> None:
        report_stage(f"sweeping {input_path} ({line})")
        if not args.quiet:
            write_progress(f"  {printable(line)}")

    if args.ray_address and args.executor != "ray":
        raise OnnxcompError("--ray-address needs --executor ray")
    summary = run_sweep(input_path, targets, output_dir, options, jobs=args.jobs, progress=progress,
                        executor=args.executor, ray_address=args.ray_address)
    if not args.quiet:
        print(markdown_table(summary), end="")
        print(f"wrote {output_dir}/sweep.json, sweep.md" + (", sweep.png" if "plot" in summary else ""))
    statuses = {result["status"] for result in summary["results"]}
    if "error" in statuses:
        return 1
    return 0 if "ok" in statuses else 3


def _inspect(args) -> int:
    from onnxcomp import modelfile
    from onnxcomp.reporting.report import COMPRESS_COLUMNS, format_table, inspect_model, inspect_summary

    model = modelfile.load_model(args.model)
    rows = inspect_model(model)
    if args.json:
        print(json.dumps([row.to_dict() for row in rows], indent=2))
        return 0
    print(format_table(rows, COMPRESS_COLUMNS + [("levels", "distinct")]))  # the compress summary's rows and bytes
    print(inspect_summary(rows, modelfile.file_bytes(args.model)))
    return 0


def _export_mobile(args) -> int:
    from onnxcomp.runtime.mobile import BUILD_ADVICE, NO_PACKAGE_CHECK, PACKAGE_NAME, PACKAGE_SCOPE, export_mobile, ort_version

    result = export_mobile(args.model, args.output_dir, overwrite=args.force, ort_weights=args.ort_weights)
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0
    rows = [(".onnx", result.onnx_path, result.onnx_bytes, result.onnx_timing),
            (f".ort ({result.ort_weights})", result.ort_path, result.ort_bytes, result.ort_timing)]
    if result.ort_weights == "sparse" and result.dense_ort_bytes is not None:
        rows.append((".ort (dense, not written)", None, result.dense_ort_bytes, result.dense_ort_timing))
    print(f"{'format':<27}{'bytes':>12}{'load ms':>10}{'run ms':>10}  file")
    for label, path, size, timing in rows:
        load, run = (f"{1e3 * timing.load_s:>10.2f}", f"{1e3 * timing.run_s:>10.3f}") if timing else (f"{'-':>10}", f"{'-':>10}")
        print(f"{label:<27}{size:>12,}{load}{run}  {path or ''}".rstrip())
    print("load = session creation (the .onnx's decode subgraphs are folded here"
          + ("; the packed .ort's are not: it decodes on every run" if result.ort_weights == "packed" else "")
          + "), run = one batch-1 inference; medians on 1 thread, measured side by side")
    print(f".ort outputs match the .onnx: max abs diff {result.max_abs_diff:.3g} on seeded inputs")
    sparse = [row["name"] for row in result.weights if row["form"] == "sparse"]
    if result.ort_weights == "sparse" and sparse:
        print(f"the .ort stores {len(sparse)} of {len(result.weights)} weights as sparse initializers "
              f"({printable(', '.join(sparse))}), the rest dense")
    if result.ort_weights == "packed" and result.onnx_timing and result.ort_timing:
        print(f"the .ort keeps the decode subgraphs: {result.ort_bytes / result.onnx_bytes:.2f}x the .onnx's bytes, "
              f"{result.ort_timing.run_s / result.onnx_timing.run_s:.1f}x its run time")
    elif result.ort_weights != "packed" and result.ort_bytes > result.onnx_bytes:
        print(f"note: the .ort is {result.ort_bytes / result.onnx_bytes:.1f}x the .onnx: ORT format holds weights decoded "
              "(dense, or sparse where that is smaller); --ort-weights packed keeps them compact")
    print(BUILD_ADVICE)
    print(f"wrote {result.config_path} (the operators a minimal build needs for the .ort)")
    if result.onnx_check is None:
        print(NO_PACKAGE_CHECK.format(version=ort_version()))
    else:
        print(f"operator check against {PACKAGE_NAME} only (it {PACKAGE_SCOPE}):")
    for label, check in (("the .onnx", result.onnx_check), ("the .ort", result.ort_check)):
        if check is None:
            continue
        if not check.opset_supported:
            print(f"  {label}: opset {check.opset} is not one that package was built for "
                  f"({', '.join(map(str, check.package_opsets))})")
        if check.unsupported:
            print(f"  {label}: ops not in that package: {', '.join(check.unsupported)}")
        if check.ok:
            print(f"  {label}: every op is in that package")
    return 0


def _dispatch(args) -> int:
    # A live progress bar (stage, step, elapsed, estimate) only on a terminal and without -q.
    with live_progress(wanted_progress(sys.stderr, getattr(args, "quiet", False))):
        if args.command == "compress":
            return _compress(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "export-mobile":
            return _export_mobile(args)
        return _inspect(args)


def _run_isolated(args) -> int:
    """Run the command in a child process, so that ONNX Runtime dying natively (SIGFPE, SIGSEGV,
    abort) or being OOM-killed on the user's model ends in one line and exit 2, not a bare signal."""
    source = Path(getattr(args, "input", None) or args.model)
    outputs = [Path(p) for p in (getattr(args, "output", None), getattr(args, "report", None)) if p]
    if args.command == "compress" and not args.output:
        outputs.append(_default_output(source))
    folders = [Path(p) for p in (getattr(args, "output_dir", None), getattr(args, "report_dir", None)) if p]
    if args.command == "sweep" and not args.output_dir:
        folders.append(source.with_name(source.stem + ".sweep"))
    verb = {"compress": "loading", "sweep": "sweeping", "inspect": "inspecting", "export-mobile": "exporting"}[args.command]
    started = time.time()
    previous = signal.signal(signal.SIGTERM, _terminated)  # SIGTERM stops the child too, as Ctrl-C does
    try:
        # fork, not a fork server: no ONNX Runtime session exists yet, and the child keeps this process's state
        return call_isolated(_dispatch, args, stage=f"{verb} {source}", start_method="fork")
    except ChildCrashed as crash:
        hint = ""
        if not crash.out_of_memory and args.command in ("compress", "sweep"):
            crashed_sweep = args.command == "sweep"  # its message already says so
            hint = ("" if crashed_sweep else "; the model cannot run on these inputs") + (
                " (check the samples in --data)" if args.data else
                " (give inputs it runs on with --data, or pin them with --input-shape NAME:DIMS / --input-value NAME=V)")
        written = "" if args.command == "sweep" else " and no output was written"  # finished targets stay
        if crash.signal_number == signal.SIGFPE:  # ORT names no node when it dies: name the ones that can
            hint += _integer_divisions(source)
        raise ChildCrashed(f"{crash}{hint}; {source} is unchanged{written}", crash.signal_number,
                           crash.stage, crash.out_of_memory) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        remove_temporaries(outputs, folders, since=started)


def _terminated(signum, frame) -> None:
    from onnxcomp.modelfile import Terminated

    raise Terminated()


def _integer_divisions(model_path: Path) -> str:
    import onnx

    from onnxcomp.runtime.inference import integer_divisions

    try:
        nodes = integer_divisions(onnx.load(model_path, load_external_data=False))
    except Exception as error:  # only a hint: the crash is the error
        logger.debug("cannot list integer divisions: %s", error)
        return ""
    return f"; integer divisions in the model: {nodes}" if nodes else ""


def main(argv: list[str] | None = None, isolate: bool | None = None) -> int:
    """The ``onnxcomp`` command; returns the exit code.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
        isolate: run the command in a child process so that a native crash in ONNX Runtime becomes a
            one-line error (default: when reading ``sys.argv``, i.e. as the ``onnxcomp`` program).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="onnxcomp: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    started = time.perf_counter()
    from onnxcomp.modelfile import Terminated, terminate_cleanly

    try:
        with terminate_cleanly():  # SIGTERM unwinds like Ctrl-C: temporary files are removed
            if argv is None if isolate is None else isolate:
                return _run_isolated(args)
            return _dispatch(args)
    except OnnxcompError as error:
        print(f"onnxcomp: error: {printable(str(error))}", file=sys.stderr)  # one line, whatever names it quotes
        return error.exit_code
    except Terminated:
        print("onnxcomp: terminated; no output written", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("onnxcomp: interrupted; no output written", file=sys.stderr)
        return 130
    except MemoryError:
        print("onnxcomp: error: out of memory", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (e.g. `onnxcomp inspect m.onnx | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 141
    except OSError as error:  # e.g. a file swapped or removed while it is read: one line, not a traceback
        where = f" {error.filename}" if error.filename else ""
        print(f"onnxcomp: error: cannot access{where}: {error.strerror or error}", file=sys.stderr)
        return 2
    except Exception as error:  # a defect of onnxcomp's: one line, not a traceback (ONNXCOMP_TRACEBACK=1 shows it)
        if os.environ.get("ONNXCOMP_TRACEBACK"):
            raise
        cause = printable(str(error).strip().splitlines()[0] if str(error).strip() else "")
        print(f"onnxcomp: error: internal error ({type(error).__name__}: {cause[:300]}); nothing was written and the "
              "input is unchanged; please report it with the model (ONNXCOMP_TRACEBACK=1 shows where)", file=sys.stderr)
        return 1
    finally:
        logger.debug("finished in %.2f s", time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
