"""What every benchmark shares: best-of timing, synthetic codes, queries/s, the disk check, the shared
options, ``main`` and the "print the table, write the JSON" ending. Benchmarks import this; the library never
imports them."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from deephash.cli import ArgumentParser, exit_on_user_error
from deephash.retrieval.codes import code_bytes
from deephash.utils.errors import ConfigError
from deephash.utils.io import atomic_write_json

DISK_MARGIN = 1 << 30  # bytes left free on top of what a run writes
_CHUNK = 1 << 18  # rows of codes generated at a time


@dataclass(frozen=True)
class Best:
    """The best wall and best process CPU seconds of repeated calls, and the last call's result."""

    wall: float
    cpu: float
    result: Any


def best_of(
    fns: Mapping[str, Callable[[], Any]], repeat: int, before: Callable[[str], None] | None = None
) -> dict[str, Best]:
    """Each function timed ``repeat`` times, the functions interleaved round by round so drift (clocks,
    caches, other work) hits them alike. CPU time is the steadier comparison on a shared machine.
    ``before(name)``, untimed, runs before each timing (say, to evict a file from the page cache)."""
    wall = {name: float("inf") for name in fns}
    cpu = dict(wall)
    last: dict[str, Any] = {}
    for _ in range(repeat):
        for name, fn in fns.items():
            if before is not None:
                before(name)
            start, start_cpu = time.perf_counter(), time.process_time()
            last[name] = fn()
            wall[name] = min(wall[name], time.perf_counter() - start)
            cpu[name] = min(cpu[name], time.process_time() - start_cpu)
    return {name: Best(wall[name], cpu[name], last.get(name)) for name in fns}


def qps(n_queries: int, seconds: float) -> float:
    """Queries per second (inf for a zero timing)."""
    return n_queries / seconds if seconds > 0 else float("inf")


def random_codes(rng: np.random.Generator, n: int, bits: int) -> np.ndarray:
    """(n, ceil(bits / 8)) uint8 uniformly random packed codes with zero padding bits."""
    packed = rng.integers(0, 256, (n, code_bytes(bits)), dtype=np.uint8)
    packed[:, -1] &= np.uint8((0xFF << (code_bytes(bits) * 8 - bits)) & 0xFF)
    return packed


