"""Remove whole neurons and channels so the dense graph really shrinks.

The pass reads the channel groups of :mod:`onnxcomp.channels`, chooses channels to drop in
each group that is not blocked, and cuts them everywhere at once: the producers' weight rows
and biases, BatchNorm and other per-channel parameters, depthwise ``group`` attributes,
Concat offsets, Reshape/Resize shape constants, Flatten blocks in the next weight, and the
input slices of every layer that reads them. Model input features are dropped by a Gather
inside the graph, so the model's inputs and outputs keep their names, dtypes and shapes.

A removed channel is replaced by a constant whose contribution moves into the bias of every
layer that read it (mean replacement, :mod:`onnxcomp.passes._compensate`): the value it is
known to have where that is computable without data (zero incoming weights: the producer's
bias, through ReLU, BatchNorm, residual Adds, pooling, Flatten, ...), else its mean activation
on sample inputs when the pass is given some, else the value it would have with zero incoming
weights. Only a known constant makes this exact, and only where no zero padding surrounds it;
the lossless ``select="dead"`` rule removes constant channels only there. Before a padded Conv
the contribution is averaged over the output positions: the best constant bias in least
squares, exact on average though not at any one position (the kernel's full sum would be exact
in the interior and wrong at the borders; on the MNIST ResNet the two choices differ by 0.01
points of accuracy).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Mapping

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import CheckerPass

from onnxcomp.channels import ChannelAnalysis, ChannelGroup, analyze_channels, constant, segment_offsets
from onnxcomp.errors import OnnxcompError
from onnxcomp.passes._channel_constants import channel_blocks, channel_constants
from onnxcomp.passes._compensate import consumer_means, fold_constants, foldable, measure_moments, occurrences
from onnxcomp.passes.weight_pass import StatsPassResult, interface
from onnxcomp.passes._surgery import Namer, cut_channels

logger = logging.getLogger(__name__)

__all__ = ["EliminateNeuronsPass", "EliminateNeuronsResult", "LayerChange", "replacement_errors"]


_WEIGHT_LAYERS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclasses.dataclass(frozen=True)
class LayerChange:
    """How one weight layer's weight shrank."""

    node: str
    op_type: str
    tensor: str
    before: tuple[int, ...]
    after: tuple[int, ...]


@dataclasses.dataclass
class EliminateNeuronsResult(StatsPassResult):
    """What the pass removed; ``rows`` has one row per weight layer that shrank.

    Attributes:
        removed: Channels removed per group name.
        sizes: (before, after) channel count per group name.
        layers: Weight layers whose weights changed shape.
        blocked: Reason per group name for groups left untouched.
        params_before: Number of constant parameters before the pass.
        params_after: Number of constant parameters after the pass.
        rounds: Rounds of analysis and removal that changed the model.
    """

    removed: dict[str, int] = dataclasses.field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    layers: list[LayerChange] = dataclasses.field(default_factory=list)
    blocked: dict[str, str] = dataclasses.field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0
    rounds: int = 0

    @property
    def neurons_removed(self) -> int:
        return sum(self.removed.values())

    def summary(self) -> str:
        return (
            f"{self.neurons_removed} channels removed in {len(self.removed)} groups, "
            f"{len(self.blocked)} groups blocked; parameters {self.params_before} -> "
            f"{self.params_after}"
        )


