"""The figure sections of RESULTS.md: precision at k with the baselines (the paper's figures 4 and 6), the
retrieval examples (figures 3, 5, 7 and 9) and the folder dataset's precision at k (figure 8).

With ``--seeds`` a curve is the mean over the seeds that completed, drawn with a band of one standard
deviation, and a retrieval grid is the first completed seed's (a grid shows images, it has no mean).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from deephash.evaluation.plots import read_precision_curves, write_precision_curves
from deephash.tracking.markdown import markdown_table
from deephash.tracking.sweep import mean_std
from experiments.paper import cnnh_run, load_cnnh_table, planned_reason, small_cnn
from experiments.plan import BASELINE_BITS, FIGURE_METHODS, SMALL_CNN_LABEL, YAHOO_BITS, Plan, completed_runs

FIGURE_FORMATS = ("png", "svg", "pdf")
# the paper's retrieval-example figures for each dataset
GRID_FIGURES = {"mnist": "figure 3", "cifar10": "figure 5"}
# the paper's precision figures with the compared methods
PRECISION_FIGURES = {"mnist": "figure 4", "cifar10": "figure 6"}
FOLDER_MODES = ("hamming", "hierarchical", "euclidean")


def precision_section(plan: Plan) -> str:
    """Our 48-bit model (Hamming and hierarchical search) against each baseline, per dataset."""
    parts = [f"## Precision at k, {BASELINE_BITS} bits (figures 4 and 6)\n"]
    for dataset in plan.trained:
        model = f"{dataset}/bits{BASELINE_BITS}"
        ours = "ours, small CNN" if small_cnn(plan, model) else "ours"
        curves = [(f"{ours} {mode}", model, mode) for mode in ("hamming", "hierarchical")]
        curves += [
            (f"{m} ({f}{', small CNN' if small_cnn(plan, name) else ''})", name, "hamming")
            for f in plan.features
            for m in plan.methods
            for name in [f"{dataset}/baselines/{m}-{f}"]
        ]
        title = f"{dataset}, {BASELINE_BITS} bits" + (" (stands in for MNIST/CIFAR-10)" if plan.smoke else "")
        title += f" ({SMALL_CNN_LABEL})" if small_cnn(plan, model) else ""
        parts.append(f"### {title}\n")
        parts.append(precision_block(plan, curves, f"{dataset}_precision_{BASELINE_BITS}", title))
        parts.append(compared_block(plan, dataset, ours, model))
    return "\n".join(parts)


def compared_block(plan: Plan, dataset: str, ours: str, model: str) -> str:
    """The paper's figure 4 (6) complete: our 48-bit model's Hamming ranking beside the eight compared methods,
    run under Xia et al.'s protocol (``runs/<dataset>/cnnh``), whose curves the paper reprinted."""
    labels = {row["method"]: row["label"] for row in load_cnnh_table()["rows"] if row.get("method")}
    figures = " and ".join(PRECISION_FIGURES[p] for p, d in plan.datasets.items() if d == dataset)
    title = f"{dataset}, {BASELINE_BITS} bits: {figures} with the compared methods"
    curves = [(f"{ours} hamming", model, "hamming")]
    curves += [(labels[m], cnnh_run(dataset, m, BASELINE_BITS), "hamming") for m in FIGURE_METHODS]
    note = (
        "Ours under the paper's protocol (its figure's); the compared methods under Xia et al.'s "
        "(`data.protocol=cnnh`: 100 queries per class against the other images), as the paper took their "
        "curves from that work.\n\n"
    )
    return (
        f"#### {title}\n\n"
        + note
        + precision_block(plan, curves, f"{dataset}_compared_{BASELINE_BITS}", title)
    )


