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

import yaml

from deephash.tracking.markdown import markdown_table
from deephash.utils.errors import DeephashError
from deephash.utils.io import atomic_write_text
from experiments.deep_methods import methods_section
from experiments.figures import examples_section, precision_section, stat
from experiments.paper import cnnh_section, paper_table, planned_reason, small_cnn
from experiments.plan import (
    BASELINE_BITS,
    PAPER_BITS,
    SMALL_CNN_EXPERIMENTS,
    SMALL_CNN_LABEL,
    Plan,
    completed_runs,
    is_complete,
    read_json,
    read_metrics,
    read_status,
)

log = logging.getLogger(__name__)

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
    """Stage 8: ``RESULTS.md`` with the paper-vs-ours table, figures, grids, sweep, speed and runs."""
    sections = [
        _header(plan),
        paper_table(plan),
        cnnh_section(plan),
        methods_section(plan),
        precision_section(plan),
        examples_section(plan),
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
    small = [ds for ds in plan.trained if small_cnn(plan, f"{ds}/bits{BASELINE_BITS}")]
    if small:
        recipes = ", ".join(
            f"`experiment={SMALL_CNN_EXPERIMENTS[ds]}`" for ds in small if ds in SMALL_CNN_EXPERIMENTS
        )
        lines += [
            f"> **{', '.join(small)}: {SMALL_CNN_LABEL}.** These runs trained a small CNN from scratch with "
            "the method unchanged (latent sigmoid layer, codes H >= 0.5), where the paper fine-tunes an "
            "ImageNet-pretrained AlexNet: the reproduction runs "
            f"{recipes or 'a small CNN recipe'} when it finds MNIST but no AlexNet weights.",
            "",
        ]
    if plan.seeds is not None:
        lines += [
            f"Every run was repeated with seeds {', '.join(map(str, plan.seeds))} (`runs/<name>/seed<s>`): "
            "each number is the mean ± sample standard deviation over the seeds that completed.",
            "",
        ]
    return "\n".join(lines)


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
                    stat([100 * a if isinstance(a, (int, float)) else None for a in accuracy], ".2f"),
                    *(
                        stat([(m["modes"].get(mode) or {}).get("mAP") for m in done])
                        for mode in ("hamming", "hierarchical", "euclidean")
                    ),
                    "completed"
                    if plan.seeds is None
                    else f"{len(done)} of {len(plan.seeds)} seeds completed",
                ]
            )
        small = f" ({SMALL_CNN_LABEL})" if small_cnn(plan, f"{dataset}/bits{BASELINE_BITS}") else ""
        parts.append(f"### {dataset}{small}\n")
        parts.append(
            markdown_table(
                ["bits", "test acc (%)", "hamming mAP", "hierarchical mAP", "euclidean mAP", "status"], rows
            )
        )
        if (plan.runs / dataset).is_dir():
            try:
                # the compared methods and the deep methods have sections (and protocols) of their own
                files = compare_runs(
                    plan.runs / dataset, plan.out / "compare" / dataset, skip=("cnnh", "methods")
                ).files
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
