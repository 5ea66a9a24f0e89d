"""The comparison's figures: a metric against code length, and precision@k curves, one line per setting.

Jobs of one setting (see :mod:`deephash.tracking.sweep`) differ only in their seed: their values are
averaged and, where a setting has several seeds, drawn with their standard deviation (error bars, bands).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator

from deephash.evaluation.plots import read_precision_curves
from deephash.tracking.sweep import (
    MODE_ORDER,
    Job,
    completed,
    mean_std,
    metric_value,
    natural_key,
    setting,
    setting_labels,
    swept_keys,
)


def figure_name(metric: str) -> str:
    """File stem of the metric-vs-bits figure: ``mAP`` -> ``map_vs_bits``, ``precision@10`` ->
    ``precision_at_10_vs_bits``."""
    slug = re.sub(r"[^a-z0-9]+", "_", metric.lower().replace("@", "_at_")).strip("_")
    return f"{slug}_vs_bits"


def datasets_title(jobs: Sequence[Job]) -> str:
    """The datasets of ``jobs`` for a figure title (``digits``, ``mnist, cifar10``)."""
    names = dict.fromkeys(str(j.info["dataset"]) for j in jobs if j.info.get("dataset") is not None)
    return ", ".join(names)


def plot_metric_vs_bits(jobs: Sequence[Job], metric: str = "mAP") -> Figure:
    """``metric`` against code length (log2 axis), one line per setting and mode: the mean over seeds,
    with their standard deviation as error bars."""
    done = [j for j in completed(jobs) if j.info.get("bits") is not None]
    swept = swept_keys(jobs)
    series: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for job in done:
        for mode, results in (job.metrics.get("modes") or {}).items():
            value = metric_value(results, metric) if isinstance(results, dict) else None
            if value is not None:
                series[(setting(job, swept), mode)][int(job.info["bits"])].append(value)
    keys = list(dict.fromkeys(key for key, _ in series))
    labels = setting_labels(keys)
    modes = list(dict.fromkeys(mode for _, mode in series))
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    several = False
    # a colour per setting (a method, say) and a line style per mode, so each method's modes read as one family
    palette = [f"C{i % 10}" for i in range(len(keys))]
    styles = ["-", "--", ":", "-."]
    for (key, mode), by_bits in series.items():
        bits = sorted(by_bits)
        stats = [mean_std(by_bits[b]) for b in bits]
        several = several or any(len(by_bits[b]) > 1 for b in bits)
        label = " ".join(filter(None, [labels[key], mode]))
        ax.errorbar(
            bits,
            [m for m, _ in stats],
            yerr=[s for _, s in stats],
            color=palette[keys.index(key)],
            linestyle=styles[modes.index(mode) % len(styles)],
            marker="os^D"[modes.index(mode) % 4],
            capsize=3,
            label=label,
        )
    all_bits = sorted({b for by_bits in series.values() for b in by_bits})
    if all_bits:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(all_bits))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(b) for b in all_bits])
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(
            0.5, 0.5, f"no completed run reports {metric}", ha="center", va="center", transform=ax.transAxes
        )
    where = datasets_title(done or jobs)
    ax.set(
        xlabel="Code length (bits, log2 scale)",
        ylabel=f"{metric} (mean ± std over seeds)" if several else metric,
        title=f"{metric} vs code length" + (f", {where}" if where else ""),
    )
    ax.grid(True, alpha=0.3)
    return fig


def plot_precision_curves(jobs: Sequence[Job]) -> Figure:
    """Precision@k curves from each job's precision_at_k.csv: one subplot per mode, one line per setting and
    bit count (the mean over seeds, a band of one standard deviation where there are several)."""
    done = completed(jobs)
    swept = swept_keys(jobs)
    curves: dict[str, dict[tuple, list[dict[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for job in done:
        for mode, (ks, precision) in read_precision_curves(job.path / "precision_at_k.csv").items():
            line = (setting(job, swept), job.info.get("bits", "?"))
            curves[mode][line].append(dict(zip(ks.tolist(), precision.tolist())))
    labels = setting_labels(list(dict.fromkeys(key for lines in curves.values() for key, _ in lines)))
    modes = [m for m in MODE_ORDER if m in curves] + sorted(set(curves) - set(MODE_ORDER))
    fig = Figure(figsize=(5.0 * max(len(modes), 1), 4.4))
    axes = np.atleast_1d(fig.subplots(1, max(len(modes), 1), squeeze=False)).ravel()
    if not modes:
        axes[0].text(0.5, 0.5, "no precision_at_k.csv found", ha="center", va="center")
    for ax, mode in zip(axes, modes):
        named = {
            " ".join(filter(None, [labels[key], f"{bits} bits"])): runs
            for (key, bits), runs in curves[mode].items()
        }
        for label in sorted(named, key=natural_key):
            runs = named[label]
            ks = sorted({k for curve in runs for k in curve})
            values = np.array([[curve.get(k, np.nan) for k in ks] for curve in runs])
            mean = np.nanmean(values, axis=0)
            (drawn,) = ax.plot(ks, mean, marker="o" if len(ks) <= 20 else None, markersize=3, label=label)
            if len(runs) > 1:
                std = np.nanstd(values, axis=0, ddof=1)
                ax.fill_between(ks, mean - std, mean + std, color=drawn.get_color(), alpha=0.2, linewidth=0)
        ax.set(title=mode, xlabel="Number of retrieved images", ylabel="Precision", ylim=(0.0, 1.02))
        if max((k for runs in curves[mode].values() for c in runs for k in c), default=1) >= 100:
            ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower left", fontsize=8)
    where = datasets_title(done or jobs)
    fig.suptitle("Precision at k" + (f", {where}" if where else ""))
    fig.tight_layout()
    return fig
