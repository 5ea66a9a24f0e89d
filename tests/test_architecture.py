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


# ---- small modules, public seams, one distance ------------------------------------------------------------

MAX_LINES = 500
# modules allowed past MAX_LINES, each with its current size as a ceiling and the reason
LONG_MODULES: dict[str, tuple[int, str]] = {}


def test_no_module_is_over_500_lines() -> None:
    long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > LONG_MODULES.get(name, (MAX_LINES, ""))[0]:
            long[name] = lines
    assert long == {}, f"split these modules by idea (at most {MAX_LINES} lines each): {long}"


def private_uses(path: Path) -> list[str]:
    """The private names (``_name``) of other deephash modules that ``path`` imports or reads."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found, aliases = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deephash"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{node.module}.{alias.name}")
                elif f"{node.module}.{alias.name}" in GRAPH:  # a module imported by name
                    aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            aliases.update(a.asname for a in node.names if a.name.startswith("deephash") and a.asname)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            if node.attr.startswith("_") and not node.attr.startswith("__"):
                found.append(f"{node.value.id}.{node.attr}")
    return found


def test_the_private_name_check_finds_imports_and_attributes(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "from deephash.retrieval import hierarchical\nfrom deephash.retrieval.pairs import _RowGather\n"
        "hierarchical._shortlist_pools()\nhierarchical.coarse_pools()\n"
    )
    assert private_uses(module) == ["deephash.retrieval.pairs._RowGather", "hierarchical._shortlist_pools"]


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _stage(m) == "retrieval"))
def test_retrieval_modules_use_only_public_names_of_each_other(module: str) -> None:
    assert private_uses(_modules()[module]) == [], "make the name public (and document it) or keep it local"


# The one module that computes squared L2 distances (docs/ARCHITECTURE.md: one definition per quantity).
DISTANCES = PACKAGE / "retrieval" / "distances.py"
_DISTANCE_CALLS = ("L2sqr", "cdist", "pdist", "pairwise_distance", "IndexFlatL2", "knn")
_PRODUCTS = {"dot", "matmul", "inner", "tensordot", "mm", "bmm", "vdot"}


def _name_of(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _is_two(node: ast.expr) -> bool:
    """The constant 2 or -2."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return isinstance(node, ast.Constant) and node.value in (2, 2.0)


def l2_computations(source: str) -> list[str]:
    """Where ``source`` computes a Euclidean distance: a FAISS/scipy/torch distance kernel, squared norms
    (``einsum("ij,ij->i")``), the expansion |q|^2 - 2 q.x + |x|^2 (a product of two arrays and a factor
    of 2 in one function) or a sum of squared differences."""
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Attribute, ast.Name)):  # called or passed on
            name = _name_of(node)
            if any(name == k if k == "knn" else k in name for k in _DISTANCE_CALLS):
                found.append(f"line {node.lineno}: {name}")
        if isinstance(node, ast.Call):
            name = _name_of(node.func)
            if name == "einsum" and node.args and isinstance(node.args[0], ast.Constant):
                operands = str(node.args[0].value).split("->")[0].split(",")
                if len(operands) == 2 and operands[0] == operands[1]:
                    found.append(f"line {node.lineno}: squared norms by einsum")
            squared = [
                n
                for n in ast.walk(node)
                if isinstance(n, ast.BinOp)
                and isinstance(n.op, ast.Pow)
                and _is_two(n.right)
                and isinstance(n.left, ast.BinOp)
                and isinstance(n.left.op, ast.Sub)
            ]
            differences = any(isinstance(a, ast.BinOp) and isinstance(a.op, ast.Sub) for a in node.args)
            if (name == "sum" and squared) or (name == "norm" and differences):
                found.append(f"line {node.lineno}: norm of differences")
    top = ast.Module([n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))], [])
    for func in [top, *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))]:
        nodes = list(ast.walk(func))
        product = any(
            (isinstance(n, ast.BinOp) and isinstance(n.op, ast.MatMult))
            or (isinstance(n, ast.Call) and _name_of(n.func) in _PRODUCTS)
            or (
                isinstance(n, ast.Call)
                and _name_of(n.func) == "sum"
                and isinstance(n.func, ast.Attribute)
                and isinstance(n.func.value, ast.BinOp)
                and isinstance(n.func.value.op, ast.Mult)
            )
            for n in nodes
        )
        doubled = any(
            (
                isinstance(n, ast.BinOp)
                and isinstance(n.op, ast.Mult)
                and (_is_two(n.left) or _is_two(n.right))
            )
            or (isinstance(n, ast.AugAssign) and isinstance(n.op, ast.Mult) and _is_two(n.value))
            for n in nodes
        )
        if product and doubled:
            found.append(f"{getattr(func, 'name', 'module')}: |q|^2 - 2 q.x + |x|^2")
    return sorted(set(found))


# each way squared L2 was once computed outside deephash/retrieval/distances.py
L2_COPIES = {
    "BLAS expansion": "def f(q, x, qn, xn):\n    sq = q @ x.T\n    sq *= -2\n    return sq + qn + xn\n",
    "float64 block": "def f(q, x, qn):\n    return qn[:, None] - 2 * (q @ x.T) + np.einsum('ij,ij->i', x, x)\n",
    "FAISS pairs": "def f(out, x, q, s):\n    faiss.fvec_L2sqr_by_idx(out, x, q, s, 4, 5, 6)\n",
    "FAISS kernel passed on": "def f(out, x, q, s):\n    run(faiss.fvec_L2sqr_by_idx, out, x, q, s)\n",
    "FAISS k-NN": "def f(q, x):\n    faiss.knn_L2sqr(q, x, 4, 5, 6, 7, None, None, None)\n",
    "torch pair dots": "def f(r, q, qn, rn):\n    out = (r * q).sum(dim=1).numpy()\n    out *= -2\n    return out + qn + rn\n",
    "norms": "def f(x):\n    return np.einsum('ij,ij->i', x, x)\n",
    "differences": "def f(q, x):\n    return ((q - x) ** 2).sum(-1)\n",
    "norm of differences": "def f(q, x):\n    return np.linalg.norm(q - x, axis=1)\n",
}


@pytest.mark.parametrize("copy", sorted(L2_COPIES))
def test_the_l2_check_finds_every_form_of_a_distance(copy: str) -> None:
    assert l2_computations(L2_COPIES[copy]) != []


# The stages that rank items by distance (search, its GPU path, evaluation, the benchmarks of both) share one
# definition. A training loss on relaxed codes (DSH's contrastive term, CSQ's centres) is a differentiable
# torch expression of its method, not a ranking, and stays in its method's module.
RANKING_STAGES = ("retrieval", "evaluation", "tracking", "baselines", "benchmarks")


def test_only_the_distances_module_computes_l2() -> None:
    assert l2_computations(DISTANCES.read_text(encoding="utf-8")) != []  # the check sees the real one
    copies = {
        path.relative_to(PACKAGE).as_posix(): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != DISTANCES
        and (path.parent == PACKAGE or path.relative_to(PACKAGE).parts[0] in RANKING_STAGES)
        and (found := l2_computations(path.read_text(encoding="utf-8")))
    }
    assert copies == {}, "compute squared L2 through deephash.retrieval.distances"
