"""Two-process DDP on CPU (gloo): training, synchronised metrics, distributed encoding, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from deephash.data.digits import DigitsDataModule
from deephash.models.checkpoint import load_hash_module
from deephash.retrieval import load_index
from deephash.retrieval.codes import pack_codes

DDP = ["trainer=ddp_cpu", "experiment=demo", "logger=none", "callbacks=none", "retrieval.modes=[hamming]"]


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deephash.train", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ddp") / "run"
    proc = _train(*DDP, "trainer.max_epochs=2", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def test_ddp_training_writes_one_completed_metrics_file(ddp_run: Path) -> None:
    metrics = json.loads((ddp_run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["epochs"] == 2
    assert metrics["n_database"] == 1437 and "hamming" in metrics["modes"]
    assert (ddp_run / "train_ddp_process_1.log").exists()  # a second rank really ran
    assert sorted(p.name for p in ddp_run.glob("metrics*.json")) == ["metrics.json"]


def test_ddp_test_accuracy_agrees_with_a_single_process_test(ddp_run: Path) -> None:
    metrics = json.loads((ddp_run / "metrics.json").read_text())
    module = load_hash_module(metrics["best_checkpoint"])
    dm = DigitsDataModule(seed=42, n_queries=300, transform="native", batch_size=64)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    single = trainer.test(module, datamodule=dm, verbose=False)[0]["test/acc"]
    # 360 test images split evenly over 2 ranks: no padding, so the synchronised accuracy is exact
    assert metrics["test_acc"] == pytest.approx(single, abs=1e-6)


def test_distributed_encoding_equals_single_process_encoding(ddp_run: Path, tmp_path: Path) -> None:
    metrics = json.loads((ddp_run / "metrics.json").read_text())
    ckpt = metrics["best_checkpoint"]
    single = tmp_path / "single"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "deephash.index",
            "build",
            f"ckpt_path='{ckpt}'",
            f"index_dir={single}",
            f"hydra.run.dir={tmp_path / 'h'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ddp_index, one = load_index(ddp_run / "index"), load_index(single)
    # 1,437 items over 2 ranks: the distributed sampler pads one duplicate; each item is kept once, in order
    assert ddp_index.count == one.count == 1437
    assert np.array_equal(ddp_index.codes, one.codes)
    assert np.array_equal(np.asarray(ddp_index.f7), np.asarray(one.f7))
    assert np.array_equal(ddp_index.labels, one.labels)
    assert ddp_index.ids == one.ids


@pytest.mark.slow
def test_ddp_resume_continues_from_last_checkpoint(ddp_run: Path, tmp_path: Path) -> None:
    last = ddp_run / "checkpoints" / "last.ckpt"
    steps = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    run = tmp_path / "resumed"
    proc = _train(*DDP, "trainer.max_epochs=3", "evaluate=false", f"ckpt_path={last}", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs"] == 3 and metrics["global_step"] == steps * 3 // 2


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpsh", "cnnh_plus"])
def test_other_methods_train_under_ddp_and_their_index_matches_one_process(
    method: str, tmp_path: Path
) -> None:
    """A pairwise loss (DPSH: pairs within each rank's batch) and a loss with state computed before training
    (CNNH+: stage 1's target codes, in each rank's setup) train with two processes, and the method's own head
    encodes the distributed index: exactly the codes one process computes from the same checkpoint."""
    run = tmp_path / "run"
    proc = _train(*DDP, f"method={method}", "trainer.max_epochs=1", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["method"] == method
    assert (run / "train_ddp_process_1.log").exists()
    module = load_hash_module(metrics["evaluated_checkpoint"])
    assert module.method == method
    dm = DigitsDataModule(seed=42, n_queries=300, transform="native", batch_size=64)
    dm.setup("predict")
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    batches = trainer.predict(module, dataloaders=dm.encode_dataloader("database"))
    codes = pack_codes(np.concatenate([b["codes"].numpy() for b in batches]))
    index = load_index(run / "index")
    assert index.count == 1437 and np.array_equal(np.asarray(index.codes), codes)
