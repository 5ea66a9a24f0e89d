"""Squared Euclidean distance on F7: the one definition behind every L2 search and evaluation.

The L2 distance of paper eq. 2 is the square root of the squared distance computed here, in one of two ways:

* exact, from direct differences (``pair_sqdist``, and ``exact_l2`` its square root): FAISS's
  ``fvec_L2sqr_by_idx``, one SIMD difference per pair with a fixed order of summation, in float32. A pair's
  distance depends on nothing else (not on chunking, batch or memory position), and a copy of the query is
  at 0. Every L2 distance a search reports is this one.
* fast, through a matrix product: |q|^2 - 2 q.x + |x|^2 (``sqdist_matrix`` in numpy, ``knn_sqdist`` in
  FAISS's BLAS k-NN, ``device_pair_sqdist`` in torch on a device). In float32 it can be off by up to
  ``e = 4 (d + 2) 2^-24 (|q|^2 + max |x|^2)`` (``fast_error``; d the feature width), so a search only
  shortlists with it and then computes its shortlist's exact distances. In float64 (``sqdist_matrix`` with
  ``dtype=np.float64``) the products of float32 values are exact and the same bound holds with 2^-53 in place
  of 2^-24.

A product-quantised database (``deephash.retrieval.pq_rows``) is ranked by the asymmetric distance (ADC) of
Jegou et al. (TPAMI 2011): the squared distance of the query to each row's reconstruction, the sum over the
m sub-vectors of a table of query-to-centroid distances (``adc_tables``), added in sub-vector order in float32
(``adc_pairs``, ``adc_matrix``: the same bits for the same pair either way).

Squared norms |x|^2 come from ``sqnorms``. No other module of deephash computes an L2 distance
(``tests/test_architecture.py`` checks).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from deephash.retrieval.faiss_blas import faiss

_PAIR_SLICE_VALUES = 1 << 24  # gathered F7 values per slice of device pair products (64 MB of float32)
_CENTROID_TABLE_BYTES = 32 << 20  # float32 distance table of a block of rows to every PQ centroid


def sqnorms(x: np.ndarray) -> np.ndarray:
    """Squared norm |x|^2 of each row: x (m, d) -> (m,) of x's dtype."""
    return np.einsum("ij,ij->i", x, x)


