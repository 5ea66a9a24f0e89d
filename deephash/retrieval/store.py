"""Persistent index directory: packed codes, float16 F7 features, labels and ids, with a manifest.

Layout of ``<path>/``::

    manifest.json   format_version, bits, code_bytes, feature_dim, count, dtypes, file sizes/sha256, meta
    codes.npy       (n, ceil(bits / 8)) uint8 packed codes
    f7.npy          (n, d) float16 F7 features (read on demand through ``F7File`` on load)
    labels.npy      (n,) int64 class labels
    ids.txt         n item ids, one per line

A save writes everything into a temporary sibling ``.<name>.tmp-XXXX`` (manifest last) and renames it
to ``path``; an existing index is renamed aside first and removed once the new one is in place. An
interrupted save therefore never leaves a loadable half-written index at ``path``.

F7 never goes through a memory map, whose pages would count toward the resident set (see
``deephash.retrieval.features``): rows are written with positional writes, in blocks of about
``_F7_BLOCK_BYTES``, and a loaded index reads only the rows a search asks for. Building or searching a
million 4096-d items thus takes memory for the codes, labels and ids, not for the 8 GB of features.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from deephash.retrieval.codes import check_packed, code_bytes
from deephash.retrieval.features import F7File, NpyRowWriter, create_npy, npy_layout, release_pages
from deephash.retrieval.search import HammingIndex
from deephash.utils.errors import ConfigError, IndexFormatError
from deephash.utils.io import atomic_write_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CODES, F7, LABELS, IDS = "codes.npy", "f7.npy", "labels.npy", "ids.txt"
DTYPES = {"codes": "uint8", "f7": "float16", "labels": "int64"}
_F7_BLOCK_BYTES = 32 << 20  # float32 bytes of F7 converted and checked at a time


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


class IndexWriter:
    """Streams an index of ``n`` items to disk without holding the features in RAM.

    Rows may be written in any order and in blocks of any size; ``commit()`` checks every row was
    written, writes the manifest and moves the directory into place. Used as a context manager, an
    exception (or leaving without ``commit()``) removes the temporary directory.
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.tmp-", dir=self.path.parent))
        self.tmp.chmod(0o755)  # mkdtemp makes it private; the published index should not be
        self._files: dict[str, NpyRowWriter] = {}
        for name, shape, dtype in (
            (CODES, (self.n, self.code_bytes), np.uint8),
            (F7, (self.n, self.feature_dim), np.float16),
            (LABELS, (self.n,), np.int64),
        ):
            create_npy(self.tmp / name, shape, dtype)
            self._files[name] = NpyRowWriter(self.tmp / name)
        self._ids: list[str | None] = [None] * self.n
        self._written = np.zeros(self.n, dtype=bool)
        self._done = False

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
        for s in range(0, m, step):
            with np.errstate(over="ignore"):  # reported below as a one-line error
                f7_half = f7[s : s + step].astype(np.float16)
            release_pages(f7)
            if not np.isfinite(f7_half).all():
                raise ConfigError(
                    f"F7 rows {start}:{start + m} hold NaN or values beyond float16's range (65504)"
                )
            self._files[F7].write_at(start + s, f7_half)
        self._files[CODES].write_at(start, codes_packed)
        self._files[LABELS].write_at(start, labels)
        self._ids[start : start + m] = [str(i) for i in ids]
        self._written[start : start + m] = True

    def commit(self) -> Path:
        """Flush, write the manifest last and atomically move the index to ``path``."""
        if self._done:
            raise ConfigError(f"index {self.path} was already committed or aborted")
        missing = np.flatnonzero(~self._written)
        if missing.size:
            raise ConfigError(
                f"{missing.size} of {self.n} index rows were never written (first: row {missing[0]})"
            )
        self._close_files()
        (self.tmp / IDS).write_bytes("".join(f"{i}\n" for i in self._ids).encode("utf-8"))
        for name in (CODES, F7, LABELS, IDS):
            _fsync(self.tmp / name)
        _write_manifest(self.tmp, self._manifest())
        _fsync(self.tmp)
        _swap_into_place(self.tmp, self.path)
        self._done = True
        return self.path

    def abort(self) -> None:
        """Discard everything written so far."""
        self._done = True
        self._close_files()
        shutil.rmtree(self.tmp, ignore_errors=True)

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
        for name, shape in ((CODES, [self.n, self.code_bytes]), (LABELS, [self.n]), (IDS, None)):
            files[name] = {"bytes": (self.tmp / name).stat().st_size, "sha256": sha256_file(self.tmp / name)}
            if shape is not None:
                files[name]["shape"] = shape
        # Hashing a multi-GB feature file would dominate the save: size and shape only.
        files[F7] = {"bytes": (self.tmp / F7).stat().st_size, "shape": [self.n, self.feature_dim]}
        checkpoint = self.meta.get("checkpoint")
        checkpoint_sha = self.meta.get("checkpoint_sha256")
        if checkpoint and not checkpoint_sha and Path(checkpoint).is_file():
            checkpoint_sha = sha256_file(checkpoint)
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
            "checkpoint_sha256": checkpoint_sha,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "meta": self.meta,
        }


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(directory / MANIFEST, manifest)


