"""The evaluation benchmark (deephash/benchmarks/evaluation.py): its three Hamming-metric implementations
agree to 1e-12, the JSON has every key, bad options are one line with status 2."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest

from deephash import bench as dispatcher
from deephash.benchmarks import evaluation as bench


def _case(bits: int, n_queries: int = 40, n_database: int = 700, flip_prob: float = 0.15) -> dict:
    args = argparse.Namespace(classes=5, bits=bits, flip_prob=flip_prob)
    return bench.make_case(args, np.random.default_rng(bits), n_queries, n_database)


@pytest.mark.parametrize("bits", [6, 48, 256])
def test_three_implementations_agree(bits: int) -> None:
    """k = 1000 is beyond the 700 items; 6-bit codes tie constantly; 256-bit distances exceed uint8."""
    case = _case(bits)
    fast = bench.fast_hamming(case, threads=2)
    for other in (bench.previous_hamming(case), bench.reference_hamming(case)):
        assert bench.difference(fast, other) == {
            "max_abs_diff": pytest.approx(0, abs=1e-12),
            "top_equal": True,
        }
    assert set(fast) == {
        "mAP",
        "mAP@1000",
        "precision@k",
        "precision@r2",
        "curve",
        "radius",
        "precision",
        "recall",
        "top",
    }
    assert 0.2 < fast["mAP"] <= 1  # class-clustered codes carry signal


def test_difference_sees_every_number() -> None:
    fast = bench.fast_hamming(_case(16))
    for key in ("mAP", "precision@r2", "curve", "recall"):
        changed = dict(fast)
        changed[key] = fast[key] + 1e-9
        assert bench.difference(fast, changed)["max_abs_diff"] == pytest.approx(1e-9, rel=1e-3), key
    changed = dict(fast, **{"precision@k": {**fast["precision@k"], "10": fast["precision@k"]["10"] + 0.5}})
    assert bench.difference(fast, changed)["max_abs_diff"] == pytest.approx(0.5)
    top = fast["top"].copy()
    top[0, [0, 1]] = top[0, [1, 0]]
    assert bench.difference(fast, dict(fast, top=top))["top_equal"] is False


def test_class_codes_flip_the_class_centre() -> None:
    rng = np.random.default_rng(0)
    centres = rng.random((3, 64)) < 0.5
    labels = np.repeat(np.arange(3), 2000)
    codes = np.unpackbits(bench.class_codes(rng, labels, centres, 0.1), axis=1).astype(bool)
    assert (codes != centres[labels]).mean() == pytest.approx(0.1, abs=0.005)
    f7 = bench.class_features(rng, labels, np.ones((3, 8), np.float32))
    assert f7.dtype == np.float16 and f7.shape == (6000, 8) and f7.min() >= 0


def test_bench_writes_every_key(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"config", "targets", "hamming", "scale", "modes"}
    h = results["hamming"]
    for name in ("previous", "reference"):
        assert h[f"vs_{name}"]["max_abs_diff"] <= 1e-12 and h[f"vs_{name}"]["top_equal"] is True
        assert h[f"speedup_vs_{name}"] > 0 and h[f"cpu_speedup_vs_{name}"] > 0
    assert set(h["metrics"]) == {"mAP", "mAP@1000", "precision@k", "precision@r2"}
    assert results["scale"]["n_queries"] == bench.QUICK["scale_queries"] and results["scale"]["wall_s"] > 0
    assert list(results["modes"]) == ["hamming", "hamming_radius", "hierarchical", "euclidean"]
    assert results["modes"]["hamming"]["mAP"] == pytest.approx(h["metrics"]["mAP"], abs=1e-12)
    assert "precision" in results["modes"]["hamming_radius"]
    assert results["config"]["threads"] >= 1 and results["targets"]["speedup_vs_reference"] == 10


def test_dispatcher_runs_it_and_sections_can_be_skipped(tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    sizes = ["--n-queries", "30", "--n-database", "2000", "--repeat", "1", "--bits", "13"]
    argv = ["eval", *sizes, "--scale-queries", "0", "--modes", "--out", str(out)]
    assert dispatcher.main(argv) == 0
    results = json.loads(out.read_text())
    assert set(results) == {"config", "targets", "hamming"} and results["config"]["bits"] == 13


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n-queries", "0"], "--n-queries must be positive, got 0"),
        (["--flip-prob", "0.7"], r"--flip-prob must lie in \[0, 0.5\], got 0.7"),
        (["--modes", "nosuch"], r"unknown --modes \['nosuch'\]"),
    ],
)
def test_bad_options_are_one_line(argv, message, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.main([*argv, "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert re.search(message, err)
    assert not (tmp_path / "x.json").exists()
