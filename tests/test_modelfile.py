"""onnxcomp.modelfile: loading refuses broken files with one line that names the problem
(tensors, external data, order, map types); large external data stays mapped; saving is
atomic and writes the IR version ONNX Runtime 1.19 reads, without initializer value_info."""

from __future__ import annotations

import os
import signal

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxcomp import modelfile
from onnxcomp.errors import OnnxcompError
from onnxcomp.modelfile import (Terminated, atomic_write, check_external_data, check_tensors, file_bytes,
                                is_streamed, load_external_leftovers, load_model, require_file, save_model,
                                serialized_bytes, terminate_cleanly, to_proto)
from tests.conftest import build_model

TEXT = """
<ir_version: 10, opset_import: ["" : 17]>
g (float[N, 4] x) => (float[N, 4] y) {
  h = MatMul(x, w)
  y = Relu(h)
}
"""


def proto_with(weight: np.ndarray | None = None) -> onnx.ModelProto:
    proto = onnx.parser.parse_model(TEXT)
    weight = np.arange(16, dtype=np.float32).reshape(4, 4) if weight is None else weight
    proto.graph.initializer.append(ir.serde.serialize_tensor(ir.tensor(weight, name="w")))
    return proto


def save_external(folder, proto=None) -> tuple:
    path = folder / "model.onnx"
    onnx.save(proto or proto_with(), str(path), save_as_external_data=True, location="w.bin", size_threshold=0)
    return path, folder / "w.bin"


def set_external(proto: onnx.ModelProto, **entries: str) -> None:
    tensor = proto.graph.initializer[0]
    del tensor.external_data[:]
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)


def test_require_file(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"")
    assert require_file(str(tmp_path / "m.onnx")) == tmp_path / "m.onnx"
    with pytest.raises(OnnxcompError, match=f"^{tmp_path}/none.onnx: no such file$"):
        require_file(tmp_path / "none.onnx")
    with pytest.raises(OnnxcompError, match=f"^{tmp_path}: not a file$"):
        require_file(tmp_path)


def test_load_model_reads_a_model_and_its_small_external_data_into_memory(tmp_path):
    path, data = save_external(tmp_path)
    model = load_model(path)
    assert not is_streamed(model)
    np.testing.assert_array_equal(model.graph.initializers["w"].const_value.numpy(),
                                  np.arange(16, dtype=np.float32).reshape(4, 4))
    assert [node.op_type for node in model.graph] == ["MatMul", "Relu"]
    assert file_bytes(path) == path.stat().st_size + data.stat().st_size == path.stat().st_size + 64


@pytest.mark.parametrize(("content", "message"), [
    (b"\xff\xff\xff\xffgarbage", "not a readable ONNX model"),
    (b"", "not an ONNX model (no graph nodes found)"),
])
def test_files_that_are_not_models_are_one_line(tmp_path, content, message):
    path = tmp_path / "m.onnx"
    path.write_bytes(content)
    with pytest.raises(OnnxcompError, match=f"^{path}: {message.replace('(', '[(]').replace(')', '[)]')}") as caught:
        load_model(path)
    assert "\n" not in str(caught.value)


def test_tensor_data_must_match_shape_and_type():
    proto = proto_with()
    proto.graph.initializer[0].raw_data = proto.graph.initializer[0].raw_data[:60]
    with pytest.raises(OnnxcompError, match=r"^tensor 'w' holds 60 B of data, but its shape \[4, 4\] and type FLOAT need 64 B$"):
        check_tensors(proto)
    proto = proto_with()
    proto.graph.initializer[0].data_type = 999
    with pytest.raises(OnnxcompError, match="^tensor 'w' has an unknown data type 999$"):
        check_tensors(proto)
    proto = proto_with()
    proto.graph.initializer[0].dims[0] = -4
    with pytest.raises(OnnxcompError, match=r"^tensor 'w' has a negative dimension \[-4, 4\]$"):
        check_tensors(proto)
    proto = proto_with()
    proto.graph.initializer.append(onnx.TensorProto(name="t", data_type=onnx.TensorProto.FLOAT, dims=[2, 3],
                                                    float_data=[1.0, 2.0]))  # typed field, two values for six
    with pytest.raises(OnnxcompError, match=r"^tensor 't' has data that does not match its shape and type \("):
        check_tensors(proto)
    check_tensors(proto_with())  # a good model passes


def test_external_data_must_stay_in_the_folder_and_be_long_enough(tmp_path):
    path, data = save_external(tmp_path)
    proto = onnx.load(str(path), load_external_data=False)
    check_external_data(proto, tmp_path)
    set_external(proto, location="../w.bin")
    with pytest.raises(OnnxcompError, match=r"^tensor 'w' points to external data '\.\./w\.bin' outside the model's folder"):
        check_external_data(proto, tmp_path)
    set_external(proto, location=str(data))  # absolute, even into the folder
    with pytest.raises(OnnxcompError, match="outside the model's folder; refusing to read it$"):
        check_external_data(proto, tmp_path)
    set_external(proto, location="other.bin")
    with pytest.raises(OnnxcompError, match=r"^missing external data file 'other\.bin' for tensor 'w' \(expected next"):
        check_external_data(proto, tmp_path)
    set_external(proto, location="w.bin", offset="8")
    with pytest.raises(OnnxcompError, match=r"^external data file 'w\.bin' is too short for tensor 'w'$"):
        check_external_data(proto, tmp_path)
    set_external(proto, location="w.bin", length="32")
    with pytest.raises(OnnxcompError, match=r"^tensor 'w': external data length 32 B does not match its shape and type \(64 B\)$"):
        check_external_data(proto, tmp_path)
    set_external(proto, location="w.bin", offset="-1")
    with pytest.raises(OnnxcompError, match=r"^tensor 'w': external data offset '-1' is not a non-negative integer$"):
        check_external_data(proto, tmp_path)


