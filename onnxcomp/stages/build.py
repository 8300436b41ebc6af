"""Apply a plan to a copy of the canonical model: prune, cluster, encode, clean up."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from onnxcomp import modelfile
from onnxcomp.planning.allocate import Allocation, LayerOptions
from onnxcomp.encodings.channel_scales import normalize_weights, rescale_weights
from onnxcomp.planning.compensation import compensate
from onnxcomp.passes.cleanup import clean_up
from onnxcomp.passes.cluster_weights import ClusterWeightsPass
from onnxcomp.passes.insert_dequantize_lookup import InsertDequantizeLookupPass
from onnxcomp.passes.prune_weights import PruneWeightsPass
from onnxcomp.passes.substitute_sparse_ops import SubstituteSparseOpsPass
from onnxcomp.passes.weight_pass import WeightPass
from onnxcomp.encodings.quantize import prune_mask
from onnxcomp.encodings.storage_plan import decide_all, plans_of
from onnxcomp.encodings.stored import record_weight_names, weight_uses
from onnxcomp.model.weights import find_weights

logger = logging.getLogger(__name__)


def build(model: ir.Model, allocation: Allocation, keep_metadata: bool, importances: dict,
          masks: dict[str, np.ndarray] | None = None, decoded: dict[str, ir.Value] | None = None,
          hessians: dict[str, np.ndarray] | None = None, stats: dict[str, dict] | None = None) -> ir.Model:
    """Apply an allocation to a copy of the canonical model: prune, cluster, encode, clean up.

    Weights still in external data (`modelfile.is_streamed`) are encoded one at a time and unmapped
    after, so only one weight's float values (and their temporaries) are in memory at once.
    `decoded`, when given, receives per weight name the value its consumers now read.
    `hessians` (per weight, from real samples) switch on GPTQ error compensation (onnxcomp.planning.gptq).
    `stats`, when given, receives per pass what it did (`tally`).
    """
    work = model.clone()
    scaled = {name: c.scales for name, c in allocation.choices.items() if c.scales is not None}
    if hessians and not modelfile.is_streamed(work):
        compensate(work, allocation.choices, hessians)  # scaled weights: on their codebook times their scales
    normalize_weights(work, scaled)
    codebooks = {name: c.quant.codebook for name, c in allocation.choices.items() if c.quant is not None}
    plans = plans_of({name: c.quant for name, c in allocation.choices.items() if c.quant is not None})
    group_axes = {name: plan.group_axis for name, plan in plans.items() if plan.groups > 1}
    vectors = {name for name, plan in plans.items() if plan.vector_dim > 1}
    outliers = {name: plan.outlier_threshold for name, plan in plans.items() if plan.outlier_threshold is not None}

    def encode(masks: dict[str, np.ndarray], names) -> None:
        run(work, stats, PruneWeightsPass(masks=masks),
            ClusterWeightsPass(bits=None, codebooks=codebooks, group_axes=group_axes, vectors=vectors, names=names,
                               outliers=outliers))
        decisions = decide_all(work, plans, names)  # each weight's encoding, chosen once on its final values
        run(work, stats, SubstituteSparseOpsPass(decisions=decisions), InsertDequantizeLookupPass(decisions=decisions))

    weights = find_weights(work)
    uses = {w.name: next(iter(w.value.uses())) for w in weights}
    if not modelfile.is_streamed(work):
        encode(prune_masks(work, allocation, importances) if masks is None else masks, None)
    else:
        for weight in weights:
            if weight.name not in codebooks:
                continue
            tensor = weight.value.const_value
            if masks is None:
                single = prune_masks(work, allocation, importances, names={weight.name})
            else:
                single = {weight.name: masks[weight.name]} if weight.name in masks else {}
            encode(single, {weight.name})
            modelfile.release(tensor)
            if work.graph.initializers.get(weight.name) is not weight.value:
                weight.value.const_value = None  # encoded: drop the clustered float copy this list still holds
        modelfile.load_external_leftovers(work)
    rescale_weights(work, uses, scaled)
    if decoded is not None:
        decoded.update({name: node.inputs[index] for name, (node, index) in uses.items()})
    return clean_up_named(work, model, keep_metadata)


def run(model: ir.Model, stats: dict[str, dict] | None, *passes: WeightPass) -> None:
    """Run weight passes in order on `model` (in place), tallying their statistics into `stats`."""
    for weight_pass in passes:
        result = weight_pass(model)
        if stats is not None:
            tally(stats, type(weight_pass).__name__, result.rows)


def tally(stats: dict[str, dict], name: str, rows: list[dict]) -> None:
    """Add one pass's rows to `stats[name]`: the weights it changed and, where its rows have them,
    their summed `bytes_before`/`bytes_after` (the encode passes)."""
    entry = stats.setdefault(name, {"weights": 0})
    entry["weights"] += len(rows)
    for key in ("bytes_before", "bytes_after"):
        if any(key in row for row in rows):
            entry[key] = entry.get(key, 0) + sum(int(row.get(key, 0)) for row in rows)


def clean_up_named(work: ir.Model, original: ir.Model, keep_metadata: bool) -> ir.Model:
    """`clean_up` (names shortened unless `keep_metadata`), keeping each weight's name in
    `original` in the graph metadata (`onnxcomp.encodings.stored.NAMES_KEY`; counted in the target)."""
    located = weight_uses(work)  # matched to `original`'s weights by use, before names change
    cleaned = clean_up(work, keep_metadata=keep_metadata, shorten_names=not keep_metadata)
    record_weight_names(cleaned, located, original)
    return cleaned


def fixed_bytes(model: ir.Model, layers: list[LayerOptions], keep_metadata: bool) -> int:
    """Serialized bytes of everything except the compressible weights' payload."""
    cleaned = clean_up_named(model.clone(), model, keep_metadata)
    return len(modelfile.serialized_bytes(cleaned)) - sum(layer.dense.bytes for layer in layers)


def prune_masks(model: ir.Model, allocation: Allocation, importances: dict,
                names: set[str] | None = None) -> dict[str, np.ndarray]:
    """Per pruned weight (of `names`, default all), the mask of the values its plan keeps."""
    masks = {}
    for weight in find_weights(model):
        if names is not None and weight.name not in names:
            continue
        choice = allocation.choices.get(weight.name)
        if choice is not None and choice.quant is not None and choice.quant.nonzeros < weight.size:
            masks[weight.name] = prune_mask(weight.numpy(), importances.get(weight.name), choice.quant.saliency_threshold)
    return masks
