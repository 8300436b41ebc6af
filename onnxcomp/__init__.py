"""onnxcomp: an ONNX graph-level compression compiler.

Compressed models use only standard ONNX operators and run on stock ONNX Runtime: weights are
stored as short codes and rebuilt by small decode subgraphs that ONNX Runtime constant-folds
when the session is created.
"""

from __future__ import annotations

__version__ = "0.1.0"

import logging as _logging

# ONNX Runtime's training build imports torch with `import onnxruntime`, and torch's C++-extension
# module warns on every start where a CUDA toolkit is installed without a GPU ("No CUDA runtime is
# found, using CUDA_HOME=...") - a line on every command (and in every isolated child) about
# something onnxcomp never uses. Set before torch is imported; its other warnings are untouched.
_logging.getLogger("torch.utils.cpp_extension").setLevel(_logging.ERROR)


def _import_onnxruntime_without_torch() -> None:
    """Import ONNX Runtime without the training build's start-up import of torch.

    The training build's `import onnxruntime` validates its ORTModule (PyTorch training) by
    importing it, and with it torch: 790 MB of resident memory and ~5 s in every process that
    imports ONNX Runtime (the command, its isolated children), against 53 MB and 0.35 s without.
    onnxcomp never uses ORTModule; the validation treats an ImportError as "not installed" and goes
    on. The block is lifted right after, so fine-tuning (`onnxruntime.training.api`, which imports
    torch itself when it is used) works as before."""
    import sys

    blocked = "onnxruntime.training.ortmodule"
    if "onnxruntime" in sys.modules or blocked in sys.modules:
        return
    sys.modules[blocked] = None  # type: ignore[assignment]  # makes `import` raise ImportError
    try:
        import onnxruntime  # noqa: F401
    except ImportError:  # no ONNX Runtime: the commands that need it say so
        pass
    finally:
        if sys.modules.get(blocked, 0) is None:
            del sys.modules[blocked]


_import_onnxruntime_without_torch()
