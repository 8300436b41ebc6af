"""Running models in ONNX Runtime (whichever build is installed: training or plain)."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable

import numpy as np
import onnx

from onnxcomp.errors import OnnxcompError
from onnxcomp.samples.feeds import batches, join_outputs, sample_count

logger = logging.getLogger(__name__)


class RunFailedError(OnnxcompError):
    """ONNX Runtime raised an error running the model; ``cause`` is its message (``describe_error``)."""

    def __init__(self, message: str, cause: str = ""):
        super().__init__(message)
        self.cause = cause


def _ort():
    try:
        import onnxruntime
    except ImportError:
        raise OnnxcompError("onnxruntime is not installed: pip install 'onnxcomp[ort]' (or '[train]')") from None
    return onnxruntime


def session(model: onnx.ModelProto | bytes | str | os.PathLike, threads: int | None = None, arena: bool = True):
    """An InferenceSession on the CPU provider (the reference every other provider must match).

    ``arena=False`` for a session that lives long or fetches large activations: ONNX Runtime's
    CPU arena keeps its peak (one forward pass at the largest feed) for the session's life, which
    took the PP-OCRv4 detector's calibrated run from 1.1 to 1.5 GB; without it each run's memory
    is freed, at some cost in speed (layout at 1/4 data-free: about 10% slower with no arena
    anywhere)."""
    ort = _ort()
    options = ort.SessionOptions()
    # 4 = fatal only: kernel failures are raised as exceptions (and turned into one-line
    # errors below); at 3 ORT also prints them to stderr in colour.
    options.log_severity_level = 4
    options.enable_cpu_mem_arena = arena
    if threads:
        options.intra_op_num_threads = threads
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT raises its own exception types per build
        if EXTENSIONS_DOMAIN in str(error) and _register_extensions(options):
            return _session_with_extensions(ort, source, options)
        raise OnnxcompError(f"ONNX Runtime {ort.__version__} cannot load the model: {describe_error(error)}"
                            + _load_hint(str(error))) from None


# Custom operators of onnxruntime-extensions (tokenizers, audio and image decoding models carry
# for their pre- and post-processing): registered from that package where it is installed.
EXTENSIONS_DOMAIN = "ai.onnx.contrib"


def _register_extensions(options) -> bool:
    try:
        import onnxruntime_extensions
    except ImportError:
        return False
    options.register_custom_ops_library(onnxruntime_extensions.get_library_path())
    return True


def _session_with_extensions(ort, source, options):
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as error:
        raise OnnxcompError(f"ONNX Runtime {ort.__version__} cannot load the model (with onnxruntime-extensions' "
                            f"operators): {describe_error(error)}") from None


def _load_hint(error: str) -> str:
    if EXTENSIONS_DOMAIN in error:
        return (f" (operators of the {EXTENSIONS_DOMAIN!r} domain come from onnxruntime-extensions: install it where "
                "onnxcomp runs, e.g. pip install onnxruntime-extensions, and onnxcomp registers them)")
    if "Could not find an implementation" in error:
        return " (a newer ONNX Runtime may implement it; onnxcomp runs the model in the one installed with it)"
    return ""


def run_batches(sess, inputs: dict[str, np.ndarray], batch_size: int = 256, generated: bool = False) -> list[np.ndarray]:
    """Run all samples through a session in batches (group by group, each input along its own
    sample axis); returns each output joined along its sample axis (``feeds.join_outputs``).

    ``generated``: the inputs were generated, not given (a failure then suggests the flags that pin them).
    """
    names = [o.name for o in sess.get_outputs()]
    chunks: list[list[np.ndarray]] = [[] for _ in names]
    sizes: list[int] = []
    for feed in batches(inputs, batch_size):
        sizes.append(sample_count(feed))
        try:
            results = sess.run(names, feed)
        except Exception as error:
            message = describe_error(error)
            raise RunFailedError(f"ONNX Runtime failed to run the model on the {'generated' if generated else 'sample'} "
                                 f"inputs: {message.rstrip('. ')}; {input_hint(message, generated, inputs)}", message) from None
        for chunk, result in zip(chunks, results):
            chunk.append(np.asarray(result))
    return [join_outputs(chunk, sizes) for chunk in chunks]


# "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : " before every message of ORT's Python binding
_STATUS_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_NODE_FAILURE = re.compile(r"Non-zero status code returned while running (\S+) node\. Name:'(.*?)' Status Message: (.*)",
                           re.DOTALL)
# ORT_ENFORCE's "/onnxruntime_src/.../element_wise_ops.h:540 void f(args) COND was false. MESSAGE"
_SOURCE_LOCATION = re.compile(r"^/?\S+\.(?:h|hh|hpp|cc|cpp|cu):\d+\s+")
_CPP_SIGNATURE = re.compile(r"^[^()]*\([^()]*\)\s*(?:const\s*)?")
_INPUT_NAME = re.compile(r"\b[Ii]nput(?: name)?: '?([^\s',;]+)'?")
MAX_MESSAGE_CHARS = 2000  # a pathological message stays readable; real causes are far shorter


def describe_error(error: BaseException | str) -> str:
    """ONNX Runtime's error on one line, cause included: the failing node (op and name) and the reason.

    ORT puts the cause last ("... Status Message: <source>:540 <function> <condition> was false.
    Attempting to broadcast an axis by a dimension other than 1. 3 by 5"); the status prefix,
    source location and C++ signature are dropped, everything else is kept.
    """
    text = " ".join(line.strip() for line in str(error).strip().splitlines() if line.strip())
    if not text:
        return "unknown error" if isinstance(error, str) else type(error).__name__
    text = _STATUS_PREFIX.sub("", text)
    node = _NODE_FAILURE.search(text)
    if node:
        op, name, status = node.groups()
        status = status.strip()
        located = _SOURCE_LOCATION.sub("", status)
        if located != status:  # ORT_ENFORCE / ORT_THROW: "<location> <C++ signature> [<condition> was false. ]<cause>"
            if " was false. " in located:
                status = located.split(" was false. ", 1)[1]
            else:
                status = _CPP_SIGNATURE.sub("", located, count=1) or located
        text = f"{op} node {name!r}: {status}" if name else f"{op} node: {status}"
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + " ..."
    return text


def input_hint(message: str, generated: bool, names: Iterable[str] = ()) -> str:
    """The flag that would help after ONNX Runtime failed on the model's inputs (named when ORT names one of ``names``)."""
    match = _INPUT_NAME.search(message)
    name = match.group(1) if match and match.group(1) in set(names) else "NAME"
    if generated:
        return (f"pin the input's shape or value ONNX Runtime expects with --input-shape {name}:DIMS or "
                f"--input-value {name}=V, or give sample inputs with --data")
    return "check the inputs' shapes and types in --data (or pin a shared value with --input-value NAME=V)"


_INTEGER_TYPES = {onnx.TensorProto.INT8, onnx.TensorProto.INT16, onnx.TensorProto.INT32, onnx.TensorProto.INT64,
                  onnx.TensorProto.UINT8, onnx.TensorProto.UINT16, onnx.TensorProto.UINT32, onnx.TensorProto.UINT64}


def integer_divisions(model: onnx.ModelProto, limit: int = 5) -> str:
    """The model's integer ``Div``/``Mod`` nodes (where ONNX Runtime dies of SIGFPE on a zero divisor),
    as "Div 'name', ..." (at most ``limit`` named); empty when there are none. Main graph only."""
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as error:  # types of the graph's own inputs and initializers still tell
        logger.debug("shape inference failed: %s", error)
    graph = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
    types.update({tensor.name: tensor.data_type for tensor in graph.initializer})
    nodes = [f"{node.op_type} {node.name!r}" if node.name else node.op_type for node in graph.node
             if node.op_type in ("Div", "Mod") and node.input and types.get(node.input[0]) in _INTEGER_TYPES]
    more = f" and {len(nodes) - limit} more" if len(nodes) > limit else ""
    return ", ".join(nodes[:limit]) + more
