"""ONNX Runtime mobile export: an ORT-format `.ort` model plus `required_operators.config`.

The conversion is the one `python -m onnxruntime.tools.convert_onnx_models_to_ort` performs
(optimization style "Fixed", level "all", NCHWc transformer off, QDQ int8 off), run in-process
so that the outputs can be staged and renamed into place. The converter optimizes the graph
before saving, which constant-folds onnxcomp's decode subgraphs: converted as it is, the `.ort`
holds dense float weights (as fast as the original, not small).

So before converting, `export_mobile` evaluates every weight's decode subgraph (as `inspect`
does) and stores each decoded weight for the `.ort` in the smaller of two forms that ONNX
Runtime runs at dense speed: a plain float initializer, or a COO `sparse_initializer` (float
values + flat indices). ONNX Runtime densifies sparse initializers when it loads a model and
re-sparsifies them when it saves ORT format, with the narrowest index type that holds the
largest index (int8, int16, int32, else int64), so a weight costs about `nnz * (4 + index
bytes)` bytes sparse against `4 * size` dense. The default (`ort_weights="auto"`) also converts
the model as it is and keeps the smaller `.ort` of the two whose outputs match the `.onnx`.

`ort_weights="packed"` saves the `.ort` with graph optimizations disabled instead: the decode
subgraphs stay in it, so it is about the `.onnx`'s size, but ONNX Runtime does not constant-fold
an ORT-format model when it loads one (full builds skip those optimizers for ORT format, minimal
builds have none), so every run decodes the weights (LeNet-5 at 1/10: 186 KB instead of 1.73 MB,
~10x slower per batch-1 run). It suits a minimal (ORT-format-only) build where the app's
download size matters; a full onnxruntime-android/iOS package is better served by the `.onnx`,
which it folds once at load.

`export_mobile` reports the files' bytes, load time and latency side by side, and checks every
operator against the operator set of ONNX Runtime's reduced-operator ("pre-built")
`onnxruntime-mobile` package where the installed onnxruntime still ships that package's operator
list. That package ended with ONNX Runtime 1.18; today's pre-built Android and iOS packages
(`onnxruntime-android`, `onnxruntime-c`/`onnxruntime-objc`) are full builds that run every
operator, so the check concerns only that old package. 1.19 still ships the list, later releases
(1.32) do not, and there the check is left out (`MobileExport.onnx_check` is None) and the CLI
says why.
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

from onnxcomp import modelfile
from onnxcomp.errors import OnnxcompError
from onnxcomp.samples.generated import generate_samples
from onnxcomp.outputs import Output, check_new_folder, check_outputs, folder_removed_on_failure, input_files, same_file
from onnxcomp.runtime.inference import _ort
from onnxcomp.runtime.mobile_ops import (  # noqa: F401  (the names the CLI and tests import from here: re-exported)
    BUILD_ADVICE,
    NO_PACKAGE_CHECK,
    PACKAGE_NAME,
    PACKAGE_SCOPE,
    PackageCheck,
    check_ops,
    model_opset,
    onnx_ops,
    ort_version,
    package_config_path,
    package_operators,
    read_operators_config,
    write_operators_config,
)
from onnxcomp.runtime.mobile_weights import ORT_WEIGHTS, ort_ready_model, sparse_form_bytes  # noqa: F401  (re-exported)

logger = logging.getLogger(__name__)

CONFIG_NAME = "required_operators.config"


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
    onnx_check: PackageCheck | None  # None: this onnxruntime ships no reduced mobile package operator list
    ort_check: PackageCheck | None
    onnx_timing: Timing | None = None
    ort_timing: Timing | None = None
    max_abs_diff: float | None = None  # .ort vs .onnx outputs on seeded inputs
    ort_weights: str = "dense"  # how the written .ort stores weights: "dense", "sparse" (some sparse_initializers)
    # or "packed" (decode subgraphs kept: decoded on every run)
    weights: list[dict] = dataclasses.field(default_factory=list)  # per decoded weight: the form chosen for the .ort
    dense_ort_bytes: int | None = None  # the .ort converted from the model as it is (decode folded to dense)
    dense_ort_timing: Timing | None = None
    dense_max_abs_diff: float | None = None

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


def convert_to_ort(model_path: str | os.PathLike, ort_path: str | os.PathLike, *, optimize: bool = True) -> None:
    """Write `model_path` as an ORT-format model.

    With `optimize` (default), exactly as ONNX Runtime's converter would: graph optimizations on,
    so decode subgraphs are folded into dense weights. Without, the graph is saved as it is
    (decode subgraphs kept; ORT does not fold them when it loads the .ort).
    """
    ort = _ort()
    options = _session_options(threads=None)
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.optimized_model_filepath = str(ort_path)
    options.add_session_config_entry("session.save_model_format", "ORT")
    options.add_session_config_entry("session.qdqisint8allowed", "0")
    try:
        # NCHWc makes x86-specific graphs; the converter leaves it out unless targeting amd64.
        ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"],
                             disabled_optimizers=["NchwcTransformer"])
    except Exception as error:  # ORT raises its own exception types per build
        raise OnnxcompError(f"ONNX Runtime cannot convert {model_path} to ORT format: {_ort_error(error)}") from None
    if not Path(ort_path).is_file():
        raise OnnxcompError(f"ONNX Runtime wrote no ORT-format model for {model_path}")


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


def run_file(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of the .onnx or .ort file at `path` on `feeds` (CPU); an OnnxcompError naming the file when it does not run."""
    ort = _ort()
    try:
        sess = ort.InferenceSession(str(path), _session_options(threads=None), providers=["CPUExecutionProvider"])
        return [np.asarray(result) for result in sess.run(None, feeds)]
    except Exception as error:
        raise OnnxcompError(f"ONNX Runtime cannot run {path}: {_ort_error(error)}") from None


