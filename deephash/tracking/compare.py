"""Compare the jobs of a sweep: one row per job (failed ones included), one row per setting, code length
and mode with the mean ± std over its seeds, and two figures.

Only jobs of one setting are averaged: the same dataset, backbone, method and features, and the same value
of every override swept across the jobs except the seed (:mod:`deephash.tracking.sweep`).
"""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deephash.evaluation.plots import write_figure
from deephash.tracking.figures import figure_name, plot_metric_vs_bits, plot_precision_curves
from deephash.tracking.markdown import markdown_table
from deephash.tracking.sweep import (
    INFO,
    MODE_ORDER,
    SETTING_INFO,
    Job,
    completed,
    load_jobs,
    mean_std,
    metric_value,
    result_modes,
    setting,
    setting_overrides,
    swept_keys,
)
from deephash.utils.errors import ConfigError
from deephash.utils.io import atomic_write_text

BASE_COLUMNS = ("job", "status", *INFO, "overrides", "val_acc", "test_acc")
# per-mode columns: (label, path inside metrics["modes"][mode])
MODE_COLUMNS = (
    ("mAP", ("mAP",)),
    ("mAP@1000", ("mAP@1000",)),
    ("P@10", ("precision@k", "10")),
    ("P@100", ("precision@k", "100")),
    ("qps", ("queries_per_second",)),
)
GROUP_METRICS = ("mAP", "mAP@1000", "P@10", "P@100")


@dataclass
class Comparison:
    markdown: str
    files: dict[str, Path]
    jobs: list[Job]


