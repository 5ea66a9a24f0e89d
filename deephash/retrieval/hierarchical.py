"""Hierarchical search (paper section 3.2): each query's coarse pool of codes near it in Hamming space, the
``PoolRule`` that forms it, and the pool re-ranked by L2 on F7.

Every pair of a pool gets its exact distance (``deephash.retrieval.distances.pair_sqdist``), so the results
are exactly the pool's stable (distance, index) order, however the pools are batched or scored: on the CPU
by the exact distances directly, or through a ``PoolScorer`` (the torch device path) whose fast distances
only shortlist what the exact re-rank then orders. Missing slots hold idx -1, l2 inf and hamming -1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from deephash.retrieval.codes import padded_queries
from deephash.retrieval.distances import fast_error, sqnorms
from deephash.retrieval.features import F7File
from deephash.retrieval.hamming import HammingSearch
from deephash.retrieval.pairs import refine, score_pairs
from deephash.retrieval.rows import check_features, row_blocks
from deephash.retrieval.topk import pad_columns
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError

# Queries whose coarse pools are formed together (one k-NN call, one range search for those that need it)
_POOL_QUERY_BATCH = 256
# Queries whose pools are shortlisted together (sharing their F7 reads): up to this many queries, or fewer
# once their pools hold this many (query, item) pairs (~70 bytes of working arrays each).
_SHORTLIST_QUERY_BATCH = 1024
_SHORTLIST_PAIRS = 1 << 22
# Distinct F7 rows read per block of pool pairs (pool scorer): float32 bytes of one of the two alternating
# buffers
_ROW_BLOCK_BYTES = 32 << 20


class PoolScorer(Protocol):
    """Fast squared distances |q|^2 - 2 q.x + |x|^2 of pool pairs, within ``distances.fast_error`` of the
    exact ones (e.g. ``functools.partial(distances.device_pair_sqdist, device)``).

    queries: (q, d) float32; query_sqnorms: (q,) their squared norms; owner: (p,) int64 the query of each
    pair; rows: (m, d) float32 distinct database rows; inverse: (p,) int64 the row of each pair
    -> (p,) float32.
    """

    def __call__(
        self,
        queries: np.ndarray,
        query_sqnorms: np.ndarray,
        owner: np.ndarray,
        rows: np.ndarray,
        inverse: np.ndarray,
    ) -> np.ndarray: ...


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
    pool_scorer: PoolScorer | None = None,
) -> HierarchicalResult:
    """Coarse-to-fine search (paper section 3.2): a Hamming candidate pool re-ranked by L2 on F7.

    index: Hamming index over the n database codes; db_f7: (n, d) float16/float32 array, memmap or
    ``F7File``; query_packed: (q, ceil(bits / 8)) uint8; query_f7: (q, d); pool: the pool rule.
    Only the pool's F7 rows are read (in index order, ``chunk_size`` rows at a time) and ranked by
    (L2, index); the top k are returned, fewer when the pool is smaller than k. The reference: each
    query's pool (``coarse_pools``) sorted by (``exact_l2``, index).

    ``pool_scorer`` None: every pool pair gets its exact distance (``pair_sqdist``) and the top k follow
    directly. Else (``deephash.retrieval.torch_search`` passes its device scoring) the pools are scored by
    ``pool_scorer``'s fast squared distances to a shortlist holding every item of the exact top k, whose
    exact distances are then computed on the CPU (``refine``): the same results either way.
    """
    k = check_int(k, "k")
    min_pool, max_pool, pool_size = pool.limits(k)
    radius = pool.radius
    queries = padded_queries(query_packed, index.bits, index.code_bytes)  # validated, not padded
    query32 = check_features(db_f7, query_f7, index.ntotal)
    if len(queries) != len(query32):
        raise ConfigError(f"got {len(queries)} query codes but {len(query32)} query F7 rows")
    q = len(queries)
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    pool_sizes = np.zeros(q, np.int64)
    batch: list[tuple[np.ndarray, np.ndarray]] = []
    b0 = 0
    for q0 in range(0, q, _POOL_QUERY_BATCH):
        pools = coarse_pools(
            index, queries[q0 : q0 + _POOL_QUERY_BATCH], radius, min_pool, max_pool, pool_size
        )
        pool_sizes[q0 : q0 + len(pools)] = [len(idx) for _, idx in pools]
        batch.extend(pools)
        pairs = int(pool_sizes[b0 : q0 + len(pools)].sum())
        if pairs >= _SHORTLIST_PAIRS or len(batch) >= _SHORTLIST_QUERY_BATCH or q0 + len(pools) == q:
            rows = query32[b0 : b0 + len(batch)]
            found.append(_shortlist_pools(db_f7, rows, batch, k, chunk_size, pool_scorer))
            b0, batch = b0 + len(batch), []
    # shortlists of different batches may differ in width: pad them to the widest
    width = max([k] + [c.shape[1] for c, _, _ in found])
    cand = np.vstack([pad_columns(c, width, -1) for c, _, _ in found] or [np.full((0, width), -1)])
    cand_ham = np.vstack([pad_columns(h, width, -1) for _, h, _ in found] or [np.full((0, width), -1)])
    cand_sq = np.vstack([pad_columns(d, width, np.inf) for _, _, d in found] or [np.full((0, width), 0.0)])
    if pool_scorer is None:
        l2, idx, ham = np.sqrt(cand_sq), cand, cand_ham
    else:
        l2, pos = refine(db_f7, query32, cand, k)
        idx, ham = np.take_along_axis(cand, pos, axis=1), np.take_along_axis(cand_ham, pos, axis=1)
    return HierarchicalResult(
        l2=pad_columns(l2, k, np.inf),
        idx=pad_columns(idx, k, -1),
        hamming=pad_columns(ham, k, -1),
        pool_sizes=pool_sizes,
    )


def coarse_pools(
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
    pool_scorer: PoolScorer | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query's nearest pool items, ties by index.

    queries: (q, d) float32; pools: per query (hamming (m,), idx (m,)) -> (cand (q, w) int64, hamming (q, w)
    int32, -1 padded, and their squared distances (q, w) float32, inf padded). Each distinct F7 row is read
    once however many pools share it (``score_pairs``; blocks of at most ``chunk_size`` rows) and scored
    against the queries sharing it.

    ``pool_scorer`` None: by the exact ``pair_sqdist``; w = k and these are the results. Else by
    ``pool_scorer``: pools of at most k items are kept whole (unscored, distance inf), larger ones keep
    every item whose fast distance is within twice the fast distances' error (``fast_error``) of their
    k-th fast distance. That shortlist holds every item of the exact top k (ties included) for the exact
    re-rank (``refine``) to order; w is the widest shortlist.
    """
    q = len(queries)
    sizes = np.array([len(idx) for _, idx in pools], np.int64)
    big = np.flatnonzero(sizes > (k if pool_scorer is not None else 0))
    whole = np.flatnonzero((sizes > 0) & (sizes <= k)) if pool_scorer is not None else big[:0]
    owner = np.repeat(big, sizes[big])
    items = np.concatenate([pools[j][1] for j in big] or [np.zeros(0, np.int64)])
    hams = np.concatenate([pools[j][0] for j in big] or [np.zeros(0, np.int32)])
    qnorms = sqnorms(queries)
    max_sqnorm = 0.0
    if pool_scorer is None:
        sq = score_pairs(db_f7, queries, owner, items, chunk_size)
    else:
        by_item = np.argsort(items, kind="stable")
        owner, items, hams = owner[by_item], items[by_item], hams[by_item]
        sq = np.empty(len(items), np.float32)
        step = max(1, min(chunk_size, _ROW_BLOCK_BYTES // (4 * queries.shape[1])))
        for a, b, rows, inverse in row_blocks(db_f7, items, step):
            sq[a:b] = pool_scorer(queries, qnorms, owner[a:b], rows, inverse)
            max_sqnorm = max(max_sqnorm, float(sqnorms(rows).max(initial=0)))
    # each pool's pairs by (query, distance, index)
    order = _pair_order(owner, sq, items) if pool_scorer is None else np.lexsort((items, sq, owner))
    owner, items, hams, sq = owner[order], items[order], hams[order], sq[order]
    starts = np.searchsorted(owner, big)
    counts = np.r_[starts[1:], len(owner)] - starts
    slot = np.arange(len(owner)) - np.repeat(starts, counts)
    if pool_scorer is None:
        keep = slot < k
    else:
        kth = sq[starts + k - 1].astype(np.float64)
        limit = kth + 2 * fast_error(qnorms[big], max_sqnorm, queries.shape[1])
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
    after inf), instead of lexsort's three passes, then the rare pairs with equal keys (equal distances)
    put in item order."""
    bits = np.where(np.isnan(sq), np.float32(np.nan), sq).view(np.uint32)  # one NaN, as lexsort ties them
    key = (owner.astype(np.uint64) << np.uint64(32)) | bits.astype(np.uint64)
    order = np.argsort(key)
    ordered = key[order]
    tied = np.flatnonzero(ordered[1:] == ordered[:-1])
    if tied.size:
        pos = np.union1d(tied, tied + 1)  # every position in a run of equal keys, runs in place
        order[pos] = order[pos[np.lexsort((items[order[pos]], ordered[pos]))]]
    return order
