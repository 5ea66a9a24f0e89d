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
    [
        pytest.param(BATCHES + 7, BATCHES + 8, id="mid-epoch"),
        pytest.param(2 * BATCHES - 1, 2 * BATCHES, id="last-batch-of-an-epoch", marks=pytest.mark.slow),
    ],
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_a_run_not_requeued_refuses_the_interrupted_directory_without_ckpt_path(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert _cli(run, *_signal_at(3)).returncode == 143
    again = _cli(run, *_signal_at(3))
    assert again.returncode == 2 and "pass ckpt_path=<checkpoint> to resume it" in again.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
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


def _trained_on_digits(train_cfg, tmp_path: Path) -> Path:
    train(train_cfg("trainer.max_epochs=1", "trainer.limit_train_batches=2", output_dir=tmp_path / "digits"))
    return tmp_path / "digits" / "checkpoints" / "last.ckpt"


def test_checkpoints_record_the_data_they_were_trained_on(train_cfg, tmp_path: Path) -> None:
    recorded = torch.load(_trained_on_digits(train_cfg, tmp_path), map_location="cpu", weights_only=True)
    assert recorded["dataset"] == {
        "dataset": "digits",
        "class_names": [str(d) for d in range(10)],
        "input": [1, 8, 8],
    }


def test_resume_refuses_another_datasets_checkpoint_but_finetuning_starts_from_it(
    train_cfg, tmp_path: Path
) -> None:
    """A folder of 8x8 gray images in 10 classes fits the digits network's shapes exactly: only the recorded
    class names tell the two apart. Resuming is refused in one line; finetune=true is a new run from the
    weights, whose epochs count on this data only."""
    from PIL import Image

    from deephash.utils.errors import ConfigError

    last = _trained_on_digits(train_cfg, tmp_path)
    root = tmp_path / "photos"
    rng = torch.Generator().manual_seed(0)
    for c in range(10):
        (root / f"kind{c}").mkdir(parents=True)
        for i in range(6):
            pixels = torch.randint(0, 256, (8, 8), generator=rng, dtype=torch.uint8).numpy()
            Image.fromarray(pixels, "L").save(root / f"kind{c}" / f"{i}.png")
    data = [
        "data=folder", f"data.root={root}", "data.transform=native", "data.image_size=8", "data.n_queries=10",
        "data.num_workers=0", "trainer.max_epochs=2", "test=false",
    ]  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        train(train_cfg(*data, f"ckpt_path={last}", output_dir=tmp_path / "resume"))
    message = str(refused.value)
    assert (
        "\n" not in message
        and "was trained on other data (dataset digits, not folder; 10 classes (0, 1, 2" in message
    )
    assert "finetune=true" in message
    tuned = train(train_cfg(*data, f"ckpt_path={last}", "finetune=true", output_dir=tmp_path / "tuned"))
    assert tuned["epochs"] == 2 and tuned["dataset"] == "folder"  # epochs of this data, not 1 + 2
    from deephash.baselines.run import run_baseline
    from tests.conftest import compose_config

    baseline = compose_config(
        "baseline", ["features=f7", f"ckpt_path={last}", "logger=none", *data[:-2]], tmp_path / "baseline"
    )
    with pytest.raises(
        ConfigError, match=r"was trained on other data \(dataset digits, not folder.*pretrained_f7"
    ):
        run_baseline(baseline)


def _sweep(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    args = [
        "-m", "deephash.train", "-m", "data=digits", "logger=none", "callbacks=none", "trainer.max_epochs=1",
        "trainer.limit_train_batches=3", "evaluate=false", "test=false", f"hydra.sweep.dir={tmp_path / 'sweep'}",
        *overrides,
    ]  # fmt: skip
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=root)


@pytest.mark.slow
def test_a_sweep_with_a_failed_job_ends_with_one_line_naming_it(tmp_path: Path) -> None:
    result = _sweep(tmp_path, "model.net.dropout=0.5,7")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 1 of the sweep's 2 jobs failed; job 1 (") and "model.net.dropout=7" in last
    assert "dropout probability has to be between 0 and 1" in last
    statuses = [json.loads((tmp_path / "sweep" / n / "metrics.json").read_text())["status"] for n in "01"]
    assert statuses == ["completed", "failed"]


@pytest.mark.slow
def test_a_signal_stops_the_whole_sweep_with_its_status(tmp_path: Path) -> None:
    """Hydra's launcher would go on with the next job after a failed one; an interruption stops the sweep."""
    result = _sweep(tmp_path, "seed=1,2", *_signal_at(1))
    assert result.returncode == 143, result.stderr[-3000:]
    assert json.loads((tmp_path / "sweep" / "0" / "metrics.json").read_text())["status"] == "interrupted"
    assert not (tmp_path / "sweep" / "1").exists()


def test_resuming_a_checkpoint_whose_shapes_do_not_fit_is_one_line(train_cfg, tmp_path: Path) -> None:
    from deephash.utils.errors import ConfigError

    last = _trained_on_digits(train_cfg, tmp_path)
    with pytest.raises(ConfigError) as refused:
        train(train_cfg("model.net.f7_dim=128", f"ckpt_path={last}", output_dir=tmp_path / "other"))
    message = str(refused.value)
    assert (
        "\n" not in message and f"{last} does not fit this run's network (size mismatch for net." in message
    )
    assert "finetune=true" in message


# ---- DataLoader workers: deaf to a scheduler's SIGTERM, not to their parent's -------------------------------

HOLDS_ITS_WORKERS = """
from deephash.data.digits import DigitsDataModule
dm = DigitsDataModule(transform="native", n_queries=60, batch_size=64, seed=1, num_workers=1,
                      persistent_workers=True)
dm.setup()
loader = dm.train_dataloader()
next(iter(loader))  # persistent: the loader keeps its worker until the process exits
print("fetched", flush=True)
"""


def test_a_process_holding_persistent_workers_exits(tmp_path: Path) -> None:
    """At exit ``multiprocessing`` ends the workers a process still holds with SIGTERM, then waits for them: a
    worker that ignored its parent's SIGTERM kept the process (a test session, a notebook's kernel, an
    in-process launcher) waiting forever."""
    done = subprocess.run(
        [sys.executable, "-c", HOLDS_ITS_WORKERS], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0 and "fetched" in done.stdout, done.stderr


def test_a_worker_ignores_a_sigterm_from_outside() -> None:
    """A scheduler's SIGTERM (sent here by another process, as scancel's is) reaches the workers too: they go on
    loading until the main process stops. (Their parent's SIGTERM ending them is the test above.)"""
    import time

    from deephash.data.digits import DigitsDataModule

    dm = DigitsDataModule(transform="native", n_queries=60, batch_size=64, seed=1, num_workers=1)
    dm.setup()
    batches = iter(dm.train_dataloader())
    next(batches)
    worker = batches._workers[0]  # noqa: SLF001 - the process under test
    for _ in range(3):
        kill = f"import os, signal; os.kill({worker.pid}, signal.SIGTERM)"
        subprocess.run([sys.executable, "-c", kill], check=True)
        time.sleep(0.5)
        assert worker.is_alive()
        next(batches)
    del batches  # the loader's own shutdown
