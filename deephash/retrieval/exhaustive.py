"""Exhaustive L2 search on F7 (the paper's baseline): every database row, streamed in chunks.

Each query's shortlist of ``k + max(16, k // 8)`` candidates comes from fast BLAS distances
|q|^2 - 2 q.x + |x|^2 (FAISS's k-NN or numpy), which in float32 can be off by up to the bound ``e`` of
``deephash.retrieval.distances.fast_error``; the shortlist's exact distances are then computed. A query whose
shortlist cut lies within ``2e`` of its exact k-th distance (near-ties, duplicate rows) is rescanned for every
row within that margin, so its results too are the stable (exact distance, index) order of the whole database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from deephash.retrieval.distances import fast_error, knn_sqdist, l2_distances, sqnorms
from deephash.retrieval.faiss_blas import faiss
from deephash.retrieval.features import F7File
from deephash.retrieval.pairs import refine
from deephash.retrieval.rows import ScoredRows, check_features, f7_rows, row_buffer
from deephash.retrieval.topk import pad_columns, select_topk
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError

L2_BACKENDS = ("faiss", "numpy")  # exhaustive L2 search: faiss.knn on each chunk, or our numpy path


def euclidean_search(
    db_f7: np.ndarray | F7File,
    query_f7: np.ndarray,
    k: int,
    chunk_size: int = 65536,
    *,
    backend: str = "faiss",
) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive L2 search, streaming the database in chunks of ``chunk_size`` rows.

    db_f7: (n, d) float16/float32 array, memmap or ``F7File`` (each chunk is read as float32); query_f7: (q, d)
    -> (l2 (q, k) float32, idx (q, k) int64) ordered by (distance, index), missing slots (k > n) inf and -1.
    A running shortlist is kept from fast BLAS distances, then its distances are recomputed exactly
    (``exact_l2``) and cut to k. The reference: ``exact_l2`` to every row, sorted by (distance, index).
    backend: ``faiss`` (``faiss.knn`` on each chunk into a result heap, as ``faiss.contrib.exhaustive_search``
    does) or ``numpy`` (our own BLAS distances and partial sorts); both give the same results. A ``ScoredRows``
    database (PQ codes: ADC over every row; shards) searches itself.
    """
    queries, k = check_features(db_f7, query_f7), check_int(k, "k")
    if isinstance(db_f7, ScoredRows):
        return db_f7.nearest(queries, k)
    chunk_size = check_int(chunk_size, "chunk_size")
    if backend not in L2_BACKENDS:
        raise ConfigError(f"unknown L2 backend {backend!r}; expected one of: {', '.join(L2_BACKENDS)}")
    width, n = _shortlist(k), db_f7.shape[0]
    shortlist = _faiss_shortlist if backend == "faiss" else _numpy_shortlist
    best_i, cut, max_sqnorm = shortlist(db_f7, queries, width, chunk_size)
    l2, pos = refine(db_f7, queries, best_i, k)
    idx = np.take_along_axis(best_i, pos, axis=1)
    if width < n:
        # a row left out of a shortlist could still belong in the top k when the shortlist's cut lies
        # within the fast distances' error of the k-th exact distance (near-ties, duplicate rows): those
        # queries take every row within that error instead
        bound = _tie_bound(l2[:, k - 1], queries, max_sqnorm)
        redo = np.flatnonzero(cut.astype(np.float64) ** 2 <= bound)
        if redo.size:
            cand = _rows_within(db_f7, queries[redo], bound[redo], chunk_size)
            l2_redo, pos_redo = refine(db_f7, queries[redo], cand, k)
            l2[redo] = pad_columns(l2_redo, k, np.inf)
            idx[redo] = pad_columns(np.take_along_axis(cand, pos_redo, axis=1), k, -1)
    return pad_columns(l2, k, np.inf), pad_columns(idx, k, -1)


