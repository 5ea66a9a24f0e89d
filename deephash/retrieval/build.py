"""Build a persistent index from a trained model and a datamodule split."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from deephash.data.query import preprocess_spec
from deephash.retrieval.encode import encode_split
from deephash.retrieval.index_lock import acquire_index_lock, index_lock, release_index_lock, staging_dir
from deephash.retrieval.index_reader import load_index
from deephash.retrieval.index_writer import save_index, write_errors
from deephash.retrieval.items import IndexStore
from deephash.retrieval.manifest import sha256_file
from deephash.retrieval.shards import shard_rows
from deephash.utils.errors import ConfigError, DeephashError


def drop_unreadable(datamodule: Any) -> list[str]:
    """Under ``data.on_bad_image=skip``, find unreadable images and leave them out of every split.

    Returns their paths (relative to the dataset root) for the index manifest. Datasets without image
    files (digits, MNIST, CIFAR-10) have none.
    """
    if datamodule.on_bad_image != "skip":
        return []
    bad = datamodule.find_bad_images()
    if bad:
        datamodule.exclude(bad)
    return list(datamodule.bad_images())


def build_index(
    module: pl.LightningModule,
    datamodule: Any,
    ckpt_path: str | Path,
    index_dir: str | Path,
    trainer: pl.Trainer | None = None,
    split: str = "database",
    bad_images: Sequence[str] = (),
    codec: dict[str, Any] | None = None,
    shard: tuple[int | None, int] | None = None,
) -> IndexStore | None:
    """Encode ``split`` and save it as an index at ``index_dir`` (atomically); returns the loaded index,
    which knows its items' pool indices.

    ``bad_images``: what :func:`drop_unreadable` left out of the splits (call it once, before encoding),
    recorded in the manifest. ``codec``: ``save_index``'s codec options (``codec``, ``codec_train_rows``,
    ``codec_seed``); None: float16 F7. ``shard``: (k, N) (k None: the whole split) indexes only the k-th of N equal consecutive parts of
    the split (``shards.shard_rows``), so N such indexes listed in order are the split's index, sharded.

    The manifest records the dataset, the checkpoint (path and sha256) and the query preprocessing, so a
    search can check that a model matches the index and encode new images the same way. Under DDP every
    rank encodes; rank 0 saves, the other ranks get ``None``.

    Global rank 0 holds the index's lock from encoding to saving (a second writer fails with one line)
    and encodes into a staging directory of its own, removed afterwards (or by the next writer, if this
    one dies).
    """
    index_dir = Path(index_dir)
    if shard is not None and shard[0] is not None:
        datamodule.splits[split] = shard_rows(datamodule.splits[split], *shard)
    if trainer is None or trainer.world_size == 1:
        with index_lock(index_dir):
            work = staging_dir(index_dir, split)
            return _encode_and_save(
                module, datamodule, ckpt_path, index_dir, trainer, split, bad_images, work, codec
            )
    # DDP: every rank writes into the same staging files, so rank 0 picks them (and takes the lock)
    rank_zero, message = trainer.is_global_zero, ""
    if rank_zero:
        try:
            acquire_index_lock(index_dir)
        except DeephashError as err:
            message = str(err)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        work = staging_dir(index_dir, split) if rank_zero and not message else None
        message, work = trainer.strategy.broadcast((message if rank_zero else "", work), src=0)
    else:  # ranks not launched yet: each one reruns this, so the name must not depend on the process
        work = index_dir.parent / f".{index_dir.name}.staging-{split}-ddp"
    if message:
        raise ConfigError(message)
    try:
        return _encode_and_save(
            module, datamodule, ckpt_path, index_dir, trainer, split, bad_images, work, codec
        )
    finally:
        if rank_zero:
            release_index_lock(index_dir)


def _encode_and_save(
    module: pl.LightningModule,
    datamodule: Any,
    ckpt_path: str | Path,
    index_dir: Path,
    trainer: pl.Trainer | None,
    split: str,
    bad_images: Sequence[str],
    work: Path,
    codec: dict[str, Any] | None = None,
) -> IndexStore | None:
    try:
        with write_errors(index_dir):
            encoded = encode_split(module, datamodule, split, work, trainer)
    except BaseException:
        if trainer is None or trainer.is_global_zero:
            shutil.rmtree(work, ignore_errors=True)
        raise
    if trainer is not None and not trainer.is_global_zero:
        return None
    try:
        save_index(
            index_dir,
            codes_packed=encoded.codes,
            f7=encoded.f7,
            labels=encoded.labels,
            ids=encoded.ids,
            bits=module.bits,
            meta={
                "dataset": datamodule.name,
                "split": split,
                "protocol": datamodule.protocol,
                "method": module.method,
                "features": module.net.features,  # the re-rank layer
                "backbone": module.backbone,
                "checkpoint": str(Path(ckpt_path).resolve()),
                "checkpoint_sha256": sha256_file(ckpt_path),
                "class_names": datamodule.class_names,
                "preprocess": preprocess_spec(datamodule),
                "bad_images": list(bad_images),  # left out of the index
            },
            **(codec or {}),
        )
        return load_index(index_dir, expect_bits=module.bits, pool_index=encoded.pool_index)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the index holds the features now
