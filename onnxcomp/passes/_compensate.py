"""What a removed channel passed on: measured mean activations and their effect on a layer.

`EliminateNeuronsPass` replaces each removed channel by a constant - the value it is known to
have, or its mean on sample inputs - and moves that constant's contribution into the bias of
every layer that read the channel (mean replacement). For a Conv with zero padding the
contribution of a constant input varies near the borders (the padding is zero, not the
constant), so it is computed on the whole (mean) input map and averaged over the output
positions: the best constant bias in the least-squares sense.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import onnx_ir as ir

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
    from onnxcomp.data import Feeds, batches, first_group, sample_count
    from onnxcomp.memory import activation_sizes, batch_size
    from onnxcomp.runtime.inference import session

    wanted = {v.name: v for v in values if v is not None and v.name}
    if not wanted:
        return {}
    proto = ir.to_proto(model)
    inputs = {i.name for i in proto.graph.input}
    outputs = {o.name for o in proto.graph.output}
    for name in wanted:
        if name not in inputs and name not in outputs:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
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
