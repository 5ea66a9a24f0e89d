"""Entry point: ``python -m deephash.evaluate ckpt_path=...`` / ``deephash-eval`` (config ``conf/eval.yaml``).

Evaluates a trained checkpoint: encodes the query and database splits, saves the index, evaluates every
search mode, writes the report files and extends ``metrics.json``. The work is
:func:`deephash.evaluation.run.evaluate_checkpoint`, also called at the end of ``deephash.train``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from deephash.cli import accepts_version, check_overrides, run_hydra_task
from deephash.config import CONFIG_PATH
from deephash.evaluation.run import evaluate_checkpoint
from deephash.runs import (
    build_predict_trainer,
    checkpoint_run_dir,
    finish_loggers,
    instantiate_loggers,
    record_failure,
    run_data_config,
)
from deephash.utils.errors import ConfigError


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on its training run's dataset (or ``cfg.data``); returns the metrics."""
    ckpt = Path(str(cfg.ckpt_path)).expanduser()
    if not ckpt.is_file():
        raise ConfigError(f"ckpt_path not found: {ckpt} (expected a .ckpt written by deephash-train)")
    trained_in = checkpoint_run_dir(ckpt)
    run_dir = Path(cfg.run_dir) if cfg.get("run_dir") else trained_in or Path(cfg.paths.output_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(
            f"run_dir {run_dir} is a file; expected a directory for metrics.json, the reports and the index"
        )
    data_cfg = cfg.get("data") or run_data_config(trained_in)
    if data_cfg is None:
        raise ConfigError(
            f"no dataset given and no training run config beside {ckpt}; pass data=<digits|mnist|cifar10|folder>"
        )
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup()
    run_dir.mkdir(parents=True, exist_ok=True)
    loggers = instantiate_loggers(cfg.get("logger"), cfg)
    metrics = evaluate_checkpoint(cfg, ckpt, datamodule, build_predict_trainer(cfg), run_dir=run_dir)
    if metrics:
        finish_loggers(loggers, {**metrics, "best_checkpoint": None}, run_dir)
    return metrics


@accepts_version("deephash-eval")
@check_overrides("eval")
@hydra.main(config_path=CONFIG_PATH, config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run_hydra_task(evaluate, cfg, on_failure=record_failure)


if __name__ == "__main__":
    main()
