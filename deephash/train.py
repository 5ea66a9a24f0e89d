"""Entry point: ``python -m deephash.train`` / ``deephash-train`` (Hydra; config ``conf/train.yaml``).

Composition only: the work lives in importable functions (``train(cfg) -> metrics``).
"""

from __future__ import annotations

import time
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from deephash.cli import accepts_version, check_overrides, run_hydra_task
from deephash.config import CONFIG_PATH, validate_train_config
from deephash.evaluation.run import evaluate_checkpoint
from deephash.models.resume import ResumeState, fit, fit_checkpoint, resume_requeued_job
from deephash.runs import (
    anchor_data_paths,
    build_predict_trainer,
    claim_run_dir,
    current_launch_cwd,
    finish_loggers,
    instantiate_callbacks,
    instantiate_loggers,
    last_checkpoint,
    monitored_checkpoint_callback,
    record_train_failure,
    select_checkpoint,
)
from deephash.utils.io import atomic_write_json, atomic_write_text, update_json
from deephash.utils.logging import get_logger

log = get_logger(__name__)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit, test and (``cfg.evaluate``) evaluate retrieval; returns the run's metrics (also in metrics.json)."""
    validate_train_config(cfg)
    resume_requeued_job(cfg)  # a requeued SLURM job goes on from its checkpoint at the signal
    # locked; refuses a directory holding another run (fine-tuning from a checkpoint is a new run)
    output_dir = claim_run_dir(cfg, resumes=not cfg.get("finetune"))
    pl.seed_everything(cfg.seed, workers=True)

    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data)
    datamodule.set_report_dir(output_dir)  # image folders list the unreadable files they skip here
    datamodule.prepare_data()
    datamodule.setup("fit")
    # the method's network and loss, completed with what the data decides
    model: pl.LightningModule = hydra.utils.instantiate(
        cfg.model, net={"num_classes": datamodule.num_classes, "in_channels": datamodule.in_channels}
    )
    ckpt_path = fit_checkpoint(cfg.get("ckpt_path"), bool(cfg.get("finetune")), model, datamodule.identity())
    loggers = instantiate_loggers(cfg.get("logger"), cfg)
    # the random streams with every checkpoint, and a checkpoint at SIGTERM or SIGINT to resume from exactly
    resume = ResumeState(output_dir / "checkpoints" / "last.ckpt")
    callbacks = [*instantiate_callbacks(cfg.get("callbacks")), resume]
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    if trainer.is_global_zero:
        datamodule.save_splits(output_dir)
        # the resolved config, so evaluation/indexing can rebuild this run's data without Hydra's files
        # (data paths absolute: relative ones mean the launch directory, which later commands may not share)
        saved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        saved.data = anchor_data_paths(saved.data, current_launch_cwd())
        atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(saved))

    log.info(
        "training %s on %s/%s with %d-bit codes in %s",
        model.method,
        model.backbone,
        datamodule.name,
        model.bits,
        output_dir,
    )
    start = time.perf_counter()
    fit(trainer, model, datamodule, ckpt_path, resume)  # a signal: Interrupted, at a checkpoint
    train_seconds = time.perf_counter() - start

    best = monitored_checkpoint_callback(trainer)
    best_ckpt = best.best_model_path if best is not None else ""
    # the best val/acc when that selected the checkpoint (a method without a classifier monitors val/loss)
    best_score = best.best_model_score if best is not None and best.monitor == "val/acc" else None
    val_acc = float(best_score) if best_score is not None else _metric(trainer, "val/acc")
    last_ckpt = last_checkpoint(trainer)  # before test(), whose checkpoint restores the callbacks' state
    chosen = select_checkpoint(cfg, trainer, output_dir)  # best validation score, or the final iteration
    ckpt = chosen["evaluated_checkpoint"]
    test_acc = None
    if cfg.get("test"):
        results = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
        acc = results[0].get("test/acc") if results else None  # None: a method without a classifier
        test_acc = float(acc) if acc is not None else None

    metrics: dict[str, Any] = {
        "status": "running" if cfg.get("evaluate") else "completed",  # completed once evaluated
        "method": model.method,
        "dataset": datamodule.name,
        "backbone": model.backbone,
        "bits": model.bits,
        "seed": int(cfg.seed),
        "val_acc": val_acc,
        "test_acc": test_acc,
        "epochs": int(trainer.current_epoch),
        "global_step": int(trainer.global_step),
        "train_seconds": round(train_seconds, 3),
        "best_checkpoint": best_ckpt,
        "last_checkpoint": last_ckpt,
        **chosen,
        "protocol": datamodule.describe()["protocol"],
        "data": datamodule.describe(),
    }
    if trainer.is_global_zero:  # a fresh file: nothing stale from an earlier run in this directory
        atomic_write_json(output_dir / "metrics.json", metrics)

    if cfg.get("evaluate"):
        metrics.update(evaluate_checkpoint(cfg, ckpt, datamodule, build_predict_trainer(cfg, trainer)))
        metrics["status"] = "completed"
        if trainer.is_global_zero:
            update_json(output_dir / "metrics.json", {"status": "completed"})
    if trainer.is_global_zero:
        finish_loggers(loggers, metrics, output_dir)
    return metrics


def _metric(trainer: pl.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return float(value) if value is not None else None


@accepts_version("deephash-train")
@check_overrides("train")
@hydra.main(config_path=CONFIG_PATH, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    # Hydra sweepers (e.g. Optuna) optimise the scalar the task returns
    return run_hydra_task(train, cfg, on_failure=record_train_failure)


if __name__ == "__main__":
    main()
