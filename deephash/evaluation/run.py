"""Evaluation of a run: encode and index a checkpoint, or take saved indexes, then evaluate and report.

One path for every caller: ``deephash-train`` (``evaluate: true``), ``deephash-eval`` and
``deephash-baseline`` all end in :func:`evaluate_indexes`, which evaluates the saved database and query
indexes with the coarse stage chosen by ``retrieval.coarse``, writes the report files and returns the
``metrics.json`` entries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from omegaconf import DictConfig

from deephash.evaluation.pipeline import RetrievalReport, evaluate_retrieval, pool_rule, settings
from deephash.evaluation.plots import (
    write_bit_balance,
    write_pr_curve,
    write_precision_curves,
    write_retrieval_grid,
)
from deephash.models.checkpoint import load_hash_module
from deephash.retrieval.build import build_index, drop_unreadable
from deephash.retrieval.codecs import codec_options
from deephash.retrieval.index_lock import check_index_target
from deephash.retrieval.items import IndexStore
from deephash.retrieval.searcher import refuse_unlabelled
from deephash.retrieval.sublinear import build_hamming_index
from deephash.utils.io import update_json
from deephash.utils.logging import get_logger

log = get_logger(__name__)
VAL_QUERIES = 1000  # validation queries used for model selection (val_retrieval)


def evaluate_checkpoint(
    cfg: DictConfig,
    ckpt_path: str | Path,
    datamodule: Any,
    predict_trainer: pl.Trainer,
    run_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Encode, index and evaluate ``ckpt_path`` on ``datamodule``; returns (and saves) the retrieval metrics.

    ``predict_trainer`` encodes (``deephash.runs.build_predict_trainer``); under DDP every rank encodes
    and global rank 0 evaluates, the others get ``{}``."""
    run_dir = Path(run_dir or cfg.paths.output_dir)
    rcfg = cfg.retrieval
    index_dir = Path(rcfg.index_dir) if rcfg.get("index_dir") else run_dir / "index"
    refuse_unlabelled(index_dir)  # never rebuilt over someone's own photos
    check_index_target(index_dir)  # nor over a file or a folder that is not an index
    check_index_target(run_dir / "queries")
    module = load_hash_module(ckpt_path)
    bad_images = drop_unreadable(datamodule)  # once, before any split is encoded
    # the encoded queries are saved too (<run>/queries), so anyone can re-check the metrics
    queries = build_index(
        module, datamodule, ckpt_path, run_dir / "queries", predict_trainer, "query", bad_images
    )
    codec = codec_options(rcfg)  # how the database index stores its re-rank features (float16 by default)
    database = build_index(
        module, datamodule, ckpt_path, index_dir, predict_trainer, "database", bad_images, codec
    )
    if database is None or queries is None:  # not global rank 0
        return {}
    metrics = {
        **evaluate_indexes(rcfg, database, queries, datamodule, run_dir),
        # which weights these numbers are of (deephash-eval may be handed any checkpoint of the run)
        "evaluated_checkpoint": str(Path(ckpt_path).absolute()),
        "protocol": datamodule.protocol,
        # the split sizes after unreadable images were left out, so they agree with the index
        "data": datamodule.describe(),
        "bad_images": len(bad_images),
        "val_retrieval": validation_retrieval(database, datamodule.splits["val"], rcfg),
    }
    update_json(run_dir / "metrics.json", metrics)
    log.info("retrieval metrics written to %s", run_dir / "metrics.json")
    return metrics


def evaluate_indexes(
    rcfg: DictConfig, database: IndexStore, queries: IndexStore, datamodule: Any, run_dir: Path
) -> dict[str, Any]:
    """Evaluate the saved ``queries`` against the saved ``database`` with the settings of ``rcfg``
    (``conf/retrieval``), write the report files into ``run_dir`` and return the metrics.json entries."""
    refuse_unlabelled(database)
    refuse_unlabelled(queries)
    report = evaluate_retrieval(
        database, queries, database.bits, **settings(rcfg), index=coarse_index(database, rcfg)
    )
    write_reports(run_dir, report, datamodule, database, int(rcfg.grid_queries))
    return {
        "n_queries": int(queries.count),
        "n_database": int(database.count),
        "index_dir": str(database.path),
        "queries_dir": str(queries.path),
        "modes": report.metrics,
    }


