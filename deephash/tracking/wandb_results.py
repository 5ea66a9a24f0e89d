"""A run's results on Weights & Biases: the retrieval metrics as one history row against ``bits``, the curves as
tables and charts, the report figures, the summary, and the checkpoint and index as artifacts.

Every helper accepts a ``WandbLogger``, a list of loggers (the W&B one is picked, none means no-op), a
``wandb`` run, or ``None`` (the active run), and only acts on global rank 0.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import wandb
from lightning_utilities.core.rank_zero import rank_zero_only

from deephash.evaluation.plots import read_precision_curves
from deephash.tracking.wandb import active_run, wandb_loggers
from deephash.utils.logging import get_logger

log = get_logger(__name__)

# run-directory images logged as wandb.Image, by W&B key
IMAGES = {
    "retrieval/grid": "retrieval_grid.png",
    "retrieval/bit_balance_plot": "bit_balance.png",
    "retrieval/precision_at_k_plot": "precision_at_k.png",
    "retrieval/pr_curve_plot": "pr_curve.png",
}
# metrics.json entries that are not results (paths, tracebacks)
NOT_SUMMARY = frozenset({"best_checkpoint", "last_checkpoint", "traceback", "index_dir", "queries_dir"})
# metrics.json entries W&B holds elsewhere: the run's config (dataset, backbone, bits, seed), or the
# retrieval history row (modes, val_retrieval)
NOT_WANDB_SUMMARY = NOT_SUMMARY | {"dataset", "backbone", "bits", "seed", "modes", "val_retrieval"}
# the data description repeats these (dataset, protocol and seed are the run's own)
REPEATED = frozenset({"data/dataset", "data/protocol", "data/seed"})
# metrics.json names of quantities Lightning already logs under another name: written under that name,
# and only when the run has no value for it yet (val/acc keeps its best value through define_metric)
WANDB_NAMES = {
    "val_acc": "val/acc",
    "test_acc": "test/acc",
    "epochs": "epoch",
    "global_step": "trainer/global_step",
}


def flatten_metrics(metrics: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """metrics.json -> ``{"modes/hamming/mAP": 0.9, "modes/hamming/precision@k/10": 0.8, "bits": 48, ...}``.

    Numbers and strings are kept; ``None``, lists, checkpoint paths and tracebacks are left out.
    """
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if key in NOT_SUMMARY or value is None:
            continue
        if isinstance(value, Mapping):
            flat.update({f"{key}{sep}{k}": v for k, v in flatten_metrics(value, sep).items()})
        elif isinstance(value, (bool, int, float, str, np.number)):
            flat[str(key)] = value.item() if isinstance(value, np.number) else value
    return flat


def retrieval_scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The final retrieval numbers under their W&B names: ``retrieval/<mode>/<metric>`` for every mode of
    ``metrics["modes"]`` and ``retrieval/val/<metric>`` for ``val_retrieval``, ``precision@k/10`` as
    ``precision@10``."""
    sections = {f"retrieval/{mode}": values for mode, values in (metrics.get("modes") or {}).items()}
    if metrics.get("val_retrieval"):
        sections["retrieval/val"] = metrics["val_retrieval"]
    out: dict[str, float] = {}
    for prefix, values in sections.items():
        for key, value in flatten_metrics(values).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{prefix}/{key.replace('precision@k/', 'precision@')}"] = value
    return out


def wandb_summary(metrics: Mapping[str, Any], logged: Collection[str] = ()) -> dict[str, Any]:
    """The summary values metrics.json adds to a run: its entries under their W&B names, without the
    config and retrieval entries W&B holds elsewhere, and without quantities ``logged`` already has."""
    summary: dict[str, Any] = {}
    for key, value in flatten_metrics(
        {k: v for k, v in metrics.items() if k not in NOT_WANDB_SUMMARY}
    ).items():
        name = WANDB_NAMES.get(key, key)
        if key in REPEATED or (name != key and name in logged):
            continue
        summary[name] = value
    return summary


@rank_zero_only
def log_retrieval_results(
    logger_or_run: Any,
    metrics: Mapping[str, Any],
    run_dir: str | os.PathLike,
    bit_fire_rates: np.ndarray | None = None,
) -> None:
    """Log a run's final retrieval results as one history row: the scalars of :func:`retrieval_scalars`
    with ``bits`` (their x axis), the curves as tables and charts, the figures; the rest of metrics.json
    goes to the summary (:func:`wandb_summary`).

    metrics: the run's metrics.json dict. From ``run_dir``: precision_at_k.csv, pr_curve.csv and the PNG
    figures; missing files are skipped. bit_fire_rates: (bits,) fraction of ones per bit; defaults to
    bit_balance.csv when present.
    """
    run = active_run(logger_or_run)
    if run is None:
        return
    run_dir = Path(run_dir)
    payload: dict[str, Any] = retrieval_scalars(metrics)
    if metrics.get("bits") is not None:
        payload["bits"] = int(metrics["bits"])
    payload.update(_precision_at_k(run_dir / "precision_at_k.csv"))
    payload.update(_pr_curve(run_dir / "pr_curve.csv"))
    for key, filename in IMAGES.items():
        if (run_dir / filename).is_file():
            payload[key] = wandb.Image(str(run_dir / filename))
        else:
            log.debug("no %s in %s: not logged", filename, run_dir)
    rates = bit_fire_rates if bit_fire_rates is not None else _bit_fire_rates(run_dir / "bit_balance.csv")
    if rates is not None and len(rates):
        rates = np.asarray(rates, dtype=np.float64).ravel()
        payload["retrieval/bit_fire_rates"] = wandb.Histogram(rates, num_bins=min(64, max(len(rates), 1)))
        payload["bit_balance/mean_abs_deviation"] = float(np.abs(rates - 0.5).mean())
    if payload:
        run.log(payload)
    run.summary.update(wandb_summary(metrics, set(run.summary.keys())))


