"""Building a run's callbacks and loggers from config, and recording how a run ended."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from deephash.utils.io import update_json
from deephash.utils.logging import get_logger

log = get_logger(__name__)


def instantiate_callbacks(cfg: DictConfig | None) -> list[pl.Callback]:
    """Every entry of the ``callbacks`` group that has a ``_target_``."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def instantiate_loggers(cfg: DictConfig | None, run_cfg: DictConfig) -> list[pl.loggers.Logger]:
    """Every entry of the ``logger`` group that has a ``_target_``; the resolved run config is logged."""
    if not cfg:
        return []
    loggers = [hydra.utils.instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]
    from omegaconf import OmegaConf

    params = OmegaConf.to_container(run_cfg, resolve=True, throw_on_missing=False)
    for logger in loggers:
        logger.log_hyperparams(params)
    return loggers


def finish_loggers(loggers: list[pl.loggers.Logger], metrics: dict[str, Any], run_dir: Path) -> None:
    """Log the final retrieval results (W&B summary, tables, images, artifacts) and close the runs."""
    from deephash.tracking.wandb import finish, log_artifacts, log_retrieval_results

    url = wandb_url(loggers)
    if url:
        update_json(run_dir / "metrics.json", {"wandb_url": url})
    if metrics.get("modes"):
        log_retrieval_results(loggers, metrics, run_dir)
    log_artifacts(loggers, run_dir, metrics.get("best_checkpoint") or None, metrics.get("index_dir"))
    for logger in loggers:
        logger.finalize("success")
    finish(loggers)


def record_failure(cfg: DictConfig, err: BaseException) -> None:
    """Mark the run failed in its metrics.json, so sweep summaries report it instead of dropping it,
    and close an open W&B run with a failing exit code."""
    import wandb

    if wandb.run is not None:
        wandb.run.finish(exit_code=1)
    try:
        output_dir = Path(cfg.paths.output_dir)
    except Exception:  # noqa: BLE001 - no run directory could be resolved: nothing to record
        return
    if not output_dir.exists():
        return
    update_json(
        output_dir / "metrics.json",
        {
            "status": "failed",
            "error": f"{err.__class__.__name__}: {err}",
            "traceback": traceback.format_exception_only(type(err), err)[-1].strip(),
        },
    )


def wandb_url(loggers: list[pl.loggers.Logger]) -> str | None:
    """The W&B run page of an online run (offline runs have none until synced)."""
    for logger in loggers:
        if isinstance(logger, pl.loggers.WandbLogger):
            run = logger.experiment
            if not getattr(run, "offline", True) and getattr(run, "url", None):
                return str(run.url)
    return None
