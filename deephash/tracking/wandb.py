"""Weights & Biases tracking: a configured ``WandbLogger`` per run, and the run's retrieval results.

Usage from a training entry point (``conf/logger/wandb.yaml`` builds the logger)::

    loggers = instantiate_loggers(cfg.logger, cfg)  # build_wandb_logger(...) among them
    ...
    log_retrieval_results(loggers, metrics, run_dir)
    log_artifacts(loggers, run_dir, best_checkpoint, run_dir / "index")
    finish(loggers)  # exit_code=1 for a failed job

Every helper accepts a ``WandbLogger``, a list of loggers (the W&B one is picked, none means no-op),
a ``wandb`` run, or ``None`` (the active run), and only acts on global rank 0.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import wandb
from lightning_utilities.core.rank_zero import rank_zero_only
from pytorch_lightning.loggers import WandbLogger

from deephash.evaluation.plots import read_precision_curves
from deephash.tracking.sweep import dataset_from_target
from deephash.utils.errors import ConfigError
from deephash.utils.logging import get_logger

log = get_logger(__name__)

MODES = ("auto", "online", "offline", "disabled")
DEFAULT_BASE_URL = "https://api.wandb.ai"
# run-directory images logged as wandb.Image, by W&B key
IMAGES = {
    "retrieval/grid": "retrieval_grid.png",
    "retrieval/bit_balance_plot": "bit_balance.png",
    "retrieval/precision_at_k_plot": "precision_at_k.png",
    "retrieval/pr_curve_plot": "pr_curve.png",
}
# metrics.json entries that are not results (paths, tracebacks)
NOT_SUMMARY = frozenset({"best_checkpoint", "last_checkpoint", "traceback"})
_REINIT: Any = (
    "finish_previous" if tuple(int(p) for p in wandb.__version__.split(".")[:2]) >= (0, 19) else True
)


def has_credentials(base_url: str | None = None) -> bool:
    """Whether W&B could log in without a prompt: ``WANDB_API_KEY``, an identity token file, or a netrc entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    token_file = os.environ.get("WANDB_IDENTITY_TOKEN_FILE")
    if token_file and Path(token_file).is_file():
        return True
    host = base_url or os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL
    try:
        from wandb.sdk.lib.wbauth import read_netrc_auth

        return bool(read_netrc_auth(host=host))
    except ImportError:  # wandb < 0.22 keeps the lookup elsewhere; read the netrc file ourselves
        import netrc
        from urllib.parse import urlsplit

        path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
        try:
            creds = netrc.netrc(path).authenticators(urlsplit(host).netloc)
        except (OSError, netrc.NetrcParseError):
            return False
        return bool(creds and creds[2])
    except Exception:  # noqa: BLE001 - a malformed key cannot log in either
        return False


