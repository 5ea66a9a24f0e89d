"""Entry point ``deephash-search``: query a saved index with image files, print the results as JSON.

deephash-search --index DIR --ckpt CKPT IMAGE [IMAGE ...] [--k 10] [--mode hierarchical]

A shell over :class:`deephash.retrieval.searcher.Searcher` (``deephash.Searcher`` in a notebook).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from deephash.cli import ArgumentParser, accepts_version, exit_on_user_error
from deephash.retrieval.hierarchical import PoolRule
from deephash.retrieval.modes import MODES
from deephash.retrieval.searcher import Searcher
from deephash.retrieval.sublinear import COARSE_METHODS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(prog="deephash-search", description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", metavar="IMAGE", help="query image files")
    p.add_argument(
        "--index",
        required=True,
        action="append",
        help="index directory (deephash-index build / deephash-train) or a shards.json; repeat for each shard",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint the index was built with")
    p.add_argument("--k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--mode", choices=MODES, default="hierarchical", help="search mode (default hierarchical)")
    p.add_argument("--radius", type=int, default=2, help="Hamming radius (hamming_radius, hierarchical pool)")
    p.add_argument(
        "--min-pool",
        type=int,
        help="hierarchical: smallest radius pool kept (default 100, or --pool-size if smaller)",
    )
    p.add_argument(
        "--max-pool",
        type=int,
        help="hierarchical: largest radius pool kept (default 10000, or --pool-size if larger)",
    )
    p.add_argument("--pool-size", type=int, default=1000, help="hierarchical: nearest codes used otherwise")
    p.add_argument(
        "--coarse",
        choices=COARSE_METHODS,
        default="flat",
        help=(
            "coarse Hamming index: flat (exact, default), multihash (FAISS multi-index hashing, sub-linear, for "
            "many millions), hash (its single table on the first b bits) or ivf (FAISS binary IVF, sub-linear, "
            "approximate)"
        ),
    )
    p.add_argument("--device", default="cpu", help="torch device for encoding the queries (default cpu)")
    args = p.parse_args(argv)
    if args.k < 1:
        p.error(f"--k must be >= 1, got {args.k}")
    if args.radius < 0:
        p.error(f"--radius must be >= 0, got {args.radius}")
    for flag in ("min_pool", "max_pool", "pool_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    # a pool bound not given makes room for --pool-size; bounds given must hold it
    args.min_pool = min(100, args.pool_size) if args.min_pool is None else args.min_pool
    args.max_pool = max(10_000, args.pool_size) if args.max_pool is None else args.max_pool
    if not args.min_pool <= args.pool_size <= args.max_pool:
        p.error(
            f"--min-pool <= --pool-size <= --max-pool is required, got {args.min_pool}, {args.pool_size}, "
            f"{args.max_pool}"
        )
    return args


def search(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Check the index against the checkpoint, encode the images, search, and describe each result."""
    index = args.index[0] if len(args.index) == 1 else args.index
    searcher = Searcher.from_index(index, args.ckpt, device=args.device, coarse=args.coarse)
    pool = PoolRule(
        radius=args.radius,
        min_pool=args.min_pool,
        max_pool=args.max_pool,
        pool_size=args.pool_size,
    )
    results = searcher.search(args.images, k=args.k, mode=args.mode, pool=pool)
    return [{"query": r.query, "mode": r.mode, "results": r.records()} for r in results]


@accepts_version("deephash-search")
@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    results = search(parse_args(argv))
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
