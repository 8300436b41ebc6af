"""Every path a run will write, checked before the work starts.

A run writes a model, a report, a report folder, a sweep folder or a mobile folder. Before any
work, each of those paths is checked against every file the run reads (the input model, its
external-data files, the sample data), through symlinks and hard links (same device and
inode), against the other outputs of the same run, and for writability: the folder exists, is
a folder and can be written, the path is not a folder. An existing output is replaced only
with --force. The write itself is atomic (`onnxcomp.modelfile.atomic_write`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import onnx

from onnxcomp.errors import OnnxcompError

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Output:
    """One file a run will write; `what` names it in messages (e.g. "the --report file")."""

    path: Path
    what: str
    overwrite: bool = False  # replace an existing file without --force (files inside a folder the tool owns)
    folder_later: bool = False  # its folder is created when written (checked with `check_new_folder`)


def input_files(model_path: str | os.PathLike, *extra: str | os.PathLike | None) -> list[Path]:
    """The files a run reads: the model, the external-data files it names, and `extra` (sample data).

    The model is parsed without its data; a file that does not parse contributes only itself
    (the loader reports what is wrong with it).
    """
    model_path = Path(model_path)
    files = [model_path]
    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception:  # not a model: the loader says so, with a better message
        proto = None
    if proto is not None:
        for tensor in onnx.external_data_helper._get_all_tensors(proto):  # noqa: SLF001 - onnx's own walker
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = {entry.key: entry.value for entry in tensor.external_data}.get("location", "")
            if location and "\0" not in location:
                files.append(model_path.parent / location)
    for path in (Path(path) for path in extra if path):
        files.append(path)
        if path.is_dir():  # a folder of .npz samples
            files.extend(child for child in sorted(path.iterdir()) if child.is_file())
    return files


def same_file(first: Path, second: Path) -> bool:
    """Whether two paths name the same file: same inode (symlinks and hard links followed), or,
    where one does not exist yet, the same fully resolved path."""
    try:
        if first.exists() and second.exists():
            return os.path.samefile(first, second)
        return os.path.realpath(first) == os.path.realpath(second)
    except (OSError, ValueError):  # a path that cannot be resolved (loop, NUL) aliases nothing we can name
        return False


def check_outputs(outputs: Iterable[Output], inputs: Iterable[Path], *, force: bool = False) -> None:
    """Refuse, before any work, an output that is an input, is another output of the same run,
    exists (without `force`), is a folder, or lies in a folder that is missing or not writable.

    Raises:
        OnnxcompError: one line naming the path and the reason.
    """
    outputs, inputs = list(outputs), [Path(path) for path in inputs]
    for index, output in enumerate(outputs):
        path = output.path
        for source in inputs:
            if same_file(path, source):
                kind = "the input model" if source == inputs[0] else f"an input file ({source})"
                raise OnnxcompError(f"{output.what} {path} is {kind}; onnxcomp never writes over its input")
        for other in outputs[:index]:
            if same_file(path, other.path):
                raise OnnxcompError(f"{output.what} {path} is also {other.what}; give them different paths")
        if path.is_dir():
            raise OnnxcompError(f"{output.what} {path} is a folder; give a file name")
        if (path.exists() or path.is_symlink()) and not (force or output.overwrite):
            raise OnnxcompError(f"{path} exists; pass --force to overwrite it")
        if not output.folder_later:
            check_folder(path.parent if str(path.parent) else Path("."), f"the folder of {output.what}")


def check_folder(folder: Path, what: str) -> None:
    """`folder` exists, is a folder, and this process may create files in it."""
    if not folder.exists():
        raise OnnxcompError(f"{what} {folder} does not exist")
    _writable_folder(folder, f"{what} ")


def check_new_folder(folder: Path, what: str, *, parents: bool = False) -> None:
    """`folder` is an existing writable folder, or can be created (its parent, or with
    `parents` its nearest existing ancestor, is a writable folder). Creates nothing."""
    if folder.exists() or folder.is_symlink():
        check_folder(folder, what)
        return
    ancestor = folder.parent
    if parents:
        while not ancestor.exists() and ancestor != ancestor.parent and not ancestor.is_symlink():
            ancestor = ancestor.parent
    elif not ancestor.exists():
        raise OnnxcompError(f"{what} {folder} cannot be created: {ancestor} does not exist")
    _writable_folder(ancestor, f"{what} {folder} cannot be created: ")


def _writable_folder(folder: Path, problem: str) -> None:
    """`folder` is a folder this process may create files in; else an error, `problem` + why."""
    if not folder.is_dir():
        raise OnnxcompError(f"{problem}{folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OnnxcompError(f"{problem}{folder} is not writable")


def make_folder(folder: Path, what: str, *, parents: bool = False) -> list[Path]:
    """Create `folder` (and with `parents` its missing ancestors); return the folders created,
    deepest first, so that a failed run can remove exactly those (`remove_folders`)."""
    created = []
    missing = folder
    while not missing.exists() and not missing.is_symlink():
        created.append(missing)
        if not parents or missing.parent == missing:
            break
        missing = missing.parent
    try:
        folder.mkdir(parents=parents, exist_ok=True)
    except OSError as error:
        raise OnnxcompError(f"cannot create {what} {folder}: {error.strerror or error}") from None
    return created


def remove_folders(folders: Iterable[Path]) -> None:
    """Remove folders created by `make_folder` that are still empty (deepest first)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (something else wrote there) or already gone: leave it
            logger.debug("left %s in place", folder)


@contextlib.contextmanager
def folder_removed_on_failure(folder: Path, what: str, *, parents: bool = False):
    """Create `folder` (see `make_folder`) for the block; if the block raises (Ctrl-C included),
    remove the folders it created that are still empty, so a failed run leaves nothing behind."""
    created = make_folder(folder, what, parents=parents)
    try:
        yield folder
    except BaseException:
        remove_folders(created)
        raise
