"""Loading models safely and saving them atomically."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import tempfile
import threading
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from onnxcomp.model import limits, maps
from onnxcomp.errors import OnnxcompError

logger = logging.getLogger(__name__)


def _not_binary_attribute_notice(record: logging.LogRecord) -> bool:
    """onnx_ir warns that a string attribute holding bytes makes the model "invalid"; custom
    operators keep binary data there by design (onnxruntime-extensions' SentencepieceTokenizer holds
    its serialized model), and both are read and written back as the same bytes."""
    return "UTF-8" not in str(record.msg)


logging.getLogger("onnx_ir.serde").addFilter(_not_binary_attribute_notice)

MAX_PROTO_BYTES = 2**31 - 1  # protobuf's limit: larger models keep weights in external data
# Saved IR version: ONNX Runtime 1.19 loads IR <= 10; onnx >= 1.23 writes 11+ by default.
MAX_IR_VERSION = 10
# External data below this is read into memory at load; larger models stay memory-mapped.
IN_MEMORY_EXTERNAL_BYTES = 1 << 30


def _external_tensors(proto: onnx.ModelProto):
    for tensor in onnx.external_data_helper._get_all_tensors(proto):  # noqa: SLF001 - onnx's own walker
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            yield tensor


def _external_number(tensor: onnx.TensorProto, info: dict[str, str], key: str) -> int | None:
    text = info.get(key)
    if text is None or text == "":
        return None
    try:
        number = int(text)
    except ValueError:
        number = -1
    if number < 0:
        raise OnnxcompError(f"tensor {tensor.name!r}: external data {key} {text!r} is not a non-negative integer")
    return number


def check_external_data(proto: onnx.ModelProto, base_dir: Path) -> None:
    """Refuse external-data paths that leave the model's folder, or files that are missing/short."""
    try:
        root = base_dir.resolve()
    except (OSError, RuntimeError) as error:
        raise OnnxcompError(f"cannot resolve the model's folder {base_dir}: {_os_reason(error)}") from None
    for tensor in _external_tensors(proto):
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if "\0" in location:
            raise OnnxcompError(f"tensor {tensor.name!r} has an invalid external data location {location!r}")
        try:
            _check_external_file(tensor, info, root, location)
        except (OSError, RuntimeError) as error:  # a link loop, or the file swapped while we look at it
            raise OnnxcompError(f"cannot read external data {location!r} of tensor {tensor.name!r}: {_os_reason(error)}") from None


def _check_external_file(tensor: onnx.TensorProto, info: dict[str, str], root: Path, location: str) -> None:
    target = (root / location).resolve()
    if not location or Path(location).is_absolute() or root not in target.parents:
        raise OnnxcompError(
            f"tensor {tensor.name!r} points to external data {location!r} outside the model's folder; refusing to read it"
        )
    if not target.is_file():
        raise OnnxcompError(f"missing external data file {location!r} for tensor {tensor.name!r} (expected next to the model)")
    offset = _external_number(tensor, info, "offset") or 0
    length = _external_number(tensor, info, "length")
    expected = _tensor_bytes(tensor)
    if length is not None and expected is not None and length != expected:
        raise OnnxcompError(f"tensor {tensor.name!r}: external data length {length} B does not match its shape and type ({expected} B)")
    needed = offset + (length if length is not None else expected or 0)
    if needed > target.stat().st_size:
        raise OnnxcompError(f"external data file {location!r} is too short for tensor {tensor.name!r}")


# Sub-byte element types are packed; every other type's size is its numpy item size.
_PACKED_BITS = {onnx.TensorProto.UINT4: 4, onnx.TensorProto.INT4: 4, getattr(onnx.TensorProto, "FLOAT4E2M1", -4): 4,
                getattr(onnx.TensorProto, "UINT2", -2): 2, getattr(onnx.TensorProto, "INT2", -3): 2}
_KNOWN_TYPES = set(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}


def _tensor_bytes(tensor: onnx.TensorProto) -> int | None:
    """Bytes the tensor's shape and type call for (None where the type has no fixed size)."""
    count = 1
    for dim in tensor.dims:
        count *= dim
    if tensor.data_type in _PACKED_BITS:
        return (count * _PACKED_BITS[tensor.data_type] + 7) // 8
    if tensor.data_type == onnx.TensorProto.STRING:
        return None
    try:
        return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except Exception:  # a type numpy cannot describe (e.g. 6-bit floats): not checked here
        return None


