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

import numpy as np
import torch

from deephash.evaluation.hamming_counts import (
    HammingCounts,
    HammingInputs,
    HammingMetrics,
    check_hamming_inputs,
    class_ids,
)
from deephash.evaluation.metrics import KS
from deephash.evaluation.torch_metrics import device_counts
from deephash.retrieval.codes import packed_words

_BLOCK_CELLS = 1 << 21  # query x database x 64-bit-word cells per block of distances
_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")  # numpy >= 2.0
_POPCOUNT_TABLE = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def hamming_retrieval_metrics(
    query_codes: np.ndarray,
    db_codes: np.ndarray,
    query_labels: np.ndarray,
    db_labels: np.ndarray,
    bits: int,
    *,
    ks: Sequence[int] = KS,
    map_at: int = 1000,
    radius: int = 2,
    curve_ks: Sequence[int] = (),
    top_n: int = 10,
    threads: int | None = None,
    device: torch.device | str | None = None,
) -> HammingMetrics:
    """Every Hamming-mode metric of the queries against the database, ranked by (distance, index).

    query_codes: (q, ceil(bits/8)) uint8 and db_codes: (n, ceil(bits/8)) uint8, packed with zero
    padding bits; query_labels: (q,) and db_labels: (n,) int, an item being relevant when the labels
    are equal (the conventions of ``deephash.evaluation.hamming_counts``). The reference: the functions of
    ``deephash.evaluation.metrics`` on the full stable ranking. ``threads``: worker threads (default: all
    cores). ``device``: None computes on the CPU (numpy); a torch device (``cpu`` included) computes in torch
    there (``deephash.evaluation.torch_metrics``), with the same rankings and counts.
    """
    inputs = check_hamming_inputs(
        query_codes, db_codes, query_labels, db_labels, bits, ks, curve_ks, map_at, radius, top_n
    )
    counts = _count(inputs, threads) if device is None else device_counts(inputs, device)
    return counts.result(inputs)


def _count(inputs: HammingInputs, threads: int | None) -> HammingCounts:
    """The per-query counts on the CPU: blocks of queries spread over ``threads`` threads."""
    queries, database, bits, map_at = inputs.queries, inputs.database, inputs.bits, inputs.map_at
    q, n = len(queries), len(database)
    db_class, query_class = class_ids(inputs.db_labels, inputs.query_labels)
    query_words, db_words = packed_words(queries), np.ascontiguousarray(packed_words(database).T)
    # ranks where relevant items are counted: the deepest first, then each k, min(map_at, n) last
    cut = np.concatenate([inputs.ks, inputs.curve_ks, [map_at]]).clip(max=n)
    cut = np.concatenate([[cut.max()], cut])
    stats = HammingCounts(q, n, len(cut), bits, min(inputs.top_n, n))
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
    return stats


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


__all__ = ["HammingMetrics", "hamming_retrieval_metrics"]
