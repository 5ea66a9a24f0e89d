"""The retrieval benchmark (deephash/benchmarks/retrieval.py) end to end on tiny sizes: every result key,
--quick, the disk check."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deephash.benchmarks import common
from deephash.benchmarks.retrieval import main

HAMMING_KEYS = {"ours_qps", "faiss_qps", "ratio", "cpu_ratio", "ours_ms_per_query"}
PADDING_KEYS = {"unpadded_qps", "padded_qps", "speedup", "cpu_speedup", "code_bytes", "padded_bytes"}
SMALL = ["--n-database", "5000", "--n-queries", "50", "--dim", "64", "--repeat", "1"]


def test_retrieval_bench_writes_every_key(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main([*SMALL, "--bits", "12", "48", "128", "--workdir", str(tmp_path), "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {
        "config",
        "hamming",
        "padding",
        "hierarchical",
        "euclidean",
        "hamming_over_euclidean",
        "hierarchical_over_euclidean",
    }
    assert {"n_database", "n_queries", "dim", "bits", "faiss_threads", "repeat", "faiss_version"} <= set(
        results["config"]
    )
    for bits in ("12", "48", "128"):
        for k in ("k100", "k1000"):
            assert set(results["hamming"][bits][k]) == HAMMING_KEYS
        assert PADDING_KEYS <= set(results["padding"][bits])
        hier = results["hierarchical"][bits]
        assert {"qps", "ms_per_query", "cpu_ms_per_query", "mean_pool_size", "k"} <= set(hier)
        # the same search through a checked F7File (the bench raises if its results differ)
        assert hier["loaded_first_ms_per_query"] > 0 and hier["loaded_ms_per_query"] > 0
        sizes = hier["pool_sizes"]
        assert 1 <= sizes["min"] <= sizes["median"] <= sizes["p90"] <= sizes["max"] <= 10_000
        assert sizes["min"] <= hier["mean_pool_size"] <= sizes["max"]
        assert results["hierarchical_over_euclidean"][bits]["speedup"] > 0
        assert results["hierarchical_over_euclidean"][bits]["target"] == 100
    assert results["padding"]["48"]["code_bytes"] == 6 and results["padding"]["48"]["padded_bytes"] == 8
    assert results["padding"]["12"]["padded_bytes"] == 4
    euclid = results["euclidean"]
    assert {"qps", "ms_per_query", "n_queries", "k", "numpy_ms_per_query", "faiss_over_numpy"} <= set(euclid)
    assert euclid["same_results"] is True and euclid["faiss_over_numpy"] > 0
    ratio = results["hamming_over_euclidean"]
    assert (
        ratio["bits"] == 128
        and ratio["dim"] == 64
        and ratio["speedup"] > 0
        and ratio["paper_speedup"] == 971.3
    )
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # the F7 scratch file is removed
    # clustered data (the default): 12-bit and 48-bit queries find their cluster within radius 2
    assert results["config"]["data"] == "clustered"
    assert results["hierarchical"]["48"]["pool_sizes"]["fallback_fraction"] < 0.5


def test_uniform_codes_take_the_fallback_pool(tmp_path: Path) -> None:
    out = tmp_path / "uniform.json"
    assert main([*SMALL, "--bits", "128", "--k", "10", "--data", "uniform", "--out", str(out)]) == 0
    sizes = json.loads(out.read_text())["hierarchical"]["128"]["pool_sizes"]
    # uniform 128-bit codes leave every radius-2 ball empty: each pool is the 1000 nearest codes
    assert sizes["fallback_fraction"] == 1 and sizes["min"] == sizes["max"] == 1000


def test_bad_flip_probability_is_refused(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*SMALL, "--flip-prob", "0.7", "--out", str(tmp_path / "b.json")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --flip-prob must be in [0, 0.5], got 0.7\n"


def test_quick_sizes(tmp_path: Path) -> None:
    out = tmp_path / "quick.json"
    assert main(["--quick", "--bits", "48", "--k", "10", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["config"]["n_database"] == 5000 and results["config"]["bits"] == [48]
    assert results["hamming_over_euclidean"]["bits"] == 48


def test_short_disk_is_refused_with_a_suggestion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(common.shutil, "disk_usage", lambda path: usage._replace(free=3 << 30))
    with pytest.raises(SystemExit) as exit_info:
        main(["--workdir", str(tmp_path), "--out", str(tmp_path / "b.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    # 1M x 4096 float16 = 8.2 GB; 2 GB left after the margin hold 262,144 rows of 8 KB
    assert "needs 8.2 GB" in err and "pass --n-database 262000 or less" in err
    assert not (tmp_path / "b.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_device_cuda_without_a_gpu_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                *SMALL,
                "--device",
                "cuda",
                "--workdir",
                str(tmp_path / "work"),
                "--out",
                str(tmp_path / "d.json"),
            ]
        )
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        "error: retrieval.device=cuda but torch sees no CUDA device; use retrieval.device=cpu\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_device_section_checks_the_torch_path(tmp_path: Path) -> None:
    out = tmp_path / "device.json"
    assert main([*SMALL, "--bits", "48", "--k", "10", "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads(out.read_text())["device"]["48"]
    assert r["same_results"] is True and r["device"] == "cpu" and r["knn_speedup"] > 0
    assert r["torch_hierarchical_ms_per_query"] > 0 and r["hierarchical_speedup"] > 0


def test_ctrl_c_is_one_line_and_leaves_no_scratch_files(tmp_path: Path) -> None:
    """Ctrl-C while the benchmark writes or searches its 1M-row scratch file: the argparse entry points exit
    130 with one line, no traceback, and the scratch directory is removed (a bare KeyboardInterrupt used to
    print a FAISS traceback)."""
    work = tmp_path / "work"
    work.mkdir()
    argv = [
        "--n-database",
        "1000000",
        "--dim",
        "64",
        "--n-queries",
        "500",
        "--repeat",
        "5",
        "--workdir",
        str(work),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "deephash.bench", "retrieval", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a shell starting these tests in the background makes its children ignore SIGINT, and Python
        # keeps an ignored SIGINT ignored: Ctrl-C's default action again, so Python installs its handler
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while not any(work.iterdir()):  # the scratch directory: the benchmark is under way
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the benchmark never started"
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "interrupted"
    assert list(work.iterdir()) == []
