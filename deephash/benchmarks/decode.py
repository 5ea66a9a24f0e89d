"""Image decoding for encoding a folder dataset: in the loader's workers against on the device
(``data.decode_on_gpu``).

``n_images`` JPEG photos-like images (smooth noise, ``source_size`` pixels, quality 90) in ``n_classes``
class folders are read by ``FolderDataModule.encode_dataloader`` (the evaluation transform, as
``deephash-index build`` reads a database) both ways, the two runs alternating ``repeat`` times in one
process: decoded and resized in ``num_workers`` workers, then moved to the device; or read as JPEG bytes
in the workers and decoded in one batched ``decode_jpeg`` call on the device (nvJPEG on a GPU), through the
datamodule's ``on_after_batch_transfer`` as a trainer calls it. The first batches of the two paths must
have the same shape, and their largest difference is reported (one grey level, 0.017 after the ImageNet
normalisation, is the decoders' and resizers' rounding). On a machine without a GPU the device is the CPU,
which checks that the path runs and what it costs there. Run as ``deephash-bench decode``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
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
from deephash.benchmarks.train_speed import DEVICES, device_name, resolve_device
from deephash.data.folder import FolderDataModule
from deephash.utils.errors import ConfigError

QUICK = {"n_images": 96, "n_classes": 4, "source_size": 96, "image_size": 64, "batch_size": 32, "repeat": 1}
_JPEG_BYTES = 60_000  # a generous size per 500 x 375 image, for the disk check


def write_jpegs(root: Path, n_images: int, n_classes: int, size: int, seed: int = 0) -> int:
    """``n_images`` smooth random RGB JPEGs of ``size`` x ``3 size / 4`` pixels in ``n_classes`` class
    folders under ``root``; returns their total bytes."""
    rng = np.random.default_rng(seed)
    h, w = 3 * size // 4, size
    total = 0
    for i in range(n_images):
        folder = root / f"class_{i % n_classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        path = folder / f"{i:07d}.jpg"
        image.save(path, "JPEG", quality=90)
        total += path.stat().st_size
    return total


def _datamodule(root: Path, args: argparse.Namespace, decode_on_gpu: bool) -> FolderDataModule:
    dm = FolderDataModule(
        root=str(root),
        transform="imagenet",
        image_size=args.image_size,
        resize=args.resize or args.image_size * 8 // 7,
        batch_size=args.batch_size,
        eval_batch_size=args.batch_size,
        num_workers=args.num_workers,
        decode_on_gpu=decode_on_gpu,
        test_fraction=0.01,
        n_queries=1,
        val_size=1,
    )
    dm.setup()
    return dm


def _encode_pass(dm: FolderDataModule, device: torch.device, device_decode: bool) -> tuple[float, int, Any]:
    """One pass over the database split as encoding makes it -> (seconds, images, first batch's images)."""
    start = time.perf_counter()
    count, first = 0, None
    for batch in dm.encode_dataloader("database", device_decode=device_decode):
        batch = dm.transfer_batch_to_device(batch, device, 0)
        images = dm.on_after_batch_transfer(batch, 0)[0]
        count += len(images)
        if first is None:
            first = images
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, count, first


def decode_benchmark(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Alternate ``args.repeat`` passes of each path over the JPEGs under ``root``; best wall times."""
    device = resolve_device(args.device)
    modules = {"workers": _datamodule(root, args, False), "device": _datamodule(root, args, True)}
    best = {name: float("inf") for name in modules}
    firsts: dict[str, torch.Tensor] = {}
    images = 0
    for round_ in range(args.repeat + 1):  # round 0 warms the page cache and nvJPEG up, untimed
        for name, dm in modules.items():
            seconds, images, firsts[name] = _encode_pass(dm, device, name == "device")
            if round_:
                best[name] = min(best[name], seconds)
    a, b = firsts["workers"], firsts["device"]
    if a.shape != b.shape:
        raise AssertionError(f"the two paths give batches of {tuple(a.shape)} and {tuple(b.shape)}")
    return {
        "device": str(device),
        "device_name": device_name(device),
        "images": images,
        "workers_images_per_s": images / best["workers"],
        "device_images_per_s": images / best["device"],
        "speedup": best["workers"] / best["device"],
        "max_abs_difference": float((a.float().cpu() - b.float().cpu()).abs().max()),
    }


def run_decode_bench(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding benchmark; prints a table and writes ``args.out`` (JSON, atomically)."""
    apply_quick(args, QUICK)
    require_positive(args, "n_images", "n_classes", "source_size", "image_size", "batch_size", "repeat")
    if args.num_workers < 0:
        raise ConfigError(f"--num-workers must be 0 or more, got {args.num_workers}")
    if args.n_images < 4 * args.n_classes:
        raise ConfigError(
            f"--n-images must be at least 4 per class ({4 * args.n_classes}), got {args.n_images}"
        )
    resolve_device(args.device)  # a missing GPU is reported before the images are written
    workdir = work_dir(args.workdir)
    check_disk(workdir, args.n_images, _JPEG_BYTES, f"{args.n_images} JPEG files", "--n-images")
    root = Path(tempfile.mkdtemp(prefix="deephash-decode-", dir=workdir))
    try:
        t0 = time.perf_counter()
        jpeg_bytes = write_jpegs(root, args.n_images, args.n_classes, args.source_size, args.seed)
        config = {
            **{
                k: getattr(args, k)
                for k in ("n_images", "n_classes", "source_size", "image_size", "batch_size")
            },
            "num_workers": args.num_workers,
            "repeat": args.repeat,
            "mean_jpeg_kb": jpeg_bytes / args.n_images / 1024,
            "write_s": time.perf_counter() - t0,
            "cpu_count": os.cpu_count(),
            "torch_version": torch.__version__,
        }
        results = {"config": config, "decode": decode_benchmark(args, root)}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return finish(results, render_table(results), args.out)


def render_table(results: dict[str, Any]) -> Table:
    c, r = results["config"], results["decode"]
    table = results_table(
        f"decoding {r['images']:,} JPEGs ({c['source_size']} px, {c['mean_jpeg_kb']:.0f} KB) to "
        f"{c['image_size']} px, batches of {c['batch_size']}, {c['num_workers']} workers, best of {c['repeat']}",
        ("measure", "value"),
        left={"measure"},
    )
    table.add_row("decoded in the workers, images/s", f"{r['workers_images_per_s']:,.1f}")
    table.add_row(f"decoded on {r['device_name']}, images/s", f"{r['device_images_per_s']:,.1f}")
    table.add_row("device over workers", f"{r['speedup']:.2f}x")
    table.add_row("largest difference between the two batches", f"{r['max_abs_difference']:.4f}")
    return table


def add_decode_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-images", type=int, default=4096)
    parser.add_argument("--n-classes", type=int, default=16)
    parser.add_argument(
        "--source-size", type=int, default=500, help="image width in pixels (height 3/4 of it)"
    )
    parser.add_argument("--image-size", type=int, default=224, help="network input size (center crop)")
    parser.add_argument("--resize", type=int, default=None, help="shorter side before the crop (default 8/7)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--num-workers", type=int, default=min(8, os.cpu_count() or 1), help="loader worker processes"
    )
    parser.add_argument("--device", choices=DEVICES, default="auto")
    add_shared_arguments(parser, out=Path("decode.json"), quick=QUICK, repeat=3, workdir="the images go")


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark("decode", __doc__, add_decode_arguments, run_decode_bench, argv)


if __name__ == "__main__":
    raise SystemExit(main())
