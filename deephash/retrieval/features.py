"""F7 rows on disk, read with positional reads of a ``.npy`` file, memory-mapped only for scattered gathers.

A memory map's pages count toward the resident set, and a fault maps a whole page-cache folio (on current Linux
up to megabytes) around the row asked for, so a scattered gather from a memmap can map far more than the rows
it reads. ``F7File`` instead reads the requested rows with ``os.preadv`` straight into a fresh array (rows are
written with ``deephash.retrieval.npy.NpyRowWriter``), so the resident memory is the rows in hand; the file's
pages stay in the kernel's shared, reclaimable page cache. Runs of consecutive rows are read with one call
each. A gather of many scattered rows (hierarchical search's re-rank) would make one call per row, so it goes
through ``F7File.gather`` instead, unmapping the pages of each small run of rows it has copied
(``F7File.release``).

An index's F7 file comes with a CRC-32 per block of ``block_rows`` rows (``deephash.retrieval.checksums``); an
``F7File`` given them checks each block, and that it holds no NaN or inf, the first time one of its rows is
read. A file without checksums (an encoder's staging) checks the rows it returns for non-finite values instead.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deephash.retrieval.checksums import block_checksums, crc32, non_finite_rows
from deephash.retrieval.npy import MAX_IO, OpenFile, npy_layout, row_runs
from deephash.retrieval.pages import read_only_tensor, widen
from deephash.utils.errors import IndexFormatError

_BLOCK_BYTES = 16 << 20  # staging buffer of a converting read
_CHECK_READ_BYTES = 2 << 20  # blocks read at a time to be checked (beside a converting read's buffer)
# bytes of the file a gather from the memory map, or a check of mapped blocks, handles at a time: they (and
# a gather's float32 widening) stay in cache, and their pages are unmapped once done
_MAPPED_STEP_BYTES = 512 << 10
# a read of this many runs of consecutive rows or more gathers them from the memory map (one call each else)
_GATHER_MIN_RUNS = 16
# A page fault can map a whole page-cache folio (at most a PMD, 2 MiB on x86-64) around the row asked for, so
# unmapping the pages of a run of rows reaches that far past either end.
_FOLIO_SLACK = 2 << 20


class F7File(OpenFile):
    """Read-only ``(n, d)`` array in a ``.npy`` file, read on demand with positional reads (no memory map).

    Indexing works like an ndarray's along the rows: ``f[i]`` -> (d,), ``f[a:b]`` / ``f[a:b:s]`` -> (m, d),
    ``f[idx]`` with an integer array of any shape, order, duplicates or negative values -> idx.shape + (d,),
    ``f[mask]`` with an (n,) bool mask, and ``f[rows, cols]``. Results are fresh arrays of the file's
    dtype; ``read(key, np.float32)`` converts through a small buffer instead of a full-size copy.

    checksums: ``(ceil(n / block_rows),) uint32`` CRC-32 of each block of ``block_rows`` rows (see
    ``block_checksums``); each block is checked once, when a read first touches it (or by ``verify_all``).
    """

    def __init__(
        self, path: str | os.PathLike, checksums: np.ndarray | None = None, block_rows: int = 0
    ) -> None:
        self._fd: int | None = None
        self._mmap: mmap.mmap | None = None
        self._map: np.ndarray | None = None
        self._source: torch.Tensor | None = None
        self.path = Path(path)
        self.offset, shape, self.dtype = npy_layout(self.path)
        if len(shape) != 2:
            raise IndexFormatError(f"{self.path} holds a {len(shape)}-d array, expected (n, d) rows")
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.row_bytes = self.shape[1] * self.dtype.itemsize
        size = self.path.stat().st_size
        if size < self.offset + self.shape[0] * self.row_bytes:
            raise IndexFormatError(
                f"{self.path} is truncated: {self.shape[0]} x {self.shape[1]} {self.dtype} needs "
                f"{self.offset + self.shape[0] * self.row_bytes} bytes, the file has {size}"
            )
        self.checksums, self.block_rows = None, 0
        if checksums is not None:
            self.block_rows = int(block_rows)
            blocks = -(-self.shape[0] // self.block_rows) if self.block_rows > 0 else -1
            if np.shape(checksums) != (blocks,):
                raise IndexFormatError(
                    f"{self.path} has {self.shape[0]} rows in blocks of {block_rows}, so {blocks} checksums, "
                    f"got {np.shape(checksums)}"
                )
            self.checksums = np.asarray(checksums, np.uint32)
            self._verified = np.zeros(blocks, bool)
        self._fd = os.open(self.path, os.O_RDONLY)

    ndim = 2

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"F7File({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.read(key)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if copy is False:
            raise ValueError("an F7File is read from disk: it cannot be viewed without a copy")
        return self.read(slice(None), dtype)

    def read(self, key: Any, dtype: Any = None, *, out: np.ndarray | None = None) -> np.ndarray:
        """``self[key]`` as ``dtype`` (default: the file's), written into ``out`` when given (an array of that
        shape and dtype, returned): a caller reading block after block then reuses one buffer instead of
        faulting in fresh pages for each."""
        if out is None:
            return self._read(key, dtype, None)
        if dtype is not None and np.dtype(dtype) != out.dtype:
            raise ValueError(f"out has dtype {out.dtype}, but {np.dtype(dtype)} was asked for")
        rows = self._read(key, out.dtype, out)
        if rows is not out:
            if rows.shape != out.shape:
                raise ValueError(f"out has shape {out.shape}, but the rows read have shape {rows.shape}")
            out[...] = rows
        return out

    def _read(self, key: Any, dtype: Any, out: np.ndarray | None) -> np.ndarray:
        """``read``; ``out`` is filled directly where the rows come in file order, else ignored."""
        if isinstance(key, tuple):
            if len(key) > 2:
                raise IndexError(f"too many indices for a 2-d F7File: {len(key)}")
            rows = self.read(key[0], dtype) if key else self.read(slice(None), dtype)
            return rows[..., key[1]] if len(key) == 2 else rows
        out_dtype = self.dtype if dtype is None else np.dtype(dtype)
        n = self.shape[0]
        if key is Ellipsis:
            key = slice(None)
        if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
            row = int(key) + n if key < 0 else int(key)
            if not 0 <= row < n:
                raise IndexError(f"index {int(key)} is out of bounds for axis 0 with size {n}")
            return self._read_sorted(np.array([row], np.int64), out_dtype)[0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return self.read(np.arange(start, stop, step, dtype=np.int64), dtype)
            return self._read_sorted(np.arange(start, max(start, stop), dtype=np.int64), out_dtype, out)
        index = np.asarray(key)
        if index.dtype == np.bool_:
            if index.shape != (n,):
                raise IndexError(f"a boolean mask must have shape ({n},), got {index.shape}")
            return self._read_sorted(np.flatnonzero(index), out_dtype, out)
        if index.size == 0:
            index = index.astype(np.int64)
        if not np.issubdtype(index.dtype, np.integer):
            raise IndexError(
                f"F7File rows are selected by integers, slices or a bool mask, got {index.dtype}"
            )
        flat = index.astype(np.int64).ravel()
        bad = (flat < -n) | (flat >= n)
        if bad.any():
            raise IndexError(f"index {flat[bad][0]} is out of bounds for axis 0 with size {n}")
        flat = np.where(flat < 0, flat + n, flat)
        if np.all(np.diff(flat) > 0):
            if index.ndim == 1:
                return self._read_sorted(flat, out_dtype, out)
            return self._read_sorted(flat, out_dtype).reshape(*index.shape, self.shape[1])
        uniq, inverse = np.unique(flat, return_inverse=True)
        return self._read_sorted(uniq, out_dtype)[inverse.ravel()].reshape(*index.shape, self.shape[1])

    def verify_all(self) -> None:
        """Check every block against its checksum (and for NaN or inf); raises ``IndexFormatError``."""
        if self.checksums is None:
            raise IndexFormatError(f"{self.path} has no checksums to verify")
        self._verify(np.flatnonzero(~self._verified))

    def _verify(self, blocks: np.ndarray) -> None:
        """Check the unchecked ``blocks`` (increasing): their rows are gathered into one buffer per
        ``_CHECK_READ_BYTES`` (one read per run of consecutive rows), then checksummed and tested for NaN/inf."""
        blocks = blocks[~self._verified[blocks]]
        br, n = self.block_rows, self.shape[0]
        per_read = max(1, _CHECK_READ_BYTES // (br * self.row_bytes))
        for c in range(0, len(blocks), per_read):
            chunk = blocks[c : c + per_read]
            rows = (chunk[:, None] * br + np.arange(br)).ravel()
            rows = rows[rows < n]  # only the file's last block is short, and it comes last
            data = np.empty((len(rows), self.shape[1]), self.dtype)
            view = memoryview(data).cast("B")
            for pos, row, length in zip(*row_runs(rows)):
                self._pread_into(view[pos * self.row_bytes : (pos + length) * self.row_bytes], row)
            bad = np.flatnonzero(block_checksums(data, br) != self.checksums[chunk])
            if bad.size:
                b = int(chunk[bad[0]])
                raise self._checksum_error(b)
            self._check_finite(data, rows)
            self._verified[chunk] = True

    def _read_range_checked(self, start: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Rows ``start:stop`` into ``out``, read in whole blocks (``_CHECK_READ_BYTES`` at a time); the blocks not
        yet checked are checked from the same buffer, so a scan reads the file once."""
        br, n = self.block_rows, self.shape[0]
        per_read = max(1, _CHECK_READ_BYTES // (br * self.row_bytes))
        for b0 in range(start // br, -(-stop // br), per_read):
            b1 = min(b0 + per_read, -(-stop // br))
            r0, r1 = b0 * br, min(b1 * br, n)
            data = np.empty((r1 - r0, self.shape[1]), self.dtype)
            self._pread_into(memoryview(data).cast("B"), r0)
            todo = np.flatnonzero(~self._verified[b0:b1])
            if todo.size:
                bad = np.flatnonzero(block_checksums(data, br) != self.checksums[b0:b1])
                if bad.size:
                    b = b0 + int(bad[0])
                    raise self._checksum_error(b)
                self._check_finite(data, np.arange(r0, r1))
                self._verified[b0:b1] = True
            lo, hi = max(start, r0), min(stop, r1)
            widen(data[lo - r0 : hi - r0], out[lo - start : hi - start])
        return out

    def _checksum_error(self, block: int) -> IndexFormatError:
        br, n = self.block_rows, self.shape[0]
        return IndexFormatError(
            f"{self.path} rows {block * br}:{min((block + 1) * br, n)} do not match their checksum: "
            "the features were modified or corrupted; rebuild the index"
        )

    def _check_finite(self, data: np.ndarray, rows: np.ndarray) -> None:
        """data: (m, d) the file's ``rows`` (m,)."""
        bad = non_finite_rows(data)
        if bad.size:
            raise self._non_finite_error(int(rows[bad[0]]))

    def _non_finite_error(self, row: int) -> IndexFormatError:
        return IndexFormatError(
            f"{self.path} row {row} holds NaN or inf: the features are corrupt; rebuild the index"
        )

    def _read_sorted(self, rows: np.ndarray, dtype: np.dtype, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``rows`` (strictly increasing, in range) -> (m, d) ``dtype``, one read per run of rows; rows in
        ``_GATHER_MIN_RUNS`` runs or more of a float16 file are gathered from the memory map instead (``gather``,
        with the same checks: no slower than a read per run for sparse rows, faster for dense ones).

        With checksums, each block the rows lie in is checked the first time it is touched: from the rows
        just read when they hold the whole block (always, for one-row blocks), else by reading the block
        first. Without, the rows read are checked for NaN and inf. ``out``: where to put them, if given
        ((len(rows), d) of ``dtype``)."""
        shape = (len(rows), self.shape[1])
        if out is None or out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous:
            out = np.empty(shape, dtype)  # ``read`` copies it into a caller's ``out`` of another layout
        if out.size == 0:
            return out
        direct = dtype == self.dtype
        step = len(rows) if direct else max(1, _BLOCK_BYTES // self.row_bytes)
        inline = None
        if self.checksums is not None and rows[-1] - rows[0] + 1 == len(rows):
            # a range (a scan): checked as it is read, read once
            return self._read_range_checked(int(rows[0]), int(rows[-1]) + 1, out)
        if (
            self.dtype == np.dtype("=f2")
            and dtype in (np.dtype("=f2"), np.dtype("=f4"))
            and np.count_nonzero(np.diff(rows) != 1) + 1 >= _GATHER_MIN_RUNS
        ):
            return self._gather_into(rows, out)
        if self.checksums is not None:
            inline = self._plan_checks(rows, step, self._verify)
        buffer = None if direct else np.empty((min(step, len(rows)), self.shape[1]), self.dtype)
        for c in range(0, len(rows), step):
            block = rows[c : c + step]
            dest = out[c : c + len(block)] if direct else buffer[: len(block)]
            view = memoryview(dest).cast("B")
            for pos, row, length in zip(*row_runs(block)):
                self._pread_into(view[pos * self.row_bytes : (pos + length) * self.row_bytes], row)
            if inline is None:
                self._check_finite(dest, block)
            else:
                self._check_read_blocks(dest, block, c, inline)
            if not direct:
                widen(dest, out[c : c + len(block)])
        return out

    def _gather_into(self, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Scattered ``rows`` (strictly increasing) of a float16 file into ``out`` ((m, d) C-contiguous float16
        or float32), by ``gather``, ``_MAPPED_STEP_BYTES`` of the file at a time (the copy checked in cache)."""
        step = max(1, _MAPPED_STEP_BYTES // self.row_bytes)
        target = torch.from_numpy(out)
        half = (
            None
            if out.dtype == self.dtype
            else torch.empty((min(step, len(rows)), self.shape[1]), dtype=torch.float16)
        )
        for s in range(0, len(rows), step):
            part = rows[s : s + step]
            self.gather(part, target[s : s + len(part)], None if half is None else half[: len(part)])
        return out

    def _plan_checks(
        self, rows: np.ndarray, step: int, verify: Callable[[np.ndarray], None]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The unchecked blocks ``rows`` touches: those it holds whole within one ``step`` of the read are
        returned as (blocks, position of their first row) to check from the rows read; the others are checked
        now by ``verify`` (``_verify`` reads them from the file, ``_verify_mapped`` from the memory map)."""
        br = self.block_rows
        if br == 1:  # a block per row (rows of 8 KB or more): each is held whole
            starts = np.flatnonzero(~self._verified[rows])
            return rows[starts], starts
        blocks = rows // br
        starts = np.flatnonzero(np.diff(blocks, prepend=-1))
        touched = blocks[starts]
        ends = np.append(starts[1:], len(rows))
        whole = (ends - starts) == np.minimum(br, self.shape[0] - touched * br)
        inline = whole & (starts // step == (ends - 1) // step)
        todo = ~self._verified[touched]
        verify(touched[todo & ~inline])
        return touched[todo & inline], starts[todo & inline]

    def _check_read_blocks(
        self,
        data: np.ndarray,
        rows: np.ndarray,
        first: int,
        inline: tuple[np.ndarray, np.ndarray],
        tensor: torch.Tensor | None = None,
    ) -> None:
        """Check the planned blocks whose rows are ``data`` (the file's ``rows``, read positions ``first``...):
        their bytes against the CRC-32, then the rows for NaN/inf (by the float32 sums of ``tensor``, the same
        rows or their float32 widening, when given: see ``gather``)."""
        blocks, starts = inline
        lo, hi = np.searchsorted(starts, [first, first + len(rows)])
        if lo == hi:
            return
        with memoryview(data).cast("B") as view:
            self._check_crcs(view, blocks[lo:hi], (starts[lo:hi] - first) * self.row_bytes)
        if tensor is None:
            self._check_finite(data, rows)
        else:
            self._check_sums(tensor, rows)
        self._verified[blocks[lo:hi]] = True

    def _check_crcs(self, view: memoryview, blocks: np.ndarray, starts: np.ndarray) -> None:
        """Compare each of ``blocks`` (its bytes at offsets ``starts`` of ``view``) with its CRC-32."""
        ends = starts + np.minimum(self.block_rows, self.shape[0] - blocks * self.block_rows) * self.row_bytes
        got = [crc32(view[a:b]) for a, b in zip(starts.tolist(), ends.tolist())]
        bad = np.flatnonzero(np.array(got, np.uint32) != self.checksums[blocks])
        if bad.size:
            raise self._checksum_error(int(blocks[bad[0]]))

    def _pread_into(self, view: memoryview, row: int) -> None:
        if self._fd is None:
            raise ValueError(f"{self!r} is closed")
        done, offset = 0, self.offset + row * self.row_bytes
        while done < len(view):
            got = os.preadv(self._fd, [view[done : done + MAX_IO]], offset + done)
            if got == 0:
                raise IndexFormatError(f"{self.path} ended early (truncated while open?)")
            done += got

    def gather(self, rows: np.ndarray, out: torch.Tensor, half: torch.Tensor | None = None) -> torch.Tensor:
        """The rows ``rows`` (distinct, increasing, in range) of a float16 file into ``out`` ((m, d) float32
        tensor, returned; or float16 and contiguous, filled directly), from a memory map of the open file: a
        gather of scattered rows without a system call per row. torch's ``index_select`` copies them into
        ``half`` ((m, d) contiguous float16, allocated when None), which is widened into ``out``; the pages
        touched are unmapped (``release``) so the resident set stays small. ``read`` gathers scattered rows
        this way too, ``_MAPPED_STEP_BYTES`` at a time.

        With checksums, each block is checked the first time a gather touches it: when ``rows`` hold it whole,
        on the copy itself (its float16 bytes against the CRC-32, and a finite float32 sum for each of its
        rows), so what is handed out is what was checked; else from the map first, as ``read`` does. Without
        checksums, every call tests the sums of all the rows. A sum of at most d float16 values (each at most
        65,504 in magnitude) cannot overflow float32, so it is finite exactly when every value is: one pass over
        rows still in cache, where testing the float16 values themselves costs several. The file's size is
        checked on every call: a file truncated while mapped would fault (SIGBUS) instead of failing a read.
        (An index is replaced by renaming a new directory into place, which leaves an open file's data intact.)
        """
        m, d = len(rows), self.shape[1]
        if tuple(out.shape) != (m, d) or out.dtype not in (torch.float32, torch.float16):
            raise ValueError(
                f"out must be a ({m}, {d}) float32 or float16 tensor, got {tuple(out.shape)} {out.dtype}"
            )
        if out.dtype == torch.float16:
            half = out  # checked to be contiguous below
        elif half is None:
            half = torch.empty((m, d), dtype=torch.float16)
        if tuple(half.shape) != (m, d) or half.dtype != torch.float16 or not half.is_contiguous():
            raise ValueError(f"half must be a contiguous ({m}, {d}) float16 tensor, got {tuple(half.shape)}")
        if m and (rows[0] < 0 or rows[-1] >= self.shape[0] or not (rows[1:] > rows[:-1]).all()):
            raise ValueError(f"gather takes strictly increasing rows in 0..{self.shape[0] - 1}")
        if self._fd is None:
            raise ValueError(f"{self!r} is closed")
        if self.dtype != np.dtype("=f2"):
            raise ValueError(f"{self!r}: gather reads float16 rows, the file holds {self.dtype}")
        if os.fstat(self._fd).st_size < self.offset + self.nbytes:
            raise IndexFormatError(f"{self.path} ended early (truncated while open?)")
        if self._source is None:
            size = self.offset + self.nbytes
            self._mmap = mmap.mmap(self._fd, size, access=mmap.ACCESS_READ)  # size > 0: the header
            self._map = np.frombuffer(self._mmap, self.dtype, self.size, self.offset).reshape(self.shape)
            self._source = read_only_tensor(self._map)
        if m == 0:
            return out
        torch.index_select(self._source, 0, torch.from_numpy(rows), out=half)
        self.release(int(rows[0]), int(rows[-1]) + 1)
        if out is not half:
            out.copy_(half)
        if self.checksums is None:
            self._check_sums(out, rows)
        else:
            plan = self._plan_checks(rows, m, self._verify_mapped)
            if len(plan[0]):  # else every block was checked before (or just now, from the map)
                self._check_read_blocks(half.numpy(), rows, 0, plan, tensor=out)
        return out

    def _check_sums(self, data: torch.Tensor, rows: np.ndarray) -> None:
        """data: (m, d) the file's float16 ``rows`` (m,), or their float32 widening; raises on the first row
        whose float32 sum is not finite (see ``gather``)."""
        bad = np.flatnonzero(~np.isfinite(data.sum(dim=1, dtype=torch.float32).numpy()))
        if bad.size:
            raise self._non_finite_error(int(rows[bad[0]]))

    def _verify_mapped(self, blocks: np.ndarray) -> None:
        """Check the ``blocks`` (unchecked, increasing) from the memory map, ``_MAPPED_STEP_BYTES`` of them at a
        time, whose pages are unmapped once checked (scattered rows may each fault in a folio)."""
        br, n, rb = self.block_rows, self.shape[0], self.row_bytes
        per_check = max(1, _MAPPED_STEP_BYTES // (br * rb))
        for c in range(0, len(blocks), per_check):
            chunk = blocks[c : c + per_check]
            with memoryview(self._mmap) as view:
                self._check_crcs(view, chunk, self.offset + chunk * (br * rb))
            held = (chunk[:, None] * br + np.arange(br)).ravel()
            held = held[held < n]
            self._check_finite(self._map[held], held)
            self._verified[chunk] = True
            self.release(int(held[0]), int(held[-1]) + 1)

    def release(self, start: int = 0, stop: int | None = None) -> None:
        """Unmap the memory map's resident pages of rows ``start:stop`` (all rows by default), and of the
        page-cache folios they lie in; the data stays in the page cache."""
        if self._mmap is None:
            return
        stop = self.shape[0] if stop is None else stop
        lo = max(0, self.offset + start * self.row_bytes - _FOLIO_SLACK) // mmap.PAGESIZE * mmap.PAGESIZE
        hi = min(len(self._mmap), self.offset + stop * self.row_bytes + _FOLIO_SLACK)
        if hi > lo:
            self._mmap.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def close(self) -> None:
        self._map = self._source = None
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass  # a view of the map is still alive: the mapping goes when it does
            self._mmap = None
        super().close()

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "checksums": self.checksums, "block_rows": self.block_rows}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state.get("checksums"), state.get("block_rows", 0))
