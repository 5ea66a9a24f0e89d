"""The package's shape (docs/ARCHITECTURE.md): stages import only the stages before them, no library
module imports an entry point, and nothing imports the benchmarks or forms an import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import deephash

PACKAGE = Path(deephash.__file__).parent
ENTRY_POINTS = {
    "train",
    "evaluate",
    "index",
    "search",
    "baseline",
    "compare",
    "bench",
    "data_cli",
    "dashboard",
    "scripts",
}
# A stage may import the stages of a lower rank (and its own); entry points may import anything.
RANKS = {
    "utils": 0,
    "data": 1,
    "methods": 2,
    "models": 3,
    "retrieval": 4,
    "evaluation": 5,
    "tracking": 6,
    "config": 7,
    "runs": 7,
    "baselines": 8,
    "cli": 9,
    "benchmarks": 10,
}


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every deephash module ``path`` imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found.update(n for n in names if n in modules and n.startswith("deephash"))
    return found


GRAPH = {name: _imports(path, _modules()) for name, path in _modules().items()}
LIBRARY = sorted(m for m in GRAPH if _stage(m) in RANKS)


def test_every_module_belongs_to_a_stage_or_is_an_entry_point() -> None:
    unknown = sorted(m for m in GRAPH if m != "deephash" and _stage(m) not in set(RANKS) | ENTRY_POINTS)
    assert unknown == [], "add the module to a stage in docs/ARCHITECTURE.md and RANKS"


@pytest.mark.parametrize("module", LIBRARY)
def test_stages_import_only_earlier_stages(module: str) -> None:
    rank = RANKS[_stage(module)]
    later = sorted(d for d in GRAPH[module] if _stage(d) in ENTRY_POINTS or RANKS.get(_stage(d), 99) > rank)
    assert later == [], f"{module} imports {later}"


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(GRAPH[m]):
            if d.startswith(m + "."):
                continue  # a package's __init__ re-exporting its own modules is not a cycle
            if state.get(d) == 1:
                raise AssertionError(" -> ".join([*path, m, d]))
            if d not in state:
                visit(d, [*path, m])
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [])


def test_entry_points_are_thin() -> None:
    sizes = {m: len((PACKAGE / f"{m}.py").read_text().splitlines()) for m in ENTRY_POINTS}
    assert max(sizes.values()) <= 140, sizes
