"""Exact Hamming search over packed codes: k nearest codes and every code within a radius (FAISS).

Results are ordered by ``(distance, database index)`` ascending, ties going to the lower index, exactly as a
stable sort of the brute-force distances (``deephash.retrieval.codes.hamming_distance_matrix``) orders them.
Where a query has fewer results than asked for, the missing slots hold distance -1 and index -1.
``HammingSearch`` is what search and evaluation ask of a Hamming index: this one, the torch one
(``deephash.retrieval.torch_search``) and the sub-linear ones (``deephash.retrieval.sublinear``).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np

from deephash.retrieval.codes import (
    check_packed,
    code_bytes,
    hamming_distance_matrix,
    pad_codes,
    padded_code_bytes,
    padded_queries,
)
from deephash.retrieval.faiss_blas import faiss
from deephash.retrieval.topk import pad_columns
from deephash.utils.checks import check_int

# Ids buffer of FAISS's counting k-NN: (query batch) x (bits + 1 buckets) x k int64 ids.
_COUNTING_BUDGET_BYTES = 256 << 20
_RANGE_QUERY_BATCH = 256
# The Hamming k-NN uses FAISS's heap search rather than its counting search (per-distance buckets of k
# ids each) for k up to _HEAP_MAX_K on codes of at least _HEAP_MIN_BYTES (padded): there the heap search
# is at least as fast, the counting search faster on shorter codes and for larger k.
_HEAP_MAX_K = 128
_HEAP_MIN_BYTES = 16
# Queries per thread below which a k-NN runs as one FAISS call
_SPLIT_MIN_QUERIES = 64


class HammingIndex:
    """Exact Hamming search over packed codes, wrapping ``faiss.IndexBinaryFlat``.

    codes_packed: (n, ceil(bits / 8)) uint8. Codes are zero padded to the next size in
    ``FAST_CODE_BYTES`` (``pad=True``), which leaves distances unchanged and lets FAISS use a
    specialised kernel (e.g. 48-bit codes run on the 8-byte popcount instead of a byte loop).
    """

    def __init__(self, codes_packed: np.ndarray, bits: int, *, pad: bool = True) -> None:
        self.bits = int(bits)
        self.codes = check_packed(codes_packed, self.bits, "database codes")
        self.code_bytes = code_bytes(self.bits)
        self.padded_bytes = padded_code_bytes(self.code_bytes) if pad else self.code_bytes
        self.faiss_index = faiss.IndexBinaryFlat(self.padded_bytes * 8)
        # Both FAISS k-NN searches return exactly the (distance, index) order. The counting k-NN
        # (hammings_knn_mc) fills one bucket per distance in scan order and reads the buckets in
        # increasing distance. The heap search (hammings_knn_hc) scans each query's database in index
        # order, admits an item only when strictly nearer than the heap's worst, and orders its max-heap
        # by (distance, id) (Heap.h's cmp2), so among tied items the lowest indices stay. ``search`` picks
        # the heap for small k on wide codes, the counting search otherwise.
        self._default_batch = self.faiss_index.query_batch_size
        self.faiss_index.add(pad_codes(self.codes, self.padded_bytes))

    @property
    def ntotal(self) -> int:
        return int(self.faiss_index.ntotal)

    def _queries(self, query_packed: np.ndarray) -> np.ndarray:
        return padded_queries(query_packed, self.bits, self.padded_bytes)

    def search(self, query_packed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest codes of each query.

        query_packed: (q, ceil(bits / 8)) uint8 -> (dist (q, k) int32, idx (q, k) int64), ordered by
        (distance, index); slots beyond the database size hold distance -1 and index -1. The reference is a
        stable sort of ``hamming_distance_matrix`` (``_exact_knn``, which also serves k too large for FAISS).
        """
        queries, k = self._queries(query_packed), check_int(k, "k")
        kk = min(k, self.ntotal)
        if kk == 0 or len(queries) == 0:
            return np.full((len(queries), k), -1, np.int32), np.full((len(queries), k), -1, np.int64)
        per_query = (8 * self.padded_bytes + 1) * kk * 8
        if per_query > _COUNTING_BUDGET_BYTES:
            dist, idx = self._exact_knn(queries, kk)
        else:
            self.faiss_index.use_heap = kk <= _HEAP_MAX_K and self.padded_bytes >= _HEAP_MIN_BYTES
            self.faiss_index.query_batch_size = max(
                1, min(self._default_batch, _COUNTING_BUDGET_BYTES // per_query)
            )
            dist, idx = _split_queries(self.faiss_index.search, queries, kk)
            # Cheap guard on the order promised above: rows that break it are redone exactly.
            bad = (np.diff(dist, axis=1) < 0) | ((np.diff(dist, axis=1) == 0) & (np.diff(idx, axis=1) <= 0))
            rows = np.flatnonzero(bad.any(axis=1))
            if rows.size:
                dist[rows], idx[rows] = self._exact_knn(queries[rows], kk)
        return pad_columns(dist.astype(np.int32, copy=False), k, -1), pad_columns(idx, k, -1)

    def _exact_knn(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """numpy k-NN for k too large for the counting buckets: the key dist * n + idx is unique."""
        n = self.ntotal
        dist_out = np.empty((len(queries), k), np.int32)
        idx_out = np.empty((len(queries), k), np.int64)
        step = max(1, (1 << 25) // n)
        for q0 in range(0, len(queries), step):
            dist = hamming_distance_matrix(queries[q0 : q0 + step, : self.code_bytes], self.codes)
            key = dist.astype(np.int64) * n + np.arange(n)
            if k < n:
                key = np.take_along_axis(key, np.argpartition(key, k - 1, axis=1)[:, :k], axis=1)
            key.sort(axis=1)
            dist_out[q0 : q0 + step], idx_out[q0 : q0 + step] = key // n, key % n
        return dist_out, idx_out

    def _range_sorted(self, padded_queries: np.ndarray, radius: int) -> tuple[np.ndarray, ...]:
        """FAISS range search on already padded queries -> (lims, dist int32, idx int64) by (query, dist, idx)."""
        # IndexBinaryFlat.range_search keeps d < radius (strict); ours is inclusive, hence radius + 1.
        lims, dist, idx = self.faiss_index.range_search(padded_queries, int(radius) + 1)
        lims = lims.astype(np.int64)
        dist = dist.astype(np.int32)
        owner = np.repeat(np.arange(len(padded_queries)), np.diff(lims))
        order = np.lexsort((idx, dist, owner))
        return lims, dist[order], idx[order]

    def range_search(self, query_packed: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every database item within Hamming distance ``radius`` (inclusive) of each query.

        query_packed: (q, ceil(bits / 8)) uint8 -> per query ``(dist (m,) int32, idx (m,) int64)``,
        ordered by (distance, index).
        """
        return split_ranges(self, query_packed, radius)

    def range_search_flat(self, query_packed: np.ndarray, radius: int) -> tuple[np.ndarray, ...]:
        """``range_search`` as flat arrays: (lims (q + 1,) int64, dist int32, idx int64), the results of
        query i at ``lims[i]:lims[i + 1]``, ordered by (query, distance, index)."""
        return self._range_sorted(self._queries(query_packed), range_radius(radius, self.bits))


def range_radius(radius: int, bits: int) -> int:
    """A checked range-search radius, at most ``bits``: no Hamming distance of ``bits``-bit codes is larger,
    so the results are the same, and FAISS's int32 threshold (``radius + 1``) or a (distance, index) key
    cannot overflow on a huge one (``--radius 10000000000``)."""
    return min(check_int(radius, "radius", 0), bits)


def _split_queries(
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]], queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """``search(queries, k)`` with the queries split between FAISS's OpenMP threads, each running its share
    as a one-thread FAISS call. FAISS's binary k-NN parallelises over the queries within each block of
    65,536 database codes and waits for every thread at the end of each block; whole shares of queries
    per thread never wait. The results are the same: each query's search does not depend on the others."""
    threads = faiss.omp_get_max_threads()
    if threads < 2 or len(queries) < threads * _SPLIT_MIN_QUERIES:
        return search(queries, k)
    bounds = [len(queries) * t // threads for t in range(threads + 1)]

    def share(t: int) -> tuple[np.ndarray, np.ndarray]:
        faiss.omp_set_num_threads(1)  # OpenMP's thread count is per calling thread: this worker only
        return search(queries[bounds[t] : bounds[t + 1]], k)

    with ThreadPoolExecutor(threads, thread_name_prefix="deephash-knn") as pool:
        parts = list(pool.map(share, range(threads)))
    return np.vstack([d for d, _ in parts]), np.vstack([i for _, i in parts])


class HammingSearch(Protocol):
    """What a Hamming index offers search and evaluation: the exact ``HammingIndex`` and the sub-linear
    ``MultiHashIndex``/``BinaryHashIndex`` (``deephash.retrieval.sublinear``). Queries are packed codes
    (q, ceil(bits / 8)) uint8; results are ordered by (distance, index)."""

    bits: int
    code_bytes: int

    @property
    def ntotal(self) -> int: ...

    def search(self, query_packed: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def range_search(self, query_packed: np.ndarray, radius: int) -> list[tuple[np.ndarray, np.ndarray]]: ...

    def range_search_flat(self, query_packed: np.ndarray, radius: int) -> tuple[np.ndarray, ...]: ...


def split_ranges(
    index: HammingSearch, query_packed: np.ndarray, radius: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``index.range_search_flat`` in query batches, split into one ``(dist, idx)`` pair per query."""
    results: list[tuple[np.ndarray, np.ndarray]] = []
    for q0 in range(0, len(query_packed), _RANGE_QUERY_BATCH):
        lims, dist, idx = index.range_search_flat(query_packed[q0 : q0 + _RANGE_QUERY_BATCH], radius)
        results.extend((dist[a:b], idx[a:b]) for a, b in zip(lims[:-1], lims[1:]))
    return results
