"""Results in (distance, index) order: the top k of candidate rows, and result tables padded to k columns.

Every search returns its results ordered by ``(distance, database index)`` ascending, ties going to the lower
index, as a stable sort of the brute-force distances would order them.
"""

from __future__ import annotations

import numpy as np


def select_topk(dist: np.ndarray, idx: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``min(k, m)`` smallest ``(dist, idx)`` pairs of each row, in that order.

    dist: (q, m) numeric; idx: (q, m) int64 -> (q, min(k, m)) each. Ties at the k-th distance keep
    the lowest indices, like a stable sort by (dist, idx) (the reference: ``np.lexsort((idx, dist))``).
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


def pad_columns(arr: np.ndarray, k: int, fill: float) -> np.ndarray:
    """(q, m) -> (q, k), appending ``fill`` columns when m < k."""
    if arr.shape[1] >= k:
        return arr
    out = np.full((arr.shape[0], k), fill, dtype=arr.dtype)
    out[:, : arr.shape[1]] = arr
    return out
