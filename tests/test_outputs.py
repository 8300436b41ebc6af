"""onnxcomp.outputs: the files a run reads, and every path it will write checked against them
(links included), against each other, and for a writable folder, before any work; folders a
failed run created are removed again. tests/test_hostile.py checks the same through the CLI."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from onnxcomp.errors import OnnxcompError
from onnxcomp.outputs import (Output, check_folder, check_new_folder, check_outputs, folder_removed_on_failure,
                              input_files, make_folder, remove_folders, same_file)


def save_external(folder, name="model.onnx", location="weights.bin"):
    """A one-MatMul model whose weight lives in `location` beside it."""
    proto = onnx.parser.parse_model("""
    <ir_version: 10, opset_import: ["" : 17]>
    g (float[N, 4] x) => (float[N, 4] y) { y = MatMul(x, w) }
    """)
    proto.graph.initializer.append(ir.serde.serialize_tensor(ir.tensor(np.ones((4, 4), np.float32), name="w")))
    path = folder / name
    onnx.save(proto, str(path), save_as_external_data=True, location=location, size_threshold=0)
    return path


def test_input_files_are_the_model_its_external_data_and_the_sample_data(tmp_path):
    model = save_external(tmp_path)
    samples = tmp_path / "samples"
    samples.mkdir()
    for name in ("b.npz", "a.npz"):
        (samples / name).write_bytes(b"x")
    (samples / "nested").mkdir()
    data = tmp_path / "data.npz"
    assert input_files(model) == [model, tmp_path / "weights.bin"]
    assert input_files(model, None, data, samples) == [model, tmp_path / "weights.bin", data, samples,
                                                       samples / "a.npz", samples / "b.npz"]


def test_a_file_that_is_not_a_model_is_only_itself(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\x00not a protobuf")
    assert input_files(garbage) == [garbage]
    assert input_files(tmp_path / "missing.onnx") == [tmp_path / "missing.onnx"]


def test_same_file_follows_symlinks_and_hard_links(tmp_path):
    original = tmp_path / "a.onnx"
    original.write_bytes(b"model")
    os.symlink(original, tmp_path / "soft.onnx")
    os.link(original, tmp_path / "hard.onnx")
    (tmp_path / "other.onnx").write_bytes(b"model")
    assert same_file(tmp_path / "soft.onnx", original)
    assert same_file(tmp_path / "hard.onnx", original)
    assert not same_file(tmp_path / "other.onnx", original)  # same bytes, another file
    assert same_file(tmp_path / "new.onnx", tmp_path / "sub" / ".." / "new.onnx")  # neither exists: by path
    assert not same_file(tmp_path / "new.onnx", tmp_path / "newer.onnx")
    assert not same_file(tmp_path / "bad\0name", original)  # cannot be resolved: aliases nothing


def test_output_over_an_input_is_refused_with_which_input(tmp_path):
    model = save_external(tmp_path)
    inputs = input_files(model)
    with pytest.raises(OnnxcompError, match=f"^the output model {model} is the input model; onnxcomp never writes"):
        check_outputs([Output(model, "the output model")], inputs, force=True)
    data = tmp_path / "weights.bin"
    with pytest.raises(OnnxcompError, match=rf"^the --report file {data} is an input file \({data}\)"):
        check_outputs([Output(data, "the --report file")], inputs, force=True)
    os.symlink(model, tmp_path / "link.onnx")
    with pytest.raises(OnnxcompError, match="is the input model"):
        check_outputs([Output(tmp_path / "link.onnx", "the output model")], inputs, force=True)


def test_two_outputs_on_one_path_are_refused(tmp_path):
    outputs = [Output(tmp_path / "out.onnx", "the output model"), Output(tmp_path / "out.onnx", "the --report file")]
    with pytest.raises(OnnxcompError, match=f"^the --report file {tmp_path}/out.onnx is also the output model; give them"):
        check_outputs(outputs, [tmp_path / "in.onnx"])


def test_existing_output_needs_force_or_overwrite(tmp_path):
    existing = tmp_path / "out.onnx"
    existing.write_bytes(b"old")
    with pytest.raises(OnnxcompError, match=f"^{existing} exists; pass --force to overwrite it$"):
        check_outputs([Output(existing, "the output model")], [])
    check_outputs([Output(existing, "the output model")], [], force=True)
    check_outputs([Output(existing, "a file of the report folder", overwrite=True)], [])
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.onnx")  # a dangling link exists too
    with pytest.raises(OnnxcompError, match="exists; pass --force"):
        check_outputs([Output(tmp_path / "dangling.onnx", "the output model")], [])


def test_output_that_is_a_folder_or_in_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(OnnxcompError, match=f"^the output model {tmp_path} is a folder; give a file name$"):
        check_outputs([Output(tmp_path, "the output model")], [], force=True)
    missing = tmp_path / "missing" / "out.onnx"
    with pytest.raises(OnnxcompError, match=f"^the folder of the output model {tmp_path}/missing does not exist$"):
        check_outputs([Output(missing, "the output model")], [])
    check_outputs([Output(missing, "a file of the sweep folder", folder_later=True)], [])  # its folder comes later


def test_check_folder_needs_an_existing_writable_folder(tmp_path, monkeypatch):
    check_folder(tmp_path, "the --report-dir")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(OnnxcompError, match=f"^the --report-dir {tmp_path}/file is not a folder$"):
        check_folder(tmp_path / "file", "the --report-dir")
    with pytest.raises(OnnxcompError, match=f"^the --report-dir {tmp_path}/gone does not exist$"):
        check_folder(tmp_path / "gone", "the --report-dir")
    monkeypatch.setattr("onnxcomp.outputs.os.access", lambda path, mode: False)  # tests may run as root
    with pytest.raises(OnnxcompError, match=f"^the --report-dir {tmp_path} is not writable$"):
        check_folder(tmp_path, "the --report-dir")


def test_check_new_folder_looks_at_the_parent_or_the_nearest_ancestor(tmp_path):
    check_new_folder(tmp_path / "new", "the sweep folder")
    check_new_folder(tmp_path, "the sweep folder")  # existing: checked as it is
    deep = tmp_path / "a" / "b" / "c"
    with pytest.raises(OnnxcompError, match=f"^the sweep folder {deep} cannot be created: {tmp_path}/a/b does not exist$"):
        check_new_folder(deep, "the sweep folder")
    check_new_folder(deep, "the sweep folder", parents=True)
    (tmp_path / "a").write_bytes(b"")
    with pytest.raises(OnnxcompError, match=f"^the sweep folder {deep} cannot be created: {tmp_path}/a is not a folder$"):
        check_new_folder(deep, "the sweep folder", parents=True)
    assert not deep.exists()  # creates nothing


def test_make_folder_lists_what_it_created_deepest_first_and_remove_folders_undoes_it(tmp_path):
    deep = tmp_path / "a" / "b" / "c"
    assert make_folder(deep, "the report folder", parents=True) == [deep, deep.parent, deep.parent.parent]
    assert deep.is_dir()
    assert make_folder(deep, "the report folder") == []  # already there
    (deep.parent / "kept.txt").write_text("someone else's")
    remove_folders([deep, deep.parent, deep.parent.parent])
    assert not deep.exists() and deep.parent.is_dir()  # b is not empty: left with its parent
    with pytest.raises(OnnxcompError, match=f"^cannot create the report folder {tmp_path}/x/y: No such file or directory$"):
        make_folder(tmp_path / "x" / "y", "the report folder")


def test_folder_removed_on_failure_only(tmp_path):
    with pytest.raises(KeyboardInterrupt), folder_removed_on_failure(tmp_path / "p" / "q", "the folder", parents=True):
        assert (tmp_path / "p" / "q").is_dir()
        raise KeyboardInterrupt
    assert not (tmp_path / "p").exists()
    with folder_removed_on_failure(tmp_path / "kept", "the folder") as folder:
        (folder / "out.json").write_text("{}")
    assert (tmp_path / "kept" / "out.json").is_file()
