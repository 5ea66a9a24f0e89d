"""Folder scanning: a cold parallel scan and a cached load of a large tree of tiny image files.

``n_files`` one-byte ``.jpg`` files in ``n_classes`` class folders are listed three ways: a one-thread
scan, a cold scan on the thread pool that writes the file-list cache, and a load from that cache.
Run as ``deephash-bench scan``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from deephash.benchmarks.common import (
    add_shared_arguments,
    apply_quick,
    check_disk,
    finish,
    require_positive,
    results_table,
    run_benchmark,
    work_dir,
)
from deephash.data.scan import FileList, cached_file_list, default_threads, scan_tree

QUICK = {"n_files": 2000, "n_classes": 10}
STEPS = {"scan_1_thread_s": "scan, 1 thread", "cold_scan_s": "cold scan", "cached_load_s": "cached load"}
_BYTES_PER_FILE = 4096  # one filesystem block per one-byte file


def scan_benchmark(
    n_files: int, n_classes: int, tmpdir: str | os.PathLike, threads: int | None = None
) -> dict[str, float]:
    """Time a cold scan and a cached load of ``n_files`` one-byte ``.jpg`` files in ``n_classes`` folders.

    "Cold" means no file-list cache; the OS has just written the files, so its directory cache is warm.
    The tree is removed afterwards.
    """
    root = Path(tmpdir) / f"scan-benchmark-{n_files}"
    cache = Path(tmpdir) / f"scan-benchmark-{n_files}-cache"
    t0 = time.perf_counter()
    for c in range(n_classes):
        folder = root / f"class_{c:04d}"
        folder.mkdir(parents=True)
        for i in range(c, n_files, n_classes):
            fd = os.open(folder / f"{i:08d}.jpg", os.O_CREAT | os.O_WRONLY, 0o644)
            os.write(fd, b"\xff")  # one byte: zero-byte files are left out as unreadable
            os.close(fd)
    created = time.perf_counter() - t0
    old = time.time() - 10  # older than RACY_NS, so the first scan's cache is trusted
    for d in [root, *root.iterdir()]:
        os.utime(d, (old, old))
    cache.mkdir(parents=True)
    try:
        timings = {"n_files": float(n_files), "n_classes": float(n_classes), "create_s": created}
        for name, fn in _bench_steps(root, cache, threads):
            t0 = time.perf_counter()
            files = fn()
            timings[name] = time.perf_counter() - t0
            assert len(files.paths) == n_files
        timings["cache_mb"] = sum(f.stat().st_size for f in cache.iterdir()) / 2**20
        return timings
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)


def _bench_steps(root: Path, cache: Path, threads: int | None) -> list[tuple[str, Callable[[], FileList]]]:
    return [
        ("scan_1_thread_s", lambda: scan_tree(str(root), threads=1)),
        ("cold_scan_s", lambda: cached_file_list(str(root), None, cache, threads)),
        ("cached_load_s", lambda: cached_file_list(str(root), None, cache, threads)),
    ]


def run_scan_bench(args: argparse.Namespace) -> dict[str, Any]:
    """The folder-scan benchmark; prints a table and writes ``args.out`` (JSON, atomically)."""
    apply_quick(args, QUICK)
    require_positive(args, "n_files", "n_classes")
    workdir = work_dir(args.workdir)
    check_disk(workdir, args.n_files, _BYTES_PER_FILE, f"a tree of {args.n_files} files", "--n-files")
    threads = args.threads or default_threads()
    results = {"config": {"threads": threads, "cpu_count": os.cpu_count()}}
    results["timings"] = scan_benchmark(args.n_files, args.n_classes, workdir, threads)
    return finish(results, render_table(results), args.out)


def render_table(results: dict[str, Any]) -> Table:
    t = results["timings"]
    table = results_table(
        f"folder scan, {results['config']['threads']} threads", ("measure", "value"), left={"measure"}
    )
    table.add_row("files / classes", f"{t['n_files']:,.0f} / {t['n_classes']:,.0f}")
    for key, label in STEPS.items():
        table.add_row(f"{label} s", f"{t[key]:,.3f}")
    table.add_row("file-list cache MB", f"{t['cache_mb']:,.1f}")
    return table


def add_scan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-files", type=int, default=1_000_000)
    parser.add_argument("--n-classes", type=int, default=116)
    parser.add_argument("--threads", type=int, default=None, help="scan threads (default: 4 per core, <= 32)")
    add_shared_arguments(parser, out=Path("scan.json"), quick=QUICK, workdir="the tree goes", seed=False)


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark("scan", __doc__, add_scan_arguments, run_scan_bench, argv)


if __name__ == "__main__":
    raise SystemExit(main())
