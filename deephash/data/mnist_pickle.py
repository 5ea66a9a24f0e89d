"""Import the classic ``mnist.pkl.gz`` into torchvision's MNIST layout (``root/MNIST/raw`` IDX files).

The classic pickle (the one Theano's tutorials and Nielsen's book distribute) is a gzipped tuple of three
``(x, y)`` pairs, train 50,000 / valid 10,000 / test 10,000, with ``x (n, 784) float32`` in ``[0, 1)`` and
``y (n,) int64`` digits. Its pixels are the original bytes divided by 256, so ``round(x * 256)`` recovers
them exactly. train + valid become the 60,000 IDX training images, test the 10,000 ``t10k`` ones.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import importlib
import os
import pickle
import struct
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deephash.data.mnist import RAW_FILES
from deephash.utils.errors import DataError

CLASSIC_SIZES = (50_000, 10_000, 10_000)
PARTS = ("train", "valid", "test")
SIDE = 28
# MD5 of the official uncompressed IDX files (what gunzip makes of LeCun's .gz downloads)
OFFICIAL_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
NUM_CLASSES = 10


class _ArrayUnpickler(pickle.Unpickler):
    """Resolves only the globals numpy needs to rebuild arrays: unpickling anything else could run code."""

    _ALLOWED = {
        ("_codecs", "encode"),  # how Python 3 pickles bytes under protocol 2
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}, which is not a numpy array part")
        if module == "_codecs":
            return codecs.encode
        if module == "numpy":
            return getattr(np, name)
        # the classic file names numpy.core, which numpy 2 renamed numpy._core (and numpy 1 lacks _core)
        submodule = module.split(".")[-1]
        try:
            found = importlib.import_module(f"numpy._core.{submodule}")
        except ImportError:
            found = importlib.import_module(f"numpy.core.{submodule}")
        return getattr(found, name)


def read_mnist_pickle(
    path: str | os.PathLike, sizes: Sequence[int] = CLASSIC_SIZES
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((train images, train labels), (test images, test labels))``: images ``(n, 28, 28) uint8``, labels
    ``(n,) uint8``; train = train + valid. ``sizes`` are the expected rows of train, valid and test."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"MNIST pickle not found: {path} (expected the classic mnist.pkl.gz)")
    try:
        with gzip.open(path, "rb") as stream:
            data = _ArrayUnpickler(stream, encoding="latin1").load()
    except (
        OSError,
        EOFError,
        zlib.error,
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        AttributeError,
    ) as e:
        reason = " ".join(str(e).split()) or e.__class__.__name__
        raise DataError(f"cannot read {path} as a gzipped MNIST pickle: {reason}") from e
    if not (isinstance(data, (tuple, list)) and len(data) == 3):
        raise DataError(f"{path}: expected a tuple of 3 (images, labels) pairs (train, valid, test)")
    parts = [_check_part(path, part, pair, n) for part, pair, n in zip(PARTS, data, sizes)]
    train = (np.concatenate([parts[0][0], parts[1][0]]), np.concatenate([parts[0][1], parts[1][1]]))
    for name, (_, labels) in (("train+valid", train), ("test", parts[2])):
        missing = sorted(set(range(NUM_CLASSES)) - set(np.unique(labels).tolist()))
        if missing:
            raise DataError(f"{path}: the {name} images have no label {missing}; expected all digits 0-9")
    return train, parts[2]


def _check_part(path: Path, part: str, pair: object, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One ``(x, y)`` pair checked and converted to ``(n, 28, 28) uint8`` pixels and ``(n,) uint8`` labels."""
    where = f"{path}: {part}"
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise DataError(f"{where} is not an (images, labels) pair")
    x, y = pair
    if not isinstance(x, np.ndarray) or x.shape != (n, SIDE * SIDE) or x.dtype.kind != "f":
        raise DataError(f"{where} images must be a float array of shape ({n}, {SIDE * SIDE}), got {_desc(x)}")
    if not isinstance(y, np.ndarray) or y.shape != (n,) or y.dtype.kind not in "iu":
        raise DataError(f"{where} labels must be an integer array of shape ({n},), got {_desc(y)}")
    bad = ~((x >= 0) & (x < 1))  # NaN fails both comparisons
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        value = x[row][bad[row]][0]
        raise DataError(f"{where} image {row} has pixel value {value}; expected values in [0, 1)")
    if y.min() < 0 or y.max() >= NUM_CLASSES:
        row = int(np.flatnonzero((y < 0) | (y >= NUM_CLASSES))[0])
        raise DataError(f"{where} label {row} is {int(y[row])}; expected digits 0-{NUM_CLASSES - 1}")
    pixels = np.minimum(np.rint(x * 256.0), 255).astype(np.uint8).reshape(n, SIDE, SIDE)
    return pixels, y.astype(np.uint8)


def _desc(a: object) -> str:
    return f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a ``uint8`` array: magic ``0x0000 08 <ndim>``, big-endian int32 dims, then data."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def import_mnist_pickle(
    path: str | os.PathLike, root: str | os.PathLike, sizes: Sequence[int] = CLASSIC_SIZES
) -> dict[str, int]:
    """Write ``root/MNIST/raw`` from the pickle at ``path``; returns the image count per IDX split.

    Everything is checked before anything is written; the four files are written to temporary names first
    and renamed together, so a failure leaves any existing files as they were.
    """
    (train_x, train_y), (test_x, test_y) = read_mnist_pickle(path, sizes)
    raw = Path(root) / "MNIST" / "raw"
    try:
        raw.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create {raw}: {e.strerror or e}") from e
    contents = dict(zip(RAW_FILES, (train_x, train_y, test_x, test_y)))
    temps: dict[str, str] = {}
    try:
        for name, array in contents.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=raw)
            temps[name] = tmp
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; a dataset is for every user
            with os.fdopen(fd, "wb") as f:
                f.write(idx_bytes(array))
                f.flush()
                os.fsync(f.fileno())
        for name, tmp in temps.items():
            os.replace(tmp, raw / name)
    except OSError as e:
        raise DataError(f"cannot write MNIST files into {raw}: {e.strerror or e}") from e
    finally:
        for tmp in temps.values():
            if os.path.exists(tmp):
                os.unlink(tmp)
    return {"train": len(train_y), "test": len(test_y)}


def matches_official(raw: str | os.PathLike) -> bool:
    """Whether the four IDX files in ``raw`` are byte for byte the official MNIST release."""
    for name, expected in OFFICIAL_MD5.items():
        digest = hashlib.md5(usedforsecurity=False)
        with open(Path(raw) / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != expected:
            return False
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
