"""Preemption: a SIGTERM (a scheduler's) or SIGINT stops a run as interrupted, with a checkpoint written at the
signal, and the resumed run ends exactly where the uninterrupted one does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deephash.train import train
from deephash.utils.signals import Interrupted, handle_signals

# digits: 1,293 training images in 21 batches of 64 per epoch
BATCHES = 21
DEMO = ("trainer.max_epochs=3", "evaluate=true", "retrieval.modes=[hamming]", "data.n_queries=60")


def _signal_at(step: int, signum: int = signal.SIGTERM) -> list[str]:
    return [
        "+callbacks.signal_at._target_=tests.preemption_helpers.SignalAt",
        f"+callbacks.signal_at.step={step}",
        f"+callbacks.signal_at.signum={int(signum)}",
    ]


def _interrupted_run(train_cfg, run: Path, step: int, signum: int = signal.SIGTERM) -> Path:
    """Train until ``signum`` comes during batch ``step``; returns the checkpoint written at the signal."""
    with handle_signals(), pytest.raises(Interrupted) as stopped:
        train(train_cfg(*DEMO, *_signal_at(step, signum), output_dir=run))
    assert stopped.value.status == 128 + signum
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file()
    return last


def _numbers(metrics: dict) -> dict:
    """The run's results: every number that is not a time or a size on disk."""
    return {
        key: value
        for key, value in metrics.items()
        if isinstance(value, int | float) and not any(word in key for word in ("seconds", "time", "bytes"))
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    from tests.conftest import compose_config

    run = tmp_path_factory.mktemp("whole") / "run"
    base = ["data=digits", "model=smallcnn", "trainer=cpu", "logger=none", "callbacks=none"]
    return train(compose_config("train", [*base, *DEMO], run))


@pytest.mark.parametrize(
    "step, trained",
    [(BATCHES + 7, BATCHES + 8), (2 * BATCHES - 1, 2 * BATCHES)],
    ids=["mid-epoch", "last-batch-of-an-epoch"],
)
def test_resume_after_a_signal_ends_exactly_as_the_uninterrupted_run(
    train_cfg, tmp_path: Path, uninterrupted: dict, step: int, trained: int
) -> None:
    """The checkpoint holds the batch the signal came in (mid-epoch) or the whole epoch (its last batch);
    resumed from it, the run draws the same batches, augmentations and dropout as the uninterrupted run."""
    run = tmp_path / "run"
    last = _interrupted_run(train_cfg, run, step)
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == trained
    resumed = train(train_cfg(*DEMO, f"ckpt_path={last}", output_dir=run))
    expected = _numbers(uninterrupted)
    got = _numbers(resumed)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    assert json.loads((run / "metrics.json").read_text())["status"] == "completed"


def _cli(run: Path, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    args = [
        "-m", "deephash.train", "data=digits", "model=smallcnn", "trainer=cpu", "logger=none",
        "callbacks.rich_progress_bar=null", "trainer.max_epochs=2", "evaluate=false", f"hydra.run.dir={run}",
        *overrides,
    ]  # fmt: skip
    full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full_env, cwd=root)


def test_sigterm_in_training_is_interrupted_143_and_the_requeued_job_resumes(tmp_path: Path) -> None:
    """A scheduler's SIGTERM: status 143 (not 0), "interrupted" with the checkpoint written at the signal; SLURM
    starts the requeued job with the same command line, and it goes on from that checkpoint to the end."""
    run = tmp_path / "run"
    command = _signal_at(BATCHES + 4)
    stopped = _cli(run, *command)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert stopped.stderr.rstrip().endswith("interrupted") and "Traceback" not in stopped.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    last = run / "checkpoints" / "last.ckpt"
    assert metrics["status"] == "interrupted" and metrics["signal"] == "SIGTERM"
    assert metrics["resume"] == str(last) and metrics["error"] is None
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == BATCHES + 5

    requeued = _cli(run, *command, env={"SLURM_RESTART_COUNT": "1", "SLURM_JOB_ID": "7"})
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 2
    assert metrics["global_step"] == 2 * BATCHES


def test_a_run_not_requeued_refuses_the_interrupted_directory_without_ckpt_path(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _cli(run, *_signal_at(3)).returncode == 143
    again = _cli(run, *_signal_at(3))
    assert again.returncode == 2 and "pass ckpt_path=<checkpoint> to resume it" in again.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_testing_is_interrupted_not_completed(tmp_path: Path, signum: int) -> None:
    """Training is complete but the test (and the evaluation after it) is not: the run is interrupted, to be
    resumed from its last checkpoint, never "completed" with blank results."""
    run = tmp_path / "run"
    result = _cli(
        run,
        "trainer.max_epochs=1",
        "+callbacks.signal_at._target_=tests.preemption_helpers.SignalAt",
        "+callbacks.signal_at.stage=test",
        f"+callbacks.signal_at.signum={int(signum)}",
    )
    assert result.returncode == 128 + signum, result.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["signal"] == signal.Signals(signum).name
    assert metrics["resume"] == str(run / "checkpoints" / "last.ckpt")
