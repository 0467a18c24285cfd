"""Import layering, read from the source with ``ast`` (no module is imported).

* No engine imports ``testbed.export``: not at module level, not inside a function, not under
  ``TYPE_CHECKING``, not by a string given to ``importlib.import_module``.  The exporter may use an
  engine's runtime (validation, the int8-auto search decodes the dev set); an engine gets its
  artefact through the pipeline (:func:`testbed.artifacts.ensure`, by the builder's name).
* No import cycle among testbed's packages (``testbed.engines``, ``testbed.export``, ... and the
  top-level modules), counting every import anywhere in a file.  The cycles that existed when this
  test was written are listed in :data:`KNOWN_CYCLES`; a new one fails, and so does a listed one
  that is gone (delete its entry then).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# package name -> folder (pyproject's package-dir: eval/ and ui/ are testbed.eval and testbed.ui)
ROOTS = {"testbed": REPO / "testbed", "testbed.eval": REPO / "eval", "testbed.ui": REPO / "ui"}
IMPORTERS = {"import_module", "__import__"}

# Package cycles present when this test was written (2026-11-30), outside the engines/export work.
# Each is the set of packages that reach each other; the CLI modules of one package import another.
KNOWN_CYCLES: set[frozenset[str]] = {
    # client.cli -> scale.locust_run -> client.bench; serve.cli -> scale.ray_serve -> serve.app
    frozenset({"testbed.client", "testbed.scale", "testbed.serve"}),
}


def _module_name(path: Path) -> str:
    for pkg, folder in sorted(ROOTS.items(), key=lambda kv: -len(str(kv[1]))):
        if path.is_relative_to(folder):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join([pkg, *parts])
    raise AssertionError(path)


def _files() -> list[Path]:
    files = []
    for folder in ROOTS.values():
        for p in sorted(folder.rglob("*.py")):
            # only importable modules: skip data folders without __init__.py (eval/sweeps, ...)
            if all((d / "__init__.py").is_file() for d in [p.parent, *p.parent.parents] if d.is_relative_to(folder)):
                files.append(p)
    return files


def imports(path: Path) -> list[tuple[str, int]]:
    """Every module ``path`` imports (absolute names, relative ones resolved), with its line."""
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            # `from testbed import export` imports the module testbed.export
            out += [(name, node.lineno)] + [(f"{name}.{a.name}", node.lineno) for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            f = node.func
            called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if called in IMPORTERS and isinstance(node.args[0].value, str):
                out.append((node.args[0].value, node.lineno))
    return out


def _is_under(name: str, pkg: str) -> bool:
    return name == pkg or name.startswith(pkg + ".")


def test_the_walk_sees_every_kind_of_import(tmp_path, monkeypatch):
    """The checker itself: module-level, function-level, relative, TYPE_CHECKING and importlib imports."""
    pkg = tmp_path / "testbed" / "engines" / "x"
    pkg.mkdir(parents=True)
    for d in (pkg, pkg.parent, pkg.parent.parent):
        (d / "__init__.py").write_text("")
    src = pkg / "m.py"
    src.write_text(
        "import testbed.export.a\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from testbed.export import b\n"
        "def f():\n    from ...export.c import C\n    import importlib\n"
        "    return importlib.import_module('testbed.export.d')\n"
        "from testbed import export\n"
    )
    monkeypatch.setitem(ROOTS, "testbed", tmp_path / "testbed")
    got = {(n, line) for n, line in imports(src) if _is_under(n, "testbed.export")}
    assert {line for _, line in got} == {1, 4, 6, 8, 9}, got


def test_engines_never_import_export():
    bad = sorted({
        f"{p.relative_to(REPO)}:{line}"
        for p in _files() if p.is_relative_to(ROOTS["testbed"] / "engines")
        for name, line in imports(p) if _is_under(name, "testbed.export")
    })
    assert not bad, "an engine imports testbed.export (get the artefact through testbed.artifacts.ensure):\n" + (
        "\n".join(bad))


def _package(mod: str) -> str:
    """The layer a module belongs to: ``testbed.<first part>`` (a package, or a top-level module)."""
    parts = mod.split(".")
    return ".".join(parts[:2])


def package_graph() -> dict[str, dict[str, list[str]]]:
    """package -> imported package -> where (``file:line``), for imports of other testbed packages."""
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for p in _files():
        src = _package(_module_name(p))
        for name, line in imports(p):
            if not _is_under(name, "testbed") or name == "testbed":
                continue  # testbed/__init__.py imports nothing: `from testbed import __version__` is no edge
            dst = _package(name)
            where = f"{p.relative_to(REPO)}:{line}"
            if dst != src and dst != "testbed.__version__" and where not in graph[src][dst]:
                graph[src][dst].append(where)
    return graph


def cycles(graph: dict[str, dict[str, list[str]]]) -> set[frozenset[str]]:
    """The groups of packages that import each other (strongly connected, more than one package)."""
    reach: dict[str, set[str]] = {}
    for start in graph:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), {}):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        reach[start] = seen
    return {frozenset({a, *(b for b in reach[a] if a in reach.get(b, ()))}) for a in graph if a in reach[a]}


def test_cycle_finder_finds_a_cycle_and_only_it():
    g = {"a": {"b": ["x"]}, "b": {"c": ["y"]}, "c": {"a": ["z"]}, "d": {"a": ["w"]}}
    assert cycles(g) == {frozenset("abc")}
    assert cycles({"a": {"b": ["x"]}, "b": {}}) == set()


def test_no_new_import_cycle_between_packages():
    graph = package_graph()
    assert graph["testbed.export"], "the walk found no imports at all: is it reading the right folders?"
    found = cycles(graph)

    def show(c: frozenset[str]) -> str:
        return "; ".join(f"{a} -> {b} ({', '.join(graph[a][b][:3])})"
                         for a in sorted(c) for b in sorted(graph[a]) if b in c)

    new = sorted(found - KNOWN_CYCLES, key=sorted)
    assert not new, "import cycle(s) between testbed's packages:\n" + "\n".join(show(c) for c in new)
    gone = KNOWN_CYCLES - found
    assert not gone, f"these listed cycles are gone: delete them from KNOWN_CYCLES: {[sorted(c) for c in gone]}"
