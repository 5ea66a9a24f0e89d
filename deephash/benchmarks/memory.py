"""Peak resident memory of a large index: building it, hierarchical search and exhaustive L2 search.

Each operation runs in a fresh subprocess (``python -m deephash.benchmarks.memory --worker ...``), so
one operation's peak cannot hide another's. A subprocess imports what it needs, notes its resident set
(the baseline), does the work and reports its peak resident set minus the baseline. The peak is the
address space's high-water mark (``VmHWM``; ``getrusage``'s ``ru_maxrss`` would carry a large parent's
peak over the exec), restarted after the imports where Linux allows (``/proc/self/clear_refs``).
On synthetic data (random codes, uniform float16 F7, random labels):

* ``build``: batches of ``--batch-rows`` rows go through encoding's ``_RowWriter`` exactly as
  Lightning's predict loop drives it (``on_predict_start``, ``write_on_batch_end`` per batch,
  ``on_predict_end``) into its staging files; then the steps of ``build_index``: the staging arrays
  are read back as ``encode_split`` returns them (codes and labels in RAM, F7 memory-mapped),
  ``save_index`` copies them into the index, ``load_index`` opens it and the staging is removed.
* ``hierarchical``: ``load_index`` and one ``hierarchical_search`` call for all ``--n-queries``
  queries (random codes, so pools are the ``--pool-size`` nearest codes).
* ``euclidean``: ``load_index`` and one ``euclidean_search`` call for ``--euclidean-queries``
  queries over every row, ``--chunk-rows`` rows at a time.

Run as ``deephash-bench memory``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from deephash.benchmarks.common import (
    add_shared_arguments,
    apply_quick,
    check_disk,
    finish,
    limit_threads,
    random_codes,
    require_positive,
    results_table,
    run_benchmark,
    work_dir,
)
from deephash.cli import exit_on_user_error
from deephash.utils.io import atomic_write_json

OPERATIONS = ("build", "hierarchical", "euclidean")
QUICK = {"n_database": 20_000, "dim": 256, "n_queries": 50, "euclidean_queries": 10, "chunk_rows": 4096}
MB = 1 << 20


def _status_kib(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` line of ``/proc/self/status`` in KiB (None where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _rss_bytes() -> int:
    """This process's current resident set (Linux ``/proc``; elsewhere its peak so far)."""
    kib = _status_kib("VmRSS")
    return _peak_rss_bytes() if kib is None else kib * 1024


def _peak_rss_bytes() -> int:
    """Peak resident set of this process image. ``VmHWM`` belongs to the address space, so it starts
    afresh at exec; ``ru_maxrss`` would carry over the peak of a large parent from before the exec."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _reset_peak() -> None:
    """Restart the peak from the current resident set (Linux >= 4.0); a no-op where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


class Meter:
    """Baseline at creation (after the imports, the peak restarted there); ``result()`` adds the peak
    reached since and the elapsed time."""

    def __init__(self) -> None:
        self.baseline_peak = _peak_rss_bytes()
        _reset_peak()
        self.baseline = _rss_bytes()
        self.start = time.perf_counter()

    def result(self) -> dict[str, float]:
        peak = _peak_rss_bytes()
        return {
            "seconds": time.perf_counter() - self.start,
            "baseline_rss_mb": self.baseline / MB,
            "baseline_peak_mb": self.baseline_peak / MB,
            "peak_rss_mb": peak / MB,
            "peak_over_baseline_mb": (peak - self.baseline) / MB,
        }


