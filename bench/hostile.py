"""Hostile ~10 MB inputs: every CLI command's exit code, message, peak memory and time on each.

Each file is a real 10 MB model (one 1600x1600 float MatMul weight) carrying one hostile part:
a huge declared input shape, a Loop of 1e15 iterations, a sparse initializer that declares a
dense shape of terabytes, a ConstantOfShape / Expand / Range whose constant operands ask for
terabytes, and an .npz whose member declares (or deflates to) an array far larger than the file;
plus a Loop/If-heavy 10 KB model that is within the bounds and compresses. Each command runs as a
user runs it (`python -m onnxcomp.cli`, in its own process); its peak resident memory is the
largest of the process and every descendant it waited for (`os.wait4`'s `ru_maxrss`), and the
summed proportional set size of the process tree, polled, is reported beside it.

Usage: python -m bench.hostile [--out bench/results/hostile.md] [--cases NAME,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
SIDE = 1600  # the padding weight: SIDE x SIDE float32 = 10.24 MB
HUGE = 10**6  # a declared dimension: HUGE x HUGE float32 = 4 TB
RSS_LIMIT = 1 << 30
COMMANDS = ("inspect", "compress", "sweep", "export-mobile")


def _weight(rng: np.random.Generator) -> TensorProto:
    return numpy_helper.from_array(rng.standard_normal((SIDE, SIDE)).astype(np.float32), "w")


def _model(nodes, inputs, outputs, initializers, opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def padded_mlp() -> onnx.ModelProto:
    """y = x @ w with a 10 MB weight: the base every hostile model adds its part to."""
    rng = np.random.default_rng(17)
    return _model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", SIDE])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", SIDE])], [_weight(rng)])


def huge_input_shape() -> onnx.ModelProto:
    """The input declares [N, 1e6, 1600]: 6.4 GB per sample."""
    proto = padded_mlp()
    for value in (proto.graph.input[0], proto.graph.output[0]):
        value.type.tensor_type.shape.dim.insert(1, onnx.TensorShapeProto.Dimension(dim_value=HUGE))
    return proto


def loop_trips() -> onnx.ModelProto:
    """A Loop of 1e15 iterations after the MatMul."""
    proto = padded_mlp()
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["acc_in"], ["acc_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, None)])
    proto.graph.node[0].output[0] = "h"
    proto.graph.node.append(helper.make_node("Loop", ["trips", "keep", "h"], ["y"], body=body))
    proto.graph.initializer.extend([numpy_helper.from_array(np.array(10**15, np.int64), "trips"),
                                    numpy_helper.from_array(np.array(True), "keep")])
    return proto


def sparse_dense_shape() -> onnx.ModelProto:
    """A sparse initializer of one value declaring a dense shape of 4 TB, added to the output."""
    proto = padded_mlp()
    proto.graph.sparse_initializer.append(helper.make_sparse_tensor(
        numpy_helper.from_array(np.ones(1, np.float32), "bomb"), numpy_helper.from_array(np.zeros(1, np.int64), "bomb_i"),
        [HUGE, HUGE]))
    proto.graph.node[0].output[0] = "h"
    proto.graph.node.append(helper.make_node("Add", ["h", "bomb"], ["y"]))
    return proto


def _constant_int64(name: str, values: list[int]) -> TensorProto:
    return numpy_helper.from_array(np.array(values, np.int64), name)


def constant_of_shape() -> onnx.ModelProto:
    """ConstantOfShape([1e6, 1600]) added to the output: ONNX Runtime folds it when a session is made."""
    proto = padded_mlp()
    proto.graph.node[0].output[0] = "h"
    proto.graph.node.extend([helper.make_node("ConstantOfShape", ["bomb_shape"], ["bomb"],
                                              value=numpy_helper.from_array(np.ones(1, np.float32))),
                             helper.make_node("Add", ["h", "bomb"], ["y"])])
    proto.graph.initializer.append(_constant_int64("bomb_shape", [HUGE, SIDE]))
    return proto


def expand_shape() -> onnx.ModelProto:
    """The MatMul's output expanded to a constant shape [1e6, 1600] (depends on the input: not foldable)."""
    proto = padded_mlp()
    proto.graph.node[0].output[0] = "h"
    proto.graph.node.append(helper.make_node("Expand", ["h", "bomb_shape"], ["y"]))
    proto.graph.initializer.append(_constant_int64("bomb_shape", [HUGE, SIDE]))
    return proto


