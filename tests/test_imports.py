"""The package's import graph has no cycle, imports inside functions included (read with ast).

An edge A -> B is any `import`/`from ... import` in module A that names module B (`from .x import
name` is an edge to x.name when that is a module, else to x); imports under `if TYPE_CHECKING:`
are left out (they never run), and so is the implicit import of a parent package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import speechwire

ROOT = Path(speechwire.__file__).parent


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _runtime_imports(tree: ast.AST):
    """Import nodes, skipping the bodies of `if TYPE_CHECKING:` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom, mods: dict) -> set[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            pkg = ".".join(base + ([node.module] if node.module else []))
        else:
            pkg = node.module or ""
        subs = [f"{pkg}.{a.name}" for a in node.names if f"{pkg}.{a.name}" in mods]
        names = subs if node.module is None or len(subs) == len(node.names) else [pkg, *subs]
    out = set()
    for name in names:
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in mods and name != module:
            out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: set().union(*(_targets(m, p.name == "__init__.py", n, mods)
                             for n in _runtime_imports(ast.parse(p.read_text(encoding="utf-8")))))
            for m, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_graph_is_read():
    graph = import_graph()
    assert "speechwire.adapters.conv" in graph["speechwire.adapters"]
    assert "speechwire.adapters.interface" in graph["speechwire.adapters.conv"]
    assert "speechwire.data.manifest" in graph["speechwire.features"]


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles among speechwire modules: " + "; ".join(" <-> ".join(c) for c in found)
