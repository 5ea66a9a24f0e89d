"""Re-rank feature codecs side by side: index size, build time and peak memory, hierarchical queries/s and
recall@k against the exact float16 re-rank; with ``--run``, mAP per codec on a trained run's index.

Synthetic data (the default, ``deephash.benchmarks.synthetic_f7``): ``--n-database`` F7 rows of ``--dim``
non-negative features around ``--clusters`` centres (varying in an ``--intrinsic-dim`` subspace, plus
``--noise``), codes the signs of a random projection of the centred rows, queries fresh draws from the same
clusters. The float16 index is written first, streamed in blocks; every codec's index is then built from it by
``save_index`` in a fresh subprocess (its peak resident memory above the imports, as ``deephash-bench memory``
measures it). With ``--stream`` there is no float16 index (10M x 4096-d would be 82 GB): each codec's index is
built from the rows as they are drawn (its codec trained on the first ``--train-rows``, the drawing time not
counted, its memory counted), and the exact reference re-ranks the exact pools on their rows drawn again.

In this process, every codec answers the same queries with the same coarse pools (best of ``--repeat``,
codecs interleaved), so the ratios hold on a busy machine; ``--cold`` times them again, each after its index's
files were evicted from the page cache (``cold_qps``). Each ``--coarse`` method other than flat (the sub-linear
coarse stage, ``deephash.retrieval.sublinear``) is reported with the recall of its pools against the exact
ones, and the recall of its results against the exact reference.

``<pq codec>:r<R>`` in ``--codecs`` (``pq64:r1000``) is that codec built with ``codec_rerank=R`` (its F7 kept,
each search's top R re-ranked exactly); the searches go through the search modes
(``deephash.retrieval.modes``), as ``Searcher``'s do.

``--run RUN``: the run's ``index/`` and ``queries/`` (as ``deephash-train`` leaves them); each codec's index is
built from the run's F7 and evaluated (hierarchical and euclidean mAP), the difference to float16 reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from deephash.benchmarks.common import (
    add_shared_arguments,
    apply_quick,
    best_of,
    check_disk,
    finish,
    limit_threads,
    qps,
    require_positive,
    results_table,
    run_benchmark,
    work_dir,
)
from deephash.benchmarks.memory import Meter
from deephash.benchmarks.sublinear import parse_setting
from deephash.benchmarks.synthetic_f7 import SyntheticF7, data_from, exact_reference, stream_index
from deephash.cli import exit_on_user_error
from deephash.evaluation.pipeline import evaluate_retrieval, pool_recall
from deephash.retrieval import (
    HammingIndex,
    PoolRule,
    load_index,
    save_index,
)
from deephash.retrieval.codecs import parse_codec
from deephash.retrieval.features import F7File
from deephash.retrieval.manifest import QUANTISED
from deephash.retrieval.modes import SEARCHES, ModeQuery
from deephash.retrieval.pages import release_pages
from deephash.retrieval.sublinear import build_hamming_index
from deephash.utils.errors import ConfigError
from deephash.utils.io import atomic_write_json

QUICK = {"n_database": 20_000, "dim": 128, "n_queries": 100, "euclidean_queries": 10, "train_rows": 5000}
MB = 1 << 20


def _index_bytes(path: Path) -> dict[str, float]:
    rows = [p for p in path.iterdir() if p.name in ("f7.npy", "pq.npy")]
    return {
        "disk_mb": sum(p.stat().st_size for p in path.iterdir()) / MB,
        "rows_mb": sum(p.stat().st_size for p in rows) / MB,
    }


def _build(spec: dict[str, Any]) -> dict[str, Any]:
    """Subprocess side: the codec's index built from the float16 one (its F7 read in blocks), or with
    ``stream`` from the synthetic rows drawn afresh (the time spent drawing them not counted)."""
    codec, _, rerank = spec["codec"].partition(":r")
    if spec.get("stream"):
        data = SyntheticF7(**spec["stream"]["data"])
        meter = Meter()
        drawing = stream_index(
            data,
            Path(spec["out"]),
            spec["stream"]["n"],
            spec["stream"]["stream"],
            codec,
            spec["train_rows"],
            spec["seed"],
            int(rerank or 0),
        )
        result = meter.result()
        return result | {"seconds": result["seconds"] - drawing, "drawing_s": drawing}
    base = load_index(spec["base"], verify=False)
    meter = Meter()
    save_index(
        spec["out"],
        codes_packed=base.codes,
        f7=base.f7,
        labels=base.labels,
        ids=base.ids,
        bits=base.bits,
        meta=base.manifest.get("meta"),
        codec=codec,
        codec_rerank=int(rerank or 0),
        codec_train_rows=spec["train_rows"],
        codec_seed=spec["seed"],
    )
    return meter.result()


def build_in_subprocess(base: Path | None, out: Path, codec: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build ``codec``'s index at ``out`` in a fresh process, from the float16 index ``base`` (None: from
    the synthetic stream) -> the build's seconds and peak memory."""
    spec_path = out.parent / f"{out.name}.json"
    spec: dict[str, Any] = {
        "base": None if base is None else str(base),
        "out": str(out),
        "codec": codec,
        "train_rows": args.train_rows,
        "seed": args.seed,
    }
    if base is None:
        spec["stream"] = {"data": asdict(data_from(args)), "n": args.n_database, "stream": args.seed + 1}
    atomic_write_json(spec_path, spec)
    cmd = [sys.executable, "-m", "deephash.benchmarks.codecs", "--worker", str(spec_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(
            f"building the {codec} index failed with status {proc.returncode}: " + " | ".join(tail)
        )
    return json.loads(spec_path.with_suffix(".result.json").read_text())


def _coarse_index(codes: np.ndarray, bits: int, spec: str) -> Any:
    """``multihash``/``ivf`` (their defaults), ``multihash:[NHASHx]B:NFLIP`` or ``ivf:NLIST:NPROBE`` over
    ``codes``."""
    method, _, setting = spec.partition(":")
    if method in ("multihash", "ivf") and not setting:
        return build_hamming_index(codes, bits, method)
    if method == "multihash":
        nhash, b, nflip = parse_setting(setting, bits)
        return build_hamming_index(codes, bits, "multihash", nhash=nhash, b=b, nflip=nflip)
    nlist, _, nprobe = setting.partition(":")
    if method != "ivf" or not (nlist.isdigit() and nprobe.isdigit()):
        raise ConfigError(
            f"--coarse takes flat, multihash, multihash:[NHASHx]B:NFLIP, ivf or ivf:NLIST:NPROBE, got {spec!r}"
        )
    return build_hamming_index(codes, bits, "ivf", nlist=int(nlist), nprobe=int(nprobe), seed=0)


def drop_cached(store: Any) -> None:
    """Evict the files of ``store``'s index from the page cache (its maps released first), so the next
    search reads its rows from disk: ``posix_fadvise(DONTNEED)``, which needs no privileges but drops only
    clean pages no process maps."""
    rows = store.f7
    for arr in (getattr(rows, "codes", None), rows):
        release_pages(arr)
    for f7 in (rows, getattr(rows, "exact", None)):
        if isinstance(f7, F7File):
            f7.release()
    for path in Path(store.path).iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def overlap(got: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each row of ``exact`` (q, k) ids (-1 for none) found in the same row of ``got``."""
    found = [
        len(np.intersect1d(g[g >= 0], e[e >= 0])) / max(1, int((e >= 0).sum())) for g, e in zip(got, exact)
    ]
    return float(np.mean(found)) if found else 1.0


def run_synthetic(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    data, n = data_from(args), args.n_database
    query_codes, queries = data.rows(args.seed + 2, args.n_queries, args.n_queries)
    base = None
    if not args.stream:  # every codec built from a float16 index of the rows, itself the reference
        base = root / "float16"
        drawing = stream_index(data, base, n, args.seed + 1, "float16", 1, args.seed)
        print(f"float16 reference index written ({drawing:.0f} s drawing the rows)", file=sys.stderr)
    stores, builds = {}, {}
    for codec in args.codecs:
        builds[codec] = build_in_subprocess(base, root / f"index-{codec}", codec, args)
        stores[codec] = load_index(root / f"index-{codec}")
        print(f"{codec} index built in {builds[codec]['seconds']:.0f} s", file=sys.stderr)
    codes = stores[args.codecs[0]].codes
    pool, k = PoolRule(args.radius, pool_size=args.pool_size), args.k
    flat = HammingIndex(codes, args.bits)
    coarse = {"flat": flat} | {m: _coarse_index(codes, args.bits, m) for m in args.coarse if m != "flat"}

    def search(codec: str, index: Any, mode: str = "hierarchical", n: int = args.n_queries) -> Any:
        store = stores[codec]
        query = ModeQuery(index, store.f7, query_codes[:n], store.query_features(queries[:n]), k, pool)
        return lambda: SEARCHES[mode](query)

    reference = args.codecs[0]  # float16, unless --stream without it
    runs = {c: search(c, flat) for c in args.codecs}
    runs |= {f"{reference}@{m}": search(reference, i) for m, i in coarse.items() if m != "flat"}
    timed = best_of(runs, args.repeat)
    if args.cold:  # the same searches, each after its index's files left the page cache
        evict = lambda name: drop_cached(stores[name.partition("@")[0]])  # noqa: E731
        cold = best_of({c: runs[c] for c in args.codecs}, args.repeat, before=evict)
    if args.stream:
        exact = exact_reference(data, args.seed + 1, codes, query_codes, queries, k, pool)
    else:
        exact = timed["float16"].result
    few = args.euclidean_queries if "float16" in args.codecs else 0
    euclid = best_of({c: search(c, flat, "euclidean", few) for c in args.codecs}, 1) if few else {}
    rows = []
    for codec in args.codecs:
        row = {"codec": codec, "coarse": "flat", **_index_bytes(stores[codec].path)}
        row |= {"build_s": builds[codec]["seconds"], "build_peak_mb": builds[codec]["peak_over_baseline_mb"]}
        row["hierarchical_qps"] = qps(args.n_queries, timed[codec].wall)
        if args.cold:
            row["cold_qps"] = qps(args.n_queries, cold[codec].wall)
        row[f"recall@{k}"] = overlap(timed[codec].result, exact)
        if euclid:
            row["euclidean_qps"] = qps(few, euclid[codec].wall)
            row[f"euclidean_recall@{k}"] = overlap(euclid[codec].result, euclid["float16"].result)
        rows.append(row)
    for method, index in coarse.items():
        if method == "flat":
            continue
        timing = timed[f"{reference}@{method}"]
        row = {"codec": reference, "coarse": method, "hierarchical_qps": qps(args.n_queries, timing.wall)}
        row[f"recall@{k}"] = overlap(timing.result, exact)
        row["pool_recall"] = pool_recall(index, flat, query_codes, pool, k)
        rows.append(row)
    return {
        "rows": rows,
        "n_database": n,
        "dim": args.dim,
        "bits": args.bits,
        "k": k,
        "cold": args.cold,
        "reference": "float16 rows drawn again" if args.stream else "float16 index",
    }


def run_real(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    database, queries = load_index(Path(args.run) / "index"), load_index(Path(args.run) / "queries")
    pool, rows, reference = PoolRule(args.radius, pool_size=args.pool_size), [], {}
    for codec in args.codecs:
        build = build_in_subprocess(database.path, root / f"index-{codec}", codec, args)
        store = load_index(root / f"index-{codec}")
        report = evaluate_retrieval(
            store, queries, store.bits, modes=("hierarchical", "euclidean"), ks=(args.k,), pool=pool
        )
        row = {"codec": codec, "coarse": "flat", **_index_bytes(store.path), "build_s": build["seconds"]}
        for mode in ("hierarchical", "euclidean"):
            row[f"{mode}_mAP"] = report.metrics[mode]["mAP"]
            row[f"{mode}_qps"] = report.metrics[mode]["queries_per_second"]
            reference.setdefault(mode, row[f"{mode}_mAP"] if codec == "float16" else None)
            if reference[mode] is not None:
                row[f"{mode}_mAP_delta"] = row[f"{mode}_mAP"] - reference[mode]
        rows.append(row)
    return {"rows": rows, "run": str(args.run), "n_database": database.count, "n_queries": queries.count}


def run_codecs_bench(args: argparse.Namespace) -> dict[str, Any]:
    apply_quick(args, QUICK)
    require_positive(
        args,
        "n_database",
        "dim",
        "bits",
        "n_queries",
        "k",
        "clusters",
        "intrinsic_dim",
        "train_rows",
        "repeat",
    )
    for codec in args.codecs:  # a bad spec fails before any work
        spec, _, rerank = codec.partition(":r")
        parse_codec(spec)
        if rerank and not (rerank.isdigit() and parse_codec(spec)[0] in QUANTISED):
            raise ConfigError(
                f"--codecs takes <codec> or <PQ codec>:r<R> (re-rank the top R exactly), got {codec!r}"
            )
    if not args.stream or "float16" in args.codecs:  # the reference first
        args.codecs = ["float16", *[c for c in args.codecs if c != "float16"]]
    workdir = work_dir(args.workdir)
    if not args.run:  # every index, and without --stream a float16 one the codecs are built from
        per_row = sum(_row_bytes(c, args.dim, args.bits) for c in args.codecs)
        check_disk(workdir, args.n_database, per_row + (0 if args.stream else 2 * args.dim), "the indexes")
    with (
        limit_threads(args.threads)[1],
        tempfile.TemporaryDirectory(dir=workdir, prefix="deephash-codecs-") as root,
    ):
        start = time.perf_counter()
        results = run_real(args, Path(root)) if args.run else run_synthetic(args, Path(root))
        results["seconds"] = time.perf_counter() - start
    columns = list(dict.fromkeys(key for row in results["rows"] for key in row))  # first seen first
    source = f"run {args.run}" if args.run else f"synthetic, {args.dim}-d, {args.bits} bits"
    title = f"codecs ({source}: {results['n_database']:,} items)"
    table = results_table(title, columns, left=("codec", "coarse"))
    for row in results["rows"]:
        table.add_row(*[_cell(row.get(c)) for c in columns])
    return finish(results, table, args.out, width=160)


def _row_bytes(spec: str, dim: int, bits: int) -> int:
    """Bytes a row of ``spec``'s index takes on disk (codes, label, id, re-rank features), roughly."""
    name, size = parse_codec(spec.partition(":r")[0])
    rows = {"float16": 2 * dim, "pca": 2 * size}.get(name, size) + (2 * dim if ":r" in spec else 0)
    return rows + -(-bits // 8) + 8 + 9


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 10 else f"{value:,.0f}"
    return str(value)


def add_codecs_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--codecs",
        nargs="+",
        default=["float16", "pca128", "pq32", "pq64", "opq64"],
        help="codecs to compare with float16; pq<m>:r<R> keeps F7 and re-ranks each search's top R exactly",
    )
    parser.add_argument("--n-database", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512, help="F7 feature size")
    parser.add_argument("--bits", type=int, default=48)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument(
        "--intrinsic-dim", type=int, default=32, help="the subspace items vary in around a centre"
    )
    parser.add_argument("--noise", type=float, default=0.05, help="isotropic noise beside the subspace")
    parser.add_argument(
        "--n-queries", type=int, default=500, help="hierarchical queries, searched in one call"
    )
    parser.add_argument("--euclidean-queries", type=int, default=20)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--radius", type=int, default=2)
    parser.add_argument("--pool-size", type=int, default=1000)
    parser.add_argument("--train-rows", type=int, default=32768, help="rows a codec is trained on")
    parser.add_argument(
        "--coarse",
        nargs="+",
        default=["flat", "multihash"],
        help="coarse Hamming stages: flat (exact), or sub-linear: multihash, multihash:[NHASHx]B:NFLIP, ivf, "
        "ivf:NLIST:NPROBE",
    )
    parser.add_argument("--run", type=Path, default=None, help="a run directory: mAP per codec on its index")
    parser.add_argument(
        "--stream",
        action="store_true",
        help="no float16 index: each codec's index built from the synthetic rows as they are drawn, and the "
        "exact reference re-ranked on the pools' rows drawn again (for sizes whose float16 copy does not fit)",
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="also time each codec's searches after evicting its index's files from the page cache (posix_fadvise)",
    )
    add_shared_arguments(
        parser,
        out=Path("codecs.json"),
        quick=QUICK,
        repeat=2,
        threads="FAISS/BLAS threads",
        workdir="the indexes go",
    )


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    """``deephash-bench codecs``; ``--worker SPEC`` is the subprocess side of one build."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        spec_path = Path(argv[1])
        atomic_write_json(spec_path.with_suffix(".result.json"), _build(json.loads(spec_path.read_text())))
        return 0
    return run_benchmark("codecs", __doc__, add_codecs_arguments, run_codecs_bench, argv)


if __name__ == "__main__":
    sys.exit(main())