class EliminateNeuronsPass(ir.passes.InPlacePass):
    """Remove neurons/channels structurally, keeping the model's interface.

    Args:
        keep: Explicit keep masks, by group id or name (from
            :func:`onnxcomp.channels.analyze_channels` on the same model). Removes exactly the
            masked-out channels, in one round.
        select: ``"dead"`` (lossless: channels whose outgoing weights are all zero or whose
            activation is a constant that can be folded into the next layer) or ``"norm"``
            (also channels whose outgoing weights have an L2 norm at most ``threshold``, and
            channels whose incoming-norm times outgoing-norm is at most ``threshold``: their
            activation is taken as the constant the bias gives and folded like a dead one).
        threshold: Norm threshold for ``select="norm"``.
        max_rounds: Removing channels can make others dead; selection repeats until nothing
            changes or this many rounds ran.
        samples: Model input name -> sample inputs (first axis: samples). Removed channels
            that are not a known constant are replaced by their mean activation on these
            (measured in ONNX Runtime), folded into the next layers' biases.

    Preserves: graph inputs and outputs (names, dtypes, shapes), at least one channel per
    group, and every blocked group.
    """

    def __init__(
        self,
        keep: Mapping[int | str, np.ndarray] | None = None,
        *,
        select: str = "dead",
        threshold: float = 0.0,
        max_rounds: int = 16,
        samples: Mapping[str, np.ndarray] | None = None,
    ):
        super().__init__()
        if select not in ("dead", "norm"):
            raise OnnxcompError(f"select must be 'dead' or 'norm', not {select!r}")
        if threshold < 0:
            raise OnnxcompError(f"threshold must be >= 0, not {threshold}")
        if max_rounds < 1:
            raise OnnxcompError(f"max_rounds must be >= 1, not {max_rounds}")
        self.keep = dict(keep) if keep is not None else None
        self.select = select
        self.threshold = threshold if select == "norm" else 0.0
        self.max_rounds = max_rounds
        self.samples = dict(samples) if samples is not None else None

    def requires(self, model: ir.Model) -> None:
        if "" not in model.opset_imports and "ai.onnx" not in model.opset_imports:
            raise ir.passes.PreconditionError("the model imports no ONNX opset")

    def ensures(self, model: ir.Model) -> None:
        CheckerPass()(model)

    def call(self, model: ir.Model) -> EliminateNeuronsResult:
        interface_before = interface(model)
        shapes_before = _weight_shapes(model)
        params_before = _parameter_count(model)
        result = EliminateNeuronsResult(model, modified=False, params_before=params_before)
        removed: collections.Counter[str] = collections.Counter()
        first: ChannelAnalysis | None = None
        for _ in range(self.max_rounds if self.keep is None else 1):
            analysis = analyze_channels(model)
            first = first or analysis
            masks, consts, estimates = self._masks(analysis)
            if not masks:
                break
            means = consumer_means(analysis, masks, self.samples) if self.samples else {}
            _remove_channels(analysis, masks, consts, estimates, means)
            for group_id, mask in masks.items():
                removed[analysis.groups[group_id].name] += int((~mask).sum())
            result.rounds += 1
        assert first is not None
        if interface(model) != interface_before:
            raise ir.passes.PostconditionError("neuron elimination changed the model interface")
        result.modified = bool(removed)
        result.removed = dict(removed)
        result.sizes = {g.name: (g.size, g.size - removed[g.name]) for g in first.groups}
        result.blocked = {g.name: g.blocked_reason for g in first.groups if g.blocked_reason}
        shapes_after = _weight_shapes(model)
        result.layers = [
            LayerChange(name, op_type, tensor, before, shapes_after[name][2])
            for name, (op_type, tensor, before) in shapes_before.items()
            if name in shapes_after and shapes_after[name][2] != before
        ]
        result.rows = [
            {"name": c.tensor, "node": c.node, "op_type": c.op_type, "before": list(c.before),
             "after": list(c.after)}
            for c in result.layers
        ]
        result.params_after = _parameter_count(model)
        if removed:
            logger.info(
                "Removed %d channels in %d groups; parameters %d -> %d",
                result.neurons_removed, len(removed), params_before, result.params_after,
            )
        return result

    # -- selection ---------------------------------------------------------------------------

    def _masks(self, analysis: ChannelAnalysis):
        """Keep masks of the groups that lose channels this round, and channel constants.

        Returns the masks, the known channel constants and the estimates that take every
        removed channel's incoming weights as zero.
        """
        out_norms = outgoing_norms(analysis)
        zero_in = _zero_incoming(analysis, out_norms, self.threshold)
        consts = channel_constants(analysis, zero_in)
        if self.keep is not None:
            masks = self._explicit_masks(analysis)
        else:
            masks = {
                group.id: _select(analysis, group, consts, out_norms[group.id], self.threshold)
                for group in analysis.groups
                if not group.blocked
            }
        masks = {g: m for g, m in masks.items() if not m.all()}
        origin_masks = {o: masks[g] for o, g in analysis.group_of_origin.items() if g in masks}
        removed_in = {o: zero | ~origin_masks[o] if o in origin_masks else zero for o, zero in zero_in.items()}
        return masks, consts, channel_constants(analysis, removed_in)

    def _explicit_masks(self, analysis: ChannelAnalysis) -> dict[int, np.ndarray]:
        masks = {}
        for key, mask in self.keep.items():  # type: ignore[union-attr]
            try:
                group = analysis.group(key)
            except KeyError:
                raise OnnxcompError(f"no channel group {key!r} in the model") from None
            mask = np.asarray(mask, dtype=bool).reshape(-1)
            if mask.size != group.size:
                raise OnnxcompError(
                    f"keep mask for group {group.name!r} has {mask.size} entries, "
                    f"the group has {group.size} channels"
                )
            if not mask.any():
                raise OnnxcompError(f"keep mask for group {group.name!r} keeps no channel")
            if group.blocked:
                logger.warning("Group %r is blocked (%s); left unchanged",
                               group.name, group.blocked_reason)
                continue
            masks[group.id] = mask
        return masks


