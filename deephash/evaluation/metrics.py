"""Retrieval metrics: precision@k, mAP, mAP@k, Hamming-ball precision, Hamming precision-recall.

Pure functions: arrays in, numbers out. An item is relevant to a query when their class labels are
equal (paper eq. 3). A ranking is ordered by (distance, database index) ascending, so ties go to the
lower index. ``rel (q, n) bool`` is the relevance of each query's ranked list, ``rel[i, j]`` for the
item at rank ``j + 1``.

torchmetrics' retrieval metrics loop over queries on a flat (query id, score, target) layout, far
too slow for 1,000 x 60,000; these are vectorised numpy. Queries are processed in row blocks of
``chunk`` rows (default: about 16M matrix cells per block), so integer intermediates stay bounded
and a 1,000 x 1,000,000 evaluation fits in memory. ``rel`` may be a ``numpy.memmap``.

These serve the rankings of the hierarchical and euclidean modes, and any ranking given as indices.
The Hamming mode goes through ``deephash.evaluation.hamming_metrics``, which gets the same numbers
straight from packed codes, without a (q, n) ranking.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from deephash.utils.errors import ConfigError

KS = (1, 10, 100, 1000)  # the default precision@k cut-offs (conf/retrieval/default.yaml lists the same)
_BLOCK_CELLS = 1 << 24


# ---------------------------------------------------------------- relevance


def count_relevant(query_labels: np.ndarray, db_labels: np.ndarray) -> np.ndarray:
    """R_i, the number of database items sharing query i's label: (q,), (N,) -> (q,) int64."""
    query_labels = np.asarray(query_labels)
    labels, counts = np.unique(np.asarray(db_labels), return_counts=True)
    if labels.size == 0:
        return np.zeros(len(query_labels), dtype=np.int64)
    pos = np.clip(np.searchsorted(labels, query_labels), 0, labels.size - 1)
    return np.where(labels[pos] == query_labels, counts[pos], 0).astype(np.int64)


# ---------------------------------------------------------------- precision@k


def precision_curve(rel: np.ndarray, ks: Sequence[int], chunk: int | None = None) -> np.ndarray:
    """Mean precision@k for every k in ``ks`` (the curves of the paper's figures 4 and 6).

    precision@k = (1/q) sum_i (#relevant among the top k of query i) / k.
    When the ranking is shorter than k (n < k) the denominator is still k: missing items count as
    irrelevant, so a shallow list cannot score a high precision@k.

    rel: (q, n) bool; ks: (m,) positive ints -> (m,) float64.
    """
    rel = _check_rel(rel)
    ks = _check_ks(ks)
    q, n = rel.shape
    cols = np.minimum(ks, n)
    hits = np.zeros(len(ks), dtype=np.float64)
    if n > 0:
        for rows in _row_blocks(q, n, chunk):
            block = np.cumsum(rel[rows, : cols.max()], axis=1, dtype=np.int64)
            hits += block[:, cols - 1].sum(axis=0)
    return hits / (q * ks)


def precision_at_k(rel: np.ndarray, ks: Sequence[int], chunk: int | None = None) -> dict[int, float]:
    """``{k: precision@k}`` with precision@k as in :func:`precision_curve` (denominator k even if n < k)."""
    ks = _check_ks(ks)
    return {int(k): float(p) for k, p in zip(ks, precision_curve(rel, ks, chunk))}


# ---------------------------------------------------------------- average precision


def average_precision(
    rel: np.ndarray, n_relevant: np.ndarray | None = None, chunk: int | None = None
) -> np.ndarray:
    """Per-query average precision over the whole ranking, normalised by all relevant items.

    AP_i = (1/R_i) sum_{j : rel[i, j]} precision@(j+1), with R_i = n_relevant[i] the number of
    relevant items in the whole database (default: rel.sum(1), right when rel covers the database).
    A query with R_i = 0 scores 0. If rel is truncated to the top n, relevant items beyond it add
    nothing to the sum, so the result is a lower bound of the full AP.

    rel: (q, n) bool; n_relevant: (q,) int -> (q,) float64 in [0, 1].
    """
    rel = _check_rel(rel)
    q, n = rel.shape
    if n_relevant is not None:
        n_relevant = np.asarray(n_relevant)
        if n_relevant.shape != (q,):
            raise ValueError(f"expected n_relevant of shape ({q},), got {n_relevant.shape}")
    ap = np.zeros(q, dtype=np.float64)
    for rows in _row_blocks(q, n, chunk):
        sums, found = _precision_sums(rel[rows])
        total = found if n_relevant is None else n_relevant[rows]
        if np.any(found > total):
            raise ValueError("n_relevant is smaller than the relevant items found in the ranking")
        ap[rows] = np.where(total > 0, sums / np.maximum(total, 1), 0.0)
    return ap


def mean_average_precision(
    rel: np.ndarray, n_relevant: np.ndarray | None = None, chunk: int | None = None
) -> float:
    """mAP = mean over queries of :func:`average_precision` (normalised by all relevant items)."""
    return float(average_precision(rel, n_relevant, chunk).mean())


