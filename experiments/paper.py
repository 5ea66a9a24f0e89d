"""The paper's numbers (``paper_results.yaml``) against ours, read from the runs on disk."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from deephash.evaluation.plots import read_precision_curves
from deephash.tracking.markdown import markdown_table
from deephash.tracking.sweep import mean_std
from deephash.utils.errors import ConfigError
from experiments.launch import one_line
from experiments.plan import (
    BASELINE_BITS,
    PAPER_DATASETS,
    SMALL_CNN_BACKBONES,
    SMALL_CNN_LABEL,
    Plan,
    is_complete,
    read_json,
    read_metrics,
    read_status,
)

PAPER_RESULTS = Path(__file__).with_name("paper_results.yaml")
CIFAR10_10K50K = "cifar10_10k50k"  # the authors' README protocol: runs cifar10_10k50k/bits<k>, CIFAR-10 only
RUN_NAME = re.compile(
    r"(?P<dataset>[^/]+)/(?:bits(?P<bits>\d+)|baselines/(?P<method>\w+)-(?P<features>\w+))(?P<seed>/seed\d+)?"
)


def load_paper_results(path: Path = PAPER_RESULTS) -> list[dict[str, Any]]:
    """The entries of paper_results.yaml, checked: id, quantity, value, unit, run, metric, source."""
    entries = (yaml.safe_load(path.read_text()) or {}).get("entries") or []
    for entry in entries:
        missing = [
            k for k in ("id", "quantity", "value", "unit", "run", "metric", "source") if k not in entry
        ]
        if missing:
            raise ConfigError(f"{path}: entry {entry.get('id', '?')} lacks {', '.join(missing)}")
        figure_only = entry.get("reported") == "figure-only"
        if figure_only != (entry["value"] is None):
            raise ConfigError(
                f"{path}: entry {entry['id']}: value must be null exactly when reported: figure-only"
            )
    return entries


def resolve_run(plan: Plan, run: str) -> tuple[str | None, str]:
    """Paper run name (``mnist/bits48``) -> ours (smoke: ``digits/bits48``), or ``None`` and why not."""
    head, _, rest = run.partition("/")
    if head == "yahoo" and plan.yahoo_root is None:
        return None, "no --yahoo-root (or YAHOO_ROOT) given"
    if head == CIFAR10_10K50K and (plan.smoke or "cifar10" not in plan.datasets):
        return None, "CIFAR-10 only (smoke trains digits)" if plan.smoke else "cifar10 not in --datasets"
    if head in PAPER_DATASETS:
        if head not in plan.datasets:
            return None, f"{head} not in --datasets"
        return f"{plan.datasets[head]}/{rest}", ""
    return run, ""


def small_cnn(plan: Plan, name: str) -> bool:
    """Whether the run ``name`` (``mnist/bits48``, ``mnist/baselines/itq-f7``) trained, or takes F7 from, a
    small CNN in place of AlexNet: its model's metrics.json says so (its first seed's that has one), or, not
    run yet, the plan trains its dataset so. Never in smoke, whose header says digits ran the small CNN."""
    m = RUN_NAME.fullmatch(name)
    if plan.smoke or m is None or m["dataset"] not in plan.trained or m["features"] == "pixels":
        return False
    model = f"{m['dataset']}/bits{m['bits'] or BASELINE_BITS}"
    for run in plan.seed_runs(model):
        backbone = read_metrics(plan.runs / run).get("backbone")
        if backbone:
            return backbone in SMALL_CNN_BACKBONES
    return m["dataset"] in plan.small_cnn


def planned_reason(plan: Plan, name: str) -> str:
    """Why the run ``name`` is not (yet) in the results."""
    status = read_status(plan).get(name) or {}
    if status.get("status") == "failed":
        return f"failed: {status.get('error', 'see its run directory')}"
    m = RUN_NAME.fullmatch(name)
    if m and m["bits"] and m["dataset"] not in ("yahoo", CIFAR10_10K50K) and int(m["bits"]) not in plan.bits:
        return f"{m['bits']} bits not in --bits"
    if m and m["method"]:
        if m["method"] not in plan.methods:
            return f"{m['method']} not in --methods"
        if m["features"] not in plan.features:
            return f"{m['features']} not in --features"
        if m["features"] == "f7" and not is_complete(
            read_metrics(plan.runs / m["dataset"] / f"bits{BASELINE_BITS}{m['seed'] or ''}")
        ):
            return f"no completed {BASELINE_BITS}-bit model to take F7 from"
    return f"no results in runs/{name} yet"


def our_value(plan: Plan, entry: dict[str, Any]) -> tuple[float | None, str, str]:
    """(our value in the entry's unit, its text, the run it came from); value None and the reason if absent.

    With ``--seeds`` the value is the mean over the seeds that completed, the text ``mean ± std (n seeds)``.
    """
    name, reason = resolve_run(plan, str(entry["run"]))
    if name is None:
        return None, f"not run: {reason}", "-"
    if name == "bench" or plan.seeds is None:
        return (*run_value(plan, entry, name), name)
    found = [run_value(plan, entry, run) for run in plan.seed_runs(name)]
    values = [value for value, _ in found if value is not None]
    runs = f"{name}/seed*"
    if not values:
        return None, found[0][1], runs
    mean, std = mean_std(values)
    text = f"{_fmt(mean, entry)} ± {_fmt(std, entry)} ({len(values)} seeds)"
    missing = [why for value, why in found if value is None]
    if missing:
        text += f"; {len(missing)} of {len(found)} seeds missing: {missing[0]}"
    return mean, text, runs


def run_value(plan: Plan, entry: dict[str, Any], name: str) -> tuple[float | None, str]:
    """(the entry's value in one run ``name`` or the bench, in the entry's unit, its text); None and why not."""
    metric = str(entry["metric"])
    if name == "bench":
        source, data = "bench/bench.json", read_json(plan.out / "bench" / "bench.json")
        if not data:
            error = (read_status(plan).get("bench") or {}).get("error")
            return None, f"not run: {f'failed: {error}' if error else 'no bench/bench.json yet'}"
    else:
        source, data = f"runs/{name}/metrics.json", read_metrics(plan.runs / name)
        if not is_complete(data):
            failed = data.get("status") == "failed"
            why = f"failed: {one_line(str(data.get('error')))}" if failed else planned_reason(plan, name)
            return None, f"not run: {why}"
    if metric.startswith("curve."):
        mode = metric.split(".")[1]
        stats = curve_stats(plan.runs / name / "precision_at_k.csv", mode)
        if stats is None:
            return None, f"not available: no {mode} curve in runs/{name}/precision_at_k.csv"
        mean, sd = (_scaled(v, entry) for v in stats)
        return mean, f"{_fmt(mean, entry)} (sd {_fmt(sd, entry)})"
    if metric == "test_error":
        acc = lookup(data, "test_acc")
        value = None if acc is None else 1.0 - acc
    else:
        value = lookup(data, metric)
    if value is None:
        return None, f"not available: no {metric} in {source}"
    scaled = _scaled(value, entry)
    return scaled, _fmt(scaled, entry)


def lookup(data: dict[str, Any], path: str) -> float | None:
    """The number at a dotted key path (``modes.hamming.precision@k.1000``), or ``None``."""
    value: Any = data
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def curve_stats(path: Path, mode: str, min_k: int = 100, max_k: int = 1000) -> tuple[float, float] | None:
    """Mean and standard deviation of a precision curve at k = ``min_k``, ``min_k`` + 10, ..., ``max_k`` (all
    its points if none): by default the x range of the authors' plot-p-at-k.gnuplot."""
    curve = read_precision_curves(path).get(mode)
    if curve is None:
        return None
    ks, p = curve
    uniform = (ks % 10 == 0) & (ks >= min_k) & (ks <= max_k)
    values = p[uniform] if uniform.any() else p
    return float(values.mean()), float(values.std())


def paper_table(plan: Plan) -> str:
    rows = []
    for entry in load_paper_results():
        value, text, run = our_value(plan, entry)
        paper = entry["value"]
        paper_text = "- (figure only)" if paper is None else _fmt(float(paper), entry)
        if value is None or paper is None:
            diff = "-"
        elif entry["unit"] == "percent":
            diff = f"{value - float(paper):+.2f} pp"
        else:
            diff = f"{value / float(paper):.3g}x the paper's"
        note = str(entry.get("note") or "-")
        details = [f"protocol {p}" for p in [run_protocol(plan, run)] if p]
        if small_cnn(plan, run.removesuffix("/seed*")):
            details.append(SMALL_CNN_LABEL)
        run_text = f"{run} ({'; '.join(details)})" if details else run
        rows.append(
            [f"`{entry['id']}`", entry["quantity"], entry["source"], paper_text, text, diff, run_text, note]
        )
    header = ["id", "quantity", "source", "paper", "ours", "difference", "our run", "note"]
    return "## Paper vs ours\n\n" + markdown_table(header, rows)


def run_protocol(plan: Plan, run: str) -> str | None:
    """The evaluation protocol a run's metrics.json records (its first seed's with ``--seeds``), if any."""
    if run in ("-", "bench"):
        return None
    name = run.removesuffix("/seed*")
    protocol = read_metrics(plan.runs / plan.seed_runs(name)[0]).get("protocol")
    return str(protocol) if protocol else None


def _scaled(value: float | None, entry: dict[str, Any]) -> float | None:
    """Our fractions as percent where the paper's unit is percent."""
    return None if value is None else value * 100 if entry["unit"] == "percent" else value


def _fmt(value: float | None, entry: dict[str, Any]) -> str:
    if value is None:
        return "-"
    digits = {"percent": 2, "x": 1}.get(entry["unit"], 3)
    unit = {"percent": "%", "x": "x"}.get(entry["unit"], f" {entry['unit']}")
    return f"{value:.{digits}f}{unit}"
