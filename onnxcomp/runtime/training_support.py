"""Whether this environment can fine-tune, and if not, why - in one line a user can act on.

Fine-tuning runs on ONNX Runtime's training build, `onnxruntime-training-cpu` 1.19.2 (the last
release; its `onnxruntime.training` package imports torch). It has wheels for CPython 3.10-3.12
on Linux x86-64, macOS arm64 and Windows x64 only; `pyproject.toml`'s `train` extra installs it
exactly there (the same conditions as `training_build_has_wheels`) and the plain onnxruntime,
which cannot train, everywhere else. Everything but fine-tuning works on either.

``python -m onnxcomp.runtime.training_support`` prints what this environment fine-tunes with.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import platform
import sys

logger = logging.getLogger(__name__)

TRAINING_PACKAGE = "onnxruntime-training-cpu"
TRAINING_VERSION = "1.19.2"
# Oldest and newest CPython minor versions with training wheels (inclusive).
TRAINING_PYTHONS = ((3, 10), (3, 12))
# (sys.platform, platform.machine()) -> name, for the platforms with training wheels.
TRAINING_PLATFORMS = {
    ("linux", "x86_64"): "Linux x86-64",
    ("darwin", "arm64"): "macOS arm64",
    ("win32", "AMD64"): "Windows x64",
}
INSTEAD = "compress with --epochs 0 (calibration on --data) or without --data (data-free)"


@dataclasses.dataclass(frozen=True)
class Interpreter:
    """The parts of an environment that decide whether a training build exists for it.

    Attributes:
        python: (major, minor) version of CPython.
        sys_platform: `sys.platform` ("linux", "darwin", "win32", ...).
        machine: `platform.machine()` ("x86_64", "arm64", "AMD64", "aarch64", ...).
    """

    python: tuple[int, int]
    sys_platform: str
    machine: str

    @classmethod
    def current(cls) -> Interpreter:
        """The running interpreter."""
        return cls((sys.version_info.major, sys.version_info.minor), sys.platform, platform.machine())


def training_build_has_wheels(interpreter: Interpreter) -> bool:
    """Whether `onnxruntime-training-cpu` can be installed there (it has a wheel for it)."""
    oldest, newest = TRAINING_PYTHONS
    return oldest <= interpreter.python <= newest and (interpreter.sys_platform, interpreter.machine) in TRAINING_PLATFORMS


def import_training_api() -> None:
    """Import ONNX Runtime's training API; raises ImportError where it is not installed or does not load."""
    importlib.import_module("onnxruntime.training.api")


def unavailable_reason(interpreter: Interpreter | None = None) -> str | None:
    """Why fine-tuning cannot run in this environment (one line: why, and what works instead).

    Args:
        interpreter: the environment to explain for; default the running one.

    Returns:
        None when ONNX Runtime's training API imports, else the reason.
    """
    try:
        import_training_api()
    except ImportError as error:  # also a training build whose native part fails to load
        logger.debug("onnxruntime.training does not import: %s", error)
        return _reason(error, interpreter or Interpreter.current())
    return None


def _reason(error: ImportError, interpreter: Interpreter) -> str:
    if not training_build_has_wheels(interpreter):
        (oldest_major, oldest_minor), (_, newest_minor) = TRAINING_PYTHONS
        supported = (f"CPython {oldest_major}.{oldest_minor}-{oldest_major}.{newest_minor} on "
                     + ", ".join(TRAINING_PLATFORMS.values()))
        major, minor = interpreter.python
        where = platform_name(interpreter)
        return (f"fine-tuning needs ONNX Runtime's training build ({TRAINING_PACKAGE} {TRAINING_VERSION}, the last "
                f"release), which has no wheels for Python {major}.{minor} on {where} (only {supported}): "
                f"{INSTEAD}, or fine-tune under one of those Pythons")
    missing = error.name or ""
    if missing == "torch" or missing.startswith("torch."):
        return ("fine-tuning needs torch, which ONNX Runtime's training build imports: pip install 'onnxcomp[train]' "
                f"(or {INSTEAD})")
    installed = _plain_onnxruntime_version()
    if installed is not None:
        return (f"fine-tuning needs ONNX Runtime's training build, but this environment has the plain onnxruntime "
                f"{installed}: pip uninstall onnxruntime && pip install 'onnxcomp[train]' (or {INSTEAD})")
    return (f"fine-tuning needs ONNX Runtime's training build, which does not import here ({error}): "
            f"pip install 'onnxcomp[train]' (or {INSTEAD})")


def platform_name(interpreter: Interpreter) -> str:
    """A readable name for the interpreter's platform, e.g. "Linux aarch64"."""
    known = TRAINING_PLATFORMS.get((interpreter.sys_platform, interpreter.machine))
    if known is not None:
        return known
    system = {"linux": "Linux", "darwin": "macOS", "win32": "Windows"}.get(interpreter.sys_platform, interpreter.sys_platform)
    return f"{system} {interpreter.machine}"


def _plain_onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return getattr(onnxruntime, "__version__", "?")


def describe() -> str:
    """One line: which ONNX Runtime this environment has and whether it fine-tunes."""
    reason = unavailable_reason()
    if reason is None:
        import onnxruntime

        return f"fine-tuning: available (ONNX Runtime training build {onnxruntime.__version__})"
    return f"fine-tuning: not available - {reason}"


if __name__ == "__main__":
    print(describe())
