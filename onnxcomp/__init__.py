"""onnxcomp: an ONNX graph-level compression compiler.

Compressed models use only standard ONNX operators and run on stock ONNX Runtime: weights are
stored as short codes and rebuilt by small decode subgraphs that ONNX Runtime constant-folds
when the session is created.
"""

from __future__ import annotations

__version__ = "0.1.0"
