"""Entry point ``deephash-search``: query a saved index with image files, print the results as JSON.

deephash-search --index DIR --ckpt CKPT IMAGE [IMAGE ...] [--k 10] [--mode hierarchical]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
import torch

from deephash.cli import accepts_version, exit_on_user_error
from deephash.data.query import preprocess_queries
from deephash.models.module import load_hash_module
from deephash.retrieval.codes import hamming_distance_matrix, pack_codes
from deephash.retrieval.search import MODES, PoolRule, euclidean_search, exact_l2, hierarchical_search
from deephash.retrieval.store import IndexStore, load_index, sha256_file
from deephash.retrieval.sublinear import METHODS, build_hamming_index
from deephash.utils.errors import ConfigError, IndexFormatError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="deephash-search", description=__doc__.splitlines()[0])
    p.add_argument("images", nargs="+", metavar="IMAGE", help="query image files")
    p.add_argument("--index", required=True, help="index directory (deephash-index build / deephash-train)")
    p.add_argument("--ckpt", required=True, help="checkpoint the index was built with")
    p.add_argument("--k", type=int, default=10, help="results per query (default 10)")
    p.add_argument("--mode", choices=MODES, default="hierarchical", help="search mode (default hierarchical)")
    p.add_argument("--radius", type=int, default=2, help="Hamming radius (hamming_radius, hierarchical pool)")
    p.add_argument("--min-pool", type=int, default=100, help="hierarchical: smallest radius pool kept")
    p.add_argument("--max-pool", type=int, default=10_000, help="hierarchical: largest radius pool kept")
    p.add_argument("--pool-size", type=int, default=1000, help="hierarchical: nearest codes used otherwise")
    p.add_argument(
        "--coarse",
        choices=METHODS,
        default="flat",
        help="coarse Hamming index: flat (exact, default) or FAISS multi-index hashing (sub-linear, for many millions)",
    )
    p.add_argument("--device", default="cpu", help="torch device for encoding the queries (default cpu)")
    args = p.parse_args(argv)
    if args.k < 1:
        p.error(f"--k must be >= 1, got {args.k}")
    if args.radius < 0:
        p.error(f"--radius must be >= 0, got {args.radius}")
    return args


def search(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Check the index against the checkpoint, encode the images, search, and describe each result."""
    module = load_hash_module(args.ckpt, map_location=args.device)
    store = load_index(
        args.index,
        expect_bits=module.bits,
        expect_feature_dim=module.net.f7_dim,
        expect_checkpoint_sha256=sha256_file(args.ckpt),
    )
    spec = store.manifest.get("meta", {}).get("preprocess")
    if spec is None:
        raise IndexFormatError(
            f"index {args.index} records no query preprocessing; rebuild it with deephash-index build"
        )
    batch = preprocess_queries(args.images, spec)
    if batch.shape[1] != module.hparams.in_channels:
        raise ConfigError(
            f"the model expects {module.hparams.in_channels}-channel input, the index preprocessing gives {batch.shape[1]}"
        )
    with torch.inference_mode():
        codes, f7 = module.net.encode(batch.to(args.device))
    query_codes, query_f7 = pack_codes(codes.cpu().numpy()), f7.float().cpu().numpy()
    index = (
        store.hamming_index
        if args.coarse == "flat"
        else build_hamming_index(store.codes, store.bits, args.coarse)
    )
    idx = _run(args, store, index, query_codes, query_f7)
    return [
        {"query": path, "mode": args.mode, "results": _describe(store, query_codes[i], query_f7[i], row)}
        for i, (path, row) in enumerate(zip(args.images, idx))
    ]


def _run(
    args, store: IndexStore, index: Any, query_codes: np.ndarray, query_f7: np.ndarray
) -> list[np.ndarray]:
    """Database indices of each query's results, best first."""
    k = min(args.k, store.count)
    if args.mode == "hamming":
        return list(index.search(query_codes, k)[1])
    if args.mode == "hamming_radius":
        return [idx[: args.k] for _, idx in index.range_search(query_codes, args.radius)]
    if args.mode == "euclidean":
        return list(euclidean_search(store.f7, query_f7, k)[1])
    pool = PoolRule(
        radius=args.radius,
        min_pool=min(args.min_pool, args.pool_size),
        max_pool=max(args.max_pool, args.pool_size),
        pool_size=args.pool_size,
    )
    result = hierarchical_search(index, store.f7, query_codes, query_f7, k, pool)
    return [row[row >= 0] for row in result.idx]


def _describe(store: IndexStore, code: np.ndarray, f7: np.ndarray, idx: np.ndarray) -> list[dict[str, Any]]:
    idx = np.asarray(idx, dtype=np.int64)
    if idx.size == 0:
        return []
    hamming = hamming_distance_matrix(code[None], store.codes[idx])[0]
    l2 = exact_l2(f7[None].astype(np.float32), np.asarray(store.f7[idx], np.float32)[None])[0]
    names = store.manifest.get("meta", {}).get("class_names")
    return [
        {
            "rank": rank,
            "index": int(i),
            "id": store.ids[i],
            "label": int(store.labels[i]),
            **({"class": names[int(store.labels[i])]} if names else {}),
            "hamming": int(h),
            "l2": float(d),
        }
        for rank, (i, h, d) in enumerate(zip(idx, hamming, l2), start=1)
    ]


@accepts_version("deephash-search")
@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    results = search(parse_args(argv))
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
