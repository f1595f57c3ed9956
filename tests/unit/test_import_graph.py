"""dtrain's modules import each other without a circle: read with `ast`, nothing imported.

Only imports that run when a module is first imported count: its body, class bodies, `if`/`try`
blocks at module level. An import inside a function runs later (lazy imports keep torch out of
`dtrain --help`) and cannot close a circle at import time; `if TYPE_CHECKING:` blocks never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dtrain"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def eager_imports(body):
    """Import statements executed at import time: not inside a function, not under TYPE_CHECKING."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from eager_imports(node.orelse)
        else:
            yield from eager_imports(ast.iter_child_nodes(node))


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in eager_imports(ast.parse(path.read_text(encoding="utf-8"), str(path)).body):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from . import x, from .x import y
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                # `from pkg import sub` imports the submodule; `from pkg import name` runs pkg itself.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            edges[name] |= {t for t in targets if t in modules and t != name}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_sees_dtrains_modules_and_their_imports():
    edges = graph()
    assert {"dtrain", "dtrain.cli", "dtrain.messages", "dtrain.preflight", "dtrain.strategies.ddp"} <= set(edges)
    assert "dtrain.messages" in edges["dtrain.cli"] and "dtrain.messages" in edges["dtrain.preflight"]
    assert "dtrain.config" in edges["dtrain.preflight"]
    assert "dtrain.preflight" not in edges["dtrain.cli"]  # imported inside the commands only: lazy


def test_find_cycle_names_the_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_dtrain_modules():
    cycle = find_cycle(graph())
    assert cycle is None, ("import cycle at module level: " + " -> ".join(cycle) +  # type: ignore[operator]
                           "; move the shared part into a module below them (as dtrain/messages.py is for "
                           "error wording), or import inside the function that needs it")