def clustered_codes(
    rng: np.random.Generator, n: int, bits: int, cluster_size: int, flip_prob: float
) -> np.ndarray:
    """(n, ceil(bits / 8)) uint8: a random centre per ``cluster_size`` items, each bit flipped with ``flip_prob``
    (near neighbours exist, as with the codes of a trained model)."""
    centres = rng.random((max(1, n // cluster_size), bits)) < 0.5
    packed = np.empty((n, code_bytes(bits)), np.uint8)
    for start in range(0, n, _CHUNK):
        rows = min(_CHUNK, n - start)
        codes = centres[rng.integers(0, len(centres), rows)]
        codes ^= rng.random((rows, bits), dtype=np.float32) < flip_prob
        packed[start : start + rows] = np.packbits(codes, axis=1)
    return packed


def limit_threads(threads: int | None) -> tuple[int, AbstractContextManager[Any]]:
    """Set FAISS's OpenMP threads to ``threads`` (None: all cores); returns the count and a context that
    gives numpy's BLAS (exhaustive L2, re-ranking) the same count."""
    from threadpoolctl import threadpool_limits

    from deephash.retrieval.faiss_blas import faiss

    threads = threads or os.cpu_count() or 1
    faiss.omp_set_num_threads(threads)
    return threads, threadpool_limits(limits=threads, user_api="blas")


def work_dir(option: Path | None) -> Path:
    """The directory of ``--workdir``, else the system's temporary directory; created if missing."""
    workdir = Path(option or tempfile.gettempdir())
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir


def check_disk(
    workdir: Path, n: int, bytes_per_row: int, what: str, size_option: str = "--n-database"
) -> int:
    """Bytes ``n`` rows of ``bytes_per_row`` take; ConfigError suggesting a ``size_option`` value that fits
    when they and a 1 GB margin do not fit in ``workdir``. ``what``: the files, for the message."""
    need = n * bytes_per_row
    free = shutil.disk_usage(workdir).free
    if need + DISK_MARGIN > free:
        fits = max(1000, int((free - DISK_MARGIN) // bytes_per_row) // 1000 * 1000)
        raise ConfigError(
            f"{workdir} has {free / 1e9:.1f} GB free but {what} needs {need / 1e9:.1f} GB (+1 GB margin): "
            f"pass {size_option} {fits} or less, or another --workdir"
        )
    return need


def require_positive(args: argparse.Namespace, *names: str) -> None:
    """ConfigError naming the option when one of ``names`` (a number or a list of numbers) is <= 0."""
    for name in names:
        value = getattr(args, name)
        bad = [v for v in (value if isinstance(value, list) else [value]) if v <= 0]
        if bad:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {bad[0]}")


def apply_quick(args: argparse.Namespace, quick: Mapping[str, Any]) -> None:
    """With ``--quick``, replace the sizes in ``args`` by the tiny ones of ``quick``, except those given on
    the command line (``--quick --n-queries 50`` keeps 50)."""
    if getattr(args, "quick", False):
        given = getattr(args, "given_options", frozenset())
        for name, value in quick.items():
            if name not in given:
                setattr(args, name, value)


def add_shared_arguments(
    parser: argparse.ArgumentParser,
    *,
    out: Path | None,
    quick: Mapping[str, Any] | None = None,
    repeat: int | None = None,
    threads: str | None = None,
    workdir: str | None = None,
    seed: bool = True,
) -> None:
    """The options benchmarks share, added after their own: ``--repeat`` (default ``repeat``), ``--threads``
    (``threads`` says which) and ``--workdir`` (``workdir`` says what goes there), each only where its
    argument is given; ``--seed`` unless ``seed`` is False; ``--out`` (default ``out``); ``--quick`` listing
    the tiny ``quick`` sizes where given."""
    if repeat is not None:
        parser.add_argument(
            "--repeat", type=int, default=repeat, help="timings are the best of this many runs"
        )
    if threads is not None:
        parser.add_argument("--threads", type=int, default=None, help=f"{threads} (default: all cores)")
    if workdir is not None:
        parser.add_argument("--workdir", type=Path, default=None, help=f"where {workdir} (default: temp dir)")
    if seed:
        parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=out, help="write the results as JSON here")
    if quick is not None:
        parser.add_argument("--quick", action="store_true", help=f"tiny sizes for a smoke run: {dict(quick)}")


@exit_on_user_error
def run_benchmark(
    name: str,
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], Any],
    argv: Sequence[str] | None,
) -> int:
    """The ``main`` of ``deephash-bench <name>``: parse ``argv`` (see :func:`parse_args`), ``run`` the
    benchmark (which ends in :func:`finish`), exit status 0; a user error is one line and status 2."""
    run(parse_args(name, doc, add_arguments, argv))
    return 0


def parse_args(
    name: str,
    doc: str | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    argv: Sequence[str] | None,
) -> argparse.Namespace:
    """The options of ``deephash-bench <name>``, described by the first paragraph of the module ``doc``."""
    parser = ArgumentParser(prog=f"deephash-bench {name}", description=(doc or "").split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    tokens = list(sys.argv[1:] if argv is None else argv)
    args.given_options = frozenset(  # the options on the command line, as opposed to their defaults
        action.dest
        for action in parser._actions  # argparse has no public list of its actions
        for flag in action.option_strings
        if any(t == flag or t.startswith(flag + "=") for t in tokens)
    )
    if getattr(args, "out", None):
        check_out(Path(args.out))
    return args


def check_out(out: Path) -> None:
    """ConfigError, before any benchmark runs, when the JSON file ``out`` could not be written at the end."""
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; expected the path of a JSON file")
    parent = out.absolute().parent
    for ancestor in (parent, *parent.parents):  # the nearest existing one is where the rest gets created
        if not ancestor.exists():
            continue
        if not ancestor.is_dir():
            raise ConfigError(
                f"--out {out}: {ancestor} is a file; expected a directory to write the JSON file in"
            )
        if not os.access(ancestor, os.W_OK | os.X_OK):
            raise ConfigError(f"--out {out}: {ancestor} is not writable; expected a writable directory")
        break
    # permission bits do not tell everything (root, read-only or virtual file systems such as /proc): make
    # the directory and a scratch file in it now, as the write at the end will
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as err:
        raise ConfigError(
            f"--out {out}: cannot write in {parent} ({err.strerror}); expected a writable directory"
        ) from err


def results_table(
    title: str, columns: Sequence[str], left: Collection[str] = (), caption: str | None = None
) -> Table:
    """An empty table for :func:`finish`: ``columns`` aligned right but those in ``left``, none wrapped."""
    table = Table(title=title, caption=caption)
    for column in columns:
        table.add_column(column, justify="left" if column in left else "right", no_wrap=True)
    return table


def finish(results: dict[str, Any], table: Table, out: Path | None, width: int = 120) -> dict[str, Any]:
    """Print ``table`` (at least ``width`` columns wide) and write ``results`` to ``out`` as JSON, atomically."""
    Console(width=max(width, shutil.get_terminal_size().columns)).print(table)
    if out:
        atomic_write_json(out, results)
    return results
