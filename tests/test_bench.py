"""The ``deephash-bench`` dispatcher (deephash/bench.py) and the import rule of deephash/benchmarks: the
benchmarks never import the dispatcher, and the library never imports the benchmarks."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import deephash
from deephash import bench

PACKAGE = Path(deephash.__file__).parent
BENCHMARKS = sorted(p.stem for p in (PACKAGE / "benchmarks").glob("*.py") if p.stem != "__init__")
HELPERS = {"common", "synthetic_f7"}  # shared by the benchmarks, no command of their own


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports in functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_every_benchmark_module_is_a_subcommand() -> None:
    assert sorted(bench.COMMANDS.values()) == sorted(
        f"deephash.benchmarks.{m}" for m in BENCHMARKS if m not in HELPERS
    )
    for helper in HELPERS:  # a helper grown into a benchmark would need its command
        assert "def main(" not in (PACKAGE / "benchmarks" / f"{helper}.py").read_text()


@pytest.mark.parametrize("module", BENCHMARKS)
def test_benchmarks_do_not_import_the_dispatcher(module: str) -> None:
    imported = _imports(PACKAGE / "benchmarks" / f"{module}.py")
    assert "deephash.bench" not in imported and not any(m.startswith("deephash.bench.") for m in imported)
    # and importing one leaves the dispatcher unloaded
    code = f"import sys, deephash.benchmarks.{module}; print('deephash.bench' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (proc.returncode, proc.stdout) == (0, "False\n"), proc.stderr


def test_the_library_does_not_import_the_benchmarks() -> None:
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "benchmarks":
            continue
        assert not any(m.startswith("deephash.benchmarks") for m in _imports(path)), rel


def test_unknown_benchmark_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["nosuch", "--quick"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err == f"error: unknown benchmark 'nosuch'; expected one of: {', '.join(bench.COMMANDS)}\n"
    assert "retrieval, memory, sublinear, train, scan" in err


def test_retrieval_is_the_default_and_options_reach_it(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    assert bench.main(["--quick", "--bits", "48", "--k", "10", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["config"]["bits"] == [48]


def test_subcommand_status_and_errors_come_through(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "scan.json"
    assert bench.main(["scan", "--quick", "--workdir", str(tmp_path), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["timings"]["n_files"] == 2000
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["scan", "--n-files", "0"])
    assert (
        exit_info.value.code == 2 and capsys.readouterr().err == "error: --n-files must be positive, got 0\n"
    )


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(f"  {name} " in text for name in bench.COMMANDS)


def test_console_script_runs_the_dispatcher() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "deephash.bench", "memory", "--k", "0"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr == "error: --k must be positive, got 0\n"
