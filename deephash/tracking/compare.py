"""Compare the jobs of a sweep: one row per job (failed ones included), a table and two figures.

A job is a directory holding ``metrics.json`` or ``.hydra/config.yaml`` (a job that crashed before
writing its metrics still has the latter). metrics.json holds the run's status, dataset, backbone, method,
bits, seed, val/test accuracy and, under ``modes``, each search mode's retrieval metrics.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from deephash.evaluation.plots import read_precision_curves
from deephash.tracking.markdown import markdown_table
from deephash.utils.errors import ConfigError
from deephash.utils.io import atomic_write_bytes, atomic_write_text

INFO = ("dataset", "backbone", "method", "bits", "seed")
BASE_COLUMNS = ("job", "status", *INFO, "val_acc", "test_acc")
# per-mode columns: (label, path inside metrics["modes"][mode])
MODE_COLUMNS = (
    ("mAP", ("mAP",)),
    ("mAP@1000", ("mAP@1000",)),
    ("P@10", ("precision@k", "10")),
    ("P@100", ("precision@k", "100")),
    ("qps", ("queries_per_second",)),
)
MODE_ORDER = ("hamming", "hierarchical", "euclidean")
NO_METRICS = "no metrics.json: the job stopped before writing results (or is still running)"


@dataclass
class Job:
    """One job of a sweep: ``name`` is its path relative to the sweep directory."""

    name: str
    path: Path
    status: str
    info: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""


@dataclass
class Comparison:
    markdown: str
    files: dict[str, Path]
    jobs: list[Job]


def dataset_from_target(target: str) -> str:
    """Datamodule class path -> dataset name: ``deephash.data.mnist.MNISTDataModule`` -> ``mnist``."""
    cls = str(target).rsplit(".", 1)[-1]
    return re.sub(r"DataModule$", "", cls).lower() or cls.lower()


def find_jobs(root: str | os.PathLike) -> list[Path]:
    """Job directories under ``root`` (``root`` itself for a single run), in natural order (2 before 10)."""
    jobs = []
    for dirpath, dirnames, filenames in os.walk(root):
        path = Path(dirpath)
        if "metrics.json" in filenames or (path / ".hydra" / "config.yaml").is_file():
            jobs.append(path)
            dirnames.clear()  # a job's own subfolders (index/, checkpoints/, wandb/) are not jobs
        else:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return sorted(jobs, key=lambda p: _natural_key(p.relative_to(root).as_posix()))


def load_job(path: Path, root: Path) -> Job:
    """Read a job's metrics.json, falling back to its Hydra config for what a failed job never wrote."""
    name = path.relative_to(root).as_posix() if path != root else path.name
    metrics: dict[str, Any] = {}
    error = ""
    metrics_path = path / "metrics.json"
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, ValueError) as err:
            error = f"unreadable metrics.json: {err}"
        if not isinstance(metrics, dict):
            metrics, error = {}, "metrics.json does not hold a JSON object"
    else:
        error = NO_METRICS
    if error:
        status = "failed"
    else:
        status = str(metrics.get("status") or ("completed" if metrics.get("modes") else "unknown"))
        error = " ".join(str(metrics.get("error") or "").split())
    known = {k: metrics[k] for k in INFO if metrics.get(k) not in (None, "")}
    info = {**_config_info(path / ".hydra" / "config.yaml"), **known}
    return Job(name=name, path=path, status=status, info=info, metrics=metrics, error=error)


def load_jobs(multirun_dir: str | os.PathLike) -> list[Job]:
    root = Path(multirun_dir)
    if not root.exists():
        raise ConfigError(
            f"multirun directory {root} does not exist: pass a sweep folder (multirun/<task>/<time>)"
        )
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory: pass a sweep folder (multirun/<task>/<time>)")
    jobs = [load_job(path, root) for path in find_jobs(root)]
    if not jobs:
        raise ConfigError(
            f"no runs found in {root}: expected job folders with metrics.json or .hydra/config.yaml"
        )
    return jobs


