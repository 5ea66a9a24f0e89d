"""Exact squared distances of (query, database row) pairs, each database row read once however many queries
share it, and the exact re-rank of a shortlist (``refine``).

Every pair's distance is ``deephash.retrieval.distances.pair_sqdist``'s, bit for bit, whatever the batch,
block or order it is scored in.
"""

from __future__ import annotations

import numpy as np
import torch

from deephash.retrieval.distances import queries_by_row, sqdist_by_row
from deephash.retrieval.features import F7File
from deephash.retrieval.pages import read_only_tensor, release_pages
from deephash.retrieval.rows import ScoredRows, f7_rows, row_buffer, sorted_unique

# Distinct rows whose sharing queries are listed at once, and float32 bytes of rows gathered and scored at a
# time (about half a core's L2 cache)
_SCORE_BLOCK_ROWS = 2048
_FUSED_BYTES = 1 << 20


def refine(
    db_f7: np.ndarray | F7File, queries: np.ndarray, cand: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k among shortlisted candidates: the exact re-rank of every search's fast shortlist.

    db_f7: (n, d); queries: (q, d) float32; cand: (q, m) int64 indices, -1 for none -> (l2 (q, min(k, m))
    float32, pos (q, min(k, m)) int64 column of each result in ``cand``), ordered by (L2, index), with the
    distances of ``exact_l2``.
    """
    l2 = np.full(cand.shape, np.inf, np.float32)
    rows, cols = np.nonzero(cand >= 0)
    # each F7 row is read once however many queries shortlisted it
    l2[rows, cols] = np.sqrt(score_pairs(db_f7, queries, rows, cand[rows, cols], _SCORE_BLOCK_ROWS))
    # empty slots get an index past every real one, so they sort last
    key_idx = np.where(cand >= 0, cand, np.iinfo(np.int64).max)
    order = np.lexsort((key_idx, l2), axis=-1)[:, :k]
    cols_all = np.broadcast_to(np.arange(cand.shape[1]), cand.shape)
    return np.take_along_axis(l2, order, axis=1), np.take_along_axis(cols_all, order, axis=1)


def score_pairs(
    db_f7: np.ndarray | F7File, queries: np.ndarray, owner: np.ndarray, items: np.ndarray, chunk_size: int
) -> np.ndarray:
    """``pair_sqdist`` of the pairs (queries[owner[i]], db_f7[items[i]]) -> (p,) float32, in any order.

    The pairs are scored by item: each distinct row is read once, however many queries share it, in one
    sorted gather per ``_FUSED_BYTES`` of float32 rows, which is then widened and scored while still in
    cache instead of after a round trip through main memory. The sharing queries are listed once per block
    of up to ``_SCORE_BLOCK_ROWS`` (at most ``chunk_size``) distinct rows. The kernel and its float32 rows
    are those of ``pair_sqdist`` (the reference), so the distances are the same bits. Rows are visited in
    index order, never in the order of the queries sharing them, so that a memory map is read sequentially.
    A ``ScoredRows`` database (PQ codes, shards) scores the pairs itself.
    """
    queries = np.ascontiguousarray(queries, np.float32)
    if isinstance(db_f7, ScoredRows):
        return db_f7.pair_sqdist(queries, np.asarray(owner, np.int64), np.asarray(items, np.int64))
    sq = np.empty(len(items), np.float32)
    if not len(items):
        return sq
    pairs = _stable_argsort(items, db_f7.shape[0])
    owner, sorted_items = owner[pairs], items[pairs]
    uniq, inverse = sorted_unique(sorted_items)
    starts = np.flatnonzero(np.diff(sorted_items, prepend=-1))  # where each distinct row's pairs begin
    sub = max(1, _FUSED_BYTES // (4 * db_f7.shape[1]))
    step = max(1, min(chunk_size, max(sub, _SCORE_BLOCK_ROWS)))
    gather = _RowGather(db_f7, min(step, len(uniq)), min(sub, len(uniq)))
    scored = np.empty(len(items), np.float32)
    bounds = np.r_[starts, len(items)]
    for r0 in range(0, len(uniq), step):
        r1 = min(r0 + step, len(uniq))
        a, b = bounds[r0], bounds[r1]
        sharing, slot = queries_by_row(owner[a:b], inverse[a:b] - r0, r1 - r0)
        out = np.empty(sharing.shape, np.float32)
        gather.block(uniq[r0:r1])
        for s0 in range(0, r1 - r0, sub):
            rows = gather.rows(s0)
            sqdist_by_row(out[s0 : s0 + len(rows)], rows, queries, sharing[s0 : s0 + sub])
        scored[a:b] = out[inverse[a:b] - r0, slot]
        release_pages(db_f7)
    sq[pairs] = scored
    return sq


def _stable_argsort(items: np.ndarray, n: int) -> np.ndarray:
    """``np.argsort(items, kind="stable")`` for ``items`` in [0, n): the keys item * p + position are
    distinct, so numpy's SIMD quicksort orders them as a stable sort would, faster than its timsort."""
    p = len(items)
    if n * p >= 1 << 62:
        return np.argsort(items, kind="stable")
    return np.argsort(items * p + np.arange(p))


class _RowGather:
    """Float32 copies of chosen rows of ``db_f7``, a block of distinct rows at a time (``block``), handed
    out ``sub`` rows at a time (``rows``) into reused buffers.

    A float16 array, memmap or ``F7File`` goes through torch: each ``sub`` rows are gathered by
    ``index_select`` into a float16 buffer and widened, both buffers small enough to stay in a core's cache
    (so the rows are scored before they leave it; numpy's fancy indexing plus ``widen`` goes through main
    memory twice). An ``F7File`` gathers the same way from its memory map (``F7File.gather``, rather than a
    positional read per scattered row), checking the copies of rows not yet checked and unmapping the pages
    of each ``sub`` rows once copied. Other sources (float32) are read a whole block at once by ``f7_rows``."""

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
