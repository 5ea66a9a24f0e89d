"""A callback that stops a training run the way a scheduler or a Ctrl-C does, at a chosen batch."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class SignalAt(pl.Callback):
    """Sends this process ``signum`` as training batch ``step`` (global, counted from 0) starts, or, with
    ``stage="test"``, as the first test batch starts: a scheduler's SIGTERM or a Ctrl-C arriving there."""

    def __init__(self, step: int = 0, signum: int = signal.SIGTERM, stage: str = "train") -> None:
        self.step, self.signum, self.stage = int(step), int(signum), stage

    def on_train_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if self.stage == "train" and trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)

    def on_test_batch_start(self, trainer: pl.Trainer, *args: object) -> None:
        if self.stage == "test":
            os.kill(os.getpid(), self.signum)
