"""Sweeps: a bit sweep logged to W&B offline and compared, the Optuna and SLURM configs, picklable jobs."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest
from hydra import compose, initialize_config_dir

from deephash.runs import optimized_value
from deephash.train import main, train
from deephash.utils.errors import ConfigError
from tests.conftest import CONF_DIR
from tests.test_tracking_wandb import parse_run, run_files

FAST = ["trainer.max_epochs=1", "callbacks=none", "retrieval.modes=[hamming]", "retrieval.grid_queries=2"]


def _train(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deephash.train", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _compose_with_hydra(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.slow
def test_bit_sweep_gives_one_wandb_run_per_job_in_one_group_and_a_comparison(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = _train(
        "-m",
        "model.net.bits=12,24",
        "logger=wandb",
        *FAST,
        f"hydra.sweep.dir={sweep}",
        env={"WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = []
    for job in ("0", "1"):
        files = run_files(sweep / job)
        assert len(files) == 1, f"job {job}: expected one offline W&B run, found {files}"
        runs.append(parse_run(files[0]))
    # the sweep's own group (absolute: the sweep folder is outside the directory it was launched from)
    assert {r["run"].run_group for r in runs} == {str(sweep)}
    assert sorted(r["run"].display_name for r in runs) == ["latent-bits12-seed42", "latent-bits24-seed42"]
    assert runs[0]["run"].run_id != runs[1]["run"].run_id
    for run in runs:
        summary = run["summary"]
        assert 0 < summary["retrieval/hamming/mAP"] <= 1
        assert 0 <= summary["retrieval/hamming/precision@10"] <= 1
        assert "model.net.bits=12" in run["run"].tags or "model.net.bits=24" in run["run"].tags
        assert run["run"].job_type == "train"
        model = run["config"]["model"]
        assert model.get("value", model)["net"]["bits"] in (12, 24)  # the resolved Hydra config

    compare = subprocess.run(
        [sys.executable, "-m", "deephash.compare", str(sweep)], capture_output=True, text=True, timeout=120
    )
    assert compare.returncode == 0, compare.stderr[-2000:]
    import csv

    with open(sweep / "compare" / "compare.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["bits"], r["status"]) for r in rows) == [("12", "completed"), ("24", "completed")]
    assert all(0 < float(r["hamming/mAP"]) <= 1 for r in rows)
    assert (sweep / "compare" / "compare.md").read_text().count("| completed") == 2
    assert (sweep / "compare" / "map_vs_bits.png").stat().st_size > 0


@pytest.mark.slow
def test_a_failed_sweep_job_is_reported_not_dropped(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = _train("-m", "model.bits=12,0", "logger=none", *FAST, f"hydra.sweep.dir={sweep}")
    assert proc.returncode != 0  # the sweep reports the failure at the end, after running every job
    assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "completed"
    failed = json.loads((sweep / "1" / "metrics.json").read_text())
    assert failed["status"] == "failed" and "model.net.bits must be an integer" in failed["error"]
    compare = subprocess.run(
        [sys.executable, "-m", "deephash.compare", str(sweep)], capture_output=True, text=True, timeout=120
    )
    assert compare.returncode == 0, compare.stderr[-2000:]
    assert "failed" in (sweep / "compare" / "compare.md").read_text()


@pytest.mark.slow
def test_a_method_sweep_compares_and_charts_one_line_per_method_and_code_length(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """hparams_search=methods narrowed to two methods and two code lengths: deephash-compare has one group per
    (method, bits), and the offline dashboard draws retrieval against bits with a line per method."""
    from deephash.dashboard import main as dashboard
    from deephash.tracking.compare import group_table
    from deephash.tracking.sweep import load_jobs

    sweep = tmp_path / "sweep"
    proc = _train(
        "hparams_search=methods",
        "method=latent,dsh",
        "model.net.bits=8,16",
        "seed=1",
        "logger=none",
        "test=false",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        *FAST,
        f"hydra.sweep.dir={sweep}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = load_jobs(sweep)
    assert sorted((j.info["method"], j.info["bits"]) for j in jobs) == [
        ("dsh", 8),
        ("dsh", 16),
        ("latent", 8),
        ("latent", 16),
    ]
    _, rows = group_table(jobs)
    assert sorted((r["method"], r["bits"], r["mode"], r["seeds"]) for r in rows) == [
        (method, bits, "hamming", 1) for method in ("dsh", "latent") for bits in (8, 16)
    ]

    monkeypatch.chdir(tmp_path)
    assert dashboard(["--sweep-dir", "sweep", "--out", "spec.json", "--mode", "offline"]) == 0
    capsys.readouterr()
    spec = json.loads((tmp_path / "spec.json").read_text())
    # no run logged to W&B (logger=none), so no group was recorded: the sweep directory as Hydra was given it,
    # the group its runs would have logged
    assert spec["group"] == str(sweep) and spec["groupby"] == ["method"]
    retrieval = next(s for s in spec["sections"] if s["name"] == "Retrieval vs bits")["panels"]
    assert retrieval and {(p["x"], p["groupby"]) for p in retrieval} == {("bits", "method")}


def test_optuna_config_composes_and_maximises_validation_map() -> None:
    cfg = _compose_with_hydra("hparams_search=optuna")
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize"
    assert cfg.optimized_metric == "val_retrieval.mAP"
    assert "model.optimizer.lr" in cfg.hydra.sweeper.params


@pytest.mark.slow
def test_optuna_sweep_runs_two_trials(tmp_path: Path) -> None:
    sweep = tmp_path / "optuna"
    proc = _train(
        "hparams_search=optuna", "hydra.sweeper.n_trials=2", "logger=none", *FAST, f"hydra.sweep.dir={sweep}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "best_value" in (sweep / "optimization_results.yaml").read_text()


def test_slurm_launcher_config_composes() -> None:
    cfg = _compose_with_hydra("hydra/launcher=slurm", "trainer=ddp", "trainer.num_nodes=2")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.timeout_min == 1440 and launcher.gpus_per_node == 1
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.num_nodes == 2


def test_job_functions_are_picklable() -> None:
    """Submitit ships the task function to the cluster with cloudpickle."""
    assert pickle.loads(pickle.dumps(train)) is train
    task = getattr(main, "__wrapped__", main)
    restored = cloudpickle.loads(cloudpickle.dumps(task))
    assert restored.__name__ == task.__name__


def test_optimized_value_reads_dotted_keys() -> None:
    metrics = {"val_retrieval": {"mAP": 0.75}, "val_acc": 0.9}
    assert optimized_value(metrics, "val_retrieval.mAP") == 0.75
    assert optimized_value(metrics, None) is None
    with pytest.raises(
        ConfigError, match="optimized_metric 'val_retrieval.nope' is not in the run's metrics"
    ):
        optimized_value(metrics, "val_retrieval.nope")
