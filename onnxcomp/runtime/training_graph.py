"""The ONNX training graph that `onnxcomp.runtime.training.finetune` hands to ONNX Runtime.

The inference model is rewritten, not converted: every compression constraint and every loss
term becomes standard ONNX nodes, so ONNX Runtime's gradient builder differentiates the whole
thing and the trained tensors come back under their original names.

- a mask multiplies its weight (``Mul(W, mask)``, the mask a frozen initializer), so pruned
  entries stay zero and get no gradient;
- a codebook weight becomes ``Gather(codebook, indices)`` with the codebook trainable, so each
  shared value gets the summed gradient of its entries;
- the loss (cross-entropy on labels, soft-target distillation, regularizer penalties) is
  computed in the graph and becomes the first output, the logits the second.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from onnxcomp.errors import OnnxcompError

logger = logging.getLogger(__name__)

LABELS_INPUT = "onnxcomp_labels"
SOFT_TARGETS_INPUT = "onnxcomp_soft_targets"
LOSS_OUTPUT = "onnxcomp_loss"
BATCH_DIM = "onnxcomp_batch"

# ONNX Runtime training 1.19 loads IR <= 10 and opsets up to 21.
MAX_IR_VERSION = 10
MAX_OPSET = 21
# Reductions with an `axes` input (ReduceSum) and SoftmaxCrossEntropyLoss's grad need opset 13.
MIN_OPSET = 13


class GraphBuilder:
    """Adds nodes and initializers to a graph under fresh names, hiding opset differences.

    Regularizers use it to add their penalty subgraph; `parameter` registers an initializer that
    the optimizer trains alongside the model weights.
    """

    def __init__(self, graph: ir.Graph, opset: int):
        self.graph = graph
        self.opset = opset
        self._taken = _all_names(graph)
        # full initializer name -> key the regularizer chose, for extra trainable tensors
        self.parameter_keys: dict[str, str] = {}

    def fresh_name(self, hint: str) -> str:
        name, suffix = hint, 1
        while name in self._taken:
            name = f"{hint}_{suffix}"
            suffix += 1
        self._taken.add(name)
        return name

    def op(self, op_type: str, *inputs: ir.Value | None, num_outputs: int = 1, **attributes):
        """Appends one node; returns its output (a tuple when ``num_outputs > 1``)."""
        node = ir.node(
            op_type,
            list(inputs),
            attributes or None,
            num_outputs=num_outputs,
            graph=self.graph,
            name=self.fresh_name(f"onnxcomp_{op_type}"),
        )
        for output in node.outputs:
            output.name = self.fresh_name(f"onnxcomp_{op_type.lower()}")
        return node.outputs[0] if num_outputs == 1 else tuple(node.outputs)

    def constant(self, array: np.ndarray, hint: str) -> ir.Value:
        """A frozen initializer holding ``array``."""
        array = np.asarray(array)
        name = self.fresh_name(hint)
        value = ir.Value(
            name=name,
            shape=ir.Shape(array.shape),
            type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
            const_value=ir.tensor(array, name=name),
        )
        self.graph.register_initializer(value)
        return value

    def scalar(self, number: float) -> ir.Value:
        return self.constant(np.array(number, dtype=np.float32), "onnxcomp_scalar")

    def parameter(self, array: np.ndarray, key: str) -> ir.Value:
        """A trainable float32 initializer; its final value is reported under ``key``."""
        value = self.constant(np.asarray(array, dtype=np.float32), f"onnxcomp_{key}")
        self.parameter_keys[value.name] = key
        return value

    def reduce(self, op_type: str, x: ir.Value, axes: Sequence[int] | None = None,
               keepdims: bool = False) -> ir.Value:
        """``op_type`` (ReduceSum, ReduceMean, ReduceLogSumExp, ...) over ``axes`` (None: all)."""
        if axes is None:
            return self.op(op_type, x, keepdims=int(keepdims))
        axes_as_input = self.opset >= 18 or (op_type == "ReduceSum" and self.opset >= 13)
        if axes_as_input:
            axes_value = self.constant(np.array(list(axes), dtype=np.int64), "onnxcomp_axes")
            return self.op(op_type, x, axes_value, keepdims=int(keepdims))
        return self.op(op_type, x, axes=list(axes), keepdims=int(keepdims))

    def unsqueeze(self, x: ir.Value, axes: Sequence[int]) -> ir.Value:
        return self.op("Unsqueeze", x, self.constant(np.array(list(axes), np.int64), "onnxcomp_axes"))

    def flatten(self, x: ir.Value) -> ir.Value:
        return self.op("Reshape", x, self.constant(np.array([-1], np.int64), "onnxcomp_shape"))

    def concat_flat(self, values: Sequence[ir.Value]) -> ir.Value:
        """All entries of ``values`` as one vector."""
        flat = [self.flatten(v) for v in values]
        return flat[0] if len(flat) == 1 else self.op("Concat", *flat, axis=0)

    def scale(self, x: ir.Value, factor: float) -> ir.Value:
        return x if factor == 1.0 else self.op("Mul", x, self.scalar(factor))

    def add_all(self, values: Sequence[ir.Value]) -> ir.Value:
        # ORT registers no gradient for Sum: chain Adds.
        total = values[0]
        for value in values[1:]:
            total = self.op("Add", total, value)
        return total

    def sum_of_squares(self, x: ir.Value) -> ir.Value:
        return self.reduce("ReduceSum", self.op("Mul", x, x))


@dataclasses.dataclass(frozen=True)
class PenaltyInputs:
    """What a regularizer penalizes: the weights as the network sees them."""

    weights: Mapping[str, ir.Value]  # effective (masked / decoded) trainable weights
    initial: Mapping[str, np.ndarray]  # their values before training
    num_samples: int  # training set size (priors are scaled by 1/num_samples)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """The loss mix: ``hard_weight * CE(labels) + soft_weight * T^2 * CE(soft targets)``."""

    hard_weight: float  # 0: no labels input
    soft_weight: float  # 0: no soft targets input
    temperature: float = 1.0


@dataclasses.dataclass
class TrainingGraph:
    """The forward training model and how `finetune` feeds and reads it."""

    model: onnx.ModelProto  # outputs: (scalar loss, logits)
    feature_inputs: list[str]  # the model's own inputs, in graph order
    target_inputs: list[str]  # LABELS_INPUT and/or SOFT_TARGETS_INPUT, after the features
    logits: str
    weight_parameters: dict[str, str]  # trainable weight -> trained tensor (itself or codebook)
    regularizer_parameters: list[dict[str, str]]  # per regularizer: key -> trained tensor

    @property
    def trainable_parameters(self) -> list[str]:
        names = list(self.weight_parameters.values())
        for keys in self.regularizer_parameters:
            names.extend(keys.values())
        return names


def build_training_graph(
    model: onnx.ModelProto,
    trainable: Sequence[str],
    loss: LossSpec,
    *,
    num_classes: int,
    masks: Mapping[str, np.ndarray],
    codebooks: Mapping[str, tuple[np.ndarray, np.ndarray]],
    regularizers: Sequence[Regularizer],
    num_samples: int,
) -> TrainingGraph:
    """Rewrites an inference model (first output: logits) into the forward training model.

    The input model is not modified. Weight names, graph input names and the logits name are
    kept; everything added is named ``onnxcomp_*`` or ``<weight>.<role>``.
    """
    model_ir = ir.serde.deserialize_model(model)
    graph = model_ir.graph
    opset = _check_opset(model_ir)
    builder = GraphBuilder(graph, opset)
    _validate_weights(graph, trainable, masks, codebooks)
    for index, node in enumerate(graph):
        if not node.name:  # so that ORT's errors can point at the node
            node.name = builder.fresh_name(f"{node.op_type}_{index}")

    # Initializers listed as graph inputs would be duplicated when ORT moves parameters to inputs.
    feature_values = [v for v in graph.inputs if not v.is_initializer()]
    graph.inputs.clear()
    graph.inputs.extend(feature_values)
    free_batch_dimension(graph)
    logits = graph.outputs[0]
    _check_logits(logits)

    effective, weight_parameters = _effective_weights(builder, trainable, masks, codebooks)
    # Drop what only the other outputs needed. Before the loss is added: the pass would also
    # drop SoftmaxCrossEntropyLoss's unused log_prob output, which its gradient needs.
    graph.outputs.clear()
    graph.outputs.append(logits)
    common_passes.RemoveUnusedNodesPass()(model_ir)
    graph.outputs.clear()

    terms, target_inputs = _add_loss(builder, logits, loss, num_classes)
    penalty_inputs = PenaltyInputs(
        weights={name: effective[name] for name in trainable},
        initial=_initial_effective_values(graph, trainable, masks, codebooks),
        num_samples=num_samples,
    )
    regularizer_parameters = []
    for regularizer in regularizers:
        known = set(builder.parameter_keys)
        terms.append(regularizer.add_penalty(builder, penalty_inputs))
        regularizer_parameters.append({builder.parameter_keys[n]: n for n in builder.parameter_keys if n not in known})

    total = builder.add_all(terms)
    total.name = builder.fresh_name(LOSS_OUTPUT)
    total.dtype = ir.DataType.FLOAT
    total.shape = ir.Shape([])
    graph.outputs.extend([total, logits])
    graph.sort()
    model_ir.ir_version = min(model_ir.ir_version, MAX_IR_VERSION)
    return TrainingGraph(
        model=ir.serde.serialize_model(model_ir),
        feature_inputs=[v.name for v in feature_values],
        target_inputs=target_inputs,
        logits=logits.name,
        weight_parameters=weight_parameters,
        regularizer_parameters=regularizer_parameters,
    )


def _add_loss(builder: GraphBuilder, logits: ir.Value, loss: LossSpec, num_classes: int):
    """Adds the target inputs and the data terms of the loss; returns (terms, input names)."""
    graph = builder.graph
    terms, target_inputs = [], []
    if loss.hard_weight > 0:
        labels = _add_input(graph, LABELS_INPUT, ir.DataType.INT64, [BATCH_DIM])
        target_inputs.append(LABELS_INPUT)
        cross_entropy, _ = builder.op("SoftmaxCrossEntropyLoss", logits, labels, num_outputs=2, reduction="mean")
        terms.append(builder.scale(cross_entropy, loss.hard_weight))
    if loss.soft_weight > 0:
        targets = _add_input(graph, SOFT_TARGETS_INPUT, ir.DataType.FLOAT, [BATCH_DIM, num_classes])
        target_inputs.append(SOFT_TARGETS_INPUT)
        # Hinton et al.: student at the same temperature, gradients rescaled by T^2.
        log_probs = builder.op("LogSoftmax", builder.scale(logits, 1.0 / loss.temperature), axis=-1)
        per_sample = builder.reduce("ReduceSum", builder.op("Mul", targets, log_probs), axes=[-1])
        mean_log_likelihood = builder.reduce("ReduceMean", per_sample)
        terms.append(builder.scale(mean_log_likelihood, -loss.soft_weight * loss.temperature**2))
    return terms, target_inputs


def _check_opset(model_ir: ir.Model) -> int:
    opset = model_ir.opset_imports.get("", model_ir.opset_imports.get("ai.onnx", 0))
    if opset > MAX_OPSET:
        raise OnnxcompError(
            f"fine-tuning needs opset <= {MAX_OPSET} (ONNX Runtime training 1.19); the model uses opset {opset}"
        )
    if opset < MIN_OPSET:
        raise OnnxcompError(
            f"fine-tuning needs opset >= {MIN_OPSET}; the model uses opset {opset} "
            "(convert it with onnx.version_converter first)"
        )
    return opset


def _all_names(graph: ir.Graph) -> set[str]:
    names = {v.name for v in graph.inputs} | set(graph.initializers)
    for node in ir.traversal.RecursiveGraphIterator(graph):
        if node.name:
            names.add(node.name)
        names.update(v.name for v in node.outputs if v.name)
    return names


def _validate_weights(graph, trainable, masks, codebooks) -> None:
    initializers = graph.initializers
    for label, names in (("trainable", trainable), ("masks", masks), ("codebooks", codebooks)):
        missing = [n for n in names if n not in initializers]
        if missing:
            raise OnnxcompError(f"{label}: no initializer named {', '.join(map(repr, missing[:5]))} in the model")
    for name in trainable:
        if initializers[name].dtype != ir.DataType.FLOAT:
            raise OnnxcompError(f"trainable weight '{name}' is {initializers[name].dtype}; only float32 weights train")
    for name, mask in masks.items():
        shape = tuple(initializers[name].shape)
        if np.shape(mask) != shape:
            raise OnnxcompError(f"mask for '{name}' has shape {np.shape(mask)}, the weight {shape}")
        if not np.all(np.isfinite(mask)):
            raise OnnxcompError(f"mask for '{name}' contains NaN or inf")
    for name, (codebook, indices) in codebooks.items():
        shape = tuple(initializers[name].shape)
        if np.shape(indices) != shape:
            raise OnnxcompError(f"codebook indices for '{name}' have shape {np.shape(indices)}, the weight {shape}")
        if np.ndim(codebook) != 1 or not np.issubdtype(np.asarray(indices).dtype, np.integer):
            raise OnnxcompError(f"codebook for '{name}' must be a 1-D float array with integer indices")
        if np.size(indices) and (np.min(indices) < 0 or np.max(indices) >= len(codebook)):
            raise OnnxcompError(f"codebook indices for '{name}' fall outside [0, {len(codebook)})")
        if not np.all(np.isfinite(codebook)):
            raise OnnxcompError(f"codebook for '{name}' contains NaN or inf")


def free_batch_dimension(graph: ir.Graph) -> None:
    """Makes the first input axis symbolic and forgets inferred shapes that may pin it.

    Exporters often fix the batch size (e.g. 1); the training batch differs. The artifact
    generator re-infers every shape afterwards.
    """
    for value in graph.inputs:
        if value.shape is not None and len(value.shape) >= 1:
            value.shape = ir.Shape([ir.SymbolicDim(BATCH_DIM), *value.shape[1:]])
    for node in graph:
        for output in node.outputs:
            if not output.is_graph_output():
                output.shape = None
    for output in graph.outputs:
        if output.shape is not None and len(output.shape) >= 1:
            output.shape = ir.Shape([ir.SymbolicDim(BATCH_DIM), *output.shape[1:]])


def _check_logits(logits: ir.Value) -> None:
    if logits.dtype not in (None, ir.DataType.FLOAT):
        raise OnnxcompError(f"fine-tuning needs float32 logits; output '{logits.name}' is {logits.dtype}")
    if logits.shape is not None and len(logits.shape) != 2:
        raise OnnxcompError(
            f"fine-tuning needs class logits [batch, classes] as the first output; "
            f"'{logits.name}' has shape {list(logits.shape)}"
        )


def _add_input(graph: ir.Graph, name: str, dtype: ir.DataType, shape: list) -> ir.Value:
    if name in graph.initializers or any(v.name == name for v in graph.inputs):
        raise OnnxcompError(f"the model already has a tensor named '{name}'; rename it to fine-tune")
    value = ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(shape))
    graph.inputs.append(value)
    return value


def _effective_weights(builder: GraphBuilder, trainable, masks, codebooks):
    """Routes each constrained weight through its mask / codebook decode.

    Returns the value each weight name now stands for in the graph, and for every trainable
    weight the initializer the optimizer updates (the weight itself or its codebook).
    """
    graph = builder.graph
    effective: dict[str, ir.Value] = {}
    weight_parameters: dict[str, str] = {}
    for name in dict.fromkeys([*trainable, *masks, *codebooks]):
        weight = graph.initializers[name]
        uses = list(weight.uses())
        value = weight
        if name in codebooks:
            codebook, indices = codebooks[name]
            codebook_value = builder.constant(np.asarray(codebook, np.float32), f"{name}.codebook")
            indices_value = builder.constant(np.asarray(indices, np.int64), f"{name}.indices")
            value = builder.op("Gather", codebook_value, indices_value, axis=0)
            parameter = codebook_value.name
        else:
            parameter = name
        if name in masks:
            mask_value = builder.constant(np.asarray(masks[name], np.float32), f"{name}.mask")
            value = builder.op("Mul", value, mask_value)
        if value is not weight:
            for use in uses:
                use.node.replace_input_with(use.idx, value)
            if name in codebooks and not weight.uses() and not weight.is_graph_output():
                graph.initializers.pop(name)
        effective[name] = value
        if name in trainable:
            weight_parameters[name] = parameter
    return effective, weight_parameters


def _initial_effective_values(graph, trainable, masks, codebooks) -> dict[str, np.ndarray]:
    values = {}
    for name in trainable:
        if name in codebooks:
            codebook, indices = codebooks[name]
            array = np.asarray(codebook, np.float32)[np.asarray(indices)]
        else:
            array = graph.initializers[name].const_value.numpy()
        if name in masks:
            array = array * np.asarray(masks[name], np.float32)
        values[name] = np.asarray(array, np.float32)
    return values


class Regularizer(abc.ABC):
    """A penalty on the trainable weights, built into the training graph.

    Subclasses implement `add_penalty`; tensors created there with ``graph.parameter(array,
    key)`` are trained with the model and handed to `report` (by key) after training.
    """

    name = "regularizer"

    @abc.abstractmethod
    def add_penalty(self, graph: GraphBuilder, inputs: PenaltyInputs) -> ir.Value:
        """Adds nodes computing the scalar penalty (in units of the mean per-sample loss)."""

    def report(self, parameters: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Turns the learned parameters (by key) into what `FinetuneResult.extra` shows."""
        return dict(parameters)
