"""Full rankings of the database for the ranked modes (hierarchical, euclidean), in blocks of queries, and their
metrics summed over the blocks.

Every ranking is ordered by (distance, database index): ties go to the lower index.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deephash.evaluation.metrics import average_precision, average_precision_at_k, precision_curve
from deephash.retrieval.distances import sqdist_matrix, sqnorms
from deephash.retrieval.features import F7File
from deephash.retrieval.rows import ScoredRows, f7_rows, row_buffer

_BLOCK_CELLS = 1 << 24  # query x database cells per block (~16M: 64 MB of int32 distances)


def query_blocks(q: int, n: int) -> list[slice]:
    """Blocks of the ``q`` queries small enough that a (block, n) matrix holds about ``_BLOCK_CELLS`` cells."""
    step = max(1, _BLOCK_CELLS // max(1, n))
    return [slice(s, min(q, s + step)) for s in range(0, q, step)]


def stable_ranking(dist: np.ndarray) -> np.ndarray:
    """(b, n) distances -> (b, n) database indices by (distance, index)."""
    if dist.dtype.kind in "iu" and dist.size and dist.min() >= 0 and dist.max() < 1 << 16:
        dist = dist.astype(np.uint16)  # numpy's stable sort of 16-bit keys is a linear-time radix sort
    elif dist.dtype == np.float64 and dist.size and not np.signbit(dist).any() and not np.isnan(dist).any():
        # The bit patterns of non-negative floats (no -0.0, no NaN) order as their values, and numpy's
        # stable sort compares uint64 keys faster than float64 ones: the same order.
        dist = dist.view(np.uint64)
    return np.argsort(dist, axis=1, kind="stable")


def pool_first(pool: np.ndarray, hamming_ranking: np.ndarray) -> np.ndarray:
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


def euclidean_sqdist(queries: np.ndarray, db_f7: np.ndarray | F7File, rows: int = 8192) -> np.ndarray:
    """Squared L2 distances (b, n) of every query to every database row, in float64 (``sqdist_matrix``'s
    guarantee: distances further apart than twice its float64 bound are ordered exactly), never -0.0.

    The database is read ``rows`` rows at a time into two reused buffers (float32, then float64), so the
    float64 copy of the database is never made whole and no block faults in fresh pages. A ``ScoredRows``
    database (PQ codes) gives its own distances (ADC), widened to float64."""
    if isinstance(db_f7, ScoredRows):
        q32 = np.ascontiguousarray(queries, np.float32)
        n = db_f7.shape[0]
        blocks = [db_f7.sqdist_block(q32, s, min(n, s + rows)) for s in range(0, n, rows)]
        return np.hstack(blocks or [np.zeros((len(q32), 0), np.float32)]).astype(np.float64) + 0.0
    q = np.asarray(queries, np.float64)
    qn = sqnorms(q)
    n = db_f7.shape[0]
    out = np.empty((len(q), n), np.float64)
    buffer32 = row_buffer(db_f7, rows)
    buffer64 = np.empty(buffer32.shape, np.float64)
    for s in range(0, n, rows):
        x32 = f7_rows(db_f7, slice(s, min(n, s + rows)), buffer32)  # float16 widened by torch
        x = buffer64[: len(x32)]
        np.copyto(x, x32)
        out[:, s : s + len(x)] = sqdist_matrix(q, x, qn, dtype=np.float64)
    out += 0.0  # -0.0 -> 0.0, so that the bit patterns order the distances (see stable_ranking)
    return out


class RankedMetrics:
    """Sums of per-query metrics of full rankings over blocks of queries; every metric is a plain mean."""

    def __init__(self, n_ks: int, n_curve: int) -> None:
        self.count = 0
        self.ap = 0.0
        self.ap_at = 0.0
        self.p_at = np.zeros(n_ks)
        self.p_curve = np.zeros(n_curve)

    def add(
        self,
        rel: np.ndarray,
        n_relevant: np.ndarray,
        ks: Sequence[int],
        map_at: int,
        curve_ks: np.ndarray,
    ) -> None:
        """One block: rel (b, n) bool relevance of each query's ranking, n_relevant (b,) its relevant items."""
        b = len(rel)
        self.count += b
        self.ap += float(average_precision(rel, n_relevant).sum())
        self.ap_at += float(average_precision_at_k(rel, map_at).sum())
        self.p_at += precision_curve(rel, ks) * b
        self.p_curve += precision_curve(rel, curve_ks) * b

    def result(self, ks: Sequence[int], map_at: int) -> dict:
        return {
            "mAP": self.ap / self.count,
            f"mAP@{map_at}": self.ap_at / self.count,
            "precision@k": {str(k): float(p / self.count) for k, p in zip(ks, self.p_at)},
        }

    def curve(self) -> np.ndarray:
        return self.p_curve / self.count
