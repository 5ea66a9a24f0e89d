"""Entry point ``deephash-index``: build a persistent index, or describe one.

deephash-index build ckpt_path=<run>/checkpoints/last.ckpt [data=...] [index_dir=...]   (Hydra overrides)
deephash-index build ckpt_path=<run>/checkpoints/last.ckpt images=<folder of photos>   (no labels)
deephash-index info <index dir>
deephash-index verify <index dir>   (checks every file, every F7 block; exit 0 with one OK line, or 2)
deephash-index shards <shards.json> <shard dir> [...]   (shards built apart, searched as one index)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig

from deephash.cli import ArgumentParser, accepts_version, check_overrides, exit_on_user_error, run_hydra_task
from deephash.config import CONFIG_PATH
from deephash.models.checkpoint import load_hash_module
from deephash.retrieval.build import build_index, drop_unreadable
from deephash.retrieval.codecs import codec_options
from deephash.retrieval.index_lock import check_index_target
from deephash.retrieval.index_reader import load_index, verify_index
from deephash.retrieval.searcher import index_images
from deephash.retrieval.shards import write_shard_list
from deephash.runs import build_predict_trainer, checkpoint_run_dir, run_data_config, run_preprocess
from deephash.utils.errors import ConfigError


def build(cfg: DictConfig) -> dict[str, Any]:
    """Encode ``cfg.split`` with ``cfg.ckpt_path`` and save the index; returns its manifest."""
    ckpt = Path(str(cfg.ckpt_path)).expanduser()
    if not ckpt.is_file():
        raise ConfigError(f"ckpt_path not found: {ckpt} (expected a .ckpt written by deephash-train)")
    run_dir = checkpoint_run_dir(ckpt)
    where = run_dir or Path(cfg.paths.output_dir)
    if cfg.get("images"):  # a plain folder of images (someone's own photos): every image, no labels
        images = Path(str(cfg.images)).expanduser()
        out = Path(cfg.index_dir) if cfg.get("index_dir") else where / f"index-{images.resolve().name}"
        check_index_target(out)
        spec = run_preprocess(run_dir, cfg.get("data"))
        store = index_images(ckpt, images, out, spec, batch_size=int(cfg.batch_size))
        return {**store.manifest, "index_dir": str(out)}
    data_cfg = cfg.get("data") or run_data_config(run_dir)
    if data_cfg is None:
        raise ConfigError(
            "no dataset given and the checkpoint has no training run beside it; pass data=<name>"
        )
    index_dir = Path(cfg.index_dir) if cfg.get("index_dir") else where / "index"
    check_index_target(index_dir)
    module = load_hash_module(ckpt)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = hydra.utils.instantiate(data_cfg)
    datamodule.prepare_data()
    datamodule.setup()
    bad_images = drop_unreadable(datamodule)
    codec, shard = codec_options(cfg), (cfg.get("shard"), cfg.get("num_shards", 1))  # checked before encoding
    trainer = build_predict_trainer(cfg)
    store = build_index(module, datamodule, ckpt, index_dir, trainer, cfg.split, bad_images, codec, shard)
    return {**store.manifest, "index_dir": str(index_dir)} if store is not None else {}


@check_overrides("index")
@hydra.main(config_path=CONFIG_PATH, config_name="index", version_base="1.3")
def _build_main(cfg: DictConfig) -> None:
    def report(manifest: dict[str, Any]) -> None:
        if manifest:
            print(json.dumps(_summary(manifest, manifest["index_dir"]), indent=2))

    run_hydra_task(build, cfg, report=report)


@exit_on_user_error
def info(path: str) -> None:
    store = load_index(path)
    print(json.dumps(_summary(store.manifest, path), indent=2))


@exit_on_user_error
def verify(path: str) -> None:
    r = verify_index(path)
    print(
        f"OK {r['index']}: {r['count']} items, {r['bits']} bits, {r['feature_dim']}-d F7; {r['files']} files "
        f"({r['bytes']:,} bytes) and {r['f7_blocks']} F7 blocks match their checksums"
    )


def _summary(manifest: dict[str, Any], path: Any) -> dict[str, Any]:
    keys = "count bits feature_dim codec dataset split backbone checkpoint created_at".split()
    merged = {**manifest.get("meta", {}), **manifest}
    return {"index": str(path), **{k: merged.get(k) for k in keys}}


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="deephash-index",
        description="Build a persistent retrieval index from a checkpoint, or describe one.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser(
        "build",
        help="encode a dataset split with a checkpoint and save it as an index",
        description="Hydra overrides: ckpt_path=<run>/checkpoints/last.ckpt (required), data=<name> "
        "(default: the checkpoint's training data), split=database, index_dir=DIR (default: <run>/index); "
        "images=DIR indexes every image under a plain folder (your own photos, no labels) into "
        "<run>/index-<folder> instead. Hydra's own flags work too: --cfg job prints the composed config.",
    )
    build_cmd.add_argument("overrides", nargs=argparse.REMAINDER, help="Hydra overrides (key=value ...)")
    for name, text in (
        ("info", "describe a saved index"),
        ("verify", "check every file of a saved index: exit 0 with one OK line, or 2 with the problem"),
    ):
        sub = commands.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        sub.add_argument("index_dir", metavar="INDEX_DIR", help="an index directory")
    sub = commands.add_parser("shards", help="list index shards in a shards.json, searched as one index")
    sub.add_argument("listing", metavar="SHARDS_JSON", help="where to write the list (or its directory)")
    sub.add_argument("shards", nargs="+", metavar="SHARD", help="the shards' index directories, in order")
    return parser


@accepts_version("deephash-index")
def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["build"] and not {"-h", "--help"} & set(args[1:]):
        sys.argv = [sys.argv[0], *args[1:]]  # Hydra parses everything after the subcommand
        _build_main()
        return
    parsed = build_parser().parse_args(args)
    if parsed.command == "shards":  # shards built apart, one list to search them as one index
        return print(f"wrote {exit_on_user_error(write_shard_list)(parsed.listing, parsed.shards)}")
    (verify if parsed.command == "verify" else info)(parsed.index_dir)


if __name__ == "__main__":
    main()