def _op_build(spec: dict[str, Any]) -> dict[str, Any]:
    """Synthetic encoder batches -> ``_RowWriter`` staging -> ``save_index`` -> ``load_index``."""
    from types import SimpleNamespace

    import torch

    from deephash.retrieval import load_index, save_index
    from deephash.retrieval.encode import _RowWriter

    n, dim, bits, batch = spec["n_database"], spec["dim"], spec["bits"], spec["batch_rows"]
    index_dir, staging = Path(spec["index_dir"]), Path(spec["staging_dir"])
    rng = np.random.default_rng(spec["seed"])
    meter = Meter()
    # a one-process trainer as far as the writer sees it: rank 0, barriers are no-ops
    trainer = SimpleNamespace(is_global_zero=True, strategy=SimpleNamespace(barrier=lambda name=None: None))
    pool_index = np.arange(n, dtype=np.int64)
    writer = _RowWriter(staging, pool_index, bits, dim)
    writer.on_predict_start(trainer, None)
    for batch_idx, start in enumerate(range(0, n, batch)):
        m = min(batch, n - start)
        prediction = {
            "codes": torch.from_numpy(rng.random((m, bits), dtype=np.float32) < 0.5),
            # post-ReLU F7 activations are non-negative; uniform draws are the cheapest to generate
            "f7": torch.from_numpy(rng.random((m, dim), dtype=np.float32).astype(np.float16)),
            "labels": torch.from_numpy(rng.integers(0, 1000, m)),
            "index": torch.from_numpy(pool_index[start : start + m]),
        }
        writer.write_on_batch_end(trainer, None, prediction, None, None, batch_idx, 0)
    writer.on_predict_end(trainer, None)
    encode_s = time.perf_counter() - meter.start
    # what encode_split hands to build_index
    if not np.load(staging / "written.npy").all():
        raise RuntimeError("the staging files miss rows")
    codes, labels = np.load(staging / "codes.npy"), np.load(staging / "labels.npy")
    f7 = np.load(staging / "f7.npy", mmap_mode="r")
    ids = [f"item{i:07d}" for i in range(n)]
    save_start = time.perf_counter()
    save_index(
        index_dir, codes_packed=codes, f7=f7, labels=labels, ids=ids, bits=bits, meta={"dataset": "synthetic"}
    )
    store = load_index(index_dir, expect_bits=bits)
    save_s = time.perf_counter() - save_start
    del f7
    shutil.rmtree(staging)
    return {
        **meter.result(),
        "encode_seconds": encode_s,
        "save_seconds": save_s,
        "rows_per_second": n / (encode_s + save_s),
        "index_bytes": sum(p.stat().st_size for p in index_dir.iterdir()),
        "count": store.count,
    }


def _op_hierarchical(spec: dict[str, Any]) -> dict[str, Any]:
    """``load_index`` and one batch of hierarchical queries."""
    from deephash.retrieval import PoolRule, hierarchical_search, load_index

    with limit_threads(spec["threads"])[1]:
        rng = np.random.default_rng(spec["seed"] + 1)
        meter = Meter()
        store = load_index(spec["index_dir"], expect_bits=spec["bits"])
        queries = random_codes(rng, spec["n_queries"], spec["bits"])
        query_f7 = rng.random((spec["n_queries"], spec["dim"]), dtype=np.float32)
        search_start = time.perf_counter()
        res = hierarchical_search(
            store.hamming_index,
            store.f7,
            queries,
            query_f7,
            spec["k"],
            PoolRule(radius=spec["radius"], pool_size=spec["pool_size"]),
        )
        search_s = time.perf_counter() - search_start
        return {
            **meter.result(),
            "search_seconds": search_s,
            "ms_per_query": 1e3 * search_s / spec["n_queries"],
            "mean_pool_size": float(res.pool_sizes.mean()),
        }


def _op_euclidean(spec: dict[str, Any]) -> dict[str, Any]:
    """``load_index`` and one exhaustive L2 search, streamed in chunks."""
    from deephash.retrieval import euclidean_search, load_index

    with limit_threads(spec["threads"])[1]:
        rng = np.random.default_rng(spec["seed"] + 2)
        meter = Meter()
        store = load_index(spec["index_dir"], expect_bits=spec["bits"])
        query_f7 = rng.random((spec["euclidean_queries"], spec["dim"]), dtype=np.float32)
        search_start = time.perf_counter()
        euclidean_search(store.f7, query_f7, spec["k"], chunk_size=spec["chunk_rows"])
        search_s = time.perf_counter() - search_start
        return {
            **meter.result(),
            "search_seconds": search_s,
            "ms_per_query": 1e3 * search_s / spec["euclidean_queries"],
        }


_WORKERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "build": _op_build,
    "hierarchical": _op_hierarchical,
    "euclidean": _op_euclidean,
}


def _worker(op: str, spec_path: str) -> int:
    """Subprocess side: run ``op`` with the JSON spec at ``spec_path``, write its result next to it."""
    spec = json.loads(Path(spec_path).read_text())
    atomic_write_json(Path(spec_path).with_suffix(".result.json"), _WORKERS[op](spec))
    return 0


