"""The modules of npo_lab.llm import each other without cycles, counting imports inside functions too (an import
moved into a function to dodge a cycle would still be a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

LLM = Path(__file__).resolve().parents[2] / "llm"


def import_graph() -> dict[str, set[str]]:
    """{module: the npo_lab.llm modules it imports anywhere in its source}."""
    graph = {}
    for path in sorted(LLM.glob("*.py")):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            deps |= {n.split(".")[2] for n in names if n.startswith("npo_lab.llm.")}
        graph[path.stem] = deps - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path [a, b, ..., a], or [] when the graph has none (depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(m: str) -> list[str]:
        state[m] = 1
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return path[path.index(d) :] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        state[m] = 2
        path.pop()
        return []

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return []


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_llm_modules_have_no_import_cycle():
    graph = import_graph()
    assert {"data", "synthetic", "example", "backend"} <= set(graph)
    assert "data" not in graph["synthetic"]  # the shared row type lives in npo_lab.llm.example
    assert find_cycle(graph) == [], " -> ".join(find_cycle(graph))
