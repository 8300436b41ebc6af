"""What a removed channel passed on: measured mean activations and their effect on a layer.

`EliminateNeuronsPass` replaces each removed channel by a constant - the value it is known to
have, or its mean on sample inputs - and moves that constant's contribution into the bias of
every layer that read the channel (mean replacement). For a Conv with zero padding the
contribution of a constant input varies near the borders (the padding is zero, not the
constant), so it is computed on the whole (mean) input map and averaged over the output
positions: the best constant bias in the least-squares sense. `fold_constants` adds the
contributions to the biases (`foldable`: where a constant input channel folds exactly).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp.channels import ChannelAnalysis, ChannelGroup, Layout, constant, layout_length, segment_offsets
from onnxcomp.passes._channel_constants import no_padding
from onnxcomp.passes._surgery import Namer, write_constant

logger = logging.getLogger(__name__)

MEASURE_BATCH = 256


def measure_means(
    model: ir.Model, values: Iterable[ir.Value], samples: Mapping[str, np.ndarray]
) -> dict[ir.Value, np.ndarray]:
    """Mean over the samples (axis 0) of each value, per position: one array per value.

    Runs ``model`` in ONNX Runtime with the values added as outputs. Values without a name, or
    that ONNX Runtime cannot give, are left out.
    """
    return {value: first for value, (first, _) in measure_moments(model, values, samples).items()}


def measure_moments(
    model: ir.Model, values: Iterable[ir.Value], samples: Mapping[str, np.ndarray]
) -> dict[ir.Value, tuple[np.ndarray, np.ndarray]]:
    """Mean and mean square over the samples (axis 0) of each value, per position.

    Accumulated batch by batch; a batch holds at most ``MEASURE_BATCH`` samples and its
    activations (the fetched ones counted four times more: as float64, then squared) stay
    within ``memory.ACTIVATION_BUDGET``.
    """
    from onnxcomp.samples.data import Feeds, batches, first_group, sample_count
    from onnxcomp.model.memory import activation_sizes, batch_size
    from onnxcomp.runtime.inference import session

    wanted = {v.name: v for v in values if v is not None and v.name}
    if not wanted:
        return {}
    proto = ir.to_proto(model)
    inputs = {i.name for i in proto.graph.input}
    outputs = {o.name for o in proto.graph.output}
    for name in wanted:
        if name not in inputs and name not in outputs:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))  # untyped: ONNX Runtime infers it (float16 too)
    # Per-position moments need one shape: the largest group of equal-shaped feeds.
    group = first_group(samples)
    feeds = Feeds({name: np.asarray(array) for name, array in group.items() if name in inputs}, group.axes)
    fetched = [name for name in wanted if name not in inputs]
    sess = session(proto)
    sums: dict[str, list] = {}
    count = sample_count(feeds)
    sizes = activation_sizes(proto, feeds)
    size = min(MEASURE_BATCH, batch_size(sizes.total + 4 * sizes.of(wanted)))
    for feed in batches(feeds, size):
        results = dict(zip(fetched, sess.run(fetched, feed))) if fetched else {}
        results.update({name: feed[name] for name in wanted if name in feed})
        for name in wanted:
            array = np.asarray(results.pop(name), np.float64)
            first, second = sums.setdefault(name, [0.0, 0.0])
            sums[name] = [first + array.sum(axis=0), second + (array * array).sum(axis=0)]
    return {wanted[name]: (first / max(count, 1), second / max(count, 1)) for name, (first, second) in sums.items()}


def conv_bias_shift(node: ir.Node, weight: np.ndarray, image: np.ndarray) -> np.ndarray | None:
    """Mean over output positions of ``Conv(image)`` (no bias), one value per output channel.

    ``image`` is one input sample [C, *spatial]; None if the Conv is grouped.
    """
    if node.attributes.get_int("group", 1) != 1:
        return None
    spatial = image.shape[1:]
    rank = len(spatial)
    kernel = weight.shape[2:]
    strides = list(node.attributes.get_ints("strides", [1] * rank))
    dilations = list(node.attributes.get_ints("dilations", [1] * rank))
    auto_pad = node.attributes.get_string("auto_pad", "NOTSET")
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, span, stride in zip(spatial, spans, strides):
            total = max((-(-size // stride) - 1) * stride + span - size, 0)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
    elif auto_pad == "VALID":
        begins = ends = [0] * rank
    else:
        pads = list(node.attributes.get_ints("pads", [0] * (2 * rank)))
        begins, ends = pads[:rank], pads[rank:]
    padded = np.pad(image, [(0, 0), *zip(begins, ends)])
    axes = tuple(range(1, rank + 1))
    windows = np.lib.stride_tricks.sliding_window_view(padded, spans, axis=axes)
    windows = windows[(slice(None), *(slice(None, None, s) for s in strides),
                       *(slice(None, None, d) for d in dilations))]
    out = np.tensordot(weight, windows, axes=([1, *range(2, 2 + rank)], [0, *range(rank + 1, 2 * rank + 1)]))
    return out.reshape(out.shape[0], -1).mean(axis=1)


def occurrences(analysis: ChannelAnalysis, group: ChannelGroup, layout: Layout):
    """(element offset, unit offset, inner) of each run of the group's channels in a layout."""
    for segment, offset, unit in segment_offsets(layout):
        if segment.origin is not None and analysis.group_of_origin[segment.origin] == group.id:
            yield offset, unit, segment.inner


