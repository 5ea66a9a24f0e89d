"""Entry point: ``python -m deephash.evaluate ckpt_path=...`` / ``deephash-eval`` (config ``conf/eval.yaml``).

Also called at the end of ``deephash.train`` (``evaluate: true``). Encodes the query and database splits,
saves the index, evaluates every search mode, writes the report files and extends ``metrics.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from deephash.cli import run_with_user_errors
from deephash.evaluation.pipeline import Encoded, RetrievalReport, evaluate_retrieval, settings
from deephash.evaluation.plots import (
    write_bit_balance,
    write_pr_curve,
    write_precision_curves,
    write_retrieval_grid,
)
from deephash.models.module import load_hash_module
from deephash.retrieval.build import build_index, drop_unreadable
from deephash.retrieval.encode import EncodedSplit
from deephash.retrieval.sublinear import build_hamming_index
from deephash.runs import finish_loggers, instantiate_loggers, record_failure
from deephash.utils.errors import ConfigError
from deephash.utils.io import update_json
from deephash.utils.logging import get_logger

log = get_logger(__name__)
CONFIG_PATH = str(Path(__file__).resolve().parent.parent / "conf")
VAL_QUERIES = 1000  # validation queries used for model selection (val_retrieval)


def evaluate_checkpoint(
    cfg: DictConfig,
    ckpt_path: str | Path,
    datamodule: Any,
    trainer: pl.Trainer | None = None,
    loggers: list | None = None,
    run_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Encode, index and evaluate ``ckpt_path`` on ``datamodule``; returns (and saves) the retrieval metrics."""
    run_dir = Path(run_dir or cfg.paths.output_dir)
    rcfg = cfg.retrieval
    module = load_hash_module(ckpt_path)
    predict_trainer = build_predict_trainer(cfg, trainer)
    bad_images = drop_unreadable(datamodule)  # once, before any split is encoded
    index_dir = Path(rcfg.index_dir) if rcfg.get("index_dir") else run_dir / "index"
    # the encoded queries are saved too (<run>/queries), so anyone can re-check the metrics
    query_store, queries = build_index(
        module, datamodule, ckpt_path, run_dir / "queries", predict_trainer, "query", bad_images
    )
    store, database = build_index(
        module, datamodule, ckpt_path, index_dir, predict_trainer, "database", bad_images
    )
    if store is None or database is None or query_store is None or queries is None:  # not global rank 0
        return {}
    db = Encoded(store.codes, store.f7, store.labels)
    report = evaluate_retrieval(
        db,
        Encoded(query_store.codes, query_store.f7, query_store.labels),
        module.bits,
        **settings(rcfg),
        index=coarse_index(store, rcfg),
    )
    metrics: dict[str, Any] = {
        "n_queries": int(len(queries.labels)),
        "n_database": int(store.count),
        "protocol": datamodule.protocol,
        "index_dir": str(index_dir),
        "queries_dir": str(run_dir / "queries"),
        "modes": report.metrics,
        "val_retrieval": validation_retrieval(database, datamodule.splits["val"], module.bits, rcfg),
    }
    write_reports(
        run_dir, report, datamodule, queries, database, store.codes, module.bits, int(rcfg.grid_queries)
    )
    update_json(run_dir / "metrics.json", metrics)
    log.info("retrieval metrics written to %s", run_dir / "metrics.json")
    return metrics


def coarse_index(store: Any, rcfg: DictConfig) -> Any:
    """The Hamming index of the coarse stage chosen by ``retrieval.coarse`` (exact flat by default)."""
    coarse = rcfg.get("coarse") or {}
    method = coarse.get("method", "flat")
    if method == "flat":
        return store.hamming_index
    params = dict(coarse.get("params") or {})
    return build_hamming_index(store.codes, store.bits, method=method, **params)


def build_predict_trainer(cfg: DictConfig, trainer: pl.Trainer | None) -> pl.Trainer:
    """A trainer for encoding on the same devices/strategy as ``cfg.trainer``, without loggers or checkpoints."""
    if trainer is not None and trainer.world_size > 1:
        return trainer  # already launched processes: reuse their strategy
    return hydra.utils.instantiate(
        cfg.trainer,
        logger=False,
        callbacks=[],
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_predict_batches=None,
        default_root_dir=None,
    )


def validation_retrieval(database: EncodedSplit, val_index: np.ndarray, bits: int, rcfg: DictConfig) -> dict:
    """Hamming mAP of (up to 1,000) validation images against the rest of the database: a model-selection
    signal that never looks at the query set."""
    is_val = np.isin(database.pool_index, val_index)
    val_rows = np.flatnonzero(is_val)
    if val_rows.size == 0 or val_rows.size == is_val.size:
        return {}
    val_rows = val_rows[np.linspace(0, val_rows.size - 1, min(VAL_QUERIES, val_rows.size)).astype(int)]
    rest = np.flatnonzero(~is_val)
    no_f7 = np.zeros((0, 0), np.float16)  # hamming mode reads codes only
    report = evaluate_retrieval(
        Encoded(database.codes[rest], no_f7, database.labels[rest]),
        Encoded(database.codes[val_rows], no_f7, database.labels[val_rows]),
        bits,
        modes=["hamming"],
        ks=[k for k in rcfg.ks if k <= rest.size] or [1],
        map_at=int(rcfg.map_at),
        radius=int(rcfg.radius),
    )
    result = report.metrics["hamming"]
    return {
        "n_queries": int(val_rows.size),
        "mAP": result["mAP"],
        f"mAP@{rcfg.map_at}": result[f"mAP@{rcfg.map_at}"],
    }


