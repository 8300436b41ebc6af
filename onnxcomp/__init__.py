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
