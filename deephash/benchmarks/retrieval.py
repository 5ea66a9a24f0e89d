"""Retrieval speed: Hamming k-NN against raw FAISS, padding, hierarchical and exhaustive L2 search.

In one process on synthetic data (codes and a float16 F7 memmap on disk): our Hamming k-NN against raw
``faiss.IndexBinaryFlat`` on the same codes, padded against unpadded 48-bit codes, hierarchical search
(with the pool sizes it saw) and its speed-up over exhaustive L2 search, the same search reading F7 as a
loaded index does (an ``F7File`` checking each block against its CRC-32 when first read: a fresh file, every
row checked, and again, once checked), the exhaustive L2 search on
FAISS against the plain numpy path (same results checked), and the Hamming-over-L2 speed ratio the paper
puts at 971x (128 bits against 4096-d F7). Each timing is the best of ``--repeat`` runs, the compared
variants interleaved. Run as ``deephash-bench retrieval`` (the default subcommand).

Data (``--data``): ``clustered`` (the default) draws every item, queries included, from one of
``n / --cluster-size`` clusters: its code copies the cluster's centre code with each bit flipped with
``--flip-prob``, its F7 is the cluster's non-negative centre plus uniform noise. Codes and features agree
on the clusters, as with a trained model, so radius pools are non-empty and shared between queries.
``uniform`` codes and features are independent uniform draws: radius-2 pools are then nearly always
empty and hierarchical search measures only its fallback pool.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from deephash.benchmarks.common import (
    add_shared_arguments,
    apply_quick,
    best_of,
    check_disk,
    finish,
    limit_threads,
    parse_args,
    qps,
    random_codes,
    require_positive,
    results_table,
    run_benchmark,
    work_dir,
)
from deephash.retrieval.checksums import block_checksums
from deephash.retrieval.codes import code_bytes, pad_codes
from deephash.retrieval.exhaustive import L2_BACKENDS, euclidean_search
from deephash.retrieval.faiss_blas import faiss
from deephash.retrieval.features import F7File
from deephash.retrieval.hamming import HammingIndex
from deephash.retrieval.hierarchical import HierarchicalResult, PoolRule, hierarchical_search
from deephash.retrieval.index_writer import f7_block_rows
from deephash.retrieval.torch_search import TorchHammingIndex, torch_device
from deephash.retrieval.torch_search import hierarchical_search as device_hierarchical_search
from deephash.utils.errors import ConfigError

PAPER_HAMMING_OVER_L2 = 971.3  # section 4: 109.767 ms (4096-d L2) / 0.113 ms (128-bit Hamming)
HIERARCHICAL_TARGET = 100.0  # hierarchical search over exhaustive L2, at 1M x 4096
_WRITE_ROWS = 65536
_NOISE = 0.5  # width of the uniform noise around a cluster's F7 centre (centres are uniform in [0, 1))
QUICK = {"n_database": 5000, "n_queries": 50, "dim": 64, "repeat": 1}


@dataclass(frozen=True)
class Clusters:
    """The synthetic data's clusters: ``labels`` (n,) cluster of each database item, ``query_labels``
    (q,); ``centres_f7`` (clusters, dim) float32 non-negative centres (None: uniform data)."""

    labels: np.ndarray
    query_labels: np.ndarray
    centres_f7: np.ndarray | None
    flip_prob: float
    seed: int


def make_clusters(args: argparse.Namespace, rng: np.random.Generator) -> Clusters:
    n, q = args.n_database, args.n_queries
    if args.data == "uniform":
        return Clusters(np.zeros(n, np.int64), np.zeros(q, np.int64), None, 0.5, args.seed)
    count = max(1, n // args.cluster_size)
    centres = rng.random((count, args.dim), dtype=np.float32)
    return Clusters(rng.integers(0, count, n), rng.integers(0, count, q), centres, args.flip_prob, args.seed)


def item_features(clusters: Clusters, labels: np.ndarray, dim: int, rng: np.random.Generator) -> np.ndarray:
    """(len(labels), dim) float32 F7-like rows: post-ReLU activations are non-negative."""
    noise = rng.random((len(labels), dim), dtype=np.float32)
    if clusters.centres_f7 is None:
        return noise
    noise -= 0.5
    noise *= _NOISE
    noise += clusters.centres_f7[labels]
    return np.maximum(noise, 0, out=noise)


def item_codes(clusters: Clusters, labels: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """(len(labels), ceil(bits / 8)) uint8: each cluster's centre code with bits flipped at ``flip_prob``
    (uniform data: random codes)."""
    if clusters.centres_f7 is None:
        return random_codes(rng, len(labels), bits)
    # the same centre codes for the database and the queries
    centres = np.random.default_rng([clusters.seed, bits]).random((len(clusters.centres_f7), bits)) < 0.5
    packed = np.empty((len(labels), code_bytes(bits)), np.uint8)
    for start in range(0, len(labels), _WRITE_ROWS):
        codes = centres[labels[start : start + _WRITE_ROWS]]
        codes ^= rng.random(codes.shape, dtype=np.float32) < clusters.flip_prob
        packed[start : start + len(codes)] = np.packbits(codes, axis=1)
    return packed


def write_features(
    path: Path, clusters: Clusters, dim: int, rng: np.random.Generator
) -> tuple[np.memmap, np.ndarray]:
    """Write the (n, dim) float16 F7 memmap in row chunks; returns it opened read-only, with the CRC-32 of
    each block of ``f7_block_rows(dim)`` rows as an index stores them."""
    n = len(clusters.labels)
    block_rows = f7_block_rows(dim)
    f7 = np.lib.format.open_memmap(path, "w+", np.float16, (n, dim))
    step = max(1, (_WRITE_ROWS * 512) // dim // block_rows) * block_rows
    sums = []
    for start in range(0, n, step):
        rows = item_features(clusters, clusters.labels[start : start + step], dim, rng).astype(np.float16)
        f7[start : start + step] = rows
        sums.append(block_checksums(rows, block_rows))
    f7.flush()
    del f7
    return np.load(path, mmap_mode="r"), np.concatenate(sums)


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
    db_f7: np.memmap,
    sums: np.ndarray,
    queries: np.ndarray,
    query_f7: np.ndarray,
    k: int,
    radius: int,
    repeat: int,
) -> dict[str, Any]:
    """Hierarchical search with the default pool limits on the float16 memmap, and the pool sizes it saw (a
    pool of exactly ``pool_size`` items is, but for coincidences, the fallback pool); and on the same file
    read as a loaded index reads it, an ``F7File`` with the CRC-32 ``sums`` of its blocks: once on a fresh
    one (every block the pools touch is checked), then interleaved with the memmap runs. The results must
    be the same."""
    rule = PoolRule(radius=radius)

    def search(f7: np.memmap | F7File) -> Callable[[], HierarchicalResult]:
        return partial(hierarchical_search, index, f7, queries, query_f7, k, rule)

    block_rows = f7_block_rows(db_f7.shape[1])
    with F7File(db_f7.filename, checksums=sums, block_rows=block_rows) as f7:
        first = best_of({"loaded_first": search(f7)}, 1)["loaded_first"]
        t = best_of({"hierarchical": search(db_f7), "loaded": search(f7)}, repeat)
    best = t["hierarchical"]
    for other in (first, t["loaded"]):
        fields = ("idx", "l2", "hamming", "pool_sizes")
        if not all(np.array_equal(getattr(other.result, f), getattr(best.result, f)) for f in fields):
            raise RuntimeError("hierarchical search read through F7File differs from the memmap's results")
    sizes = best.result.pool_sizes
    return {
        "k": k,
        "radius": radius,
        "qps": qps(len(queries), best.wall),
        "ms_per_query": 1e3 * best.wall / len(queries),
        "cpu_ms_per_query": 1e3 * best.cpu / len(queries),
        "loaded_first_ms_per_query": 1e3 * first.wall / len(queries),
        "loaded_ms_per_query": 1e3 * t["loaded"].wall / len(queries),
        "mean_pool_size": float(np.mean(sizes)),
        "pool_sizes": {
            "min": int(sizes.min()),
            "median": float(np.median(sizes)),
            "p90": float(np.percentile(sizes, 90)),
            "max": int(sizes.max()),
            "fallback_fraction": float(np.mean(sizes == rule.limits(k)[2])),
        },
    }


def bench_euclidean(db_f7: np.ndarray, query_f7: np.ndarray, k: int, repeat: int) -> dict[str, Any]:
    """Exhaustive L2 over the whole float16 memmap: FAISS (the default) against the numpy path, whose
    results must be the same."""
    fns = {name: partial(euclidean_search, db_f7, query_f7, k, backend=name) for name in L2_BACKENDS}
    t = best_of(fns, repeat)
    same = all(np.array_equal(a, b) for a, b in zip(t["faiss"].result, t["numpy"].result))
    if not same:
        raise AssertionError("the FAISS and numpy exhaustive L2 searches disagree")
    q = len(query_f7)
    return {
        "k": k,
        "n_queries": q,
        "qps": qps(q, t["faiss"].wall),
        "ms_per_query": 1e3 * t["faiss"].wall / q,
        "cpu_ms_per_query": 1e3 * t["faiss"].cpu / q,
        "numpy_ms_per_query": 1e3 * t["numpy"].wall / q,
        "numpy_cpu_ms_per_query": 1e3 * t["numpy"].cpu / q,
        "faiss_over_numpy": t["numpy"].wall / t["faiss"].wall,
        "cpu_faiss_over_numpy": t["numpy"].cpu / t["faiss"].cpu,
        "same_results": same,
    }


def bench_device(
    index: HammingIndex,
    db_f7: np.ndarray,
    queries: np.ndarray,
    query_f7: np.ndarray,
    k: int,
    radius: int,
    repeat: int,
    device: str,
) -> dict[str, Any]:
    """The torch path of ``retrieval.device`` against the CPU path (FAISS), same results required: the
    coarse Hamming k-NN, and hierarchical search. ``cpu`` runs the torch code on CPU tensors."""
    dev_index = TorchHammingIndex(
        index.codes, index.bits, torch_device(device) if device == "cuda" else "cpu"
    )
    rule = PoolRule(radius=radius)
    fns = {
        "faiss_knn": partial(index.search, queries, k),
        "torch_knn": partial(dev_index.search, queries, k),
        "cpu_hierarchical": partial(hierarchical_search, index, db_f7, queries, query_f7, k, rule),
        "torch_hierarchical": partial(
            device_hierarchical_search, dev_index, db_f7, queries, query_f7, k, rule
        ),
    }
    t = best_of(fns, repeat)
    same_knn = all(np.array_equal(a, b) for a, b in zip(t["faiss_knn"].result, t["torch_knn"].result))
    cpu_h, dev_h = t["cpu_hierarchical"].result, t["torch_hierarchical"].result
    same_h = all(np.array_equal(getattr(cpu_h, f), getattr(dev_h, f)) for f in ("idx", "l2", "hamming"))
    if not (same_knn and same_h):
        raise AssertionError(f"the {device} torch path and the CPU path disagree")
    q = len(queries)
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu (torch)",
        "k": k,
        "faiss_knn_qps": qps(q, t["faiss_knn"].wall),
        "torch_knn_qps": qps(q, t["torch_knn"].wall),
        "knn_speedup": t["faiss_knn"].wall / t["torch_knn"].wall,
        "cpu_hierarchical_ms_per_query": 1e3 * t["cpu_hierarchical"].wall / q,
        "torch_hierarchical_ms_per_query": 1e3 * t["torch_hierarchical"].wall / q,
        "hierarchical_speedup": t["cpu_hierarchical"].wall / t["torch_hierarchical"].wall,
        "same_results": True,
    }


def run_retrieval(args: argparse.Namespace) -> dict[str, Any]:
    """The retrieval benchmark; prints a table and writes ``args.out`` (JSON, atomically)."""
    apply_quick(args, QUICK)
    require_positive(args, "n_database", "n_queries", "dim", "repeat", "euclidean_queries", "cluster_size")
    if not 0 <= args.flip_prob <= 0.5:
        raise ConfigError(f"--flip-prob must be in [0, 0.5], got {args.flip_prob}")
    if args.device:
        torch_device(args.device)  # a missing GPU is reported before the features are written
    threads, blas_threads = limit_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    n, dim, k = args.n_database, args.dim, args.k[0]
    workdir = work_dir(args.workdir)
    check_disk(workdir, n, dim * 2, f"the {n} x {dim} float16 F7 file")
    config = {
        "n_database": n,
        "n_queries": args.n_queries,
        "euclidean_queries": min(args.euclidean_queries, args.n_queries),
        "dim": dim,
        "bits": list(args.bits),
        "k": list(args.k),
        "radius": args.radius,
        "data": args.data,
        "cluster_size": args.cluster_size if args.data == "clustered" else None,
        "flip_prob": args.flip_prob if args.data == "clustered" else None,
        "seed": args.seed,
        "repeat": args.repeat,
        "faiss_threads": threads,
        "blas_threads": threads,
        "faiss_version": faiss.__version__,
        "numpy_version": np.__version__,
        "cpu_count": os.cpu_count(),
        "device": args.device,
    }
    results: dict[str, Any] = {"config": config, "hamming": {}, "padding": {}, "hierarchical": {}}
    log = Console(stderr=True).log
    with blas_threads:
        scratch = Path(tempfile.mkdtemp(prefix="deephash-bench-", dir=workdir))
        try:
            log(f"writing {n:,} x {dim} float16 F7 features to {scratch}")
            start = time.perf_counter()
            clusters = make_clusters(args, rng)
            db_f7, sums = write_features(scratch / "f7.npy", clusters, dim, rng)
            query_f7 = item_features(clusters, clusters.query_labels, dim, rng)
            config["f7_write_s"] = time.perf_counter() - start
            for bits in args.bits:
                log(f"{bits}-bit codes: hamming search, padding, hierarchical search")
                index = HammingIndex(item_codes(clusters, clusters.labels, bits, rng), bits)
                queries = item_codes(clusters, clusters.query_labels, bits, rng)
                results["hamming"][str(bits)] = bench_hamming(index, queries, args.k, args.repeat)
                results["padding"][str(bits)] = bench_padding(index, queries, k, args.repeat)
                results["hierarchical"][str(bits)] = bench_hierarchical(
                    index, db_f7, sums, queries, query_f7, k, args.radius, args.repeat
                )
                if args.device:
                    results.setdefault("device", {})[str(bits)] = bench_device(
                        index, db_f7, queries, query_f7, k, args.radius, args.repeat, args.device
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
    results["hierarchical_over_euclidean"] = {
        bits: {
            "speedup": results["euclidean"]["ms_per_query"] / r["ms_per_query"],
            "cpu_speedup": results["euclidean"]["cpu_ms_per_query"] / r["cpu_ms_per_query"],
            "target": HIERARCHICAL_TARGET,
        }
        for bits, r in results["hierarchical"].items()
    }
    return finish(results, render_table(results), args.out)


def render_table(results: dict[str, Any]) -> Table:
    cfg = results["config"]
    table = results_table(
        f"retrieval: {cfg['n_database']:,} items, {cfg['n_queries']} queries, {cfg['dim']}-d F7, "
        f"{cfg['faiss_threads']} FAISS/BLAS threads, best of {cfg['repeat']}",
        ("measure", "bits", "k", "value"),
        left={"measure"},
    )
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
            f"{r['qps']:,.1f} ({r['ms_per_query']:.2f} ms, {r['mean_pool_size']:,.0f}, "
            f"fallback {r['pool_sizes']['fallback_fraction']:.0%})",
        )
        table.add_row(
            "hierarchical on a loaded index (F7File), ms/query: fresh / checked",
            bits,
            str(r["k"]),
            f"{r['loaded_first_ms_per_query']:.2f} / {r['loaded_ms_per_query']:.2f}",
        )
    e = results["euclidean"]
    table.add_row(
        f"exhaustive L2 q/s ({e['n_queries']} queries), FAISS",
        "-",
        str(e["k"]),
        f"{e['qps']:,.2f} ({e['ms_per_query']:.1f} ms)",
    )
    table.add_row(
        "exhaustive L2: FAISS over numpy path (same results)",
        "-",
        str(e["k"]),
        f"{e['faiss_over_numpy']:.2f}x (cpu {e['cpu_faiss_over_numpy']:.2f}x, numpy {e['numpy_ms_per_query']:.1f} ms)",
    )
    for bits, r in results["hierarchical_over_euclidean"].items():
        table.add_row(
            f"hierarchical over exhaustive L2 speed (target {r['target']:.0f}x)",
            bits,
            str(e["k"]),
            f"{r['speedup']:,.1f}x (cpu {r['cpu_speedup']:,.1f}x)",
        )
    for bits, r in results.get("device", {}).items():
        table.add_row(
            f"{r['device_name']} / FAISS: hamming k-NN, hierarchical",
            bits,
            str(r["k"]),
            f"{r['knn_speedup']:.2f}x, {r['hierarchical_speedup']:.2f}x (same results)",
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
    parser.add_argument(
        "--data", choices=("clustered", "uniform"), default="clustered", help="synthetic data kind"
    )
    parser.add_argument("--cluster-size", type=int, default=1000, help="clustered data: items per cluster")
    parser.add_argument(
        "--flip-prob", type=float, default=1 / 32, help="clustered data: per-bit flip probability of a code"
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=None,
        help="also time the torch path of retrieval.device against FAISS (cpu: the torch code on CPU tensors)",
    )
    add_shared_arguments(
        parser,
        out=Path("bench.json"),
        quick=QUICK,
        repeat=3,
        threads="FAISS OpenMP threads",
        workdir="the float16 F7 memmap goes",
    )


def parse_retrieval_args(argv: Sequence[str] | None) -> argparse.Namespace:
    return parse_args("retrieval", __doc__, add_retrieval_arguments, argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark("retrieval", __doc__, add_retrieval_arguments, run_retrieval, argv)


if __name__ == "__main__":
    raise SystemExit(main())
