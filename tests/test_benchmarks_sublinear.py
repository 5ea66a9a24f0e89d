"""The multi-index hashing benchmark (deephash/benchmarks/sublinear.py) on tiny sizes: tie-aware recall,
generated queries, every result key and bad options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deephash.benchmarks import sublinear as bench
from deephash.benchmarks.common import clustered_codes
from deephash.retrieval.codes import hamming_distance_matrix


def test_recall_is_tie_aware() -> None:
    exact_d, exact_i = np.array([[0, 1, 1, -1]]), np.array([[4, 2, 7, -1]])
    got_d, got_i = np.array([[0, 1, 3, -1]]), np.array([[4, 9, 5, -1]])
    # item 9 ties the exact 3rd distance: a correct answer, though not the exact ids
    assert bench.recall_at(3, got_d, got_i, exact_d, exact_i) == pytest.approx(
        {"recall": 2 / 3, "id_recall": 1 / 3}
    )
    # only 3 items exist: k = 4 asks for 3
    assert bench.recall_at(4, exact_d, exact_i, exact_d, exact_i) == {"recall": 1.0, "id_recall": 1.0}


def test_near_queries_and_settings() -> None:
    rng = np.random.default_rng(7)
    db = clustered_codes(rng, 5000, 48, cluster_size=500, flip_prob=0.05)
    queries = bench.near_queries(rng, db, 48, 40, flips=3)
    dist = hamming_distance_matrix(queries, db)
    assert (dist.min(axis=1) <= 3).all()
    assert bench.parse_setting("16:1", 128) == (8, 16, 1) and bench.parse_setting("5x24:0", 128) == (5, 24, 0)


def test_bench_reports_every_key(tmp_path: Path) -> None:
    out = tmp_path / "sublinear.json"
    argv = ["--n-database", "3000", "4000", "--n-queries", "40", "--bits", "20", "64", "--k", "5", "20"]
    assert bench.main([*argv, "--settings", "8:0", "2x10:1", "--cluster-size", "50", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"config", "cases", "total_s", "peak_rss_mb"}
    assert results["config"]["n_queries"] == [40, 40] and results["config"]["faiss_threads"] >= 1
    cases = results["cases"]
    assert [(c["n_database"], c["bits"], c["data"]) for c in cases] == [
        (n, bits, kind) for n in (3000, 4000) for bits in (20, 64) for kind in ("clustered", "uniform")
    ]
    for case in cases:
        assert {"build_s", "codes_mb", "k5", "k20"} <= set(case["flat"])
        assert [row["setting"] for row in case["multihash"]] == [
            f"{case['bits'] // 8}x8 nflip=0",
            "2x10 nflip=1",
        ]
        for row in case["multihash"]:
            assert {"nhash", "b", "nflip", "exact_radius", "build_s", "index_mb", "mean_candidates"} <= set(
                row
            )
            for k in ("k5", "k20"):
                r = row[k]
                assert set(r) == {
                    "qps",
                    "raw_faiss_qps",
                    "ms_per_query",
                    "speedup",
                    "cpu_speedup",
                    "recall",
                    "id_recall",
                }
                assert 0 <= r["recall"] <= 1 and r["id_recall"] <= r["recall"] and r["speedup"] > 0
    clustered_64 = cases[2]["multihash"][0]["k5"]["recall"]
    assert clustered_64 > cases[3]["multihash"][0]["k5"]["recall"]  # hashing finds clustered neighbours


def test_bench_rejects_bad_options(capsys: pytest.CaptureFixture) -> None:
    for argv, message in [
        (["--settings", "9x16:0", "--bits", "128"], "nhash * b must not exceed"),
        (["--settings", "16"], "setting must look like B:NFLIP"),
        (["--n-database", "10", "20", "--n-queries", "1", "2", "3"], "one per --n-database size"),
        (["--flip-prob", "0.7"], "--flip-prob must be in [0, 0.5]"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            bench.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
