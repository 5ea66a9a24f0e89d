"""What a checkpoint needs beyond Lightning's loop state to resume a fit exactly, and the stop at a signal.

Lightning's checkpoint holds the weights, the optimizer, the schedulers and the loops' progress. The rest of what
decides the following batches is saved here: every random stream the process draws from (torch's CPU and CUDA
generators, numpy's, Python's), restored when training starts again. The order of the training items is the
sampler's (:mod:`deephash.data.sampler`), which reads where to continue from the restored loops.

A SIGTERM or SIGINT during the fit (:mod:`deephash.utils.signals`) stops it after the current training batch (the
last batch of an epoch: once the epoch is validated and counted), never inside a batch or a validation, and
writes ``last.ckpt`` there: resuming from it trains on exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import random
import re
import signal
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from deephash.utils.errors import ConfigError
from deephash.utils.logging import get_logger
from deephash.utils.signals import Interrupted, defer_signals, resume_signals

log = get_logger(__name__)


def rng_state() -> dict[str, Any]:
    """Every random stream of this process, as tensors and plain types (checkpoints load with
    ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (the CUDA streams where this machine has as many devices)."""
    torch.set_rng_state(state["torch"])
    saved = state["numpy"]
    keys = saved["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, saved["pos"], saved["has_gauss"], saved["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)


class ResumeState(pl.Callback):
    """Saves the random streams with every checkpoint and restores them when a resumed fit starts training;
    stops the fit at a signal after the current batch and writes ``last`` (a path) there. ``signal``: the
    signal that stopped the last fit (or came during its last batch), else None."""

    def __init__(self, last: str | Path) -> None:
        self.last = Path(last)
        self.signal: int | None = None
        self._restore: dict[str, Any] | None = None
        self._trainer: pl.Trainer | None = None
        self._held = False  # a stop asked for during validation or an epoch's last batch, handed on after it
        self._deferring = False
        self._stopping = False

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_state()}

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        identity = getattr(trainer.datamodule, "identity", None)
        if identity is not None:  # the data it was trained on, which a resume must train on too
            checkpoint["dataset"] = identity()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restore = state_dict.get("rng")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # the training order is resumable (the datamodule's sampler), though the loader has no state_dict
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restore is not None:  # here, after everything a new process draws before training
            set_rng_state(self._restore)
            self._restore = None
        self._trainer = trainer
        self._deferring, self._stopping, self.signal = True, False, None
        defer_signals(self._stop)

    def _stop(self, signum: int) -> None:
        """Ask Lightning to stop where it checks for SIGTERM: after the current batch (or, held back by
        ``on_validation_batch_end``, after the validation under way)."""
        log.warning("signal %d: stopping after the current batch, with a checkpoint to resume from", signum)
        self._stopping = True
        if self._trainer is not None:
            self._trainer._signal_connector.received_sigterm = True

    def _hold(self, trainer: pl.Trainer) -> None:
        if trainer.state.fn == "fit" and trainer._signal_connector.received_sigterm:
            self._held = True
            trainer._signal_connector.received_sigterm = False

    def _release(self, trainer: pl.Trainer) -> None:
        if self._held:
            self._held = False
            trainer._signal_connector.received_sigterm = True

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        # at an epoch's last batch, stop once the epoch is validated and counted: a clean place to resume from
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._hold(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._hold(trainer)

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self._hold(trainer)  # Lightning would stop the validation after this batch, losing its metrics

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self._release(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release(trainer)  # Lightning stops after counting the epoch complete

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._stopping:  # the signal came during the last batch: training is complete, stop after it
            self._save(trainer)
        self._end()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if self._stopping and type(exception).__name__ == "SIGTERMException":
            self._save(trainer)  # stopped at a batch's end: a consistent state
        self._end()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._end()

    def _save(self, trainer: pl.Trainer) -> None:
        trainer.save_checkpoint(self.last)
        log.warning("checkpoint at the signal written to %s", self.last)

    def _end(self) -> None:
        if self._deferring:
            self._deferring = False
            self.signal = resume_signals()
        self._trainer = None


def fit(
    trainer: pl.Trainer, model: pl.LightningModule, datamodule: Any, ckpt_path: str | None, state: ResumeState
) -> None:
    """``trainer.fit`` with ``state`` among its callbacks; a signal during it (or during its last batch) raises
    :class:`~deephash.utils.signals.Interrupted` once the checkpoint at the signal is written."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        raise Interrupted(state.signal or signal.SIGTERM) from None
    except RuntimeError as err:
        misfit = re.search(r"(size mismatch for [^:]+: .*?)(?:\.\s|$)", str(err), re.S)
        if ckpt_path is None or misfit is None:
            raise
        raise ConfigError(
            f"{ckpt_path} does not fit this run's network ({' '.join(misfit.group(1).split())}); resume it with "
            "the model settings it was trained with, or pass finetune=true to start a new run from its weights"
        ) from None
    if state.signal is not None:  # it came during the last batch: training is complete, the rest is not
        raise Interrupted(state.signal)


def resume_requeued_job(cfg: Any) -> None:
    """Set ``cfg.ckpt_path`` to the checkpoint a requeued SLURM job resumes from: the one its interrupted run in
    ``cfg.paths.output_dir`` recorded (``metrics.json``: ``"status": "interrupted"``, ``"resume"``), when SLURM
    restarted this job (``SLURM_RESTART_COUNT``, set on a requeue) and no ``ckpt_path`` was given. The job's
    command line is the one of its first start, which cannot name the checkpoint."""
    import json
    import os

    from omegaconf import open_dict

    if not os.environ.get("SLURM_RESTART_COUNT") or cfg.get("ckpt_path"):
        return
    try:
        record = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        return
    resume = record.get("resume") if record.get("status") == "interrupted" else None
    if resume and Path(resume).is_file():
        log.warning("requeued job: resuming the interrupted run from %s", resume)
        with open_dict(cfg):
            cfg.ckpt_path = str(resume)


def initialise_from(model: pl.LightningModule, ckpt_path: str | Path) -> list[str]:
    """Fine-tuning: ``model``'s weights from the checkpoint, where their shapes agree (a classifier over other
    classes keeps its fresh initialisation); returns the names of the weights left as they were."""
    from deephash.models.checkpoint import read_checkpoint

    saved = read_checkpoint(ckpt_path)["state_dict"]
    own = model.state_dict()
    taken = {k: v for k, v in saved.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    model.load_state_dict(taken, strict=False)
    kept = sorted(set(own) - set(taken))
    log.info("fine-tuning from %s: %d weights loaded, %d kept fresh", ckpt_path, len(taken), len(kept))
    return kept


def fit_checkpoint(
    ckpt_path: str | None, finetune: bool, model: pl.LightningModule, identity: dict[str, Any]
) -> str | None:
    """The checkpoint a fit resumes from: ``ckpt_path``, once checked to be trained on the data ``identity``
    describes (a one-line ConfigError otherwise); with ``finetune``, None: ``model`` starts from its weights
    instead, a new run on any data."""
    from deephash.models.checkpoint import check_trained_on

    if not ckpt_path:
        return None
    if finetune:
        initialise_from(model, ckpt_path)
        return None
    check_trained_on(
        ckpt_path,
        identity,
        "resume it on that data, or pass finetune=true to start a new run from its weights",
    )
    return str(ckpt_path)
