"""Prune/retrain on the ONNX Runtime training backend for an allocation (Han et al. 2015/2016).

Given the allocator's per-layer choice (mask + codebook size), retrain the surviving weights with
the masks fixed, re-cluster them with the same number of shared values, then fine-tune the
shared values themselves (each gets the summed gradient of its weights). The layout - which
entries are zero, how many codes per layer - is unchanged, so the encoded size is unchanged.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import onnx_ir as ir

from onnxcomp import io
from onnxcomp.allocate import Allocation
from onnxcomp.data import Samples
from onnxcomp.errors import OnnxcompError
from onnxcomp.quantize import SortedWeights, snap_to_codebook

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class RetrainOptions:
    epochs: int = 4
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0


def retrain(model: ir.Model, allocation: Allocation, masks: dict[str, np.ndarray], samples: Samples,
            teacher_logits: np.ndarray, options: RetrainOptions, log=None) -> tuple[dict[str, np.ndarray], Allocation]:
    """Return new weight values (clustered, masked) and the allocation with retrained codebooks."""
    from onnxcomp.runtime.training import TrainConfig, finetune, training_available

    if not training_available():
        raise OnnxcompError("fine-tuning needs the ONNX Runtime training build: pip install 'onnxcomp[train]' (or pass --epochs 0)")
    names = [name for name, choice in allocation.choices.items() if choice.quant is not None]
    if not names:
        return {}, allocation
    proto = io.to_proto(model)
    labels = samples.labels
    teacher = None if labels is not None else teacher_logits
    config = TrainConfig(epochs=options.epochs, batch_size=min(options.batch_size, samples.count), lr=options.lr,
                         seed=options.seed, log=log)
    first = finetune(proto, names, samples.inputs, labels, teacher_logits=teacher,
                     masks={n: masks[n] for n in names if n in masks}, config=config)
    if first.diverged:
        logger.warning("retraining diverged; keeping the best weights seen")
    codebooks: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        values = first.weights[name].astype(np.float32)
        keep = masks.get(name, np.ones(values.shape, bool))
        levels = max(1, int(allocation.choices[name].quant.codebook.size))
        codebook = SortedWeights(values[keep]).quantize(0.0, levels).codebook
        if codebook.size == 0:
            codebook = np.zeros(1, np.float32)
        indices = np.searchsorted(codebook, snap_to_codebook(values, codebook)).clip(0, codebook.size - 1)
        codebooks[name] = (codebook, indices)
    config = dataclasses.replace(config, epochs=max(1, options.epochs // 2), lr=options.lr / 2)
    second = finetune(proto, names, samples.inputs, labels, teacher_logits=teacher,
                      masks={n: masks[n] for n in names if n in masks}, codebooks=codebooks, config=config)
    weights = {}
    choices = dict(allocation.choices)
    for name in names:
        trained_codebook = np.asarray(second.codebooks.get(name, codebooks[name][0]), np.float32)
        values = trained_codebook[codebooks[name][1]]
        if name in masks:
            values = np.where(masks[name], values, np.float32(0))
        weights[name] = values.astype(np.float32)
        nonzero_codebook = np.unique(values[values != 0])
        choices[name] = dataclasses.replace(choices[name], quant=dataclasses.replace(choices[name].quant, codebook=nonzero_codebook))
    return weights, dataclasses.replace(allocation, choices=choices)