@rank_zero_only
def log_artifacts(
    logger_or_run: Any,
    run_dir: str | os.PathLike,
    best_checkpoint: str | os.PathLike | None,
    index_dir: str | os.PathLike | None,
) -> list[str]:
    """Log the best checkpoint (``model`` artifact) and the index directory (``index`` artifact).

    Offline runs record them too: ``wandb sync`` uploads them later from their place in the run directory
    (which must therefore still be there). The checkpoint is skipped when the logger already logs checkpoints
    itself (``log_model``). Returns the names of the artifacts logged.
    """
    run = active_run(logger_or_run)
    if run is None:
        return []
    lightning_logs_model = any(getattr(lg, "_log_model", False) for lg in wandb_loggers(logger_or_run))
    artifacts = make_artifacts(
        run.id,
        None if lightning_logs_model else best_checkpoint,
        index_dir,
        metrics_path=Path(run_dir) / "metrics.json",
    )
    for artifact in artifacts:
        run.log_artifact(artifact, aliases=["latest", "best"] if artifact.type == "model" else ["latest"])
    return [a.name for a in artifacts]


def make_artifacts(
    run_id: str,
    best_checkpoint: str | os.PathLike | None,
    index_dir: str | os.PathLike | None,
    metrics_path: str | os.PathLike | None = None,
) -> list[wandb.Artifact]:
    """``model-<run_id>`` (the checkpoint as ``model.ckpt``) and ``index-<run_id>`` (the index files), where present."""
    metadata: dict[str, Any] = {}
    if metrics_path is not None and Path(metrics_path).is_file():
        metrics = json.loads(Path(metrics_path).read_text())
        metadata = {k: metrics[k] for k in ("dataset", "backbone", "bits", "seed", "method") if k in metrics}
    artifacts = []
    if best_checkpoint and Path(best_checkpoint).is_file():
        model = wandb.Artifact(f"model-{run_id}", type="model", metadata=metadata)
        # immutable: referenced where it is rather than copied into W&B's staging area (checkpoints are large)
        model.add_file(str(best_checkpoint), name="model.ckpt", policy="immutable")
        artifacts.append(model)
    if index_dir and Path(index_dir).is_dir():
        manifest = Path(index_dir) / "manifest.json"
        index_meta = {**metadata, **(json.loads(manifest.read_text()) if manifest.is_file() else {})}
        index = wandb.Artifact(f"index-{run_id}", type="index", metadata=index_meta)
        index.add_dir(str(index_dir), policy="immutable")
        artifacts.append(index)
    return artifacts


def _read_csv(path: Path) -> tuple[list[str], list[list[Any]]] | None:
    """Header and rows, numeric cells as floats (ints where whole), empty cells as ``None``."""
    if not path.is_file():
        log.debug("no %s: not logged", path)
        return None
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return None
    return rows[0], [[_number(cell) for cell in row] for row in rows[1:]]


def _number(cell: str) -> Any:
    if cell == "":
        return None
    try:
        value = float(cell)
    except ValueError:
        return cell
    return int(value) if value.is_integer() and "." not in cell else value


def _precision_at_k(path: Path) -> dict[str, Any]:
    """precision_at_k.csv (k, one column per mode) -> its table and a line chart, one line per mode."""
    curves = read_precision_curves(path)
    if not curves:
        return {}
    by_mode = {mode: dict(zip(ks.tolist(), p.tolist())) for mode, (ks, p) in curves.items()}
    grid = sorted({k for points in by_mode.values() for k in points})
    rows = [[k, *(points.get(k) for points in by_mode.values())] for k in grid]
    return {
        "retrieval/precision_at_k_values": wandb.Table(columns=["k", *curves], data=rows),
        "retrieval/precision_at_k": wandb.plot.line_series(
            xs=[ks.tolist() for ks, _ in curves.values()],
            ys=[p.tolist() for _, p in curves.values()],
            keys=list(curves),
            title="Precision vs number of retrieved images",
            xname="k",
        ),
    }


def _pr_curve(path: Path) -> dict[str, Any]:
    """pr_curve.csv ([mode,] radius, precision, recall) -> a precision-recall line chart (its table as ``*_table``)."""
    parsed = _read_csv(path)
    if parsed is None or not {"precision", "recall"} <= set(parsed[0]):
        return {}
    columns, rows = parsed
    table = wandb.Table(columns=columns, data=rows)
    stroke = "mode" if "mode" in columns else None
    return {
        "retrieval/pr_curve": wandb.plot.line(
            table, "recall", "precision", stroke=stroke, title="Hamming ranking precision-recall"
        )
    }


def _bit_fire_rates(path: Path) -> np.ndarray | None:
    """bit_balance.csv (bit, fraction_ones) -> (bits,) fraction of ones per bit."""
    parsed = _read_csv(path)
    if parsed is None or "fraction_ones" not in parsed[0]:
        return None
    j = parsed[0].index("fraction_ones")
    return np.array([row[j] for row in parsed[1] if row[j] is not None], dtype=np.float64)