def resolve_mode(mode: str = "auto") -> str:
    """``online``, ``offline`` or ``disabled``: ``WANDB_MODE`` wins, then ``mode``; ``auto`` is online with credentials."""
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode:
        env_mode = {"dryrun": "offline", "run": "online"}.get(env_mode, env_mode)
        if env_mode not in MODES[1:]:
            raise ConfigError(f"WANDB_MODE={env_mode!r} is not one of online, offline, disabled")
        return env_mode
    if mode not in MODES:
        raise ConfigError(f"W&B mode {mode!r} is not one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    return "online" if has_credentials() else "offline"


def build_wandb_logger(
    project: str = "deephash",
    entity: str | None = None,
    group: str | None = None,
    name: str | None = None,
    job_type: str = "train",
    tags: Sequence[str] = (),
    mode: str = "auto",
    save_dir: str | os.PathLike = ".",
    log_model: bool | str = True,
    dataset: str | None = None,
    data_target: str | None = None,
    backbone: str | None = None,
    bits: int | None = None,
    seed: int | None = None,
    task_name: str = "train",
    **init_kwargs: Any,
) -> WandbLogger:
    """A ``WandbLogger`` for one run (one job of a multirun): a new W&B run, never the previous job's.

    Defaults: group ``<dataset>-<task_name>``, name ``bits<k>-seed<s>``; tags gain the dataset, backbone
    and ``bits<k>``. ``dataset`` falls back to the datamodule class in ``data_target``
    (``...DigitsDataModule`` -> ``digits``). ``log_model`` (the checkpoints as artifacts) is online only.
    """
    resolved = resolve_mode(mode)
    if wandb.run is not None:
        # WandbLogger would silently reuse a run left open by the previous job
        wandb.finish()
    dataset = dataset or (dataset_from_target(data_target) if data_target else None) or "unknown"
    extra_tags = [dataset, backbone, f"bits{bits}" if bits is not None else None]
    all_tags = list(dict.fromkeys(str(t) for t in [*(tags or ()), *extra_tags] if t))
    config = {"dataset": dataset, "backbone": backbone, "bits": bits, "seed": seed, "task_name": task_name}
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    logger = WandbLogger(
        project=project,
        entity=entity,
        group=group or f"{dataset}-{task_name}",
        name=name or default_run_name(bits, seed),
        job_type=job_type,
        tags=all_tags,
        save_dir=str(save_dir),
        log_model=log_model if resolved == "online" else False,
        mode=resolved,
        config={k: v for k, v in config.items() if v is not None},
        reinit=_REINIT,
        **init_kwargs,
    )
    if resolved == "offline":
        log.info("W&B runs offline; upload later with: wandb sync %s", save_dir / "wandb" / "offline-run-*")
    return logger


def default_run_name(bits: int | None, seed: int | None) -> str | None:
    """``bits48-seed42`` (parts that are unknown are left out; ``None`` lets W&B pick a name)."""
    parts = [f"bits{bits}" if bits is not None else "", f"seed{seed}" if seed is not None else ""]
    return "-".join(p for p in parts if p) or None


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


@rank_zero_only
def log_retrieval_results(
    logger_or_run: Any,
    metrics: Mapping[str, Any],
    run_dir: str | os.PathLike,
    bit_fire_rates: np.ndarray | None = None,
) -> None:
    """Log a run's final retrieval results: metrics as summary values, curves as tables and charts, figures.

    metrics: the run's metrics.json dict (flattened with "/" into the summary). From ``run_dir``:
    precision_at_k.csv, pr_curve.csv and the PNG figures; missing files are skipped.
    bit_fire_rates: (bits,) fraction of ones per bit; defaults to bit_balance.csv when present.
    """
    run = _active_run(logger_or_run)
    if run is None:
        return
    run_dir = Path(run_dir)
    payload: dict[str, Any] = {}
    payload.update(_precision_at_k(run_dir / "precision_at_k.csv"))
    payload.update(_pr_curve(run_dir / "pr_curve.csv"))
    for key, filename in IMAGES.items():
        if (run_dir / filename).is_file():
            payload[key] = wandb.Image(str(run_dir / filename))
        else:
            log.debug("no %s in %s: not logged", filename, run_dir)
    summary = flatten_metrics(metrics)
    rates = bit_fire_rates if bit_fire_rates is not None else _bit_fire_rates(run_dir / "bit_balance.csv")
    if rates is not None and len(rates):
        rates = np.asarray(rates, dtype=np.float64).ravel()
        payload["retrieval/bit_fire_rates"] = wandb.Histogram(rates, num_bins=min(64, max(len(rates), 1)))
        summary["bit_balance/mean_abs_deviation"] = float(np.abs(rates - 0.5).mean())
    if payload:
        run.log(payload)
    run.summary.update(summary)


@rank_zero_only
def log_artifacts(
    logger_or_run: Any,
    run_dir: str | os.PathLike,
    best_checkpoint: str | os.PathLike | None,
    index_dir: str | os.PathLike | None,
) -> list[str]:
    """Upload the best checkpoint (``model`` artifact) and the index directory (``index`` artifact); online only.

    The checkpoint is skipped when the logger already logs checkpoints itself (``log_model``).
    Returns the names of the artifacts logged.
    """
    run = _active_run(logger_or_run)
    if run is None or run.offline:
        log.debug("W&B run is offline or absent: artifacts not uploaded")
        return []
    lightning_logs_model = any(getattr(lg, "_log_model", False) for lg in _wandb_loggers(logger_or_run))
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
        model.add_file(str(best_checkpoint), name="model.ckpt")
        artifacts.append(model)
    if index_dir and Path(index_dir).is_dir():
        manifest = Path(index_dir) / "manifest.json"
        index_meta = {**metadata, **(json.loads(manifest.read_text()) if manifest.is_file() else {})}
        index = wandb.Artifact(f"index-{run_id}", type="index", metadata=index_meta)
        index.add_dir(str(index_dir))
        artifacts.append(index)
    return artifacts


@rank_zero_only
def finish(logger_or_run: Any = None, exit_code: int = 0) -> None:
    """Close the run (a logger's, or the active one) so the next job of a multirun starts its own."""
    loggers = _wandb_loggers(logger_or_run)
    if loggers:
        run = loggers[0]._experiment  # not ``.experiment``: that would start a run just to close it
    else:
        run = wandb.run if logger_or_run is None else logger_or_run
    if run is not None and hasattr(run, "finish"):
        run.finish(exit_code=exit_code)


def _wandb_loggers(logger_or_run: Any) -> list[WandbLogger]:
    if isinstance(logger_or_run, WandbLogger):
        return [logger_or_run]
    if isinstance(logger_or_run, Iterable) and not isinstance(logger_or_run, (str, bytes, Mapping)):
        return [lg for lg in logger_or_run if isinstance(lg, WandbLogger)]
    return []


def _active_run(logger_or_run: Any) -> Any:
    """The wandb run to log to, or ``None`` (no W&B logger, or a disabled run)."""
    if logger_or_run is None:
        run = wandb.run
    elif isinstance(logger_or_run, (WandbLogger, list, tuple)):
        loggers = _wandb_loggers(logger_or_run)
        run = loggers[0].experiment if loggers else None
    else:
        run = logger_or_run
    if run is None or not hasattr(run, "log") or getattr(run, "disabled", False):
        return None
    return run


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
