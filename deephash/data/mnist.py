"""MNIST read by torchvision from ``root/MNIST/raw`` (the IDX files, plain or gzipped)."""

from __future__ import annotations

import gzip
import os

from torchvision.datasets import MNIST

from deephash.data.base import RetrievalDataModule, download_torchvision
from deephash.data.sources import ArraySource
from deephash.utils.errors import DataError
from deephash.utils.io import atomic_write_bytes

RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class MNISTDataModule(RetrievalDataModule):
    """60,000 train / 10,000 test 28x28 gray digits."""

    name = "mnist"
    protocols = ("paper", "cnnh")
    native_channels = 1
    native_size = (28, 28)
    native_mean = (0.1307,)
    native_std = (0.3081,)

    @property
    def raw_folder(self) -> str:
        return os.path.join(self._root_dir(), "MNIST", "raw")

    def _download(self) -> None:
        download_torchvision(MNIST, self._root_dir(), "MNIST", self.raw_folder)

    def _load_sources(self) -> tuple[ArraySource, ArraySource, list[str]]:
        raw = self.raw_folder
        _ensure_raw_files(raw)
        try:
            train = MNIST(self._root_dir(), train=True)
            test = MNIST(self._root_dir(), train=False)
        except (RuntimeError, ValueError, TypeError, KeyError, OSError) as e:
            reason = " ".join(str(e).split())
            raise DataError(f"MNIST files in {raw} are malformed: {reason}") from e
        return (
            ArraySource(train.data.numpy(), train.targets.numpy(), "mnist/train"),
            ArraySource(test.data.numpy(), test.targets.numpy(), "mnist/test"),
            [str(d) for d in range(10)],
        )


def _ensure_raw_files(raw: str) -> None:
    """Check the four IDX files exist; unpack a ``.gz`` next to itself where only that is present."""
    missing = [f for f in RAW_FILES if not os.path.isfile(os.path.join(raw, f))]
    if any(not os.path.isfile(os.path.join(raw, f + ".gz")) for f in missing):
        raise DataError(
            f"MNIST not found in {raw}: expected {', '.join(RAW_FILES)} (set data.download=true to fetch it)"
        )
    for f in missing:
        gz = os.path.join(raw, f + ".gz")
        try:
            with gzip.open(gz, "rb") as stream:
                data = stream.read()
        except (OSError, EOFError) as e:
            raise DataError(f"cannot unpack {gz}: {e}") from e
        # atomic: several ranks may unpack the same file at once
        atomic_write_bytes(os.path.join(raw, f), data)