def write_reports(
    run_dir: Path,
    report: RetrievalReport,
    datamodule: Any,
    queries: EncodedSplit,
    database: EncodedSplit,
    db_codes: np.ndarray,
    bits: int,
    grid_queries: int,
) -> None:
    """precision@k curves (CSV+PNG, figures 4/6), the Hamming PR curve, the top-10 grid, the bit balance."""
    name = datamodule.name
    curves = {mode: (report.curve_ks, curve) for mode, curve in report.curves.items()}
    if curves:
        write_precision_curves(
            curves,
            run_dir / "precision_at_k.csv",
            run_dir / "precision_at_k.png",
            title=f"{name}, {bits} bits",
        )
    if report.pr:
        write_pr_curve(
            {"hamming": report.pr},
            run_dir / "pr_curve.csv",
            run_dir / "pr_curve.png",
            title=f"{name}, {bits} bits",
        )
    write_bit_balance(db_codes, run_dir / "bit_balance.png", run_dir / "bit_balance.csv", bits=bits)
    mode = next((m for m in ("hierarchical", "hamming", "euclidean") if m in report.top), None)
    if mode is None or grid_queries < 1:
        return
    rows = np.unique(
        np.linspace(0, len(queries.labels) - 1, min(grid_queries, len(queries.labels))).astype(int)
    )
    top = report.top[mode][rows]
    pool = datamodule.pool
    write_retrieval_grid(
        [np.asarray(pool.image(int(queries.pool_index[r]))) for r in rows],
        queries.labels[rows].tolist(),
        [[np.asarray(pool.image(int(database.pool_index[j]))) for j in row] for row in top],
        [database.labels[row].tolist() for row in top],
        run_dir / "retrieval_grid.png",
        class_names=datamodule.class_names,
        title=f"top {top.shape[1]} by {mode} search ({name}, {bits} bits)",
    )


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` (the standalone entry point)."""
    ckpt = Path(str(cfg.ckpt_path)).expanduser()
    if not ckpt.is_file():
        raise ConfigError(f"ckpt_path not found: {ckpt} (expected a .ckpt written by deephash-train)")
    trained_in = checkpoint_run_dir(ckpt)
    run_dir = Path(cfg.run_dir) if cfg.get("run_dir") else trained_in or Path(cfg.paths.output_dir)
    data_cfg = cfg.get("data") or run_data_config(trained_in)
    if data_cfg is None:
        raise ConfigError(
            f"no dataset given and no training run config beside {ckpt}; pass data=<digits|mnist|cifar10|folder>"
        )
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup()
    run_dir.mkdir(parents=True, exist_ok=True)
    loggers = instantiate_loggers(cfg.get("logger"), cfg)
    metrics = evaluate_checkpoint(cfg, ckpt, datamodule, run_dir=run_dir)
    if metrics:
        finish_loggers(loggers, {**metrics, "best_checkpoint": None}, run_dir)
    return metrics


def checkpoint_run_dir(ckpt: Path) -> Path | None:
    """``<run>/checkpoints/x.ckpt`` -> ``<run>``."""
    return ckpt.resolve().parent.parent if ckpt.resolve().parent.name == "checkpoints" else None


def run_data_config(run_dir: Path | None) -> DictConfig | None:
    """The ``data`` config of a training run: its resolved ``config.yaml`` (or Hydra's ``.hydra/config.yaml``)."""
    if run_dir is None:
        return None
    for path in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if path.is_file():
            run_cfg = OmegaConf.load(path)
            return OmegaConf.create(OmegaConf.to_container(run_cfg.data, resolve=True))
    return None


@hydra.main(config_path=CONFIG_PATH, config_name="eval", version_base="1.3")
def main(cfg: DictConfig) -> None:
    metrics = run_with_user_errors(evaluate, cfg, on_failure=record_failure)
    print_summary(metrics)


def print_summary(metrics: dict[str, Any]) -> None:
    """A short table of the retrieval metrics (CLI output)."""
    from rich.console import Console
    from rich.table import Table

    modes = metrics.get("modes") or {}
    if not modes:
        return
    title = f"retrieval: {metrics.get('n_queries')} queries x {metrics.get('n_database')} items"
    if metrics.get("bits"):
        title += f", {metrics['bits']} bits"
    accuracy = ", ".join(
        f"{k} {metrics[k]:.4f}" for k in ("val_acc", "test_acc") if metrics.get(k) is not None
    )
    table = Table(title=title, caption=accuracy or None)
    for column in ("mode", "mAP", "mAP@1000", "P@10", "P@100", "P@r2", "queries/s"):
        table.add_column(column, justify="right")

    def fmt(value: Any, spec: str = ".4f") -> str:
        return "-" if value is None else format(value, spec)

    for mode, m in modes.items():
        p = m.get("precision@k", {})
        table.add_row(
            mode,
            fmt(m.get("mAP")),
            fmt(m.get("mAP@1000")),
            fmt(p.get("10")),
            fmt(p.get("100")),
            fmt(m.get("precision@r2", m.get("precision"))),
            fmt(m.get("queries_per_second"), ",.0f"),
        )
    Console().print(table)


if __name__ == "__main__":
    main()