def coarse_index(store: IndexStore, rcfg: DictConfig) -> Any:
    """The Hamming index of the coarse stage chosen by ``retrieval.coarse`` (exact flat by default)."""
    coarse = rcfg.get("coarse") or {}
    method = coarse.get("method", "flat")
    if method == "flat":
        return store.hamming_index
    params = dict(coarse.get("params") or {})
    return build_hamming_index(store.codes, store.bits, method=method, **params)


def validation_retrieval(database: IndexStore, val_index: np.ndarray, rcfg: DictConfig) -> dict:
    """Hamming mAP of (up to 1,000) validation images against the rest of the database: a model-selection
    signal that never looks at the query set."""
    is_val = np.isin(database.pool_index, val_index)
    val_rows = np.flatnonzero(is_val)
    if val_rows.size == 0 or val_rows.size == is_val.size:
        return {}
    val_rows = val_rows[np.linspace(0, val_rows.size - 1, min(VAL_QUERIES, val_rows.size)).astype(int)]
    rest = np.flatnonzero(~is_val)
    report = evaluate_retrieval(
        database.take(rest, f7=False),  # hamming mode reads codes only
        database.take(val_rows, f7=False),
        database.bits,
        modes=["hamming"],
        ks=[k for k in rcfg.ks if k <= rest.size] or [1],
        map_at=int(rcfg.map_at),
        pool=pool_rule(rcfg),
    )
    result = report.metrics["hamming"]
    return {
        "n_queries": int(val_rows.size),
        "mAP": result["mAP"],
        f"mAP@{rcfg.map_at}": result[f"mAP@{rcfg.map_at}"],
    }


def write_reports(
    run_dir: Path, report: RetrievalReport, datamodule: Any, database: IndexStore, grid_queries: int
) -> None:
    """precision@k curves (CSV+PNG, figures 4/6), the Hamming PR curve, the top-10 grid, the bit balance."""
    name, bits = datamodule.name, database.bits
    title = f"{name}, {bits} bits"
    curves = {mode: (report.curve_ks, curve) for mode, curve in report.curves.items()}
    if curves:
        write_precision_curves(
            curves, run_dir / "precision_at_k.csv", run_dir / "precision_at_k.png", title=title
        )
    if report.pr:
        write_pr_curve(
            {"hamming": report.pr}, run_dir / "pr_curve.csv", run_dir / "pr_curve.png", title=title
        )
    write_bit_balance(database.codes, run_dir / "bit_balance.png", run_dir / "bit_balance.csv", bits=bits)
    mode = next((m for m in ("hierarchical", "hamming", "euclidean") if m in report.top), None)
    if mode is None or grid_queries < 1:
        return
    query_pool, db_pool = np.asarray(datamodule.splits["query"]), np.asarray(datamodule.splits["database"])
    query_labels = datamodule.pool.labels[query_pool]
    rows = np.unique(np.linspace(0, len(query_pool) - 1, min(grid_queries, len(query_pool))).astype(int))
    top = report.top[mode][rows]
    pool = datamodule.pool
    write_retrieval_grid(
        [np.asarray(pool.image(int(query_pool[r]))) for r in rows],
        query_labels[rows].tolist(),
        [[np.asarray(pool.image(int(db_pool[j]))) for j in row] for row in top],
        [database.labels[row].tolist() for row in top],
        run_dir / "retrieval_grid.png",
        class_names=datamodule.class_names,
        title=f"top {top.shape[1]} by {mode} search ({name}, {bits} bits)",
    )