def foldable(node: ir.Node) -> bool:
    """Whether a constant input channel of this weight layer can move into its bias exactly."""
    if node.op_type == "Conv":
        return no_padding(node)
    if node.op_type == "Gemm":
        return node.attributes.get_float("beta", 1.0) != 0
    if node.op_type == "MatMul":
        return _matmul_bias(node) is not None
    return False


def _matmul_bias(node: ir.Node) -> tuple[ir.Node, int] | None:
    """The Add that adds a constant bias to this MatMul's output, if there is one."""
    out = node.outputs[0]
    uses = list(out.uses())
    if len(uses) != 1 or out.is_graph_output() or uses[0].node.op_type != "Add":
        return None
    add, index = uses[0].node, 1 - uses[0].idx
    bias = constant(add.inputs[index])
    width = constant(node.inputs[1]).shape[1]  # type: ignore[union-attr]
    if bias is None or bias.ndim == 0 or bias.shape[-1] != width or bias.size != width:
        return None
    return add, index


def consumer_means(
    analysis: ChannelAnalysis, group_masks: dict[int, np.ndarray], samples: Mapping[str, np.ndarray]
) -> dict[ir.Value, np.ndarray]:
    """Mean activations (per position) of the inputs of layers that lose input channels."""
    values = {
        edit.node.inputs[0]
        for edit in analysis.tensor_edits
        if edit.role == "consumer" and _takes_bias(edit.node)
        and any(True for g in group_masks for _ in occurrences(analysis, analysis.groups[g], edit.layout))
    }
    return measure_means(analysis.model, values, samples)