def table(jobs: Sequence[Job]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and one row (raw values, ``None`` where missing) per job; ``overrides`` holds the job's
    swept overrides other than seed and code length."""
    modes = result_modes(jobs)
    swept = swept_keys(jobs)
    columns = [*BASE_COLUMNS, *(f"{m}/{label}" for m in modes for label, _ in MODE_COLUMNS), "error"]
    rows = []
    for job in jobs:
        row: dict[str, Any] = {"job": job.name, "status": job.status, **{k: job.info.get(k) for k in INFO}}
        row["overrides"] = setting_overrides(setting(job, swept))
        row.update({k: _number(job.metrics.get(k)) for k in ("val_acc", "test_acc")})
        for mode in modes:
            results = (job.metrics.get("modes") or {}).get(mode) or {}
            for label, path in MODE_COLUMNS:
                row[f"{mode}/{label}"] = metric_value(results, "/".join(path))
        row["error"] = job.error
        rows.append(row)
    return columns, rows


def group_table(jobs: Sequence[Job]) -> tuple[list[str], list[dict[str, Any]]]:
    """One row per setting, code length and mode over the completed jobs: how many seeds, and each metric's
    mean and sample standard deviation over them (``<metric> std`` is 0 for a single seed)."""
    swept = swept_keys(jobs)
    groups: dict[tuple, list[Job]] = defaultdict(list)
    for job in completed(jobs):
        groups[(setting(job, swept), job.info.get("bits"))].append(job)
    columns = [*SETTING_INFO, "overrides", "bits", "mode", "seeds"]
    columns += [f"{label} {stat}" for label in GROUP_METRICS for stat in ("mean", "std")]
    paths = dict(MODE_COLUMNS)
    rows = []
    for (key, bits), members in groups.items():
        for mode in result_modes(members):
            row: dict[str, Any] = {**dict(key[: len(SETTING_INFO)]), "overrides": setting_overrides(key)}
            row.update({"bits": bits, "mode": mode, "seeds": len(members)})
            for label in GROUP_METRICS:
                values = [
                    # a run stopped while evaluating may say completed without modes (earlier releases did)
                    metric_value(((j.metrics.get("modes") or {}).get(mode) or {}), "/".join(paths[label]))
                    for j in members
                ]
                values = [v for v in values if v is not None]
                mean, std = mean_std(values) if values else (None, None)
                row.update({f"{label} mean": mean, f"{label} std": std})
            rows.append(row)
    modes = {m: i for i, m in enumerate(MODE_ORDER)}

    def order(row: dict[str, Any]) -> tuple:
        setting_text = tuple(str(row[k]) for k in (*SETTING_INFO, "overrides"))
        return (*setting_text, modes.get(row["mode"], len(modes)), row["mode"], row["bits"] or 0)

    return columns, sorted(rows, key=order)


def to_markdown(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    return markdown_table(columns, [[_md_cell(col, row.get(col)) for col in columns] for row in rows])


def groups_markdown(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """The group table with ``mean ± std`` cells (the mean alone for a single seed)."""
    header = [c for c in columns if not c.endswith(" std")]
    header = [c.removesuffix(" mean") for c in header]
    cells = []
    for row in rows:
        out = [_md_cell(c, row.get(c)) for c in (*SETTING_INFO, "overrides", "bits", "mode", "seeds")]
        for label in GROUP_METRICS:
            mean, std = row.get(f"{label} mean"), row.get(f"{label} std")
            text = "-" if mean is None else f"{mean:.4f}"
            out.append(text + (f" ± {std:.4f}" if mean is not None and row["seeds"] > 1 else ""))
        cells.append(out)
    return markdown_table(header, cells)


def to_csv(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: "" if row.get(c) is None else row.get(c) for c in columns} for row in rows)
    return buf.getvalue()


def compare_runs(
    multirun_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    metric: str = "mAP",
    skip: Sequence[str] = (),
) -> Comparison:
    """Write compare.md, compare.csv (one row per job), groups.csv (mean and std over seeds), the figure
    ``<metric>_vs_bits`` and ``precision_curves``, each as PNG, SVG and PDF (default ``<multirun>/compare``).

    files: ``markdown``, ``csv``, ``groups``, ``metric_vs_bits`` and ``precision_curves`` (the PNGs), and
    ``<figure>.svg`` / ``<figure>.pdf`` for the vector copies. ``skip``: folders of ``multirun_dir`` left out.
    """
    jobs = load_jobs(multirun_dir, skip)
    _check_metric(jobs, metric)
    out = Path(out_dir) if out_dir is not None else Path(multirun_dir) / "compare"
    columns, rows = table(jobs)
    group_columns, group_rows = group_table(jobs)
    markdown = (
        "## Jobs\n\n"
        + to_markdown(columns, rows)
        + "\n## Settings: mean ± std over seeds\n\n"
        + groups_markdown(group_columns, group_rows)
    )
    files = {
        "markdown": atomic_write_text(out / "compare.md", markdown),
        "csv": atomic_write_text(out / "compare.csv", to_csv(columns, rows)),
        "groups": atomic_write_text(out / "groups.csv", to_csv(group_columns, group_rows)),
    }
    figures = {
        "metric_vs_bits": (figure_name(metric), plot_metric_vs_bits(jobs, metric)),
        "precision_curves": ("precision_curves", plot_precision_curves(jobs)),
    }
    for name, (stem, fig) in figures.items():
        png, svg, pdf = write_figure(fig, out / f"{stem}.png")
        files.update({name: png, f"{name}.svg": svg, f"{name}.pdf": pdf})
    return Comparison(markdown=markdown, files=files, jobs=jobs)


def _check_metric(jobs: Sequence[Job], metric: str) -> None:
    results = [
        r for j in completed(jobs) for r in (j.metrics.get("modes") or {}).values() if isinstance(r, Mapping)
    ]
    if results and all(metric_value(r, metric) is None for r in results):
        raise ConfigError(
            f"metric {metric!r} is in no run's results: use e.g. mAP, mAP@1000, precision@10, queries_per_second"
        )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _md_cell(column: str, value: Any) -> Any:
    """Numbers rounded for reading (queries per second whole), long text cut to 120 characters."""
    if isinstance(value, float):
        return f"{value:.0f}" if column.endswith("/qps") else f"{value:.4f}"
    text = "" if value is None else " ".join(str(value).split())
    return text if len(text) <= 120 else text[:117] + "..."
