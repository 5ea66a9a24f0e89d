"""Image folders (Yahoo-1M style): a ``root/<class>/<image>`` tree or Caffe-style list files."""

from __future__ import annotations

import os
import re

import numpy as np
from torchvision.datasets.folder import has_file_allowed_extension, make_dataset

from deephash.data.base import RetrievalDataModule, check_int
from deephash.data.sources import ImageFileSource
from deephash.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from deephash.utils.errors import ConfigError, DataError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_LABEL = re.compile(r"\d+")


def scan_folder(root: str) -> tuple[list[str], np.ndarray, list[str]]:
    """``(relative paths, labels (n,) int64, class names)`` of a ``root/<class>/<image>`` tree.

    Classes are the sorted non-hidden subfolders; images are found recursively (extensions are
    case-insensitive, hidden files skipped), in sorted order.
    """
    if not os.path.isdir(root):
        raise DataError(f"folder dataset root {root} does not exist or is not a directory")
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if len(classes) < 2:
        plural = "class" if len(classes) == 1 else "classes"
        raise DataError(
            f"folder dataset at {root} has {len(classes)} {plural}; expected at least 2 class subfolders"
        )

    def is_image(path: str) -> bool:
        return not os.path.basename(path).startswith(".") and has_file_allowed_extension(path, IMG_EXTENSIONS)

    class_to_idx = {c: i for i, c in enumerate(classes)}
    samples = make_dataset(root, class_to_idx, is_valid_file=is_image, allow_empty=True)
    paths = [os.path.relpath(p, root).replace(os.sep, "/") for p, _ in samples]
    labels = np.array([label for _, label in samples], dtype=np.int64)
    empty = [c for c, n in zip(classes, np.bincount(labels, minlength=len(classes))) if n == 0]
    if empty:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DataError(
            f"class folder {os.path.join(root, empty[0])} has no images{more}; "
            f"expected files ending in {', '.join(IMG_EXTENSIONS)}"
        )
    return paths, labels, classes


def read_list_file(path: str, root: str) -> tuple[list[str], np.ndarray]:
    """``(relative paths, labels (n,) int64)`` from ``relative/path label`` lines; every file must exist."""
    paths: list[str] = []
    labels: list[int] = []
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)  # the path may contain spaces, the label is the last field
            if len(parts) != 2 or not _LABEL.fullmatch(parts[1]):
                raise DataError(
                    f"{path}, line {lineno}: expected 'relative/path label' with an integer label >= 0, got {line!r}"
                )
            paths.append(parts[0])
            labels.append(int(parts[1]))
    if not paths:
        raise DataError(f"list file {path} lists no images")
    missing = [p for p in paths if not os.path.isfile(os.path.join(root, p))]
    if missing:
        raise DataError(f"{path}: {len(missing)} listed file(s) not found under {root}, first: {missing[0]}")
    return paths, np.array(labels, dtype=np.int64)


def read_classes_file(path: str) -> list[str]:
    """Class names, one a line (line k names label k); blank and ``#`` lines skipped."""
    with open(path, encoding="utf-8") as f:
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


class FolderDataModule(RetrievalDataModule):
    """Images under ``root``: class subfolders, or ``list_file`` (+ optional ``test_list_file``,
    ``classes_file``). Without a test list, ``test_fraction`` of each class (seeded by ``split_seed``,
    fixed across ``seed``) is the test source. Every image is read as RGB."""

    name = "folder"
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
        test_fraction: float = 0.1,
        split_seed: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(root, *args, **kwargs)
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
        check_int("split_seed", split_seed, 0)
        self.list_file = list_file
        self.test_list_file = test_list_file
        self.classes_file = classes_file
        self.test_fraction = float(test_fraction)
        self.split_seed = split_seed

    def _load_sources(self) -> tuple[ImageFileSource, ImageFileSource, list[str]]:
        root = self._root_dir()
        if not self.list_file:
            paths, labels, names = scan_folder(root)
        else:
            paths, labels = read_list_file(self._find(self.list_file), root)
        if self.test_list_file:
            train_paths, train_labels = paths, labels
            test_paths, test_labels = read_list_file(self._find(self.test_list_file), root)
        else:
            keep, held = stratified_holdout(labels, self.test_fraction, self.split_seed)
            train_paths, train_labels = [paths[i] for i in keep], labels[keep]
            test_paths, test_labels = [paths[i] for i in held], labels[held]
        if self.list_file:
            names = self._list_class_names(int(max(train_labels.max(initial=0), test_labels.max(initial=0))))
        return (
            ImageFileSource(root, train_paths, train_labels),
            ImageFileSource(root, test_paths, test_labels),
            names,
        )

    def _list_class_names(self, max_label: int) -> list[str]:
        if self.classes_file:
            names = read_classes_file(self._find(self.classes_file))
            if max_label >= len(names):
                raise DataError(
                    f"label {max_label} is listed but {self.classes_file} names only {len(names)} classes"
                )
        else:
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
