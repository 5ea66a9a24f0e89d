"""Build a persistent index from a trained model and a datamodule split."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from deephash.data.query import preprocess_spec
from deephash.retrieval.encode import encode_split
from deephash.retrieval.store import IndexStore, load_index, save_index, sha256_file


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
) -> IndexStore | None:
    """Encode ``split`` and save it as an index at ``index_dir`` (atomically); returns the loaded index,
    which knows its items' pool indices.

    ``bad_images``: what :func:`drop_unreadable` left out of the splits (call it once, before encoding),
    recorded in the manifest.

    The manifest records the dataset, the checkpoint (path and sha256) and the query preprocessing, so a
    search can check that a model matches the index and encode new images the same way. Under DDP every
    rank encodes; rank 0 saves, the other ranks get ``None``.
    """
    index_dir = Path(index_dir)
    work = index_dir.parent / f".{index_dir.name}.encode-{split}"
    encoded = encode_split(module, datamodule, split, work, trainer)
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
                "backbone": module.hparams.backbone,
                "checkpoint": str(Path(ckpt_path).resolve()),
                "checkpoint_sha256": sha256_file(ckpt_path),
                "class_names": datamodule.class_names,
                "preprocess": preprocess_spec(datamodule),
                "bad_images": list(bad_images),  # left out of the index
            },
        )
        return load_index(index_dir, expect_bits=module.bits, pool_index=encoded.pool_index)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the index holds the features now