def fold_constants(
    analysis: ChannelAnalysis,
    group_masks: dict[int, np.ndarray],
    consts: dict[ir.Value, np.ndarray],
    estimates: dict[ir.Value, np.ndarray],
    means: dict[ir.Value, np.ndarray],
    namer: Namer,
) -> None:
    """Add the removed channels' contribution to the biases of the layers that read them.

    Each removed channel counts as its known constant (``consts``), else its mean activation
    (``means``, per position over the samples), else its estimate with zero incoming weights.
    """
    contributions: dict[ir.Node, np.ndarray] = {}
    for edit in analysis.tensor_edits:
        if edit.role != "consumer" or not _takes_bias(edit.node):
            continue
        node, source = edit.node, edit.node.inputs[0]
        length = layout_length(edit.layout)
        removed = np.zeros(length, dtype=bool)
        known, estimate = np.full(length, np.nan), np.full(length, np.nan)
        for group_id, mask in group_masks.items():
            group = analysis.groups[group_id]
            for offset, unit, inner in occurrences(analysis, group, edit.layout):
                span = slice(offset, offset + group.size * inner)
                removed[span] = np.repeat(~mask, inner)
                known[span] = np.repeat(consts[source][unit : unit + group.size], inner)
                estimate[span] = np.repeat(estimates[source][unit : unit + group.size], inner)
        if not removed.any():
            continue
        weight = constant(node.inputs[edit.input_index]).astype(np.float64)  # type: ignore[union-attr]
        axis = analysis.tracked[source].axis
        mean = means.get(source) if axis > 0 else None  # means drop the sample axis 0
        constants = np.where(np.isfinite(known), known, np.nan if mean is not None else estimate)
        contribution = _contribution(node, weight, edit.axis, axis, removed, constants, mean, analysis)
        if contribution is not None and contribution.any():
            contributions[node] = contributions.get(node, 0) + contribution
    for node, contribution in contributions.items():
        _add_to_bias(analysis.model.graph, node, contribution, namer)


def _contribution(node, weight, weight_axis, axis, removed, constants, mean, analysis) -> np.ndarray | None:
    """Output-channel contribution of the removed input elements to ``node``.

    ``constants`` has one value per element along the channel axis (NaN: use ``mean``, the
    per-position mean input without the sample axis, or nothing if there is none).
    """
    if mean is not None:
        mean = np.moveaxis(mean, axis - 1, 0)
    if node.op_type == "Conv":
        dims = analysis.dims(node.inputs[0])
        spatial = mean.shape[1:] if mean is not None else (
            tuple(dims[2:]) if dims is not None and all(isinstance(d, int) for d in dims[2:]) else None)
        if spatial is None:  # full kernel window: exact without padding, in the interior with it
            per_element = np.where(removed, np.nan_to_num(constants), 0.0)
            summed = np.tensordot(per_element, np.moveaxis(weight, weight_axis, 0), axes=(0, 0))
            return summed.reshape(summed.shape[0], -1).sum(axis=1)
        image = np.zeros((len(removed), *spatial))
        image[:] = np.nan_to_num(constants).reshape(-1, *([1] * len(spatial)))
        if mean is not None:
            use_mean = removed & np.isnan(constants)
            image[use_mean] = mean[use_mean]
        image[~removed] = 0.0
        return conv_bias_shift(node, weight, image)
    if mean is not None:  # Gemm/MatMul: linear, the mean over positions is enough
        mean = mean.reshape(mean.shape[0], -1).mean(axis=1)
        constants = np.where(np.isnan(constants), mean, constants)
    per_element = np.where(removed, np.nan_to_num(constants), 0.0)
    summed = np.tensordot(per_element, np.moveaxis(weight, weight_axis, 0), axes=(0, 0))
    if node.op_type == "Gemm":
        return node.attributes.get_float("alpha", 1.0) * summed
    return summed


def _takes_bias(node: ir.Node) -> bool:
    """Whether a constant can be added to this weight layer's output through a bias."""
    if node.op_type == "Conv":
        return node.attributes.get_int("group", 1) == 1
    return node.op_type != "ConvTranspose" and foldable(node)


def _add_to_bias(graph: ir.Graph, node: ir.Node, contribution: np.ndarray, namer: Namer):
    dtype = constant(node.inputs[1]).dtype  # type: ignore[union-attr]
    if node.op_type == "MatMul":
        node, index = _matmul_bias(node)  # type: ignore[misc]
    else:
        index = 2
        if node.op_type == "Gemm":
            contribution = contribution / node.attributes.get_float("beta", 1.0)
    current = constant(node.inputs[index]) if index < len(node.inputs) else None
    if current is None:
        updated = contribution
    else:
        updated = current.astype(np.float64) + contribution.reshape(
            (1,) * max(current.ndim - 1, 0) + (-1,)
        )
    write_constant(graph, node, index, np.asarray(updated, dtype=dtype), namer)
