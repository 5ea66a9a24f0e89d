"""Evaluate the search modes on encoded queries against a database, the way the paper does.

For each ranked mode a *full* ranking of the database is built per query (ties by database index), from
which mAP, mAP@k and precision@k follow (``deephash.evaluation.metrics``); each mode's evaluator is found
by name in ``deephash.evaluation.modes.EVALUATORS``, which describes them. Queries are processed in blocks so
a (queries x database) matrix never has to fit in memory at once. Search speed (``queries_per_second``) is
timed separately on the top-``max(ks)`` search each mode offers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deephash.evaluation.metrics import KS
from deephash.evaluation.modes import EVALUATORS, EvalSetup, time_search
from deephash.retrieval.hamming import HammingIndex, HammingSearch
from deephash.retrieval.hierarchical import PoolRule, coarse_pools
from deephash.retrieval.items import EncodedItems, IndexStore
from deephash.retrieval.modes import MODES
from deephash.retrieval.torch_search import TorchHammingIndex, torch_device
from deephash.utils.errors import ConfigError

# the pool rule of conf/retrieval's defaults
EVAL_POOL = PoolRule(radius=2, min_pool=100, max_pool=10_000, pool_size=1000)


@dataclass
class RetrievalReport:
    """metrics: per mode, the dict stored under ``metrics.json["modes"]``; curves: per mode, precision at
    ``curve_ks``; pr: the Hamming precision-recall curve; top: per mode, (q, top_n) database indices."""

    metrics: dict[str, dict] = field(default_factory=dict)
    curve_ks: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    pr: dict[str, np.ndarray] = field(default_factory=dict)
    top: dict[str, np.ndarray] = field(default_factory=dict)


def default_curve_ks(n_database: int, max_k: int = 1000) -> np.ndarray:
    """k = 1..100 step 1, then step 10 up to max_k (the x axis of the paper's figures 4 and 6)."""
    ks = np.unique(np.concatenate([np.arange(1, 101), np.arange(100, max_k + 1, 10)]))
    return ks[ks <= max(1, min(max_k, n_database))]


def evaluate_retrieval(
    database: EncodedItems,
    queries: EncodedItems,
    bits: int,
    *,
    modes: Sequence[str] = MODES,
    ks: Sequence[int] = KS,
    map_at: int = 1000,
    pool: PoolRule = EVAL_POOL,
    top_n: int = 10,
    curve_ks: np.ndarray | None = None,
    index: HammingSearch | None = None,
    device: str = "cpu",
) -> RetrievalReport:
    """Metrics of every requested mode (see ``deephash.evaluation.modes``) for ``queries`` against
    ``database``.

    ``pool``: the hierarchical pool rule (its defaults resolved for k = max(ks)); its radius is also
    that of ``hamming_radius`` and of precision@r. ``device``: ``cpu`` (numpy and FAISS) or ``cuda``:
    the exact coarse Hamming stage, the hierarchical pool scoring and the Hamming-mode metrics in torch
    on that device (``deephash.retrieval.torch_search``), with the same results; a sub-linear coarse
    ``index`` stays on the CPU."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ConfigError(f"unknown retrieval mode(s) {unknown}; expected any of: {', '.join(MODES)}")
    n = len(database.labels)
    if n == 0 or len(queries.labels) == 0:
        raise ConfigError(
            f"retrieval needs a non-empty database and query set, got {n} and {len(queries.labels)}"
        )
    if isinstance(database, IndexStore) and queries.f7 is not None:
        query_f7 = database.query_features(queries.f7)  # a PCA index compares projected features
        if query_f7 is not queries.f7:
            queries = EncodedItems(
                codes=queries.codes,
                f7=query_f7,
                labels=queries.labels,
                ids=queries.ids,
                pool_index=queries.pool_index,
            )
    dev = torch_device(device) if device != "cpu" else None
    if dev is not None and (index is None or isinstance(index, HammingIndex)):
        index = TorchHammingIndex(database.codes, bits, dev)
    index = index or HammingIndex(database.codes, bits)
    curve_ks = default_curve_ks(n) if curve_ks is None else np.asarray(curve_ks)
    report = RetrievalReport(curve_ks=curve_ks)
    setup = EvalSetup(
        database=database,
        queries=queries,
        bits=bits,
        ks=ks,
        map_at=map_at,
        pool=pool.resolved(max(ks)),
        curve_ks=curve_ks,
        top_n=top_n,
        index=index,
        device=dev,
    )
    for mode in modes:
        evaluator = EVALUATORS[mode]
        found = evaluator.evaluate(setup)
        report.metrics[mode] = found.metrics | (time_search(mode, setup) if evaluator.timed else {})
        if found.curve is not None:
            report.curves[mode] = found.curve
        if found.top is not None:
            report.top[mode] = found.top
        if found.pr is not None:
            report.pr = found.pr
    if "hierarchical" in modes and not isinstance(index, (HammingIndex, TorchHammingIndex)):
        exact = HammingIndex(
            database.codes, bits
        )  # a sub-linear coarse stage: how much of the exact pools it finds
        report.metrics["hierarchical"]["pool_recall"] = pool_recall(
            index, exact, queries.codes, setup.pool, max(ks)
        )
    return report


def pool_recall(
    index: HammingSearch, exact: HammingSearch, query_codes: np.ndarray, pool: PoolRule, k: int
) -> float:
    """Mean over queries of the share of the exact coarse pool (``exact``'s, under ``pool`` for a top-``k``
    search) that ``index`` (a sub-linear coarse stage) puts in its pool; 1 for an empty exact pool."""
    limits = pool.limits(k)
    found = coarse_pools(index, query_codes, pool.radius, *limits)
    wanted = coarse_pools(exact, query_codes, pool.radius, *limits)
    shares = [len(np.intersect1d(f, w)) / len(w) if len(w) else 1.0 for (_, f), (_, w) in zip(found, wanted)]
    return float(np.mean(shares)) if shares else 1.0


def settings(retrieval: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of :func:`evaluate_retrieval` from a ``retrieval`` config (conf/retrieval)."""
    return {
        "modes": list(retrieval["modes"]),
        "ks": [int(k) for k in retrieval["ks"]],
        "map_at": int(retrieval["map_at"]),
        "pool": pool_rule(retrieval),
        "device": str(retrieval.get("device", "cpu")),
    }


def pool_rule(retrieval: Mapping[str, Any]) -> PoolRule:
    """The hierarchical pool rule of a ``retrieval`` config (conf/retrieval)."""
    return PoolRule(
        radius=int(retrieval["radius"]),
        min_pool=int(retrieval["min_pool"]),
        max_pool=int(retrieval["max_pool"]),
        pool_size=int(retrieval["pool_size"]),
    )


__all__ = [
    "MODES",
    "RetrievalReport",
    "default_curve_ks",
    "evaluate_retrieval",
    "pool_recall",
    "pool_rule",
    "settings",
]
