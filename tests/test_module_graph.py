"""The shape of agent/: no import cycles between its modules, and no module over 400 lines (issue 11).

The import graph is built from the AST of every agent/**/*.py: module-level imports only (also inside a top-level
``try``/``if``, but not under ``if TYPE_CHECKING:``, and not inside functions, which run later). ``from pkg import
name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg`` (whose ``__init__`` must then run first).
The implicit import of a parent package is not an edge: a package ``__init__`` that re-exports its submodules is
not a cycle (Python runs the parent first, the submodule then finds it in ``sys.modules``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 400


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run when the module is imported: the body, and the branches of top-level try/if/with."""
    for node in body:
        if isinstance(node, ast.If):
            test = ast.unparse(node.test)
            if test in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                yield from module_level_statements(node.orelse)
                continue
            yield from module_level_statements(node.body + node.orelse)
        elif isinstance(node, ast.Try):
            handlers = [stmt for handler in node.handlers for stmt in handler.body]
            yield from module_level_statements(node.body + handlers + node.orelse + node.finalbody)
        elif isinstance(node, ast.With):
            yield from module_level_statements(node.body)
        else:
            yield node


def import_graph(root: Path, package: str = "agent") -> dict[str, set[str]]:
    """``module -> modules of the package it imports at module level``, from the source alone (nothing imported)."""
    paths = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        current_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        for node in module_level_statements(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = current_package.split(".")[: len(current_package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                for alias in node.names:
                    edges.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base)
        graph[name] = {e for e in edges if e in paths and e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_agent_has_no_import_cycles() -> None:
    graph = import_graph(ROOT)
    assert len(graph) > 50 and "agent.control" in graph["agent.commands.visit"]  # the graph is really built
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in agent/: " + " -> ".join(cycle or [])


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_graph_finds_a_cycle_and_ignores_what_is_not_one(tmp_path: Path) -> None:
    write_tree(tmp_path, {
        "pkg/__init__.py": "from pkg.sub import thing\n",  # a package re-exporting its submodule: no cycle
        "pkg/sub/__init__.py": "",
        "pkg/sub/thing.py": "from pkg.sub import other\n",  # -> pkg.sub.other (a module), not pkg.sub
        "pkg/sub/other.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub import thing\n"
                            "def f():\n    from pkg.sub import thing\n",  # neither is a module-level import
    })  # fmt: skip
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.sub.thing"] == {"pkg.sub.other"}
    assert graph["pkg.sub.other"] == set()
    assert find_cycle(graph) is None
    write_tree(tmp_path, {"pkg/sub/other.py": "try:\n    from .thing import X\nexcept ImportError:\n    pass\n"})
    assert find_cycle(import_graph(tmp_path, "pkg")) == ["pkg.sub.thing", "pkg.sub.other", "pkg.sub.thing"]


def modules_over_limit() -> dict[str, int]:
    counts = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in (ROOT / "agent").rglob("*.py")}
    return {name: n for name, n in sorted(counts.items()) if n > MAX_LINES}


def test_no_module_over_the_limit() -> None:
    over = modules_over_limit()
    assert not over, f"modules over {MAX_LINES} lines: {over}"
