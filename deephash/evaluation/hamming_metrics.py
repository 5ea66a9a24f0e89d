"""Hamming-ranking metrics straight from packed codes: mAP, mAP@k, precision@k, Hamming-ball precision
and the Hamming precision-recall curve, in one pass over the database per query.

Hamming distances are small integers (0..bits), so ranking the database is a counting sort: numpy's
stable argsort of uint8/uint16 keys is a linear-time radix sort, and it keeps ties in database-index
order, the ``(distance, index)`` order of every ranking in this project. Each query's ranked list is
reduced at once to the positions of its relevant items; every metric follows from those positions and
the histogram of the query's distances:

* average precision: the m-th relevant item at 0-based position p contributes m / (p + 1);
* precision@k and mAP@k: the relevant positions below k;
* the Hamming ball of radius r holds the first ``#{d <= r}`` ranked items (a histogram prefix sum), so
  its precision and recall are the relevant positions below that count.

No (queries x database) matrix is ever built: queries go in blocks of about ``_BLOCK_CELLS`` distance
cells, the blocks spread over threads (numpy's sort releases the GIL). Per-query values are combined
in query order, so results do not depend on the block size or the thread count. The numbers equal
those of ``deephash.evaluation.metrics`` applied to the full stable ranking (up to float rounding).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from deephash.retrieval.codes import check_packed
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError

_BLOCK_CELLS = 1 << 21  # query x database x 64-bit-word cells per block of distances
_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")  # numpy >= 2.0
_POPCOUNT_TABLE = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


@dataclass(frozen=True)
class HammingMetrics:
    """metrics: ``{"mAP", "mAP@<k>", "precision@k": {"<k>": float}, "precision@r<radius>"}``;
    curve: (len(curve_ks),) mean precision at each curve k; pr: ``{"radius", "precision", "recall"}``,
    each (bits + 1,), the Hamming-ball curve; top: (q, min(top_n, n)) int64 database indices."""

    metrics: dict
    curve: np.ndarray
    pr: dict[str, np.ndarray]
    top: np.ndarray


def hamming_retrieval_metrics(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    bits: int,
    *,
    ks: Sequence[int] = (1, 10, 100, 1000),
    map_at: int = 1000,
    radius: int = 2,
    curve_ks: Sequence[int] = (),
    top_n: int = 10,
    threads: int | None = None,
) -> HammingMetrics:
    """Every Hamming-mode metric of the queries against the database, ranked by (distance, index).

    query_codes: (q, ceil(bits/8)) uint8 and db_codes: (n, ceil(bits/8)) uint8, packed with zero
    padding bits; query_labels: (q,) and db_labels: (n,) int, an item being relevant when the labels
    are equal. The conventions are those of ``deephash.evaluation.metrics``: AP is normalised by all
    relevant items, mAP@k by the relevant items found in the top k, precision@k keeps the denominator
    k when k > n, an empty Hamming ball scores precision 0 and a query without relevant items scores 0.
    ``threads``: worker threads (default: all cores).
    """
    queries, database, query_labels, db_labels, ks_arr, curve_arr, map_at = check_hamming_inputs(
        query_codes, db_codes, query_labels, db_labels, bits, ks, curve_ks, map_at, radius, top_n
    )
    q, n = len(queries), len(database)

    db_class, query_class = _class_ids(db_labels, query_labels)
    query_words, db_words = _words(queries), np.ascontiguousarray(_words(database).T)
    # ranks where relevant items are counted: the deepest first, then each k, min(map_at, n) last
    cut = np.concatenate([ks_arr, curve_arr, [map_at]]).clip(max=n)
    cut = np.concatenate([[cut.max()], cut])
    stats = _Stats(q, n, len(cut), bits, min(int(top_n), n))
    step = max(1, _BLOCK_CELLS // (n * db_words.shape[0]))

    def run(start: int) -> None:
        rows = slice(start, min(q, start + step))
        dist = _distances(query_words[rows], db_words, _dtype(bits))
        # 2 d + relevant: one gather in ranking order yields both the relevance and the distances
        tagged = dist.astype(_dtype(2 * bits + 1)) << 1
        tagged |= db_class[None, :] == query_class[rows, None]
        for i, d, t in zip(range(rows.start, rows.stop), dist, tagged):
            stats.add(i, d, t, cut)

    with ThreadPoolExecutor(max_workers=max(1, threads or os.cpu_count() or 1)) as pool:
        list(pool.map(run, range(0, q, step)))
    return stats.result(ks_arr, curve_arr, map_at, int(radius), bits)


class _Stats:
    """Per-query counts, written by row so threads never share a cell."""

    def __init__(self, q: int, n: int, n_cut: int, bits: int, top_n: int) -> None:
        self.inverse_rank = 1.0 / np.arange(1, n + 1)  # 1 / (p + 1) for 0-based rank p
        self.ordinal = np.arange(1, n + 1, dtype=np.float64)  # m for the m-th relevant item
        self.edges = 2 * np.arange(1, bits + 1)  # tagged values below 2 (r + 1) have distance <= r < bits
        self.ap = np.zeros(q)
        self.ap_at = np.zeros(q)
        self.hits_at = np.zeros((q, n_cut - 1), np.int64)  # relevant items among the top k, per k of cut[1:]
        self.n_relevant = np.zeros(q, np.int64)
        self.retrieved = np.zeros((q, bits + 1), np.int64)  # items within radius r, r = 0..bits
        self.hits_within = np.zeros((q, bits + 1), np.int64)  # relevant items within radius r
        self.top = np.zeros((q, top_n), np.int64)

    def add(self, i: int, dist: np.ndarray, tagged: np.ndarray, cut: np.ndarray) -> None:
        """One query: dist (n,) Hamming distances and tagged (n,) = 2 dist + relevant, in database order."""
        order = np.argsort(dist, kind="stable")  # radix sort: (distance, index) order
        ranked = tagged[order]
        relevant = (ranked & 1).astype(bool)
        pos = np.flatnonzero(relevant)  # 0-based ranks of the relevant items, ascending
        weights = self.inverse_rank[pos]
        self.n_relevant[i] = pos.size
        if pos.size:
            self.ap[i] = weights @ self.ordinal[: pos.size] / pos.size
        found = np.searchsorted(pos, cut[-1])  # cut[-1] = min(map_at, n)
        if found:
            self.ap_at[i] = weights[:found] @ self.ordinal[:found] / found
        self.hits_at[i] = np.cumsum(relevant[: cut[0]])[cut[1:] - 1]
        # ranked is sorted by distance, so "ranked < 2 (r + 1)" holds for a prefix: a binary search
        # finds the size of each Hamming ball even though ranked itself is not sorted within a distance
        self.retrieved[i, :-1] = np.searchsorted(ranked, self.edges.astype(ranked.dtype))
        self.retrieved[i, -1] = len(ranked)
        self.hits_within[i] = np.searchsorted(pos, self.retrieved[i])
        self.top[i] = order[: self.top.shape[1]]

    def result(
        self, ks: np.ndarray, curve_ks: np.ndarray, map_at: int, radius: int, bits: int
    ) -> HammingMetrics:
        q = len(self.ap)
        hits_k, hits_curve = self.hits_at[:, : len(ks)], self.hits_at[:, len(ks) : len(ks) + len(curve_ks)]
        precision = _ratio(self.hits_within, self.retrieved).mean(axis=0)
        recall = _ratio(self.hits_within, self.n_relevant[:, None]).mean(axis=0)
        metrics = {
            "mAP": float(self.ap.mean()),
            f"mAP@{map_at}": float(self.ap_at.mean()),
            "precision@k": {str(k): float(h / (q * k)) for k, h in zip(ks, hits_k.sum(axis=0))},
            f"precision@r{radius}": float(precision[min(radius, bits)]),
        }
        return HammingMetrics(
            metrics=metrics,
            curve=hits_curve.sum(axis=0) / (q * curve_ks),
            pr={"radius": np.arange(bits + 1), "precision": precision, "recall": recall},
            top=self.top,
        )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0."""
    return np.where(den > 0, num / np.maximum(den, 1), 0.0)


