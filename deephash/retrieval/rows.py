"""Database F7 rows read as float32, whatever holds them: an ndarray, a memmap or an ``F7File``.

A database held otherwise (product-quantised codes, several shards) is a ``ScoredRows``: it scores pairs and
searches exhaustively itself, and indexing it gives float32 rows (its reconstructions).

Every search reads database F7 through ``f7_rows`` (or, scoring pairs from float16 rows, the gather of
``deephash.retrieval.pairs``), which copies the rows asked for to float32 and never leaves more than those
rows resident: a memmap's pages are released after each block (``deephash.retrieval.pages``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import numpy as np

from deephash.retrieval.features import F7File
from deephash.retrieval.pages import release_pages, widen
from deephash.utils.errors import ConfigError, IndexFormatError


@runtime_checkable
class ScoredRows(Protocol):
    """(n, d) database rows that compute their own distances to float32 queries (q, d): ``pair_sqdist`` of the
    pairs (queries[owner[i]], row items[i]) -> (p,) float32; ``nearest`` the exhaustive top k -> (l2 (q, k)
    float32, idx (q, k) int64) by (distance, index), inf / -1 padded; ``sqdist_block`` the distances to rows
    ``start:stop`` -> (q, stop - start) float32, the same bits as ``pair_sqdist`` for each pair."""

    shape: tuple[int, int]

    def pair_sqdist(self, queries: np.ndarray, owner: np.ndarray, items: np.ndarray) -> np.ndarray: ...

    def nearest(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def sqdist_block(self, queries: np.ndarray, start: int, stop: int) -> np.ndarray: ...


def f7_rows(
    db_f7: np.ndarray | F7File, key: slice | np.ndarray, buffer: np.ndarray | None = None
) -> np.ndarray:
    """``db_f7[key]`` as float32 (m, d), in the first m rows of ``buffer`` ((>= m, d) float32) when given, so
    a loop over blocks reuses one buffer instead of faulting in fresh pages for each. An ``F7File`` reads
    just those rows; a memmap's pages are unmapped once the rows are copied out; float16 is widened by
    ``widen`` (torch's vectorised cast rather than numpy's element by element one)."""
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


def row_buffer(db_f7: np.ndarray | F7File, rows: int) -> np.ndarray:
    """A float32 buffer for blocks of up to ``rows`` rows of ``db_f7`` (never more than it holds)."""
    return np.empty((max(0, min(rows, db_f7.shape[0])), db_f7.shape[1]), np.float32)


def sorted_unique(items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(items, return_inverse=True)`` for already sorted ``items``, without sorting them again."""
    first = np.r_[True, items[1:] != items[:-1]] if len(items) else np.zeros(0, bool)
    return items[first], np.cumsum(first) - 1


def row_blocks(
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
        uniq, inverse = sorted_unique(items[a:b])
        return f7_rows(db_f7, uniq, buffers[j % 2]), inverse

    with ThreadPoolExecutor(1, thread_name_prefix="deephash-f7") as reader:
        pending = reader.submit(read, 0)
        for j, (a, b) in enumerate(spans):
            rows, inverse = pending.result()
            if j + 1 < len(spans):
                pending = reader.submit(read, j + 1)
            yield a, b, rows, inverse


def check_features(db_f7: np.ndarray | F7File, query_f7: np.ndarray, n: int | None = None) -> np.ndarray:
    """Validate (n, d) database and (q, d) query features; returns the queries as float32."""
    if db_f7.ndim != 2 or np.ndim(query_f7) != 2 or db_f7.shape[1] != np.shape(query_f7)[1]:
        raise ConfigError(
            f"expected database F7 (n, d) and query F7 (q, d), got {db_f7.shape} and {np.shape(query_f7)}"
        )
    if n is not None and db_f7.shape[0] != n:
        raise IndexFormatError(f"database F7 has {db_f7.shape[0]} rows but the Hamming index holds {n} codes")
    return np.ascontiguousarray(query_f7, dtype=np.float32)
