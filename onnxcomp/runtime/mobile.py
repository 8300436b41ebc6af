"""ONNX Runtime mobile export: an ORT-format `.ort` model plus `required_operators.config`.

The conversion is the one `python -m onnxruntime.tools.convert_onnx_models_to_ort` performs
(optimization style "Fixed", level "all", NCHWc transformer off, QDQ int8 off), run in-process
so that the outputs can be staged and renamed into place. The converter optimizes the graph
before saving, which constant-folds onnxcomp's decode subgraphs: the `.ort` holds dense float
weights, so it is as fast as the original but not small. `export_mobile` reports both files'
bytes, load time and latency side by side, and checks every operator against the operator
set of ONNX Runtime's pre-built mobile package.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from onnxcomp import io
from onnxcomp.data import generate_samples
from onnxcomp.errors import OnnxcompError
from onnxcomp.runtime.inference import _ort

logger = logging.getLogger(__name__)

CONFIG_NAME = "required_operators.config"
DEFAULT_DOMAIN = "ai.onnx"


@dataclasses.dataclass
class PackageCheck:
    """A model's operators checked against the pre-built mobile package's operator config.

    ONNX Runtime registers one kernel per operator version ("since version"), so an op is
    supported when the package holds the same version of it. `unsupported` lists
    `domain:version:op` for the ops it does not hold. `opset_supported` is the separate,
    stricter test of ONNX Runtime's own checker (`check_onnx_model_mobile_usability`): whether
    the model's opset is one the package was built for.
    """

    opset: int
    package_opsets: list[int]
    opset_supported: bool
    unsupported: list[str]

    @property
    def ok(self) -> bool:
        return self.opset_supported and not self.unsupported


@dataclasses.dataclass
class Timing:
    """Median session-creation time and median single-batch latency, in seconds."""

    load_s: float
    run_s: float


@dataclasses.dataclass
class MobileExport:
    onnx_path: Path
    ort_path: Path
    config_path: Path
    onnx_bytes: int
    ort_bytes: int
    required_ops: dict[str, dict[int, list[str]]]  # domain -> opset -> ops, from the config
    onnx_check: PackageCheck
    ort_check: PackageCheck
    onnx_timing: Timing | None = None
    ort_timing: Timing | None = None
    max_abs_diff: float | None = None  # .ort vs .onnx outputs on seeded inputs

    def as_dict(self) -> dict:
        result = dataclasses.asdict(self)
        for key in ("onnx_path", "ort_path", "config_path"):
            result[key] = str(result[key])
        return result


def _session_options(threads: int | None = 1):
    ort = _ort()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return options


def convert_to_ort(model_path: str | os.PathLike, ort_path: str | os.PathLike) -> None:
    """Write `model_path` as an ORT-format model, exactly as ONNX Runtime's converter would."""
    ort = _ort()
    options = _session_options(threads=None)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(ort_path)
    options.add_session_config_entry("session.save_model_format", "ORT")
    options.add_session_config_entry("session.qdqisint8allowed", "0")
    try:
        # NCHWc makes x86-specific graphs; the converter leaves it out unless targeting amd64.
        ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"],
                             disabled_optimizers=["NchwcTransformer"])
    except Exception as error:  # ORT raises its own exception types per build
        raise OnnxcompError(f"ONNX Runtime cannot convert {model_path} to ORT format: {_first_line(error)}") from None
    if not Path(ort_path).is_file():
        raise OnnxcompError(f"ONNX Runtime wrote no ORT-format model for {model_path}")


def write_operators_config(ort_paths: list[Path], config_path: Path) -> dict[str, dict[int, list[str]]]:
    """Write the reduced-build operator config for the given .ort models; return its contents."""
    from onnxruntime.tools.ort_format_model import create_config_from_models

    # ORT's tools log an INFO line per config through their own handler; keep the CLI quiet.
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    create_config_from_models(ort_paths, config_path, enable_type_reduction=False)
    return read_operators_config(config_path)


def read_operators_config(config_path: Path) -> dict[str, dict[int, list[str]]]:
    from onnxruntime.tools.reduced_build_config_parser import parse_config

    required, _ = parse_config(str(config_path), enable_type_reduction=False)
    return {domain: {opset: sorted(ops) for opset, ops in sorted(by_opset.items())} for domain, by_opset in required.items()}


