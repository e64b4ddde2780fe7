"""The code's layers: run_simulation.py -> fl_app -> strategies, and no import cycle.

import-linter (``lint-imports``, ``[tool.importlinter]``) checks the packages' layers and
boundaries; this checks what it cannot: that no package imports the script above them,
and that no module imports itself back through others, counting only what runs when a
module is imported (its top level, ``if TYPE_CHECKING:`` blocks included).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.processes import ROOT

SKIPPED = {"outputs", "data", "site"}  # and hidden ones: .git, venvs, caches


def modules() -> dict[str, Path]:
    """Every Python module of the project by its dotted name."""
    tops = [top for top in ROOT.iterdir() if not (top.name in SKIPPED or top.name[0] == ".")]
    found = {}
    for top in tops:
        for path in [top] if top.is_file() else top.rglob("*.py"):
            if path.suffix == ".py":
                name = path.relative_to(ROOT).with_suffix("").as_posix().replace("/", ".")
                found[name.removesuffix(".__init__")] = path
    return found


def top_level_imports(path: Path, known: set[str]) -> Iterator[str]:
    """The project modules ``path`` imports when it is imported (not inside a function or
    class); ``from package import module`` imports the module, not the package's body."""

    def statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
        for node in body:
            yield node
            if isinstance(node, ast.If | ast.Try):
                blocks = [node.body, node.orelse]
                if isinstance(node, ast.Try):
                    blocks += [node.finalbody, *(h.body for h in node.handlers)]
                for block in blocks:
                    yield from statements(block)

    for node in statements(ast.parse(path.read_text()).body):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module in known and not node.level:
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            if all(name in known for name in submodules):
                yield from submodules
            else:
                yield node.module


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: set(top_level_imports(path, set(known))) - {name} for name, path in known.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(edges[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_back() -> None:
    assert cycles(graph()) == []


def test_the_packages_never_import_the_script_above_them() -> None:
    edges = graph()
    upward = [
        name
        for name, imported in edges.items()
        if name.split(".")[0] in ("fl_app", "strategies") and "run_simulation" in imported
    ]
    assert upward == []


def test_a_cycle_is_found() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