def examples_section(plan: Plan) -> str:
    """The top-10 grids of our models, and the folder run's grid and precision at k for every mode."""
    parts = ["## Retrieval examples (figures 3, 5, 7 and 9) and the image folder (figure 8)\n"]
    parts.append(
        "Each grid shows queries of the test split and their ten nearest database images by hierarchical "
        "search (`retrieval_grid.png` of the run): green frames share the query's label, red ones do not.\n"
    )
    for dataset in plan.trained:
        figures = [GRID_FIGURES[paper] for paper, ours in plan.datasets.items() if ours == dataset]
        stand_in = " (stands in for MNIST/CIFAR-10)" if plan.smoke else ""
        stand_in += f" ({SMALL_CNN_LABEL})" if small_cnn(plan, f"{dataset}/bits{BASELINE_BITS}") else ""
        parts.append(f"### {dataset}, {BASELINE_BITS} bits: {' and '.join(figures)}{stand_in}\n")
        parts.append(grid(plan, f"{dataset}/bits{BASELINE_BITS}", dataset))
    parts.append(f"### Yahoo-style image folder, {YAHOO_BITS} bits: figures 7, 8 and 9\n")
    if plan.yahoo_root is None:
        parts.append("not run: no --yahoo-root (or YAHOO_ROOT) given\n")
        return "\n".join(parts)
    name = f"yahoo/bits{YAHOO_BITS}"
    parts.append(grid(plan, name, "yahoo"))
    curves = [(mode, name, mode) for mode in FOLDER_MODES]
    parts.append(
        precision_block(plan, curves, f"yahoo_precision_{YAHOO_BITS}", f"image folder, {YAHOO_BITS} bits")
    )
    return "\n".join(parts)


def grid(plan: Plan, name: str, alt: str) -> str:
    """A markdown image of the first completed run's retrieval grid, or why there is none."""
    done = completed_runs(plan, name)
    for run, _ in done:
        if (plan.runs / run / "retrieval_grid.png").is_file():
            return f"![{alt} retrieval examples](runs/{run}/retrieval_grid.png)\n"
    if done:
        return f"no retrieval grid in runs/{done[0][0]}\n"
    return f"not run: {planned_reason(plan, plan.seed_runs(name)[0])}\n"


def precision_block(plan: Plan, curves: list[tuple[str, str, str]], stem: str, title: str) -> str:
    """A precision figure (``figures/<stem>``: CSV, PNG, SVG, PDF) and its table of mAP and precision@k.

    curves: ``(label, run name, search mode)``; each row says its run or why it is missing.
    """
    drawn, spread, rows = {}, {}, []
    for label, name, mode in curves:
        done = completed_runs(plan, name)
        found = [read_precision_curves(plan.runs / run / "precision_at_k.csv").get(mode) for run, _ in done]
        found = [curve for curve in found if curve is not None]
        if not found:
            why = (
                f"no {mode} curve in runs/{done[0][0]}"
                if done
                else planned_reason(plan, plan.seed_runs(name)[0])
            )
            rows.append([label, *["-"] * 4, why])
            continue
        drawn[label], std = mean_curve(found)
        if len(found) > 1:
            spread[label] = std
        results = [metrics["modes"].get(mode) or {} for _, metrics in done]
        at_k = [r.get("precision@k") or {} for r in results]
        rows.append(
            [
                label,
                stat([r.get("mAP") for r in results]),
                *(stat([p.get(k) for p in at_k]) for k in ("10", "100", "1000")),
                runs_text(plan, name, len(done)),
            ]
        )
    text = ""
    if drawn:
        path = plan.out / "figures" / stem
        figure_title = title + (f"\nmean ± std over {len(plan.seeds)} seeds" if plan.seeds else "")
        write_precision_curves(
            drawn,
            path.with_suffix(".csv"),
            path.with_suffix(".png"),
            title=figure_title,
            spread=spread,
            formats=FIGURE_FORMATS,
        )
        text = f"![{title}](figures/{stem}.png)\n\n"
    return text + markdown_table(["curve", "mAP", "P@10", "P@100", "P@1000", "run"], rows)


def mean_curve(
    curves: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Precision curves of several seeds -> ``((ks, mean precision), sample std)`` on the union of their ks."""
    ks = np.unique(np.concatenate([k for k, _ in curves]))
    values = np.full((len(curves), len(ks)), np.nan)
    for row, (k, p) in zip(values, curves):
        row[np.searchsorted(ks, k)] = p
    std = np.nanstd(values, axis=0, ddof=1) if len(curves) > 1 else np.zeros(len(ks))
    return (ks, np.nanmean(values, axis=0)), std


def stat(values: list[Any], spec: str = ".4f") -> str:
    """The mean of the numbers in ``values``, with `` ± std`` over several seeds; ``-`` when none."""
    numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not numbers:
        return "-"
    mean, std = mean_std(numbers)
    return f"{mean:{spec}}" + (f" ± {std:{spec}}" if len(numbers) > 1 else "")


def runs_text(plan: Plan, name: str, completed: int) -> str:
    """``name``, or ``name/seed* (2 of 3 seeds)`` with --seeds."""
    return name if plan.seeds is None else f"{name}/seed* ({completed} of {len(plan.seeds)} seeds)"