def package_config_path() -> Path:
    """The operator config ONNX Runtime's pre-built mobile package was built with (ships with ORT)."""
    from onnxruntime.tools.mobile_helpers.check_model_can_use_ort_mobile_pkg import get_default_config_path

    return Path(get_default_config_path())


def _since_version(domain: str, op: str, opset: int) -> int | None:
    """The version of `op` in effect at `opset` (what ORT kernels are registered by)."""
    try:
        return onnx.defs.get_schema(op, opset, "" if domain == DEFAULT_DOMAIN else domain).since_version
    except Exception:  # no ONNX schema: ORT-internal or contrib op; its listed opset is its version
        return None


def check_ops(used: dict[str, dict[int, set[str]]], opset: int,
              package: dict[str, dict[int, list[str]]] | None = None) -> PackageCheck:
    """Check ops used (domain -> op version -> op types) against the mobile package's operators.

    `opset` is the model's ai.onnx opset. Versions in `used` may be opsets or since-versions:
    both map to the same kernel version.
    """
    if package is None:
        package = read_operators_config(package_config_path())
    # ORT's checker drops this entry: a contrib op registered under ai.onnx opset 1.
    package_opsets = sorted(o for o in package.get(DEFAULT_DOMAIN, {}) if o != 1)
    unsupported = set()
    for domain, by_version in used.items():
        available = package.get(domain, {})
        for version, ops in by_version.items():
            for op in ops:
                needed = _since_version(domain, op, version) or version
                held = {(_since_version(domain, op, o) or o) for o, listed in available.items() if op in listed}
                if needed not in held:
                    unsupported.add(f"{domain}:{needed}:{op}")
    return PackageCheck(opset, package_opsets, opset in package_opsets, sorted(unsupported))


def model_opset(proto: onnx.ModelProto) -> int:
    return next((entry.version for entry in proto.opset_import if entry.domain in ("", DEFAULT_DOMAIN)), 0)


def onnx_ops(proto: onnx.ModelProto) -> dict[str, dict[int, set[str]]]:
    """domain -> opset -> op types used by a model (subgraphs included; Constant is folded at load)."""
    opsets = {(entry.domain or DEFAULT_DOMAIN): entry.version for entry in proto.opset_import}
    used: dict[str, dict[int, set[str]]] = {}

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            domain = node.domain or DEFAULT_DOMAIN
            if not (domain == DEFAULT_DOMAIN and node.op_type == "Constant"):
                used.setdefault(domain, {}).setdefault(opsets.get(domain, 1), set()).add(node.op_type)
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    walk(attribute.g)
                for subgraph in attribute.graphs:
                    walk(subgraph)

    walk(proto.graph)
    return used


def measure(paths: list[Path], feeds: dict[str, np.ndarray], loads: int = 3, runs: int = 50) -> list[Timing]:
    """Median load (session creation) and run time of each model, interleaved so that both see
    the same machine load. One intra-op thread, as on a phone's app thread."""
    ort = _ort()
    load_times: list[list[float]] = [[] for _ in paths]
    sessions = [None] * len(paths)
    for _ in range(loads):
        for index, path in enumerate(paths):
            started = time.perf_counter()
            sessions[index] = ort.InferenceSession(str(path), _session_options(), providers=["CPUExecutionProvider"])
            load_times[index].append(time.perf_counter() - started)
    run_times: list[list[float]] = [[] for _ in paths]
    for sess in sessions:
        sess.run(None, feeds)  # warm-up
    for _ in range(runs):
        for index, sess in enumerate(sessions):
            started = time.perf_counter()
            sess.run(None, feeds)
            run_times[index].append(time.perf_counter() - started)
    return [Timing(statistics.median(lt), statistics.median(rt)) for lt, rt in zip(load_times, run_times)]