def _shortlist(k: int) -> int:
    """Candidates kept from the fast BLAS distances before the exact re-computation."""
    return k + max(16, k // 8)


def _tie_bound(kth: np.ndarray, queries: np.ndarray, max_sqnorm: float) -> np.ndarray:
    """(q,) float64: the squared fast distance below which a row may still tie or beat the exact k-th
    distance ``kth`` (q,): kth^2 plus twice the error bound ``e`` of the module docstring."""
    err = fast_error(sqnorms(queries), max_sqnorm, queries.shape[1])
    return kth.astype(np.float64) ** 2 * (1 + 2.0**-20) + 2 * err


def _rows_within(
    db_f7: np.ndarray | F7File, queries: np.ndarray, bound: np.ndarray, chunk_size: int
) -> np.ndarray:
    """(q, m) int64, -1 padded: for each query every row whose fast squared distance is at most ``bound``."""
    qnorms = sqnorms(queries)
    limit = np.sqrt(bound).astype(np.float32)[:, None]
    found_q, found_i = [], []
    buffer = row_buffer(db_f7, chunk_size)
    for start in range(0, db_f7.shape[0], chunk_size):
        rows = f7_rows(db_f7, slice(start, start + chunk_size), buffer)
        q_hit, i_hit = np.nonzero(l2_distances(queries, rows, qnorms) <= limit)
        found_q.append(q_hit)
        found_i.append(i_hit + start)
    owner, items = np.concatenate(found_q), np.concatenate(found_i)
    order = np.lexsort((items, owner))
    owner, items = owner[order], items[order]
    counts = np.bincount(owner, minlength=len(queries))
    cand = np.full((len(queries), max(1, int(counts.max()))), -1, np.int64)
    cand[owner, np.arange(len(owner)) - np.repeat(np.cumsum(counts) - counts, counts)] = items
    return cand


def _numpy_shortlist(
    db_f7: np.ndarray | F7File, queries: np.ndarray, width: int, chunk_size: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Each query's ``width`` nearest rows by (BLAS L2, index): (idx (q, min(width, n)) int64, the fast
    distance of its last (q,) float32, the largest squared norm of a database row)."""
    qnorms = sqnorms(queries)
    best_d = np.empty((len(queries), 0), np.float32)
    best_i = np.empty((len(queries), 0), np.int64)
    max_sqnorm = 0.0
    buffer = row_buffer(db_f7, chunk_size)
    for start in range(0, db_f7.shape[0], chunk_size):
        rows = f7_rows(db_f7, slice(start, start + chunk_size), buffer)
        norms = sqnorms(rows)
        max_sqnorm = max(max_sqnorm, float(norms.max(initial=0)))
        dist = l2_distances(queries, rows, qnorms, norms)
        idx = np.broadcast_to(np.arange(start, start + len(rows), dtype=np.int64), dist.shape)
        dist, idx = select_topk(dist, idx, width)
        best_d, best_i = select_topk(np.hstack([best_d, dist]), np.hstack([best_i, idx]), width)
    return best_i, best_d[:, -1] if best_d.shape[1] else np.full(len(queries), np.inf, np.float32), max_sqnorm


@contextmanager
def _blas_database_block(q: int) -> Iterator[None]:
    """FAISS's BLAS k-NN multiplies (query block) x (database block) tiles; its default database block of
    1024 rows makes few-query searches run many small GEMMs. Larger tiles (up to ~64 MB of float32 products)
    for the duration of a search."""
    old = faiss.cvar.distance_compute_blas_database_bs
    queries_per_tile = max(1, min(q, faiss.cvar.distance_compute_blas_query_bs))
    faiss.cvar.distance_compute_blas_database_bs = max(old, min(16384, (1 << 24) // queries_per_tile))
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_database_bs = old


def _faiss_shortlist(
    db_f7: np.ndarray | F7File, queries: np.ndarray, width: int, chunk_size: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """``_numpy_shortlist`` through FAISS's BLAS k-NN (``knn_sqdist``) and ``faiss.ResultHeap``.

    FAISS keeps an arbitrary subset of the items tied at a heap's last distance; ``euclidean_search``
    rescans the queries whose cut may pass through ties, so the lowest indices win as in a stable sort.
    """
    n, q = db_f7.shape[0], len(queries)
    depth = min(width, n)
    heap = faiss.ResultHeap(q, depth)
    max_sqnorm = 0.0
    with _blas_database_block(q):
        buffer = row_buffer(db_f7, chunk_size)
        for start in range(0, n, chunk_size):
            rows = np.ascontiguousarray(f7_rows(db_f7, slice(start, start + chunk_size), buffer))
            norms = sqnorms(rows)
            max_sqnorm = max(max_sqnorm, float(norms.max(initial=0)))
            dist, idx = knn_sqdist(queries, rows, norms, min(depth, len(rows)))
            idx += start
            heap.add_result(dist, idx)
    heap.finalize()
    dist, idx = select_topk(heap.D, heap.I, width)
    cut = np.sqrt(np.maximum(dist[:, -1], 0)) if dist.shape[1] else np.full(q, np.inf, np.float32)
    return idx, cut, max_sqnorm
