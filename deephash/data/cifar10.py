"""CIFAR-10 read by torchvision from ``root/cifar-10-batches-py`` (the python pickle batches)."""

from __future__ import annotations

import os
import pickle

from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import check_integrity

from deephash.data.base import RetrievalDataModule, download_torchvision
from deephash.data.sources import ArraySource
from deephash.utils.errors import ConfigError, DataError

FILES = tuple(name for name, _ in CIFAR10.train_list + CIFAR10.test_list) + (CIFAR10.meta["filename"],)


class _CIFAR10Reader(CIFAR10):
    """torchvision's CIFAR10 without its MD5 checks: the datamodule verifies them itself, or is told not to."""

    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class CIFAR10DataModule(RetrievalDataModule):
    """50,000 train / 10,000 test 32x32 colour images in 10 classes.

    ``verify_checksums=False`` reads a CIFAR-10-format copy whose files are not the official release
    (e.g. generated in tests).
    """

    name = "cifar10"
    protocols = ("paper", "cifar_1k5k", "cifar_10k50k", "cnnh")
    native_channels = 3
    native_size = (32, 32)
    native_mean = (0.4914, 0.4822, 0.4465)
    native_std = (0.2470, 0.2435, 0.2616)
    native_flip = True

    def __init__(self, *args, verify_checksums: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(verify_checksums, bool):
            raise ConfigError(f"data.verify_checksums must be true or false, got {verify_checksums!r}")
        self.verify_checksums = verify_checksums

    @property
    def folder(self) -> str:
        return os.path.join(self._root_dir(), CIFAR10.base_folder)

    def _download(self) -> None:
        download_torchvision(CIFAR10, self._root_dir(), "CIFAR-10", self.folder)

    def _load_sources(self) -> tuple[ArraySource, ArraySource, list[str]]:
        folder = self.folder
        if any(not os.path.isfile(os.path.join(folder, f)) for f in FILES):
            raise DataError(
                f"CIFAR-10 not found in {folder}: expected {', '.join(FILES)} (set data.download=true to fetch it)"
            )
        if self.verify_checksums:
            _verify(folder)
        try:
            train = _CIFAR10Reader(self._root_dir(), train=True)
            test = _CIFAR10Reader(self._root_dir(), train=False)
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError) as e:
            raise DataError(f"CIFAR-10 files in {folder} are malformed: {type(e).__name__}: {e}") from e
        return (
            ArraySource(train.data, train.targets, "cifar10/train"),
            ArraySource(test.data, test.targets, "cifar10/test"),
            list(train.classes),
        )


def _verify(folder: str) -> None:
    """The official MD5s (torchvision's list); DataError naming the first file that differs."""
    expected = CIFAR10.train_list + CIFAR10.test_list + [[CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
    for name, md5 in expected:
        path = os.path.join(folder, name)
        if not check_integrity(path, md5):
            raise DataError(
                f"{path} is corrupt or not the official CIFAR-10 release (MD5 mismatch); delete {folder} and "
                "set data.download=true to fetch it again, or set data.verify_checksums=false to read it as is"
            )