def _max_diff(expected: list[np.ndarray], actual: list[np.ndarray], path: Path) -> float:
    diff = 0.0
    for e, a in zip(expected, actual):
        if e.shape != a.shape:
            raise OnnxcompError(f"{path} gives outputs of shape {a.shape}, the .onnx {e.shape}")
        if e.size and np.issubdtype(e.dtype, np.number):
            diff = max(diff, float(np.max(np.abs(e.astype(np.float64) - a.astype(np.float64)))))
    return diff


def _output_scale(outputs: list[np.ndarray]) -> float:
    return max((float(np.max(np.abs(o.astype(np.float64)))) for o in outputs if o.size and np.issubdtype(o.dtype, np.number)), default=0.0)


def export_mobile(model_path: str | os.PathLike, output_dir: str | os.PathLike, *, overwrite: bool = False,
                  measure_speed: bool = True, seed: int = 0, ort_weights: str = "auto") -> MobileExport:
    """Write `<stem>.onnx` (a copy of the input), `<stem>.ort` and `required_operators.config` into
    `output_dir`.

    `ort_weights`: "sparse" converts the model rewritten by `ort_ready_model` (decoded weights,
    sparse ones as `sparse_initializer`); "dense" converts the model as it is (the converter
    folds the decode subgraphs into dense weights); "auto" (default) makes both and keeps the
    smaller whose outputs match the .onnx (the dense one is kept when no weight is sparse enough);
    "packed" saves the model as it is with graph optimizations off: decode subgraphs kept (about
    the .onnx's size), decoded on every run.

    The input is only read. Everything is staged in a temporary folder inside `output_dir` and
    renamed into place, so each output appears whole or not at all. With `measure_speed`, the
    .onnx and .ort (and in "auto" mode the dense .ort) are loaded and run side by side on seeded
    inputs (batch 1).
    """
    if ort_weights not in ORT_WEIGHTS:
        raise OnnxcompError(f"ort_weights must be one of {', '.join(ORT_WEIGHTS)}, not {ort_weights!r}")
    model_path = Path(model_path)
    output_dir = Path(output_dir)
    model = modelfile.load_model(model_path)  # clean one-line errors for missing / non-ONNX files
    proto = onnx.load(str(model_path), load_external_data=False)
    check_new_folder(output_dir, "the output folder")  # created only once the work starts; removed if it fails
    stem = model_path.name[: -len(".onnx")] if model_path.name.lower().endswith(".onnx") else model_path.name
    onnx_out, ort_out, config_out = output_dir / f"{stem}.onnx", output_dir / f"{stem}.ort", output_dir / CONFIG_NAME
    copy_onnx = not same_file(onnx_out, model_path)  # exporting into the model's own folder: no copy
    if copy_onnx and modelfile.file_bytes(model_path) != model_path.stat().st_size:
        raise OnnxcompError(f"{model_path} keeps weights in external data; export-mobile needs a single-file model")
    targets = [ort_out, config_out] + ([onnx_out] if copy_onnx else [])
    existing = [str(path) for path in targets if path.exists()]
    if existing and not overwrite:
        raise OnnxcompError(f"{', '.join(existing)} exist(s); pass --force to overwrite")
    check_outputs([Output(path, path.name, overwrite=True, folder_later=True) for path in targets], input_files(model_path))

    feeds = generate_samples(model, count=1, seed=seed).inputs
    with (folder_removed_on_failure(output_dir, "the output folder"),
          tempfile.TemporaryDirectory(dir=output_dir, prefix=".onnxcomp-") as staging):
        staged_config = Path(staging) / CONFIG_NAME
        reference = run_file(model_path, feeds)
        dense_ort = sparse_ort = packed_ort = None
        weights: list[dict] = []
        if ort_weights == "packed":
            packed_ort = Path(staging) / "packed" / ort_out.name
            packed_ort.parent.mkdir()
            convert_to_ort(model_path, packed_ort, optimize=False)
        if ort_weights in ("auto", "dense"):
            dense_ort = Path(staging) / "dense" / ort_out.name
            dense_ort.parent.mkdir()
            convert_to_ort(model_path, dense_ort)
        if ort_weights in ("auto", "sparse"):
            rewritten, weights = ort_ready_model(model_path)
            if ort_weights == "sparse" or any(row["form"] == "sparse" for row in weights):
                staged_input = Path(staging) / f"{stem}.ort-input.onnx"
                staged_input.write_bytes(rewritten.SerializeToString())
                sparse_ort = Path(staging) / "sparse" / ort_out.name
                sparse_ort.parent.mkdir()
                convert_to_ort(staged_input, sparse_ort)
        dense_diff = _max_diff(reference, run_file(dense_ort, feeds), dense_ort) if dense_ort else None
        sparse_diff = _max_diff(reference, run_file(sparse_ort, feeds), sparse_ort) if sparse_ort else None
        packed_diff = _max_diff(reference, run_file(packed_ort, feeds), packed_ort) if packed_ort else None
        staged_ort, chosen = ((packed_ort, "packed") if packed_ort else (sparse_ort, "sparse") if sparse_ort
                              else (dense_ort, "dense"))
        if sparse_ort and dense_ort:
            # Same weight values either way: the sparse .ort must match the .onnx as closely as the
            # dense one does, up to float rounding (optimizers may fuse differently).
            tolerance = max(dense_diff, 1e-5 * max(1.0, _output_scale(reference)))
            if sparse_diff > tolerance:
                logger.warning("the .ort with sparse initializers differs from the .onnx by %.3g (dense: %.3g): "
                               "keeping the dense .ort", sparse_diff, dense_diff)
                staged_ort, chosen = dense_ort, "dense"
            elif sparse_ort.stat().st_size >= dense_ort.stat().st_size:
                staged_ort, chosen = dense_ort, "dense"
        try:
            required_ops = write_operators_config([staged_ort], staged_config)
        except Exception as error:
            raise OnnxcompError(f"cannot read the operators of the ORT-format model: {_ort_error(error)}") from None
        # The config's header names the models it came from: name the final path, not the staging one.
        staged_config.write_text(staged_config.read_text().replace(str(staged_ort), str(ort_out)))
        max_abs_diff = {"packed": packed_diff, "sparse": sparse_diff, "dense": dense_diff}[chosen]
        timed = [model_path, staged_ort] + ([dense_ort] if dense_ort and staged_ort != dense_ort else [])
        timings = measure(timed, feeds) if measure_speed else [None] * len(timed)
        dense_ort_bytes = dense_ort.stat().st_size if dense_ort else None
        if copy_onnx:
            staged_onnx = Path(staging) / onnx_out.name
            shutil.copyfile(model_path, staged_onnx)
            os.replace(staged_onnx, onnx_out)
        os.replace(staged_ort, ort_out)
        os.replace(staged_config, config_out)

    package = package_operators()
    ort_used = {domain: {opset: set(ops) for opset, ops in by_opset.items()} for domain, by_opset in required_ops.items()}
    return MobileExport(
        onnx_path=onnx_out if copy_onnx else model_path,
        ort_path=ort_out,
        config_path=config_out,
        onnx_bytes=model_path.stat().st_size,
        ort_bytes=ort_out.stat().st_size,
        required_ops=required_ops,
        onnx_check=check_ops(onnx_ops(proto), model_opset(proto), package) if package is not None else None,
        ort_check=check_ops(ort_used, model_opset(proto), package) if package is not None else None,
        onnx_timing=timings[0],
        ort_timing=timings[1],
        max_abs_diff=max_abs_diff,
        ort_weights=chosen,
        weights=weights,
        dense_ort_bytes=dense_ort_bytes,
        dense_ort_timing=timings[2] if len(timings) > 2 else (timings[1] if chosen == "dense" else None),
        dense_max_abs_diff=dense_diff,
    )


def _ort_error(error: BaseException) -> str:
    from onnxcomp.runtime.inference import describe_error

    return describe_error(error)  # whole, on one line: ORT puts the cause at the end
