"""Image folders (Yahoo-1M style): a ``root/<class>/<image>`` tree or Caffe-style list files.

File lists come from :mod:`deephash.data.scan`: built in parallel, cached in ``cache_dir`` and reused
while the tree is unchanged. Unreadable images (corrupt, truncated, empty, not an image) follow
``on_bad_image``: ``error`` raises DataError naming the file; ``skip`` never stops a run: zero-byte files
are left out at scan time, and an item that fails to load is replaced by the next readable item of its
split (so every batch keeps its size and DDP ranks stay in step) and recorded for ``bad_images()``, the
warning and ``<report_dir>/bad_images.txt``. Encoding must not see substitutes: call
``find_bad_images()`` then ``exclude()`` first.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from deephash.data.bad_images import BadImageLog, check_images, error_reason
from deephash.data.base import RetrievalDataModule, SplitDataset
from deephash.data.gpu_decode import collate_encoded, decode_batch, is_encoded_batch, read_encoded
from deephash.data.scan import (
    IMG_EXTENSIONS,  # noqa: F401  (re-exported: the extensions a folder dataset reads)
    cache_key,
    cached_file_list,
    resolve_cache_dir,
)
from deephash.data.sources import ImageFileSource, Pool
from deephash.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    TensorTransform,
    imagenet_tensor_transform,
    native_tensor_transform,
)
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError, DataError
from deephash.utils.io import atomic_write_text
from deephash.utils.logging import get_logger

log = get_logger(__name__)

ON_BAD_IMAGE = ("skip", "error")
DEFAULT_QUERIES = 1000  # the paper's query count (section 4.3)
MAX_DEFAULT_WORKERS = 8


def default_num_workers() -> int:
    """Loader workers by default: one per CPU core this process may use, at most MAX_DEFAULT_WORKERS
    (JPEG decoding is the bottleneck at 227x227; more workers than cores only compete)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cores))


