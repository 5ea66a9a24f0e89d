"""Shallow methods' fit time: each method of ``deephash.methods`` fitted on ``n`` labelled images at one code length.

With ``--mnist DIR`` (the folder holding ``MNIST/raw``) the images are the labelled subset of the cnnh protocol,
``n / 10`` per class drawn with ``--seed``, as raw pixels in [0, 1] (the CNNH table's setting: 5,000 images at
48 bits by default); without it, synthetic 784-d data in 10 Gaussian clusters. Every method is fitted on the
same rows, supervised ones with their labels, one after another; the wall and process CPU seconds of one fit
each (``--repeat`` takes the best of several) are compared with a 5-minute target.
Run as ``deephash-bench shallow``.
"""

from __future__ import annotations

import argparse
import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from deephash.benchmarks.common import (
    add_shared_arguments,
    apply_quick,
    best_of,
    finish,
    require_positive,
    results_table,
    run_benchmark,
)
from deephash.methods.registry import SHALLOW, build_method
from deephash.utils.errors import ConfigError

TARGET_SECONDS = 300.0  # a fit of 5,000 MNIST images at 48 bits should take at most 5 minutes on 2 cores
QUICK = {"n": 300, "bits": 8, "dim": 32}
# --quick also shrinks the slowest methods' settings, so the whole run takes seconds
QUICK_OPTIONS = {
    "ksh": {"n_anchors": 50, "n_iter": 20},
    "bre": {"n_iter": 1},
    "mlh": {"n_iter": 2, "pairs_per_iter": 2000},
    "sdh": {"n_anchors": 50},
}


def mnist_subset(root: Path, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The cnnh protocol's labelled subset of ``n / 10`` images per class: pixels ``(n, 784)`` float32 in [0, 1]
    and labels ``(n,)``."""
    from deephash.data.mnist import MNISTDataModule

    if n % 10:
        raise ConfigError(f"--n must be a multiple of the 10 MNIST classes, got {n}")
    dm = MNISTDataModule(root=str(root), protocol="cnnh", train_per_class=n // 10, val_size=0, seed=seed)
    dm.setup()
    rows = dm.splits["train"]
    images = np.stack([np.asarray(dm.pool.image(int(p)), dtype=np.uint8).reshape(-1) for p in rows])
    return images.astype(np.float32) / 255, dm.pool.labels[rows]


def synthetic(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points ``(n, dim)`` float32 in 10 Gaussian clusters, and their cluster as the label."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    X = rng.standard_normal((10, dim))[y] + 0.5 * rng.standard_normal((n, dim))
    return X.astype(np.float32), y


def fit_benchmark(
    X: np.ndarray,
    y: np.ndarray,
    methods: Sequence[str],
    bits: int,
    seed: int,
    repeat: int = 1,
    quick: bool = False,
) -> dict[str, dict[str, Any]]:
    """Per method: ``wall_s`` and ``cpu_s`` of its best fit of ``repeat``, ``supervised``, ``within_target``."""
    results = {}
    for name in methods:
        options = QUICK_OPTIONS.get(name, {}) if quick else {}
        labels = y if SHALLOW[name].supervised else None
        fit = functools.partial(_fit, name, bits, seed, options, X, labels)
        best = best_of({name: fit}, repeat)[name]
        results[name] = {
            "supervised": bool(SHALLOW[name].supervised),
            "wall_s": best.wall,
            "cpu_s": best.cpu,
            "within_target": best.wall <= TARGET_SECONDS,
        }
    return results


def _fit(
    name: str, bits: int, seed: int, options: dict[str, Any], X: np.ndarray, y: np.ndarray | None
) -> Any:
    return build_method(name, bits, seed, **options).fit(X, y)


def run_shallow_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Fit every method of ``args.methods``; prints a table and writes ``args.out`` (JSON, atomically)."""
    apply_quick(args, QUICK)
    require_positive(args, "n", "bits", "dim", "repeat")
    unknown = sorted(set(args.methods) - set(SHALLOW))
    if unknown:
        raise ConfigError(f"unknown shallow methods {unknown}; expected some of: {', '.join(SHALLOW)}")
    if args.mnist is not None:
        X, y = mnist_subset(args.mnist, args.n, args.seed)
        data = f"MNIST pixels, {args.n // 10} per class"
    else:
        X, y = synthetic(args.n, args.dim, args.seed)
        data = f"synthetic, {args.dim}-d"
    config = {
        "data": data,
        "n": int(X.shape[0]),
        "dim": int(X.shape[1]),
        "bits": args.bits,
        "seed": args.seed,
    }
    config.update(
        repeat=args.repeat, quick=bool(args.quick), cpu_count=os.cpu_count(), target_s=TARGET_SECONDS
    )
    config["omp_num_threads"] = os.environ.get("OMP_NUM_THREADS")
    results = {"config": config}
    results["fits"] = fit_benchmark(X, y, args.methods, args.bits, args.seed, args.repeat, bool(args.quick))
    return finish(results, render_table(results), args.out)


def render_table(results: dict[str, Any]) -> Table:
    c = results["config"]
    table = results_table(
        f"shallow fit, {c['n']:,} x {c['dim']} ({c['data']}), {c['bits']} bits",
        ("method", "supervised", "wall s", "CPU s", f"<= {c['target_s']:.0f} s"),
        left={"method"},
    )
    for name, fit in results["fits"].items():
        table.add_row(
            name,
            "yes" if fit["supervised"] else "no",
            f"{fit['wall_s']:,.2f}",
            f"{fit['cpu_s']:,.2f}",
            "yes" if fit["within_target"] else "NO",
        )
    return table


def add_shallow_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--methods", nargs="+", default=list(SHALLOW), help="shallow methods (default: all)")
    parser.add_argument("--n", type=int, default=5000, help="training images (MNIST: a multiple of 10)")
    parser.add_argument("--bits", type=int, default=48)
    parser.add_argument("--dim", type=int, default=784, help="synthetic data only: the dimension")
    parser.add_argument(
        "--mnist", type=Path, default=None, help="MNIST root (holding MNIST/raw); none: synthetic"
    )
    add_shared_arguments(parser, out=Path("shallow.json"), quick=QUICK, repeat=1)


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark("shallow", __doc__, add_shallow_arguments, run_shallow_bench, argv)


if __name__ == "__main__":
    raise SystemExit(main())