def replacement_errors(
    model: ir.Model, samples: Mapping[str, np.ndarray], analysis: ChannelAnalysis | None = None
) -> dict[str, np.ndarray]:
    """Per unblocked channel group (by name): what replacing each channel by its mean costs.

    For every layer that reads the group, the channel's variance around its per-position mean
    on ``samples`` (ONNX Runtime) times the squared norm of the weights that read it; the
    square root of the sum over the layers. A score for explicit keep masks: the channels with
    the smallest values lose least under the pass's mean replacement. Unlike weight norms it
    sees what BatchNorm folding hides (a channel whose BatchNorm scale is near zero can have
    large folded weights yet almost no variance).
    """
    analysis = analysis or analyze_channels(model)
    edits = [e for e in analysis.tensor_edits if e.role == "consumer"]
    moments = measure_moments(model, {e.node.inputs[0] for e in edits}, samples)
    errors = {group.id: np.zeros(group.size) for group in analysis.groups}
    for edit in edits:
        source = edit.node.inputs[0]
        axis = analysis.tracked[source].axis
        if source not in moments or axis == 0:  # moments drop the sample axis 0
            continue
        first, second = moments[source]
        variance = np.moveaxis(np.maximum(second - first * first, 0), axis - 1, 0)
        variance = variance.reshape(variance.shape[0], -1).mean(axis=1)
        weight = np.moveaxis(constant(edit.node.inputs[edit.input_index]).astype(np.float64), edit.axis, 0)
        cost = variance * (weight.reshape(weight.shape[0], -1) ** 2).sum(axis=1)
        for segment, offset, _ in segment_offsets(edit.layout):
            if segment.origin is not None:
                block = cost[offset : offset + segment.length].reshape(segment.size, segment.inner)
                errors[analysis.group_of_origin[segment.origin]] += block.sum(axis=1)
    return {group.name: np.sqrt(errors[group.id]) for group in analysis.groups if not group.blocked}


# -- choosing channels ---------------------------------------------------------------------


def outgoing_norms(analysis: ChannelAnalysis) -> dict[int, np.ndarray]:
    """Per group: L2 norm of each channel's weights in all layers that read it."""
    norms2 = {group.id: np.zeros(group.size) for group in analysis.groups}
    for edit in analysis.tensor_edits:
        if edit.role != "consumer":
            continue
        weight = constant(edit.node.inputs[edit.input_index]).astype(np.float64)
        for segment, offset, _ in segment_offsets(edit.layout):
            if segment.origin is not None:
                rows = channel_blocks(weight, edit.axis, offset, segment.size, segment.inner)
                norms2[analysis.group_of_origin[segment.origin]] += (rows**2).sum(axis=1)
    return {group_id: np.sqrt(n) for group_id, n in norms2.items()}


def _zero_incoming(
    analysis: ChannelAnalysis, out_norms: dict[int, np.ndarray], threshold: float
) -> dict[int, np.ndarray]:
    """Per producer origin: channels whose incoming weights count as zero.

    Exactly zero, or (with a threshold) so small that incoming norm times outgoing norm, a
    bound on the signal the channel passes per unit of input, is at most the threshold.
    """
    zero: dict[int, np.ndarray] = {}
    for edit in analysis.tensor_edits:
        if edit.role != "weight":
            continue
        (segment,) = edit.layout
        weight = constant(edit.node.inputs[edit.input_index]).astype(np.float64)
        rows = channel_blocks(weight, edit.axis, 0, segment.size, 1)
        in_norm = np.sqrt((rows**2).sum(axis=1))
        zero[segment.origin] = in_norm == 0
        if threshold > 0:
            out_norm = out_norms[analysis.group_of_origin[segment.origin]]
            zero[segment.origin] |= in_norm * out_norm <= threshold
    return zero


def _select(
    analysis: ChannelAnalysis,
    group: ChannelGroup,
    consts: dict[ir.Value, np.ndarray],
    out_norm: np.ndarray,
    threshold: float,
) -> np.ndarray:
    """Keep mask of one group under the dead/norm rules."""
    removable = np.ones(group.size, dtype=bool)
    for edit in analysis.tensor_edits:
        if edit.role != "consumer":
            continue
        weight = constant(edit.node.inputs[edit.input_index])
        data = consts[edit.node.inputs[0]]
        for offset, unit, inner in occurrences(analysis, group, edit.layout):
            rows = channel_blocks(weight, edit.axis, offset, group.size, inner)
            value = data[unit : unit + group.size]
            folds = np.isfinite(value) & foldable(edit.node)
            removable &= (rows == 0).all(axis=1) | (value == 0) | folds
    if threshold > 0:
        removable |= out_norm <= threshold
    if removable.all():
        removable[int(np.argmax(out_norm))] = False
    return ~removable


# -- removing them -------------------------------------------------------------------------


def _remove_channels(analysis: ChannelAnalysis, group_masks: dict[int, np.ndarray], consts: dict[ir.Value, np.ndarray],
                     estimates: dict[ir.Value, np.ndarray], means: dict[ir.Value, np.ndarray]) -> None:
    """Fold the removed channels' contribution into biases, then cut them out of the graph."""
    namer = Namer(analysis.model.graph)
    masks = {o: group_masks[g] for o, g in analysis.group_of_origin.items() if g in group_masks}
    fold_constants(analysis, group_masks, consts, estimates, means, namer)
    cut_channels(analysis, masks, namer)


# -- bookkeeping ---------------------------------------------------------------------------


def _weight_shapes(model: ir.Model) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    shapes = {}
    for node in model.graph:
        if node.op_type in _WEIGHT_LAYERS and len(node.inputs) > 1:
            weight = constant(node.inputs[1])
            if weight is not None and node.name:
                shapes[node.name] = (node.op_type, node.inputs[1].name or "", weight.shape)
    return shapes


def _parameter_count(model: ir.Model) -> int:
    return sum(
        v.const_value.size for v in model.graph.initializers.values() if v.const_value is not None
    )
