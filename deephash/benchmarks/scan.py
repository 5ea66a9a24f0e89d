"""Folder-scan benchmark: a cold parallel scan and a cached load of a large tree of tiny image files."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from deephash.data.scan import FileList, cached_file_list, scan_tree


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
