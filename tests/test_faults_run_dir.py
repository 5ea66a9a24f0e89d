"""Run directories: one run each (a second training refuses unless it resumes or overwrites), one live
process each (a lock), and metrics.json naming the checkpoints that were really written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deephash.runs import RunDirError, record_failure, record_train_failure, release_run_dir
from deephash.train import train
from tests.conftest import compose_config

REPO = Path(__file__).resolve().parent.parent
FAST = [
    "data=digits",
    "model=smallcnn",
    "trainer=cpu",
    "logger=none",
    "callbacks=default",
    "~callbacks.rich_progress_bar",
    "+trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "test=false",
    "evaluate=false",
]


def cfg(run: Path, *overrides: str):
    return compose_config("train", [*FAST, *overrides], run)


def step_of(ckpt: str | Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("trained") / "run"
    metrics = train(cfg(run))
    release_run_dir(run)  # as a finished process's lock goes
    return run, metrics


@pytest.fixture
def finished(trained: tuple[Path, dict], tmp_path: Path) -> tuple[Path, dict]:
    """A copy of a completed one-epoch run (checkpoint paths in its metrics point into the copy)."""
    source, metrics = trained
    run = tmp_path / "run"
    shutil.copytree(source, run)
    moved = {k: str(v).replace(str(source), str(run)) for k, v in metrics.items() if k.endswith("checkpoint")}
    return run, {**metrics, **moved}


def test_metrics_name_the_checkpoints_written(finished: tuple[Path, dict]) -> None:
    run, metrics = finished
    assert metrics["last_checkpoint"] == str(run / "checkpoints" / "last.ckpt")
    assert Path(metrics["best_checkpoint"]).parent == run / "checkpoints"
    assert step_of(metrics["last_checkpoint"]) == metrics["global_step"] > 0


def test_a_second_training_into_a_run_dir_is_refused_and_changes_nothing(finished: tuple[Path, dict]) -> None:
    run, _ = finished
    before = {
        p.name: p.read_bytes() for p in [run / "metrics.json", *sorted((run / "checkpoints").iterdir())]
    }
    second = cfg(run, "seed=7")
    with pytest.raises(
        RunDirError, match=r"already holds a run \(checkpoints, metrics.json\): pass ckpt_path"
    ) as err:
        train(second)
    assert "\n" not in str(err.value)
    record_train_failure(second, err.value)  # what the entry point records: nothing, it is another run's file
    after = {p.name: p.read_bytes() for p in [run / "metrics.json", *sorted((run / "checkpoints").iterdir())]}
    assert after == before  # no last-v1.ckpt, the first run's metrics kept
    release_run_dir(run)
    record_failure(second, err.value)  # (the plain failure record would have marked the first run failed)
    assert json.loads((run / "metrics.json").read_text())["status"] == "failed"


def test_overwrite_replaces_the_earlier_run(finished: tuple[Path, dict]) -> None:
    run, first = finished
    # the earlier run's reports, CSV log and photo index must not pass for the new run's
    stale = [
        "pr_curve.png",
        "precision_at_k.csv",
        "retrieval_grid.png",
        "csv/metrics.csv",
        "index-photos/manifest.json",
    ]
    for name in stale:
        (run / name).parent.mkdir(exist_ok=True)
        (run / name).write_text("earlier run")
    (run / "notes").mkdir()  # not the run's: kept
    metrics = train(cfg(run, "overwrite=true", "trainer.max_epochs=2"))
    assert not any((run / name).exists() for name in stale) and (run / "notes").is_dir()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in names and not any("-v1" in n for n in names)
    assert metrics["last_checkpoint"] == str(run / "checkpoints" / "last.ckpt")
    assert step_of(metrics["last_checkpoint"]) == metrics["global_step"] == 2 * first["global_step"]
    assert json.loads((run / "metrics.json").read_text())["epochs"] == metrics["epochs"]
    release_run_dir(run)


def test_resuming_in_the_same_dir_records_the_checkpoint_it_wrote(finished: tuple[Path, dict]) -> None:
    run, first = finished
    last = run / "checkpoints" / "last.ckpt"
    metrics = train(cfg(run, f"ckpt_path={last}", "trainer.max_epochs=2"))
    assert Path(metrics["last_checkpoint"]).is_file()
    assert step_of(metrics["last_checkpoint"]) == metrics["global_step"] == 2 * first["global_step"]
    release_run_dir(run)


def test_resuming_another_runs_checkpoint_into_a_held_dir_is_refused(
    finished: tuple[Path, dict], tmp_path: Path
) -> None:
    """ckpt_path resumes the run it belongs to; pointed at another run's directory it would clobber that run."""
    run, _ = finished
    other = tmp_path / "other"
    shutil.copytree(run, other)
    before = {
        p.name: p.read_bytes() for p in [other / "metrics.json", *sorted((other / "checkpoints").iterdir())]
    }
    with pytest.raises(RunDirError, match=r"is a checkpoint of another run"):
        train(cfg(other, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"))
    after = {
        p.name: p.read_bytes() for p in [other / "metrics.json", *sorted((other / "checkpoints").iterdir())]
    }
    assert after == before
    release_run_dir(other)


def test_a_baseline_never_writes_into_a_training_run(finished: tuple[Path, dict]) -> None:
    """The baseline's ckpt_path is the model whose F7 it hashes, not a resume: the run dir is still refused."""
    from deephash.baselines.run import run_baseline

    run, _ = finished
    before = (run / "metrics.json").read_bytes()
    baseline = compose_config(
        "baseline", ["logger=none", "features=f7", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], run
    )
    with pytest.raises(
        RunDirError, match=r"already holds a run \(checkpoints, metrics.json\): pass overwrite"
    ):
        run_baseline(baseline)
    assert (run / "metrics.json").read_bytes() == before and not (run / "method.npz").exists()
    release_run_dir(run)


HOLDER = """
import fcntl, os, sys, time
fd = os.open(os.path.join(sys.argv[1], ".run.lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_a_live_process_holding_the_run_dir_blocks_a_second(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(
            RunDirError, match=rf"{run} is in use by another training process \(pid {holder.pid}\)"
        ):
            train(cfg(run))
        assert not (run / "metrics.json").exists() and not (run / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    assert train(cfg(run))["status"] == "completed"  # a dead holder's lock went with it
    release_run_dir(run)


def test_cli_refuses_a_run_dir_with_one_line(finished: tuple[Path, dict]) -> None:
    run, _ = finished
    metrics_before = (run / "metrics.json").read_bytes()
    (run / ".hydra").mkdir()
    record = {name: f"the earlier run's {name}\n" for name in ("config.yaml", "hydra.yaml", "overrides.yaml")}
    for name, text in record.items():  # what the earlier job recorded (deephash-compare labels jobs by it)
        (run / ".hydra" / name).write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "deephash.train", *FAST, f"hydra.run.dir={run}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert (
        last.startswith(f"error: {run} already holds a run (checkpoints, metrics.json)")
        and "Traceback" not in proc.stderr
    )
    assert (run / "metrics.json").read_bytes() == metrics_before
    assert {p.name: p.read_text() for p in (run / ".hydra").iterdir()} == record


@pytest.mark.slow  # two real trainings at once
def test_two_concurrent_trainings_on_one_dir(tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = [sys.executable, "-m", "deephash.train", *FAST, "trainer.max_epochs=3", f"hydra.run.dir={run}"]
    procs = [subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert sorted(status for status, _ in results) == [0, 2], [err[-1000:] for _, err in results]
    refused = next(err for status, err in results if status == 2).strip().splitlines()[-1]
    assert "is in use by another training process" in refused or "already holds a run" in refused
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["last_checkpoint"] == str(
        run / "checkpoints" / "last.ckpt"
    )
    assert step_of(metrics["last_checkpoint"]) > 0
    assert not any("-v1" in p.name for p in (run / "checkpoints").iterdir())


@pytest.mark.parametrize("status", ["failed", "interrupted"])
def test_a_run_stopped_before_any_checkpoint_may_be_retried(tmp_path: Path, status: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"status": status}))
    (run / "config.yaml").write_text("seed: 1\n")
    assert train(cfg(run))["status"] == "completed"
    release_run_dir(run)
