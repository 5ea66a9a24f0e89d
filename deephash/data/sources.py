"""Sources: the raw images and labels of one half (train or test) of a dataset.

A source is a light object with ``labels`` (int64), ``__len__``, ``image(i) -> PIL.Image`` and
``sample_id(i) -> str``. The datamodule's *pool* is the train source followed by the test source.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image

from deephash.utils.errors import DataError


class Source(Protocol):
    labels: np.ndarray  # (n,) int64

    def __len__(self) -> int: ...

    def image(self, i: int) -> Image.Image: ...

    def sample_id(self, i: int) -> str: ...


class ArraySource:
    """Images held in memory as ``uint8`` arrays: ``(n, H, W)`` gray or ``(n, H, W, 3)`` RGB."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, id_prefix: str) -> None:
        if len(images) != len(labels):
            raise DataError(f"{id_prefix}: {len(images)} images but {len(labels)} labels")
        self.images = np.ascontiguousarray(images, dtype=np.uint8)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.id_prefix = id_prefix

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])

    def sample_id(self, i: int) -> str:
        return f"{self.id_prefix}/{i}"


def load_rgb(path: str) -> Image.Image:
    """Open an image file as RGB (gray, RGBA, palette and CMYK are converted); DataError if unreadable."""
    try:
        with Image.open(path) as img:
            if img.mode == "P" and "transparency" in img.info:
                # PIL warns when palette transparency is dropped without going through RGBA first
                img = img.convert("RGBA")
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e


class ImageFileSource:
    """Image files under ``root`` given by relative paths; ``sample_id`` is the relative path."""

    def __init__(self, root: str, paths: Sequence[str], labels: np.ndarray) -> None:
        if len(paths) != len(labels):
            raise DataError(f"{root}: {len(paths)} image paths but {len(labels)} labels")
        self.root = os.fspath(root)
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        return load_rgb(os.path.join(self.root, self.paths[i]))

    def sample_id(self, i: int) -> str:
        return self.paths[i]


class Pool:
    """Train source followed by test source; pool index ``p < len(train)`` is train item ``p``."""

    def __init__(self, train: Source, test: Source) -> None:
        self.train = train
        self.test = test
        self.n_train = len(train)
        self.labels = np.concatenate([train.labels, test.labels]).astype(np.int64)  # (n_pool,)

    def __len__(self) -> int:
        return len(self.labels)

    def _locate(self, p: int) -> tuple[Source, int]:
        if not 0 <= p < len(self.labels):
            raise IndexError(f"pool index {p} out of range [0, {len(self.labels)})")
        return (self.train, p) if p < self.n_train else (self.test, p - self.n_train)

    def image(self, p: int) -> Image.Image:
        source, i = self._locate(p)
        return source.image(i)

    def sample_id(self, p: int) -> str:
        source, i = self._locate(p)
        return source.sample_id(i)
