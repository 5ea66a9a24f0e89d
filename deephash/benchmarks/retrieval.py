"""Retrieval speed: Hamming k-NN against raw FAISS, padding, hierarchical and exhaustive L2 search.

In one process on synthetic data (random codes, a float16 F7 memmap on disk): our Hamming k-NN against
raw ``faiss.IndexBinaryFlat`` on the same codes, padded against unpadded 48-bit codes, hierarchical
search, exhaustive L2 search, and the Hamming-over-L2 speed ratio the paper puts at 971x (128 bits
against 4096-d F7). Each timing is the best of ``--repeat`` runs, the compared variants interleaved.
Run as ``deephash-bench retrieval`` (the default subcommand).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from rich.console import Console
from rich.table import Table

from deephash.benchmarks.common import (
    apply_quick,
    best_of,
    check_disk,
    finish,
    limit_threads,
    parse_args,
    qps,
    random_codes,
    require_positive,
)
from deephash.cli import exit_on_user_error
from deephash.retrieval.codes import pad_codes
from deephash.retrieval.search import HammingIndex, PoolRule, euclidean_search, hierarchical_search

PAPER_HAMMING_OVER_L2 = 971.3  # section 4: 109.767 ms (4096-d L2) / 0.113 ms (128-bit Hamming)
_WRITE_ROWS = 65536
QUICK = {"n_database": 5000, "n_queries": 50, "dim": 64, "repeat": 1}


def write_features(path: Path, n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """Write an (n, dim) float16 F7-like memmap in row chunks; returns it opened read-only."""
    f7 = np.lib.format.open_memmap(path, "w+", np.float16, (n, dim))
    step = max(1, (_WRITE_ROWS * 512) // dim)
    for start in range(0, n, step):
        rows = min(step, n - start)
        # post-ReLU F7 activations are non-negative; uniform draws are the cheapest to generate
        f7[start : start + rows] = rng.random((rows, dim), dtype=np.float32)
    f7.flush()
    del f7
    return np.load(path, mmap_mode="r")


def bench_hamming(index: HammingIndex, queries: np.ndarray, ks: Sequence[int], repeat: int) -> dict[str, Any]:
    """Our exact-tie search against raw FAISS (default heap search) on the same padded codes."""
    raw = faiss.IndexBinaryFlat(index.padded_bytes * 8)
    raw.add(pad_codes(index.codes, index.padded_bytes))
    padded_queries = pad_codes(queries, index.padded_bytes)
    out: dict[str, Any] = {}
    for k in ks:
        fns = {"ours": partial(index.search, queries, k), "faiss": partial(raw.search, padded_queries, k)}
        t = best_of(fns, repeat)
        ours, theirs = qps(len(queries), t["ours"].wall), qps(len(queries), t["faiss"].wall)
        out[f"k{k}"] = {
            "ours_qps": ours,
            "faiss_qps": theirs,
            "ratio": ours / theirs,
            "cpu_ratio": t["faiss"].cpu / t["ours"].cpu,
            "ours_ms_per_query": 1e3 * t["ours"].wall / len(queries),
        }
    return out


def bench_padding(index: HammingIndex, queries: np.ndarray, k: int, repeat: int) -> dict[str, Any]:
    """Raw FAISS on the unpadded codes against the same codes zero padded to a fast size."""
    fns = {}
    for name, size in (("unpadded", index.code_bytes), ("padded", index.padded_bytes)):
        raw = faiss.IndexBinaryFlat(size * 8)
        raw.add(pad_codes(index.codes, size))
        fns[name] = partial(raw.search, pad_codes(queries, size), k)
    t = best_of(fns, repeat)
    return {
        "code_bytes": index.code_bytes,
        "padded_bytes": index.padded_bytes,
        "k": k,
        "unpadded_qps": qps(len(queries), t["unpadded"].wall),
        "padded_qps": qps(len(queries), t["padded"].wall),
        "speedup": t["unpadded"].wall / t["padded"].wall,
        "cpu_speedup": t["unpadded"].cpu / t["padded"].cpu,
    }


def bench_hierarchical(
    index: HammingIndex,
    db_f7: np.ndarray,
    queries: np.ndarray,
    query_f7: np.ndarray,
    k: int,
    radius: int,
    repeat: int,
) -> dict[str, Any]:
    """Hierarchical search with the default pool limits (random codes mostly take the fallback pool)."""
    run = partial(hierarchical_search, index, db_f7, queries, query_f7, k, PoolRule(radius=radius))
    best = best_of({"hierarchical": run}, repeat)["hierarchical"]
    return {
        "k": k,
        "radius": radius,
        "qps": qps(len(queries), best.wall),
        "ms_per_query": 1e3 * best.wall / len(queries),
        "mean_pool_size": float(np.mean(best.result.pool_sizes)),
    }


def bench_euclidean(db_f7: np.ndarray, query_f7: np.ndarray, k: int, repeat: int) -> dict[str, Any]:
    """Exhaustive L2 over the whole float16 memmap."""
    t = best_of({"l2": partial(euclidean_search, db_f7, query_f7, k)}, repeat)["l2"].wall
    return {
        "k": k,
        "n_queries": len(query_f7),
        "qps": qps(len(query_f7), t),
        "ms_per_query": 1e3 * t / len(query_f7),
    }


def run_retrieval(args: argparse.Namespace) -> dict[str, Any]:
    """The retrieval benchmark; prints a table and writes ``args.out`` (JSON, atomically)."""
    apply_quick(args, QUICK)
    require_positive(args, "n_database", "n_queries", "dim", "repeat", "euclidean_queries")
    threads, blas_threads = limit_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    n, dim, k = args.n_database, args.dim, args.k[0]
    workdir = Path(args.workdir or tempfile.gettempdir())
    workdir.mkdir(parents=True, exist_ok=True)
    check_disk(workdir, n, dim * 2, f"the {n} x {dim} float16 F7 file")
    config = {
        "n_database": n,
        "n_queries": args.n_queries,
        "euclidean_queries": min(args.euclidean_queries, args.n_queries),
        "dim": dim,
        "bits": list(args.bits),
        "k": list(args.k),
        "radius": args.radius,
        "seed": args.seed,
        "repeat": args.repeat,
        "faiss_threads": threads,
        "blas_threads": threads,
        "faiss_version": faiss.__version__,
        "numpy_version": np.__version__,
        "cpu_count": os.cpu_count(),
    }
    results: dict[str, Any] = {"config": config, "hamming": {}, "padding": {}, "hierarchical": {}}
    log = Console(stderr=True).log
    with blas_threads:
        scratch = Path(tempfile.mkdtemp(prefix="deephash-bench-", dir=workdir))
        try:
            log(f"writing {n:,} x {dim} float16 F7 features to {scratch}")
            start = time.perf_counter()
            db_f7 = write_features(scratch / "f7.npy", n, dim, rng)
            query_f7 = rng.random((args.n_queries, dim), dtype=np.float32)
            config["f7_write_s"] = time.perf_counter() - start
            for bits in args.bits:
                log(f"{bits}-bit codes: hamming search, padding, hierarchical search")
                index = HammingIndex(random_codes(rng, n, bits), bits)
                queries = random_codes(rng, args.n_queries, bits)
                results["hamming"][str(bits)] = bench_hamming(index, queries, args.k, args.repeat)
                results["padding"][str(bits)] = bench_padding(index, queries, k, args.repeat)
                results["hierarchical"][str(bits)] = bench_hierarchical(
                    index, db_f7, queries, query_f7, k, args.radius, args.repeat
                )
            log(f"exhaustive L2 search, {config['euclidean_queries']} queries")
            results["euclidean"] = bench_euclidean(db_f7, query_f7[: args.euclidean_queries], k, args.repeat)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    bits_cmp = 128 if 128 in args.bits else max(args.bits)
    hamming_ms = results["hamming"][str(bits_cmp)][f"k{k}"]["ours_ms_per_query"]
    results["hamming_over_euclidean"] = {
        "bits": bits_cmp,
        "dim": dim,
        "k": k,
        "hamming_ms_per_query": hamming_ms,
        "euclidean_ms_per_query": results["euclidean"]["ms_per_query"],
        "speedup": results["euclidean"]["ms_per_query"] / hamming_ms,
        "paper_speedup": PAPER_HAMMING_OVER_L2,
    }
    return finish(results, render_table(results), args.out)


def render_table(results: dict[str, Any]) -> Table:
    cfg = results["config"]
    table = Table(
        title=f"retrieval: {cfg['n_database']:,} items, {cfg['n_queries']} queries, {cfg['dim']}-d F7, "
        f"{cfg['faiss_threads']} FAISS/BLAS threads, best of {cfg['repeat']}"
    )
    for column in ("measure", "bits", "k", "value"):
        table.add_column(column, justify="left" if column == "measure" else "right", no_wrap=True)
    for bits, by_k in results["hamming"].items():
        for key, r in by_k.items():
            table.add_row(
                "hamming q/s: ours / raw faiss",
                bits,
                key[1:],
                f"{r['ours_qps']:,.0f} / {r['faiss_qps']:,.0f} ({r['ratio']:.2f}x, cpu {r['cpu_ratio']:.2f}x)",
            )
    for bits, r in results["padding"].items():
        table.add_row(
            f"raw faiss q/s: {r['code_bytes']} B / padded {r['padded_bytes']} B",
            bits,
            str(r["k"]),
            f"{r['unpadded_qps']:,.0f} / {r['padded_qps']:,.0f} ({r['speedup']:.2f}x, cpu {r['cpu_speedup']:.2f}x)",
        )
    for bits, r in results["hierarchical"].items():
        table.add_row(
            "hierarchical q/s (ms/query, mean pool)",
            bits,
            str(r["k"]),
            f"{r['qps']:,.1f} ({r['ms_per_query']:.2f} ms, {r['mean_pool_size']:,.0f})",
        )
    e = results["euclidean"]
    table.add_row(
        f"exhaustive L2 q/s ({e['n_queries']} queries)",
        "-",
        str(e["k"]),
        f"{e['qps']:,.2f} ({e['ms_per_query']:.1f} ms)",
    )
    h = results["hamming_over_euclidean"]
    table.add_row(
        f"hamming over L2 speed (paper {h['paper_speedup']}x)",
        str(h["bits"]),
        str(h["k"]),
        f"{h['speedup']:,.1f}x",
    )
    return table


def add_retrieval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-database", type=int, default=1_000_000)
    parser.add_argument("--n-queries", type=int, default=1000)
    parser.add_argument(
        "--euclidean-queries", type=int, default=100, help="queries for the slow exhaustive L2 search"
    )
    parser.add_argument("--dim", type=int, default=4096, help="F7 feature size")
    parser.add_argument("--bits", type=int, nargs="+", default=[48, 128])
    parser.add_argument(
        "--k", type=int, nargs="+", default=[100, 1000], help="the first is used for every section"
    )
    parser.add_argument("--radius", type=int, default=2, help="hierarchical search Hamming radius")
    parser.add_argument("--repeat", type=int, default=3, help="timings are the best of this many runs")
    parser.add_argument("--threads", type=int, default=None, help="FAISS OpenMP threads (default: all cores)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the float16 F7 memmap goes (default: temp dir)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench.json"))
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes for a smoke run: {QUICK}")


def parse_retrieval_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parse_args("retrieval", __doc__, add_retrieval_arguments, argv)


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    run_retrieval(parse_retrieval_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
