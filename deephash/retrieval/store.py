"""Persistent index directory: packed codes, float16 F7 features, labels and ids, with a manifest.

Layout of ``<path>/``::

    manifest.json   format_version, bits, code_bytes, feature_dim, count, dtypes, files (sizes, shapes and
                    sha256 of every file), the checkpoint the codes come from (or checkpoint_free), meta
    codes.npy       (n, ceil(bits / 8)) uint8 packed codes
    f7.npy          (n, d) float16 F7 features (read on demand through ``F7File`` on load)
    f7.crc32.npy    (ceil(n / block_rows),) uint32 CRC-32 of each block of ``block_rows`` F7 rows
    labels.npy      (n,) int64 class labels
    ids.txt         n item ids, one per line

Every file is checked: the small ones against their sha256 on load, f7.npy's header against its sha256 and
each block of its rows against its CRC-32 when a read first touches it (``verify_index`` checks them all).
A checksum missing from the manifest is an error, never a skipped check; an index whose codes come from no
checkpoint (a baseline's) says so with ``"checkpoint_free": true``.

Writes: one writer at a time holds ``.<name>.lock`` beside the index (a second fails with one line). A save
writes everything into ``.<name>.tmp-XXXX`` (manifest last), then exchanges it with ``path`` in one atomic
``renameat2(RENAME_EXCHANGE)`` (where the filesystem lacks it: the old index is renamed to ``.<name>.old-XXXX``
first, and an open that finds no index there puts it back). An interrupted save therefore leaves the old
index or the new one at ``path``, never a half-written one; the next writer removes the leftovers.

F7 never goes through a memory map, whose pages would count toward the resident set (see
``deephash.retrieval.features``): rows are written with positional writes, in blocks of about
``_F7_BLOCK_BYTES``, and a loaded index reads only the rows a search asks for. Building or searching a
million 4096-d items thus takes memory for the codes, labels and ids, not for the 8 GB of features.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from deephash.retrieval.codes import check_packed, code_bytes
from deephash.retrieval.features import (
    F7File,
    NpyRowWriter,
    block_checksums,
    create_npy,
    non_finite_rows,
    npy_layout,
    release_pages,
)
from deephash.retrieval.search import HammingIndex
from deephash.utils.errors import ConfigError, DeephashError, IndexFormatError
from deephash.utils.io import atomic_write_json, try_lock

# plain logging, not the rank-zero logger: only the rank that writes or opens an index gets to these
# messages, and the store works without Lightning having set the process's rank
log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: F7 block checksums, every file's sha256 required, checkpoint_free
MANIFEST = "manifest.json"
CODES, F7, F7_SUMS, LABELS, IDS = "codes.npy", "f7.npy", "f7.crc32.npy", "labels.npy", "ids.txt"
DTYPES = {"codes": "uint8", "f7": "float16", "labels": "int64"}
_F7_BLOCK_BYTES = 32 << 20  # float32 bytes of F7 converted and checked at a time
# Bytes of F7 under one checksum: a read's first touch of a block reads and checks all of it, so small
# blocks keep a search's scattered row reads cheap (8 KiB: one 4096-d float16 row; 4 MB of checksums for a
# million of them). A read checks the blocks it holds whole from the rows it read (see ``F7File``): on
# ``deephash-bench memory`` (100k x 4096, 100 hierarchical queries in a fresh process) search took about
# the same time as without checks (median 5.9 s both, best 5.25 s against 4.97 s).
_CHECK_BLOCK_BYTES = 8 << 10
# The keys of each file's manifest entry: all required, no others (a misspelt key is an error).
_FILE_KEYS = {
    CODES: {"bytes", "shape", "sha256"},
    LABELS: {"bytes", "shape", "sha256"},
    IDS: {"bytes", "sha256"},
    F7_SUMS: {"bytes", "shape", "sha256"},
    F7: {"bytes", "shape", "header_sha256", "block_rows"},
}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``block``-byte pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(kw_only=True)
class EncodedItems:
    """Encoded items, one row each: the record every stage passes on (encoding, index, search, evaluation).

    codes: (n, ceil(bits / 8)) uint8 packed, or None for a baseline's inputs before hashing;
    f7: (n, d) float16/float32 ndarray, or an ``F7File`` reading rows from disk on demand, or None where
    only codes are needed; labels: (n,) int64; ids: n item ids (empty where not kept);
    pool_index: (n,) int64 positions in the datamodule's pool, or None where unknown.
    """

    codes: np.ndarray | None
    f7: np.ndarray | F7File | None
    labels: np.ndarray
    ids: list[str] = field(default_factory=list)
    pool_index: np.ndarray | None = None

    @property
    def count(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray | slice, *, f7: bool = True) -> EncodedItems:
        """The items at ``rows`` (F7 read into memory, or left out with ``f7=False``)."""
        picked = np.arange(self.count)[rows] if isinstance(rows, slice) else np.asarray(rows)
        return EncodedItems(
            codes=None if self.codes is None else self.codes[rows],
            f7=self.f7[rows] if f7 and self.f7 is not None else None,
            labels=self.labels[rows],
            ids=[self.ids[i] for i in picked] if self.ids else [],
            pool_index=None if self.pool_index is None else self.pool_index[rows],
        )


@dataclass(kw_only=True)
class IndexStore(EncodedItems):
    """A loaded index: its encoded items (f7 an ``F7File`` by default, an ndarray with
    ``f7_in_memory=True``) with the directory, the code length and the parsed manifest.json."""

    codes: np.ndarray
    f7: np.ndarray | F7File
    path: Path
    bits: int
    manifest: dict[str, Any]
    _hamming: HammingIndex | None = field(default=None, repr=False)

    @property
    def feature_dim(self) -> int:
        return int(self.f7.shape[1])

    @property
    def hamming_index(self) -> HammingIndex:
        """The FAISS Hamming index over ``codes``, built on first use."""
        if self._hamming is None:
            self._hamming = HammingIndex(self.codes, self.bits)
        return self._hamming


def f7_block_rows(feature_dim: int) -> int:
    """Rows of ``feature_dim``-d float16 F7 under one checksum."""
    return max(1, _CHECK_BLOCK_BYTES // (2 * feature_dim))


class IndexWriter:
    """Streams an index of ``n`` items to disk without holding the features in RAM.

    Rows may be written in any order and in blocks of any size; ``commit()`` checks every row was
    written, writes the F7 checksums and the manifest and moves the directory into place. The writer holds
    the index's lock (``index_lock``) from creation to commit or abort. Used as a context manager, an
    exception (or leaving without ``commit()``) removes the temporary directory. A failed write (a full
    disk, a permission) is a one-line ``IndexWriteError``, with nothing left behind.
    """

    def __init__(
        self, path: str | os.PathLike, n: int, bits: int, feature_dim: int, meta: dict[str, Any] | None = None
    ) -> None:
        if n < 0 or feature_dim <= 0:
            raise ConfigError(f"an index needs n >= 0 items and feature_dim > 0, got n={n}, d={feature_dim}")
        self.path = Path(path)
        self.n, self.bits, self.feature_dim = int(n), int(bits), int(feature_dim)
        self.code_bytes = code_bytes(self.bits)
        self.meta = dict(meta or {})
        self._done = True  # until the lock and the temporary directory are ours
        self._checkpoint_sha = _checkpoint_sha256(self.meta)
        self.block_rows = f7_block_rows(self.feature_dim)
        blocks = -(-self.n // self.block_rows)
        self._sums = np.zeros(blocks, np.uint32)
        self._summed = np.zeros(blocks, bool)
        self._files: dict[str, NpyRowWriter] = {}
        with write_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            acquire_index_lock(self.path)
            try:
                check_index_target(self.path)
                self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
            except BaseException:
                release_index_lock(self.path)
                raise
            self._done = False
            try:
                self.tmp.chmod(0o755)  # mkdtemp makes it private; the published index should not be
                for name, shape, dtype in (
                    (CODES, (self.n, self.code_bytes), np.uint8),
                    (F7, (self.n, self.feature_dim), np.float16),
                    (LABELS, (self.n,), np.int64),
                ):
                    create_npy(self.tmp / name, shape, dtype)
                    self._files[name] = NpyRowWriter(self.tmp / name)
            except BaseException:
                self.abort()
                raise
        self._ids: list[str | None] = [None] * self.n
        self._written = np.zeros(self.n, dtype=bool)

    def write(
        self, start: int, codes_packed: np.ndarray, f7: np.ndarray, labels: np.ndarray, ids: Sequence[str]
    ) -> None:
        """Write rows ``start:start + m``. codes_packed: (m, ceil(bits / 8)) uint8; f7: (m, d); labels: (m,).

        F7 is converted to float16 and checked in blocks, so a large (or memory-mapped) ``f7`` is never
        copied whole; a memmap's pages are released after each block.
        """
        if self._done:
            raise ConfigError(f"index {self.path} was already committed or aborted")
        codes_packed = check_packed(codes_packed, self.bits)
        m = len(codes_packed)
        labels = np.asarray(labels)
        if not isinstance(f7, np.ndarray):
            f7 = np.asarray(f7)
        if f7.shape != (m, self.feature_dim) or labels.shape != (m,) or len(ids) != m:
            raise ConfigError(
                f"a block of {m} codes needs f7 ({m}, {self.feature_dim}), labels ({m},) and {m} ids, "
                f"got {f7.shape}, {labels.shape} and {len(ids)}"
            )
        if start < 0 or start + m > self.n:
            raise ConfigError(f"rows {start}:{start + m} are outside the index of {self.n} items")
        if any("\n" in str(i) for i in ids):
            raise ConfigError("item ids must not contain newlines (ids.txt holds one id per line)")
        step = max(1, _F7_BLOCK_BYTES // (4 * self.feature_dim))
        with write_errors(self.path):
            for s in range(0, m, step):
                with np.errstate(over="ignore"):  # reported below as a one-line error
                    f7_half = f7[s : s + step].astype(np.float16)
                release_pages(f7)
                if non_finite_rows(f7_half).size:
                    raise ConfigError(
                        f"F7 rows {start}:{start + m} hold NaN or values beyond float16's range (65504)"
                    )
                self._files[F7].write_at(start + s, f7_half)
                self._sum_blocks(start + s, f7_half)
            self._files[CODES].write_at(start, codes_packed)
            self._files[LABELS].write_at(start, labels)
        self._ids[start : start + m] = [str(i) for i in ids]
        self._written[start : start + m] = True

    def _sum_blocks(self, start: int, f7_half: np.ndarray) -> None:
        """Checksums of the blocks rows ``start:start + len(f7_half)`` cover whole; the blocks they cover in
        part are summed again from the file at commit."""
        br, stop = self.block_rows, start + len(f7_half)
        first, last = -(-start // br), (stop // br if stop < self.n else -(-stop // br))
        self._summed[start // br : -(-stop // br)] = False
        if last > first:
            self._sums[first:last] = block_checksums(f7_half[first * br - start : last * br - start], br)
            self._summed[first:last] = True

    def commit(self) -> Path:
        """Flush, write the checksums, the manifest last and atomically move the index to ``path``."""
        if self._done:
            raise ConfigError(f"index {self.path} was already committed or aborted")
        missing = np.flatnonzero(~self._written)
        if missing.size:
            raise ConfigError(
                f"{missing.size} of {self.n} index rows were never written (first: row {missing[0]})"
            )
        with write_errors(self.path):
            self._close_files()
            self._sum_remaining_blocks()
            np.save(self.tmp / F7_SUMS, self._sums)
            (self.tmp / IDS).write_bytes("".join(f"{i}\n" for i in self._ids).encode("utf-8"))
            for name in (CODES, F7, F7_SUMS, LABELS, IDS):
                _fsync(self.tmp / name)
            _write_manifest(self.tmp, self._manifest())
            _fsync(self.tmp)
            _swap_into_place(self.tmp, self.path)
        self._done = True
        release_index_lock(self.path)
        return self.path

    def _sum_remaining_blocks(self) -> None:
        todo = np.flatnonzero(~self._summed)
        if todo.size == 0:
            return
        with F7File(self.tmp / F7) as f7:
            for b in todo:
                rows = f7[b * self.block_rows : (b + 1) * self.block_rows]
                self._sums[b] = block_checksums(rows, self.block_rows)[0]

    def abort(self) -> None:
        """Discard everything written so far."""
        if self._done:
            return
        self._done = True
        self._close_files()
        shutil.rmtree(self.tmp, ignore_errors=True)
        release_index_lock(self.path)

    def _close_files(self) -> None:
        for writer in getattr(self, "_files", {}).values():
            writer.close()

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if not self._done:
            self.abort()

    def _manifest(self) -> dict[str, Any]:
        files: dict[str, dict[str, Any]] = {}
        blocks = len(self._sums)
        for name, shape in (
            (CODES, [self.n, self.code_bytes]),
            (LABELS, [self.n]),
            (IDS, None),
            (F7_SUMS, [blocks]),
        ):
            files[name] = {"bytes": (self.tmp / name).stat().st_size, "sha256": sha256_file(self.tmp / name)}
            if shape is not None:
                files[name]["shape"] = shape
        # a multi-GB feature file is checked block by block as it is read (f7.crc32.npy), not hashed whole
        files[F7] = {
            "bytes": (self.tmp / F7).stat().st_size,
            "shape": [self.n, self.feature_dim],
            "header_sha256": _header_sha256(self.tmp / F7),
            "block_rows": self.block_rows,
        }
        checkpoint = self.meta.get("checkpoint")
        return {
            "format_version": FORMAT_VERSION,
            "bits": self.bits,
            "code_bytes": self.code_bytes,
            "feature_dim": self.feature_dim,
            "count": self.n,
            "dtypes": dict(DTYPES),
            "files": files,
            "dataset": self.meta.get("dataset"),
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "checkpoint_sha256": self._checkpoint_sha,
            # explicit: codes from no checkpoint (a baseline's), so there is no checkpoint to check against
            "checkpoint_free": checkpoint is None,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "meta": self.meta,
        }


class IndexWriteError(DeephashError, OSError):
    """Writing an index failed (a full disk, a permission): nothing was left half-written."""


@contextmanager
def write_errors(path: Path) -> Iterator[None]:
    """An ``OSError`` while writing the index at ``path`` (or its staging) -> one-line ``IndexWriteError``."""
    try:
        yield
    except DeephashError:
        raise
    except OSError as e:
        reason = e.strerror or str(e)
        raise IndexWriteError(
            f"cannot write index {path}: {reason} ({e.filename or path}); nothing was left half-written"
        ) from None


def _checkpoint_sha256(meta: dict[str, Any]) -> str | None:
    """The sha256 of ``meta["checkpoint"]`` (given or computed); None without a checkpoint."""
    checkpoint = meta.get("checkpoint")
    sha = meta.get("checkpoint_sha256")
    if checkpoint is None:
        if sha is not None:
            raise ConfigError("an index's meta gives checkpoint_sha256 without the checkpoint it belongs to")
        return None
    if sha is None:
        if not Path(checkpoint).is_file():
            raise ConfigError(
                f"checkpoint {checkpoint} not found: its sha256 cannot be recorded in the index"
            )
        sha = sha256_file(checkpoint)
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise ConfigError(f"checkpoint_sha256 must be 64 lowercase hex digits, got {sha!r}")
    return sha


def _header_sha256(path: Path) -> str:
    """sha256 of a ``.npy`` file's header (the bytes before its data)."""
    offset = npy_layout(path)[0]
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(offset)).hexdigest()


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(directory / MANIFEST, manifest)


