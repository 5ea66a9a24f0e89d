"""Float16 against float32 F7: what storing F7 as float16 does to the euclidean and hierarchical metrics of a
trained run (deephash-bench f7 <run>).

An index keeps F7 as float16 (half the disk and page cache of float32). This encodes the run's query and
database splits again through its checkpoint in float32 and evaluates the modes that read F7 (euclidean:
exhaustive L2; hierarchical: L2 re-ranking of the Hamming pool) with the stored float16 F7 and with the float32
F7, on the same codes and with the run's retrieval settings. It also checks that the float32 F7 rounds to the
stored float16 values, i.e. that the two sides differ only by the storage.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import OmegaConf
from rich.table import Table

from deephash.benchmarks.common import add_shared_arguments, finish, results_table, run_benchmark
from deephash.evaluation.pipeline import evaluate_retrieval, settings
from deephash.models.checkpoint import load_hash_module
from deephash.retrieval import EncodedItems, IndexStore, load_index
from deephash.utils.errors import ConfigError

F7_MODES = ("euclidean", "hierarchical")
METRICS = ("mAP", "mAP@1000", "precision@10", "precision@100")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="a training run directory (config.yaml, index/, queries/)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="default: the checkpoint the run evaluated (metrics.json evaluated_checkpoint)",
    )
    add_shared_arguments(parser, out=None, seed=False)


def run_checkpoint(run: Path, checkpoint: Path | None) -> Path:
    """``checkpoint``, else the one the run's metrics.json says it evaluated (best, else last, in older runs)."""
    if checkpoint is not None:
        return checkpoint
    metrics_path = run / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    for key in ("evaluated_checkpoint", "best_checkpoint", "last_checkpoint"):
        if metrics.get(key) and Path(metrics[key]).is_file():
            return Path(metrics[key])
    raise ConfigError(f"no checkpoint found for run {run}; pass --checkpoint <path to a .ckpt>")


@torch.no_grad()
def float32_f7(module: Any, datamodule: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """F7 ``float32 (n, d)`` and pool indices ``(n,)`` of ``split``, computed in float32 on the CPU."""
    module = module.float().eval()
    rows, index = [], []
    for x, _, idx in datamodule.encode_dataloader(split):
        rows.append(module(x.float()).f7.float().numpy())
        index.append(idx.numpy())
    return np.concatenate(rows), np.concatenate(index)


def with_f7(store: IndexStore, f7: np.ndarray) -> EncodedItems:
    return EncodedItems(codes=store.codes, f7=f7, labels=store.labels, pool_index=store.pool_index)


def compare_f7_precision(run: Path, checkpoint: Path | None = None) -> dict[str, Any]:
    """The F7 modes' metrics of ``run`` with float16 (stored) and float32 (recomputed) F7, and their differences."""
    run = run.expanduser()
    config = run / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"{config} not found: pass a run directory written by deephash-train")
    cfg = OmegaConf.load(config)
    ckpt = run_checkpoint(run, checkpoint)
    datamodule = hydra.utils.instantiate(cfg.data, num_workers=0, persistent_workers=False)
    datamodule.setup()
    module = load_hash_module(ckpt)
    stores = {
        "database": load_index(run / "index", f7_in_memory=True),
        "query": load_index(run / "queries", f7_in_memory=True),
    }
    f32, agree = {}, {}
    for split, store in stores.items():
        f7, index = float32_f7(module, datamodule, split)
        order = np.argsort(index)
        if len(index) != store.count or not np.array_equal(datamodule.labels(split), store.labels):
            raise ConfigError(
                f"{run}: the {split} split rebuilt from config.yaml differs from the saved index"
            )
        f32[split] = f7[order]
        agree[split] = float(np.mean(f32[split].astype(np.float16) == np.asarray(store.f7)))
    options = {**settings(cfg.retrieval), "modes": list(F7_MODES)}
    sides = {
        "float16": evaluate_retrieval(
            stores["database"], stores["query"], stores["database"].bits, **options
        ),
        "float32": evaluate_retrieval(
            with_f7(stores["database"], f32["database"]),
            with_f7(stores["query"], f32["query"]),
            stores["database"].bits,
            **options,
        ),
    }
    results: dict[str, Any] = {
        "run": str(run),
        "checkpoint": str(ckpt),
        "n_queries": stores["query"].count,
        "n_database": stores["database"].count,
        "f7_dim": int(f32["database"].shape[1]),
        "float16_rounding_agreement": agree,
        "modes": {},
    }
    for mode in F7_MODES:
        row = {}
        for metric in METRICS:
            half, full = (_metric(sides[side].metrics[mode], metric) for side in ("float16", "float32"))
            row[metric] = {"float16": half, "float32": full, "difference": half - full}
        results["modes"][mode] = row
    return results


def _metric(mode_metrics: dict[str, Any], name: str) -> float:
    if name.startswith("precision@"):
        return float(mode_metrics["precision@k"][name.split("@")[1]])
    return float(mode_metrics[name])


def run_f7_bench(args: argparse.Namespace) -> dict[str, Any]:
    """The float16/float32 comparison of ``args.run``; prints a table and writes ``args.out`` (JSON) if given."""
    results = compare_f7_precision(args.run, args.checkpoint)
    return finish(results, render_table(results), args.out)


def render_table(results: dict[str, Any]) -> Table:
    table = results_table(
        f"float16 vs float32 F7: {results['n_queries']} queries x {results['n_database']} items, "
        f"{results['f7_dim']}-d",
        ("mode", "metric", "float16", "float32", "difference"),
    )
    for mode, row in results["modes"].items():
        for metric, values in row.items():
            table.add_row(
                mode,
                metric,
                f"{values['float16']:.6f}",
                f"{values['float32']:.6f}",
                f"{values['difference']:+.6f}",
            )
    return table


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark("f7", __doc__, add_arguments, run_f7_bench, argv)


if __name__ == "__main__":
    raise SystemExit(main())
