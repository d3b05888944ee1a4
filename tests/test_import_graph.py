"""No import circle inside the core: a module's imports (at the top or inside a function) never
lead back to it."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def internal_imports(package: str) -> dict[str, set[str]]:
    """Module name -> names of the package's own modules it imports anywhere in its source."""
    files = {f.stem: f for f in (ROOT / package).glob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:  # from .x import y / from . import x
                deps.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                parts = node.module.split(".")
                if parts[0] == package:  # from package.x import y / from package import x
                    deps.update(parts[1:2] or [a.name for a in node.names])
            elif isinstance(node, ast.Import):
                deps.update(a.name.split(".")[1] for a in node.names if a.name.startswith(package + "."))
        graph[name] = deps & files.keys()
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import path that returns to its start, once per circle (starting at its smallest name)."""
    found = []
    for start in sorted(graph):
        stack = [[start]]
        while stack:
            path = stack.pop()
            for dep in sorted(graph[path[-1]]):
                if dep == start:
                    found.append(path + [start])
                elif dep > start and dep not in path:
                    stack.append(path + [dep])
    return found


def test_the_cycle_finder_sees_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_the_core():
    graph = internal_imports("diffusion_core")
    assert {"cli", "commands", "seeds"} <= graph.keys()
    assert "commands" in graph["cli"]  # the finder reads relative imports
    assert cycles(graph) == []


def test_no_import_circle_in_the_benchmarks():
    graph = internal_imports("bench")
    assert "common" in graph["peers"]  # the finder reads absolute imports (from bench.common import ...)
    assert cycles(graph) == []
