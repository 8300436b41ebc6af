"""A generated model with GBs of external-data weights: compress it, measure peak memory, verify.

    python -m bench.large_model [--gb 3] [--target-ratio 0.125] [--workdir /tmp/big] [--keep]
                                [--out bench/results]

Generates a transformer-ish MLP stack (residual blocks of LayerNormalization -> Gemm(up) ->
Relu -> Gemm(down, transB) and LayerNormalization -> MatMul(square)), hidden 4096, FFN 8192:
per block a 64 MiB and two 128 MiB float32 weights, as many blocks as make `--gb` GiB. Weights
are seeded Gaussians written straight into `model.onnx.data` chunk by chunk (external_data
fields set by hand), so generating never holds more than a few MiB of weights.

Then runs `onnxcomp compress` as a user would (a subprocess) to `--target-ratio` of the input's
bytes, reads the child's peak RSS (``os.wait4``'s ``ru_maxrss``) and wall time, and verifies:
the original and the compressed model each run in their own ONNX Runtime process on seeded
inputs (their peak RSS is reported too: the original's session holds every weight in memory).
Writes `OUT/large_model.md` and `OUT/large_model.json` (`--name` picks the file stem).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

HIDDEN = 4096
FFN = 8192
OUTPUTS = 1000
SAMPLES = 8
ALIGN = 4096
CHUNK_BYTES = 16 << 20


def block_bytes(hidden: int = HIDDEN, ffn: int = FFN) -> int:
    return 4 * (2 * hidden * ffn + hidden * hidden)


class _ExternalWriter:
    """Appends seeded float32 tensors to one data file; returns external TensorProtos."""

    def __init__(self, path: Path, seed: int):
        self.path = path
        self.handle = path.open("wb")
        self.seed = seed
        self.count = 0

    def tensor(self, name: str, shape: tuple[int, ...], scale: float) -> TensorProto:
        offset = self.handle.tell()
        padding = -offset % ALIGN
        if padding:
            self.handle.write(b"\0" * padding)
            offset += padding
        rng = np.random.default_rng([self.seed, self.count])
        self.count += 1
        columns = shape[-1]
        rows = int(np.prod(shape[:-1]))
        chunk_rows = max(1, CHUNK_BYTES // (4 * columns))
        for start in range(0, rows, chunk_rows):
            part = rng.standard_normal((min(chunk_rows, rows - start), columns), dtype=np.float32)
            part *= np.float32(scale)
            self.handle.write(part.astype("<f4", copy=False).tobytes())
        length = self.handle.tell() - offset
        proto = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
        proto.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(offset)), ("length", str(length))):
            entry = proto.external_data.add()
            entry.key, entry.value = key, value
        return proto

    def close(self) -> None:
        self.handle.close()


def generate(folder: Path, gib: float, seed: int = 0, hidden: int = HIDDEN, ffn: int = FFN) -> Path:
    """Write folder/model.onnx + model.onnx.data with about `gib` GiB of float32 weights."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    blocks = max(1, round(gib * 2**30 / block_bytes(hidden, ffn)))
    writer = _ExternalWriter(folder / "model.onnx.data", seed)
    rng = np.random.default_rng(seed)
    nodes, initializers = [], []

    def small(name, values):
        initializers.append(onnx.numpy_helper.from_array(np.asarray(values, np.float32), name))
        return name

    x = "x"
    for b in range(blocks):
        p = f"b{b}."
        nodes.append(helper.make_node("LayerNormalization", [x, small(p + "ln1.g", 1 + 0.1 * rng.standard_normal(hidden)),
                                                             small(p + "ln1.b", 0.1 * rng.standard_normal(hidden))],
                                      [p + "h"], axis=-1))
        initializers.append(writer.tensor(p + "up.w", (hidden, ffn), 1 / np.sqrt(hidden)))
        nodes.append(helper.make_node("Gemm", [p + "h", p + "up.w", small(p + "up.b", 0.02 * rng.standard_normal(ffn))], [p + "u"]))
        nodes.append(helper.make_node("Relu", [p + "u"], [p + "r"]))
        initializers.append(writer.tensor(p + "down.w", (hidden, ffn), 1 / np.sqrt(ffn)))  # transB: [out, in]
        nodes.append(helper.make_node("Gemm", [p + "r", p + "down.w", small(p + "down.b", 0.02 * rng.standard_normal(hidden))],
                                      [p + "d"], transB=1))
        nodes.append(helper.make_node("Add", [x, p + "d"], [p + "x1"]))
        nodes.append(helper.make_node("LayerNormalization", [p + "x1", small(p + "ln2.g", np.ones(hidden)),
                                                             small(p + "ln2.b", np.zeros(hidden))], [p + "h2"], axis=-1))
        initializers.append(writer.tensor(p + "sq.w", (hidden, hidden), 0.5 / np.sqrt(hidden)))
        nodes.append(helper.make_node("MatMul", [p + "h2", p + "sq.w"], [p + "s"]))
        nodes.append(helper.make_node("Add", [p + "x1", p + "s"], [p + "x2"]))
        x = p + "x2"
    nodes.append(helper.make_node("LayerNormalization", [x, small("lnf.g", np.ones(hidden)), small("lnf.b", np.zeros(hidden))],
                                  ["hf"], axis=-1))
    initializers.append(writer.tensor("head.w", (hidden, OUTPUTS), 1 / np.sqrt(hidden)))
    nodes.append(helper.make_node("MatMul", ["hf", "head.w"], ["logits"]))
    writer.close()
    graph = helper.make_graph(nodes, "large_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", hidden])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", OUTPUTS])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="bench.large_model")
    model.ir_version = 8
    with path.open("wb") as handle:
        handle.write(model.SerializeToString())
    return path


