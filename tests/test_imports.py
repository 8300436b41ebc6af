"""The onnxcomp package has no import cycle (`python -m bench.imports`), counting the imports
inside functions too; and the checker finds a cycle that only a function-level import closes."""

from __future__ import annotations

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
