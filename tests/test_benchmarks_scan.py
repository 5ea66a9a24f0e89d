"""The folder-scan benchmark (deephash/benchmarks/scan.py)."""

from __future__ import annotations

from deephash.benchmarks.scan import scan_benchmark


def test_scan_benchmark_times_and_cleans_up(tmp_path):
    result = scan_benchmark(300, 3, tmp_path)
    assert result["n_files"] == 300 and result["cached_load_s"] >= 0 and result["cold_scan_s"] > 0
    assert list(tmp_path.iterdir()) == []