def _fsync(path: Path) -> None:
    """Flush a file (or a directory's entries) to disk before the rename publishes it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing ``path`` is moved aside first and removed afterwards."""
    old = None
    if path.exists() or path.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old / "index")
    try:
        os.replace(tmp, path)
    except BaseException:
        if old is not None:
            os.replace(old / "index", path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(
            f"{manifest_path} has format_version {manifest.get('format_version')!r}; "
            f"this deephash reads format_version {FORMAT_VERSION}"
        )
    for key in ("bits", "code_bytes", "feature_dim", "count", "files"):
        if key not in manifest:
            raise IndexFormatError(f"{manifest_path} lacks the '{key}' field")
    return manifest


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
    missing, truncated or inconsistent, or when it does not match the expected bits, feature size or
    checkpoint. By default f7 stays on disk as an ``F7File`` that reads only the rows asked for (see
    ``deephash.retrieval.features``); ``f7_in_memory`` loads it into RAM. ``verify`` checks the sha256 of
    codes, labels and ids. ``pool_index``: where the items sit in a datamodule's pool, when the caller
    knows (an index it has just built).
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
        built_from = f"checkpoint sha256 {recorded}" if recorded else "a checkpoint it does not record"
        raise IndexFormatError(
            f"index {path} was built from {built_from} but the given checkpoint has sha256 "
            f"{expect_checkpoint_sha256}: its codes are not comparable; rebuild it with deephash-index build"
        )
    if int(manifest["code_bytes"]) != code_bytes(bits):
        raise IndexFormatError(
            f"{path / MANIFEST} says {manifest['code_bytes']} code bytes for {bits}-bit codes"
        )
    files = manifest["files"]

    def entry(name: str) -> dict[str, Any]:
        return files.get(name) or {}

    codes = _load_array(path, CODES, (n, code_bytes(bits)), DTYPES["codes"], entry(CODES).get("bytes"), False)
    labels = _load_array(path, LABELS, (n,), DTYPES["labels"], entry(LABELS).get("bytes"), False)
    f7 = _load_array(path, F7, (n, d), DTYPES["f7"], entry(F7).get("bytes"), not f7_in_memory)
    ids_file = path / IDS
    if not ids_file.is_file():
        raise IndexFormatError(f"{IDS} is missing from {path}: expected {n} item ids, one per line")
    if verify:
        for name in (CODES, LABELS, IDS):
            expected = entry(name).get("sha256")
            if expected and sha256_file(path / name) != expected:
                raise IndexFormatError(
                    f"{name} in {path} does not match its sha256 in {MANIFEST}: the file was modified or corrupted"
                )
    ids = ids_file.read_bytes().decode("utf-8").split("\n")[:-1]
    if len(ids) != n:
        raise IndexFormatError(f"{IDS} in {path} has {len(ids)} ids but the index holds {n} items")
    try:
        codes = check_packed(codes, bits, CODES)
    except IndexFormatError as e:
        raise IndexFormatError(f"{e} (in {path})") from None
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
