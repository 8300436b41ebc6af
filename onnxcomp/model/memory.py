"""Memory bounded by the data: batch sizes and sample counts from the bytes one sample's
activations take, and the process's peak resident memory.

Every pass that runs the model over samples (reference outputs, activation statistics, GPTQ
Hessians, sensitivity probes, verification) runs it in batches whose activations fit
``ACTIVATION_BUDGET``. The bytes of one sample's activations come from ONNX shape inference on
the concrete shapes of one sample (the weights left out, so it is cheap on large models); what
inference cannot size counts at the mean of what it could.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections.abc import Iterable, Mapping

import numpy as np
import onnx
import onnx_ir as ir

from onnxcomp.samples.feeds import batch, batches
from onnxcomp.modelfile import to_proto
from onnxcomp.model.limits import shape_only

try:
    import resource
except ImportError:  # Windows
    resource = None

logger = logging.getLogger(__name__)

# Bytes of activations one batch may take, every intermediate value counted (ONNX Runtime reuses
# buffers, so it holds less). Each session keeps its arena at its peak while it lives, and the
# reference session lives through a whole compression: two of them stay well within 1 GB.
ACTIVATION_BUDGET = 256 << 20
MAX_BATCH = 256  # samples per batch when activations are small


@dataclasses.dataclass(frozen=True)
class ActivationSizes:
    """Bytes of each value of the main graph for one sample (inputs, intermediates, outputs).

    ``unknown`` values (shape inference left a dimension open) are not in ``per_sample``; they count
    at the mean of the known ones.
    """

    per_sample: dict[str, int]
    unknown: frozenset[str] = frozenset()

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.per_sample.values()))) if self.per_sample else 0.0

    @property
    def total(self) -> int:
        """Bytes of all values for one sample: an upper bound on what one sample keeps alive in ONNX Runtime."""
        return int(sum(self.per_sample.values()) + self.mean * len(self.unknown))

    def of(self, names: Iterable[str]) -> int:
        """Bytes of the named values for one sample (names the graph lacks count as unknown)."""
        return int(sum(self.per_sample[n] if n in self.per_sample else self.mean for n in set(names)))


def activation_sizes(model: ir.Model | onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> ActivationSizes:
    """Per-sample bytes of every value of ``model``'s main graph, from shape inference on the
    concrete shapes of one sample of ``inputs`` (``onnxcomp.samples.data`` feeds): of the group of
    equal-shaped feeds whose samples have the most input bytes, when feeds differ in shape.

    Args:
        model: the model (as IR or proto; not changed).
        inputs: sample inputs named after the model's inputs, each along its own sample axis.

    Returns:
        The sizes; all values unknown when shape inference fails.
    """
    proto = to_proto(model) if isinstance(model, ir.Model) else model
    firsts = [batch(group, 0, 1) for group in batches(inputs, 1 << 62)]  # one sample of each group
    one = max(firsts, key=lambda feed: sum(np.asarray(a).nbytes for a in feed.values()), default={})
    graph = onnx.GraphProto()
    graph.CopyFrom(shape_only(proto.graph))
    for value in graph.input:
        if value.name in one and value.type.HasField("tensor_type"):
            shape = value.type.tensor_type.shape
            shape.ClearField("dim")
            for size in np.shape(one[value.name]):
                shape.dim.add().dim_value = int(size)
    names = [out for node in graph.node for out in node.output if out] + [v.name for v in graph.input if v.name in one]
    stripped = onnx.helper.make_model(graph, opset_imports=proto.opset_import, ir_version=proto.ir_version)
    stripped.functions.extend(proto.functions)
    try:
        inferred = onnx.shape_inference.infer_shapes(stripped, strict_mode=False, data_prop=True)
    except Exception as error:  # noqa: BLE001 - inference is a best effort; unknown sizes count at a guess
        logger.debug("shape inference for activation sizes failed: %s", error)
        return ActivationSizes({}, frozenset(names))
    infos = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    sizes, unknown = {}, set()
    for name in names:
        size = _bytes(infos.get(name))
        if size is None:
            unknown.add(name)
        else:
            sizes[name] = size
    return ActivationSizes(sizes, frozenset(unknown))


def _bytes(info: onnx.ValueInfoProto | None) -> int | None:
    if info is None or not info.type.HasField("tensor_type"):
        return None
    tensor = info.type.tensor_type
    if not tensor.HasField("shape") or not tensor.elem_type:
        return None
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if any(d is None for d in dims):
        return None
    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 4
    return int(np.prod(dims, dtype=np.int64)) * itemsize


def batch_size(per_sample_bytes: float, budget: int | None = None, cap: int = MAX_BATCH) -> int:
    """Samples per batch so that ``per_sample_bytes`` each stay within ``budget`` (default
    ``ACTIVATION_BUDGET``), from 1 to ``cap``."""
    budget = ACTIVATION_BUDGET if budget is None else budget
    if per_sample_bytes <= 0:
        return cap
    return int(max(1, min(cap, budget // per_sample_bytes)))


def peak_rss_bytes() -> int | None:
    """Peak resident memory of this process or of its largest finished child, in bytes
    (``resource.getrusage``; Linux reports KiB, macOS bytes); None where there is no ``resource`` (Windows)."""
    if resource is None:
        return None
    scale = 1 if sys.platform == "darwin" else 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return int(max(own, children) * scale)


# Ops whose work is multiply-adds over a constant weight (input 1): op -> f(weight shape, node) = the length
# each output element reduces over
_REDUCED = {"Conv": lambda shape, node: int(np.prod(shape[1:])),
            "ConvInteger": lambda shape, node: int(np.prod(shape[1:])),
            "MatMul": lambda shape, node: shape[-2] if len(shape) >= 2 else 1,
            "MatMulInteger": lambda shape, node: shape[-2] if len(shape) >= 2 else 1,
            "Gemm": lambda shape, node: shape[1] if node.attributes.get_int("transB", 0) else shape[0]}


def multiply_adds(model: ir.Model, sizes: ActivationSizes) -> int:
    """Multiply-adds one sample costs in the main graph's Conv, MatMul and Gemm nodes with a
    constant weight: each output element times the length it reduces over (a Conv's C/g x kernel,
    a MatMul's K), output elements from `sizes` (values it cannot size are left out). Activation
    bytes do not say this: RivaGAN's 11x11x32 3-D convolutions compute ~3,900 multiply-adds per
    output value, a text detector's 3x3 and 1x1 convolutions tens to hundreds."""
    total = 0.0
    for node in model.graph:
        reduced = _REDUCED.get(node.op_type)
        if reduced is None or len(node.inputs) < 2 or node.inputs[1] is None or node.inputs[1].const_value is None:
            continue
        output = node.outputs[0]
        per_sample = sizes.per_sample.get(output.name) if output.name else None
        if per_sample is None:
            continue
        itemsize = output.dtype.itemsize if output.dtype is not None else 4
        total += per_sample / max(itemsize, 1) * reduced(list(node.inputs[1].const_value.shape), node)
    return int(total)

