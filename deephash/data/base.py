"""RetrievalDataModule: a LightningDataModule over a pool (train source + test source) and its splits."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from deephash.data.protocols import PROTOCOLS, SPLITS, make_splits
from deephash.data.sampler import ResumableRandomSampler, resume_position
from deephash.data.sources import Pool, Source
from deephash.data.transforms import TRANSFORMS, ImageTransform, imagenet_transform, native_transform
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError, DataError
from deephash.utils.io import atomic_write_bytes, atomic_write_json
from deephash.utils.logging import get_logger
from deephash.utils.signals import quiet_worker, worker_context

log = get_logger(__name__)


class SplitDataset(Dataset):
    """Items ``(image (C,H,W) float, label int, pool index int)`` of one split."""

    def __init__(self, pool: Pool, indices: np.ndarray, transform: ImageTransform) -> None:
        self.pool = pool
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int, int]:
        p = int(self.indices[k])
        return self.transform(self.pool.image(p)), int(self.pool.labels[p]), p


def same_data(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """None if two :meth:`RetrievalDataModule.identity` records describe the same data, else what differs, in
    a few words (``dataset digits, not mnist``)."""
    differences = []
    if recorded.get("dataset") != current["dataset"]:
        differences.append(f"dataset {recorded.get('dataset')}, not {current['dataset']}")
    names, ours = list(recorded.get("class_names") or []), current["class_names"]
    if names != ours:
        shown = ", ".join(map(str, names[:4])) + (", ..." if len(names) > 4 else "")
        differences.append(f"{len(names)} classes ({shown}), not {len(ours)} of this data")
    if list(recorded.get("input") or []) != list(current["input"]):
        shape, own = ("x".join(map(str, v)) for v in (recorded.get("input") or ["?"], current["input"]))
        differences.append(f"{shape} input, not {own}")
    return "; ".join(differences) or None


def describe_line(description: dict[str, Any]) -> str:
    """A datamodule's :meth:`~RetrievalDataModule.describe` as one readable line for the console:
    ``digits (paper protocol, 10 classes, 1x8x8 native): train 1293, val 144, test 360, query 300, ...``."""
    shape = "x".join(str(n) for n in description["input"])
    sizes = ", ".join(f"{k} {n}" for k, n in description["sizes"].items())
    return (
        f"{description['dataset']} ({description['protocol']} protocol, {description['num_classes']} classes, "
        f"{shape} {description['transform']}): {sizes}"
    )


def download_torchvision(dataset: Callable[..., object], root: str, what: str, folder: str) -> None:
    """Fetch a torchvision dataset with ``dataset(root, train=True, download=True)``. Any failure is one
    DataError, ``downloading <what> into <folder> failed: <reason on one line>``: URLError, RuntimeError,
    OSError and timeouts all mean the same to the user."""
    try:
        dataset(root, train=True, download=True)
    except Exception as e:
        reason = " ".join(str(e).split())
        raise DataError(f"downloading {what} into {folder} failed: {reason}") from e


class RetrievalDataModule(pl.LightningDataModule):
    """Base datamodule; subclasses set the class attributes and implement ``_load_sources``.

    Args are validated here (one-line ConfigError). ``setup`` loads the sources and computes
    ``splits`` (sorted int64 pool indices per split) with ``deephash.data.protocols.make_splits``.
    """

    name: ClassVar[str] = ""
    protocols: ClassVar[tuple[str, ...]] = ("paper",)
    native_channels: ClassVar[int] = 3
    native_size: ClassVar[tuple[int, int] | None] = None  # None: resized to image_size under "native"
    native_mean: ClassVar[tuple[float, ...]] = (0.5, 0.5, 0.5)
    native_std: ClassVar[tuple[float, ...]] = (0.5, 0.5, 0.5)
    native_flip: ClassVar[bool] = False
    native_translate: ClassVar[float] = 0.0  # random shift in training, as a fraction of the image

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
        protocol: str = "paper",
        n_queries: int = 1000,
        val_size: float | int = 0.1,
        train_per_class: int = 500,
        download: bool = False,
        transform: str = "imagenet",
        image_size: int = 227,
        resize: int = 256,
        translate: float | None = None,
        rotate: float = 0.0,
        scale: float = 0.0,
    ) -> None:
        super().__init__()
        self._order_to_load: dict[str, Any] | None = None  # a checkpoint's training order, for the next fit
        self._train_sampler: ResumableRandomSampler | None = None
        check_int(batch_size, "data.batch_size", 1)
        if eval_batch_size is not None:
            check_int(eval_batch_size, "data.eval_batch_size", 1)
        check_int(num_workers, "data.num_workers", 0)
        check_int(seed, "data.seed", 0)
        check_int(n_queries, "data.n_queries", 1)
        check_int(train_per_class, "data.train_per_class", 1)
        check_int(image_size, "data.image_size", 1)
        check_int(resize, "data.resize", 1)
        for flag, value in (("pin_memory", pin_memory), ("persistent_workers", persistent_workers)):
            if not isinstance(value, bool):
                raise ConfigError(f"data.{flag} must be true or false, got {value!r}")
        if not isinstance(download, bool):
            raise ConfigError(f"data.download must be true or false, got {download!r}")
        if protocol not in PROTOCOLS:
            raise ConfigError(f"data.protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
        if protocol not in self.protocols:
            raise ConfigError(
                f"data.protocol {protocol!r} is not available for {self.name}; choose one of {', '.join(self.protocols)}"
            )
        if transform not in TRANSFORMS:
            raise ConfigError(f"data.transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
        if transform == "imagenet" and image_size > resize:
            raise ConfigError(f"data.image_size={image_size} must not exceed data.resize={resize}")
        check_val_size(val_size)
        if translate is None:
            translate = self.native_translate
        for key, value, top in (
            ("translate", translate, 1.0),
            ("rotate", rotate, 180.0),
            ("scale", scale, 1.0),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < top:
                raise ConfigError(f"data.{key} must be a number in [0, {top:g}), got {value!r}")

        self.root = root
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size if eval_batch_size is not None else batch_size * 4
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.prefetch_factor: int | None = None  # batches per worker loaded ahead; None: PyTorch's default
        self.seed = seed
        self.protocol = protocol
        self.n_queries = n_queries
        self.val_size = val_size
        self.train_per_class = train_per_class  # the labelled images per class of cifar_1k5k and cnnh
        self.download = download
        self.transform = transform
        self.image_size = image_size
        self.resize = resize
        # training augmentation under data.transform=native (see native_transform)
        self.translate, self.rotate, self.scale = float(translate), float(rotate), float(scale)

        self.train_transform = self._make_transform(train=True)
        self.eval_transform = self._make_transform(train=False)
        self.pool: Pool | None = None
        self.splits: dict[str, np.ndarray] | None = None
        self._class_names: list[str] | None = None

    # ---- hooks for subclasses --------------------------------------------------------------
    def _load_sources(self) -> tuple[Source, Source, list[str]]:
        """Return ``(train source, test source, class names)``; raise DataError if files are missing."""
        raise NotImplementedError

    def _download(self) -> None:
        """Fetch the dataset into ``root`` (called from ``prepare_data`` only when download=True)."""

    def _split_options(self) -> dict[str, Any]:
        """Extra keyword arguments for ``make_splits``."""
        return {"train_per_class": self.train_per_class}

    # ---- Lightning API -------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.download:
            self._download()

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        pool = self._load_pool()
        self.splits = make_splits(
            self.protocol,
            pool.train.labels,
            pool.test.labels,
            n_queries=self.n_queries,
            val_size=self.val_size,
            seed=self.seed,
            **self._split_options(),
        )
        log.info("data: %s", describe_line(self.describe()))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.dataset("train", train=True), self.batch_size, shuffle=True)

    def train_sampler(self, n: int) -> ResumableRandomSampler:
        """The training order (seeded by ``seed``), from where a resumed fit continues."""
        sampler = ResumableRandomSampler(n, torch.Generator().manual_seed(self.seed), self.batch_size)
        if self._order_to_load is not None:
            sampler.resume(self._order_to_load, resume_position(self.trainer))
            self._order_to_load = None
        self._train_sampler = sampler
        return sampler

    def state_dict(self) -> dict[str, Any]:
        """Saved with every checkpoint: the training order's position (:mod:`deephash.data.sampler`)."""
        sampler = self._train_sampler
        return {"train_order": sampler.state_dict()} if sampler is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._order_to_load = state_dict.get("train_order")

    def val_dataloader(self) -> DataLoader:
        return self.encode_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.encode_dataloader("test")

    def predict_dataloader(self) -> list[DataLoader]:
        return [self.encode_dataloader("query"), self.encode_dataloader("database")]

    def encode_dataloader(self, split: str) -> DataLoader:
        """Evaluation transform, fixed order, ``eval_batch_size``."""
        return self._loader(self.dataset(split), self.eval_batch_size, shuffle=False)

    # ---- dataset access --------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        self._load_pool()
        assert self._class_names is not None
        return list(self._class_names)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return 3 if self.transform == "imagenet" else self.native_channels

    @property
    def input_size(self) -> tuple[int, int]:
        """``(H, W)`` of the tensors the model receives."""
        if self.transform == "native" and self.native_size is not None:
            return self.native_size
        return (self.image_size, self.image_size)

    def dataset(self, split: str, train: bool = False) -> SplitDataset:
        """Items of ``split``; ``train=True`` applies the training augmentation."""
        indices = self._split(split)
        assert self.pool is not None
        return SplitDataset(self.pool, indices, self.train_transform if train else self.eval_transform)

    def labels(self, split: str) -> np.ndarray:
        """``(n,) int64`` labels of ``split``, in the split's (sorted pool index) order."""
        indices = self._split(split)
        assert self.pool is not None
        return self.pool.labels[indices]

    def sample_ids(self, split: str) -> list[str]:
        indices = self._split(split)
        assert self.pool is not None
        return [self.pool.sample_id(int(p)) for p in indices]

    def describe(self) -> dict[str, Any]:
        sizes = {k: int(len(v)) for k, v in (self.splits or {}).items()}
        return {
            "dataset": self.name,
            "protocol": self.protocol,
            "seed": self.seed,
            "num_classes": self.num_classes,
            "transform": self.transform,
            "input": [self.in_channels, *self.input_size],
            "sizes": sizes,
        }

    def identity(self) -> dict[str, Any]:
        """What a checkpoint records of the data it was trained on (:func:`same_data` compares two):
        the dataset's name, its class names in label order, and the ``[C, H, W]`` input the network sees."""
        return {
            "dataset": self.name,
            "class_names": self.class_names,
            "input": [self.in_channels, *self.input_size],
        }

    def save_splits(self, run_dir: str | os.PathLike) -> None:
        """Write ``splits.npz`` (one int64 array per split) and ``classes.json`` into ``run_dir``."""
        self.setup()
        assert self.splits is not None
        buffer = io.BytesIO()
        np.savez(buffer, **self.splits)
        run_dir = Path(run_dir)
        atomic_write_bytes(run_dir / "splits.npz", buffer.getvalue())
        names = self.class_names
        atomic_write_json(
            run_dir / "classes.json",
            {
                "class_names": names,
                "class_to_idx": {n: i for i, n in enumerate(names)},
                "dataset": self.name,
                "protocol": self.protocol,
                "seed": self.seed,
            },
        )

    # ---- run reports and unreadable images: only image folders have any; these are the defaults ----------
    on_bad_image: str = "error"  # what an unreadable image does: only image folders offer "skip"

    def set_report_dir(self, path: str | os.PathLike | None) -> None:
        """Where this run's data reports go (image folders write ``bad_images.txt``); nothing here."""

    def find_bad_images(self, split: str | None = None, workers: int | None = None) -> list[str]:
        """Sample ids of the images of ``split`` (None: all) that cannot be decoded: none in memory."""
        return []

    def exclude(self, paths: Iterable[str]) -> int:
        """Leave the images at ``paths`` out of every split; returns how many were removed."""
        unknown = list(paths)
        if unknown:
            raise DataError(f"cannot exclude {unknown[0]}: {self.name} has no image files to leave out")
        return 0

    def bad_images(self) -> list[str]:
        """Sample ids of the images known to be unreadable: none for datasets held in memory."""
        return []

    # ---- internals -------------------------------------------------------------------------
    def _root_dir(self) -> str:
        if not self.root:
            raise ConfigError(f"data.root must be set: the directory holding the {self.name} dataset")
        return os.fspath(self.root)

    def _load_pool(self) -> Pool:
        if self.pool is None:
            train, test, class_names = self._load_sources()
            self.pool = Pool(train, test)
            self._class_names = list(class_names)
        return self.pool

    def _split(self, split: str) -> np.ndarray:
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.setup()
        assert self.splits is not None
        return self.splits[split]

    def _make_transform(self, train: bool) -> ImageTransform:
        if self.transform == "imagenet":
            return imagenet_transform(train, image_size=self.image_size, resize=self.resize)
        size = None if self.native_size is not None else (self.image_size, self.image_size)
        return native_transform(
            train,
            mean=self.native_mean,
            std=self.native_std,
            flip=self.native_flip,
            size=size,
            translate=self.translate,
            rotate=self.rotate,
            scale=self.scale,
        )

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        """A DataLoader with the datamodule's worker settings and the dataset's ``collate_fn``, if any."""
        ahead = (
            {"prefetch_factor": self.prefetch_factor} if self.num_workers > 0 and self.prefetch_factor else {}
        )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            # shuffle=True's RandomSampler, drawing from the generator below, that a resume continues
            sampler=(sampler := self.train_sampler(len(dataset))) if shuffle else None,
            drop_last=False,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            generator=sampler.generator if shuffle else None,
            worker_init_fn=quiet_worker if self.num_workers > 0 else None,
            multiprocessing_context=worker_context() if self.num_workers > 0 else None,
            collate_fn=getattr(dataset, "collate_fn", None),
            **ahead,
        )


def check_val_size(val_size: Any) -> None:
    ok = not isinstance(val_size, bool) and (
        (isinstance(val_size, int) and val_size >= 0)
        or (isinstance(val_size, float) and 0.0 <= val_size < 1.0)
    )
    if not ok:
        raise ConfigError(
            f"data.val_size must be a fraction in [0, 1) or a count >= 0 of the training data, got {val_size!r}"
        )
