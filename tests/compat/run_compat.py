"""Re-run the compressed models the test suite saved (tests/compat/collect.py) in whichever
onnxruntime this interpreter has - `make test` uses `.venv-ort`, the latest plain onnxruntime -
and compare with the outputs of the onnxruntime that produced them (1.19.2, the training build).

    .venv-ort/bin/python tests/compat/run_compat.py out/compat

Needs only numpy and onnxruntime. Exit 0 when every model loads and matches, 1 otherwise
(also when the folder holds no models: the collection step did not run).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

RTOL = 1e-3
ATOL = 1e-4  # scaled by the output's magnitude: kernels differ between versions in summation order
# Models that quantize activations (collect.py's `quantizes_activations`): versions fuse them into
# different integer kernels, rounding differently by up to a quantization step - an uncompressed
# QDQ MLP differs by 0.0129 on magnitude 3.6 (0.36%) between 1.19.2 and 1.32.0.
QUANTIZED_ATOL = 1e-2


def _runnable(array: np.ndarray) -> np.ndarray:
    return array.astype(object) if array.dtype.kind == "U" else array


CONTRIB = "ai.onnx.contrib"  # onnxruntime-extensions' operators (a tokenizer inside the model)


def check(onnx_path: Path, ort, atol: float = ATOL) -> tuple[bool | None, float, str]:
    """(matches, max abs diff, message) for one saved model; `atol` is scaled by each output's
    magnitude. matches is None (skipped) for a model with onnxruntime-extensions operators where
    this interpreter does not have that package."""
    arrays = np.load(onnx_path.with_suffix(".npz"))
    # string tensors are saved as unicode arrays (collect.py); ONNX Runtime takes and gives objects
    inputs = {key[3:]: _runnable(arrays[key]) for key in arrays.files if key.startswith("in:")}
    expected = {key[4:]: arrays[key] for key in arrays.files if key.startswith("out:")}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if CONTRIB.encode() in onnx_path.read_bytes():
        try:
            from onnxruntime_extensions import get_library_path
        except ImportError:
            return None, float("nan"), "skipped: needs onnxruntime-extensions"
        options.register_custom_ops_library(get_library_path())
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        actual = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
    except Exception as error:  # noqa: BLE001 - any failure to load or run is the finding
        return False, float("nan"), f"cannot load/run: {str(error).strip().splitlines()[0][:300]}"
    worst = 0.0
    for name, reference in expected.items():
        if name not in actual:
            return False, float("nan"), f"output {name!r} missing"
        result = np.asarray(actual[name])
        if reference.dtype.kind == "U":
            if result.shape != reference.shape or not np.array_equal(result.astype(str), reference):
                return False, float("nan"), f"output {name!r} differs (string output)"
            continue
        if result.shape != reference.shape or result.dtype != reference.dtype:
            return False, float("nan"), f"output {name!r}: {result.dtype}{result.shape} vs saved {reference.dtype}{reference.shape}"
        if reference.size == 0:
            continue
        result64, reference64 = result.astype(np.float64), reference.astype(np.float64)
        finite = np.isfinite(reference64)
        # Non-finite outputs (e.g. from models with huge weights) must match exactly, position by
        # position; the tolerance applies to the finite ones and scales with their magnitude only.
        if not np.array_equal(np.isnan(result64), np.isnan(reference64)) or \
                not np.array_equal(result64[np.isinf(reference64)], reference64[np.isinf(reference64)]):
            return False, float("nan"), f"output {name!r}: NaN/inf pattern differs"
        if not finite.any():
            continue
        diff = float(np.max(np.abs(result64[finite] - reference64[finite])))
        worst = max(worst, diff)
        scale = max(1.0, float(np.max(np.abs(reference64[finite]))))
        if reference.dtype.kind != "f":
            if diff != 0:
                return False, diff, f"output {name!r} differs (integer output)"
        elif not np.allclose(result64[finite], reference64[finite], rtol=RTOL, atol=atol * scale):
            return False, diff, f"output {name!r} differs: max abs diff {diff:.3g}"
    return True, worst, "ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder written by the test suite with ONNXCOMP_COMPAT_DIR")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per model")
    args = parser.parse_args(argv)
    import onnxruntime as ort

    started = time.perf_counter()
    entries = sorted(args.folder.glob("*.json")) if args.folder.is_dir() else []
    if not entries:
        print(f"compat: no saved models in {args.folder} (run the test suite with ONNXCOMP_COMPAT_DIR={args.folder})",
              file=sys.stderr)
        return 1
    failures, skipped = [], []
    worst = 0.0
    produced_by = set()
    for entry in entries:
        info = json.loads(entry.read_text())
        produced_by.add(info.get("onnxruntime", "?"))
        ok, diff, message = check(entry.with_suffix(".onnx"), ort,
                                  QUANTIZED_ATOL if info.get("quantizes_activations") else ATOL)
        if ok is None:
            skipped.append(entry.stem)
            continue
        if diff == diff:  # not NaN
            worst = max(worst, diff)
        if args.verbose or not ok:
            print(f"  {'ok  ' if ok else 'FAIL'} {entry.stem} {info.get('bytes', 0):>9,} B  max abs diff {diff:.3g}  "
                  f"{message if not ok else ''} [{info.get('test', '')}]")
        if not ok:
            failures.append(entry.stem)
    checked = len(entries) - len(skipped)
    extra = f"; {len(skipped)} skipped (their onnxruntime-extensions operators: not installed here)" if skipped else ""
    print(f"compat: {checked - len(failures)}/{checked} compressed models match in onnxruntime {ort.__version__} "
          f"(saved with {', '.join(sorted(produced_by))}); max abs diff {worst:.3g}{extra}; {time.perf_counter() - started:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
