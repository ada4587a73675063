"""The daemon's modules (and the core's) import one another without a circle.

Every import counts: at module level, under ``TYPE_CHECKING``, and inside
functions (an import moved into a function to dodge a cycle is still one).
Operations get narrow services (tachi.daemon.services) and the connection a
small protocol of the daemon, so nothing needs to import back.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "tachi"


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = modules()


def imports_of(name: str, path: Path) -> set[str]:
    """The tachi modules ``name`` imports, wherever in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    named: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            named |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            named.add(base)
            # ``from tachi.daemon import session_ops`` imports the module.
            named |= {f"{base}.{alias.name}" for alias in node.names}
    found = set()
    for target in named:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def cycles(prefix: str) -> list[list[str]]:
    """Strongly connected groups of more than one module under ``prefix``."""
    graph = {
        n: {m for m in imports_of(n, p) if m.startswith(prefix)}
        for n, p in MODULES.items()
        if n.startswith(prefix)
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_the_walk_sees_type_checking_and_function_imports():
    # The connection's one import of the dispatcher is under TYPE_CHECKING.
    assert "tachi.daemon.dispatch" in imports_of(
        "tachi.daemon.connection", MODULES["tachi.daemon.connection"]
    )
    # The daemon imports the operation table inside a method.
    assert "tachi.daemon.operations" in imports_of(
        "tachi.daemon.server", MODULES["tachi.daemon.server"]
    )


@pytest.mark.parametrize("package", ["tachi.daemon.", "tachi.core."])
def test_no_import_cycle(package):
    assert cycles(package) == []
