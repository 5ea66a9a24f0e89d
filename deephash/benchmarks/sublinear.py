"""Sub-linear Hamming search: multi-index hashing against the exhaustive scan on millions of codes.

For each database size, code length and data kind it builds the exact ``HammingIndex`` (FAISS
``IndexBinaryFlat``) and one ``MultiHashIndex`` per substring layout, then reports, for each ``nflip``
and k: queries/s of both and their ratio (wall and process CPU time), recall@k of the multi-hash k-NN
against the exact one, the mean shortlist size, build time and memory.

Data kinds: ``clustered`` codes copy a random centre per ``--cluster-size`` items and flip each bit with
probability ``--flip-prob`` (near neighbours exist, as with codes of a trained model); ``uniform`` codes
are uniformly random, so apart from a query's source item every code sits near ``bits / 2`` and hashing
has nothing to find. Queries are database items with ``--query-flips`` bits flipped.
Run as ``deephash-bench sublinear``.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from deephash.benchmarks.common import (
    Best,
    add_shared_arguments,
    apply_quick,
    best_of,
    clustered_codes,
    finish,
    limit_threads,
    qps,
    random_codes,
    require_positive,
    results_table,
    run_benchmark,
)
from deephash.retrieval.codes import code_bytes, pad_codes
from deephash.retrieval.faiss_blas import faiss
from deephash.retrieval.hamming import HammingIndex
from deephash.retrieval.sublinear import MultiHashIndex, faiss_layout
from deephash.utils.errors import ConfigError

DATA_KINDS = ("clustered", "uniform")
# "[NHASHx]B:NFLIP"; without NHASH the substrings cover the code: nhash = bits // b.
DEFAULT_SETTINGS = ("16:0", "16:1")
QUICK = {"n_database": [20_000], "n_queries": [100], "repeat": 1}


def near_queries(
    rng: np.random.Generator, db: np.ndarray, bits: int, n_queries: int, flips: int
) -> np.ndarray:
    """(n_queries, ceil(bits / 8)) uint8: random database items with ``flips`` distinct bits flipped."""
    codes = np.unpackbits(db[rng.integers(0, len(db), n_queries)], axis=1, count=bits).astype(bool)
    cols = np.argsort(rng.random((n_queries, bits)), axis=1)[:, :flips]
    codes[np.arange(n_queries)[:, None], cols] ^= True
    return np.packbits(codes, axis=1)


def parse_setting(text: str, bits: int) -> tuple[int, int, int]:
    """``"[NHASHx]B:NFLIP"`` -> (nhash, b, nflip); nhash defaults to bits // b."""
    try:
        layout, nflip = text.split(":")
        nhash, b = layout.split("x") if "x" in layout else (bits // int(layout), layout)
        return int(nhash), int(b), int(nflip)
    except ValueError:
        raise ConfigError(
            f"multi-hash setting must look like B:NFLIP or NHASHxB:NFLIP, got {text!r}"
        ) from None


def recall_at(
    k: int, got_d: np.ndarray, got_i: np.ndarray, exact_d: np.ndarray, exact_i: np.ndarray
) -> dict[str, float]:
    """Recall of an approximate k-NN against the exact one; all arrays (q, >= k), -1 for missing.

    ``recall``: returned items no farther than the exact k-th distance, over k (tie-aware: any set of
    k items within that distance is a correct answer). ``id_recall``: overlap with the exact
    (distance, index)-ordered ids, over k.
    """
    got_d, got_i, exact_d, exact_i = got_d[:, :k], got_i[:, :k], exact_d[:, :k], exact_i[:, :k]
    kth = np.where(exact_i >= 0, exact_d, -1).max(axis=1, keepdims=True)
    wanted = np.maximum((exact_i >= 0).sum(axis=1), 1)
    within = ((got_i >= 0) & (got_d <= kth)).sum(axis=1)
    overlap = np.array([len(np.intersect1d(g[g >= 0], e[e >= 0])) for g, e in zip(got_i, exact_i)])
    return {"recall": float(np.mean(within / wanted)), "id_recall": float(np.mean(overlap / wanted))}


def bench_multihash(
    db: np.ndarray,
    queries: np.ndarray,
    bits: int,
    nhash: int,
    b: int,
    nflips: Sequence[int],
    exact: dict[int, Best],
    repeat: int,
) -> list[dict[str, Any]]:
    """One MultiHashIndex build; for each nflip and k: speed, raw FAISS speed and recall against ``exact``."""
    start = time.perf_counter()
    index = MultiHashIndex(db, bits, nhash=nhash, b=b, nflip=nflips[0])
    build_s = time.perf_counter() - start
    raw_queries = faiss_layout(pad_codes(queries, index.padded_bytes))
    rows = []
    for nflip in nflips:
        index.nflip = nflip
        candidates = index.candidate_counts(queries)
        row: dict[str, Any] = {
            "setting": f"{nhash}x{b} nflip={nflip}",
            "nhash": nhash,
            "b": b,
            "nflip": nflip,
            "exact_radius": index.exact_radius,
            "build_s": build_s,
            "index_mb": index.memory_bytes() / 1e6,
            "hash_buckets": int(index.faiss_index.hashtable_size()),
            "mean_candidates": float(candidates.mean()),
            "candidate_fraction": float(candidates.mean() / len(db)),
        }
        for k, ref in exact.items():
            fns = {
                "ours": partial(index.search, queries, k),
                "faiss": partial(index.faiss_index.search, raw_queries, k),
            }
            t = best_of(fns, repeat)
            ours, (dist, idx) = t["ours"], t["ours"].result
            row[f"k{k}"] = {
                "qps": qps(len(queries), ours.wall),
                "raw_faiss_qps": qps(len(queries), t["faiss"].wall),
                "ms_per_query": 1e3 * ours.wall / len(queries),
                "speedup": ref.wall / ours.wall,
                "cpu_speedup": ref.cpu / ours.cpu,
                **recall_at(k, dist, idx, *ref.result),
            }
        rows.append(row)
    return rows


def bench_flat(
    db: np.ndarray, queries: np.ndarray, bits: int, ks: Sequence[int], repeat: int
) -> tuple[dict[str, Any], dict[int, Best]]:
    """Exact ``HammingIndex`` speed per k -> (report row, per-k timings with their (dist, idx) results)."""
    start = time.perf_counter()
    flat = HammingIndex(db, bits)
    row: dict[str, Any] = {
        "build_s": time.perf_counter() - start,
        "codes_mb": len(db) * flat.padded_bytes / 1e6,
    }
    exact: dict[int, Best] = {}
    for k in ks:
        exact[k] = best_of({"flat": partial(flat.search, queries, k)}, repeat)["flat"]
        wall = exact[k].wall
        row[f"k{k}"] = {"qps": qps(len(queries), wall), "ms_per_query": 1e3 * wall / len(queries)}
    return row, exact


def bench_case(
    rng: np.random.Generator, n: int, n_queries: int, bits: int, kind: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Exact flat search against every multi-hash setting on one generated database."""
    start = time.perf_counter()
    if kind == "clustered":
        db = clustered_codes(rng, n, bits, args.cluster_size, args.flip_prob)
    else:
        db = random_codes(rng, n, bits)
    queries = near_queries(rng, db, bits, n_queries, args.query_flips)
    generate_s = time.perf_counter() - start
    flat_row, exact = bench_flat(db, queries, bits, args.k, args.repeat)
    layouts: dict[tuple[int, int], list[int]] = {}
    for text in args.settings:
        nhash, b, nflip = parse_setting(text, bits)
        layouts.setdefault((nhash, b), []).append(nflip)
    multihash = []
    for (nhash, b), nflips in layouts.items():
        multihash += bench_multihash(db, queries, bits, nhash, b, nflips, exact, args.repeat)
        gc.collect()
    return {
        "n_database": n,
        "n_queries": n_queries,
        "bits": bits,
        "data": kind,
        "generate_s": generate_s,
        "flat": flat_row,
        "multihash": multihash,
    }


def _validate(args: argparse.Namespace) -> list[tuple[int, int]]:
    """Checked options -> (n_database, n_queries) pairs."""
    if len(args.n_queries) not in (1, len(args.n_database)):
        raise ConfigError(
            f"--n-queries takes one count or one per --n-database size, got {len(args.n_queries)} "
            f"for {len(args.n_database)} sizes"
        )
    require_positive(args, "n_database", "n_queries", "bits", "k", "repeat", "cluster_size")
    if not 0 <= args.flip_prob <= 0.5:
        raise ConfigError(f"--flip-prob must be in [0, 0.5], got {args.flip_prob}")
    for bits in args.bits:
        if not 0 <= args.query_flips <= bits:
            raise ConfigError(
                f"--query-flips must be in [0, {bits}] for {bits}-bit codes, got {args.query_flips}"
            )
        for text in args.settings:
            nhash, b, nflip = parse_setting(text, bits)
            MultiHashIndex(np.zeros((0, code_bytes(bits)), np.uint8), bits, nhash=nhash, b=b, nflip=nflip)
    counts = args.n_queries * len(args.n_database) if len(args.n_queries) == 1 else args.n_queries
    return list(zip(args.n_database, counts))


def run_sublinear_bench(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark for parsed options: prints a table and writes ``args.out`` (JSON, atomically)."""
    apply_quick(args, QUICK)
    sizes = _validate(args)
    threads, blas_threads = limit_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    config = {
        "n_database": list(args.n_database),
        "n_queries": [q for _, q in sizes],
        "bits": list(args.bits),
        "data": list(args.data),
        "k": list(args.k),
        "settings": list(args.settings),
        "cluster_size": args.cluster_size,
        "flip_prob": args.flip_prob,
        "query_flips": args.query_flips,
        "repeat": args.repeat,
        "seed": args.seed,
        "faiss_threads": threads,
        "faiss_version": faiss.__version__,
        "numpy_version": np.__version__,
        "cpu_count": os.cpu_count(),
    }
    log = Console(stderr=True).log
    cases = []
    start = time.perf_counter()
    with blas_threads:
        for n, n_queries in sizes:
            for bits in args.bits:
                for kind in args.data:
                    log(f"{n:,} {kind} {bits}-bit codes, {n_queries} queries")
                    cases.append(bench_case(rng, n, n_queries, bits, kind, args))
                    gc.collect()
    results = {
        "config": config,
        "cases": cases,
        "total_s": time.perf_counter() - start,
        # ru_maxrss is in KiB on Linux
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6,
    }
    return finish(results, render_table(results), args.out, width=150)


def render_table(results: dict[str, Any]) -> Table:
    cfg = results["config"]
    table = results_table(
        f"multi-index hashing vs exhaustive Hamming scan ({cfg['faiss_threads']} FAISS threads, "
        f"best of {cfg['repeat']})",
        (
            "n",
            "bits",
            "data",
            "index",
            "exact r",
            "build s",
            "MB",
            "cand/q",
            "k",
            "q/s",
            "speedup (cpu)",
            "recall",
        ),
        left={"data", "index"},
        caption=f"clustered: {cfg['cluster_size']} items per centre, bit flip p={cfg['flip_prob']}; queries: "
        f"items with {cfg['query_flips']} bits flipped; recall tie-aware (id recall in brackets); "
        f"peak RSS {results['peak_rss_mb']:,.0f} MB",
    )
    for case in results["cases"]:
        head = (f"{case['n_database']:,}", str(case["bits"]), case["data"])
        flat = case["flat"]
        for k in cfg["k"]:
            r = flat[f"k{k}"]
            table.add_row(
                *head,
                "flat",
                str(case["bits"]),
                f"{flat['build_s']:.2f}",
                f"{flat['codes_mb']:,.0f}",
                f"{case['n_database']:,}",
                str(k),
                f"{r['qps']:,.0f}",
                "1",
                "1",
            )
        for row in case["multihash"]:
            for k in cfg["k"]:
                r = row[f"k{k}"]
                table.add_row(
                    *head,
                    row["setting"],
                    str(row["exact_radius"]),
                    f"{row['build_s']:.2f}",
                    f"{row['index_mb']:,.0f}",
                    f"{row['mean_candidates']:,.0f}",
                    str(k),
                    f"{r['qps']:,.0f}",
                    f"{r['speedup']:.1f}x ({r['cpu_speedup']:.1f}x)",
                    f"{r['recall']:.3f} ({r['id_recall']:.3f})",
                )
        table.add_section()
    return table


def add_sublinear_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-database", type=int, nargs="+", default=[1_000_000], help="database sizes")
    parser.add_argument(
        "--n-queries", type=int, nargs="+", default=[1000], help="queries: one count, or one per size"
    )
    parser.add_argument("--bits", type=int, nargs="+", default=[48, 128])
    parser.add_argument("--data", choices=DATA_KINDS, nargs="+", default=list(DATA_KINDS))
    parser.add_argument("--k", type=int, nargs="+", default=[10, 100])
    parser.add_argument(
        "--settings",
        nargs="+",
        default=list(DEFAULT_SETTINGS),
        help="multi-hash layouts B:NFLIP (nhash = bits // B) or NHASHxB:NFLIP",
    )
    parser.add_argument("--cluster-size", type=int, default=100, help="clustered data: items per centre")
    parser.add_argument(
        "--flip-prob", type=float, default=1 / 16, help="clustered data: per-bit flip probability"
    )
    parser.add_argument(
        "--query-flips", type=int, default=2, help="bits flipped in a database item to make a query"
    )
    add_shared_arguments(
        parser, out=Path("bench_sublinear.json"), quick=QUICK, repeat=1, threads="FAISS OpenMP threads"
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark("sublinear", __doc__, add_sublinear_arguments, run_sublinear_bench, argv)


if __name__ == "__main__":
    raise SystemExit(main())
