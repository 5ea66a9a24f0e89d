"""Each search mode's evaluator, by name (as pytorch-metric-learning's AccuracyCalculator finds its metrics):
``EVALUATORS`` maps every mode of ``deephash.retrieval.modes.MODES`` to the function that scores it, and says
whether its top-k search (``deephash.retrieval.modes.SEARCHES``) is timed apart. ``evaluate_retrieval``
goes through it; adding a mode is an entry here.

* ``hamming``: all items by Hamming distance on the codes, straight from the codes by
  ``hamming_retrieval_metrics`` (no ranking matrix), which also gives precision@r and the precision-recall
  curve.
* ``hamming_radius``: the unordered set within the radius: precision, recall and how often it is empty
  (timed on that very range search).
* ``hierarchical``: the coarse pool of the hierarchical search ranked by L2 on F7, followed by every other
  item in Hamming order (so its top k are exactly what the search returns).
* ``euclidean``: all items by L2 distance on F7 (the paper's exhaustive search).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from deephash.evaluation.hamming_metrics import hamming_retrieval_metrics
from deephash.evaluation.metrics import count_relevant
from deephash.evaluation.rankings import (
    RankedMetrics,
    euclidean_sqdist,
    pool_first,
    query_blocks,
    stable_ranking,
)
from deephash.retrieval.codes import hamming_distance_matrix
from deephash.retrieval.hamming import HammingSearch
from deephash.retrieval.hierarchical import PoolRule
from deephash.retrieval.items import EncodedItems
from deephash.retrieval.modes import MODES, SEARCHES, ModeQuery
from deephash.retrieval.pq_rows import exact_rerank


@dataclass(frozen=True)
class EvalSetup:
    """What every evaluator is given: the database and the queries (codes, F7, labels), the code length, the
    precision@k cut-offs ``ks``, mAP's cut-off ``map_at``, the pool rule (resolved for k = max(ks); its
    radius is ``hamming_radius``'s and precision@r's), the precision curve's k, the top items kept per
    query, the Hamming index over the database codes, and the torch device of the Hamming metrics (None:
    numpy on the CPU)."""

    database: EncodedItems
    queries: EncodedItems
    bits: int
    ks: Sequence[int]
    map_at: int
    pool: PoolRule
    curve_ks: np.ndarray
    top_n: int
    index: HammingSearch
    device: torch.device | None


@dataclass
class ModeResult:
    """One mode's evaluation: metrics (``metrics.json["modes"][mode]``), and where the mode has them the
    precision curve at ``curve_ks``, the top items (q, top_n) and the Hamming precision-recall curve."""

    metrics: dict
    curve: np.ndarray | None = None
    top: np.ndarray | None = None
    pr: dict[str, np.ndarray] | None = None


@dataclass(frozen=True)
class ModeEvaluator:
    """``evaluate`` scores a mode; ``timed``: its top-k search is timed after (else it times its own)."""

    evaluate: Callable[[EvalSetup], ModeResult]
    timed: bool = True


def _hamming(setup: EvalSetup) -> ModeResult:
    database, queries = setup.database, setup.queries
    found = hamming_retrieval_metrics(
        queries.codes,
        database.codes,
        queries.labels,
        database.labels,
        setup.bits,
        ks=setup.ks,
        map_at=setup.map_at,
        radius=setup.pool.radius,
        curve_ks=setup.curve_ks,
        top_n=setup.top_n,
        device=setup.device,
    )
    return ModeResult(found.metrics, found.curve, found.top, found.pr)


def _hamming_radius(setup: EvalSetup) -> ModeResult:
    """Hamming-ball retrieval: everything within the radius (inclusive), unordered."""
    database, queries, radius = setup.database, setup.queries, setup.pool.radius
    start = time.perf_counter()
    results = setup.index.range_search(queries.codes, radius)
    seconds = time.perf_counter() - start
    sizes = np.array([len(idx) for _, idx in results])
    hits = np.array(
        [int((database.labels[idx] == label).sum()) for (_, idx), label in zip(results, queries.labels)]
    )
    n_relevant = count_relevant(queries.labels, database.labels)
    precision = np.where(sizes > 0, hits / np.maximum(sizes, 1), 0.0)
    recall = np.where(n_relevant > 0, hits / np.maximum(n_relevant, 1), 0.0)
    return ModeResult(
        {
            "radius": int(radius),
            "precision": float(precision.mean()),
            "recall": float(recall.mean()),
            "mean_results": float(sizes.mean()),
            "empty_fraction": float((sizes == 0).mean()),
            "queries_per_second": len(queries.labels) / max(seconds, 1e-9),
        }
    )


def _hierarchical_ranking(setup: EvalSetup, queries: EncodedItems) -> np.ndarray:
    """The re-ranked pool, then every other item in Hamming order: (b, n) database indices."""
    database, pool = setup.database, setup.pool
    dist = hamming_distance_matrix(queries.codes, database.codes)
    # the pool is never larger than this (a radius pool <= max_pool, else the pool_size nearest codes),
    # so a hierarchical search with k = pool_cap returns each query's whole pool, re-ranked
    pool_cap = max(pool.max_pool, pool.pool_size)
    pooled = SEARCHES["hierarchical"](
        ModeQuery(setup.index, database.f7, queries.codes, queries.f7, pool_cap, pool)
    )
    return pool_first(pooled, stable_ranking(dist))


def _euclidean_ranking(setup: EvalSetup, queries: EncodedItems) -> np.ndarray:
    """Every item by (L2 on F7, index): (b, n) database indices."""
    ranking = stable_ranking(euclidean_sqdist(queries.f7, setup.database.f7))
    return exact_rerank(setup.database.f7, queries.f7, ranking)  # a PQ index's top R, where it keeps F7


def _ranked(ranking: Callable[[EvalSetup, EncodedItems], np.ndarray], setup: EvalSetup) -> ModeResult:
    """The metrics of a full ranking of the database, built a block of queries at a time."""
    database, queries = setup.database, setup.queries
    n_relevant = count_relevant(queries.labels, database.labels)
    sums = RankedMetrics(len(setup.ks), len(setup.curve_ks))
    tops = []
    for rows in query_blocks(len(queries.labels), len(database.labels)):
        block = queries.take(rows)
        ranked = ranking(setup, block)
        rel = database.labels[ranked] == block.labels[:, None]
        sums.add(rel, n_relevant[rows], setup.ks, setup.map_at, setup.curve_ks)
        tops.append(ranked[:, : setup.top_n])
    return ModeResult(sums.result(setup.ks, setup.map_at), sums.curve(), np.concatenate(tops))


EVALUATORS: dict[str, ModeEvaluator] = {
    "hamming": ModeEvaluator(_hamming),
    "hamming_radius": ModeEvaluator(_hamming_radius, timed=False),
    "hierarchical": ModeEvaluator(partial(_ranked, _hierarchical_ranking)),
    "euclidean": ModeEvaluator(partial(_ranked, _euclidean_ranking)),
}
if EVALUATORS.keys() != set(MODES):  # a search mode without an evaluator (or the reverse) fails on import
    raise ImportError(f"evaluators {sorted(EVALUATORS)} do not match the search modes {sorted(MODES)}")


def time_search(mode: str, setup: EvalSetup) -> dict:
    """Wall time of ``mode``'s top-k search (k = max(ks), at most the database size) over all queries."""
    database, queries = setup.database, setup.queries
    k = min(max(setup.ks), len(database.labels))
    search = ModeQuery(setup.index, database.f7, queries.codes, queries.f7, k, setup.pool)
    start = time.perf_counter()
    SEARCHES[mode](search)
    seconds = max(time.perf_counter() - start, 1e-9)
    q = len(queries.labels)
    return {"queries_per_second": q / seconds, "ms_per_query": 1000 * seconds / q}
