"""A sharded index: indexes built independently (one per node, DDP rank or folder), searched as one.

Shard s holds the items ``offsets[s]:offsets[s + 1]`` of the whole, so an item's global id is its shard's
offset plus its row there, and shards listed in the order of a split's rows number its items as a single index
of that split would. Searching them as one is exact, not a merge of per-shard answers:

* ``ShardedHamming`` (a ``HammingSearch``) merges each shard's k nearest codes, and concatenates their range
  searches, by (distance, global id); the hierarchical pools are thus those of one index over every code.
* ``ShardedRows`` (a ``ScoredRows``) scores each pool pair on the shard holding the item, with that shard's
  codec, and merges each shard's exhaustive top k by (distance, global id).

So results equal those of a single index of the same rows and codec parameters (tested for float16). Shards
that trained their own PCA or PQ codec rank their rows by their own codec's distances.

A shard list is a list of index directories or ``shards.json`` (``write_shard_list``): the shards' paths
relative to it, their counts and the sha256 of each manifest, checked on load.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deephash.retrieval.exhaustive import euclidean_search
from deephash.retrieval.hamming import HammingSearch
from deephash.retrieval.index_reader import load_index
from deephash.retrieval.items import IndexStore
from deephash.retrieval.manifest import MANIFEST, sha256_file
from deephash.retrieval.pairs import score_pairs
from deephash.retrieval.topk import pad_columns, select_topk
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError, IndexFormatError
from deephash.utils.io import atomic_write_json

SHARD_LIST = "shards.json"
_SHARD_FORMAT = "deephash-shards/1"
_CHUNK = 65536
_LAST = np.iinfo(np.int64).max  # the global id of an empty slot while merging: after every real one


def merge_topk(parts: Sequence[tuple[np.ndarray, np.ndarray]], offsets: np.ndarray, k: int, empty: Any):
    """Each shard's (dist (q, k_s), idx (q, k_s) local, -1 empty) -> the k best by (distance, global id):
    (dist (q, k), idx (q, k) int64), ``empty`` distance and -1 in the slots past every result."""
    dist = np.hstack([np.where(i >= 0, d, empty) for d, i in parts])
    idx = np.hstack([np.where(i >= 0, i + off, _LAST) for (_, i), off in zip(parts, offsets)])
    dist, idx = select_topk(dist, idx, k)
    idx = np.where(idx == _LAST, -1, idx)
    return pad_columns(dist, k, empty), pad_columns(idx, k, -1)


class ShardedHamming:
    """The shards' Hamming indexes (``indexes[s]`` over shard s's codes) as one ``HammingSearch``."""

    def __init__(self, indexes: Sequence[HammingSearch]) -> None:
        if len({(i.bits, i.code_bytes) for i in indexes}) != 1:
            raise ConfigError("the shards' Hamming indexes differ in code length")
        self.indexes = list(indexes)
        self.bits, self.code_bytes = indexes[0].bits, indexes[0].code_bytes
        self.offsets = np.cumsum([0] + [i.ntotal for i in indexes])

    @property
    def ntotal(self) -> int:
        return int(self.offsets[-1])

    def search(self, query_packed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        parts = [index.search(query_packed, k) for index in self.indexes]
        empty = np.iinfo(np.int32).max
        dist, idx = merge_topk(parts, self.offsets, k, empty)
        return np.where(idx >= 0, dist, -1).astype(np.int32), idx

    def range_search_flat(self, query_packed: np.ndarray, radius: int) -> tuple[np.ndarray, ...]:
        q = len(query_packed)
        owners, dists, items = [], [], []
        for index, off in zip(self.indexes, self.offsets):
            lims, dist, idx = index.range_search_flat(query_packed, radius)
            owners.append(np.repeat(np.arange(q), np.diff(lims)))
            dists.append(dist)
            items.append(idx + off)
        owner, dist, idx = np.concatenate(owners), np.concatenate(dists), np.concatenate(items)
        order = np.lexsort((idx, dist, owner))
        lims = np.r_[0, np.cumsum(np.bincount(owner, minlength=q))].astype(np.int64)
        return lims, dist[order], idx[order]

    def range_search(self, query_packed: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        lims, dist, idx = self.range_search_flat(query_packed, radius)
        return [(dist[a:b], idx[a:b]) for a, b in zip(lims[:-1], lims[1:])]


class ShardedRows:
    """The shards' re-rank rows as one (n, d) ``ScoredRows``; queries are the model's features, put into each
    shard's codec space by that shard (``IndexStore.query_features``)."""

    ndim = 2

    def __init__(self, stores: Sequence[IndexStore]) -> None:
        self.stores = list(stores)
        self.offsets = np.cumsum([0] + [s.count for s in stores])
        self.shape = (int(self.offsets[-1]), stores[0].feature_dim)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def _parts(self, items: np.ndarray) -> list[tuple[int, np.ndarray]]:
        shard = np.searchsorted(self.offsets, items, side="right") - 1
        return [(s, np.flatnonzero(shard == s)) for s in range(len(self.stores))]

    def pair_sqdist(self, queries: np.ndarray, owner: np.ndarray, items: np.ndarray) -> np.ndarray:
        out = np.empty(len(items), np.float32)
        for s, mine in self._parts(items):
            if mine.size:
                store = self.stores[s]
                local = items[mine] - self.offsets[s]
                out[mine] = score_pairs(store.f7, store.query_features(queries), owner[mine], local, _CHUNK)
        return out

    def nearest(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        parts = [euclidean_search(s.f7, s.query_features(queries), k) for s in self.stores]
        return merge_topk(parts, self.offsets, k, np.float32(np.inf))

    def sqdist_block(self, queries: np.ndarray, start: int, stop: int) -> np.ndarray:
        items = np.arange(start, stop)
        owner = np.repeat(np.arange(len(queries)), len(items))
        return self.pair_sqdist(queries, owner, np.tile(items, len(queries))).reshape(
            len(queries), len(items)
        )

    def __getitem__(self, key: Any) -> np.ndarray:
        """Rows ``key`` as float32, each as its shard stores it."""
        items = np.arange(self.shape[0])[key]
        flat = np.atleast_1d(items)
        out: np.ndarray | None = None
        for s, mine in self._parts(flat):
            if mine.size:
                rows = np.asarray(self.stores[s].f7[flat[mine] - self.offsets[s]], np.float32)
                out = np.zeros((len(flat), rows.shape[1]), np.float32) if out is None else out
                out[mine] = rows
        out = np.zeros((len(flat), self.shape[1]), np.float32) if out is None else out
        return out.reshape(*np.shape(items), out.shape[1])


def shard_rows(rows: np.ndarray, shard: Any, num_shards: Any) -> np.ndarray:
    """The ``shard``-th of ``num_shards`` equal consecutive parts of ``rows`` (a split's items, in order)."""
    num_shards = check_int(num_shards, "num_shards", 1)
    shard = check_int(shard, "shard", 0, num_shards - 1)
    return rows[shard * len(rows) // num_shards : (shard + 1) * len(rows) // num_shards]


def shard_paths(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """The shard directories of a list of index directories, a ``shards.json`` or a directory holding one."""
    if not isinstance(source, (str, os.PathLike)):
        paths = [Path(p) for p in source]
        if not paths:
            raise ConfigError("a sharded index needs at least one shard")
        return paths
    path = Path(source)
    if path.is_dir() and (path / SHARD_LIST).is_file():
        path = path / SHARD_LIST
    if path.is_dir():
        return [path]
    try:
        listing = json.loads(path.read_text(encoding="utf-8"))
        entries = listing["shards"] if listing.get("format") == _SHARD_FORMAT else None
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as err:
        raise IndexFormatError(f"{path} is not an index or a shard list ({err})") from None
    if not isinstance(entries, list) or not entries:
        raise IndexFormatError(f"{path} is not a shard list (format {_SHARD_FORMAT}, a non-empty 'shards')")
    paths = []
    for entry in entries:
        shard = (path.parent / str(entry.get("path"))).resolve()
        if not (shard / MANIFEST).is_file() or sha256_file(shard / MANIFEST) != entry.get("manifest_sha256"):
            raise IndexFormatError(
                f"shard {shard} of {path} is missing or was rebuilt since the list was written: "
                "write the list again (write_shard_list)"
            )
        paths.append(shard)
    return paths


def write_shard_list(path: str | os.PathLike, shards: Sequence[str | os.PathLike]) -> Path:
    """Write ``shards.json`` at ``path`` (a file, or a directory to hold it) listing ``shards`` in order;
    each is loaded first, so a broken shard fails here."""
    path = Path(path)
    path = path if path.suffix == ".json" else path / SHARD_LIST
    stores = load_shards(list(shards))
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [
        {
            "path": os.path.relpath(store.path, path.parent),
            "count": store.count,
            "manifest_sha256": sha256_file(store.path / MANIFEST),
        }
        for store in stores.f7.stores
    ]
    atomic_write_json(path, {"format": _SHARD_FORMAT, "count": stores.count, "shards": entries})
    return path


def load_shards(source: str | os.PathLike | Sequence[str | os.PathLike], **expect: Any) -> IndexStore:
    """The shards of ``source`` (``shard_paths``) as one ``IndexStore``: codes, labels and ids concatenated,
    ``f7`` a ``ShardedRows``, the Hamming index a ``ShardedHamming``. ``expect``: ``load_index``'s checks,
    applied to every shard. The shards must agree on code length, feature width, checkpoint and classes."""
    paths = shard_paths(source)
    stores = [load_index(p, **expect) for p in paths]
    first = stores[0]
    meta = first.manifest.get("meta") or {}
    for store in stores[1:]:
        other = store.manifest.get("meta") or {}
        for key, mine, theirs in (
            ("bits", first.bits, store.bits),
            ("feature_dim", first.feature_dim, store.feature_dim),
            (
                "checkpoint_sha256",
                first.manifest.get("checkpoint_sha256"),
                store.manifest.get("checkpoint_sha256"),
            ),
            ("class_names", meta.get("class_names"), other.get("class_names")),
            ("codec", first.codec and first.codec.spec, store.codec and store.codec.spec),
        ):
            if mine != theirs:
                raise IndexFormatError(
                    f"shard {store.path} has {key} {theirs!r} but shard {first.path} has {mine!r}: "
                    "the shards of one index come from one model and one codec"
                )
    if len(stores) == 1:
        return first
    if first.codec is not None and first.codec.rerank:
        raise ConfigError(
            f"shard {first.path} re-ranks its PQ results exactly (codec_rerank), which shards searched as one "
            "do not: search each shard alone, or build the shards without codec_rerank"
        )
    hamming = ShardedHamming([s.hamming_index for s in stores])
    return IndexStore(
        codes=np.concatenate([s.codes for s in stores]),
        f7=ShardedRows(stores),
        labels=np.concatenate([s.labels for s in stores]),
        ids=[i for s in stores for i in s.ids],
        path=first.path,
        bits=first.bits,
        manifest={**first.manifest, "count": int(hamming.ntotal), "shards": [str(p) for p in paths]},
        _hamming=hamming,
    )