def test_nodes_out_of_order_are_sorted_at_load(tmp_path):
    proto = proto_with()
    proto.graph.node.reverse()  # Relu before the MatMul that feeds it
    path = tmp_path / "unsorted.onnx"
    path.write_bytes(proto.SerializeToString())
    assert [node.op_type for node in load_model(path).graph] == ["MatMul", "Relu"]
    proto.graph.node[0].input[0] = "y"  # now a cycle: no order exists
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(OnnxcompError, match=f"^{path}: invalid ONNX model: "):
        load_model(path)


def test_map_typed_values_other_than_a_zipmap_output_are_refused_with_how_to_export_without(tmp_path):
    proto = proto_with()
    value = proto.graph.value_info.add(name="h")
    map_type = value.type.sequence_type.elem_type.map_type
    map_type.key_type = onnx.TensorProto.INT64
    map_type.value_type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    path = tmp_path / "zipmap.onnx"
    path.write_bytes(proto.SerializeToString())
    with pytest.raises(OnnxcompError, match=rf"^{path}: 'h' is a map or a sequence of maps that is not a ZipMap's graph output .*"
                                            r"skl2onnx: options=\{'zipmap': False\}"):
        load_model(path)


def test_large_external_data_stays_mapped_until_the_leftovers_are_loaded(tmp_path, monkeypatch):
    path, data = save_external(tmp_path)
    monkeypatch.setattr(modelfile, "IN_MEMORY_EXTERNAL_BYTES", 32)  # 64 B of weights count as large
    model = load_model(path)
    assert is_streamed(model)
    assert isinstance(model.graph.initializers["w"].const_value, ir.ExternalTensor)
    load_external_leftovers(model)
    assert not is_streamed(model)
    data.unlink()  # the model no longer points at the input's data file
    np.testing.assert_array_equal(ir.serde.deserialize_tensor(to_proto(model).graph.initializer[0]).numpy(),
                                  np.arange(16, dtype=np.float32).reshape(4, 4))


def test_to_proto_caps_the_ir_version_drops_initializer_value_info_and_keeps_metadata_order():
    proto = onnx.parser.parse_model(TEXT.replace("ir_version: 10", "ir_version: 11"))
    proto.graph.initializer.append(ir.serde.serialize_tensor(ir.tensor(np.ones((4, 4), np.float32), name="w")))
    for key in ("zeta", "alpha", "mid"):
        proto.metadata_props.add(key=key, value=key.upper())
    model = ir.serde.deserialize_model(proto)
    model.graph.initializers["w"].shape = ir.Shape([4, 4])  # onnx_ir writes value_info for typed initializers
    model.graph.node(0).outputs[0].shape = ir.Shape(["N", 4])
    model.graph.node(0).outputs[0].dtype = ir.DataType.FLOAT
    assert "w" in {v.name for v in ir.serde.serialize_model(model).graph.value_info}
    written = to_proto(model)
    assert written.ir_version == 10
    assert {v.name for v in written.graph.value_info} == {"h"}
    assert [(e.key, e.value) for e in written.metadata_props] == [("zeta", "ZETA"), ("alpha", "ALPHA"), ("mid", "MID")]
    assert serialized_bytes(model) == written.SerializeToString()


def test_save_model_writes_atomically_and_refuses_existing_files(tmp_path):
    model = build_model(TEXT, {"w": np.eye(4, dtype=np.float32)})
    path = tmp_path / "out.onnx"
    written = save_model(model, path)
    assert written == path.stat().st_size == len(serialized_bytes(model))
    assert [p.name for p in tmp_path.iterdir()] == ["out.onnx"]  # no temporary left
    with pytest.raises(OnnxcompError, match=f"^{path} exists; pass --force to overwrite it$"):
        save_model(model, path)
    assert save_model(model, path, overwrite=True) == written
    with pytest.raises(OnnxcompError, match=f"^output folder {tmp_path}/none does not exist$"):
        save_model(model, tmp_path / "none" / "out.onnx")


def test_atomic_write_leaves_nothing_on_failure_and_gives_the_usual_mode(tmp_path):
    path = tmp_path / "out.bin"

    def failing(handle):
        handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, failing)
    assert list(tmp_path.iterdir()) == []

    def full_disk(handle):
        raise OSError(28, "No space left on device", str(path))

    with pytest.raises(OnnxcompError, match=f"^cannot write {path}: No space left on device$"):
        atomic_write(path, full_disk)
    assert list(tmp_path.iterdir()) == []
    umask = os.umask(0o027)
    try:
        atomic_write(path, lambda handle: handle.write(b"whole"))
    finally:
        os.umask(umask)
    assert path.read_bytes() == b"whole"
    assert path.stat().st_mode & 0o777 == 0o640


def test_sigterm_raises_terminated_only_inside_terminate_cleanly():
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    with pytest.raises(Terminated), terminate_cleanly():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert issubclass(Terminated, KeyboardInterrupt)  # unwinds like Ctrl-C

    def own(signum, frame):
        raise RuntimeError("caller's handler")

    previous = signal.signal(signal.SIGTERM, own)
    try:
        with terminate_cleanly():
            assert signal.getsignal(signal.SIGTERM) is own  # a handler already set is kept
    finally:
        signal.signal(signal.SIGTERM, previous)
