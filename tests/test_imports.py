"""The onnxcomp package has no import cycle (`python -m bench.imports`), counting the imports
inside functions too; the checker finds a cycle that only a function-level import closes; and no
test or bench reaches for a private name of the package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from bench import imports

ROOT = Path(__file__).resolve().parent.parent


def test_package_has_no_import_cycle():
    result = subprocess.run([sys.executable, "-m", "bench.imports"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith(", 0 cycles"), result.stdout
    assert "  onnxcomp.errors -> -" in result.stdout  # the bottom layer is listed


def test_cycle_through_a_function_level_import_fails(tmp_path, capsys):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from pkg.sub.low import helper\n")
    (package / "sub" / "low.py").write_text("def helper():\n    from pkg import high\n    return high\n")
    (package / "high.py").write_text("from pkg.sub import low\nfrom . import other\n")
    (package / "other.py").write_text("import pkg.sub.low as low\n")
    graph = imports.import_graph("pkg", tmp_path)
    assert set(graph.edges) == {("pkg.sub", "pkg.sub.low"), ("pkg.sub.low", "pkg.high"), ("pkg.high", "pkg.sub.low"),
                                ("pkg.high", "pkg.other"), ("pkg.other", "pkg.sub.low")}
    assert imports.main(["--package", "pkg", "--root", str(tmp_path), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "cycle: pkg.high (line 1) -> pkg.sub.low (line 2) -> pkg.high" in out
    assert out.rstrip().endswith("2 cycles")


def private_uses(source: str) -> list[str]:
    """onnxcomp names starting with one underscore that `source` imports, reads as module
    attributes or patches by name: what tests and benches must not depend on."""
    tree = ast.parse(source)
    modules, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("onnxcomp"):
            found += [node.module] if any(part.startswith("_") for part in node.module.split(".")) else []
            found += [alias.name for alias in node.names if alias.name.startswith("_")]
            modules |= {alias.asname or alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            modules |= {(alias.asname or alias.name).split(".")[0] for alias in node.names if alias.name.startswith("onnxcomp")}
    private = lambda name: name.startswith("_") and not name.startswith("__")  # noqa: E731
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr) and isinstance(node.value, ast.Name) \
                and node.value.id in modules:
            found.append(f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "setattr" and len(node.args) >= 2 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str) and private(node.args[1].value):
            found.append(node.args[1].value)
    return found


def test_tests_and_benches_use_only_public_names():
    used = {str(path.relative_to(ROOT)): private_uses(path.read_text())
            for folder in ("tests", "bench") for path in sorted((ROOT / folder).rglob("*.py"))}
    assert {path: names for path, names in used.items() if names} == {}


def test_private_uses_sees_imports_attributes_and_patches():
    source = ("from onnxcomp.stages import analyze\nfrom onnxcomp.samples.crop import _shorter\n"
              "from onnxcomp.passes._stats import WeightPass\nanalyze._runs(1)\n"
              "def test(monkeypatch):\n    monkeypatch.setattr(analyze, '_runs', None)\n")
    assert private_uses(source) == ["_shorter", "onnxcomp.passes._stats", "analyze._runs", "_runs"]


def expected_test_files(root: Path) -> dict[str, str]:
    """Per public module of the package, the test file that mirrors it: ``tests/test_<name>.py``,
    or ``tests/test_<package>_<name>.py`` where two modules share a name (``reporting/verify.py``,
    ``stages/verify.py``). Private modules (``passes/_surgery.py``) are tested through the public
    module that uses them."""
    modules = [path for path in sorted((root / "onnxcomp").rglob("*.py"))
               if path.name != "__init__.py" and not path.name.startswith("_")]
    stems = [path.stem for path in modules]
    return {str(path.relative_to(root)): f"tests/test_{path.stem if stems.count(path.stem) == 1 else path.parent.name + '_' + path.stem}.py"
            for path in modules}


def test_every_public_module_has_its_own_test_file():
    expected = expected_test_files(ROOT)
    assert expected["onnxcomp/stages/verify.py"] == "tests/test_stages_verify.py"
    assert expected["onnxcomp/sizes.py"] == "tests/test_sizes.py"
    missing = {module: test for module, test in expected.items() if not (ROOT / test).exists()}
    assert missing == {}
