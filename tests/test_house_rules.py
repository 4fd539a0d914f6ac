"""The house rules, checked: the layering contract (import-linter), no import cycles at module or folder
level, no module in common/ or services/ over 400 lines, and infra/ importing nothing from tests/.

The layering itself is written once, in pyproject.toml's ``[tool.importlinter]`` (docs/layout.md explains it).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 400


def _lint_imports() -> str | None:
    script = Path(sys.executable).with_name("lint-imports")
    return str(script) if script.exists() else shutil.which("lint-imports")


@pytest.mark.skipif(_lint_imports() is None, reason="import-linter is not installed (pip install -e '.[dev]')")
def test_the_layering_contract_holds():
    result = subprocess.run([_lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _module_edges() -> dict[str, set[str]]:
    graph = grimp.build_graph("common", "services", cache_dir=None)
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def _folder(module: str) -> str:
    """The package a module sits in (a package's __init__ counts as inside it)."""
    path = ROOT / Path(*module.split("."))
    return module if path.is_dir() else module.rpartition(".")[0]


def test_cycles_are_found_by_the_checker():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    assert _cycles(_module_edges()) == []


def test_no_import_cycle_between_folders():
    edges: dict[str, set[str]] = {}
    for module, imported in _module_edges().items():
        source = _folder(module)
        targets = {_folder(m) for m in imported} - {source}
        # A folder importing its own subfolder (or parent) is one concept's inside, not a cycle between two.
        edges.setdefault(source, set()).update(t for t in targets if not (t.startswith(source + ".")
                                                                         or source.startswith(t + ".")))
    assert _cycles(edges) == []


def test_no_module_is_longer_than_the_limit():
    long = {str(p.relative_to(ROOT)): n for folder in ("common", "services") for p in (ROOT / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these modules (over {MAX_LINES} lines): {long}"


def test_infra_imports_nothing_from_tests():
    offenders = []
    for path in sorted((ROOT / "infra").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n == "tests" or n.startswith("tests.")]
    assert offenders == []