def average_precision_at_k(rel: np.ndarray, k: int, chunk: int | None = None) -> np.ndarray:
    """Per-query AP over the top k, normalised by the relevant items found in the top k.

    AP@k_i = (1/F_i) sum_{j < k : rel[i, j]} precision@(j+1), F_i = rel[i, :k].sum(); 0 when F_i = 0.
    This is the authors' evaluation (caffe-cvprw15 ``analysis/precision.m``: ``AP(i) =
    sum(P.*buffer_yes) / sum(buffer_yes)`` over the top K, 0 when nothing relevant is retrieved),
    also the "mAP@k" of the deep-hashing literature. It is never below AP with all-relevant
    normalisation. If n < k the whole ranking is used.

    rel: (q, >=k) bool -> (q,) float64 in [0, 1].
    """
    rel = _check_rel(rel)
    if int(k) < 1:
        raise ConfigError(f"mAP@k needs a positive k, got {k}")
    q, n = rel.shape
    k = min(int(k), n)
    ap = np.zeros(q, dtype=np.float64)
    for rows in _row_blocks(q, k, chunk):
        sums, found = _precision_sums(rel[rows, :k])
        ap[rows] = np.where(found > 0, sums / np.maximum(found, 1), 0.0)
    return ap


def map_at_k(rel: np.ndarray, k: int, chunk: int | None = None) -> float:
    """mAP@k = mean over queries of :func:`average_precision_at_k` (normalised by relevant found in top k)."""
    return float(average_precision_at_k(rel, k, chunk).mean())