def check_tensors(proto: onnx.ModelProto) -> None:
    """Every tensor (initializers, Constant attributes, subgraphs) has a known type, a valid
    shape and as much data as its shape and type call for. The onnx checker leaves these to
    the first reader of the data, which would fail half-way through compression."""
    for tensor in onnx.external_data_helper._get_all_tensors(proto):  # noqa: SLF001 - onnx's own walker
        name = tensor.name or "<unnamed>"
        if tensor.data_type not in _KNOWN_TYPES:
            raise OnnxcompError(f"tensor {name!r} has an unknown data type {tensor.data_type}")
        if any(dim < 0 for dim in tensor.dims):
            raise OnnxcompError(f"tensor {name!r} has a negative dimension {list(tensor.dims)}")
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            continue  # checked against the data file in check_external_data
        expected = _tensor_bytes(tensor)
        if tensor.HasField("raw_data"):
            if expected is not None and len(tensor.raw_data) != expected:
                raise OnnxcompError(
                    f"tensor {name!r} holds {len(tensor.raw_data)} B of data, but its shape {list(tensor.dims)} and type "
                    f"{onnx.TensorProto.DataType.Name(tensor.data_type)} need {expected} B"
                )
            continue
        try:
            array = onnx.numpy_helper.to_array(tensor)
        except Exception as error:  # onnx raises assorted errors on inconsistent typed fields
            raise OnnxcompError(f"tensor {name!r} has data that does not match its shape and type ({_first_line(error)})") from None
        if tensor.data_type != onnx.TensorProto.STRING and array.size != math.prod(tensor.dims):
            raise OnnxcompError(f"tensor {name!r} has {array.size} values, but its shape {list(tensor.dims)} needs {math.prod(tensor.dims)}")


def require_file(path: str | os.PathLike) -> Path:
    """`path` as a Path; OnnxcompError if it does not exist or is not a file."""
    path = Path(path)
    if not path.exists():
        raise OnnxcompError(f"{path}: no such file")
    if not path.is_file():
        raise OnnxcompError(f"{path}: not a file")
    return path


def load_model(path: str | os.PathLike) -> ir.Model:
    """Read an .onnx file (external data memory-mapped, never modified) into onnx_ir.

    Raises OnnxcompError with one line that names the problem for anything that is not a
    loadable ONNX model.
    """
    path = require_file(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, UnicodeDecodeError) as error:
        raise OnnxcompError(f"{path}: not a readable ONNX model (corrupt or truncated protobuf: {_first_line(error)})") from None
    except Exception as error:  # protobuf raises assorted errors on garbage input
        raise OnnxcompError(f"{path}: not a readable ONNX model ({type(error).__name__}: {_first_line(error)})") from None
    if not proto.HasField("graph") or len(proto.graph.node) == 0:
        raise OnnxcompError(f"{path}: not an ONNX model (no graph nodes found)")
    check_tensors(proto)
    limits.check_graph(proto)
    check_external_data(proto, path.parent)
    densified = limits.densify_sparse_initializers(proto.graph)
    try:
        # Checking by path resolves external data relative to the model's folder (and has no
        # 2 GB protobuf limit); checking the in-memory proto would resolve it against the cwd.
        # A model whose sparse initializers were made dense is checked as it will be compressed
        # (the checker rejects some sparse initializers that ONNX Runtime accepts).
        onnx.checker.check_model(proto if densified and not any(_external_tensors(proto)) else str(path))
    except onnx.checker.ValidationError as error:
        if "topologically sorted" not in str(error):
            raise OnnxcompError(f"{path}: invalid ONNX model: {_first_line(error)}") from None
        proto = _sorted(proto, path, error)  # ONNX Runtime runs nodes in any order; the checker and we want them sorted
    except Exception as error:
        raise OnnxcompError(f"{path}: invalid ONNX model ({type(error).__name__}: {_first_line(error)})") from None
    external = sum(_external_length(tensor) for tensor in _external_tensors(proto))
    limits.check_value_sizes(proto, path.stat().st_size + external)
    detached = maps.detach_maps(proto)  # scikit-learn's ZipMap: put back when the output is written
    _refuse_maps(proto, path)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as error:
        raise OnnxcompError(f"{path}: cannot import the graph ({type(error).__name__}: {_first_line(error)})") from None
    if detached:
        model.meta[maps.META_KEY] = detached
    ir.external_data.set_base_dir(model.graph, str(path.parent))
    if external and external < IN_MEMORY_EXTERNAL_BYTES:
        # Every later step (ONNX Runtime sessions built from protos, serialization) then sees
        # ordinary tensors; the input's data file is only read.
        try:
            ir.external_data.load_to_model(model)
        except (OSError, ValueError) as error:  # e.g. the data file changed or emptied since it was checked
            raise OnnxcompError(f"{path}: cannot read the model's external data ({type(error).__name__}: "
                                f"{_first_line(error)}); was it changed while onnxcomp ran?") from None
    return model


