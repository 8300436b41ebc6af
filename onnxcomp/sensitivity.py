"""Per-layer sensitivity: how much the model's outputs move per unit of weight distortion.

The weights are turned into graph inputs of one measurement session, so each probe is a single
run with one weight replaced by a quantized copy - no per-layer session rebuilds.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp.allocate import LayerOptions
from onnxcomp.io import to_proto
from onnxcomp.quantize import apply_quantization
from onnxcomp.runtime.inference import run_batches, session
from onnxcomp.verify import output_distortion

logger = logging.getLogger(__name__)

PROBE_BYTES_FRACTION = 0.1  # probe with the candidate nearest 1/10 of the dense bytes (~3 bits)
FLOOR = 1e-3  # relative: a layer never counts as free to distort


def measure_sensitivity(model: ir.Model, layers: list[LayerOptions], values: dict[str, np.ndarray],
                        inputs: dict[str, np.ndarray], batch_size: int, progress=None) -> dict[str, float]:
    """Return, per layer, output distortion / weight distortion at a probe setting."""
    proto = to_proto(model)
    names = {layer.name for layer in layers}
    kept = [t for t in proto.graph.initializer if t.name not in names]
    moved = [t for t in proto.graph.initializer if t.name in names]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(kept)
    for tensor in moved:
        proto.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    sess = session(proto)
    base_feed = dict(inputs)
    base_feed.update(values)
    reference = run_batches_with_weights(sess, inputs, values, batch_size)
    sensitivities: dict[str, float] = {}
    for index, layer in enumerate(layers):
        if progress:
            progress(index, len(layers), layer.name)
        probe = _probe(layer)
        if probe is None or probe.quant is None or probe.distortion <= 0:
            continue
        perturbed = dict(values)
        perturbed[layer.name] = apply_quantization(values[layer.name], probe.quant)
        outputs = run_batches_with_weights(sess, inputs, perturbed, batch_size)
        sensitivities[layer.name] = output_distortion(reference, outputs) / probe.distortion
    if sensitivities:
        top = max(sensitivities.values())
        for name in sensitivities:
            sensitivities[name] = max(sensitivities[name], FLOOR * top)
        for layer in layers:
            sensitivities.setdefault(layer.name, top)
    return sensitivities


def run_batches_with_weights(sess, inputs, weights, batch_size):
    count = len(next(iter(inputs.values())))
    feeds = []
    for start in range(0, count, batch_size):
        feed = {k: v[start : start + batch_size] for k, v in inputs.items()}
        feed.update(weights)
        feeds.append(feed)
    names = [o.name for o in sess.get_outputs()]
    results = [sess.run(names, feed) for feed in feeds]
    return [np.concatenate([r[i] for r in results]) for i in range(len(names))]


def _probe(layer: LayerOptions):
    target = layer.dense.bytes * PROBE_BYTES_FRACTION
    lossy = [c for c in layer.candidates if c.quant is not None]
    if not lossy:
        return None
    return min(lossy, key=lambda c: abs(c.bytes - target))


__all__ = ["measure_sensitivity", "run_batches"]
