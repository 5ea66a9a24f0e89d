"""Search over packed codes and F7 features: Hamming k-NN, Hamming radius, hierarchical, exhaustive L2.

Every result is ordered by ``(distance, database index)`` ascending, ties going to the lower index, as a
stable sort of the brute-force distances would order them (Hamming exactly; L2 within the shortlist guarantee
below). Where a query has fewer results than asked for, the missing slots hold index ``-1``, L2 distance
``inf`` and Hamming distance ``-1``.

L2 distances are plain Euclidean distances (paper eq. 2, not squared) in float32, always computed from
direct differences by one per-pair function (``pair_sqdist``, FAISS's ``fvec_L2sqr_by_idx``), so they are
accurate (a copy of the query is at 0) and a pair gets the same distance in every search and chunking.

Hierarchical search computes that exact distance for every pair of each query's pool, so its results are
exactly the pool's stable (distance, index) order. Exhaustive search shortlists ``k + max(16, k // 8)``
candidates per query with fast BLAS distances ``|q|^2 - 2 q.x + |x|^2`` (FAISS ``knn`` or numpy), which in
float32 can be off by up to ``e = 4 (d + 2) 2^-24 (|q|^2 + max |x|^2)`` in squared distance (d the feature
width), then computes the shortlist's exact distances. A query whose shortlist cut lies within ``2e`` of its
exact k-th distance (near-ties, duplicate rows) is rescanned for every row within that margin, so its
results too are the stable (exact distance, index) order of the whole database.

Database F7 may be an ndarray, a memmap or an ``F7File``; it is only ever read through ``f7_rows`` (or,
scoring pools from a float16 array or memmap, ``_RowGather``'s torch gather), which copies the rows asked
for to float32 and never leaves more than those rows resident: a memmap's pages are released after each
block (see ``deephash.retrieval.features``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from deephash.retrieval.codes import (
    check_packed,
    code_bytes,
    hamming_distance_matrix,
    pad_codes,
    padded_code_bytes,
    padded_queries,
)
from deephash.retrieval.faiss_blas import faiss
from deephash.retrieval.features import F7File, read_only_tensor, release_pages, widen
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError, IndexFormatError

MODES = ("hamming", "hamming_radius", "hierarchical", "euclidean")  # the search modes, everywhere
L2_BACKENDS = ("faiss", "numpy")  # exhaustive L2 search: faiss.knn on each chunk, or our numpy path
# Ids buffer of FAISS's counting k-NN: (query batch) x (bits + 1 buckets) x k int64 ids.
_COUNTING_BUDGET_BYTES = 256 << 20
_RANGE_QUERY_BATCH = 256
# The Hamming k-NN uses FAISS's heap search rather than its counting search (per-distance buckets of k
# ids each) for k up to _HEAP_MAX_K on codes of at least _HEAP_MIN_BYTES (padded). At 1M clustered codes,
# k = 100, the heap search was faster at 128 bits (about 1.1x, but within the run-to-run noise of this
# measurement), the counting search at 48 bits (1.05x to 1.15x), and the counting search 1.3x to 1.6x
# faster at k = 1000.
_HEAP_MAX_K = 128
_HEAP_MIN_BYTES = 16
# Queries per thread below which a k-NN runs as one FAISS call
_SPLIT_MIN_QUERIES = 64
# Queries whose pools are shortlisted together (sharing their F7 reads): up to this many queries, or fewer
# once their pools hold this many (query, item) pairs (~70 bytes of working arrays each).
_SHORTLIST_QUERY_BATCH = 1024
_SHORTLIST_PAIRS = 1 << 22
# Distinct F7 rows read per block of pool pairs (device scoring): float32 bytes of one of the two alternating
# buffers
_ROW_BLOCK_BYTES = 32 << 20
# Exact scoring on the CPU: distinct rows whose sharing queries are listed at once, and float32 bytes of
# rows gathered and scored at a time (about half a core's L2 cache)
_SCORE_BLOCK_ROWS = 2048
_FUSED_BYTES = 1 << 20


def select_topk(dist: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``min(k, m)`` smallest ``(dist, idx)`` pairs of each row, in that order.

    dist: (q, m) numeric; idx: (q, m) int64 -> (q, min(k, m)) each. Ties at the k-th distance keep
    the lowest indices, like a stable sort by (dist, idx).
    """
    m = dist.shape[1]
    if k < m:
        cand = np.argpartition(dist, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(dist, cand, axis=1).max(axis=1)
        # argpartition picks an arbitrary subset of the items tied at the k-th distance: rows where
        # that group straddles the cut are re-selected by a full (dist, idx) sort.
        tied = np.flatnonzero((dist <= kth[:, None]).sum(axis=1) > k)
        if tied.size:
            cand[tied] = np.lexsort((idx[tied], dist[tied]), axis=-1)[:, :k]
        dist, idx = np.take_along_axis(dist, cand, axis=1), np.take_along_axis(idx, cand, axis=1)
    order = np.lexsort((idx, dist), axis=-1)
    return np.take_along_axis(dist, order, axis=1), np.take_along_axis(idx, order, axis=1)


def _pad_columns(arr: np.ndarray, k: int, fill: float) -> np.ndarray:
    """(q, m) -> (q, k), appending ``fill`` columns when m < k."""
    if arr.shape[1] >= k:
        return arr
    out = np.full((arr.shape[0], k), fill, dtype=arr.dtype)
    out[:, : arr.shape[1]] = arr
    return out


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
        # by (distance, id) (Heap.h's cmp2), so among tied items the lowest indices stay. The heap is
        # faster for small k, the counting for large k (see ``search``).
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
        (distance, index); slots beyond the database size hold distance -1 and index -1.
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
        return _pad_columns(dist.astype(np.int32, copy=False), k, -1), _pad_columns(idx, k, -1)

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
    per thread never wait (1.1x to 1.2x faster at 1M codes, 128 bits, k = 100). The results are the same:
    each query's search does not depend on the others."""
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


def l2_distances(
    queries: np.ndarray,
    rows: np.ndarray,
    query_sqnorms: np.ndarray | None = None,
    row_sqnorms: np.ndarray | None = None,
) -> np.ndarray:
    """Fast approximate Euclidean distances through BLAS: sqrt(max(|q|^2 - 2 q.x + |x|^2, 0)).

    queries: (q, d) float32; rows: (c, d) float32 -> (q, c) float32. Cancellation makes the result
    inexact for near neighbours (a copy of the query lands at ~1e-3 instead of 0), so searches only
    use it to shortlist candidates and then call ``exact_l2``.
    """
    if query_sqnorms is None:
        query_sqnorms = np.einsum("ij,ij->i", queries, queries)
    sq = queries @ rows.T
    sq *= -2
    sq += query_sqnorms[:, None]
    sq += (np.einsum("ij,ij->i", rows, rows) if row_sqnorms is None else row_sqnorms)[None, :]
    np.maximum(sq, 0, out=sq)
    return np.sqrt(sq, out=sq)


def exact_l2(queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Euclidean distances from direct differences. queries: (q, d); rows: (q, m, d) -> (q, m) float32.

    Each distance is ``pair_sqdist``'s of its own (query, row) pair, so it is the same whatever the
    chunking, and the same as every search reports for that pair.
    """
    q, m, d = rows.shape
    queries = np.ascontiguousarray(queries, np.float32)
    owner = np.repeat(np.arange(q), m)
    sq = pair_sqdist(queries, owner, np.asarray(rows, np.float32).reshape(q * m, d), np.arange(q * m))
    return np.sqrt(sq).reshape(q, m)


def pair_sqdist(queries: np.ndarray, owner: np.ndarray, rows: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances from direct differences, float32, of the pairs (queries[owner[i]],
    rows[inverse[i]]): queries (q, d), rows (m, d) float32; owner, inverse (p,) int64 -> (p,).

    FAISS's ``fvec_L2sqr_by_idx`` computes them, one SIMD difference per pair with a fixed order of
    summation, so a pair's distance depends on nothing else (not on chunking, batch or memory position).
    Each row is scored against the queries that share it (their list padded with -1, threaded over the
    rows): the row is read once and no gathered copy of rows or queries is made.
    """
    return _pairs_by_row(faiss.fvec_L2sqr_by_idx, queries, owner, rows, inverse)


def _pairs_by_row(
    kernel: Callable[..., None], queries: np.ndarray, owner: np.ndarray, rows: np.ndarray, inverse: np.ndarray
) -> np.ndarray:
    """``kernel`` (a FAISS ``fvec_*_by_idx``) on the pairs (rows[inverse[i]], queries[owner[i]]) -> (p,) float32."""
    sharing, slot = _sharing(owner, inverse, len(rows))
    out = np.empty(sharing.shape, np.float32)
    rows = np.ascontiguousarray(rows, np.float32)
    queries = np.ascontiguousarray(queries, np.float32)
    _run_by_idx(kernel, out, rows, queries, sharing)
    return out[inverse, slot]


def _sharing(owner: np.ndarray, inverse: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The queries sharing each of ``m`` rows: (sharing (m, w) int64, -1 padded, w the most pairs of one row;
    slot (p,), the column of pair i in its row ``inverse[i]``), for FAISS's ``fvec_*_by_idx`` kernels."""
    counts = np.bincount(inverse, minlength=m)
    starts = np.cumsum(counts) - counts
    if np.all(inverse[1:] >= inverse[:-1]):  # pairs already by row: each row's pairs in a stretch
        slot = np.arange(len(inverse)) - starts[inverse]
    else:
        by_row = np.argsort(inverse, kind="stable")
        slot = np.empty(len(inverse), np.int64)
        slot[by_row] = np.arange(len(inverse)) - np.repeat(starts, counts)
    sharing = np.full((m, int(counts.max()) if m else 0), -1, np.int64)
    sharing[inverse, slot] = owner
    return sharing, slot


def _run_by_idx(
    kernel: Callable[..., None], out: np.ndarray, rows: np.ndarray, queries: np.ndarray, sharing: np.ndarray
) -> None:
    """out[i, j] = kernel distance of (rows[i], queries[sharing[i, j]]), -1 entries skipped; every array
    C-contiguous (rows, queries float32)."""
    kernel(
        faiss.swig_ptr(out),
        faiss.swig_ptr(rows),
        faiss.swig_ptr(queries),
        faiss.swig_ptr(sharing),
        rows.shape[1],
        len(rows),
        sharing.shape[1],
    )


class _RowGather:
    """Float32 copies of chosen rows of ``db_f7``, a block of distinct rows at a time (``block``), handed
    out ``sub`` rows at a time (``rows``) into reused buffers.

    A float16 array, memmap or ``F7File`` goes through torch: each ``sub`` rows are gathered by
    ``index_select`` into a float16 buffer and widened, both buffers small enough to stay in a core's cache
    (so the rows are scored before they leave it; numpy's fancy indexing plus ``widen`` goes through main
    memory twice). An ``F7File`` gathers the same way from its memory map (``F7File.gather``: a positional
    read per scattered row made a search on a loaded index 1.5x to 1.8x slower), checking the copies of
    rows not yet checked and unmapping the pages of each ``sub`` rows once copied. Other sources (float32)
    are read a whole block at once by ``f7_rows``."""

    def __init__(self, db_f7: np.ndarray | F7File, block_rows: int, sub: int) -> None:
        self.db_f7, self.sub = db_f7, sub
        self.half: torch.Tensor | None = None
        self.file = db_f7 if isinstance(db_f7, F7File) and db_f7.dtype == np.dtype("=f2") else None
        if self.file is not None or (
            isinstance(db_f7, np.ndarray) and db_f7.dtype == np.dtype("=f2") and db_f7.flags.c_contiguous
        ):
            self.buffer = row_buffer(db_f7, sub)
            self.source = None if self.file is not None else read_only_tensor(db_f7)
            self.half = torch.empty(self.buffer.shape, dtype=torch.float16)
            self.widened = torch.from_numpy(self.buffer)
        else:
            self.buffer = row_buffer(db_f7, block_rows)

    def block(self, uniq: np.ndarray) -> None:
        """Start a block of distinct rows ``uniq`` (sorted)."""
        self.uniq = uniq
        if self.half is None:
            self.rows_read = np.ascontiguousarray(f7_rows(self.db_f7, uniq, self.buffer))

    def rows(self, s0: int) -> np.ndarray:
        """Rows ``uniq[s0 : s0 + sub]`` of the current block as (m, d) float32, valid until the next call."""
        if self.half is None:
            return self.rows_read[s0 : s0 + self.sub]
        idx = self.uniq[s0 : s0 + self.sub]
        m = len(idx)
        if self.file is not None:
            self.file.gather(idx, self.widened[:m], self.half[:m])
        else:
            torch.index_select(self.source, 0, torch.from_numpy(idx), out=self.half[:m])
            self.widened[:m].copy_(self.half[:m])
        return self.buffer[:m]


def _score_pairs(
    db_f7: np.ndarray | F7File, queries: np.ndarray, owner: np.ndarray, items: np.ndarray, chunk_size: int
) -> np.ndarray:
    """``pair_sqdist`` of the pairs (queries[owner[i]], db_f7[items[i]]) -> (p,) float32, in any order.

    The pairs are scored by item: each distinct row is read once, however many queries share it, in one
    sorted gather per ``_FUSED_BYTES`` of float32 rows, which is then widened and scored while still in
    cache instead of after a round trip through main memory (1.4x to 1.6x faster at 4096-d than gathering
    32 MB blocks first). The sharing queries are listed once per block of up to ``_SCORE_BLOCK_ROWS`` (at
    most ``chunk_size``) distinct rows. The kernel and its float32 rows are those of ``pair_sqdist``, so
    the distances are the same bits. (Visiting the rows in order of the queries sharing them keeps those
    queries in cache and made the scoring 1.8x faster, but the unsorted gather from a memory map faulted
    pages one row at a time and was 2x slower, a net loss.)
    """
    queries = np.ascontiguousarray(queries, np.float32)
    sq = np.empty(len(items), np.float32)
    if not len(items):
        return sq
    pairs = _stable_argsort(items, db_f7.shape[0])
    owner, sorted_items = owner[pairs], items[pairs]
    uniq, inverse = _sorted_unique(sorted_items)
    starts = np.flatnonzero(np.diff(sorted_items, prepend=-1))  # where each distinct row's pairs begin
    sub = max(1, _FUSED_BYTES // (4 * db_f7.shape[1]))
    step = max(1, min(chunk_size, max(sub, _SCORE_BLOCK_ROWS)))
    gather = _RowGather(db_f7, min(step, len(uniq)), min(sub, len(uniq)))
    scored = np.empty(len(items), np.float32)
    bounds = np.r_[starts, len(items)]
    for r0 in range(0, len(uniq), step):
        r1 = min(r0 + step, len(uniq))
        a, b = bounds[r0], bounds[r1]
        sharing, slot = _sharing(owner[a:b], inverse[a:b] - r0, r1 - r0)
        out = np.empty(sharing.shape, np.float32)
        gather.block(uniq[r0:r1])
        for s0 in range(0, r1 - r0, sub):
            rows = gather.rows(s0)
            _run_by_idx(
                faiss.fvec_L2sqr_by_idx, out[s0 : s0 + len(rows)], rows, queries, sharing[s0 : s0 + sub]
            )
        scored[a:b] = out[inverse[a:b] - r0, slot]
        release_pages(db_f7)
    sq[pairs] = scored
    return sq


def _stable_argsort(items: np.ndarray, n: int) -> np.ndarray:
    """``np.argsort(items, kind="stable")`` for ``items`` in [0, n): the keys item * p + position are
    distinct, so numpy's SIMD quicksort orders them as a stable sort would, 4x faster than its timsort."""
    p = len(items)
    if n * p >= 1 << 62:
        return np.argsort(items, kind="stable")
    return np.argsort(items * p + np.arange(p))


def f7_rows(
    db_f7: np.ndarray | F7File, key: slice | np.ndarray, buffer: np.ndarray | None = None
) -> np.ndarray:
    """``db_f7[key]`` as float32 (m, d), in the first m rows of ``buffer`` ((>= m, d) float32) when given, so
    a loop over blocks reuses one buffer instead of faulting in fresh pages for each. An ``F7File`` reads
    just those rows; a memmap's pages are unmapped once the rows are copied out; float16 is widened by
    ``widen`` (numpy's own half-float cast is 10x slower)."""
    if type(db_f7) is np.ndarray and db_f7.dtype == np.float32:
        return db_f7[key]  # in memory already: a slice is a view, an index array a copy
    m = len(range(*key.indices(db_f7.shape[0]))) if isinstance(key, slice) else len(key)
    out = np.empty((m, db_f7.shape[1]), np.float32) if buffer is None else buffer[:m]
    if isinstance(db_f7, F7File):
        return db_f7.read(key, np.float32, out=out)
    widen(db_f7[key], out)
    if isinstance(db_f7, np.memmap):
        release_pages(db_f7)
    return out


def _sorted_unique(items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(items, return_inverse=True)`` for already sorted ``items``, without sorting them again."""
    first = np.r_[True, items[1:] != items[:-1]] if len(items) else np.zeros(0, bool)
    return items[first], np.cumsum(first) - 1


def row_buffer(db_f7: np.ndarray | F7File, rows: int) -> np.ndarray:
    """A float32 buffer for blocks of up to ``rows`` rows of ``db_f7`` (never more than it holds)."""
    return np.empty((max(0, min(rows, db_f7.shape[0])), db_f7.shape[1]), np.float32)


def _row_blocks(
    db_f7: np.ndarray | F7File, items: np.ndarray, step: int
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Blocks of sorted ``items`` (p,) holding up to ``step`` distinct rows each -> (a, b, rows, inverse): the
    pairs ``a:b``, their distinct F7 rows (m, d) float32 and each pair's row in them.

    The next block is read in a worker thread while the caller scores this one (the read is bound by memory
    traffic and page faults, the scoring by FAISS/torch kernels that release the GIL); two buffers alternate,
    so a block's rows stay valid until the caller asks for the next block."""
    firsts = np.flatnonzero(np.diff(items, prepend=-1))  # where each distinct row's pairs begin
    if not len(firsts):
        return
    # the fewest blocks of at most ``step`` rows, equally filled: buffers no larger than the rows need
    blocks = math.ceil(len(firsts) / step)
    per = math.ceil(len(firsts) / blocks)
    bounds = np.r_[firsts[np.arange(blocks) * len(firsts) // blocks], len(items)]
    spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
    buffers = [row_buffer(db_f7, per), row_buffer(db_f7, per) if len(spans) > 1 else None]

    def read(j: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = spans[j]
        uniq, inverse = _sorted_unique(items[a:b])
        return f7_rows(db_f7, uniq, buffers[j % 2]), inverse

    with ThreadPoolExecutor(1, thread_name_prefix="deephash-f7") as reader:
        pending = reader.submit(read, 0)
        for j, (a, b) in enumerate(spans):
            rows, inverse = pending.result()
            if j + 1 < len(spans):
                pending = reader.submit(read, j + 1)
            yield a, b, rows, inverse


def _shortlist(k: int) -> int:
    """Candidates kept from the fast BLAS distances before the exact re-computation."""
    return k + max(16, k // 8)


def _refine(
    db_f7: np.ndarray | F7File, queries: np.ndarray, cand: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k among shortlisted candidates.

    db_f7: (n, d); queries: (q, d) float32; cand: (q, m) int64 indices, -1 for none -> (l2 (q, min(k, m))
    float32, pos (q, min(k, m)) int64 column of each result in ``cand``), ordered by (L2, index).
    """
    l2 = np.full(cand.shape, np.inf, np.float32)
    rows, cols = np.nonzero(cand >= 0)
    # each F7 row is read once however many queries shortlisted it
    l2[rows, cols] = np.sqrt(_score_pairs(db_f7, queries, rows, cand[rows, cols], _SCORE_BLOCK_ROWS))
    # empty slots get an index past every real one, so they sort last
    key_idx = np.where(cand >= 0, cand, np.iinfo(np.int64).max)
    order = np.lexsort((key_idx, l2), axis=-1)[:, :k]
    cols_all = np.broadcast_to(np.arange(cand.shape[1]), cand.shape)
    return np.take_along_axis(l2, order, axis=1), np.take_along_axis(cols_all, order, axis=1)


def _check_features(db_f7: np.ndarray | F7File, query_f7: np.ndarray, n: int | None = None) -> np.ndarray:
    """Validate (n, d) database and (q, d) query features; returns the queries as float32."""
    if db_f7.ndim != 2 or np.ndim(query_f7) != 2 or db_f7.shape[1] != np.shape(query_f7)[1]:
        raise ConfigError(
            f"expected database F7 (n, d) and query F7 (q, d), got {db_f7.shape} and {np.shape(query_f7)}"
        )
    if n is not None and db_f7.shape[0] != n:
        raise IndexFormatError(f"database F7 has {db_f7.shape[0]} rows but the Hamming index holds {n} codes")
    return np.ascontiguousarray(query_f7, dtype=np.float32)


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
    -> (l2 (q, k) float32, idx (q, k) int64) ordered by (distance, index). A running shortlist is kept
    from fast BLAS distances, then its distances are recomputed exactly (``exact_l2``) and cut to k.
    backend: ``faiss`` (``faiss.knn`` on each chunk into a result heap, as ``faiss.contrib.exhaustive_search``
    does) or ``numpy`` (our own BLAS distances and partial sorts); both give the same results.
    """
    queries, k = _check_features(db_f7, query_f7), check_int(k, "k")
    chunk_size = check_int(chunk_size, "chunk_size")
    if backend not in L2_BACKENDS:
        raise ConfigError(f"unknown L2 backend {backend!r}; expected one of: {', '.join(L2_BACKENDS)}")
    width, n = _shortlist(k), db_f7.shape[0]
    shortlist = _faiss_shortlist if backend == "faiss" else _numpy_shortlist
    best_i, cut, max_sqnorm = shortlist(db_f7, queries, width, chunk_size)
    l2, pos = _refine(db_f7, queries, best_i, k)
    idx = np.take_along_axis(best_i, pos, axis=1)
    if width < n:
        # a row left out of a shortlist could still belong in the top k when the shortlist's cut lies
        # within the fast distances' error of the k-th exact distance (near-ties, duplicate rows): those
        # queries take every row within that error instead
        bound = _tie_bound(l2[:, k - 1], queries, max_sqnorm)
        redo = np.flatnonzero(cut.astype(np.float64) ** 2 <= bound)
        if redo.size:
            cand = _rows_within(db_f7, queries[redo], bound[redo], chunk_size)
            l2_redo, pos_redo = _refine(db_f7, queries[redo], cand, k)
            l2[redo] = _pad_columns(l2_redo, k, np.inf)
            idx[redo] = _pad_columns(np.take_along_axis(cand, pos_redo, axis=1), k, -1)
    return _pad_columns(l2, k, np.inf), _pad_columns(idx, k, -1)


def _tie_bound(kth: np.ndarray, queries: np.ndarray, max_sqnorm: float) -> np.ndarray:
    """(q,) float64: the squared fast distance below which a row may still tie or beat the exact k-th
    distance ``kth`` (q,): kth^2 plus twice the error bound ``e`` of the module docstring."""
    err = _fast_error(np.einsum("ij,ij->i", queries, queries), max_sqnorm, queries.shape[1])
    return kth.astype(np.float64) ** 2 * (1 + 2.0**-20) + 2 * err


def _rows_within(
    db_f7: np.ndarray | F7File, queries: np.ndarray, bound: np.ndarray, chunk_size: int
) -> np.ndarray:
    """(q, m) int64, -1 padded: for each query every row whose fast squared distance is at most ``bound``."""
    qnorms = np.einsum("ij,ij->i", queries, queries)
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
    qnorms = np.einsum("ij,ij->i", queries, queries)
    best_d = np.empty((len(queries), 0), np.float32)
    best_i = np.empty((len(queries), 0), np.int64)
    max_sqnorm = 0.0
    buffer = row_buffer(db_f7, chunk_size)
    for start in range(0, db_f7.shape[0], chunk_size):
        rows = f7_rows(db_f7, slice(start, start + chunk_size), buffer)
        norms = np.einsum("ij,ij->i", rows, rows)
        max_sqnorm = max(max_sqnorm, float(norms.max(initial=0)))
        dist = l2_distances(queries, rows, qnorms, norms)
        idx = np.broadcast_to(np.arange(start, start + len(rows), dtype=np.int64), dist.shape)
        dist, idx = select_topk(dist, idx, width)
        best_d, best_i = select_topk(np.hstack([best_d, dist]), np.hstack([best_i, idx]), width)
    return best_i, best_d[:, -1] if best_d.shape[1] else np.full(len(queries), np.inf, np.float32), max_sqnorm


@contextmanager
def _blas_database_block(q: int) -> Iterator[None]:
    """FAISS's BLAS k-NN multiplies (query block) x (database block) tiles; its default database block of
    1024 rows makes few-query searches run many small GEMMs (1.4x slower than our numpy path measured at
    50 queries x 4096-d). Larger tiles (up to ~64 MB of float32 products) for the duration of a search."""
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
    """``_numpy_shortlist`` through ``faiss.knn`` (squared L2, BLAS) and ``faiss.ResultHeap``.

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
            norms = np.einsum("ij,ij->i", rows, rows)
            max_sqnorm = max(max_sqnorm, float(norms.max(initial=0)))
            kk = min(depth, len(rows))
            dist, idx = np.empty((q, kk), np.float32), np.empty((q, kk), np.int64)
            # faiss.knn's own call, given the row norms just computed instead of computing them again
            faiss.knn_L2sqr(
                faiss.swig_ptr(queries),
                faiss.swig_ptr(rows),
                rows.shape[1],
                q,
                len(rows),
                kk,
                faiss.swig_ptr(dist),
                faiss.swig_ptr(idx),
                faiss.swig_ptr(norms),
            )
            idx += start
            heap.add_result(dist, idx)
    heap.finalize()
    dist, idx = select_topk(heap.D, heap.I, width)
    cut = np.sqrt(np.maximum(dist[:, -1], 0)) if dist.shape[1] else np.full(q, np.inf, np.float32)
    return idx, cut, max_sqnorm


@dataclass
class HierarchicalResult:
    """Hierarchical search output; missing slots hold idx -1, l2 inf, hamming -1.

    l2: (q, k) float32; idx: (q, k) int64; hamming: (q, k) int32 of the returned items;
    pool_sizes: (q,) int64, the number of candidates re-ranked for each query.
    """

    l2: np.ndarray
    idx: np.ndarray
    hamming: np.ndarray
    pool_sizes: np.ndarray


@dataclass(frozen=True)
class PoolRule:
    """How hierarchical search forms each query's coarse pool (paper section 3.2), per query:

      1. the pool is every item within Hamming distance ``radius`` (inclusive; the paper says "lower
         than a threshold");
      2. if it holds fewer than ``min_pool`` (default k) or more than ``max_pool`` (default
         max(10000, pool_size)) items, it is replaced by the ``pool_size`` (default max(min_pool, 1000))
         nearest codes, ties by index. A too-small pool is thus always contained in its replacement.

    ``radius`` is also the radius of the ``hamming_radius`` mode and of precision@r in evaluation.
    """

    radius: int = 2
    min_pool: int | None = None
    max_pool: int | None = None
    pool_size: int | None = None

    def __post_init__(self) -> None:
        check_int(self.radius, "radius", 0)
        for name in ("min_pool", "max_pool", "pool_size"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name)

    def limits(self, k: int) -> tuple[int, int, int]:
        """(min_pool, max_pool, pool_size) for a top-``k`` search, defaults filled in."""
        min_pool = k if self.min_pool is None else int(self.min_pool)
        pool_size = max(min_pool, 1000) if self.pool_size is None else int(self.pool_size)
        max_pool = max(10_000, pool_size) if self.max_pool is None else int(self.max_pool)
        if not min_pool <= pool_size <= max_pool:
            raise ConfigError(
                f"hierarchical search needs min_pool <= pool_size <= max_pool, got {min_pool}, {pool_size}, {max_pool}"
            )
        return min_pool, max_pool, pool_size

    def resolved(self, k: int) -> PoolRule:
        """This rule with the defaults for a top-``k`` search written out, so it applies unchanged at
        any other k."""
        min_pool, max_pool, pool_size = self.limits(k)
        return PoolRule(self.radius, min_pool, max_pool, pool_size)


def hierarchical_search(
    index: HammingSearch,
    db_f7: np.ndarray | F7File,
    query_packed: np.ndarray,
    query_f7: np.ndarray,
    k: int,
    pool: PoolRule = PoolRule(),
    *,
    chunk_size: int = 65536,
) -> HierarchicalResult:
    """Coarse-to-fine search (paper section 3.2): a Hamming candidate pool re-ranked by L2 on F7.

    index: Hamming index over the n database codes; db_f7: (n, d) float16/float32 array, memmap or
    ``F7File``; query_packed: (q, ceil(bits / 8)) uint8; query_f7: (q, d); pool: the pool rule.
    Only the pool's F7 rows are read (in index order, ``chunk_size`` rows at a time) and ranked by
    (L2, index); the top k are returned, fewer when the pool is smaller than k.
    """
    return _hierarchical(index, db_f7, query_packed, query_f7, k, pool, chunk_size, None)


def _hierarchical(
    index: HammingSearch,
    db_f7: np.ndarray | F7File,
    query_packed: np.ndarray,
    query_f7: np.ndarray,
    k: int,
    pool: PoolRule,
    chunk_size: int,
    fast_sqdist: Callable[..., np.ndarray] | None,
) -> HierarchicalResult:
    """``hierarchical_search``. ``fast_sqdist`` None: every pool pair gets its exact distance
    (``pair_sqdist``) and the top k follow directly. Else (``deephash.retrieval.torch_search`` passes its
    device scoring) the pools are scored by ``fast_sqdist(queries, qnorms, owner, rows, inverse)``, fast
    squared distances |q|^2 - 2 q.x + |x|^2 of the pairs, to a shortlist whose exact distances are then
    computed on the CPU (``_refine``)."""
    k = check_int(k, "k")
    min_pool, max_pool, pool_size = pool.limits(k)
    radius = pool.radius
    queries = padded_queries(query_packed, index.bits, index.code_bytes)  # validated, not padded
    query32 = _check_features(db_f7, query_f7, index.ntotal)
    if len(queries) != len(query32):
        raise ConfigError(f"got {len(queries)} query codes but {len(query32)} query F7 rows")
    q = len(queries)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    pool_sizes = np.zeros(q, np.int64)
    batch: list[tuple[np.ndarray, np.ndarray]] = []
    b0 = 0
    for q0 in range(0, q, _RANGE_QUERY_BATCH):
        pools = _coarse_pools(
            index, queries[q0 : q0 + _RANGE_QUERY_BATCH], radius, min_pool, max_pool, pool_size
        )
        pool_sizes[q0 : q0 + len(pools)] = [len(idx) for _, idx in pools]
        batch.extend(pools)
        pairs = int(pool_sizes[b0 : q0 + len(pools)].sum())
        if pairs >= _SHORTLIST_PAIRS or len(batch) >= _SHORTLIST_QUERY_BATCH or q0 + len(pools) == q:
            rows = query32[b0 : b0 + len(batch)]
            found.append(_shortlist_pools(db_f7, rows, batch, k, chunk_size, fast_sqdist))
            b0, batch = b0 + len(batch), []
    # shortlists of different batches may differ in width: pad them to the widest
    width = max([k] + [c.shape[1] for c, _, _ in found])
    cand = np.vstack([_pad_columns(c, width, -1) for c, _, _ in found] or [np.full((0, width), -1)])
    cand_ham = np.vstack([_pad_columns(h, width, -1) for _, h, _ in found] or [np.full((0, width), -1)])
    cand_sq = np.vstack([_pad_columns(d, width, np.inf) for _, _, d in found] or [np.full((0, width), 0.0)])
    if fast_sqdist is None:
        l2, idx, ham = np.sqrt(cand_sq), cand, cand_ham
    else:
        l2, pos = _refine(db_f7, query32, cand, k)
        idx, ham = np.take_along_axis(cand, pos, axis=1), np.take_along_axis(cand_ham, pos, axis=1)
    return HierarchicalResult(
        l2=_pad_columns(l2, k, np.inf),
        idx=_pad_columns(idx, k, -1),
        hamming=_pad_columns(ham, k, -1),
        pool_sizes=pool_sizes,
    )


def _coarse_pools(
    index: HammingSearch, queries: np.ndarray, radius: int, min_pool: int, max_pool: int, pool_size: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each query's pool under the rule of ``hierarchical_search`` -> [(hamming (m,) int32, idx (m,) int64)].

    One k-NN pass for the ``pool_size`` nearest codes usually settles both cases: when its last code
    lies beyond ``radius`` (or it holds the whole database), every code within the radius is among
    them. Only queries with ``pool_size`` or more codes inside the radius need the range search.
    """
    near_d, near_i = index.search(queries, pool_size)
    pools: list[tuple[np.ndarray, np.ndarray]] = []
    unresolved = []
    for j, (dist, idx) in enumerate(zip(near_d, near_i)):
        dist, idx = dist[idx >= 0], idx[idx >= 0]
        inside = int(np.searchsorted(dist, radius, side="right"))
        if inside < len(dist) or len(dist) == index.ntotal:
            pools.append((dist[:inside], idx[:inside]) if min_pool <= inside <= max_pool else (dist, idx))
        else:
            pools.append((dist, idx))
            unresolved.append(j)
    if unresolved:
        lims, dist, idx = index.range_search_flat(queries[unresolved], radius)
        for row, j in enumerate(unresolved):
            if lims[row + 1] - lims[row] <= max_pool:  # it holds >= pool_size >= min_pool codes
                pools[j] = (dist[lims[row] : lims[row + 1]], idx[lims[row] : lims[row + 1]])
    return pools


def _shortlist_pools(
    db_f7: np.ndarray | F7File,
    queries: np.ndarray,
    pools: list[tuple[np.ndarray, np.ndarray]],
    k: int,
    chunk_size: int,
    fast_sqdist: Callable[..., np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's nearest pool items, ties by index.

    queries: (q, d) float32; pools: per query (hamming (m,), idx (m,)) -> (cand (q, w) int64, hamming (q, w)
    int32, -1 padded, and their squared distances (q, w) float32, inf padded). Each distinct F7 row is read
    once however many pools share it (``_score_pairs``; blocks of at most ``chunk_size`` rows) and scored
    against the queries sharing it.

    ``fast_sqdist`` None: by the exact ``pair_sqdist``; w = k and these are the results. Else by
    ``fast_sqdist``: pools of at most k items are kept whole (unscored, distance inf), larger ones keep
    every item whose fast distance is within twice the fast distances' error (``_fast_error``) of their
    k-th fast distance. That shortlist holds every item of the exact top k (ties included) for the exact
    re-rank (``_refine``) to order; w is the widest shortlist.
    """
    q = len(queries)
    sizes = np.array([len(idx) for _, idx in pools], np.int64)
    big = np.flatnonzero(sizes > (k if fast_sqdist is not None else 0))
    whole = np.flatnonzero((sizes > 0) & (sizes <= k)) if fast_sqdist is not None else big[:0]
    owner = np.repeat(big, sizes[big])
    items = np.concatenate([pools[j][1] for j in big] or [np.zeros(0, np.int64)])
    hams = np.concatenate([pools[j][0] for j in big] or [np.zeros(0, np.int32)])
    qnorms = np.einsum("ij,ij->i", queries, queries)
    max_sqnorm = 0.0
    if fast_sqdist is None:
        sq = _score_pairs(db_f7, queries, owner, items, chunk_size)
    else:
        by_item = np.argsort(items, kind="stable")
        owner, items, hams = owner[by_item], items[by_item], hams[by_item]
        sq = np.empty(len(items), np.float32)
        step = max(1, min(chunk_size, _ROW_BLOCK_BYTES // (4 * queries.shape[1])))
        for a, b, rows, inverse in _row_blocks(db_f7, items, step):
            sq[a:b] = fast_sqdist(queries, qnorms, owner[a:b], rows, inverse)
            max_sqnorm = max(max_sqnorm, float(np.einsum("ij,ij->i", rows, rows).max(initial=0)))
    # each pool's pairs by (query, distance, index)
    order = _pair_order(owner, sq, items) if fast_sqdist is None else np.lexsort((items, sq, owner))
    owner, items, hams, sq = owner[order], items[order], hams[order], sq[order]
    starts = np.searchsorted(owner, big)
    counts = np.r_[starts[1:], len(owner)] - starts
    slot = np.arange(len(owner)) - np.repeat(starts, counts)
    if fast_sqdist is None:
        keep = slot < k
    else:
        kth = sq[starts + k - 1].astype(np.float64)
        limit = kth + 2 * _fast_error(qnorms[big], max_sqnorm, queries.shape[1])
        keep = (slot < k) | (sq <= np.repeat(limit, counts))
    width = max(k, int(sizes[whole].max(initial=0)), int(slot[keep].max(initial=-1)) + 1)
    cand = np.full((q, width), -1, np.int64)
    cand_ham = np.full((q, width), -1, np.int32)
    cand_sq = np.full((q, width), np.inf, np.float32)
    for j in whole:
        cand[j, : sizes[j]], cand_ham[j, : sizes[j]] = pools[j][1], pools[j][0]
    cand[owner[keep], slot[keep]] = items[keep]
    cand_ham[owner[keep], slot[keep]] = hams[keep]
    cand_sq[owner[keep], slot[keep]] = sq[keep]
    return cand, cand_ham, cand_sq


def _pair_order(owner: np.ndarray, sq: np.ndarray, items: np.ndarray) -> np.ndarray:
    """``np.lexsort((items, sq, owner))`` for owner (p,) int64 >= 0 and sq (p,) float32 >= 0 or NaN: one
    sort of the 64-bit keys (owner, bits of sq) (non-negative floats order like their bit patterns, NaN
    after inf), 2 to 3x faster than lexsort's three passes, then the rare pairs with equal keys
    (equal distances) put in item order."""
    bits = np.where(np.isnan(sq), np.float32(np.nan), sq).view(np.uint32)  # one NaN, as lexsort ties them
    key = (owner.astype(np.uint64) << np.uint64(32)) | bits.astype(np.uint64)
    order = np.argsort(key)
    ordered = key[order]
    tied = np.flatnonzero(ordered[1:] == ordered[:-1])
    if tied.size:
        pos = np.union1d(tied, tied + 1)  # every position in a run of equal keys, runs in place
        order[pos] = order[pos[np.lexsort((items[order[pos]], ordered[pos]))]]
    return order


def _fast_error(query_sqnorms: np.ndarray, max_sqnorm: float, d: int) -> np.ndarray:
    """(q,) float64: the bound ``e`` of the module docstring on how far a fast squared distance
    |q|^2 - 2 q.x + |x|^2 in float32 can be from the true one, for rows of squared norm <= ``max_sqnorm``."""
    return 4 * (d + 2) * 2.0**-24 * (np.asarray(query_sqnorms, np.float64) + max_sqnorm)
