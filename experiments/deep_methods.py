"""The deep methods compared under one protocol: their RESULTS.md section, read from the runs on disk."""

from __future__ import annotations

from pathlib import Path

from deephash.tracking.markdown import markdown_table
from deephash.tracking.sweep import mean_std
from deephash.utils.errors import DeephashError
from experiments.jobs import method_run
from experiments.plan import BASELINE_BITS, METHOD_EXPERIMENTS, METHOD_MODES, Plan, is_complete, read_metrics

PRECISION_K = "1000"
LABELS = {
    "latent": "latent (ours, Lin et al. 2015)",
    "dpsh": "DPSH (Li et al. 2016)",
    "hashnet": "HashNet (Cao et al. 2017)",
    "dsh": "DSH (Liu et al. 2016)",
    "greedyhash": "GreedyHash (Su et al. 2018)",
    "csq": "CSQ (Yuan et al. 2020)",
}


def methods_section(plan: Plan) -> str:
    """A table per dataset: each method's mAP and precision@1000 at 48 bits (mean ± std over the seeds), its
    mAP at the other code lengths, its training time; and the mAP-vs-bits figure, a line per method and mode."""
    if not plan.deep_methods:
        return "## Deep methods under one protocol\n\nnot run: --deep-methods none\n"
    datasets = [ds for ds in plan.trained if plan.smoke or ds in METHOD_EXPERIMENTS]
    parts = [
        "## Deep methods under one protocol\n",
        "Every method trains the same network with the same data, augmentation, optimiser and schedule "
        + (
            f"(the demo network, {plan.epochs} epoch(s))"
            if plan.smoke
            else "(`experiment=mnist_methods`: the CPU recipe of `experiment=mnist_cnn`, one epoch)"
        )
        + "; only its head, loss and its YAML's hyper-parameters differ. Every run is evaluated alike: the "
        "paper's protocol (1,000 test queries against the training images), the exact metrics with stable "
        "ties, the Hamming ranking and the paper's hierarchical re-rank on F7. "
        f"At {BASELINE_BITS} bits each cell is the mean ± sample standard deviation over the seeds "
        f"{', '.join(map(str, plan.method_seeds))}; the other code lengths ran seed {plan.method_seeds[0]}. "
        "Seconds: training (`train_seconds`), mean over the seeds.\n",
    ]
    if not datasets:
        parts.append("not run: no dataset of --datasets has a CPU recipe for it (MNIST has)\n")
    for dataset in datasets:
        parts.append(_table(plan, dataset))
        parts.append(_figure(plan, dataset))
    return "\n".join(parts)


def _table(plan: Plan, dataset: str) -> str:
    other_bits = [b for b in plan.method_bits if b != BASELINE_BITS]
    header = ["method"]
    for mode in METHOD_MODES:
        header += [f"{mode} mAP ({BASELINE_BITS} bits)", f"{mode} P@{PRECISION_K} ({BASELINE_BITS} bits)"]
    header += [f"hamming mAP ({b} bits)" for b in other_bits]
    header += [f"seconds ({BASELINE_BITS} bits)", "runs"]
    rows = []
    for method in plan.deep_methods:
        done = _completed(plan, dataset, method, BASELINE_BITS, plan.method_seeds)
        row = [LABELS.get(method, method)]
        for mode in METHOD_MODES:
            row.append(_stat([_mode(m, mode).get("mAP") for m in done]))
            row.append(_stat([(_mode(m, mode).get("precision@k") or {}).get(PRECISION_K) for m in done]))
        for bits in other_bits:
            runs = _completed(plan, dataset, method, bits, plan.method_seeds[:1])
            row.append(_stat([_mode(m, "hamming").get("mAP") for m in runs]))
        row.append(_stat([m.get("train_seconds") for m in done], ".0f", spread=False))
        row.append(f"{len(done)} of {len(plan.method_seeds)} seeds at {BASELINE_BITS} bits")
        rows.append(row)
    stand_in = " (stands in for MNIST)" if plan.smoke else ""
    return f"### {dataset}{stand_in}\n\n" + markdown_table(header, rows)


def _figure(plan: Plan, dataset: str) -> str:
    from deephash.tracking.compare import compare_runs  # matplotlib: only when the report is written

    root = plan.runs / dataset / "methods"
    if not any(is_complete(read_metrics(p.parent)) for p in root.rglob("metrics.json")):
        return "\n(no figure: no run of the comparison completed)\n"
    out = plan.out / "compare" / f"{dataset}-methods"
    try:
        files = compare_runs(root, out).files
    except DeephashError as err:
        return f"\n(no figure: {err})\n"
    figure = files["metric_vs_bits"].relative_to(plan.out).as_posix()
    compare = out.relative_to(plan.out).as_posix()
    return (
        f"\n![mAP vs bits, deep methods, {dataset}]({figure}) (a line per method and mode; also as "
        f"[SVG]({Path(figure).with_suffix('.svg')}) and [PDF]({Path(figure).with_suffix('.pdf')}))\n\n"
        f"Every run, and each method's mean ± std over seeds: [{compare}/compare.md]({compare}/compare.md)\n"
    )


def _completed(plan: Plan, dataset: str, method: str, bits: int, seeds: list[int]) -> list[dict]:
    runs = [read_metrics(plan.runs / method_run(dataset, method, bits, seed)) for seed in seeds]
    return [metrics for metrics in runs if is_complete(metrics)]


def _mode(metrics: dict, mode: str) -> dict:
    result = (metrics.get("modes") or {}).get(mode)
    return result if isinstance(result, dict) else {}


def _stat(values: list, spec: str = ".4f", spread: bool = True) -> str:
    """The mean, ``± std`` over several values, ``-`` for none."""
    numbers = [float(v) for v in values if isinstance(v, (int, float))]
    if not numbers:
        return "-"
    mean, std = mean_std(numbers)
    return f"{mean:{spec}}" + (f" ± {std:{spec}}" if spread and len(numbers) > 1 else "")