def compare_outputs(onnx_path: Path, ort_path: Path, feeds: dict[str, np.ndarray]) -> float:
    """Largest absolute difference between the two models' outputs on the same inputs."""
    ort = _ort()
    results = []
    for path in (onnx_path, ort_path):
        try:
            sess = ort.InferenceSession(str(path), _session_options(threads=None), providers=["CPUExecutionProvider"])
            results.append(sess.run(None, feeds))
        except Exception as error:
            raise OnnxcompError(f"ONNX Runtime cannot run {path}: {_first_line(error)}") from None
    diff = 0.0
    for expected, actual in zip(*results):
        expected, actual = np.asarray(expected), np.asarray(actual)
        if expected.shape != actual.shape:
            raise OnnxcompError(f"{ort_path} gives outputs of shape {actual.shape}, the .onnx {expected.shape}")
        if expected.size:
            diff = max(diff, float(np.max(np.abs(expected.astype(np.float64) - actual.astype(np.float64)))))
    return diff


def export_mobile(model_path: str | os.PathLike, output_dir: str | os.PathLike, *, overwrite: bool = False,
                  measure_speed: bool = True, seed: int = 0) -> MobileExport:
    """Write `<stem>.onnx` (a copy of the input), `<stem>.ort` and `required_operators.config` into
    `output_dir`.

    The input is only read. Everything is staged in a temporary folder inside `output_dir` and
    renamed into place, so each output appears whole or not at all. With `measure_speed`, the
    .onnx and .ort are loaded and run side by side on seeded inputs (batch 1).
    """
    model_path = Path(model_path)
    output_dir = Path(output_dir)
    model = io.load_model(model_path)  # clean one-line errors for missing / non-ONNX files
    proto = onnx.load(str(model_path), load_external_data=False)
    if output_dir.exists() and not output_dir.is_dir():
        raise OnnxcompError(f"{output_dir} exists and is not a folder")
    if not output_dir.exists():
        if not output_dir.parent.is_dir():
            raise OnnxcompError(f"output folder {output_dir.parent} does not exist")
        output_dir.mkdir()
    stem = model_path.name[: -len(".onnx")] if model_path.name.lower().endswith(".onnx") else model_path.name
    onnx_out, ort_out, config_out = output_dir / f"{stem}.onnx", output_dir / f"{stem}.ort", output_dir / CONFIG_NAME
    copy_onnx = not (onnx_out.exists() and onnx_out.resolve() == model_path.resolve())
    if copy_onnx and io.file_bytes(model_path) != model_path.stat().st_size:
        raise OnnxcompError(f"{model_path} keeps weights in external data; export-mobile needs a single-file model")
    targets = [ort_out, config_out] + ([onnx_out] if copy_onnx else [])
    existing = [str(path) for path in targets if path.exists()]
    if existing and not overwrite:
        raise OnnxcompError(f"{', '.join(existing)} exist(s); pass --force to overwrite")

    feeds = generate_samples(model, count=1, seed=seed).inputs
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".onnxcomp-") as staging:
        staged_ort = Path(staging) / ort_out.name
        staged_config = Path(staging) / CONFIG_NAME
        convert_to_ort(model_path, staged_ort)
        try:
            required_ops = write_operators_config([staged_ort], staged_config)
        except Exception as error:
            raise OnnxcompError(f"cannot read the operators of the ORT-format model: {_first_line(error)}") from None
        # The config's header names the models it came from: name the final path, not the staging one.
        staged_config.write_text(staged_config.read_text().replace(str(staged_ort), str(ort_out)))
        max_abs_diff = compare_outputs(model_path, staged_ort, feeds)
        timings = measure([model_path, staged_ort], feeds) if measure_speed else [None, None]
        if copy_onnx:
            staged_onnx = Path(staging) / onnx_out.name
            shutil.copyfile(model_path, staged_onnx)
            os.replace(staged_onnx, onnx_out)
        os.replace(staged_ort, ort_out)
        os.replace(staged_config, config_out)

    package = read_operators_config(package_config_path())
    ort_used = {domain: {opset: set(ops) for opset, ops in by_opset.items()} for domain, by_opset in required_ops.items()}
    return MobileExport(
        onnx_path=onnx_out if copy_onnx else model_path,
        ort_path=ort_out,
        config_path=config_out,
        onnx_bytes=model_path.stat().st_size,
        ort_bytes=ort_out.stat().st_size,
        required_ops=required_ops,
        onnx_check=check_ops(onnx_ops(proto), model_opset(proto), package),
        ort_check=check_ops(ort_used, model_opset(proto), package),
        onnx_timing=timings[0],
        ort_timing=timings[1],
        max_abs_diff=max_abs_diff,
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
