"""Which checkpoint a finished fit is tested and evaluated with (``runs.select_checkpoint``), run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deephash.train import train
from deephash.utils.errors import ConfigError


def _manifest_checkpoint(index_dir: Path) -> str:
    return json.loads((index_dir / "manifest.json").read_text())["meta"]["checkpoint"]


@pytest.mark.slow
def test_last_selection_without_val_evaluates_the_final_iteration(train_cfg, tmp_path: Path) -> None:
    """The authors' protocol: every training image trained on, the final weights tested and indexed."""
    run = tmp_path / "run"
    cfg = train_cfg(
        "checkpoint_selection=last", "data.val_size=0", "evaluate=true", "retrieval.modes=[hamming]"
    )
    metrics = train(cfg)

    last = run / "checkpoints" / "last.ckpt"
    assert metrics["selection"] == "last"
    assert metrics["evaluated_checkpoint"] == str(last)
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == metrics["global_step"]
    assert Path(_manifest_checkpoint(run / "index")) == last.resolve()
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["selection"] == "last" and saved["evaluated_checkpoint"] == str(last)
    assert saved["val_acc"] is None  # nothing was held out to select on
    splits = np.load(run / "splits.npz")
    assert splits["val"].size == 0
    assert np.array_equal(splits["train"], splits["database"])  # the paper protocol: database = training set


@pytest.mark.slow
def test_last_selection_ignores_a_better_validation_checkpoint(train_cfg, tmp_path: Path) -> None:
    run = tmp_path / "run"
    metrics = train(train_cfg("checkpoint_selection=last", "trainer.max_epochs=3"))
    assert metrics["best_checkpoint"]  # validation ran and kept a best checkpoint ...
    assert metrics["evaluated_checkpoint"] == str(run / "checkpoints" / "last.ckpt")  # ... left unused
    assert metrics["selection"] == "last"


@pytest.mark.slow
def test_best_val_is_the_default_and_falls_back_to_last_without_val(train_cfg, tmp_path: Path) -> None:
    metrics = train(train_cfg())
    assert metrics["selection"] == "best_val"
    assert metrics["evaluated_checkpoint"] == metrics["best_checkpoint"] != ""

    fallback = train(train_cfg("data.val_size=0", output_dir=tmp_path / "no-val"))
    assert fallback["selection"] == "last"
    assert fallback["evaluated_checkpoint"] == str(tmp_path / "no-val" / "checkpoints" / "last.ckpt")


def test_unknown_selection_is_one_clear_error(train_cfg) -> None:
    with pytest.raises(ConfigError, match="checkpoint_selection must be one of best_val, last, got 'best'"):
        train(train_cfg("checkpoint_selection=best"))
