"""The module graph: no import cycle among the project's modules, and imports only go down the
layers (storage < engine < cluster < avictl; simulations may use them all). Every import counts,
wherever it stands in a file (under TYPE_CHECKING, inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("avictl", "cluster", "engine", "storage", "simulations")
# A package -> the packages it must never import.
BELOW = {"storage": ("cluster", "engine", "avictl", "simulations"), "engine": ("cluster", "avictl", "simulations"),
         "cluster": ("avictl", "simulations")}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def _edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges[name].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (a package and its own submodules excepted)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            head = min(component)
            if len(component) > 1 and not all(c == head or c.startswith(head + ".") for c in component):
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_among_the_projects_modules() -> None:
    """No two modules of the project import each other, directly or through others."""
    assert [] == _cycles(_edges(_modules()))


def test_imports_go_down_the_layers_only() -> None:
    """storage imports none of cluster, engine, avictl; engine none of cluster, avictl; cluster not avictl."""
    wrong = [f"{m} imports {n}" for m, targets in _edges(_modules()).items() for n in sorted(targets)
             if n.split(".")[0] in BELOW.get(m.split(".")[0], ())]
    assert [] == wrong


def test_the_checks_see_an_import_against_the_layers() -> None:
    """The graph is read from the sources: storage.file's import of storage.failpoints is found."""
    assert "storage.failpoints" in _edges(_modules())["storage.file"]
