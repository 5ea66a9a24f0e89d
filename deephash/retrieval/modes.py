"""The search modes by name: each mode's top-k search, the one registry behind ``MODES``.

A mode's search takes a ``ModeQuery`` and returns ``(q, k) int64`` database rows, best first, -1 where a query
has fewer than k results. ``deephash.Searcher`` searches through it, and evaluation times it; adding a mode is
an entry here (and its evaluator in ``deephash.evaluation.modes``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deephash.retrieval.exhaustive import euclidean_search
from deephash.retrieval.features import F7File
from deephash.retrieval.hamming import HammingSearch
from deephash.retrieval.hierarchical import PoolRule, hierarchical_search
from deephash.retrieval.pq_rows import PQRows, exact_rerank
from deephash.retrieval.torch_search import TorchHammingIndex
from deephash.retrieval.torch_search import hierarchical_search as device_hierarchical_search


@dataclass(frozen=True)
class ModeQuery:
    """A top-k search in any mode: a Hamming index over the database codes, the database F7 (n, d), packed
    query codes (q, ceil(bits / 8)) uint8, query F7 (q, d), k, and the hierarchical ``PoolRule`` (whose radius
    is also ``hamming_radius``'s)."""

    index: HammingSearch
    db_f7: np.ndarray | F7File
    query_packed: np.ndarray
    query_f7: np.ndarray
    k: int
    pool: PoolRule


def _hamming(s: ModeQuery) -> np.ndarray:
    """The k nearest codes, ties by index."""
    return s.index.search(s.query_packed, s.k)[1]


def _hamming_radius(s: ModeQuery) -> np.ndarray:
    """The first k codes within ``pool.radius`` (inclusive), by (distance, index)."""
    found = s.index.range_search(s.query_packed, s.pool.radius)
    out = np.full((len(found), s.k), -1, np.int64)
    for row, (_, idx) in zip(out, found):
        row[: min(s.k, len(idx))] = idx[: s.k]
    return out


def _wide(s: ModeQuery) -> int:
    """Results to ask for: a PQ index that re-ranks its top R exactly needs at least R."""
    return s.db_f7.widen(s.k) if isinstance(s.db_f7, PQRows) else s.k


def _hierarchical(s: ModeQuery) -> np.ndarray:
    """The coarse pool re-ranked by L2 on F7, on the torch device of a ``TorchHammingIndex``."""
    search = device_hierarchical_search if isinstance(s.index, TorchHammingIndex) else hierarchical_search
    pool = s.pool.resolved(s.k)  # the pools of a top-k search, however many results are re-ranked
    idx = search(s.index, s.db_f7, s.query_packed, s.query_f7, _wide(s), pool).idx
    return exact_rerank(s.db_f7, s.query_f7, idx)[:, : s.k]


def _euclidean(s: ModeQuery) -> np.ndarray:
    """Every item by L2 on F7 (the codes are not used)."""
    idx = euclidean_search(s.db_f7, s.query_f7, _wide(s))[1]
    return exact_rerank(s.db_f7, s.query_f7, idx)[:, : s.k]


SEARCHES: dict[str, Callable[[ModeQuery], np.ndarray]] = {
    "hamming": _hamming,
    "hamming_radius": _hamming_radius,
    "hierarchical": _hierarchical,
    "euclidean": _euclidean,
}
MODES: tuple[str, ...] = tuple(SEARCHES)  # the search modes, in the order reports list them