def range_length() -> onnx.ModelProto:
    """Range(0, 1e12, 1) cast to float and summed into the output."""
    proto = padded_mlp()
    proto.graph.node[0].output[0] = "h"
    proto.graph.node.extend([helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
                             helper.make_node("Cast", ["r"], ["rf"], to=TensorProto.FLOAT),
                             helper.make_node("ReduceSum", ["rf"], ["s"], keepdims=0),
                             helper.make_node("Add", ["h", "s"], ["y"])])
    proto.graph.initializer.extend([numpy_helper.from_array(np.array(v, np.int64), n)
                                    for n, v in (("start", 0), ("limit", 10**12), ("delta", 1))])
    return proto


def range_computed() -> onnx.ModelProto:
    """Range(0, 30000 * 30000, 1) (the limit a Mul of two constants: 7.2 GB) cast and summed into the output."""
    proto = range_length()
    proto.graph.node.insert(1, helper.make_node("Mul", ["factor", "factor"], ["limit"]))
    proto.graph.initializer.remove(next(t for t in proto.graph.initializer if t.name == "limit"))
    proto.graph.initializer.append(numpy_helper.from_array(np.array(30000, np.int64), "factor"))
    return proto


MODELS = {"huge_input_shape": huge_input_shape, "loop_trips": loop_trips, "sparse_dense_shape": sparse_dense_shape,
          "constant_of_shape": constant_of_shape, "expand_shape": expand_shape, "range_length": range_length, "range_computed": range_computed}


