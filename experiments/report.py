"""RESULTS.md: the paper-vs-ours table, precision figures with the baselines, the code-length sweep,
the speed table and each run's W&B link."""

from __future__ import annotations

import logging
import os
import re
import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from deephash.evaluation.plots import read_precision_curves
from deephash.tracking.markdown import markdown_table
from deephash.tracking.sweep import mean_std
from deephash.utils.errors import DeephashError
from deephash.utils.io import atomic_write_text
from experiments.paper import paper_table, planned_reason
from experiments.plan import (
    BASELINE_BITS,
    PAPER_BITS,
    Plan,
    completed_runs,
    is_complete,
    read_json,
    read_metrics,
    read_status,
)

log = logging.getLogger(__name__)

FIGURE_FORMATS = ("png", "svg", "pdf")
WANDB_URL = re.compile(r"https?://[^\s\"'<>()]+/runs/[\w-]+")


def wandb_link(run_dir: Path, metrics: dict[str, Any]) -> str:
    """The run's W&B page: online, its URL (where recorded); offline, the command that uploads it."""
    if metrics.get("wandb_url"):
        return str(metrics["wandb_url"])
    found = list((run_dir / "wandb").glob("run-*")) + list((run_dir / "wandb").glob("offline-run-*"))
    if not found:
        return "no W&B run"
    latest = max(found, key=lambda p: p.name.removeprefix("offline-"))
    if latest.name.startswith("offline-"):
        return f"offline: `wandb sync {shlex.quote(str(latest))}`"
    run_id = latest.name.rsplit("-", 1)[-1]
    for log_file in ("files/output.log", "logs/debug.log", "logs/debug-internal.log"):
        try:
            text = (latest / log_file).read_text(errors="replace")
        except OSError:
            continue
        urls = [u for u in WANDB_URL.findall(text) if u.endswith(f"/runs/{run_id}")]
        if urls:
            return urls[-1]
    logger_cfg = (
        (yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
        if (run_dir / "config.yaml").is_file()
        else {}
    ).get("logger") or {}
    wandb_cfg = logger_cfg.get("wandb") or {}
    entity = wandb_cfg.get("entity") or os.environ.get("WANDB_ENTITY")
    project = wandb_cfg.get("project") or os.environ.get("WANDB_PROJECT") or "deephash"
    if entity and not os.environ.get("WANDB_BASE_URL"):
        return f"https://wandb.ai/{entity}/{project}/runs/{run_id}"
    return f"online run {run_id} in project {project} (URL not recorded)"


def write_results(plan: Plan) -> Path:
    """Stage 6: ``RESULTS.md`` with the paper-vs-ours table, figures, sweep, speed and runs."""
    sections = [
        _header(plan),
        paper_table(plan),
        _precision_section(plan),
        _sweep_section(plan),
        _speed_section(plan),
        _runs_section(plan),
    ]
    path = atomic_write_text(plan.out / "RESULTS.md", "\n".join(sections))
    log.info("results written to %s", path)
    return path


def _header(plan: Plan) -> str:
    lines = [
        "# Reproduction of Lin et al., CVPRW 2015",
        "",
        "*Deep Learning of Binary Hash Codes for Fast Image Retrieval.*",
        f"Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `{plan.command}`; "
        f"the paper's numbers come from `experiments/paper_results.yaml`.",
        "",
    ]
    if plan.smoke:
        lines += [
            "> **smoke: digits stands in for MNIST/CIFAR-10; numbers are not comparable.** Every stage ran on "
            "scikit-learn's 8x8 digits (about 1,300 database images, 130 per class, so precision@1000 cannot "
            f"exceed about 0.13) with the small CNN for {plan.epochs} epoch(s) per run on CPU.",
            "",
        ]
    if plan.seeds is not None:
        lines += [
            f"Every run was repeated with seeds {', '.join(map(str, plan.seeds))} (`runs/<name>/seed<s>`): "
            "each number is the mean ± sample standard deviation over the seeds that completed.",
            "",
        ]
    return "\n".join(lines)


def _precision_section(plan: Plan) -> str:
    from deephash.evaluation.plots import write_precision_curves

    parts = [f"## Precision at k, {BASELINE_BITS} bits (figures 4 and 6)\n"]
    for dataset in plan.trained:
        runs = [
            (f"ours {mode}", f"{dataset}/bits{BASELINE_BITS}", mode) for mode in ("hamming", "hierarchical")
        ]
        runs += [
            (f"{m} ({f})", f"{dataset}/baselines/{m}-{f}", "hamming")
            for f in plan.features
            for m in plan.methods
        ]
        curves, spread, rows = {}, {}, []
        for label, name, mode in runs:
            done = completed_runs(plan, name)
            found = [
                read_precision_curves(plan.runs / run / "precision_at_k.csv").get(mode) for run, _ in done
            ]
            found = [curve for curve in found if curve is not None]
            if not found:
                rows.append([label, *["-"] * 4, planned_reason(plan, plan.seed_runs(name)[0])])
                continue
            curves[label], std = _mean_curve(found)
            if len(found) > 1:
                spread[label] = std
            results = [metrics["modes"].get(mode) or {} for _, metrics in done]
            at_k = [r.get("precision@k") or {} for r in results]
            rows.append(
                [
                    label,
                    _stat([r.get("mAP") for r in results]),
                    *(_stat([p.get(k) for p in at_k]) for k in ("10", "100", "1000")),
                    _runs_text(plan, name, len(done)),
                ]
            )
        title = f"{dataset}, {BASELINE_BITS} bits" + (" (stands in for MNIST/CIFAR-10)" if plan.smoke else "")
        parts.append(f"### {title}\n")
        if curves:
            stem = plan.out / "figures" / f"{dataset}_precision_{BASELINE_BITS}"
            figure_title = title + (f", mean ± std over {len(plan.seeds)} seeds" if plan.seeds else "")
            write_precision_curves(
                curves,
                stem.with_suffix(".csv"),
                stem.with_suffix(".png"),
                title=figure_title,
                spread=spread,
                formats=FIGURE_FORMATS,
            )
            parts.append(f"![{title}](figures/{stem.name}.png)\n")
        parts.append(markdown_table(["curve", "mAP", "P@10", "P@100", "P@1000", "run"], rows))
    return "\n".join(parts)


def _sweep_section(plan: Plan) -> str:
    from deephash.tracking.compare import compare_runs

    parts = ["## Code length sweep (mAP vs bits)\n"]
    for dataset in plan.trained:
        rows = []
        for bits in sorted({*plan.bits, *PAPER_BITS}):
            name = f"{dataset}/bits{bits}"
            done = [metrics for _, metrics in completed_runs(plan, name)]
            if not done:
                reason = planned_reason(plan, plan.seed_runs(name)[0])
                rows.append([str(bits), "-", "-", "-", "-", f"not run: {reason}"])
                continue
            accuracy = [m.get("test_acc") for m in done]
            rows.append(
                [
                    str(bits),
                    _stat([100 * a if isinstance(a, (int, float)) else None for a in accuracy], ".2f"),
                    *(
                        _stat([(m["modes"].get(mode) or {}).get("mAP") for m in done])
                        for mode in ("hamming", "hierarchical", "euclidean")
                    ),
                    "completed"
                    if plan.seeds is None
                    else f"{len(done)} of {len(plan.seeds)} seeds completed",
                ]
            )
        parts.append(f"### {dataset}\n")
        parts.append(
            markdown_table(
                ["bits", "test acc (%)", "hamming mAP", "hierarchical mAP", "euclidean mAP", "status"], rows
            )
        )
        if (plan.runs / dataset).is_dir():
            try:
                files = compare_runs(plan.runs / dataset, plan.out / "compare" / dataset).files
            except DeephashError as err:
                parts.append(f"\n(no comparison figure: {err})\n")
                continue
            figure = files["metric_vs_bits"].relative_to(plan.out).as_posix()
            parts.append(
                f"\n![mAP vs bits, {dataset}]({figure}) (also as [SVG]({Path(figure).with_suffix('.svg')}) "
                f"and [PDF]({Path(figure).with_suffix('.pdf')}))\n\n"
                f"Every run of {dataset}, and each setting's mean ± std over seeds: "
                f"[compare/{dataset}/compare.md](compare/{dataset}/compare.md)\n"
            )
    return "\n".join(parts)


def _mean_curve(
    curves: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Precision curves of several seeds -> ``((ks, mean precision), sample std)`` on the union of their ks."""
    ks = np.unique(np.concatenate([k for k, _ in curves]))
    values = np.full((len(curves), len(ks)), np.nan)
    for row, (k, p) in zip(values, curves):
        row[np.searchsorted(ks, k)] = p
    std = np.nanstd(values, axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(ks))
    return (ks, np.nanmean(values, axis=0)), std


def _stat(values: list[Any], spec: str = ".4f") -> str:
    """The mean of the numbers in ``values``, with `` ± std`` over several seeds; ``-`` when none."""
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not numbers:
        return "-"
    mean, std = mean_std(numbers)
    return f"{mean:{spec}}" + (f" ± {std:{spec}}" if len(numbers) > 1 else "")


def _runs_text(plan: Plan, name: str, completed: int) -> str:
    """``name``, or ``name/seed* (2 of 3 seeds)`` with --seeds."""
    return name if plan.seeds is None else f"{name}/seed* ({completed} of {len(plan.seeds)} seeds)"


def _speed_section(plan: Plan) -> str:
    bench = read_json(plan.out / "bench" / "bench.json")
    head = "## Retrieval speed (section 4.5)\n\n"
    if not bench:
        status = read_status(plan).get("bench") or {}
        return head + f"not run: {status.get('error') or 'no bench/bench.json yet'}\n"
    cfg, cmp_ = bench.get("config") or {}, bench.get("hamming_over_euclidean") or {}
    hier = (bench.get("hierarchical") or {}).get(str(cmp_.get("bits"))) or {}
    rows = [
        [
            f"Hamming k-NN, {cmp_.get('bits')} bits, ms/query",
            _num(cmp_.get("hamming_ms_per_query"), ".4f"),
            "0.113",
        ],
        [
            f"exhaustive L2, {cmp_.get('dim')}-d F7, ms/query",
            _num(cmp_.get("euclidean_ms_per_query"), ".3f"),
            "109.767",
        ],
        ["Hamming over L2 speed-up", _num(cmp_.get("speedup"), ".1f"), "971.3"],
        [
            f"hierarchical search, {cmp_.get('bits')} bits, ms/query",
            _num(hier.get("ms_per_query"), ".3f"),
            "-",
        ],
    ]
    setup = (
        f"`deephash.bench` on {cfg.get('n_database', '?'):,} synthetic items, {cfg.get('n_queries')} queries "
        f"({cfg.get('euclidean_queries')} for L2), k = {cmp_.get('k')}, {cfg.get('faiss_threads')} threads; "
        "the paper: C/C++ on a CPU over Yahoo-1M. Full output: [bench/bench.json](bench/bench.json).\n\n"
    )
    return head + setup + markdown_table(["measure", "ours", "paper"], rows)


def _runs_section(plan: Plan) -> str:
    from deephash.tracking.sweep import find_jobs

    status = read_status(plan)
    names = set(status) - {"bench"}
    if plan.runs.is_dir():
        names |= {p.relative_to(plan.runs).as_posix() for p in find_jobs(plan.runs)}
    rows = []
    for name in sorted(names):
        metrics = read_metrics(plan.runs / name)
        entry = status.get(name) or {}
        state = metrics.get("status") or entry.get("status") or "missing"
        if state == "completed" and not is_complete(metrics):
            state = "interrupted (not evaluated)"
        seconds = entry.get("seconds")
        rows.append(
            [
                name,
                state,
                _num(seconds, ".0f") + (" (earlier)" if entry.get("skipped") else ""),
                wandb_link(plan.runs / name, metrics),
            ]
        )
    if not rows:
        return "## Runs\n\nno runs yet\n"
    return "## Runs\n\n" + markdown_table(["run (under runs/)", "status", "seconds", "W&B"], rows)


def _num(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"