def weight_bytes(path: Path) -> tuple[int, int]:
    """(bytes of the weights in external data, bytes of the largest of them)."""
    proto = onnx.load(str(path), load_external_data=False)
    sizes = [int({e.key: e.value for e in t.external_data}["length"]) for t in proto.graph.initializer
             if t.data_location == TensorProto.EXTERNAL]
    return sum(sizes), max(sizes)


def run_measured(command: list[str], log_path: Path | None = None) -> dict:
    """Run a child process; its exit status, wall seconds and peak RSS (bytes)."""
    started = time.perf_counter()
    log = log_path.open("wb") if log_path else subprocess.DEVNULL
    try:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if log_path:
            log.close()
    return {"returncode": process.returncode, "seconds": time.perf_counter() - started,
            "cpu_seconds": usage.ru_utime + usage.ru_stime, "peak_rss_bytes": usage.ru_maxrss * 1024}


def _run_model(model: str, inputs: str, outputs: str, fold: str = "fold") -> None:
    """Child mode: one ONNX Runtime session (from the path, so external data resolves), one run.
    `fold` = "nofold" disables graph optimizations: the decode subgraphs then run inside the
    call, each dense weight built just before its use, instead of all at load (folding keeps
    every intermediate of every weight until the end of the pass: several times the dense bytes)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if fold == "nofold":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    started = time.perf_counter()
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    loaded = time.perf_counter()
    feed = dict(np.load(inputs))
    result = session.run(None, feed)[0]
    np.savez(outputs, logits=result, load_seconds=loaded - started, run_seconds=time.perf_counter() - loaded)


def verify(original: Path, compressed: Path, folder: Path, seed: int, fold: bool) -> dict:
    x = np.random.default_rng([seed, 99]).standard_normal((SAMPLES, HIDDEN), dtype=np.float32)
    inputs = folder / "inputs.npz"
    np.savez(inputs, x=x)
    found = {}
    for label, model in (("original", original), ("compressed", compressed)):
        out = folder / f"{label}.outputs.npz"
        mode = "nofold" if label == "compressed" and not fold else "fold"
        measured = run_measured([sys.executable, "-m", "bench.large_model", "--run-model", str(model), str(inputs), str(out), mode])
        if measured["returncode"] != 0:
            raise SystemExit(f"ONNX Runtime failed on the {label} model (exit {measured['returncode']})")
        with np.load(out) as data:
            found[label] = {"logits": data["logits"], "load_seconds": float(data["load_seconds"]), "optimizations": mode == "fold",
                            "run_seconds": float(data["run_seconds"]), "peak_rss_bytes": measured["peak_rss_bytes"]}
    a, b = found["original"]["logits"].astype(np.float64), found["compressed"]["logits"].astype(np.float64)
    cosine = float(np.mean(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))
    return {
        "samples": SAMPLES,
        "max_abs_error": float(np.max(np.abs(a - b))),
        "relative_error": float(np.linalg.norm(a - b) / np.linalg.norm(a)),
        "cosine": cosine,
        "top1_agreement": float(np.mean(a.argmax(1) == b.argmax(1))),
        "sessions": {label: {k: v for k, v in found[label].items() if k != "logits"} for label in found},
    }


def _mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


def write_results(result: dict, out: Path, name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    c, v = result["compress"], result["verify"]
    lines = [
        f"# Large model: {result['weight_bytes'] / 2**30:.2f} GiB of external-data weights",
        "",
        f"Command: `{result['command']}` ({result['machine']}).",
        f"Model: {result['blocks']} residual MLP blocks (hidden {HIDDEN}, FFN {FFN}), {result['weights']} weights, "
        f"largest {_mib(result['largest_weight_bytes'])}; `onnxcomp compress` run as a subprocess, data-free.",
        "",
        "| weights bytes | largest weight | target | output bytes | ratio | peak RSS (compress) | peak RSS / weights | peak RSS / largest | time (CPU) | max abs error | rel. error | cosine | top-1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {result['weight_bytes']:,} | {result['largest_weight_bytes']:,} | {result['target_bytes']:,} | {c['output_bytes']:,} "
        f"| {result['weight_bytes'] / c['output_bytes']:.1f}x | {_mib(c['peak_rss_bytes'])} "
        f"| {c['peak_rss_bytes'] / result['weight_bytes']:.2f} | {c['peak_rss_bytes'] / result['largest_weight_bytes']:.1f} "
        f"| {c['seconds']:.0f} s ({c['cpu_seconds']:.0f} s) | {v['max_abs_error']:.3g} | {v['relative_error']:.3g} | {v['cosine']:.5f} | {v['top1_agreement']:.2f} |",
        "",
        f"Rate: {result['weight_bytes'] / 2**20 / c['seconds']:.1f} MiB of weights per second "
        f"({result['parameters'] / c['seconds'] / 1e6:.2f} M parameters/s; {result['weight_bytes'] / 2**20 / c['cpu_seconds']:.1f} MiB per "
        f"CPU second). Wall time depends on what else the machine runs. Phases (onnxcomp's report, s): "
        + ", ".join(f"{k} {val:.0f}" for k, val in c.get("phases", {}).items()) + ".",
        "",
        f"Verification on {v['samples']} seeded N(0, 1) inputs, each model in its own ONNX Runtime process:",
        "",
        "| model | ONNX Runtime optimizations | session load | run | peak RSS |",
        "|---|---|---|---|---|",
    ]
    for label, session in v["sessions"].items():
        mode = "on" if label == "original" else "on (decode folded at load)"
        lines.append(f"| {label} | {mode if session['optimizations'] else 'off (decode runs in the call)'} "
                     f"| {session['load_seconds']:.1f} s | {session['run_seconds']:.2f} s | {_mib(session['peak_rss_bytes'])} |")
    lines += ["", "The original's session holds every weight in memory (ONNX Runtime reads external data into its own "
              "buffers). With optimizations on, ONNX Runtime folds the compressed model's decode subgraphs at load and "
              "keeps every intermediate until the folding pass ends (several times the dense weights' bytes); with them "
              "off (`--fold no`, the default at 1 GiB and more) the same decode ops run inside the call, so the outputs "
              "are checked without that peak.", ""]
    (out / f"{name}.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=3.0, help="GiB of float32 weights (default 3)")
    parser.add_argument("--target-ratio", type=float, default=0.125, help="target size / input size (default 0.125)")
    parser.add_argument("--workdir", default="/tmp/big/large_model", help="folder for the generated and compressed models")
    parser.add_argument("--out", default="bench/results", help="folder for the results (.md, .json)")
    parser.add_argument("--name", default="large_model", help="file stem of the results")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the generated files (default: delete them at the end)")
    parser.add_argument("--no-verify", action="store_true", help="skip running the models in ONNX Runtime")
    parser.add_argument("--fold", choices=["auto", "yes", "no"], default="auto",
                        help="run the compressed model with ONNX Runtime's optimizations (decode subgraphs folded at "
                             "load: several times the dense weights in memory); auto = only below 1 GiB of weights")
    parser.add_argument("--run-model", nargs=4, metavar=("MODEL", "INPUTS", "OUTPUTS", "FOLD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_model:
        _run_model(*args.run_model)
        return 0

    folder = Path(args.workdir)
    tick = time.perf_counter()
    model = generate(folder, args.gb, args.seed)
    generate_seconds = time.perf_counter() - tick
    weights, largest = weight_bytes(model)
    input_bytes = model.stat().st_size + (folder / "model.onnx.data").stat().st_size
    target = int(input_bytes * args.target_ratio)
    print(f"generated {model} ({input_bytes:,} B, weights {weights:,} B, largest {largest:,} B) in {generate_seconds:.0f} s",
          flush=True)
    output = folder / "model.compressed.onnx"
    report_path = folder / "report.json"
    for stale in (output, report_path):
        stale.unlink(missing_ok=True)
    command = [sys.executable, "-m", "onnxcomp.cli", "compress", str(model), "--target-size", str(target), "-o", str(output),
               "--report", str(report_path)]
    measured = run_measured(command, folder / "compress.log")
    log = (folder / "compress.log").read_text()
    print(log, end="")
    if measured["returncode"] != 0:
        raise SystemExit(f"onnxcomp compress failed (exit {measured['returncode']}); see {folder / 'compress.log'}")
    report = json.loads(report_path.read_text())
    output_bytes = sum(p.stat().st_size for p in folder.glob("model.compressed.onnx*"))
    compress = {**measured, "output_bytes": output_bytes, "phases": report["seconds"], "fidelity": report["fidelity"]}
    print(f"compress: {measured['seconds']:.0f} s ({measured['cpu_seconds']:.0f} s CPU), peak RSS {_mib(measured['peak_rss_bytes'])}, output {output_bytes:,} B", flush=True)
    proto = onnx.load(str(model), load_external_data=False)
    parameters = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    result = {
        "command": "python -m bench.large_model " + " ".join(a for a in (argv if argv is not None else sys.argv[1:])),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM",
        "blocks": max(1, round(args.gb * 2**30 / block_bytes())),
        "weights": sum(1 for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL),
        "parameters": parameters,
        "input_bytes": input_bytes,
        "weight_bytes": weights,
        "largest_weight_bytes": largest,
        "target_bytes": target,
        "generate_seconds": generate_seconds,
        "compress": compress,
    }
    if not args.no_verify:
        fold = args.fold == "yes" or (args.fold == "auto" and weights < 2**30)
        result["verify"] = verify(model, output, folder, args.seed, fold)
        print(json.dumps({k: v for k, v in result["verify"].items() if k != "sessions"}), flush=True)
        write_results(result, Path(args.out), args.name)
    else:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    if not args.keep:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