def read_classes_file(path: str) -> list[str]:
    """Class names, one a line (line k names label k); blank and ``#`` lines skipped, a UTF-8 BOM ignored."""
    with open(path, encoding="utf-8-sig") as f:
        names = [line.strip() for line in f if line.strip() and not line.strip().startswith("#")]
    if len(set(names)) != len(names):
        raise DataError(f"classes file {path} repeats a class name")
    return names


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(keep, holdout)`` sorted indices: ``round(fraction * n_c)`` of each class held out (at least
    one, but never a class's last image)."""
    rng = np.random.default_rng(seed)
    holdout = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        k = min(max(1, round(fraction * len(members))), len(members) - 1)
        holdout.append(rng.choice(members, size=k, replace=False))
    held = np.sort(np.concatenate(holdout)).astype(np.int64)
    return np.setdiff1d(np.arange(len(labels), dtype=np.int64), held), held


class FolderSplitDataset(SplitDataset):
    """A split's items under the ``on_bad_image`` policy.

    ``device_decode``: items hold the encoded file (see :mod:`deephash.data.gpu_decode`) instead of the
    transformed image, batched by ``collate_fn``.
    """

    def __init__(
        self,
        pool: Pool,
        indices: np.ndarray,
        transform: ImageTransform,
        *,
        root: str,
        on_bad_image: str,
        bad_log: BadImageLog,
        device_decode: bool = False,
    ) -> None:
        super().__init__(pool, indices, transform)
        self.root = root
        self.on_bad_image = on_bad_image
        self.bad_log = bad_log
        self.device_decode = device_decode
        self.collate_fn = collate_encoded if device_decode else None

    def __getitem__(self, k: int):
        n = len(self.indices)
        for step in range(n):
            p = int(self.indices[(k + step) % n])
            try:
                if self.device_decode:
                    image = read_encoded(os.path.join(self.root, self.pool.sample_id(p)))
                else:
                    image = self.transform(self.pool.image(p))
                return image, int(self.pool.labels[p]), p
            except DataError as err:
                if self.on_bad_image == "error":
                    raise
                self.bad_log.record(self.pool.sample_id(p), error_reason(err))
        raise DataError(f"no image of this split under {self.root} can be read; see bad_images.txt")


class FolderDataModule(RetrievalDataModule):
    """Images under ``root``: class subfolders, or ``list_file`` (+ optional ``test_list_file``,
    ``classes_file``; list-file paths must stay under ``root`` unless ``allow_outside_root``). Without a test list, ``test_fraction`` of each class (seeded by ``split_seed``,
    fixed across ``seed``) is the test source. Every image is read as RGB.

    ``cache_dir``: where file lists and image checks are cached (None: ``<root>/.deephash-cache`` if
    writable, else ``~/.cache/deephash``). ``on_bad_image``: ``skip`` or ``error`` (see the module doc).
    ``report_dir``: where ``bad_images.txt`` is written (also ``set_report_dir``). ``decode_on_gpu``: the
    workers only read files and the batch is decoded and transformed on the device. ``pin_memory`` None:
    on when CUDA is available. ``prefetch_factor``: batches each worker loads ahead (None: PyTorch's 2).
    """

    name = "folder"
    # held_out: queries from the held-out test images, database = the rest; whole_set: the paper's Yahoo-1M
    # protocol (section 4.5), trained on every image, queries drawn from the database; paper = held_out
    protocols = ("held_out", "whole_set", "paper")
    native_channels = 3
    native_size = None
    native_mean = IMAGENET_MEAN
    native_std = IMAGENET_STD
    native_flip = True

    def __init__(
        self,
        root: str | None = None,
        *args,
        list_file: str | None = None,
        test_list_file: str | None = None,
        classes_file: str | None = None,
        allow_outside_root: bool = False,
        test_fraction: float = 0.1,
        split_seed: int = 0,
        cache_dir: str | None = None,
        on_bad_image: str = "skip",
        report_dir: str | None = None,
        decode_on_gpu: bool = False,
        prefetch_factor: int | None = None,
        pin_memory: bool | None = None,
        num_workers: int | None = None,
        n_queries: int | None = None,
        **kwargs,
    ) -> None:
        if pin_memory is None:
            pin_memory = torch.cuda.is_available()
        if num_workers is None:
            num_workers = default_num_workers()
        # n_queries None: DEFAULT_QUERIES, or every image the protocol can draw from when it has fewer
        self.queries_capped = n_queries is None
        super().__init__(
            root,
            *args,
            pin_memory=pin_memory,
            num_workers=num_workers,
            n_queries=DEFAULT_QUERIES if n_queries is None else n_queries,
            **kwargs,
        )
        if not root:
            raise ConfigError(
                "data.root must be set: the directory holding the class folders or listed images"
            )
        if not os.path.isdir(root):
            raise DataError(f"folder dataset root {root} does not exist or is not a directory")
        if (test_list_file or classes_file) and not list_file:
            raise ConfigError("data.test_list_file and data.classes_file need data.list_file")
        if (
            isinstance(test_fraction, bool)
            or not isinstance(test_fraction, (int, float))
            or not 0 < test_fraction < 1
        ):
            raise ConfigError(f"data.test_fraction must be a fraction in (0, 1), got {test_fraction!r}")
        check_int(split_seed, "data.split_seed", 0)
        if on_bad_image not in ON_BAD_IMAGE:
            raise ConfigError(
                f"data.on_bad_image must be one of {', '.join(ON_BAD_IMAGE)}, got {on_bad_image!r}"
            )
        if not isinstance(allow_outside_root, bool):
            raise ConfigError(f"data.allow_outside_root must be true or false, got {allow_outside_root!r}")
        if not isinstance(decode_on_gpu, bool):
            raise ConfigError(f"data.decode_on_gpu must be true or false, got {decode_on_gpu!r}")
        if prefetch_factor is not None:
            check_int(prefetch_factor, "data.prefetch_factor", 1)
        self.list_file = list_file
        self.test_list_file = test_list_file
        self.classes_file = classes_file
        self.allow_outside_root = allow_outside_root
        self.test_fraction = float(test_fraction)
        self.split_seed = split_seed
        self.cache_dir = cache_dir
        self.on_bad_image = on_bad_image
        self.report_dir = os.fspath(report_dir) if report_dir else None
        self.decode_on_gpu = decode_on_gpu
        self.prefetch_factor = prefetch_factor
        self.device_transforms = {train: self._make_tensor_transform(train) for train in (False, True)}
        self._cache: Path | None = None
        self._bad_log: BadImageLog | None = None
        self._dropped: dict[str, str] = {}  # left out at scan time
        self._checked: dict[str, str] = {}  # found by find_bad_images
        self._pool_index: dict[str, int] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits is None and self.queries_capped:
            pool = self._load_pool()
            n_test, n_all = len(pool.test.labels), len(pool.train.labels) + len(pool.test.labels)
            available = n_all if self.protocol == "whole_set" else n_test
            if available < self.n_queries:
                log.info(
                    "data: %d queries, every image the %s protocol draws queries from (set data.n_queries to "
                    "choose fewer)",
                    available,
                    self.protocol,
                )
                self.n_queries = available
        super().setup(stage)

    # ---- loaders ----------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train", train=True, device_decode=self.decode_on_gpu)
        return self._loader(dataset, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.encode_dataloader("val", device_decode=self.decode_on_gpu)

    def test_dataloader(self) -> DataLoader:
        return self.encode_dataloader("test", device_decode=self.decode_on_gpu)

    def predict_dataloader(self) -> list[DataLoader]:
        return [self.encode_dataloader(s, device_decode=self.decode_on_gpu) for s in ("query", "database")]

    def encode_dataloader(self, split: str, device_decode: bool = False) -> DataLoader:
        """Evaluation transform, fixed order, ``eval_batch_size``. ``device_decode`` batches need this
        datamodule's ``on_after_batch_transfer``, i.e. a trainer given ``datamodule=``; a loader passed to
        ``trainer.predict(dataloaders=...)`` must keep the default (decoded in the workers)."""
        dataset = self.dataset(split, device_decode=device_decode)
        return self._loader(dataset, self.eval_batch_size, shuffle=False)

    def dataset(self, split: str, train: bool = False, device_decode: bool = False) -> FolderSplitDataset:
        indices = self._split(split)
        assert self.pool is not None and self._bad_log is not None
        return FolderSplitDataset(
            self.pool,
            indices,
            self.train_transform if train else self.eval_transform,
            root=self._root_dir(),
            on_bad_image=self.on_bad_image,
            bad_log=self._bad_log,
            device_decode=device_decode,
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Decode ``device_decode`` batches on the device they were moved to; other batches pass through."""
        if not is_encoded_batch(batch):
            return batch
        assert self.pool is not None and self._bad_log is not None
        train = self.trainer is not None and self.trainer.training
        return decode_batch(
            batch,
            self.device_transforms[train],
            on_bad_image=self.on_bad_image,
            root=self._root_dir(),
            sample_id=self.pool.sample_id,
            record=self._bad_log.record,
        )

    def teardown(self, stage: str) -> None:
        if self.pool is not None and (self.trainer is None or self.trainer.is_global_zero):
            self.report_bad_images()

    # ---- unreadable images ------------------------------------------------------------------------------
    def set_report_dir(self, path: str | os.PathLike | None) -> None:
        """Write ``bad_images.txt`` into ``path`` (the run directory) from now on."""
        self.report_dir = os.fspath(path) if path else None

    def bad_images(self) -> list[str]:
        """Sorted relative paths of every image known to be unreadable: left out at scan time (empty),
        found by ``find_bad_images``, or met while loading (in any worker process or DDP rank)."""
        return sorted(self._bad_reasons())

    def report_bad_images(self) -> list[str]:
        """Warn with the count and the first few bad images, write ``<report_dir>/bad_images.txt`` (one
        relative path a line); returns ``bad_images()``."""
        reasons = self._bad_reasons()
        bad = sorted(reasons)
        if bad:
            first = "; ".join(f"{p} ({reasons[p]})" for p in bad[:5])
            log.warning(
                "%d unreadable image(s) under %s left out or replaced: %s%s",
                len(bad),
                self._root_dir(),
                first,
                " ..." if len(bad) > 5 else "",
            )
        if self.report_dir:
            report = Path(self.report_dir) / "bad_images.txt"
            if bad or report.exists():
                atomic_write_text(report, "".join(f"{p}\n" for p in bad))
        return bad

    def find_bad_images(self, split: str | None = None, workers: int | None = None) -> list[str]:
        """Decode every image of ``split`` (None: the whole pool, plus the files left out at scan time) on
        ``workers`` threads and return the sorted relative paths of those that fail. Results are cached
        by file size and mtime, so a second call only decodes new or changed files."""
        self.setup()
        assert self.pool is not None and self._cache is not None
        indices = np.arange(len(self.pool)) if split is None else self._split(split)
        rel = [self.pool.sample_id(int(p)) for p in indices]
        cache = self._cache / f"checked-{cache_key(self._root_dir(), None)}.npz"
        found = check_images(self._root_dir(), rel, cache, workers)
        self._checked.update(found)
        if found:
            log.warning("%d of %d images cannot be read, first: %s", len(found), len(rel), min(found))
        return sorted(set(found) | (set(self._dropped) if split is None else set()))

    def exclude(self, paths: Iterable[str]) -> int:
        """Remove the images at ``paths`` (relative, as ``bad_images()`` gives them) from every split;
        returns how many pool items were removed. Files already left out at scan time are accepted."""
        self.setup()
        assert self.pool is not None and self.splits is not None
        if self._pool_index is None:
            self._pool_index = {self.pool.sample_id(p): p for p in range(len(self.pool))}
        paths = list(paths)
        unknown = [p for p in paths if p not in self._pool_index and p not in self._dropped]
        if unknown:
            raise DataError(
                f"cannot exclude {unknown[0]}: not an image of the folder dataset at {self._root_dir()}"
            )
        drop = np.array(sorted({self._pool_index[p] for p in paths if p in self._pool_index}), np.int64)
        self.splits = {k: np.setdiff1d(v, drop).astype(np.int64) for k, v in self.splits.items()}
        log.info("excluded %d images from every split", len(drop))
        return len(drop)

    def _bad_reasons(self) -> dict[str, str]:
        self._load_pool()
        assert self._bad_log is not None
        return {**self._dropped, **self._checked, **self._bad_log.read()}

    # ---- sources ----------------------------------------------------------------------------------------
    def _load_sources(self) -> tuple[ImageFileSource, ImageFileSource, list[str]]:
        root = self._root_dir()
        self._cache = resolve_cache_dir(root, self.cache_dir)
        list_path = self._find(self.list_file) if self.list_file else None
        outside = self.allow_outside_root
        files = cached_file_list(root, list_path, self._cache, allow_outside_root=outside)
        dropped = dict(files.dropped)
        if self.test_list_file:
            test = cached_file_list(
                root, self._find(self.test_list_file), self._cache, allow_outside_root=outside
            )
            dropped.update(test.dropped)
            train_paths, train_labels = files.paths, files.labels
            test_paths, test_labels = test.paths, test.labels
        else:
            keep, held = stratified_holdout(files.labels, self.test_fraction, self.split_seed)
            train_paths, train_labels = files.paths.take(keep), files.labels[keep]
            test_paths, test_labels = files.paths.take(held), files.labels[held]
        if dropped and self.on_bad_image == "error":
            first = min(dropped)
            raise DataError(
                f"cannot read image {os.path.join(root, first)}: {dropped[first]} "
                f"(data.on_bad_image=error; skip leaves such files out)"
            )
        self._dropped = dropped
        self._bad_log = BadImageLog(self._cache / f"bad-{cache_key(root, None)}", root)
        if self.list_file:
            names = self._list_class_names(np.union1d(train_labels, test_labels))
        else:
            names = files.classes
        return (
            ImageFileSource(root, train_paths, train_labels),
            ImageFileSource(root, test_paths, test_labels),
            names,
        )

    def _make_tensor_transform(self, train: bool) -> TensorTransform:
        if self.transform == "imagenet":
            return imagenet_tensor_transform(train, image_size=self.image_size, resize=self.resize)
        size = (self.image_size, self.image_size)
        return native_tensor_transform(
            train, mean=self.native_mean, std=self.native_std, flip=self.native_flip, size=size
        )

    def _list_class_names(self, labels: np.ndarray) -> list[str]:
        """Class names of the list-file ``labels`` (the distinct labels used): a classes file names label k on
        line k; without one the labels must be 0..C-1, every one used, so a stray label cannot quietly add
        empty classes to the model."""
        max_label = int(labels.max(initial=0))
        if self.classes_file:
            names = read_classes_file(self._find(self.classes_file))
            if max_label >= len(names):
                raise DataError(
                    f"label {max_label} is listed but {self.classes_file} names only {len(names)} classes"
                )
        else:
            unused = np.setdiff1d(np.arange(max_label + 1), labels)
            if unused.size:
                shown = ", ".join(str(int(c)) for c in unused[:5]) + (" ..." if unused.size > 5 else "")
                raise DataError(
                    f"list file {self.list_file} uses {labels.size} distinct labels but the largest is "
                    f"{max_label}, so labels {shown} have no image; without data.classes_file the labels "
                    f"must be 0..{labels.size - 1}: renumber them, or give a classes file naming every class"
                )
            names = [str(i) for i in range(max_label + 1)]
        if len(names) < 2:
            raise DataError(f"list file {self.list_file} has 1 class; expected at least 2")
        return names

    def _find(self, path: str) -> str:
        """A list/classes file path as given, else relative to root."""
        if os.path.isfile(path):
            return path
        under_root = os.path.join(self._root_dir(), path)
        if not os.path.isabs(path) and os.path.isfile(under_root):
            return under_root
        raise DataError(f"file {path} not found (also looked under {self._root_dir()})")
