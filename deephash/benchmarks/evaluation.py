"""Evaluation speed: the Hamming-mode metrics against the previous implementation and a plain numpy
reference, the same numbers from all three, and every mode of ``evaluate_retrieval`` at the same size.

Data look like a trained model's output: each class has a random centre code and a centre F7 vector;
an item copies its class's centre code with each bit flipped with probability ``--flip-prob``, and its
F7 is the class centre plus noise after a ReLU. The Hamming metrics (mAP, mAP@1000, precision@k,
precision within radius 2, the precision@k curve and the Hamming PR curve) are computed three ways,
interleaved and timed in one process: ``fast`` (``hamming_retrieval_metrics``, what the evaluation runs),
``previous`` (the metric functions over a stable argsort of the int32 distance matrix, as the
evaluation did before) and ``reference`` (unpacked bits compared one by one, full stable argsort,
cumulative sums, one ball per radius). A larger case times ``fast`` alone. Run as ``deephash-bench eval``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from deephash.benchmarks.common import (
    add_shared_arguments,
    apply_quick,
    best_of,
    finish,
    limit_threads,
    require_positive,
    results_table,
    run_benchmark,
)
from deephash.evaluation import metrics as M
from deephash.evaluation.hamming_metrics import hamming_retrieval_metrics
from deephash.evaluation.metrics import KS
from deephash.evaluation.pipeline import default_curve_ks, evaluate_retrieval
from deephash.retrieval import MODES, EncodedItems, HammingIndex
from deephash.retrieval.codes import hamming_distance_matrix
from deephash.utils.errors import ConfigError

MAP_AT, RADIUS, TOP_N = 1000, 2, 10
TARGET_SECONDS, TARGET_SPEEDUP, TARGET_SCALE_SECONDS = 1.0, 10.0, 10.0
QUICK = {
    "n_database": 3000,
    "n_queries": 100,
    "scale_queries": 300,
    "scale_database": 5000,
    "dim": 32,
    "repeat": 1,
}
_REFERENCE_CELLS = 1 << 25  # query x database x bit cells per block of the plain reference


# ---------------------------------------------------------------- data


def class_codes(
    rng: np.random.Generator, labels: np.ndarray, centres: np.ndarray, flip_prob: float
) -> np.ndarray:
    """(n, ceil(bits / 8)) uint8: each item's class centre code with each bit flipped with ``flip_prob``."""
    return np.packbits(centres[labels] ^ (rng.random((len(labels), centres.shape[1])) < flip_prob), axis=1)


