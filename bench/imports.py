"""The import graph of the onnxcomp package, in layers, and any import cycle.

    python -m bench.imports [--package onnxcomp] [--root DIR] [--quiet]

Parses every module under the package with `ast` and collects its imports of the package's
modules, at module level and inside functions alike (an import hidden in a function still ties
the two modules together). Prints the modules layer by layer - layer 0 imports no other module of
the package, layer n imports modules of layers below n only - each with the modules it imports,
then every cycle (networkx.simple_cycles) with the lines that close it. Exits 1 when there is a
cycle. Importing `a.b.c` also runs the packages `a` and `a.b`; those implicit edges are not
counted, only the modules an import statement names.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, int]]:
    """(imported module of the package, line) for every import statement in the file."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the module pkg.sub; `from pkg import name`, pkg itself
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.attr` style: the longest module prefix
                target = target.rpartition(".")[0]
            if target and target != name:
                found.append((target, node.lineno))
    return found


def import_graph(package: str = "onnxcomp", root: Path = ROOT) -> nx.DiGraph:
    """Module -> imported module, each edge with the lines of the import statements."""
    modules = module_names(root / package)
    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for name, path in modules.items():
        for target, line in imported_modules(name, path, modules):
            if graph.has_edge(name, target):
                graph.edges[name, target]["lines"].append(line)
            else:
                graph.add_edge(name, target, lines=[line])
    return graph


def layers(graph: nx.DiGraph) -> list[list[str]]:
    """Modules by layer; the modules of a cycle share the layer of the cycle."""
    condensed = nx.condensation(graph)
    depth: dict[int, int] = {}
    for component in reversed(list(nx.topological_sort(condensed))):
        depth[component] = 1 + max((depth[c] for c in condensed.successors(component)), default=-1)
    grouped: dict[int, list[str]] = {}
    for component, level in depth.items():
        grouped.setdefault(level, []).extend(condensed.nodes[component]["members"])
    return [sorted(grouped[level]) for level in sorted(grouped)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--package", default="onnxcomp")
    parser.add_argument("--root", type=Path, default=ROOT, help="the folder that holds the package")
    parser.add_argument("--quiet", action="store_true", help="print only the summary and the cycles")
    args = parser.parse_args(argv)
    graph = import_graph(args.package, args.root)
    grouped = layers(graph)
    if not args.quiet:
        for level, names in enumerate(grouped):
            print(f"layer {level}")
            for name in names:
                print(f"  {name} -> {', '.join(sorted(graph.successors(name))) or '-'}")
    # Each cycle from its first module by name, so that the output does not depend on hash order.
    cycles = [cycle[cycle.index(min(cycle)):] + cycle[:cycle.index(min(cycle))] for cycle in nx.simple_cycles(graph)]
    cycles.sort(key=lambda cycle: (len(cycle), cycle))
    for cycle in cycles:
        steps = [f"{a} (line {graph.edges[a, b]['lines'][0]})" for a, b in zip(cycle, cycle[1:] + cycle[:1])]
        print("cycle: " + " -> ".join(steps + [cycle[0]]))
    print(f"{graph.number_of_nodes()} modules, {graph.number_of_edges()} imports, {len(grouped)} layers, {len(cycles)} cycles")
    return 1 if cycles else 0


if __name__ == "__main__":
    sys.exit(main())
