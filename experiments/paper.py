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
    CNNH_DEEP,
    PAPER_DATASETS,
    SMALL_CNN_BACKBONES,
    SMALL_CNN_LABEL,
    Plan,
    completed_runs,
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


def load_cnnh_table(path: Path = PAPER_RESULTS) -> dict[str, Any]:
    """The ``cnnh_table`` of paper_results.yaml (Xia et al.'s Table 2), checked: source, metric, bits, rows of
    label, method and a list of ``len(bits)`` values (or null) per paper dataset."""
    table = (yaml.safe_load(path.read_text()) or {}).get("cnnh_table") or {}
    missing = [k for k in ("source", "metric", "bits", "rows") if k not in table]
    if missing:
        raise ConfigError(f"{path}: cnnh_table lacks {', '.join(missing)}")
    for row in table["rows"]:
        for dataset in PAPER_DATASETS:
            values = row.get(dataset)
            if values is not None and len(values) != len(table["bits"]):
                raise ConfigError(
                    f"{path}: cnnh_table row {row.get('label')}: {dataset} needs {len(table['bits'])} values"
                )
    return table


def cnnh_run(dataset: str, method: str, bits: int) -> str:
    """The run name of ``method`` at ``bits`` under the CNNH protocol: ``mnist/cnnh/ksh/bits48``."""
    return f"{dataset}/cnnh/{method}/bits{bits}"


def cnnh_section(plan: Plan) -> str:
    """Xia et al.'s table (the compared methods of figures 4 and 6) beside our runs under the same protocol."""
    table = load_cnnh_table()
    bits = [int(b) for b in table["bits"]]
    head = (
        f"## The compared methods of figures 4 and 6 ({table['source']})\n\n"
        "mAP of the Hamming ranking, ours (the published value in brackets), under the protocol of Xia et al. "
        "(`data.protocol=cnnh`: 100 queries per class, the other images the database, the supervised methods "
        "fitted on 500 labelled images per class of it, the unsupervised ones on the whole database), on raw "
        "pixels (the table's CIFAR-10 rows hashed 512-d GIST). LSH is `centre=false`, sign random projections "
        "of the raw pixels. Seconds: the method's fit (`fit_seconds`), or the network's training with stage 1 "
        "(`train_seconds`).\n"
    )
    parts = [head]
    for paper, ours in plan.datasets.items():
        rows = []
        for row in table["rows"]:
            method, published = row.get("method"), row.get(paper)
            cells = []
            for k, b in enumerate(bits):
                mine, _, _ = _cnnh_stat(plan, ours, method, b, str(table["metric"]))
                cells.append(mine if published is None else f"{mine} ({float(published[k]):.3f})")
            _, mean48, runs48 = _cnnh_stat(plan, ours, method, BASELINE_BITS, str(table["metric"]))
            at5000, _, _ = _cnnh_stat(plan, ours, method, BASELINE_BITS, "modes.hamming.mAP@5000")
            key = "train_seconds" if method in CNNH_DEEP else "fit_seconds"
            seconds, _, _ = _cnnh_stat(plan, ours, method, BASELINE_BITS, key, ".0f")
            diff = "-"
            if published is not None and mean48 is not None and BASELINE_BITS in bits:
                diff = f"{mean48 - float(published[bits.index(BASELINE_BITS)]):+.3f}"
            status = _cnnh_status(plan, ours, method, runs48)
            rows.append([row["label"], *cells, diff, at5000, seconds, status])
        header = ["method", *(f"{b} bits" for b in bits), f"{BASELINE_BITS} bits: ours - paper"]
        header += [
            f"mAP@5000 ({BASELINE_BITS} bits)",
            f"seconds ({BASELINE_BITS} bits)",
            f"run ({BASELINE_BITS} bits)",
        ]
        stand_in = " (stands in for MNIST/CIFAR-10)" if plan.smoke else ""
        parts.append(f"### {ours}{stand_in}: {paper}'s rows\n")
        parts.append(markdown_table(header, rows))
    return "\n".join(parts)


def _cnnh_stat(
    plan: Plan, dataset: str, method: str | None, bits: int, key: str, spec: str = ".3f"
) -> tuple[str, float | None, int]:
    """(the mean of ``key`` over the completed seed runs as text, ``± std`` over several, ``-`` when none; the
    mean; the number of completed runs)."""
    if method is None:
        return "-", None, 0
    done = completed_runs(plan, cnnh_run(dataset, method, bits))
    values = [v for v in (lookup(metrics, key) for _, metrics in done) if v is not None]
    if not values:
        return "-", None, len(done)
    mean, std = mean_std(values)
    return f"{mean:{spec}}" + (f" ± {std:{spec}}" if len(values) > 1 else ""), mean, len(done)


def _cnnh_status(plan: Plan, dataset: str, method: str | None, completed: int) -> str:
    """The 48-bit run's name (and seeds), or why it is missing."""
    if method is None:
        return "not run: no method of ours"
    name = cnnh_run(dataset, method, BASELINE_BITS)
    if completed:
        return name if plan.seeds is None else f"{name}/seed* ({completed} of {len(plan.seeds)} seeds)"
    if method not in plan.cnnh_methods:
        return f"not run: {method} not in --cnnh-methods"
    return f"not run: {planned_reason(plan, plan.seed_runs(name)[0])}"
