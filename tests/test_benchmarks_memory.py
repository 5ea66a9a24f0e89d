"""The memory benchmark (deephash/benchmarks/memory.py): peak resident sets of building and querying an
index with F7 on disk, each operation in its own subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deephash.benchmarks.memory import main


@pytest.mark.slow
def test_memory_bench_reports_bounded_peaks(tmp_path: Path) -> None:
    """100k x 1024 float16 (195 MB): every operation's peak stays under half the feature file."""
    out = tmp_path / "memory.json"
    argv = ["--n-database", "100000", "--dim", "1024", "--batch-rows", "1024", "--n-queries", "20"]
    argv += ["--euclidean-queries", "10", "--chunk-rows", "4096", "--threads", "1"]
    assert main([*argv, "--workdir", str(tmp_path / "work"), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"config", "sizes", "operations"}
    assert results["config"]["n_database"] == 100000 and results["config"]["dim"] == 1024
    file_mb = results["sizes"]["f7_file_mb"]
    assert file_mb == pytest.approx(100000 * 1024 * 2 / 2**20)
    assert list(results["operations"]) == ["build", "hierarchical", "euclidean"]
    for op, r in results["operations"].items():
        assert {"seconds", "baseline_rss_mb", "peak_rss_mb", "peak_over_baseline_mb", "within_limit"} <= set(
            r
        )
        assert r["peak_rss_mb"] >= r["baseline_peak_mb"] > 0
        # a memmap would keep the pages it wrote or read resident: the whole file for build and L2
        assert r["peak_over_baseline_mb"] < 0.5 * file_mb, op
    assert results["operations"]["build"]["count"] == 100000
    assert results["operations"]["hierarchical"]["mean_pool_size"] == 1000
    assert list((tmp_path / "work").iterdir()) == []  # the staging and index files are removed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--n-database", str(10**12)],
            "building a 1000000000000 x 4096 index (staging copy and index) needs",
        ),
        (["--k", "0"], "--k must be positive, got 0"),
    ],
)
def test_memory_bench_refuses_bad_options(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--workdir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert list(tmp_path.iterdir()) == []
