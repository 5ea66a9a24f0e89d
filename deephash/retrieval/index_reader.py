"""Loading and verifying an index directory (the layout of ``deephash.retrieval.manifest``).

Loading checks every file against the manifest (shapes, dtypes, sizes, the small files' sha256, f7.npy's
header) and leaves F7 on disk as an ``F7File`` that reads only the rows a search asks for, each block checked
against its CRC-32 when first read; ``verify_index`` checks every block now.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from deephash.retrieval.codecs import Codec, load_codec
from deephash.retrieval.codes import check_packed, code_bytes
from deephash.retrieval.features import F7File
from deephash.retrieval.index_lock import index_lock, leftovers
from deephash.retrieval.items import IndexStore
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
    check_manifest,
    codec_name,
    header_sha256,
    manifest_files,
    sha256_file,
)
from deephash.retrieval.npy import npy_layout
from deephash.retrieval.pq_rows import PQRows
from deephash.utils.errors import ConfigError, IndexFormatError

SWAP_RETRIES = 3  # reads of an index directory that was swapped for a new version meanwhile


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

    ``deephash-index build`` swaps a new version into ``path`` whole, but a reader may meet the manifest of one
    version and a file of the other: a check that fails while ``path`` was swapped for another directory is
    read again, from the new version (up to :data:`SWAP_RETRIES` times), so "modified or corrupted" means the
    files on disk really disagree with their manifest.
    """
    options = dict(
        expect_bits=expect_bits,
        expect_feature_dim=expect_feature_dim,
        expect_checkpoint_sha256=expect_checkpoint_sha256,
        f7_in_memory=f7_in_memory,
        verify=verify,
        pool_index=pool_index,
    )
    path = Path(path)
    version = _version(path)
    for _ in range(SWAP_RETRIES):
        try:
            return _load_index(path, **options)
        except IndexFormatError:
            now = _version(path)
            if now == version:  # the same directory: the files really disagree with their manifest
                raise
            version = now
    return _load_index(path, **options)


def _version(path: Path) -> tuple[int, int] | None:
    """Which directory ``path`` names now (a swap puts another one there), or None if none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _load_index(
    path: Path,
    *,
    expect_bits: int | None,
    expect_feature_dim: int | None,
    expect_checkpoint_sha256: str | None,
    f7_in_memory: bool,
    verify: bool,
    pool_index: np.ndarray | None,
) -> IndexStore:
    manifest = read_manifest(path)
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
    codec = _load_codec(path, manifest)
    f7: np.ndarray | F7File | PQRows
    if codec.quantised:
        shape = (n, codec.size)
        exact = _open_f7(path, manifest, codec.dim, False) if codec.rerank else None
        f7 = PQRows(
            _load_array(path, PQ_CODES, shape, "uint8", files[PQ_CODES]["bytes"], "mmap"), codec, exact
        )
        if verify:
            _check_sha256(path, PQ_CODES, files[PQ_CODES]["sha256"])
    else:
        f7 = _open_f7(path, manifest, codec.row_width, f7_in_memory)
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
        codec=codec,
    )


def verify_index(path: str | os.PathLike) -> dict[str, Any]:
    """Check every file of the index at ``path``: the manifest, each small file's sha256, f7.npy's header
    and every block of its rows (checksums, NaN and inf), the labels against the class names. Returns a
    summary; raises a one-line ``IndexFormatError`` on the first problem."""
    store = load_index(path)
    rows = store.f7.exact if isinstance(store.f7, PQRows) else store.f7
    if isinstance(rows, F7File):
        with rows as f7:
            f7.verify_all()
    checked = [MANIFEST, *manifest_files(store.manifest)]
    return {
        "index": str(path),
        "count": store.count,
        "bits": store.bits,
        "feature_dim": store.feature_dim,
        "files": len(checked),
        "bytes": sum((store.path / name).stat().st_size for name in checked),
        "f7_blocks": len(rows.checksums) if isinstance(rows, F7File) else 0,
    }


def read_manifest(path: Path) -> dict[str, Any]:
    """The checked manifest of the index at ``path`` (an index a dead writer left aside is put back first)."""
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
    if version not in (FORMAT_VERSION, CODEC_FORMAT_VERSION):
        raise IndexFormatError(
            f"{manifest_path} has format_version {version!r}; this deephash reads format_version "
            f"{FORMAT_VERSION} and {CODEC_FORMAT_VERSION}"
        )
    if (version == CODEC_FORMAT_VERSION) != (codec_name(manifest) != "float16"):
        raise IndexFormatError(
            f"{manifest_path}: format_version {version} does not go with codec {manifest.get('codec')!r}"
        )
    for key in ("bits", "code_bytes", "feature_dim", "count", "files", "checkpoint_free"):
        if key not in manifest:
            raise IndexFormatError(f"{manifest_path} lacks the '{key}' field")
    check_manifest(manifest, manifest_path)
    return manifest


def _load_array(
    path: Path, name: str, shape: tuple[int, ...], dtype: str, nbytes: int | None, lazy: bool | str
) -> Any:
    """Load one .npy (open it as an ``F7File`` when ``lazy``, as a read-only memory map when ``lazy`` is
    ``"mmap"``) and check it against the manifest's shape, dtype and byte size."""
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
        arr = (
            np.load(file, mmap_mode="r")
            if lazy == "mmap"
            else None
            if lazy
            else np.load(file, allow_pickle=False)
        )
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


def _load_codec(path: Path, manifest: dict[str, Any]) -> Codec:
    """The codec the manifest records, with its parameters from codec.npz (checked against its sha256)."""
    params: dict[str, np.ndarray] = {}
    entry = manifest["files"].get(CODEC_PARAMS)
    if entry is not None:
        file = path / CODEC_PARAMS
        if not file.is_file() or file.stat().st_size != entry["bytes"]:
            raise IndexFormatError(f"{CODEC_PARAMS} in {path} is missing or truncated: rebuild the index")
        _check_sha256(path, CODEC_PARAMS, entry["sha256"])
        with np.load(file, allow_pickle=False) as arrays:
            params = {key: arrays[key] for key in arrays.files}
    return load_codec(manifest.get("codec"), int(manifest["feature_dim"]), params, str(path / MANIFEST))


def _open_f7(path: Path, manifest: dict[str, Any], d: int, in_memory: bool) -> np.ndarray | F7File:
    """f7.npy, (n, d) float16, as an ``F7File`` checking each block against f7.crc32.npy on first read
    (``in_memory``: read and checked whole)."""
    n = int(manifest["count"])
    entry, sums_entry = manifest["files"][F7], manifest["files"][F7_SUMS]
    block_rows = int(entry["block_rows"])
    blocks = -(-n // block_rows)
    sums = _load_array(path, F7_SUMS, (blocks,), "uint32", sums_entry["bytes"], False)
    _check_sha256(path, F7_SUMS, sums_entry["sha256"])
    _load_array(path, F7, (n, d), DTYPES["f7"], entry["bytes"], True).close()
    if header_sha256(path / F7) != entry["header_sha256"]:
        raise IndexFormatError(f"the header of {F7} in {path} does not match its sha256 in {MANIFEST}")
    f7 = F7File(path / F7, checksums=sums, block_rows=block_rows)
    if not in_memory:
        return f7
    with f7:
        return f7[:]


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
