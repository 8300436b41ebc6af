"""The old name of `onnxcomp.modelfile`, which shadowed the standard library's `io`.

Kept while `onnxcomp/sensitivity.py` still imports `to_proto` from here, and for code written
against the earlier `from onnxcomp.io import load_model, save_model`; import from
`onnxcomp.modelfile` instead.
"""

from __future__ import annotations

from onnxcomp.modelfile import load_model, save_model, to_proto

__all__ = ["load_model", "save_model", "to_proto"]
