"""Writing an index directory (the layout of ``deephash.retrieval.manifest``): streamed rows, F7 checksums,
the manifest last, and the directory moved into place in one step.

Writes: one writer at a time holds the index's lock (``deephash.retrieval.index_lock``). A save writes
everything into ``.<name>.tmp-XXXX`` (manifest last), then swaps it into ``path`` atomically
(``deephash.utils.atomic_dir.swap_into_place``). An interrupted save therefore leaves the old index or the new
one at ``path``, never a half-written one; the next writer removes the leftovers.

F7 never goes through a memory map, whose pages would count toward the resident set: rows are written with
positional writes, in blocks of about ``_F7_BLOCK_BYTES``. Building a million 4096-d items thus takes memory
for the codes, labels and ids, not for the 8 GB of features.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from deephash.retrieval.checksums import block_checksums, non_finite_rows
from deephash.retrieval.codecs import (
    DEFAULT_SEED,
    DEFAULT_TRAIN_ROWS,
    Codec,
    check_codec,
    sample_rows,
    train_codec,
)
from deephash.retrieval.codes import check_packed, code_bytes
from deephash.retrieval.features import F7File
from deephash.retrieval.index_lock import acquire_index_lock, check_index_target, release_index_lock
from deephash.retrieval.manifest import (
    CODEC_FORMAT_VERSION,
    CODEC_PARAMS,
    CODES,
    DTYPES,
    F7,
    F7_SUMS,
    FORMAT_VERSION,
    IDS,
    LABELS,
    MANIFEST,
    PQ_CODES,
    checkpoint_sha256,
    header_sha256,
    sha256_file,
)
from deephash.retrieval.npy import NpyRowWriter, create_npy
from deephash.retrieval.pages import release_pages
from deephash.utils.atomic_dir import fsync_path, sibling_dir, swap_into_place
from deephash.utils.errors import ConfigError, DeephashError
from deephash.utils.io import atomic_write_json

_F7_BLOCK_BYTES = 32 << 20  # float32 bytes of F7 converted and checked at a time
# Bytes of F7 under one checksum: a read's first touch of a block reads and checks all of it, so small
# blocks keep a search's scattered row reads cheap (8 KiB: one 4096-d float16 row; 4 MB of checksums for a
# million of them). A read checks the blocks it holds whole from the rows it read (see ``F7File``), so the
# checks add next to nothing to a search.
_CHECK_BLOCK_BYTES = 8 << 10


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

    ``codec``: how the re-rank features are stored (``deephash.retrieval.codecs``; None: float16), trained
    already; each block of F7 is encoded as it is written.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n: int,
        bits: int,
        feature_dim: int,
        meta: dict[str, Any] | None = None,
        codec: Codec | None = None,
    ) -> None:
        if n < 0 or feature_dim <= 0:
            raise ConfigError(f"an index needs n >= 0 items and feature_dim > 0, got n={n}, d={feature_dim}")
        self.path = Path(path)
        self.n, self.bits, self.feature_dim = int(n), int(bits), int(feature_dim)
        self.code_bytes = code_bytes(self.bits)
        self.meta = dict(meta or {})
        self.codec = codec or Codec("float16", 0, self.feature_dim)
        if self.codec.dim != self.feature_dim:
            raise ConfigError(f"a codec for {self.codec.dim}-d features cannot store {self.feature_dim}-d F7")
        self._rows_file = PQ_CODES if self.codec.quantised else F7
        self._f7_width = self.codec.row_width if not self.codec.quantised else self.feature_dim
        self._done = True  # until the lock and the temporary directory are ours
        self._checkpoint_sha = checkpoint_sha256(self.meta)
        self.block_rows = f7_block_rows(self._f7_width)
        blocks = -(-self.n // self.block_rows)
        self._sums = np.zeros(blocks, np.uint32)
        self._summed = np.zeros(blocks, bool)
        self._files: dict[str, NpyRowWriter] = {}
        with write_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            acquire_index_lock(self.path)
            try:
                check_index_target(self.path)
                self.tmp = sibling_dir(self.path, "tmp")
            except BaseException:
                release_index_lock(self.path)
                raise
            self._done = False
            try:
                self.tmp.chmod(0o755)  # mkdtemp makes it private; the published index should not be
                files = [(CODES, (self.n, self.code_bytes), np.uint8), (LABELS, (self.n,), np.int64)]
                if self.codec.quantised:
                    files.append((PQ_CODES, (self.n, self.codec.size), np.uint8))
                if self.codec.keeps_f7:
                    files.append((F7, (self.n, self._f7_width), np.float16))
                for name, shape, dtype in files:
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

        F7 is encoded by the codec (float16 by default) and checked in blocks, so a large (or memory-mapped)
        ``f7`` is never copied whole; a memmap's pages are released after each block.
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
                block = f7[s : s + step]
                with np.errstate(over="ignore", invalid="ignore"):  # reported below as a one-line error
                    encoded = self.codec.encode(block)
                    half = block.astype(np.float16) if self.codec.quantised and self.codec.keeps_f7 else None
                    half = encoded if not self.codec.quantised else half
                    bad = non_finite_rows(block if half is None else half).size
                release_pages(f7)
                if bad:
                    raise ConfigError(
                        f"F7 rows {start}:{start + m} hold NaN or values beyond float16's range (65504)"
                    )
                if self.codec.quantised:
                    self._files[PQ_CODES].write_at(start + s, encoded)
                if half is not None:
                    self._files[F7].write_at(start + s, half)
                    self._sum_blocks(start + s, half)
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
            names = [*self._files, IDS]
            if self.codec.keeps_f7:
                self._sum_remaining_blocks()
                np.save(self.tmp / F7_SUMS, self._sums)
                names.append(F7_SUMS)
            if self.codec.params:
                np.savez(self.tmp / CODEC_PARAMS, **self.codec.params)
                names.append(CODEC_PARAMS)
            (self.tmp / IDS).write_bytes("".join(f"{i}\n" for i in self._ids).encode("utf-8"))
            for name in names:
                fsync_path(self.tmp / name)
            _write_manifest(self.tmp, self._manifest())
            fsync_path(self.tmp)
            swap_into_place(self.tmp, self.path)
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
        hashed: list[tuple[str, list[int] | None]] = [
            (CODES, [self.n, self.code_bytes]),
            (LABELS, [self.n]),
            (IDS, None),
        ]
        if self.codec.quantised:
            hashed.append((PQ_CODES, [self.n, self.codec.size]))  # m bytes a row: small enough to hash whole
        if self.codec.keeps_f7:
            hashed.append((F7_SUMS, [len(self._sums)]))
        if self.codec.params:
            hashed.append((CODEC_PARAMS, None))
        for name, shape in hashed:
            files[name] = {"bytes": (self.tmp / name).stat().st_size, "sha256": sha256_file(self.tmp / name)}
            if shape is not None:
                files[name]["shape"] = shape
        if self.codec.keeps_f7:
            # a multi-GB feature file is checked block by block as it is read (f7.crc32.npy), not hashed whole
            files[F7] = {
                "bytes": (self.tmp / F7).stat().st_size,
                "shape": [self.n, self._f7_width],
                "header_sha256": header_sha256(self.tmp / F7),
                "block_rows": self.block_rows,
            }
        checkpoint = self.meta.get("checkpoint")
        plain = self.codec.name == "float16"
        return {
            "format_version": FORMAT_VERSION if plain else CODEC_FORMAT_VERSION,
            "codec": self.codec.manifest(),
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


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(directory / MANIFEST, manifest)


def save_index(
    path: str | os.PathLike,
    *,
    codes_packed: np.ndarray,
    f7: np.ndarray | Iterable[np.ndarray],
    labels: np.ndarray,
    ids: Sequence[str],
    bits: int,
    meta: dict[str, Any] | None = None,
    codec: str = "float16",
    codec_train_rows: int = DEFAULT_TRAIN_ROWS,
    codec_seed: int = DEFAULT_SEED,
    codec_rerank: int = 0,
) -> Path:
    """Save an index atomically (see the module docstring) and return its path.

    codes_packed: (n, ceil(bits / 8)) uint8; f7: (n, d) array, memmap or ``F7File`` (copied in blocks),
    or an iterable of (m_i, d) row blocks summing to n rows (e.g. an encoder's batches); labels: (n,)
    int; ids: n strings. ``codec``: the re-rank features' codec spec (``deephash.retrieval.codecs``); one
    other than float16 is first trained on ``codec_train_rows`` rows drawn with ``codec_seed`` (``f7`` must
    then be an array or ``F7File``), then every row is encoded as it is written; ``codec_rerank`` R > 0 (PQ):
    keep the float16 rows too and re-rank each search's top R exactly.
    """
    codes_packed = check_packed(codes_packed, bits)
    labels = np.asarray(labels)
    n = len(codes_packed)
    if labels.shape != (n,) or len(ids) != n:
        raise ConfigError(f"{n} codes need labels ({n},) and {n} ids, got {labels.shape} and {len(ids)}")
    blocks: Iterable[np.ndarray]
    trained: Codec | None = None
    if isinstance(f7, (np.ndarray, F7File)):
        if f7.ndim != 2 or len(f7) != n:
            raise ConfigError(f"f7 must be ({n}, d) for {n} codes, got {f7.shape}")
        if check_codec(codec, f7.shape[1])[0] != "float16":
            sample = f7[sample_rows(n, codec_train_rows, codec_seed)]
            trained = train_codec(codec, sample, codec_seed, codec_rerank)
        rows = max(1, _F7_BLOCK_BYTES // max(1, 4 * f7.shape[1]))
        blocks = (f7[s : s + rows] for s in range(0, max(n, 1), rows))
    else:
        if codec != "float16":
            raise ConfigError(
                f"codec {codec} is trained on a sample of the rows: pass f7 as an array or F7File"
            )
        blocks = iter(f7)
    writer: IndexWriter | None = None
    start = 0
    try:
        for block in blocks:
            block = block if isinstance(block, np.ndarray) else np.asarray(block)  # keep memmaps (to release)
            if writer is None:
                if block.ndim != 2:
                    raise ConfigError(f"f7 blocks must be (m, d), got {block.shape}")
                writer = IndexWriter(path, n, bits, block.shape[1], meta, trained)
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
