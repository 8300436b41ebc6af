"""Command line: `onnxcomp compress`, `onnxcomp inspect`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from onnxcomp import __version__
from onnxcomp.errors import OnnxcompError
from onnxcomp.sizes import format_size, parse_size

logger = logging.getLogger("onnxcomp")

EXAMPLES = """\
examples:
  onnxcomp compress model.onnx --target-size 1MB -o small.onnx
  onnxcomp compress model.onnx --target-size 90KB --data samples.npz --report report.json
  onnxcomp inspect small.onnx

sizes: B, KB/MB/GB (x1000), KiB/MiB/GiB (x1024); the size that counts is the output file(s) on disk.
data (.npz): one array per model input, named like the input, first axis = samples;
             an optional integer 'labels' array adds task accuracy to the report.
"""


def _parser() -> argparse.ArgumentParser:
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
    compress.add_argument("--target-size", required=True, help="maximum output size, e.g. 1MB, 500KiB, 90000")
    compress.add_argument("-o", "--output", help="output .onnx (default: INPUT.compressed.onnx next to the input)")
    compress.add_argument("--data", help="sample inputs (.npz) for sensitivity and verification; labels optional")
    compress.add_argument("--report", help="write the JSON report here")
    compress.add_argument("--force", action="store_true", help="overwrite an existing output; write even below quality guards")
    compress.add_argument("--keep-metadata", action="store_true", help="keep doc strings, metadata and original names")
    compress.add_argument("--min-fidelity", type=float, help="refuse to write if top-1 agreement (classifiers) or cosine falls below this")
    compress.add_argument("--max-accuracy-drop", type=float, help="refuse to write if accuracy drops by more than this many points (needs labels)")
    compress.add_argument("--no-sensitivity", action="store_true", help="allocate bits by weight error alone (skip measuring layer sensitivity)")
    compress.add_argument("--epochs", type=int, default=0,
                          help="with --data: retrain this many epochs on ONNX Runtime's training backend (masks fixed, then codebook "
                               "fine-tuning; labels -> cross-entropy, no labels -> distillation from the original). Default 0: calibration only")
    compress.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    compress.add_argument("--lr", type=float, default=1e-3, help="training learning rate (default 1e-3, cosine schedule)")
    compress.add_argument("--seed", type=int, default=0, help="seed for generated inputs and training shuffles (default 0)")
    compress.add_argument("-q", "--quiet", action="store_true", help="print only errors")

    inspect = commands.add_parser("inspect", help="print the per-layer table of any model")
    inspect.add_argument("model", help=".onnx model")
    inspect.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    return parser


def _default_output(input_path: Path) -> Path:
    return input_path.with_name(input_path.stem + ".compressed.onnx")


def _compress(args) -> int:
    from onnxcomp import io
    from onnxcomp.data import load_samples
    from onnxcomp.pipeline import CompressOptions, compress_file
    from onnxcomp.report import COMPRESS_COLUMNS, format_table

    target = parse_size(args.target_size)
    input_path = Path(args.input)
    output_path = Path(args.output) if args.output else _default_output(input_path)
    quiet = args.quiet

    def progress(message: str) -> None:
        if not quiet:
            print(f"  {message}", file=sys.stderr, flush=True)

    samples = None
    if args.data:
        samples = load_samples(args.data, io.load_model(input_path))
    options = CompressOptions(target_bytes=target, keep_metadata=args.keep_metadata, sensitivity=not args.no_sensitivity,
                              seed=args.seed, min_fidelity=args.min_fidelity, max_accuracy_drop=args.max_accuracy_drop,
                              force=args.force, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    if args.epochs < 0 or args.batch_size < 1 or args.lr <= 0:
        raise OnnxcompError("--epochs must be >= 0, --batch-size >= 1 and --lr > 0")
    if not quiet:
        print(f"onnxcomp: compressing {input_path} to at most {format_size(target)}", file=sys.stderr)
    report = compress_file(input_path, output_path, options, samples=samples, progress=progress, overwrite=args.force)
    if args.report:
        report_path = Path(args.report)
        from onnxcomp.io import atomic_write

        atomic_write(report_path, lambda handle: handle.write(json.dumps(report, indent=2).encode()))
    if not quiet:
        print(format_table(report["layers"], COMPRESS_COLUMNS))
        fid = report["fidelity"]
        parts = [f"{format_size(report['input_bytes'])} -> {format_size(report['output_bytes'])} ({report['ratio']:.1f}x smaller, target {format_size(target)})"]
        quality = []
        if fid.get("top1_agreement") is not None:
            quality.append(f"top-1 agreement {100 * fid['top1_agreement']:.2f}%")
        if fid.get("cosine") is not None:
            quality.append(f"cosine {fid['cosine']:.4f}")
        quality.append(f"max abs error {fid['max_abs_error']:.3g}")
        parts.append(", ".join(quality) + f" on {fid['samples']} {'generated' if fid['generated_inputs'] else 'sample'} inputs")
        if "accuracy" in report:
            acc = report["accuracy"]
            parts.append(f"accuracy {100 * acc['original']:.2f}% -> {100 * acc['compressed']:.2f}% on {acc['samples']} labelled samples")
        parts.append(f"wrote {output_path} in {report['seconds']['total']:.1f} s")
        print("\n".join(parts))
    return 0


def _inspect(args) -> int:
    from onnxcomp import io
    from onnxcomp.report import COMPRESS_COLUMNS, format_table, inspect_model, inspect_summary

    model = io.load_model(args.model)
    rows = inspect_model(model)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = [c for c in COMPRESS_COLUMNS if c[0] != "bytes_before"] + [("levels", "distinct")]
    columns = [("bytes_after", "stored") if c[0] == "bytes_after" else c for c in columns]
    print(format_table(rows, columns))
    print(inspect_summary(rows, io.file_bytes(args.model)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="onnxcomp: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    started = time.perf_counter()
    try:
        if args.command == "compress":
            return _compress(args)
        return _inspect(args)
    except OnnxcompError as error:
        print(f"onnxcomp: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("onnxcomp: interrupted; no output written", file=sys.stderr)
        return 130
    except MemoryError:
        print("onnxcomp: error: out of memory", file=sys.stderr)
        return 1
    finally:
        logger.debug("finished in %.2f s", time.perf_counter() - started)


if __name__ == "__main__":
    sys.exit(main())