def _fsync(path: Path) -> None:
    """Flush a file (or a directory's entries) to disk before the rename publishes it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap the entries ``a`` and ``b`` in one atomic step (Linux ``renameat2``); False where unsupported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path``. An existing ``path`` is exchanged with ``tmp`` atomically and then removed;
    without ``renameat2`` it is renamed aside to ``.<name>.old-*`` first (``recover_index`` puts it back
    should the process die before the second rename)."""
    if not (path.exists() or path.is_symlink()):
        os.replace(tmp, path)
        return
    if _exchange(tmp, path):
        _fsync(path.parent)
        _remove(tmp)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    os.replace(path, old / "index")
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old / "index", path)
        raise
    _fsync(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


# ---- one writer at a time, and what crashed writers leave behind -------------------------------------------

_HELD: dict[Path, list[int]] = {}  # lock path -> [fd, depth]: this process's index locks (re-entrant)


def _lock_path(path: Path) -> Path:
    return path.parent / f".{path.name}.lock"


def acquire_index_lock(path: str | os.PathLike) -> None:
    """Take the write lock of the index at ``path`` (re-entrant within a process; ``flock``, so a dead
    process's lock is released by the kernel). Another live writer -> one-line ``ConfigError``. The first
    acquisition removes what interrupted writers left (``clean_leftovers``)."""
    path = Path(path).absolute()
    lock = _lock_path(path)
    if lock in _HELD:
        _HELD[lock][1] += 1
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd, holder = try_lock(lock)
        if fd is None:
            raise ConfigError(
                f"index {path} is being written by another process (pid {holder}, lock {lock}); "
                "wait for it to finish or choose another index_dir"
            )
        try:  # the holder we waited on may have removed the file: lock the one at the path
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    _HELD[lock] = [fd, 1]
    try:
        clean_leftovers(path)
    except BaseException:
        release_index_lock(path)
        raise


def check_index_target(path: str | os.PathLike) -> None:
    """Refuse to write an index over anything but an index: an existing ``path`` must be an index directory
    (``manifest.json`` in it) or an empty directory. A file, a run directory or a folder of data given as
    ``index_dir`` would otherwise be replaced, and its contents deleted, by the commit's swap."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    if not path.is_dir():
        raise ConfigError(
            f"{path} exists and is not a directory; an index is written to a new path or over an existing index"
        )
    if (path / MANIFEST).is_file() or not any(path.iterdir()):
        return
    raise ConfigError(
        f"{path} is a non-empty directory without {MANIFEST}, not an index; refusing to replace it "
        "(choose a new index_dir, or an existing index to rebuild)"
    )


def release_index_lock(path: str | os.PathLike) -> None:
    lock = _lock_path(Path(path).absolute())
    held = _HELD.get(lock)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        del _HELD[lock]
        lock.unlink(missing_ok=True)  # while still locked: a later writer locks a fresh file
        os.close(held[0])  # releases the flock


@contextmanager
def index_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold the index's write lock for a whole build (encoding and saving)."""
    acquire_index_lock(path)
    try:
        yield
    finally:
        release_index_lock(path)


def staging_dir(path: str | os.PathLike, label: str) -> Path:
    """A fresh private working directory ``.<name>.staging-<label>-XXXX`` beside the index at ``path``
    (one per writer; removed with the other leftovers if the writer dies)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{path.name}.staging-{label}-", dir=path.parent))


def leftovers(path: str | os.PathLike) -> list[Path]:
    """What interrupted writers of the index at ``path`` left beside it: temporary, set-aside and staging
    directories. (Only writers holding the lock create these names, so under the lock they are stale.)"""
    return _beside(path, ("tmp", "old", "staging"))


def legacy_staging(path: str | os.PathLike) -> list[Path]:
    """Staging directories under the shared name of earlier versions (``.<name>.encode-*``): reported, not
    removed, since a process outside the lock (an older deephash) may still be writing them."""
    return _beside(path, ("encode",))


def _beside(path: str | os.PathLike, kinds: tuple[str, ...]) -> list[Path]:
    path = Path(path)
    if not path.parent.is_dir():
        return []
    prefixes = tuple(f".{path.name}.{kind}-" for kind in kinds)
    return sorted(p for p in path.parent.iterdir() if p.name.startswith(prefixes))


def recover_index(path: str | os.PathLike) -> bool:
    """Put back an index a writer renamed aside (``.<name>.old-*``) and died before replacing; True if one
    was restored. Only while no writer holds the lock."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        return False
    candidates = [p / "index" for p in leftovers(path) if p.name.startswith(f".{path.name}.old-")]
    candidates = [p for p in candidates if (p / MANIFEST).is_file()]
    if not candidates:
        return False
    newest = max(candidates, key=lambda p: (p / MANIFEST).stat().st_mtime)
    os.replace(newest, path)
    log.warning("restored index %s from %s (a writer died while replacing it)", path, newest.parent)
    return True


def clean_leftovers(path: str | os.PathLike) -> list[Path]:
    """Under the index lock: restore an index left aside, then remove the other leftovers; returns them."""
    path = Path(path)
    recover_index(path)
    removed = leftovers(path)
    for p in removed:
        _remove(p)
        log.warning("removed %s, left by an interrupted index write", p)
    for p in legacy_staging(path):
        log.warning("%s looks like the staging of an interrupted earlier index build; remove it if unused", p)
    return removed


def save_index(
    path: str | os.PathLike,
    *,
    codes_packed: np.ndarray,
    f7: np.ndarray | Iterable[np.ndarray],
    labels: np.ndarray,
    ids: Sequence[str],
    bits: int,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Save an index atomically (see the module docstring) and return its path.

    codes_packed: (n, ceil(bits / 8)) uint8; f7: (n, d) array, memmap or ``F7File`` (copied in blocks),
    or an iterable of (m_i, d) row blocks summing to n rows (e.g. an encoder's batches); labels: (n,)
    int; ids: n strings.
    """
    codes_packed = check_packed(codes_packed, bits)
    labels = np.asarray(labels)
    n = len(codes_packed)
    if labels.shape != (n,) or len(ids) != n:
        raise ConfigError(f"{n} codes need labels ({n},) and {n} ids, got {labels.shape} and {len(ids)}")
    blocks: Iterable[np.ndarray]
    if isinstance(f7, (np.ndarray, F7File)):
        if f7.ndim != 2 or len(f7) != n:
            raise ConfigError(f"f7 must be ({n}, d) for {n} codes, got {f7.shape}")
        rows = max(1, _F7_BLOCK_BYTES // max(1, 4 * f7.shape[1]))
        blocks = (f7[s : s + rows] for s in range(0, max(n, 1), rows))
    else:
        blocks = iter(f7)
    writer: IndexWriter | None = None
    start = 0
    try:
        for block in blocks:
            block = block if isinstance(block, np.ndarray) else np.asarray(block)  # keep memmaps (to release)
            if writer is None:
                if block.ndim != 2:
                    raise ConfigError(f"f7 blocks must be (m, d), got {block.shape}")
                writer = IndexWriter(path, n, bits, block.shape[1], meta)
            stop = start + len(block)
            if stop > n:
                raise ConfigError(f"f7 blocks hold more than the {n} rows of the codes")
            writer.write(start, codes_packed[start:stop], block, labels[start:stop], ids[start:stop])
            release_pages(f7)
            start = stop
        if writer is None:
            raise ConfigError("f7 is empty: cannot infer the feature dimension")
        if start != n:
            raise ConfigError(f"f7 blocks hold {start} rows but there are {n} codes")
        return writer.commit()
    finally:
        if writer is not None and not writer._done:
            writer.abort()


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.is_dir() and leftovers(path):
        with index_lock(path):  # restores an index a dead writer left aside; busy -> one line
            pass
    if path.exists() and not path.is_dir():
        raise IndexFormatError(
            f"{path} is a file, not an index: expected the directory deephash-index build wrote"
        )
    if not path.is_dir():
        raise IndexFormatError(f"index directory {path} does not exist")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise IndexFormatError(
            f"{manifest_path} is missing: {path} is not a saved index (or its save was interrupted)"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IndexFormatError(f"{manifest_path} is not valid JSON ({e}): re-create the index") from None
    if not isinstance(manifest, dict):
        raise IndexFormatError(f"{manifest_path} must hold a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if isinstance(version, int) and 0 < version < FORMAT_VERSION:
        raise IndexFormatError(
            f"index {path} has format_version {version}, from an older deephash without F7 checksums; "
            "rebuild it (deephash-index build, or rerun the training or baseline that wrote it)"
        )
    if version != FORMAT_VERSION:
        raise IndexFormatError(
            f"{manifest_path} has format_version {version!r}; this deephash reads format_version {FORMAT_VERSION}"
        )
    for key in ("bits", "code_bytes", "feature_dim", "count", "files", "checkpoint_free"):
        if key not in manifest:
            raise IndexFormatError(f"{manifest_path} lacks the '{key}' field")
    _check_manifest(manifest, manifest_path)
    return manifest


def _check_manifest(manifest: dict[str, Any], manifest_path: Path) -> None:
    """Every file's entry holds exactly its keys, with checksums of the right form; the checkpoint is
    recorded with its sha256, or the index says it has none (``checkpoint_free``)."""
    files = manifest["files"]
    if not isinstance(files, dict):
        raise IndexFormatError(f"{manifest_path}: 'files' must be an object")
    for name, keys in _FILE_KEYS.items():
        entry = files.get(name)
        if not isinstance(entry, dict):
            raise IndexFormatError(
                f"{manifest_path} has no entry for {name}: every file's checksum is required"
            )
        if entry.keys() != keys:
            missing, unknown = sorted(keys - entry.keys()), sorted(entry.keys() - keys)
            raise IndexFormatError(
                f"{manifest_path}: the entry of {name} "
                + (f"lacks {', '.join(missing)}" if missing else "")
                + ("; " if missing and unknown else "")
                + (f"has unknown key(s) {', '.join(unknown)} (misspelt?)" if unknown else "")
            )
        for key in keys & {"sha256", "header_sha256"}:
            if not isinstance(entry[key], str) or not _SHA256.fullmatch(entry[key]):
                raise IndexFormatError(
                    f"{manifest_path}: {name} {key} must be 64 hex digits, got {entry[key]!r}"
                )
    block_rows = files[F7]["block_rows"]
    if not isinstance(block_rows, int) or isinstance(block_rows, bool) or block_rows < 1:
        raise IndexFormatError(
            f"{manifest_path}: {F7} block_rows must be a positive integer, got {block_rows!r}"
        )
    free, checkpoint, sha = (
        manifest["checkpoint_free"],
        manifest.get("checkpoint"),
        manifest.get("checkpoint_sha256"),
    )
    if free is True:
        if checkpoint is not None or sha is not None:
            raise IndexFormatError(
                f"{manifest_path} says checkpoint_free but records checkpoint {checkpoint!r} (sha256 {sha!r})"
            )
    elif free is False:
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            raise IndexFormatError(
                f"{manifest_path} records checkpoint {checkpoint!r} without a valid checkpoint_sha256 "
                f"(got {sha!r}): the index cannot be checked against a model; rebuild it"
            )
    else:
        raise IndexFormatError(f"{manifest_path}: checkpoint_free must be true or false, got {free!r}")
    _check_meta(manifest.get("meta"), manifest_path)


def check_preprocess(spec: Any, where: str) -> dict[str, Any]:
    """``spec`` if it is a preprocessing ``deephash.data.query.preprocess_spec`` (or a pixel baseline)
    writes, read back from ``where`` (an index manifest); else a one-line IndexFormatError: a hand-edited or
    damaged manifest must not turn into a KeyError, or into queries encoded unlike the database."""

    def bad(key: str, expected: str) -> IndexFormatError:
        value = spec.get(key) if isinstance(spec, dict) else spec
        return IndexFormatError(
            f"{where}: meta.preprocess{'.' + key if key else ''} must be {expected}, got {value!r}; "
            "rebuild the index with deephash-index build"
        )

    def positive_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    if not isinstance(spec, dict):
        raise bad("", "an object")
    size = spec.get("size")
    size_ok = isinstance(size, list) and len(size) == 2 and all(positive_int(v) for v in size)
    pixels = spec.get("features") == "pixels"  # a pixel baseline's index: resized raw pixels
    if not pixels and spec.get("transform") not in ("imagenet", "native"):
        raise bad("transform", "'imagenet' or 'native'")
    if spec.get("channels") not in (1, 3):
        raise bad("channels", "1 or 3")
    if spec.get("transform") == "imagenet" and not pixels:
        for key in ("image_size", "resize"):
            if not positive_int(spec.get(key)):
                raise bad(key, "an integer >= 1")
        if spec["resize"] < spec["image_size"]:
            raise bad("resize", f"at least image_size ({spec['image_size']})")
        return spec
    if not size_ok:
        raise bad("size", "[height, width], two integers >= 1")
    if pixels:
        return spec
    for key in ("mean", "std"):
        values = spec.get(key)
        numbers = isinstance(values, list) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
        )
        if not (numbers and len(values) == spec["channels"] and (key == "mean" or min(values) > 0)):
            positive = " > 0" if key == "std" else ""
            raise bad(key, f"a list of {spec['channels']} numbers{positive} (one per channel)")
    return spec


def _check_meta(meta: Any, manifest_path: Path) -> None:
    """``meta`` is an object whose ``class_names`` (a list of names), ``labelled`` (a boolean) and
    ``preprocess`` (:func:`check_preprocess`) are what search and evaluation read."""
    if meta is None:
        return
    if not isinstance(meta, dict):
        raise IndexFormatError(f"{manifest_path}: 'meta' must be an object, got {meta!r}")
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise IndexFormatError(f"{manifest_path}: meta.class_names must be a list of names, got {names!r}")
    if not isinstance(meta.get("labelled", True), bool):
        raise IndexFormatError(
            f"{manifest_path}: meta.labelled must be true or false, got {meta['labelled']!r}"
        )
    if meta.get("preprocess") is not None:
        check_preprocess(meta["preprocess"], str(manifest_path))


def _load_array(
    path: Path, name: str, shape: tuple[int, ...], dtype: str, nbytes: int | None, lazy: bool
) -> np.ndarray | F7File:
    """Load one .npy (or open it as an ``F7File`` when ``lazy``) and check it against the manifest's
    shape, dtype and byte size."""
    file = path / name
    want = f"{_dims(shape)} {dtype}"
    if not file.is_file():
        raise IndexFormatError(f"{name} is missing from {path}: expected {want}")
    size = file.stat().st_size
    if nbytes is not None and size != nbytes:
        raise IndexFormatError(
            f"{name} is truncated or corrupt: expected {want} ({nbytes} bytes) but the file has {size} bytes"
        )
    try:
        arr = None if lazy else np.load(file, allow_pickle=False)
        got_shape, got_dtype = (arr.shape, arr.dtype) if arr is not None else npy_layout(file)[1:]
        if got_shape != shape or got_dtype != np.dtype(dtype):
            raise IndexFormatError(
                f"{name} holds {_dims(got_shape)} {got_dtype} but the manifest expects {want}"
            )
        return arr if arr is not None else F7File(file)
    except IndexFormatError as e:
        if str(e).startswith(name):
            raise
        raise IndexFormatError(f"{name} is truncated or corrupt: expected {want} ({e})") from None
    except (ValueError, OSError, EOFError) as e:
        raise IndexFormatError(f"{name} is truncated or corrupt: expected {want} ({e})") from None


def _dims(shape: tuple[int, ...]) -> str:
    return " x ".join(map(str, shape))


def _check_sha256(path: Path, name: str, expected: str) -> None:
    if sha256_file(path / name) != expected:
        raise IndexFormatError(
            f"{name} in {path} does not match its sha256 in {MANIFEST}: the file was modified or corrupted"
        )


def _open_f7(path: Path, manifest: dict[str, Any], in_memory: bool) -> np.ndarray | F7File:
    """f7.npy as an ``F7File`` checking each block against f7.crc32.npy on first read (``in_memory``: read
    and checked whole)."""
    n, d = int(manifest["count"]), int(manifest["feature_dim"])
    entry, sums_entry = manifest["files"][F7], manifest["files"][F7_SUMS]
    block_rows = int(entry["block_rows"])
    blocks = -(-n // block_rows)
    sums = _load_array(path, F7_SUMS, (blocks,), "uint32", sums_entry["bytes"], False)
    _check_sha256(path, F7_SUMS, sums_entry["sha256"])
    _load_array(path, F7, (n, d), DTYPES["f7"], entry["bytes"], True).close()
    if _header_sha256(path / F7) != entry["header_sha256"]:
        raise IndexFormatError(f"the header of {F7} in {path} does not match its sha256 in {MANIFEST}")
    f7 = F7File(path / F7, checksums=sums, block_rows=block_rows)
    if not in_memory:
        return f7
    with f7:
        return f7[:]


def load_index(
    path: str | os.PathLike,
    *,
    expect_bits: int | None = None,
    expect_feature_dim: int | None = None,
    expect_checkpoint_sha256: str | None = None,
    f7_in_memory: bool = False,
    verify: bool = True,
    pool_index: np.ndarray | None = None,
) -> IndexStore:
    """Load and validate an index saved by ``save_index``/``IndexWriter``.

    Raises IndexFormatError (one line, naming the file) when the directory, manifest or a file is
    missing, truncated, corrupt or inconsistent, when a label lies outside ``meta.class_names``, or when it
    does not match the expected bits, feature size or checkpoint. By default f7 stays on disk as an
    ``F7File`` that reads only the rows asked for, each block checked against its checksum when first read
    (see ``deephash.retrieval.features``); ``f7_in_memory`` loads (and checks) it whole. ``verify`` checks the
    sha256 of codes, labels and ids (the F7 checksums and header are always checked). ``pool_index``: where
    the items sit in a datamodule's pool, when the caller knows (an index it has just built).
    """
    path = Path(path)
    manifest = _read_manifest(path)
    bits, d, n = int(manifest["bits"]), int(manifest["feature_dim"]), int(manifest["count"])
    if expect_bits is not None and bits != expect_bits:
        raise IndexFormatError(
            f"index {path} has {bits}-bit codes but the model produces {expect_bits}-bit codes"
        )
    if expect_feature_dim is not None and d != expect_feature_dim:
        raise IndexFormatError(
            f"index {path} has {d}-d F7 features but the model produces {expect_feature_dim}-d features"
        )
    recorded = manifest.get("checkpoint_sha256")
    if expect_checkpoint_sha256 is not None and recorded != expect_checkpoint_sha256:
        built_from = (
            "no checkpoint (its codes are a baseline's)"
            if manifest["checkpoint_free"]
            else f"checkpoint sha256 {recorded}"
        )
        raise IndexFormatError(
            f"index {path} was built from {built_from} but the given checkpoint has sha256 "
            f"{expect_checkpoint_sha256}: its codes are not comparable; rebuild it with deephash-index build"
        )
    if int(manifest["code_bytes"]) != code_bytes(bits):
        raise IndexFormatError(
            f"{path / MANIFEST} says {manifest['code_bytes']} code bytes for {bits}-bit codes"
        )
    files = manifest["files"]
    codes = _load_array(path, CODES, (n, code_bytes(bits)), DTYPES["codes"], files[CODES]["bytes"], False)
    labels = _load_array(path, LABELS, (n,), DTYPES["labels"], files[LABELS]["bytes"], False)
    ids_file = path / IDS
    if not ids_file.is_file():
        raise IndexFormatError(f"{IDS} is missing from {path}: expected {n} item ids, one per line")
    if verify:
        for name in (CODES, LABELS, IDS):
            _check_sha256(path, name, files[name]["sha256"])
    f7 = _open_f7(path, manifest, f7_in_memory)
    ids = ids_file.read_bytes().decode("utf-8").split("\n")[:-1]
    if len(ids) != n:
        raise IndexFormatError(f"{IDS} in {path} has {len(ids)} ids but the index holds {n} items")
    try:
        codes = check_packed(codes, bits, CODES)
    except IndexFormatError as e:
        raise IndexFormatError(f"{e} (in {path})") from None
    _check_labels(path, labels, (manifest.get("meta") or {}).get("class_names"))
    if pool_index is not None and len(pool_index) != n:
        raise ConfigError(f"pool_index has {len(pool_index)} entries for an index of {n} items")
    return IndexStore(
        path=path,
        codes=codes,
        f7=f7,
        labels=labels,
        ids=ids,
        pool_index=pool_index,
        bits=bits,
        manifest=manifest,
    )


def _check_labels(path: Path, labels: np.ndarray, class_names: Any) -> None:
    """Every label names one of ``class_names`` (when the index records them)."""
    if class_names is None or len(labels) == 0:
        return
    if not isinstance(class_names, list):
        raise IndexFormatError(f"{path / MANIFEST}: meta.class_names must be a list, got {class_names!r}")
    bad = np.flatnonzero((labels < 0) | (labels >= len(class_names)))
    if bad.size:
        raise IndexFormatError(
            f"{LABELS} in {path} holds label {int(labels[bad[0]])} (item {int(bad[0])}) but the index names "
            f"{len(class_names)} classes (0..{len(class_names) - 1}): rebuild the index"
        )


def verify_index(path: str | os.PathLike) -> dict[str, Any]:
    """Check every file of the index at ``path``: the manifest, each small file's sha256, f7.npy's header
    and every block of its rows (checksums, NaN and inf), the labels against the class names. Returns a
    summary; raises a one-line ``IndexFormatError`` on the first problem."""
    store = load_index(path)
    with store.f7 as f7:
        f7.verify_all()
    checked = [MANIFEST, *_FILE_KEYS]
    return {
        "index": str(path),
        "count": store.count,
        "bits": store.bits,
        "feature_dim": store.feature_dim,
        "files": len(checked),
        "bytes": sum((store.path / name).stat().st_size for name in checked),
        "f7_blocks": len(store.f7.checksums),
    }
