"""The schema of an index directory: its files, ``manifest.json`` and the checks on what a manifest holds.

Layout of ``<path>/``::

    manifest.json   format_version, bits, code_bytes, feature_dim, count, dtypes, files (sizes, shapes and
                    sha256 of every file), the checkpoint the codes come from (or checkpoint_free), meta
    codes.npy       (n, ceil(bits / 8)) uint8 packed codes
    f7.npy          (n, d) float16 F7 features (read on demand through ``F7File`` on load)
    f7.crc32.npy    (ceil(n / block_rows),) uint32 CRC-32 of each block of ``block_rows`` F7 rows
    labels.npy      (n,) int64 class labels
    ids.txt         n item ids, one per line
    codec.npz       the re-rank codec's parameters (``deephash.retrieval.codecs``), for any codec but float16
    pq.npy          (n, m) uint8 PQ codes, in place of f7.npy and its checksums under a pq<m>/opq<m>/pca<d>pq<m> codec

A pca<d> index holds (n, d) float16 rows in f7.npy. The manifest's ``codec`` ({name, size}; absent: float16)
says which; an index with a codec other than float16 has format_version 3, so an older deephash refuses it.

Every file is checked: the small ones against their sha256 on load, f7.npy's header against its sha256 and
each block of its rows against its CRC-32 when a read first touches it. A checksum missing from the manifest is
an error, never a skipped check; an index whose codes come from no checkpoint (a baseline's) says so with
``"checkpoint_free": true``. ``deephash.retrieval.index_writer`` writes an index, ``index_reader`` loads one.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from deephash.retrieval.npy import npy_layout
from deephash.utils.errors import ConfigError, IndexFormatError

FORMAT_VERSION = 2  # 2: F7 block checksums, every file's sha256 required, checkpoint_free
CODEC_FORMAT_VERSION = 3  # 3: a re-rank codec other than float16
MANIFEST = "manifest.json"
CODES, F7, F7_SUMS, LABELS, IDS = "codes.npy", "f7.npy", "f7.crc32.npy", "labels.npy", "ids.txt"
PQ_CODES, CODEC_PARAMS = "pq.npy", "codec.npz"
QUANTISED = ("pq", "opq", "pcapq")  # codecs whose rows are PQ codes (pq.npy)
DTYPES = {"codes": "uint8", "f7": "float16", "labels": "int64"}
# The keys of each file's manifest entry: all required, no others (a misspelt key is an error).
FILE_KEYS = {
    CODES: {"bytes", "shape", "sha256"},
    LABELS: {"bytes", "shape", "sha256"},
    IDS: {"bytes", "sha256"},
    F7_SUMS: {"bytes", "shape", "sha256"},
    F7: {"bytes", "shape", "header_sha256", "block_rows"},
}
SHA256 = re.compile(r"[0-9a-f]{64}")


def codec_name(manifest: dict[str, Any]) -> str:
    """The name of the codec a manifest records (float16 when it records none)."""
    codec = manifest.get("codec")
    return str(codec.get("name")) if isinstance(codec, dict) else "float16"


def file_keys(codec: str, rerank: Any = 0) -> dict[str, set[str]]:
    """The files of an index under ``codec`` (a PQ one with ``rerank`` keeps f7.npy too) and the keys of each
    one's manifest entry."""
    if codec == "float16":
        return FILE_KEYS
    keys = {**FILE_KEYS, CODEC_PARAMS: {"bytes", "sha256"}}
    if codec in QUANTISED:
        if not rerank:
            del keys[F7], keys[F7_SUMS]
        keys[PQ_CODES] = {"bytes", "shape", "sha256"}
    return keys


def manifest_files(manifest: dict[str, Any]) -> dict[str, set[str]]:
    """``file_keys`` of the codec ``manifest`` records."""
    codec = manifest.get("codec")
    return file_keys(codec_name(manifest), codec.get("rerank", 0) if isinstance(codec, dict) else 0)


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in ``block``-byte pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def header_sha256(path: Path) -> str:
    """sha256 of a ``.npy`` file's header (the bytes before its data)."""
    offset = npy_layout(path)[0]
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(offset)).hexdigest()


def checkpoint_sha256(meta: dict[str, Any]) -> str | None:
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
    if not isinstance(sha, str) or not SHA256.fullmatch(sha):
        raise ConfigError(f"checkpoint_sha256 must be 64 lowercase hex digits, got {sha!r}")
    return sha


def check_manifest(manifest: dict[str, Any], manifest_path: Path) -> None:
    """Every file's entry holds exactly its keys, with checksums of the right form; the checkpoint is
    recorded with its sha256, or the index says it has none (``checkpoint_free``)."""
    files = manifest["files"]
    if not isinstance(files, dict):
        raise IndexFormatError(f"{manifest_path}: 'files' must be an object")
    expected = manifest_files(manifest)
    for name, keys in expected.items():
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
            if not isinstance(entry[key], str) or not SHA256.fullmatch(entry[key]):
                raise IndexFormatError(
                    f"{manifest_path}: {name} {key} must be 64 hex digits, got {entry[key]!r}"
                )
    block_rows = files[F7]["block_rows"] if F7 in expected else 1
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
        if not isinstance(sha, str) or not SHA256.fullmatch(sha):
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