def npz_declared(path: Path, rows: int = HUGE) -> None:
    """An .npz whose member `x` declares `rows` x SIDE floats and holds 10 MB of them."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (rows, SIDE)}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    buffer.write(np.zeros((SIDE, SIDE), np.float32).tobytes())
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("x.npy", buffer.getvalue())


def npz_deflated(path: Path, rows: int = 200_000) -> None:
    """An .npz whose member `x` deflates from 1.2 MB to `rows` x SIDE zero floats (1.28 GB)."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (rows, SIDE)}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    info = zipfile.ZipInfo("x.npy")
    info.compress_type = zipfile.ZIP_DEFLATED
    chunk = bytes(SIDE * 4 * 1000)
    with zipfile.ZipFile(path, "w") as archive, archive.open(info, "w", force_zip64=True) as member:
        member.write(buffer.getvalue())
        for _ in range(rows // 1000):
            member.write(chunk)


DATA = {"npz_declared": npz_declared, "npz_deflated": npz_deflated}


def loop_if_heavy(depth: int = 12, loops: int = 3, trips: int = 1000) -> onnx.ModelProto:
    """A ~10 KB model within every bound: `loops` Loops of `trips` iterations in a chain, each body
    holding If nested `depth` deep (the limit), around a 16x16 MatMul weight."""
    rng = np.random.default_rng(5)

    def nested(level: int, value: str, prefix: str) -> onnx.GraphProto:
        out = f"{prefix}_o{level}"
        if level == 0:
            return helper.make_graph([helper.make_node("Relu", [value], [out])], f"{prefix}_leaf", [],
                                     [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])
        leaf = helper.make_graph([helper.make_node("Identity", [value], [f"{prefix}_e{level}"])], f"{prefix}_else{level}", [],
                                 [helper.make_tensor_value_info(f"{prefix}_e{level}", TensorProto.FLOAT, None)])
        return helper.make_graph([helper.make_node("If", ["flag"], [out], then_branch=nested(level - 1, value, prefix),
                                                   else_branch=leaf)], f"{prefix}_l{level}", [],
                                 [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])

    nodes = [helper.make_node("MatMul", ["x", "w"], ["h0"])]
    for index in range(loops):
        prefix = f"b{index}"
        # the body is nested 1 deep, its If's branches 2, their innermost `depth`
        branches = nested(depth - 2, f"{prefix}_acc", prefix)
        body = helper.make_graph(
            [helper.make_node("Identity", [f"{prefix}_c"], [f"{prefix}_c_out"]),
             helper.make_node("If", ["flag"], [f"{prefix}_acc_out"], then_branch=branches, else_branch=branches)],
            f"{prefix}_body",
            [helper.make_tensor_value_info(f"{prefix}_i", TensorProto.INT64, []),
             helper.make_tensor_value_info(f"{prefix}_c", TensorProto.BOOL, []),
             helper.make_tensor_value_info(f"{prefix}_acc", TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info(f"{prefix}_c_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info(f"{prefix}_acc_out", TensorProto.FLOAT, None)])
        nodes.append(helper.make_node("Loop", ["trips", "keep", f"h{index}"], [f"h{index + 1}"], body=body))
    nodes.append(helper.make_node("Identity", [f"h{loops}"], ["y"]))
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]),
                          helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
                  [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w"),
                   numpy_helper.from_array(np.array(trips, np.int64), "trips"), numpy_helper.from_array(np.array(True), "keep")])


DRIVER = """
import json, os, sys, tempfile
from onnxcomp.cli import main

results = []
for args in json.loads(sys.argv[1]):
    with tempfile.TemporaryFile() as err:
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)  # the command's child processes write here too
        try:
            code = main(args, isolate=True)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        results.append([code, err.read().decode(errors="replace")])
print(json.dumps(results))
"""


@dataclasses.dataclass
class Measured:
    """Commands run in one process: their exit codes and stderr, the largest peak RSS (bytes,
    VmHWM) of any process in its tree, sampled every 50 ms, the peak PSS of the tree, seconds."""

    returncodes: list[int]
    stderrs: list[str]
    peak_rss: int
    peak_tree_pss: int
    seconds: float
    cpu_seconds: float = 0.0
    timed_out: bool = False


def _tree(root: int) -> list[int]:
    """`root` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                ppid = int(handle.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, []))
    return found


def _proc_kib(pid: int, file: str, key: str) -> int:
    """A `key: N kB` line of /proc/PID/FILE, in bytes (0 when the process is gone)."""
    try:
        with open(f"/proc/{pid}/{file}") as handle:
            for line in handle:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _hwm(pid: int) -> int:
    """The process's peak resident set (VmHWM): its own memory's high-water mark. (`wait4`'s
    ru_maxrss is not: Linux carries the parent's peak over fork and exec, so a command started
    from a 1 GB test process reports at least 1 GB whatever it does.)"""
    return _proc_kib(pid, "status", "VmHWM:")


def _pss(pid: int) -> int:
    return _proc_kib(pid, "smaps_rollup", "Pss:")


def run_measured(commands: list[list[str]], timeout: float = 300, cwd: Path = REPO) -> Measured:
    """Run the CLI commands one after another in one fresh Python process, each as the `onnxcomp`
    program runs it (in its own child process); kill the process group after `timeout` s."""
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps([[str(a) for a in args] for args in commands])],
                                   stdout=stdout, stderr=stderr, cwd=cwd, start_new_session=True)
        peak_pss, peak_rss, done = [0], [0], threading.Event()

        def poll() -> None:
            while not done.wait(0.05):
                tree = _tree(process.pid)
                peak_pss[0] = max(peak_pss[0], sum(_pss(pid) for pid in tree))
                peak_rss[0] = max([peak_rss[0], *map(_hwm, tree)])

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        timer = threading.Timer(timeout, lambda: os.killpg(process.pid, signal.SIGKILL))
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
            done.set()
            poller.join()
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        stdout.seek(0)
        stderr.seek(0)
        lines = stdout.read().decode(errors="replace").strip().splitlines()
        driver_error = stderr.read().decode(errors="replace")
    timed_out = process.returncode == -signal.SIGKILL and seconds >= timeout
    try:
        results = json.loads(lines[-1])
    except (IndexError, ValueError):
        results = [[process.returncode, driver_error]]
    return Measured([code for code, _ in results], [text for _, text in results], peak_rss[0], peak_pss[0],
                    seconds, usage.ru_utime + usage.ru_stime, timed_out)


def command_line(command: str, model: Path, out: Path, data: Path | None = None) -> list[str]:
    """The command line of `command` on `model`, writing under `out` (a fresh folder)."""
    extra = ["--data", str(data), "--epochs", "0"] if data else []
    if command == "inspect":
        return ["inspect", model]
    if command == "compress":
        return ["compress", model, "--target-size", "2MB", "-o", out / "o.onnx", "-q", *extra]
    if command == "sweep":
        return ["sweep", model, "--targets", "2MB,1MB", "-o", out / "sweep", "-q", "--jobs", "1",
                *[e for e in extra if e not in ("--epochs", "0")]]
    assert command == "export-mobile"
    return ["export-mobile", model, "-o", out / "mobile"]


def write_case(name: str, folder: Path) -> tuple[Path, Path | None]:
    """(model, data or None) for a case, written into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / f"{name}.onnx"
    data = None
    if name in DATA:
        model.write_bytes(padded_mlp().SerializeToString())
        data = folder / f"{name}.npz"
        DATA[name](data)
    elif name == "loop_if_heavy":
        model.write_bytes(loop_if_heavy().SerializeToString())
    else:
        model.write_bytes(MODELS[name]().SerializeToString())
    return model, data


CASES = [*MODELS, *DATA]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "hostile.md"))
    parser.add_argument("--cases", default=",".join([*CASES, "loop_if_heavy"]))
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    rows = ["| case | files | command | exit | wall s | CPU s | message |", "|---|---|---|---|---|---|---|"]
    peaks = ["| case | commands | peak RSS, one process | peak PSS, process tree | seconds |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.cases.split(","):
            model, data = write_case(name, Path(scratch) / name)
            size = model.stat().st_size + (data.stat().st_size if data else 0)
            commands = ("compress", "sweep") if data else COMMANDS
            for command in commands:
                out = Path(scratch) / name / f"out-{command}"
                out.mkdir()
                result = run_measured([command_line(command, model, out, data)], timeout=args.timeout)
                message = next((line for line in result.stderrs[0].splitlines() if line.startswith("onnxcomp: error:")), "")
                rows.append(f"| {name} | {f'{size / 1e6:.1f} MB' if size >= 1e6 else f'{size / 1e3:.1f} KB'} | {command} | {'timeout' if result.timed_out else result.returncodes[0]} "
                            f"| {result.seconds:.1f} | {result.cpu_seconds:.1f} | {message[len('onnxcomp: error: '):][:110].replace('|', '/')} |")
                print(rows[-1], flush=True)
            out = Path(scratch) / name / "all"
            out.mkdir()
            result = run_measured([command_line(command, model, out, data) for command in commands], timeout=args.timeout)
            peaks.append(f"| {name} | {', '.join(commands)} | {result.peak_rss / 2**20:.0f} MiB | "
                         f"{result.peak_tree_pss / 2**20:.0f} MiB | {result.seconds:.1f} |")
            print(peaks[-1], flush=True)
    Path(args.out).write_text(
        "# Hostile inputs: exit code, time and peak memory per command\n\n"
        f"`python -m bench.hostile` on {time.strftime('%Y-%m-%d')} ({os.cpu_count()} cores, shared with other jobs: "
        "wall seconds are upper bounds; CPU seconds are the process's and its children's). Each command runs as the "
        "`onnxcomp` program does (in an isolated child process); the seconds include starting Python.\n\n" + "\n".join(rows) + "\n\nAll of a case's commands in one process, "
        "peak memory (`ru_maxrss` of it and every process it waited for; PSS of the tree polled every 50 ms):\n\n"
        + "\n".join(peaks) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