def metric_value(mode_metrics: Mapping[str, Any], metric: str) -> float | None:
    """``mAP``, ``mAP@1000``, ``precision@10`` (or ``precision@k/10``), ``queries_per_second``... of one mode."""
    path = metric.split("/")
    if len(path) == 1 and (m := re.fullmatch(r"precision@(\d+)", metric)):
        path = ["precision@k", m.group(1)]
    value: Any = mode_metrics
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def result_modes(jobs: Sequence[Job]) -> list[str]:
    """Search modes with ranking metrics in any job (hamming, hierarchical, euclidean first)."""
    found = {
        m
        for j in jobs
        for m, v in (j.metrics.get("modes") or {}).items()
        if isinstance(v, Mapping) and "mAP" in v
    }
    return [m for m in MODE_ORDER if m in found] + sorted(found - set(MODE_ORDER))


def table(jobs: Sequence[Job]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and one row (raw values, ``None`` where missing) per job."""
    modes = result_modes(jobs)
    columns = [*BASE_COLUMNS, *(f"{m}/{label}" for m in modes for label, _ in MODE_COLUMNS), "error"]
    rows = []
    for job in jobs:
        row: dict[str, Any] = {"job": job.name, "status": job.status, **{k: job.info.get(k) for k in INFO}}
        row.update({k: _number(job.metrics.get(k)) for k in ("val_acc", "test_acc")})
        for mode in modes:
            results = (job.metrics.get("modes") or {}).get(mode) or {}
            for label, path in MODE_COLUMNS:
                row[f"{mode}/{label}"] = metric_value(results, "/".join(path))
        row["error"] = job.error
        rows.append(row)
    return columns, rows


def to_markdown(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    return markdown_table(columns, [[_md_cell(col, row.get(col)) for col in columns] for row in rows])


def to_csv(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: "" if row.get(c) is None else row.get(c) for c in columns} for row in rows)
    return buf.getvalue()


def plot_metric_vs_bits(jobs: Sequence[Job], metric: str = "mAP") -> Figure:
    """``metric`` against code length, one line per mode (and per dataset/backbone/method when they vary).

    Several seeds of one setting are averaged; error bars show their standard deviation.
    """
    series: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for job in _completed(jobs):
        if job.info.get("bits") is None:
            continue
        for mode, results in (job.metrics.get("modes") or {}).items():
            value = metric_value(results, metric) if isinstance(results, Mapping) else None
            if value is not None:
                series[_label(job, jobs, mode)][int(job.info["bits"])].append(value)
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    for label, by_bits in series.items():
        bits = sorted(by_bits)
        values = [np.asarray(by_bits[b]) for b in bits]
        std = [v.std() if len(v) > 1 else 0.0 for v in values]
        ax.errorbar(bits, [v.mean() for v in values], yerr=std, marker="o", capsize=3, label=label)
    all_bits = sorted({b for by_bits in series.values() for b in by_bits})
    if all_bits:
        ax.set_xticks(all_bits)
        ax.legend(loc="lower right")
    else:
        ax.text(
            0.5, 0.5, f"no completed run reports {metric}", ha="center", va="center", transform=ax.transAxes
        )
    ax.set(xlabel="Code length (bits)", ylabel=metric, title=f"{metric} vs code length")
    ax.grid(True, alpha=0.3)
    return fig


def plot_precision_curves(jobs: Sequence[Job]) -> Figure:
    """Precision@k curves from each job's precision_at_k.csv: one subplot per mode, one line per bit count."""
    curves: dict[str, dict[str, list[dict[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for job in _completed(jobs):
        for mode, (ks, precision) in read_precision_curves(job.path / "precision_at_k.csv").items():
            label = _label(job, jobs, f"{job.info.get('bits', '?')} bits")
            curves[mode][label].append(dict(zip(ks.tolist(), precision.tolist())))
    modes = [m for m in MODE_ORDER if m in curves] + sorted(set(curves) - set(MODE_ORDER))
    fig = Figure(figsize=(5.0 * max(len(modes), 1), 4.2))
    axes = np.atleast_1d(fig.subplots(1, max(len(modes), 1), squeeze=False)).ravel()
    if not modes:
        axes[0].text(0.5, 0.5, "no precision_at_k.csv found", ha="center", va="center")
    for ax, mode in zip(axes, modes):
        for label in sorted(curves[mode], key=_natural_key):
            ks = sorted({k for curve in curves[mode][label] for k in curve})
            mean = [np.nanmean([c.get(k, np.nan) for c in curves[mode][label]]) for k in ks]
            ax.plot(ks, mean, marker="o" if len(ks) <= 20 else None, markersize=3, label=label)
        ax.set(title=mode, xlabel="Number of retrieved images", ylabel="Precision", ylim=(0.0, 1.02))
        if max((k for lines in curves[mode].values() for c in lines for k in c), default=1) >= 100:
            ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


def compare_runs(
    multirun_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, metric: str = "mAP"
) -> Comparison:
    """Write compare.md, compare.csv, map_vs_bits.png and precision_curves.png (default ``<multirun>/compare``)."""
    jobs = load_jobs(multirun_dir)
    _check_metric(jobs, metric)
    out = Path(out_dir) if out_dir is not None else Path(multirun_dir) / "compare"
    columns, rows = table(jobs)
    markdown = to_markdown(columns, rows)
    files = {
        "markdown": atomic_write_text(out / "compare.md", markdown),
        "csv": atomic_write_text(out / "compare.csv", to_csv(columns, rows)),
        "map_vs_bits": atomic_write_bytes(out / "map_vs_bits.png", _png(plot_metric_vs_bits(jobs, metric))),
        "precision_curves": atomic_write_bytes(
            out / "precision_curves.png", _png(plot_precision_curves(jobs))
        ),
    }
    return Comparison(markdown=markdown, files=files, jobs=jobs)


def _check_metric(jobs: Sequence[Job], metric: str) -> None:
    results = [
        r for j in _completed(jobs) for r in (j.metrics.get("modes") or {}).values() if isinstance(r, Mapping)
    ]
    if results and all(metric_value(r, metric) is None for r in results):
        raise ConfigError(
            f"metric {metric!r} is in no run's results: use e.g. mAP, mAP@1000, precision@10, queries_per_second"
        )


def _completed(jobs: Sequence[Job]) -> list[Job]:
    return [j for j in jobs if j.status == "completed"]


def _label(job: Job, jobs: Sequence[Job], base: str) -> str:
    """``base`` prefixed with the dataset/backbone/method of the job where those differ across the sweep."""
    varying = [
        k
        for k in ("dataset", "backbone", "method")
        if len({str(j.info.get(k)) for j in _completed(jobs)}) > 1
    ]
    return " ".join([*(str(job.info.get(k)) for k in varying), base])


def _config_info(path: Path) -> dict[str, Any]:
    """dataset/backbone/method/bits/seed from a saved Hydra config (interpolations left unresolved)."""
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(path)
    except Exception:  # noqa: BLE001 - a broken config only costs the columns it would fill
        return {}

    def get(key: str) -> Any:
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        return value if isinstance(value, (str, int, float)) else None

    target = get("data._target_")
    info = {
        "dataset": get("dataset") or (dataset_from_target(target) if target else None),
        "backbone": get("model.backbone"),
        "method": get("method") or ("deephash" if get("model._target_") else None),
        "bits": get("model.bits") if get("model.bits") is not None else get("bits"),
        "seed": get("seed"),
    }
    return {k: v for k, v in info.items() if v is not None}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _md_cell(column: str, value: Any) -> Any:
    """Numbers rounded for reading (queries per second whole), long text cut to 120 characters."""
    if isinstance(value, float):
        return f"{value:.0f}" if column.endswith("/qps") else f"{value:.4f}"
    text = "" if value is None else " ".join(str(value).split())
    return text if len(text) <= 120 else text[:117] + "..."


def _natural_key(text: str) -> list[Any]:
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part
    ]


def _png(fig: Figure, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()
