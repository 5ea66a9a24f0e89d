"""A product-quantised database (``pq<m>``/``opq<m>`` codecs): m-byte codes ranked by the asymmetric distance.

``PQRows`` is a ``ScoredRows`` (``deephash.retrieval.rows``): the pair scoring of hierarchical search, the
exhaustive (euclidean) search and evaluation's full rankings ask it for ADC distances
(``deephash.retrieval.distances.adc_pairs`` / ``adc_matrix``: the same bits for a pair either way), and
indexing it gives the rows' float32 reconstructions. The codes stay in a memory map: a search touches only
the m-byte rows of its pools. An index built with ``codec_rerank`` R also keeps its float16 rows (``exact``):
``exact_rerank`` orders each search's top R by exact L2 on them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deephash.retrieval.codecs import Codec
from deephash.retrieval.distances import adc_matrix, adc_pairs, adc_tables
from deephash.retrieval.features import F7File
from deephash.retrieval.pairs import refine
from deephash.retrieval.topk import pad_columns, select_topk
from deephash.utils.checks import check_int

_SCAN_CELLS = 1 << 23  # query x row cells of ADC distances per block of an exhaustive scan (32 MB)
_TABLE_QUERIES = 1024  # queries whose distance tables are built at once (1024 x m x 256 float32)
_PAIR_BLOCK = 1 << 16  # pairs whose codes are gathered and looked up at a time


class PQRows:
    """(n, dim) database rows held as PQ codes ``codes`` (n, m) uint8 (an array or a memmap) of ``codec``, and
    the float16 rows ``exact`` when the codec re-ranks (``codec.rerank``)."""

    ndim = 2

    def __init__(self, codes: np.ndarray, codec: Codec, exact: F7File | None = None) -> None:
        self.codes, self.codec, self.exact = codes, codec, exact
        self.centroids = codec.params["centroids"]
        self.rotation = codec.params.get("rotation")
        self.shape = (len(codes), codec.dim)
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def tables(self, queries: np.ndarray) -> np.ndarray:
        """ADC tables (m, q, 256) of float queries (q, dim), rotated first under OPQ."""
        x = np.ascontiguousarray(queries, np.float32)
        if self.rotation is not None:
            x = np.ascontiguousarray(x @ self.rotation.T)
        return adc_tables(x, self.centroids)

    def pair_sqdist(self, queries: np.ndarray, owner: np.ndarray, items: np.ndarray) -> np.ndarray:
        """ADC of the pairs (queries[owner[i]], row items[i]) -> (p,) float32. The codes are read in row order
        (sequentially from the memory map), ``_PAIR_BLOCK`` pairs at a time."""
        out = np.empty(len(items), np.float32)
        for q0 in range(0, len(queries), _TABLE_QUERIES):
            mine = np.flatnonzero((owner >= q0) & (owner < q0 + _TABLE_QUERIES))
            if not mine.size:
                continue
            tables = self.tables(queries[q0 : q0 + _TABLE_QUERIES])
            mine = mine[np.argsort(items[mine], kind="stable")]
            for a in range(0, len(mine), _PAIR_BLOCK):
                pairs = mine[a : a + _PAIR_BLOCK]
                out[pairs] = adc_pairs(tables, owner[pairs] - q0, self.codes[items[pairs]])
        return out

    def sqdist_block(
        self, queries: np.ndarray, start: int, stop: int, tables: np.ndarray | None = None
    ) -> np.ndarray:
        """ADC of every query (q, dim) to rows ``start:stop`` -> (q, stop - start) float32."""
        tables = self.tables(queries) if tables is None else tables
        return adc_matrix(tables, np.asarray(self.codes[start:stop]))

    def nearest(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exhaustive ADC search: (l2 (q, k) float32, idx (q, k) int64) by (distance, index), inf / -1 past n."""
        k, n = check_int(k, "k"), self.shape[0]
        l2_parts, idx_parts = [], []
        for q0 in range(0, len(queries), _TABLE_QUERIES):
            block = queries[q0 : q0 + _TABLE_QUERIES]
            tables = self.tables(block)
            best_d = np.empty((len(block), 0), np.float32)
            best_i = np.empty((len(block), 0), np.int64)
            step = max(1, _SCAN_CELLS // max(1, len(block)))
            for start in range(0, n, step):
                dist = self.sqdist_block(block, start, min(n, start + step), tables)
                idx = np.broadcast_to(np.arange(start, start + dist.shape[1], dtype=np.int64), dist.shape)
                dist, idx = select_topk(dist, idx, k)
                best_d, best_i = select_topk(np.hstack([best_d, dist]), np.hstack([best_i, idx]), k)
            l2_parts.append(np.sqrt(best_d))
            idx_parts.append(best_i)
        l2 = np.vstack(l2_parts) if l2_parts else np.zeros((0, min(k, n)), np.float32)
        idx = np.vstack(idx_parts) if idx_parts else np.zeros((0, min(k, n)), np.int64)
        return pad_columns(l2, k, np.inf), pad_columns(idx, k, -1)

    def __getitem__(self, key: Any) -> np.ndarray:
        """The reconstructions of rows ``key`` (float32, in the queries' space)."""
        codes = np.asarray(self.codes[key])
        m, _, dsub = self.centroids.shape
        flat = codes.reshape(-1, m)
        rows = self.centroids[np.arange(m), flat].reshape(len(flat), m * dsub)  # (r, m, dsub) -> (r, dim)
        if self.rotation is not None:
            rows = rows @ self.rotation
        return rows.reshape(*codes.shape[:-1], m * dsub)

    def widen(self, k: int) -> int:
        """How many results a top-``k`` search asks the ADC ranking for: the top R it re-ranks, at least k."""
        return max(k, self.codec.rerank) if self.exact is not None else k

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)

    def __repr__(self) -> str:
        return f"PQRows({self.shape[0]} x {self.codec.spec})"


def exact_rerank(db_f7: Any, queries: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Each ranking of ``idx`` (q, w) database rows (-1 for none) with its first R re-ranked by exact L2 on the
    float16 rows a PQ index with ``codec_rerank`` R keeps, ties by index; the rest left in place. Any other
    database: ``idx`` unchanged. queries: (q, dim) float32."""
    if not isinstance(db_f7, PQRows) or db_f7.exact is None or not idx.size:
        return idx
    r = min(db_f7.codec.rerank, idx.shape[1])
    head = idx[:, :r]
    _, pos = refine(db_f7.exact, np.ascontiguousarray(queries, np.float32), head, r)
    out = idx.copy()
    out[:, : pos.shape[1]] = np.take_along_axis(head, pos, axis=1)
    return out