def _dtype(largest: int) -> type:
    """The narrowest unsigned type for values 0..largest (uint8 holds 255: 256-bit distances need uint16)."""
    return np.uint8 if largest < 256 else np.uint16 if largest < 65536 else np.int64


def _distances(query_words: np.ndarray, db_words_t: np.ndarray, dtype: type) -> np.ndarray:
    """(b, w) uint64 queries against (w, n) uint64 database words -> (b, n) Hamming distances in ``dtype``."""
    out = np.zeros((len(query_words), db_words_t.shape[1]), dtype)
    for w, column in enumerate(db_words_t):
        xor = np.bitwise_xor(query_words[:, w, None], column[None, :])
        if _HAS_BITWISE_COUNT:
            out += np.bitwise_count(xor)
        else:
            out += _POPCOUNT_TABLE[xor.view(np.uint8)].reshape(*xor.shape, 8).sum(axis=-1, dtype=dtype)
    return out


def _words(packed: np.ndarray) -> np.ndarray:
    """(n, c) uint8 -> (n, ceil(c / 8)) uint64, zero padded (zero bytes add nothing to a distance)."""
    out = np.zeros((len(packed), -(-packed.shape[1] // 8) * 8), np.uint8)
    out[:, : packed.shape[1]] = packed
    return out.view(np.uint64)


def _class_ids(db_labels: np.ndarray, query_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels as small integers 0..m-1 (faster comparisons); a query label absent from the database
    maps to m, which matches nothing."""
    classes, db_class = np.unique(db_labels, return_inverse=True)
    dtype = np.min_scalar_type(len(classes))
    pos = np.clip(np.searchsorted(classes, query_labels), 0, len(classes) - 1)
    query_class = np.where(classes[pos] == query_labels, pos, len(classes))
    return db_class.astype(dtype), query_class.astype(dtype)


def check_hamming_inputs(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    bits: int,
    ks: Sequence[int],
    curve_ks: Sequence[int],
    map_at: int,
    radius: int,
    top_n: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The checked inputs of the Hamming-mode metrics (CPU and device paths alike): packed query and
    database codes, flat labels, the k values of precision@k and of the curve, and mAP's cut-off."""
    bits = check_int(bits, "bits")
    queries, database = check_packed(query_codes, bits, "query codes"), check_packed(db_codes, bits)
    query_labels, db_labels = np.asarray(query_labels).ravel(), np.asarray(db_labels).ravel()
    q, n = len(queries), len(database)
    if q == 0 or n == 0 or len(query_labels) != q or len(db_labels) != n:
        raise ConfigError(
            f"expected non-empty codes with one label each, got {q} queries / {len(query_labels)} labels "
            f"and {n} database items / {len(db_labels)} labels"
        )
    check_int(radius, "Hamming radius", 0)
    check_int(top_n, "top_n", 0)
    return (
        queries,
        database,
        query_labels,
        db_labels,
        _positive_ints(ks, "precision@k"),
        _positive_ints(curve_ks, "curve k", allow_empty=True),
        check_int(map_at, "mAP@k"),
    )


def _positive_ints(values: Sequence[int], name: str, allow_empty: bool = False) -> np.ndarray:
    arr = np.asarray(values).ravel()
    if (arr.size == 0 and not allow_empty) or (
        arr.size and (not np.issubdtype(arr.dtype, np.integer) or np.any(arr < 1))
    ):
        raise ConfigError(f"{name} needs positive integer k values, got {arr.tolist()}")
    return arr.astype(np.int64)


__all__ = ["HammingMetrics", "hamming_retrieval_metrics"]