def _refuse_maps(proto: onnx.ModelProto, path: Path) -> None:
    """Map-typed graph values (scikit-learn converters' ZipMap output: a sequence of maps) cannot
    be imported by onnx_ir ("Map types are not supported yet"): say so, and how to export without."""
    graph = proto.graph
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if maps.is_map(value.type):
            raise OnnxcompError(
                f"{path}: {value.name!r} is a map or a sequence of maps that is not a ZipMap's graph output "
                "(those onnxcomp sets aside and puts back); onnxcomp's graph library (onnx_ir) cannot import map "
                "types yet. Export the model without it (skl2onnx: options={'zipmap': False}) to compress it")


def _external_length(tensor: onnx.TensorProto) -> int:
    """Bytes a tensor reads from external data: its `length` key, else what its shape and type
    call for (the key is optional; `check_external_data` has checked the two agree)."""
    length = _external_number(tensor, {e.key: e.value for e in tensor.external_data}, "length")
    return length if length is not None else (_tensor_bytes(tensor) or 0)


def is_streamed(model: ir.Model) -> bool:
    """Whether weights stay memory-mapped in external data (inputs with more than
    IN_MEMORY_EXTERNAL_BYTES of it): such models are compressed one weight at a time."""
    return any(isinstance(value.const_value, ir.ExternalTensor) for value in model.graph.initializers.values())


def release(tensor) -> None:
    """Unmap an external tensor's data (it is mapped again when next read); others are kept."""
    if isinstance(tensor, ir.ExternalTensor):
        try:
            tensor.release()
        except BufferError:  # an array still views the mapping; it is unmapped when that goes
            logger.debug("%s: still in use, left mapped", tensor.name)


def load_external_leftovers(model: ir.Model) -> None:
    """Read the initializers still in external data into memory (a compressed model's dense
    leftovers: biases, norms), so the output never points at the input's data file."""
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor):
            value.const_value = ir.tensor(np.array(tensor.numpy()), name=value.name)
            release(tensor)


def _sorted(proto: onnx.ModelProto, path: Path, error: Exception) -> onnx.ModelProto:
    """The model with its nodes in topological order (onnx_ir's sort), checked again; a model
    whose nodes cannot be ordered (a cycle, a value nothing produces) keeps the checker's error."""
    try:
        model = ir.serde.deserialize_model(proto)
        model.graph.sort()
        ordered = ir.serde.serialize_model(model)
        onnx.checker.check_model(ordered)
    except Exception:
        raise OnnxcompError(f"{path}: invalid ONNX model: {' '.join(str(error).split())[:300]}") from None
    logger.info("%s: nodes were not in topological order; sorted them", path)
    return ordered


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__


def to_proto(model: ir.Model) -> onnx.ModelProto:
    proto = ir.serde.serialize_model(model)
    proto.ir_version = min(proto.ir_version or MAX_IR_VERSION, MAX_IR_VERSION)
    _drop_initializer_value_info(proto.graph)
    _keep_metadata_order(proto, list(model.metadata_props))
    return proto