def _run_in_subprocess(op: str, spec: dict[str, Any], scratch: Path) -> dict[str, Any]:
    spec_path = scratch / f"{op}.json"
    atomic_write_json(spec_path, spec)
    cmd = [sys.executable, "-m", "deephash.benchmarks.memory", "--worker", op, str(spec_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"the {op} subprocess failed with status {proc.returncode}: " + " | ".join(tail))
    return json.loads(spec_path.with_suffix(".result.json").read_text())


def run_memory_bench(args: argparse.Namespace) -> dict[str, Any]:
    """The memory benchmark; prints a table and writes ``args.out`` (JSON, atomically)."""
    apply_quick(args, QUICK)
    require_positive(
        args, "n_database", "dim", "bits", "n_queries", "euclidean_queries", "batch_rows", "chunk_rows", "k"
    )
    n, dim = args.n_database, args.dim
    workdir = work_dir(args.workdir)
    # staging and index side by side: two copies of each row, the written flags and the ids
    per_row = 2 * (2 * dim + (args.bits + 7) // 8 + 8) + 1 + 16
    disk_bytes = check_disk(workdir, n, per_row, f"building a {n} x {dim} index (staging copy and index)")
    threads = args.threads or os.cpu_count() or 1
    config = {
        "n_database": args.n_database,
        "dim": args.dim,
        "bits": args.bits,
        "batch_rows": args.batch_rows,
        "n_queries": args.n_queries,
        "euclidean_queries": args.euclidean_queries,
        "k": args.k,
        "radius": args.radius,
        "pool_size": args.pool_size,
        "chunk_rows": args.chunk_rows,
        "threads": threads,
        "seed": args.seed,
        "limit_mb": args.limit_mb,
        "cpu_count": os.cpu_count(),
        "disk_bytes_needed": disk_bytes,
    }
    sizes = {
        "codes_mb": args.n_database * ((args.bits + 7) // 8) / MB,
        "f7_file_mb": args.n_database * args.dim * 2 / MB,
    }
    log = Console(stderr=True).log
    scratch = Path(tempfile.mkdtemp(prefix="deephash-memory-", dir=workdir))
    spec = {
        **config,
        "index_dir": str(scratch / "index"),
        "staging_dir": str(scratch / ".index.encode-database"),
    }
    operations: dict[str, Any] = {}
    try:
        for op in OPERATIONS:
            log(f"{op}: {args.n_database:,} x {args.dim} float16 F7, {args.bits}-bit codes, in a subprocess")
            result = _run_in_subprocess(op, spec, scratch)
            # the target: peak memory beyond the codes stays under limit_mb
            result["beyond_codes_mb"] = result["peak_over_baseline_mb"] - sizes["codes_mb"]
            result["within_limit"] = result["beyond_codes_mb"] < args.limit_mb
            operations[op] = result
    finally:
        if args.keep:
            log(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    results = {"config": config, "sizes": sizes, "operations": operations}
    return finish(results, render_table(results), args.out)


def render_table(results: dict[str, Any]) -> Table:
    cfg, sizes = results["config"], results["sizes"]
    table = results_table(
        f"peak resident memory: {cfg['n_database']:,} x {cfg['dim']} float16 F7 "
        f"({sizes['f7_file_mb']:,.0f} MB file), {cfg['bits']}-bit codes ({sizes['codes_mb']:,.1f} MB)",
        ("operation", "seconds", "baseline MB", "peak MB", "peak - baseline MB", f"< {cfg['limit_mb']} MB"),
        left={"operation"},
    )
    labels = {
        "build": f"build (encode staging + save, {cfg['batch_rows']}-row batches)",
        "hierarchical": f"hierarchical, {cfg['n_queries']} queries, pool {cfg['pool_size']}",
        "euclidean": f"exhaustive L2, {cfg['euclidean_queries']} queries, {cfg['chunk_rows']}-row chunks",
    }
    for op, r in results["operations"].items():
        table.add_row(
            labels[op],
            f"{r['seconds']:,.1f}",
            f"{r['baseline_rss_mb']:,.0f}",
            f"{r['peak_rss_mb']:,.0f}",
            f"{r['peak_over_baseline_mb']:,.0f}",
            "yes" if r["within_limit"] else "NO",
        )
    return table


def add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-database", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=4096, help="F7 feature size")
    parser.add_argument("--bits", type=int, default=128)
    parser.add_argument("--batch-rows", type=int, default=4096, help="rows per synthetic encoder batch")
    parser.add_argument(
        "--n-queries", type=int, default=1000, help="hierarchical queries, searched in one call"
    )
    parser.add_argument("--euclidean-queries", type=int, default=100)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--radius", type=int, default=2, help="hierarchical search Hamming radius")
    parser.add_argument("--pool-size", type=int, default=1000, help="hierarchical fallback pool size")
    parser.add_argument(
        "--chunk-rows",
        type=int,
        default=65536,
        help="exhaustive L2 rows per chunk (euclidean_search's default)",
    )
    parser.add_argument(
        "--limit-mb", type=float, default=3072, help="target: peak beyond the codes stays below"
    )
    parser.add_argument("--keep", action="store_true", help="keep the index directory")
    add_shared_arguments(
        parser,
        out=Path("memory.json"),
        quick=QUICK,
        threads="FAISS/BLAS threads",
        workdir="the staging and index files go",
    )


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    """``deephash-bench memory``; ``--worker OP SPEC`` is the subprocess side of one operation."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker(argv[1], argv[2])
    return run_benchmark("memory", __doc__, add_memory_arguments, run_memory_bench, argv)


if __name__ == "__main__":
    sys.exit(main())