def class_features(rng: np.random.Generator, labels: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(n, dim) float16 F7-like features: class centre plus unit noise, after a ReLU."""
    out = np.empty((len(labels), centres.shape[1]), np.float16)
    for start in range(0, len(labels), 4096):
        rows = labels[start : start + 4096]
        noisy = centres[rows] + rng.standard_normal((len(rows), centres.shape[1]), dtype=np.float32)
        out[start : start + len(rows)] = np.maximum(noisy, 0)
    return out


def make_case(args: argparse.Namespace, rng: np.random.Generator, n_queries: int, n_database: int) -> dict:
    """Class-clustered packed codes and labels for queries and database."""
    centres = rng.random((args.classes, args.bits)) < 0.5
    query_labels = rng.integers(0, args.classes, n_queries)
    db_labels = rng.integers(0, args.classes, n_database)
    return {
        "queries": class_codes(rng, query_labels, centres, args.flip_prob),
        "db": class_codes(rng, db_labels, centres, args.flip_prob),
        "query_labels": query_labels,
        "db_labels": db_labels,
        "bits": args.bits,
        "curve_ks": default_curve_ks(n_database),
    }


# ---------------------------------------------------------------- the three implementations


def fast_hamming(case: dict, threads: int | None = None) -> dict[str, Any]:
    """What the evaluation runs: ``hamming_retrieval_metrics``."""
    found = hamming_retrieval_metrics(
        case["queries"],
        case["db"],
        case["query_labels"],
        case["db_labels"],
        case["bits"],
        ks=KS,
        map_at=MAP_AT,
        radius=RADIUS,
        curve_ks=case["curve_ks"],
        top_n=TOP_N,
        threads=threads,
    )
    return {**found.metrics, "curve": found.curve, **found.pr, "top": found.top}


def previous_hamming(case: dict) -> dict[str, Any]:
    """The evaluation's Hamming mode before: int32 distance matrix, stable argsort, metric functions, in
    blocks of about 16M cells."""
    queries, db, bits, curve_ks = case["queries"], case["db"], case["bits"], case["curve_ks"]
    query_labels, db_labels = case["query_labels"], case["db_labels"]
    q, n = len(queries), len(db)
    n_relevant = M.count_relevant(query_labels, db_labels)
    ap = ap_at = radius_sum = 0.0
    p_at, p_curve, pr, tops = np.zeros(len(KS)), np.zeros(len(curve_ks)), np.zeros((2, bits + 1)), []
    step = max(1, (1 << 24) // n)
    for start in range(0, q, step):
        rows = slice(start, min(q, start + step))
        b = rows.stop - rows.start
        dist = hamming_distance_matrix(queries[rows], db)
        ranking = np.argsort(dist, axis=1, kind="stable")
        relevant = db_labels[None, :] == query_labels[rows, None]
        radius_sum += M.precision_within_radius(dist, relevant, RADIUS) * b
        curve = M.pr_curve_hamming(dist, relevant, bits)
        pr += np.stack([curve["precision"], curve["recall"]]) * b
        rel = db_labels[ranking] == query_labels[rows, None]
        ap += float(M.average_precision(rel, n_relevant[rows]).sum())
        ap_at += float(M.average_precision_at_k(rel, MAP_AT).sum())
        p_at += M.precision_curve(rel, KS) * b
        p_curve += M.precision_curve(rel, curve_ks) * b
        tops.append(ranking[:, :TOP_N])
    return {
        "mAP": ap / q,
        f"mAP@{MAP_AT}": ap_at / q,
        "precision@k": {str(k): float(p / q) for k, p in zip(KS, p_at)},
        f"precision@r{RADIUS}": radius_sum / q,
        "curve": p_curve / q,
        "radius": np.arange(bits + 1),
        "precision": pr[0] / q,
        "recall": pr[1] / q,
        "top": np.concatenate(tops),
    }


def reference_hamming(case: dict) -> dict[str, Any]:
    """Deliberately plain numpy: unpacked bits compared one by one, a full stable argsort, cumulative
    sums for AP and precision@k, and one Hamming ball per radius."""
    bits, curve_ks = case["bits"], case["curve_ks"]
    query_bits = np.unpackbits(case["queries"], axis=1, count=bits).astype(bool)
    db_bits = np.unpackbits(case["db"], axis=1, count=bits).astype(bool)
    query_labels, db_labels = case["query_labels"], case["db_labels"]
    q, n = len(query_bits), len(db_bits)
    cut = np.minimum(np.asarray([*KS, *curve_ks]), n)
    ap, ap_at, hits_at = np.zeros(q), np.zeros(q), np.zeros((q, len(cut)))
    ball_precision, ball_recall, tops = np.zeros((q, bits + 1)), np.zeros((q, bits + 1)), []
    step = max(1, _REFERENCE_CELLS // (n * bits))
    for start in range(0, q, step):
        rows = slice(start, min(q, start + step))
        dist = (query_bits[rows, None, :] != db_bits[None, :, :]).sum(axis=2)
        ranking = np.argsort(dist, axis=1, kind="stable")
        relevant = db_labels[None, :] == query_labels[rows, None]
        rel = np.take_along_axis(relevant, ranking, axis=1)
        hits = np.cumsum(rel, axis=1)
        precision = hits / np.arange(1, n + 1)
        total = rel.sum(axis=1)
        ap[rows] = np.where(total > 0, (precision * rel).sum(axis=1) / np.maximum(total, 1), 0.0)
        k = min(MAP_AT, n)
        found = hits[:, k - 1]
        ap_at[rows] = np.where(found > 0, (precision * rel)[:, :k].sum(axis=1) / np.maximum(found, 1), 0.0)
        hits_at[rows] = hits[:, cut - 1]
        for r in range(bits + 1):
            inside = dist <= r
            n_in, n_hit = inside.sum(axis=1), (inside & relevant).sum(axis=1)
            ball_precision[rows, r] = np.where(n_in > 0, n_hit / np.maximum(n_in, 1), 0.0)
            ball_recall[rows, r] = np.where(total > 0, n_hit / np.maximum(total, 1), 0.0)
        tops.append(ranking[:, :TOP_N])
    ks_all = np.asarray([*KS, *curve_ks])
    precision_at = (hits_at / ks_all).mean(axis=0)
    return {
        "mAP": float(ap.mean()),
        f"mAP@{MAP_AT}": float(ap_at.mean()),
        "precision@k": {str(k): float(p) for k, p in zip(KS, precision_at)},
        f"precision@r{RADIUS}": float(ball_precision[:, min(RADIUS, bits)].mean()),
        "curve": precision_at[len(KS) :],
        "radius": np.arange(bits + 1),
        "precision": ball_precision.mean(axis=0),
        "recall": ball_recall.mean(axis=0),
        "top": np.concatenate(tops),
    }


def difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Largest absolute difference over every number of two results, and whether the top lists match."""
    numbers = [abs(a[key] - b[key]) for key in a if isinstance(a[key], float)]
    numbers += [abs(a["precision@k"][k] - b["precision@k"][k]) for k in a["precision@k"]]
    for key in ("curve", "precision", "recall"):
        numbers.append(float(np.max(np.abs(np.asarray(a[key]) - np.asarray(b[key])), initial=0.0)))
    return {"max_abs_diff": float(max(numbers)), "top_equal": bool(np.array_equal(a["top"], b["top"]))}


# ---------------------------------------------------------------- sections


def bench_hamming(case: dict, threads: int, repeat: int) -> dict[str, Any]:
    """The three implementations, interleaved, best of ``repeat``; ratios of wall and process CPU time."""
    fns: dict[str, Callable[[], Any]] = {
        "fast": lambda: fast_hamming(case, threads),
        "previous": lambda: previous_hamming(case),
        "reference": lambda: reference_hamming(case),
    }
    best = best_of(fns, repeat)
    out: dict[str, Any] = {name: {"wall_s": b.wall, "cpu_s": b.cpu} for name, b in best.items()}
    for name in ("previous", "reference"):
        out[f"speedup_vs_{name}"] = best[name].wall / best["fast"].wall
        out[f"cpu_speedup_vs_{name}"] = best[name].cpu / best["fast"].cpu
        out[f"vs_{name}"] = difference(best["fast"].result, best[name].result)
    fast = best["fast"].result
    out["metrics"] = {
        key: fast[key] for key in ("mAP", f"mAP@{MAP_AT}", "precision@k", f"precision@r{RADIUS}")
    }
    return out


def bench_scale(case: dict, threads: int, repeat: int) -> dict[str, Any]:
    best = best_of({"fast": lambda: fast_hamming(case, threads)}, repeat)["fast"]
    return {
        "n_queries": len(case["queries"]),
        "n_database": len(case["db"]),
        "wall_s": best.wall,
        "cpu_s": best.cpu,
    }


def bench_modes(case: dict, args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    """Each mode of ``evaluate_retrieval`` on its own (one run each), with F7 features of ``args.dim``."""
    centres = np.maximum(rng.standard_normal((args.classes, args.dim), dtype=np.float32) * 2, 0)
    database = EncodedItems(
        codes=case["db"], f7=class_features(rng, case["db_labels"], centres), labels=case["db_labels"]
    )
    queries = EncodedItems(
        codes=case["queries"],
        f7=class_features(rng, case["query_labels"], centres),
        labels=case["query_labels"],
    )
    index = HammingIndex(database.codes, args.bits)
    out: dict[str, Any] = {}
    for mode in args.modes:
        start = time.perf_counter()
        report = evaluate_retrieval(database, queries, args.bits, modes=[mode], index=index)
        seconds = time.perf_counter() - start
        # hamming_radius reports the precision of the ball; the ranked modes report mAP
        key = "mAP" if "mAP" in report.metrics[mode] else "precision"
        out[mode] = {"wall_s": seconds, key: report.metrics[mode][key]}
    return out


def run_eval_bench(args: argparse.Namespace) -> dict[str, Any]:
    """The evaluation benchmark; prints a table and writes ``args.out`` (JSON, atomically)."""
    apply_quick(args, QUICK)
    require_positive(args, "n_database", "n_queries", "bits", "classes", "repeat", "dim")
    if not 0 <= args.flip_prob <= 0.5:
        raise ConfigError(f"--flip-prob must lie in [0, 0.5], got {args.flip_prob}")
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        raise ConfigError(f"unknown --modes {unknown}; expected any of: {', '.join(MODES)}")
    threads, blas = limit_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    config = {
        key: getattr(args, key)
        for key in (
            "n_database",
            "n_queries",
            "bits",
            "classes",
            "flip_prob",
            "dim",
            "repeat",
            "seed",
            "modes",
        )
    }
    config.update({"threads": threads, "ks": list(KS), "map_at": MAP_AT, "radius": RADIUS})
    config["numpy_version"] = np.__version__
    results: dict[str, Any] = {
        "config": config,
        "targets": {
            "seconds": TARGET_SECONDS,
            "speedup_vs_reference": TARGET_SPEEDUP,
            "scale_seconds": TARGET_SCALE_SECONDS,
        },
    }
    with blas:
        case = make_case(args, rng, args.n_queries, args.n_database)
        results["hamming"] = bench_hamming(case, threads, args.repeat)
        if args.scale_queries > 0 and args.scale_database > 0:
            big = make_case(args, rng, args.scale_queries, args.scale_database)
            results["scale"] = bench_scale(big, threads, args.repeat)
        if args.modes:
            results["modes"] = bench_modes(case, args, rng)
    return finish(results, render_table(results), args.out)


def render_table(results: dict[str, Any]) -> Table:
    cfg, h = results["config"], results["hamming"]
    table = results_table(
        f"evaluation: {cfg['n_queries']:,} queries x {cfg['n_database']:,} items, {cfg['bits']} bits, "
        f"{cfg['classes']} classes (flip p={cfg['flip_prob']}), {cfg['threads']} threads, best of {cfg['repeat']}",
        ("measure", "seconds", "ratio", "check"),
        left={"measure"},
    )
    table.add_row(
        f"hamming metrics, fast (target <= {TARGET_SECONDS:g} s)",
        f"{h['fast']['wall_s']:.3f}",
        "1",
        f"mAP {h['metrics']['mAP']:.4f}",
    )
    for name in ("previous", "reference"):
        d = h[f"vs_{name}"]
        target = f" (target >= {TARGET_SPEEDUP:g}x)" if name == "reference" else ""
        table.add_row(
            f"hamming metrics, {name}{target}",
            f"{h[name]['wall_s']:.3f}",
            f"{h[f'speedup_vs_{name}']:.1f}x (cpu {h[f'cpu_speedup_vs_{name}']:.1f}x)",
            f"max diff {d['max_abs_diff']:.1e}, top {'same' if d['top_equal'] else 'DIFFERS'}",
        )
    if "scale" in results:
        s = results["scale"]
        table.add_row(
            f"hamming metrics, {s['n_queries']:,} x {s['n_database']:,} (target <= {TARGET_SCALE_SECONDS:g} s)",
            f"{s['wall_s']:.3f}",
            "-",
            "",
        )
    for mode, r in results.get("modes", {}).items():
        key = "mAP" if "mAP" in r else "precision"
        table.add_row(
            f"evaluate_retrieval {mode} ({cfg['dim']}-d F7)", f"{r['wall_s']:.3f}", "-", f"{key} {r[key]:.4f}"
        )
    return table


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-database", type=int, default=54_000, help="the CIFAR-10 54k protocol by default")
    parser.add_argument("--n-queries", type=int, default=1000)
    parser.add_argument("--bits", type=int, default=48)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument(
        "--flip-prob", type=float, default=0.15, help="per-bit flip probability from the class code"
    )
    parser.add_argument(
        "--scale-queries", type=int, default=10_000, help="larger case, fast path only (0: skip)"
    )
    parser.add_argument("--scale-database", type=int, default=50_000)
    parser.add_argument(
        "--modes", nargs="*", default=list(MODES), help="evaluate_retrieval modes to time (none: skip)"
    )
    parser.add_argument("--dim", type=int, default=4096, help="F7 feature size for the mode timings")
    add_shared_arguments(parser, out=Path("bench/eval.json"), quick=QUICK, repeat=2, threads="threads")


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark("eval", __doc__, add_eval_arguments, run_eval_bench, argv)


if __name__ == "__main__":
    raise SystemExit(main())
