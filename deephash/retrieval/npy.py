"""The ``.npy`` files of F7 rows, read and written in place with positional I/O (``os.preadv``/``os.pwrite``).

``npy_layout`` reads a file's header, ``create_npy`` makes a zero-filled (sparse) file to be filled in place,
``NpyRowWriter`` writes rows of one, runs of consecutive rows with one call each. ``OpenFile`` is what every
such file object shares: its descriptor, closed by ``close``, on leaving a ``with`` block or when collected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from deephash.utils.errors import IndexFormatError

MAX_IO = 1 << 30  # bytes per system call (Linux caps one read or write just below 2 GiB)
_Open = TypeVar("_Open", bound="OpenFile")


def npy_layout(path: str | os.PathLike) -> tuple[int, tuple[int, ...], np.dtype]:
    """``(data offset, shape, dtype)`` of a C-ordered ``.npy`` file (format 1.0 or 2.0)."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            offset = f.tell()
    except ValueError as e:
        raise IndexFormatError(f"{path} is not a readable .npy file ({e})") from None
    if fortran or dtype.hasobject:
        raise IndexFormatError(f"{path} must hold a C-ordered numeric array")
    return offset, tuple(shape), dtype


def create_npy(path: str | os.PathLike, shape: tuple[int, ...], dtype: Any) -> int:
    """Create a zero-filled (sparse) C-ordered ``.npy`` file; returns the offset of its data."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        offset = f.tell()
        f.truncate(offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    return offset


def row_runs(rows: np.ndarray) -> tuple[list[int], list[int], list[int]]:
    """Strictly increasing rows -> (position in ``rows``, first row, length) of each run of consecutive rows."""
    if len(rows) == 0:
        return [], [], []
    starts = np.flatnonzero(np.diff(rows) != 1) + 1
    pos = np.concatenate([[0], starts])
    lengths = np.diff(np.concatenate([pos, [len(rows)]]))
    return pos.tolist(), rows[pos].tolist(), lengths.tolist()


class OpenFile:
    """A file object holding the descriptor ``_fd`` (None once closed, or before it was opened)."""

    _fd: int | None = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self: _Open) -> _Open:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


class NpyRowWriter(OpenFile):
    """Writes rows of an existing ``.npy`` file (e.g. from ``create_npy``) in place with ``os.pwrite``.

    Several processes may write the same file at once: each call touches only its own rows' bytes.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self._fd: int | None = None
        self.path = Path(path)
        self.offset, self.shape, self.dtype = npy_layout(self.path)
        self.row_shape = self.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDWR)

    def write_at(self, start: int, values: np.ndarray) -> None:
        """Rows ``start:start + m`` = values ``(m, *row_shape)``, in one write."""
        values = self._check(values)
        if start < 0 or start + len(values) > self.shape[0]:
            raise IndexError(
                f"rows {start}:{start + len(values)} are outside {self.path} ({self.shape[0]} rows)"
            )
        if values.size:
            self._pwrite(memoryview(values).cast("B"), start)

    def write_rows(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Rows ``rows`` (any order; a repeated row takes its last value, like ndarray assignment) = values."""
        rows, values = np.asarray(rows, np.int64).ravel(), self._check(values)
        if len(rows) != len(values):
            raise ValueError(f"{len(rows)} rows but {len(values)} values")
        if len(rows) and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"rows outside {self.path} ({self.shape[0]} rows)")
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        last = np.append(ordered[1:] != ordered[:-1], True) if len(rows) else np.zeros(0, bool)
        rows, values = ordered[last], np.ascontiguousarray(values[order[last]])
        if values.size == 0:
            return
        view = memoryview(values).cast("B")
        for pos, row, length in zip(*row_runs(rows)):
            self._pwrite(view[pos * self.row_bytes : (pos + length) * self.row_bytes], row)

    def _check(self, values: np.ndarray) -> np.ndarray:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        if values.shape[1:] != self.row_shape:
            raise ValueError(f"rows of {self.path} are {self.row_shape}, got values {values.shape}")
        return values

    def _pwrite(self, view: memoryview, row: int) -> None:
        if self._fd is None:
            raise ValueError(f"writer of {self.path} is closed")
        done, offset = 0, self.offset + row * self.row_bytes
        while done < len(view):
            done += os.pwrite(self._fd, view[done : done + MAX_IO], offset + done)
