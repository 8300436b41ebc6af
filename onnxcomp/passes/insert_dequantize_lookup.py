"""InsertDequantizeLookupPass: store clustered weights as bit-packed codes plus a codebook."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxcomp import encoding
from onnxcomp.decode import DECODE_OPSET, DecodeBuilder
from onnxcomp.passes._stats import StatsPassResult
from onnxcomp.weights import find_weights

logger = logging.getLogger(__name__)


def ensure_opset(model: ir.Model, version: int) -> None:
    """Raise the default-domain opset to `version` if lower (decode ops need opset 11)."""
    current = model.opset_imports.get("", 1)
    if current < version:
        model.opset_imports[""] = version


class InsertDequantizeLookupPass(ir.passes.InPlacePass):
    """Replace each weight with few distinct values by packed codes and a decode subgraph.

    Codes of 1-8 bits are packed into uint8/uint32/uint64 words (whichever is smallest) and
    decoded with BitShift(LEFT) -> BitShift(RIGHT) -> Cast(INT32) -> Gather(codebook) -> Reshape, or, for a
    uniform codebook, Cast(FLOAT) -> Sub(zero) -> Mul(scale) -> Reshape. The decoded tensor is
    bit-identical to the weight (linear form: within float rounding). Every consumer of the
    weight is rewired to the decoded value; graph inputs and outputs are untouched. A weight is
    only replaced when the encoding is smaller than storing it dense. Weights with more than 256
    distinct values are skipped (cluster them first). Needs opset >= 11.
    """

    def call(self, model: ir.Model) -> StatsPassResult:
        builder = DecodeBuilder(model.graph)
        rows = []
        for weight in find_weights(model):
            values = weight.numpy().astype(np.float32)
            choices = encoding.encoding_choices(values)
            options = [choices[k] for k in ("lookup", "linear") if k in choices]
            if not options:
                logger.debug("%s: %s has too many distinct values to encode", weight.name, weight.shape)
                continue
            choice = min(options, key=lambda c: c.bytes)
            if choice.bytes >= choices["dense"].bytes:
                logger.debug("%s: encoding would not save bytes", weight.name)
                continue
            unique, codes = np.unique(values, return_inverse=True)
            stem = weight.name
            if choice.kind == "linear":
                zero, scale, grid_codes = encoding.uniform_grid(unique, 8)  # type: ignore[misc]
                decoded = builder.linear(grid_codes[codes], zero, scale, choice.bits, weight.shape, stem)
            else:
                decoded = builder.lookup(codes, unique, choice.bits, weight.shape, stem)
            decoded.shape = ir.Shape(weight.shape)
            decoded.type = ir.TensorType(ir.DataType.FLOAT)
            weight.value.replace_all_uses_with(decoded)
            model.graph.initializers.pop(weight.name)
            rows.append({"name": weight.name, "encoding": choice.kind, "bits": choice.bits,
                         "levels": choice.levels, "bytes_before": choices["dense"].bytes,
                         "bytes_after": choice.bytes})
        builder.flush()
        if rows:
            ensure_opset(model, DECODE_OPSET)
        return StatsPassResult(model, modified=bool(rows), rows=rows)