def _keep_metadata_order(proto: onnx.ModelProto, keys: list[str]) -> None:
    """onnx_ir writes model-level metadata sorted by key; put the entries back in the model's
    own order (the input file's), so the output lists them as the input did."""
    order = {key: index for index, key in enumerate(keys)}
    entries = [(entry.key, entry.value) for entry in proto.metadata_props]
    ordered = sorted(entries, key=lambda entry: order.get(entry[0], len(order)))
    if ordered != entries:
        del proto.metadata_props[:]
        for key, value in ordered:
            proto.metadata_props.add(key=key, value=value)


def _drop_initializer_value_info(graph: onnx.GraphProto) -> None:
    """onnx_ir writes a value_info entry for every initializer; the initializer already states
    its type and shape, so the entry is dead weight (660 B of a 10.4 KB LeNet-5 file)."""
    initializers = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    kept = [v for v in graph.value_info if v.name not in initializers]
    if len(kept) != len(graph.value_info):
        del graph.value_info[:]
        graph.value_info.extend(kept)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _drop_initializer_value_info(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    _drop_initializer_value_info(subgraph)


def serialized_bytes(model: ir.Model) -> bytes:
    """The exact bytes `save_model` writes for a model that fits in one protobuf."""
    return to_proto(model).SerializeToString()


def save_model(model: ir.Model, path: str | os.PathLike, *, overwrite: bool = False) -> int:
    """Write the model atomically (temp file + rename); return bytes on disk (.onnx + data).

    Models over protobuf's 2 GB limit get their weights in `<name>.data` beside the file.
    OS errors (full disk, read-only folder) become one-line OnnxcompErrors.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OnnxcompError(f"{path} exists; pass --force to overwrite it")
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise OnnxcompError(f"output folder {directory} does not exist")
    proto = to_proto(model)
    if proto.ByteSize() < MAX_PROTO_BYTES:
        data = proto.SerializeToString()
        atomic_write(path, lambda handle: handle.write(data))
        return len(data)
    data_name = path.name + ".data"
    try:
        with terminate_cleanly(), tempfile.TemporaryDirectory(dir=directory, prefix=".onnxcomp-") as staging:
            staged = Path(staging) / path.name
            ir.save(model, staged, external_data=data_name)
            os.replace(Path(staging) / data_name, directory / data_name)
            os.replace(staged, path)
        return path.stat().st_size + (directory / data_name).stat().st_size
    except OSError as error:
        raise OnnxcompError(f"cannot write {path}: {_os_reason(error)}") from None


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that `finally` blocks remove temporary files."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextlib.contextmanager
def terminate_cleanly():
    """Within the block, SIGTERM raises `Terminated` (where it would otherwise kill the process
    outright), so a write in progress removes its temporary file. A handler already set (the
    CLI's, or the caller's) is kept; outside the main thread this does nothing."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def atomic_write(path: Path, write) -> None:
    """Write via a temporary file in the same folder and rename it into place.

    The temporary file is removed on any failure, Ctrl-C and SIGTERM included; OS errors (a
    full disk, a read-only or missing folder, a file too large) become one-line OnnxcompErrors.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OnnxcompError(f"output folder {folder} does not exist")
    with terminate_cleanly():
        try:
            handle = tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}.", suffix=".tmp", delete=False)
        except OSError as error:
            raise OnnxcompError(f"cannot write {path}: {_os_reason(error)}") from None
        try:
            with handle:
                write(handle)
                handle.flush()
                os.fsync(handle.fileno())
            # NamedTemporaryFile creates mode 0600; give the output the usual umask-based mode.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(handle.name, 0o666 & ~umask)
            os.replace(handle.name, path)
        except BaseException as error:
            with contextlib.suppress(OSError):
                os.unlink(handle.name)
            if isinstance(error, OSError):
                raise OnnxcompError(f"cannot write {path}: {_os_reason(error)}") from None
            raise


def _os_reason(error: BaseException) -> str:
    """An OS error's reason without its repeated file names (e.g. "No space left on device")."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return _first_line(error)


def file_bytes(path: str | os.PathLike) -> int:
    """Bytes on disk of a model: the .onnx plus every external data file it references."""
    path = require_file(path)
    total = path.stat().st_size
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:
        return total
    seen = set()
    for tensor in _external_tensors(proto):
        location = {e.key: e.value for e in tensor.external_data}.get("location")
        if location and location not in seen:
            seen.add(location)
            data = path.parent / location
            if data.is_file():
                total += data.stat().st_size
    return total
