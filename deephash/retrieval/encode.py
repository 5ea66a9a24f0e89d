"""Encode a datamodule split with a trained model: packed codes, F7 (float16, on disk) and labels.

Runs Lightning's ``predict`` and writes every batch straight to ``.npy`` files at the rows of its samples
(a ``BasePredictionWriter`` using positional writes, not memory maps, whose written pages would stay in
the resident set), so a million 4096-d features never have to fit in RAM. Rows are
found from each sample's pool index, which makes the result independent of batch order and of how a
distributed sampler shards (and pads) the data: under DDP every rank writes its own rows into the
same files (on one node, or a shared filesystem), and a duplicated padding sample rewrites the same
row with the same values. The result holds each sample exactly once, in split order.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.callbacks.progress import ProgressBar

from deephash.retrieval.codes import code_bytes
from deephash.retrieval.features import F7File
from deephash.retrieval.items import EncodedItems
from deephash.retrieval.npy import NpyRowWriter, create_npy
from deephash.utils.errors import DeephashError


class _RowWriter(BasePredictionWriter):
    """Writes predicted batches into ``codes.npy``/``f7.npy``/``labels.npy``/``written.npy`` under ``directory``.

    Global rank 0 creates the files at full size; then every rank opens them and writes its samples' rows
    with ``os.pwrite``, which touches only those rows' bytes, so ranks can write at once.
    """

    def __init__(self, directory: Path, pool_index: np.ndarray, bits: int, f7_dim: int) -> None:
        super().__init__(write_interval="batch")
        self.directory, self.pool_index, self.bits, self.f7_dim = directory, pool_index, bits, f7_dim
        self.files: dict[str, NpyRowWriter] = {}

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        n = len(self.pool_index)
        shapes = {
            "codes": ((n, code_bytes(self.bits)), np.uint8),
            "f7": ((n, self.f7_dim), np.float16),
            "labels": ((n,), np.int64),
            "written": ((n,), np.bool_),
        }
        if trainer.is_global_zero:
            if self.directory.exists():
                shutil.rmtree(self.directory)
            self.directory.mkdir(parents=True)
            for name, (shape, dtype) in shapes.items():
                create_npy(self.directory / f"{name}.npy", shape, dtype)
        trainer.strategy.barrier("deephash-encode-alloc")
        self.files = {name: NpyRowWriter(self.directory / f"{name}.npy") for name in shapes}

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ):
        index = prediction["index"].numpy()
        rows = np.searchsorted(self.pool_index, index)
        if np.any(rows >= len(self.pool_index)) or np.any(
            self.pool_index[np.minimum(rows, len(self.pool_index) - 1)] != index
        ):
            raise DeephashError("encoding received samples that are not in the split being encoded")
        codes = prediction["codes"].numpy()
        self.files["codes"].write_rows(rows, np.packbits(codes, axis=1))
        self.files["f7"].write_rows(rows, prediction["f7"].numpy())
        self.files["labels"].write_rows(rows, prediction["labels"].numpy())
        self.files["written"].write_rows(rows, np.ones(len(rows), np.bool_))

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # written bytes sit in the page cache, seen by every process on this node; closing also
        # flushes them to a shared filesystem (close-to-open consistency) before rank 0 reads them
        self._close()
        trainer.strategy.barrier("deephash-encode-done")

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._close()

    def _close(self) -> None:
        for writer in self.files.values():
            writer.close()
        self.files = {}


def encode_split(
    module: pl.LightningModule,
    datamodule: Any,
    split: str,
    directory: str | Path,
    trainer: pl.Trainer | None = None,
) -> EncodedItems:
    """Encode ``split`` of ``datamodule`` into ``directory`` (created, or replaced if it exists).

    Returns the split's items with their pool indices; ``f7`` is an ``F7File`` over ``directory/f7.npy``.

    ``trainer`` defaults to a single-device CPU/GPU trainer; pass the training trainer (or one with a DDP
    strategy) to encode on every rank.
    """
    directory = Path(directory)
    datamodule.setup()
    pool_index = np.asarray(datamodule.splits[split])
    writer = _RowWriter(directory, pool_index, module.bits, module.feature_dim)
    trainer = trainer or default_predict_trainer()
    loader = datamodule.encode_dataloader(split)
    trainer.callbacks.append(writer)
    try:
        with progress_label(trainer, progress_description(split)):
            trainer.predict(module, dataloaders=loader, return_predictions=False)
    finally:
        trainer.callbacks.remove(writer)
    written = np.load(directory / "written.npy")
    if not written.all():
        missing = np.flatnonzero(~written)
        raise DeephashError(
            f"encoding {split} missed {missing.size} of {written.size} samples (first: row {missing[0]}); "
            f"are trainer.limit_predict_batches or a filtering sampler set?"
        )
    return EncodedItems(
        codes=np.load(directory / "codes.npy"),
        f7=F7File(directory / "f7.npy"),  # read on demand: a million rows never have to be resident
        labels=np.load(directory / "labels.npy"),
        ids=datamodule.sample_ids(split),
        pool_index=pool_index,
    )


def progress_description(split: str) -> str:
    """What the progress bar says while ``split`` is encoded: ``encoding database``, ``encoding queries``."""
    return f"encoding {'queries' if split == 'query' else split}"


_LABELLED: dict[type, type] = {}


@contextmanager
def progress_label(trainer: pl.Trainer, label: str) -> Iterator[None]:
    """Show ``label`` instead of Lightning's bare "Predicting" on the trainer's progress bar meanwhile.

    Lightning reads the text from a read-only property of the bar's class, so the bar is given, for the
    duration, a subclass that answers ``label``."""
    bar = trainer.progress_bar_callback
    if not isinstance(bar, ProgressBar):
        yield
        return
    original = type(bar)
    if original not in _LABELLED:
        _LABELLED[original] = type(
            original.__name__,
            (original,),
            {"predict_description": property(lambda self: self._deephash_label)},
        )
    bar._deephash_label = label
    bar.__class__ = _LABELLED[original]
    try:
        yield
    finally:
        bar.__class__ = original
        del bar._deephash_label


def default_predict_trainer() -> pl.Trainer:
    """A quiet one-device trainer for inference (GPU when available)."""
    return pl.Trainer(
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=True,
        inference_mode=True,
    )
