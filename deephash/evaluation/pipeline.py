"""Evaluate the four search modes on encoded queries against a database, the way the paper does.

For each mode a *full* ranking of the database is built per query (ties by database index), from
which mAP, mAP@k and precision@k follow (``deephash.evaluation.metrics``):

* ``hamming``: all items by Hamming distance on the codes; computed straight from the codes by
  :func:`deephash.evaluation.hamming_metrics.hamming_retrieval_metrics` (a radix sort per query, no
  ranking matrix), which also gives precision@r and the Hamming precision-recall curve.
* ``hierarchical``: the coarse pool of :func:`deephash.retrieval.hierarchical_search` ranked by L2 on F7,
  followed by every other item in Hamming order (so its top k are exactly what the search returns).
* ``euclidean``: all items by L2 distance on F7 (the paper's exhaustive search).
* ``hamming_radius``: the unordered set within the radius: precision, recall and how often it is empty.

Queries are processed in blocks so a (queries x database) matrix never has to fit in memory at once.
Search speed (``queries_per_second``) is timed separately on the top-``max(ks)`` search each mode offers.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from deephash.evaluation.hamming_metrics import hamming_retrieval_metrics
from deephash.evaluation.metrics import (
    average_precision,
    average_precision_at_k,
    count_relevant,
    precision_curve,
)
from deephash.evaluation.torch_metrics import hamming_retrieval_metrics_torch
from deephash.retrieval.codes import hamming_distance_matrix
from deephash.retrieval.search import (
    MODES,
    HammingIndex,
    HammingSearch,
    PoolRule,
    euclidean_search,
    f7_rows,
    hierarchical_search,
    row_buffer,
)
from deephash.retrieval.store import EncodedItems
from deephash.retrieval.torch_search import TorchHammingIndex, torch_device
from deephash.retrieval.torch_search import hierarchical_search as device_hierarchical_search
from deephash.utils.errors import ConfigError

# the pool rule of conf/retrieval's defaults
EVAL_POOL = PoolRule(radius=2, min_pool=100, max_pool=10_000, pool_size=1000)
_BLOCK_CELLS = 1 << 24  # query x database cells per block (~16M: 64 MB of int32 distances)


@dataclass
class RetrievalReport:
    """metrics: per mode, the dict stored under ``metrics.json["modes"]``; curves: per mode, precision at
    ``curve_ks``; pr: the Hamming precision-recall curve; top: per mode, (q, top_n) database indices."""

    metrics: dict[str, dict] = field(default_factory=dict)
    curve_ks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    pr: dict[str, np.ndarray] = field(default_factory=dict)
    top: dict[str, np.ndarray] = field(default_factory=dict)


def default_curve_ks(n_database: int, max_k: int = 1000) -> np.ndarray:
    """k = 1..100 step 1, then step 10 up to max_k (the x axis of the paper's figures 4 and 6)."""
    ks = np.unique(np.concatenate([np.arange(1, 101), np.arange(100, max_k + 1, 10)]))
    return ks[ks <= max(1, min(max_k, n_database))]


def evaluate_retrieval(
    database: EncodedItems,
    queries: EncodedItems,
    bits: int,
    *,
    modes: Sequence[str] = MODES,
    ks: Sequence[int] = (1, 10, 100, 1000),
    map_at: int = 1000,
    pool: PoolRule = EVAL_POOL,
    top_n: int = 10,
    curve_ks: np.ndarray | None = None,
    index: HammingSearch | None = None,
    device: str = "cpu",
) -> RetrievalReport:
    """Metrics of every requested mode (see the module docstring) for ``queries`` against ``database``.

    ``pool``: the hierarchical pool rule (its defaults resolved for k = max(ks)); its radius is also
    that of ``hamming_radius`` and of precision@r. ``device``: ``cpu`` (numpy and FAISS) or ``cuda``:
    the exact coarse Hamming stage, the hierarchical pool scoring and the Hamming-mode metrics in torch
    on that device (``deephash.retrieval.torch_search``), with the same results; a sub-linear coarse
    ``index`` stays on the CPU."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ConfigError(f"unknown retrieval mode(s) {unknown}; expected any of: {', '.join(MODES)}")
    n = len(database.labels)
    if n == 0 or len(queries.labels) == 0:
        raise ConfigError(
            f"retrieval needs a non-empty database and query set, got {n} and {len(queries.labels)}"
        )
    on_device = device != "cpu"
    if on_device:
        dev = torch_device(device)
        if index is None or isinstance(index, HammingIndex):
            index = TorchHammingIndex(database.codes, bits, dev)
    index = index or HammingIndex(database.codes, bits)
    curve_ks = default_curve_ks(n) if curve_ks is None else np.asarray(curve_ks)
    report = RetrievalReport(curve_ks=curve_ks)
    n_relevant = count_relevant(queries.labels, database.labels)
    kmax = max(ks)
    pool = pool.resolved(kmax)
    radius = pool.radius
    # the pool is never larger than this (a radius pool <= max_pool, else the pool_size nearest codes),
    # so a hierarchical search with k = pool_cap returns each query's whole pool, re-ranked
    pool_cap = max(pool.max_pool, pool.pool_size)

    for mode in modes:
        if mode == "hamming_radius":
            report.metrics[mode] = _radius_mode(database, queries, radius, index)
            continue
        if mode == "hamming":
            metrics_fn = (
                partial(hamming_retrieval_metrics_torch, device=dev)
                if on_device
                else hamming_retrieval_metrics
            )
            found = metrics_fn(
                queries.codes,
                database.codes,
                queries.labels,
                database.labels,
                bits,
                ks=ks,
                map_at=map_at,
                radius=radius,
                curve_ks=curve_ks,
                top_n=top_n,
            )
            report.metrics[mode] = found.metrics | _time_mode(mode, database, queries, kmax, index, pool)
            report.curves[mode], report.pr, report.top[mode] = found.curve, found.pr, found.top
            continue
        sums = _Accumulator(len(ks), len(curve_ks))
        tops = []
        for rows in _query_blocks(len(queries.labels), n):
            q = queries.take(rows)
            if mode == "hierarchical":
                dist = hamming_distance_matrix(q.codes, database.codes)
                pooled = _hierarchical(index)(index, database.f7, q.codes, q.f7, pool_cap, pool).idx
                ranking = _pool_first(pooled, _stable_ranking(dist))
            else:  # euclidean
                ranking = _stable_ranking(_l2_block(q.f7, database.f7))
            rel = database.labels[ranking] == q.labels[:, None]
            sums.add(rel, n_relevant[rows], ks, map_at, curve_ks)
            tops.append(ranking[:, :top_n])
        result = sums.result(ks, map_at)
        result.update(_time_mode(mode, database, queries, kmax, index, pool))
        report.metrics[mode] = result
        report.curves[mode] = sums.curve()
        report.top[mode] = np.concatenate(tops)
    return report


def settings(retrieval: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`evaluate_retrieval` from a ``retrieval`` config (conf/retrieval)."""
    return {
        "modes": list(retrieval["modes"]),
        "ks": [int(k) for k in retrieval["ks"]],
        "map_at": int(retrieval["map_at"]),
        "pool": pool_rule(retrieval),
        "device": str(retrieval.get("device", "cpu")),
    }


def pool_rule(retrieval: Mapping[str, Any]) -> PoolRule:
    """The hierarchical pool rule of a ``retrieval`` config (conf/retrieval)."""
    return PoolRule(
        radius=int(retrieval["radius"]),
        min_pool=int(retrieval["min_pool"]),
        max_pool=int(retrieval["max_pool"]),
        pool_size=int(retrieval["pool_size"]),
    )


# ---------------------------------------------------------------- rankings


def _stable_ranking(dist: np.ndarray) -> np.ndarray:
    """(b, n) distances -> (b, n) database indices by (distance, index)."""
    if dist.dtype.kind in "iu" and dist.size and dist.min() >= 0 and dist.max() < 1 << 16:
        dist = dist.astype(np.uint16)  # numpy's stable sort of 16-bit keys is a linear-time radix sort
    elif dist.dtype == np.float64 and dist.size and not np.signbit(dist).any() and not np.isnan(dist).any():
        # The bit patterns of non-negative floats (no -0.0, no NaN) order as their values, and numpy's
        # stable sort compares uint64 keys about twice as fast as float64 ones: the same order.
        dist = dist.view(np.uint64)
    return np.argsort(dist, axis=1, kind="stable")


def _pool_first(pool: np.ndarray, hamming_ranking: np.ndarray) -> np.ndarray:
    """The re-ranked pool (b, m) (-1 padded) followed by the remaining items in Hamming order."""
    b, n = hamming_ranking.shape
    out = np.empty((b, n), np.int64)
    for i in range(b):
        head = pool[i][pool[i] >= 0]
        rest = np.ones(n, bool)
        rest[head] = False
        out[i, : len(head)] = head
        out[i, len(head) :] = hamming_ranking[i][rest[hamming_ranking[i]]]
    return out


def _l2_block(queries: np.ndarray, db_f7: np.ndarray, rows: int = 8192) -> np.ndarray:
    """Squared L2 distances (b, n) in float64 (accurate enough to order distinct distances), never -0.0.

    The database is read ``rows`` rows at a time into two reused buffers (float32, then float64), so the
    float64 copy of the database is never made whole and no block faults in fresh pages."""
    q = np.asarray(queries, np.float64)
    qn = np.einsum("ij,ij->i", q, q)
    n = db_f7.shape[0]
    out = np.empty((len(q), n), np.float64)
    buffer32 = row_buffer(db_f7, rows)
    buffer64 = np.empty(buffer32.shape, np.float64)
    for s in range(0, n, rows):
        x32 = f7_rows(db_f7, slice(s, min(n, s + rows)), buffer32)  # float16 widened by torch
        x = buffer64[: len(x32)]
        np.copyto(x, x32)
        block = out[:, s : s + len(x)]
        block[...] = qn[:, None] - 2 * (q @ x.T) + np.einsum("ij,ij->i", x, x)[None, :]
    np.maximum(out, 0, out=out)
    out += 0.0  # -0.0 -> 0.0, so that the bit patterns order the distances (see _stable_ranking)
    return out


def _hierarchical(index: HammingSearch) -> Callable[..., Any]:
    """The hierarchical search that matches ``index``: on its torch device, or the CPU one."""
    return device_hierarchical_search if isinstance(index, TorchHammingIndex) else hierarchical_search


def _query_blocks(q: int, n: int) -> list[slice]:
    step = max(1, _BLOCK_CELLS // max(1, n))
    return [slice(s, min(q, s + step)) for s in range(0, q, step)]


# ---------------------------------------------------------------- accumulation over query blocks


class _Accumulator:
    """Sums of per-query metrics over blocks; every metric is a plain mean over queries."""

    def __init__(self, n_ks: int, n_curve: int) -> None:
        self.count = 0
        self.ap = 0.0
        self.ap_at = 0.0
        self.p_at = np.zeros(n_ks)
        self.p_curve = np.zeros(n_curve)

    def add(self, rel, n_relevant, ks, map_at, curve_ks) -> None:
        b = len(rel)
        self.count += b
        self.ap += float(average_precision(rel, n_relevant).sum())
        self.ap_at += float(average_precision_at_k(rel, map_at).sum())
        self.p_at += precision_curve(rel, ks) * b
        self.p_curve += precision_curve(rel, curve_ks) * b

    def result(self, ks, map_at) -> dict:
        return {
            "mAP": self.ap / self.count,
            f"mAP@{map_at}": self.ap_at / self.count,
            "precision@k": {str(k): float(p / self.count) for k, p in zip(ks, self.p_at)},
        }

    def curve(self) -> np.ndarray:
        return self.p_curve / self.count


# ---------------------------------------------------------------- per-mode extras


def _radius_mode(database: EncodedItems, queries: EncodedItems, radius: int, index: HammingSearch) -> dict:
    """Hamming-ball retrieval: everything within ``radius`` (inclusive), unordered."""
    start = time.perf_counter()
    results = index.range_search(queries.codes, radius)
    seconds = time.perf_counter() - start
    sizes = np.array([len(idx) for _, idx in results])
    hits = np.array(
        [int((database.labels[idx] == label).sum()) for (_, idx), label in zip(results, queries.labels)]
    )
    n_relevant = count_relevant(queries.labels, database.labels)
    precision = np.where(sizes > 0, hits / np.maximum(sizes, 1), 0.0)
    recall = np.where(n_relevant > 0, hits / np.maximum(n_relevant, 1), 0.0)
    return {
        "radius": int(radius),
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "mean_results": float(sizes.mean()),
        "empty_fraction": float((sizes == 0).mean()),
        "queries_per_second": len(queries.labels) / max(seconds, 1e-9),
    }


def _time_mode(
    mode: str, database: EncodedItems, queries: EncodedItems, k: int, index: HammingSearch, pool: PoolRule
) -> dict:
    """Wall time of the top-k search this mode offers, over all queries."""
    k = min(k, len(database.labels))
    start = time.perf_counter()
    if mode == "hamming":
        index.search(queries.codes, k)
    elif mode == "hierarchical":
        _hierarchical(index)(index, database.f7, queries.codes, queries.f7, k, pool)
    else:
        euclidean_search(database.f7, queries.f7, k)
    seconds = max(time.perf_counter() - start, 1e-9)
    q = len(queries.labels)
    return {"queries_per_second": q / seconds, "ms_per_query": 1000 * seconds / q}


__all__ = ["MODES", "RetrievalReport", "default_curve_ks", "evaluate_retrieval", "pool_rule", "settings"]
