"""What the Hamming-mode metrics are computed from, on the CPU or a torch device alike: the checked inputs, the
per-query counts (``HammingCounts``) and the metrics they give (``HammingMetrics``).

The conventions are those of ``deephash.evaluation.metrics``: AP is normalised by all relevant items, mAP@k
by the relevant items found in the top k, precision@k keeps the denominator k when k > n, an empty Hamming
ball scores precision 0 and a query without relevant items scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from deephash.retrieval.codes import check_packed
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError


@dataclass(frozen=True)
class HammingMetrics:
    """metrics: ``{"mAP", "mAP@<k>", "precision@k": {"<k>": float}, "precision@r<radius>"}``;
    curve: (len(curve_ks),) mean precision at each curve k; pr: ``{"radius", "precision", "recall"}``,
    each (bits + 1,), the Hamming-ball curve; top: (q, min(top_n, n)) int64 database indices."""

    metrics: dict
    curve: np.ndarray
    pr: dict[str, np.ndarray]
    top: np.ndarray


@dataclass(frozen=True)
class HammingInputs:
    """The checked inputs of ``check_hamming_inputs``: packed codes ``queries`` (q, c) and ``database``
    (n, c) uint8, flat ``query_labels`` (q,) and ``db_labels`` (n,), the code length, the k of precision@k
    (``ks``) and of the precision curve (``curve_ks``) as int64 arrays, mAP's cut-off, the radius of
    precision@r and the number of top items kept per query."""

    queries: np.ndarray
    database: np.ndarray
    query_labels: np.ndarray
    db_labels: np.ndarray
    bits: int
    ks: np.ndarray
    curve_ks: np.ndarray
    map_at: int
    radius: int
    top_n: int


class HammingCounts:
    """Per-query counts from which every Hamming-mode metric follows (``result``), written by row so threads
    never share a cell: by ``add`` from each query's distances (the CPU path), or whole blocks of rows at once
    (``deephash.evaluation.torch_metrics``)."""

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

    def result(self, inputs: HammingInputs) -> HammingMetrics:
        """The metrics of the counted queries: precision@k for each of ``inputs.ks``, the curve at its
        ``curve_ks``, mAP@``map_at``, precision@r``radius`` and the precision-recall curve over every radius."""
        ks, curve_ks, map_at, radius, bits = (
            inputs.ks,
            inputs.curve_ks,
            inputs.map_at,
            inputs.radius,
            inputs.bits,
        )
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
) -> HammingInputs:
    """The checked inputs of the Hamming-mode metrics (CPU and device paths alike); a one-line ConfigError
    for a bad one."""
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
    return HammingInputs(
        queries=queries,
        database=database,
        query_labels=query_labels,
        db_labels=db_labels,
        bits=bits,
        ks=_positive_ints(ks, "precision@k"),
        curve_ks=_positive_ints(curve_ks, "curve k", allow_empty=True),
        map_at=check_int(map_at, "mAP@k"),
        radius=int(radius),
        top_n=int(top_n),
    )


def class_ids(db_labels: np.ndarray, query_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels as small integers 0..m-1 (faster comparisons); a query label absent from the database
    maps to m, which matches nothing."""
    classes, db_class = np.unique(db_labels, return_inverse=True)
    dtype = np.min_scalar_type(len(classes))
    pos = np.clip(np.searchsorted(classes, query_labels), 0, len(classes) - 1)
    query_class = np.where(classes[pos] == query_labels, pos, len(classes))
    return db_class.astype(dtype), query_class.astype(dtype)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0."""
    return np.where(den > 0, num / np.maximum(den, 1), 0.0)


def _positive_ints(values: Sequence[int], name: str, allow_empty: bool = False) -> np.ndarray:
    arr = np.asarray(values).ravel()
    if (arr.size == 0 and not allow_empty) or (
        arr.size and (not np.issubdtype(arr.dtype, np.integer) or np.any(arr < 1))
    ):
        raise ConfigError(f"{name} needs positive integer k values, got {arr.tolist()}")
    return arr.astype(np.int64)