def pair_sqdist(queries: np.ndarray, owner: np.ndarray, rows: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Exact squared distances, float32, of the pairs (queries[owner[i]], rows[inverse[i]]): queries (q, d),
    rows (m, d) float32; owner, inverse (p,) int64 -> (p,). The reference: the float64 sum of the squared
    differences, which they match to float32 rounding.

    Each row is scored against the queries that share it (their list padded with -1, threaded over the
    rows): the row is read once and no gathered copy of rows or queries is made.
    """
    sharing, slot = queries_by_row(owner, inverse, len(rows))
    out = np.empty(sharing.shape, np.float32)
    rows = np.ascontiguousarray(rows, np.float32)
    queries = np.ascontiguousarray(queries, np.float32)
    sqdist_by_row(out, rows, queries, sharing)
    return out[inverse, slot]


def queries_by_row(owner: np.ndarray, inverse: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The queries sharing each of ``m`` rows: (sharing (m, w) int64, -1 padded, w the most pairs of one row;
    slot (p,), the column of pair i in its row ``inverse[i]``), the layout of ``sqdist_by_row``."""
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


def sqdist_by_row(out: np.ndarray, rows: np.ndarray, queries: np.ndarray, sharing: np.ndarray) -> None:
    """out[i, j] = exact squared distance of (rows[i], queries[sharing[i, j]]), -1 entries skipped: the
    kernel of ``pair_sqdist``. Every array C-contiguous; out, rows and queries float32."""
    faiss.fvec_L2sqr_by_idx(
        faiss.swig_ptr(out),
        faiss.swig_ptr(rows),
        faiss.swig_ptr(queries),
        faiss.swig_ptr(sharing),
        rows.shape[1],
        len(rows),
        sharing.shape[1],
    )


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


def _expand(dots: Any, query_sqnorms: Any, row_sqnorms: Any) -> Any:
    """|q|^2 - 2 q.x + |x|^2 in place of the dot products ``dots`` (the norms broadcast against them)."""
    dots *= -2
    dots += query_sqnorms
    dots += row_sqnorms
    return dots


def sqdist_matrix(
    queries: np.ndarray,
    rows: np.ndarray,
    query_sqnorms: np.ndarray | None = None,
    row_sqnorms: np.ndarray | None = None,
    *,
    dtype: Any = np.float32,
) -> np.ndarray:
    """Fast squared distances max(|q|^2 - 2 q.x + |x|^2, 0) through one matrix product, in ``dtype``.

    queries: (q, d); rows: (c, d), both of ``dtype`` (anything else is converted) -> (q, c) ``dtype``; the
    norms (``sqnorms``) are computed when not given. float32 is within ``fast_error`` of the exact distance:
    cancellation makes it inexact for near neighbours (a copy of the query lands at ~1e-3 instead of 0),
    so searches only shortlist with it. float64 of float32 values is within the same bound with 2^-53 in
    place of 2^-24, so distances further apart than twice that are ordered exactly.
    """
    queries, rows = np.asarray(queries, dtype), np.asarray(rows, dtype)
    if query_sqnorms is None:
        query_sqnorms = sqnorms(queries)
    if row_sqnorms is None:
        row_sqnorms = sqnorms(rows)
    sq = _expand(queries @ rows.T, query_sqnorms[:, None], row_sqnorms[None, :])
    return np.maximum(sq, 0, out=sq)


def l2_distances(
    queries: np.ndarray,
    rows: np.ndarray,
    query_sqnorms: np.ndarray | None = None,
    row_sqnorms: np.ndarray | None = None,
) -> np.ndarray:
    """Fast approximate Euclidean distances, the square roots of ``sqdist_matrix``'s float32 ones.

    queries: (q, d) float32; rows: (c, d) float32 -> (q, c) float32, for shortlists only (then ``exact_l2``).
    """
    sq = sqdist_matrix(queries, rows, query_sqnorms, row_sqnorms)
    return np.sqrt(sq, out=sq)


def knn_sqdist(
    queries: np.ndarray, rows: np.ndarray, row_sqnorms: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of least fast squared distance to each query, by FAISS's BLAS k-NN (``faiss.knn``'s own
    call, given the row norms already computed): queries (q, d), rows (c, d), row_sqnorms (c,), all float32
    and C-contiguous; k <= c -> (dist (q, k) float32, idx (q, k) int64 positions in ``rows``), by distance.
    Of the rows tied at the k-th distance FAISS keeps an arbitrary subset."""
    q = len(queries)
    dist, idx = np.empty((q, k), np.float32), np.empty((q, k), np.int64)
    faiss.knn_L2sqr(
        faiss.swig_ptr(queries),
        faiss.swig_ptr(rows),
        rows.shape[1],
        q,
        len(rows),
        k,
        faiss.swig_ptr(dist),
        faiss.swig_ptr(idx),
        faiss.swig_ptr(row_sqnorms),
    )
    return dist, idx


def device_pair_sqdist(
    device: torch.device,
    queries: np.ndarray,
    query_sqnorms: np.ndarray,
    owner: np.ndarray,
    rows: np.ndarray,
    inverse: np.ndarray,
) -> np.ndarray:
    """Fast squared distances |q|^2 - 2 q.x + |x|^2 (float32) of the pairs (queries[owner[i]],
    rows[inverse[i]]), their dot products computed on ``device`` (at memory speed on a GPU): queries (q, d),
    query_sqnorms (q,), rows (m, d) float32; owner, inverse (p,) int64 -> (p,). Within ``fast_error`` of the
    exact distances; a ``deephash.retrieval.hierarchical.PoolScorer`` once ``device`` is bound."""
    rows_t = torch.from_numpy(rows).to(device)
    owner_t = torch.from_numpy(owner).to(device)
    inverse_t = torch.from_numpy(inverse).to(device)
    users, local = torch.unique(owner_t, return_inverse=True)
    queries_t = torch.from_numpy(queries).to(device)[users]
    dots = torch.empty(len(owner), dtype=torch.float32, device=device)
    step = max(1, _PAIR_SLICE_VALUES // rows.shape[1])
    for s in range(0, len(owner), step):
        t = slice(s, s + step)
        dots[t] = (rows_t[inverse_t[t]] * queries_t[local[t]]).sum(dim=1)
    return _expand(dots.cpu().numpy(), query_sqnorms[owner], sqnorms(rows)[inverse])


def fast_error(query_sqnorms: np.ndarray, max_sqnorm: float, d: int) -> np.ndarray:
    """(q,) float64: the bound ``e`` of the module docstring on how far a fast squared distance
    |q|^2 - 2 q.x + |x|^2 in float32 can be from the exact one, for rows of squared norm <= ``max_sqnorm``."""
    return 4 * (d + 2) * 2.0**-24 * (np.asarray(query_sqnorms, np.float64) + max_sqnorm)


def adc_tables(queries: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Squared distances of each query sub-vector to each centroid of its sub-quantiser.

    queries: (q, m * dsub) float32; centroids: (m, ksub, dsub) float32 -> (m, q, ksub) float32, >= 0 (the
    expansion's float32 error is far below the quantisation error these tables rank by).
    """
    m, ksub, dsub = centroids.shape
    parts = np.ascontiguousarray(
        np.asarray(queries, np.float32).reshape(len(queries), m, dsub).transpose(1, 0, 2)
    )
    tables = np.matmul(parts, centroids.transpose(0, 2, 1))  # (m, q, ksub) dot products
    tables *= -2
    tables += np.einsum("mqd,mqd->mq", parts, parts)[:, :, None]
    tables += np.einsum("mkd,mkd->mk", centroids, centroids)[:, None, :]
    return np.maximum(tables, 0, out=tables)


def adc_pairs(tables: np.ndarray, owner: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """ADC of the pairs (query owner[i], row with PQ code codes[i]): tables (m, q, ksub) of ``adc_tables``;
    owner (p,) int64; codes (p, m) uint8 -> (p,) float32, summed in sub-vector order."""
    m, q, ksub = tables.shape
    flat = tables.reshape(-1)
    codes = np.asarray(codes)
    base = np.asarray(owner, np.int64) * ksub
    out = flat[base + codes[:, 0]] if m else np.zeros(len(base), np.float32)
    for j in range(1, m):
        out += flat[base + (j * q * ksub) + codes[:, j]]
    return out


def adc_matrix(tables: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """ADC of every query to every row: tables (m, q, ksub); codes (c, m) uint8 -> (q, c) float32, the same
    bits as ``adc_pairs`` for each pair."""
    m, q, _ = tables.shape
    by_part = np.ascontiguousarray(np.asarray(codes).T)
    out = np.take(tables[0], by_part[0], axis=1) if m else np.zeros((q, len(codes)), np.float32)
    for j in range(1, m):
        out += np.take(tables[j], by_part[j], axis=1)
    return out


def nearest_centroids(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """PQ codes: x (n, m * dsub) float32, centroids (m, 256, dsub) -> (n, m) uint8, each sub-vector's nearest
    centroid (``ProductQuantizer.compute_codes``, up to the rounding of near-equal distances).

    Hand-written: FAISS's ``compute_codes`` fills its (n, m, 256) table one (n, dsub) x (dsub, 256) product per
    sub-quantiser into a strided layout, 1,000 rows/s for pq64 at 4096-d on 2 cores; one batched product per
    block of rows (``torch.baddbmm``: |c|^2 - 2 x.c, |x|^2 being the same for every centroid) is 5x that. A
    block's table is bounded to ``_CENTROID_TABLE_BYTES``.
    """
    m, ksub, dsub = centroids.shape
    weights = torch.from_numpy(np.ascontiguousarray(centroids.transpose(0, 2, 1)))  # (m, dsub, 256)
    norms = torch.from_numpy(np.einsum("mkd,mkd->mk", centroids, centroids))[:, None, :]  # (m, 1, 256)
    out = np.empty((len(x), m), np.uint8)
    step = max(1, _CENTROID_TABLE_BYTES // (4 * m * ksub))
    for start in range(0, len(x), step):
        block = torch.from_numpy(x[start : start + step]).view(-1, m, dsub).transpose(0, 1)  # (m, b, dsub)
        table = torch.baddbmm(norms, block, weights, alpha=-2)  # (m, b, 256)
        out[start : start + step] = table.argmin(dim=2).T.numpy()
    return out