def _precision_sums(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each row: sum of precision@(j+1) over relevant positions j, and the number of them.

    Only relevant cells are visited: the m-th relevant item of a row at 0-based column c has
    precision m / (c + 1), so no (b, n) float matrix is built.
    """
    b = block.shape[0]
    rows, cols = np.nonzero(block)
    found = np.bincount(rows, minlength=b)
    starts = np.cumsum(found) - found
    nth = np.arange(1, rows.size + 1) - starts[rows]
    sums = np.bincount(rows, weights=nth / (cols + 1.0), minlength=b)
    return sums, found


# ---------------------------------------------------------------- Hamming space


def hamming_ranking(hamming_dist: np.ndarray, k: int | None = None, chunk: int | None = None) -> np.ndarray:
    """Database indices sorted by (distance, index) ascending: (q, n) int -> (q, n) int64, or (q, k).

    With ``k`` only the top k columns are kept. Hamming distances (< 2**16) use a linear-time radix
    sort; larger integer distances are partitioned then the top k sorted.
    """
    dist = _check_dist(hamming_dist)
    if k is not None and int(k) < 1:
        raise ConfigError(f"hamming_ranking needs a positive k, got {k}")
    q, n = dist.shape
    width = n if k is None else min(int(k), n)
    out = np.empty((q, width), dtype=np.int64)
    small = dist.size > 0 and dist.min() >= 0 and dist.max() <= np.iinfo(np.uint16).max
    for rows in _row_blocks(q, n, chunk):
        block = dist[rows]
        if small:
            # numpy's stable sort is a linear-time radix sort on 16-bit ints, faster than any partition.
            out[rows] = np.argsort(block.astype(np.uint16), axis=1, kind="stable")[:, :width]
        elif width == n:
            out[rows] = np.argsort(block, axis=1, kind="stable")
        else:
            # A unique key per item makes the partition exact under the (distance, index) order.
            key = block.astype(np.int64) * n + np.arange(n)
            top = np.argpartition(key, width - 1, axis=1)[:, :width]
            order = np.argsort(np.take_along_axis(key, top, axis=1), axis=1)
            out[rows] = np.take_along_axis(top, order, axis=1)
    return out


def hamming_ball_precision(
    hamming_dist: np.ndarray, rel: np.ndarray, radius: int = 2, chunk: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-query precision of the Hamming ball {j : d[i, j] <= radius}, and whether the ball is empty.

    hamming_dist: (q, n) int and rel: (q, n) bool in the same column order (database order or ranked)
    -> precision (q,) float64, with 0 for an empty ball, and empty (q,) bool.
    """
    dist, rel = _check_pair(hamming_dist, rel)
    if int(radius) < 0:
        raise ConfigError(f"Hamming radius must be >= 0, got {radius}")
    q, n = dist.shape
    precision = np.zeros(q, dtype=np.float64)
    empty = np.zeros(q, dtype=bool)
    for rows in _row_blocks(q, n, chunk):
        inside = dist[rows] <= radius
        n_in = inside.sum(axis=1)
        n_hit = (inside & rel[rows]).sum(axis=1)
        precision[rows] = np.where(n_in > 0, n_hit / np.maximum(n_in, 1), 0.0)
        empty[rows] = n_in == 0
    return precision, empty


def precision_within_radius(
    hamming_dist: np.ndarray, rel: np.ndarray, radius: int = 2, chunk: int | None = None
) -> float:
    """Mean over queries of the precision of the items within Hamming distance <= radius.

    A query whose ball is empty scores 0 (the convention of the CNNH / KSH evaluations), so codes
    that scatter the database are penalised; :func:`empty_ball_fraction` reports how often it happens.
    hamming_dist: (q, n) int, rel: (q, n) bool, same column order.
    """
    return float(hamming_ball_precision(hamming_dist, rel, radius, chunk)[0].mean())


def empty_ball_fraction(hamming_dist: np.ndarray, radius: int = 2, chunk: int | None = None) -> float:
    """Fraction of queries with no database item within Hamming distance <= radius: (q, n) int -> float."""
    dist = _check_dist(hamming_dist)
    if int(radius) < 0:
        raise ConfigError(f"Hamming radius must be >= 0, got {radius}")
    q, n = dist.shape
    empty = np.concatenate([~(dist[rows] <= radius).any(axis=1) for rows in _row_blocks(q, n, chunk)])
    return float(empty.mean())


def pr_curve_hamming(
    hamming_dist: np.ndarray, rel: np.ndarray, bits: int, chunk: int | None = None
) -> dict[str, np.ndarray]:
    """Precision and recall of the Hamming ball of radius r, for r = 0..bits, macro-averaged over queries.

    For query i: P_i(r) = |{rel, d <= r}| / |{d <= r}| (0 for an empty ball, as in
    :func:`precision_within_radius`) and R_i(r) = |{rel, d <= r}| / R_i with R_i = rel[i].sum()
    (0 when R_i = 0); hamming_dist must cover the whole database. Computed from per-query
    histograms of the distances (one bincount), in O(q n) rather than O(q n bits).

    hamming_dist: (q, n) int in [0, bits], rel: (q, n) bool -> {"radius", "precision", "recall"}, each (bits+1,).
    """
    dist, rel = _check_pair(hamming_dist, rel)
    if int(bits) < 1:
        raise ConfigError(f"bits must be >= 1, got {bits}")
    bins = int(bits) + 1
    q, n = dist.shape
    precision = np.zeros(bins, dtype=np.float64)
    recall = np.zeros(bins, dtype=np.float64)
    for rows in _row_blocks(q, n, chunk):
        block = dist[rows].astype(np.int64)
        if block.size and (block.min() < 0 or block.max() > bits):
            raise ValueError(f"Hamming distances must lie in [0, {bits}], got [{block.min()}, {block.max()}]")
        b = block.shape[0]
        flat = (block + bins * np.arange(b)[:, None]).ravel()
        retrieved = np.bincount(flat, minlength=b * bins).reshape(b, bins).cumsum(axis=1)
        hits = (
            np.bincount(flat, weights=rel[rows].ravel(), minlength=b * bins).reshape(b, bins).cumsum(axis=1)
        )
        total = hits[:, -1:]
        precision += np.where(retrieved > 0, hits / np.maximum(retrieved, 1), 0.0).sum(axis=0)
        recall += np.where(total > 0, hits / np.maximum(total, 1), 0.0).sum(axis=0)
    return {"radius": np.arange(bins), "precision": precision / q, "recall": recall / q}


def bit_balance(codes: np.ndarray) -> np.ndarray:
    """Fraction of ones per bit (0.5 is a balanced bit): codes (n, bits) bool -> (bits,) float64."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] == 0:
        raise ValueError(f"expected codes of shape (n, bits) with n >= 1, got {codes.shape}")
    return codes.astype(bool).mean(axis=0, dtype=np.float64)


# ---------------------------------------------------------------- checks


def _row_blocks(q: int, n: int, chunk: int | None) -> Iterator[slice]:
    if chunk is not None and int(chunk) < 1:
        raise ConfigError(f"chunk must be a positive number of queries, got {chunk}")
    step = int(chunk) if chunk is not None else max(1, _BLOCK_CELLS // max(n, 1))
    for start in range(0, q, step):
        yield slice(start, min(start + step, q))


def _check_rel(rel: np.ndarray) -> np.ndarray:
    rel = np.asarray(rel)
    if rel.ndim != 2 or rel.shape[0] == 0:
        raise ValueError(f"expected relevance of shape (q, n) with q >= 1, got {rel.shape}")
    return rel if rel.dtype == bool else rel.astype(bool)


def _check_ks(ks: Sequence[int]) -> np.ndarray:
    arr = np.asarray(ks).ravel()
    if arr.size == 0 or not np.issubdtype(arr.dtype, np.integer) or np.any(arr < 1):
        raise ConfigError(f"precision@k needs positive integer k values, got {list(np.asarray(ks).ravel())}")
    return arr.astype(np.int64)


def _check_dist(hamming_dist: np.ndarray) -> np.ndarray:
    dist = np.asarray(hamming_dist)
    if dist.ndim != 2 or dist.shape[0] == 0 or not np.issubdtype(dist.dtype, np.integer):
        raise ValueError(
            f"expected integer Hamming distances of shape (q, n) with q >= 1, got {dist.dtype} {dist.shape}"
        )
    return dist


def _check_pair(hamming_dist: np.ndarray, rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dist, rel = _check_dist(hamming_dist), _check_rel(rel)
    if dist.shape != rel.shape:
        raise ValueError(f"Hamming distances {dist.shape} and relevance {rel.shape} must have the same shape")
    return dist, rel
