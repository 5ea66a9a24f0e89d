"""Sources: the raw images and labels of one half (train or test) of a dataset.

A source is a light object with ``labels`` (int64), ``__len__``, ``image(i) -> PIL.Image`` and
``sample_id(i) -> str``. The datamodule's *pool* is the train source followed by the test source.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Protocol, overload

import numpy as np
from PIL import Image

from deephash.data.transforms import to_mode, upright
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
    """Open an image file as RGB, upright as its EXIF orientation says (gray, palette, CMYK, 16-bit and float
    are converted; transparency composited onto the background of :func:`to_mode`); DataError if unreadable."""
    try:
        with Image.open(path) as img:
            img.load()
            img = upright(img)
            return to_mode(img, "RGB") if img.mode != "RGB" else img.copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e


class PathList(Sequence[str]):
    """Strings packed in one UTF-8 buffer: ``blob`` uint8 (total bytes,), ``offsets`` int64 (n + 1,).

    A million paths as Python strings cost ~100 MB in every forked DataLoader worker (reference counting
    writes to every page), two numpy arrays are shared copy-on-write; they also load from a cache file
    without building a single string.
    """

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self.blob = np.asarray(blob, dtype=np.uint8)
        self.offsets = np.asarray(offsets, dtype=np.int64)

    @classmethod
    def from_strings(cls, strings: Sequence[str]) -> PathList:
        encoded = [s.encode("utf-8") for s in strings]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, i: int) -> str: ...

    @overload
    def __getitem__(self, i: slice) -> list[str]: ...

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"path index {i} out of range [0, {n})")
        i = int(i) % n
        return self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return iter(self.tolist())

    def tolist(self) -> list[str]:
        text = self.blob.tobytes()
        bounds = self.offsets.tolist()
        return [text[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:])]

    def take(self, indices: np.ndarray) -> PathList:
        """The paths at ``indices`` ((k,) int), gathered without building strings."""
        indices = np.asarray(indices, dtype=np.int64)
        starts, lengths = self.offsets[indices], np.diff(self.offsets)[indices]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        # byte j of new path k sits at starts[k] + j: repeat each start over its length, add a running count
        gather = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
        return PathList(self.blob[gather], offsets)


class ImageFileSource:
    """Image files under ``root`` given by relative paths; ``sample_id`` is the relative path."""

    def __init__(self, root: str, paths: Sequence[str], labels: np.ndarray) -> None:
        if len(paths) != len(labels):
            raise DataError(f"{root}: {len(paths)} image paths but {len(labels)} labels")
        self.root = os.fspath(root)
        self.paths = paths if isinstance(paths, PathList) else PathList.from_strings(paths)
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, i: int) -> Image.Image:
        return load_rgb(self.file(i))

    def file(self, i: int) -> str:
        """The full path of item ``i``."""
        return os.path.join(self.root, self.paths[i])

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
