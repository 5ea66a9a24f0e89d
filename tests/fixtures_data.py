"""Writers for small datasets in the real on-disk formats (MNIST IDX, CIFAR-10 pickles, image trees)."""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass
class Written:
    """What a writer put on disk, to compare the loaded data against."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def _balanced_labels(per_class: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class)).astype(np.int64)


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """IDX3: big-endian magic 2051, count, rows, cols, then uint8 pixels."""
    n, h, w = images.shape
    path.write_bytes(struct.pack(">IIII", 2051, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    """IDX1: big-endian magic 2049, count, then uint8 labels."""
    path.write_bytes(struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def write_mnist(root: Path, train_per_class: int = 12, test_per_class: int = 5, seed: int = 0) -> Written:
    """``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` with 28x28 random digits."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out = []
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = _balanced_labels(per_class, 10, rng)
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        write_idx_images(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx_labels(raw / f"{prefix}-labels-idx1-ubyte", labels)
        out += [images, labels]
    return Written(*out)


def write_cifar10(root: Path, train_per_class: int = 10, test_per_class: int = 5, seed: int = 0) -> Written:
    """``root/cifar-10-batches-py``: five data batches, a test batch and batches.meta, pickled like the
    release (dicts with "data" uint8 (n, 3072) in CHW plane order, "labels", "filenames")."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name: str, obj: dict) -> None:
        with open(folder / name, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    def batch(images: np.ndarray, labels: np.ndarray, tag: str) -> dict:
        return {
            "batch_label": tag,
            "labels": [int(v) for v in labels],
            "data": images.transpose(0, 3, 1, 2).reshape(len(images), 3072),
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
        }

    train_labels = _balanced_labels(train_per_class, 10, rng)
    train_images = rng.integers(0, 256, size=(len(train_labels), 32, 32, 3), dtype=np.uint8)  # HWC
    for b, chunk in enumerate(np.array_split(np.arange(len(train_labels)), 5), start=1):
        dump(f"data_batch_{b}", batch(train_images[chunk], train_labels[chunk], f"training batch {b} of 5"))
    test_labels = _balanced_labels(test_per_class, 10, rng)
    test_images = rng.integers(0, 256, size=(len(test_labels), 32, 32, 3), dtype=np.uint8)
    dump("test_batch", batch(test_images, test_labels, "testing batch 1 of 1"))
    dump("batches.meta", {"num_cases_per_batch": 10000, "label_names": CIFAR_CLASSES, "num_vis": 3072})
    return Written(train_images, train_labels, test_images, test_labels)


# (file name pattern, PIL mode, format): the variety of files a real folder dataset holds
IMAGE_KINDS = [
    ("{i}.jpg", "RGB", "JPEG"),
    ("{i}.png", "L", "PNG"),
    ("{i}.png", "RGBA", "PNG"),
    ("{i}.jpeg", "CMYK", "JPEG"),
    ("{i}.png", "P", "PNG"),
    ("{i}.JPG", "RGB", "JPEG"),
    ("{i}.bmp", "RGB", "BMP"),
    ("sub/{i}.webp", "RGB", "WEBP"),
]


def write_image(path: Path, mode: str, fmt: str, size: tuple[int, int] = (20, 14), seed: int = 0) -> None:
    """A random image of ``size`` (W, H) in ``mode`` saved as ``fmt``."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
    if mode == "P":
        img = rgb.quantize(colors=16)
    elif mode == "RGBA":
        img = rgb.convert("RGBA")
        img.putalpha(128)
    else:
        img = rgb.convert(mode)
    img.save(path, format=fmt)


def write_image_tree(root: Path, classes: tuple[str, ...] = ("cat", "dog", "fish"), per_class: int = 8):
    """``root/<class>/<image>`` with every kind of ``IMAGE_KINDS`` plus a non-image file.

    Returns ``(relative paths, labels)`` in the order a sorted scan finds them.
    """
    items = []
    for label, name in enumerate(classes):
        for i in range(per_class):
            pattern, mode, fmt = IMAGE_KINDS[i % len(IMAGE_KINDS)]
            rel = f"{name}/{pattern.format(i=f'{name}_{i:02d}')}"
            write_image(Path(root) / rel, mode, fmt, size=(16 + i, 12 + label), seed=100 * label + i)
            items.append((rel, label))
        (Path(root) / name / "notes.txt").write_text("not an image\n")
    items.sort(key=lambda item: (item[1], item[0]))
    return [p for p, _ in items], np.array([label for _, label in items], dtype=np.int64)


def write_list_file(path: Path, entries: list[tuple[str, int]]) -> None:
    """A Caffe-style list: ``relative/path label`` per line, with a comment and blank lines mixed in."""
    lines = ["# path label", ""] + [f"{p} {label}" for p, label in entries] + [""]
    Path(path).write_text("\n".join(lines))
