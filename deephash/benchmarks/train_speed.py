"""Training and encoding throughput: Lightning ``Trainer.fit`` against a plain PyTorch loop.

Both loops train an identically built HashModule in one process, on the same device, batch and precision,
over the same in-memory synthetic batches, so their ratio (Lightning / raw images per second) is the cost of
the framework. Runs alternate between the two to spread drift (clocks, caches) evenly.
Run as ``deephash-bench train``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import platform
import statistics
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from rich.table import Table
from torch.utils.data import DataLoader, Dataset

from deephash.benchmarks.common import add_shared_arguments, finish, results_table, run_benchmark
from deephash.methods.latent import LatentLoss
from deephash.models.backbones import BACKBONES
from deephash.models.module import HashModule
from deephash.models.net import HashNetwork
from deephash.utils.checks import positive_int_arg
from deephash.utils.errors import ConfigError

PRECISIONS = ("32-true", "bf16-mixed")
DEVICES = ("auto", "cpu", "cuda")
# The paper's recipe: SGD, base lr 1e-3, momentum 0.9, weight decay 5e-4 (param groups from the module).
OPTIMIZER = functools.partial(torch.optim.SGD, lr=1e-3, momentum=0.9, weight_decay=5e-4)
# Distinct batches kept in memory; the loaders cycle through them.
POOL_BATCHES = 4
# Defaults for options left unset: the full run, and --quick (seconds on a 2-core CPU).
FULL_DEFAULTS = {"backbone": "alexnet", "image_size": 224, "batch_size": 64, "repeats": 3}
QUICK_DEFAULTS = {
    "backbone": "smallcnn",
    "image_size": 32,
    "batch_size": 16,
    "steps": 10,
    "warmup": 2,
    "repeats": 2,
}
# (steps, warmup) of a full run by device type: a CPU step of alexnet at 224px takes seconds.
STEP_DEFAULTS = {"cuda": (50, 10), "cpu": (10, 3)}
# Lightning over raw PyTorch images/s: what the framework may cost (for AlexNet at 224 px, bf16 + channels_last on a GPU)
RATIO_TARGET = 0.98


@dataclass(frozen=True)
class TrainBenchConfig:
    """One benchmark setting; ``steps`` timed training steps follow ``warmup`` untimed ones in every run."""

    backbone: str = "alexnet"
    bits: int = 48
    num_classes: int = 10
    batch_size: int = 64
    image_size: int = 224
    steps: int = 10
    warmup: int = 3
    precision: str = "32-true"
    channels_last: bool = False
    compile: bool = False
    device: str = "auto"
    repeats: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {self.backbone!r}; expected one of: {', '.join(BACKBONES)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        for name in ("bits", "batch_size", "image_size", "steps", "repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.warmup < 0:
            raise ConfigError(f"warmup must be >= 0, got {self.warmup}")


@dataclass(frozen=True)
class Timing:
    """One run: ``timed_samples`` images in ``seconds`` after ``warmup_seconds`` of warm-up steps."""

    seconds: float
    timed_samples: int
    samples: int
    warmup_seconds: float

    @property
    def images_per_s(self) -> float:
        return self.timed_samples / self.seconds


class SyntheticBatches(Dataset):
    """``length`` batches ``(images (B, 3, S, S), labels (B,), index (B,))`` cycling through a few
    pre-generated ones that already live on ``device``, so loading costs nothing in either loop."""

    def __init__(self, cfg: TrainBenchConfig, device: torch.device, length: int) -> None:
        gen = torch.Generator().manual_seed(cfg.seed)
        shape = (cfg.batch_size, 3, cfg.image_size, cfg.image_size)
        self.length = length
        self.batches = []
        for k in range(min(length, POOL_BATCHES)):
            images = torch.randn(shape, generator=gen).to(device)
            labels = torch.randint(cfg.num_classes, (cfg.batch_size,), generator=gen).to(device)
            index = torch.arange(k * cfg.batch_size, (k + 1) * cfg.batch_size, device=device)
            self.batches.append((images, labels, index))

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.batches[i % len(self.batches)]


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda requested but torch sees no CUDA device; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model
            )
    except OSError:
        pass
    return f"{model} cpu ({torch.get_num_threads()} threads)"


def build_module(cfg: TrainBenchConfig) -> HashModule:
    """A randomly initialised HashModule; the same seed gives both loops the same weights."""
    torch.manual_seed(cfg.seed)
    return HashModule(
        HashNetwork(cfg.backbone, cfg.bits, cfg.num_classes, "latent"),
        LatentLoss,
        optimizer=OPTIMIZER,
        channels_last=cfg.channels_last,
        compile=cfg.compile,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, precision: str) -> torch.autocast:
    """What Lightning's ``bf16-mixed`` plugin wraps the forward in; disabled for ``32-true``."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


class ThroughputTimer(pl.Callback):
    """Times the window from the first timed step's start to the last step's end, and counts samples."""

    def __init__(self, warmup: int, total: int, device: torch.device) -> None:
        self.warmup, self.total, self.device = warmup, total, device
        self.samples = self.timed_samples = 0
        self.first = self.start = self.end = 0.0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ):
        if batch_idx == 0:
            _sync(self.device)
            self.first = time.perf_counter()
        if batch_idx == self.warmup:
            _sync(self.device)
            self.start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ):
        self.samples += len(batch[1])
        if batch_idx >= self.warmup:
            self.timed_samples += len(batch[1])
        if batch_idx == self.total - 1:
            _sync(self.device)
            self.end = time.perf_counter()

    def timing(self) -> Timing:
        return Timing(self.end - self.start, self.timed_samples, self.samples, self.start - self.first)


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's per-fit banners and its advice about workers/validation for the timed fits."""
    loggers = [
        logging.getLogger(name) for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r".*(does not have many workers|no `val_dataloader`|LeafSpec).*"
            )
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def time_lightning(
    module: HashModule, loader: DataLoader, cfg: TrainBenchConfig, device: torch.device
) -> Timing:
    total = cfg.warmup + cfg.steps
    timer = ThroughputTimer(cfg.warmup, total, device)
    with _quiet_lightning():
        trainer = pl.Trainer(
            accelerator=device.type,
            devices=1,
            precision=cfg.precision,
            max_steps=total,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            benchmark=torch.backends.cudnn.benchmark,
            callbacks=[timer],
        )
        trainer.fit(module, train_dataloaders=loader)
    if trainer.global_step != total:
        raise RuntimeError(f"Lightning ran {trainer.global_step} optimizer steps, expected {total}")
    return timer.timing()


def time_raw(module: HashModule, loader: DataLoader, cfg: TrainBenchConfig, device: torch.device) -> Timing:
    """The plain loop: forward (autocast for bf16-mixed), cross-entropy, backward, step, zero_grad."""
    module.to(device).train()
    optimizer = module.configure_optimizers()
    samples = timed_samples = 0
    _sync(device)
    first = start = time.perf_counter()
    for step, (x, y, _index) in enumerate(loader):
        if step == cfg.warmup:
            _sync(device)
            start = time.perf_counter()
        with _autocast(device, cfg.precision):
            loss = F.cross_entropy(module(x).logits, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        samples += len(y)
        timed_samples += len(y) if step >= cfg.warmup else 0
    _sync(device)
    return Timing(time.perf_counter() - start, timed_samples, samples, start - first)


def time_encode(
    module: HashModule, data: SyntheticBatches, cfg: TrainBenchConfig, device: torch.device
) -> Timing:
    """``module.net.encode`` (codes and F7) in eval mode under ``inference_mode``, compiled with ``--compile``."""
    module.to(device).eval()
    encode = torch.compile(module.net.encode) if cfg.compile else module.net.encode
    warmup = max(cfg.warmup, 1)
    samples = timed_samples = 0
    with torch.inference_mode(), _autocast(device, cfg.precision):
        _sync(device)
        first = start = time.perf_counter()
        for step in range(warmup + cfg.steps):
            if step == warmup:
                _sync(device)
                start = time.perf_counter()
            x = data[step][0]
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            codes, _f7 = encode(x)
            samples += len(codes)
            timed_samples += len(codes) if step >= warmup else 0
        _sync(device)
        end = time.perf_counter()
    module.train()
    return Timing(end - start, timed_samples, samples, start - first)


def _summary(runs: Sequence[Timing]) -> dict[str, Any]:
    rates = [run.images_per_s for run in runs]
    return {
        "images_per_s": max(rates),
        "images_per_s_median": statistics.median(rates),
        "runs_images_per_s": rates,
        "samples_per_run": [run.samples for run in runs],
        "timed_samples_per_run": [run.timed_samples for run in runs],
        "warmup_seconds": [run.warmup_seconds for run in runs],
    }


def benchmark_train(cfg: TrainBenchConfig) -> dict[str, Any]:
    """Alternate ``cfg.repeats`` Lightning and raw runs, then time encoding; returns the results dict."""
    device = resolve_device(cfg.device)
    data = SyntheticBatches(cfg, device, cfg.warmup + cfg.steps)
    # batch_size=None: the dataset yields whole batches, so nothing is collated per step.
    loader = DataLoader(data, batch_size=None, shuffle=False, num_workers=0)
    lightning_module, raw_module = build_module(cfg), build_module(cfg)
    lightning_runs, raw_runs = [], []
    cudnn_benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed input shapes: let cuDNN pick kernels
    try:
        for _ in range(cfg.repeats):
            lightning_runs.append(time_lightning(lightning_module, loader, cfg, device))
            raw_runs.append(time_raw(raw_module, loader, cfg, device))
        encode = time_encode(raw_module, data, cfg, device)
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark
    lightning, raw = _summary(lightning_runs), _summary(raw_runs)
    return {
        "benchmark": "train",
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "threads": torch.get_num_threads(),
        "settings": {**asdict(cfg), "device": device.type},
        "lightning_fit": lightning,
        "raw_pytorch": raw,
        "ratio": lightning["images_per_s"] / raw["images_per_s"],
        "ratio_median": lightning["images_per_s_median"] / raw["images_per_s_median"],
        "ratio_target": RATIO_TARGET,
        "encode": {
            "images_per_s": encode.images_per_s,
            "samples": encode.samples,
            "timed_samples": encode.timed_samples,
            "warmup_seconds": encode.warmup_seconds,
        },
    }


def render_table(results: dict[str, Any]) -> Table:
    s = results["settings"]
    flags = [s["precision"]] + [name for name in ("channels_last", "compile") if s[name]]
    table = results_table(
        f"{s['backbone']} {s['image_size']}px batch {s['batch_size']} {' '.join(flags)} on {results['device']}",
        ("loop", "best images/s", "median images/s", "warm-up s"),
        left={"loop"},
        caption=f"torch {results['torch']}, lightning {results['lightning']}; "
        f"{s['steps']} timed steps after {s['warmup']} warm-up, {s['repeats']} repeat(s)",
    )
    for label, key in (("Lightning fit", "lightning_fit"), ("raw PyTorch", "raw_pytorch")):
        row = results[key]
        table.add_row(
            label,
            f"{row['images_per_s']:.1f}",
            f"{row['images_per_s_median']:.1f}",
            f"{row['warmup_seconds'][0]:.2f}",
        )
    table.add_row(
        f"ratio Lightning/raw (target {results['ratio_target']:.2f})",
        f"{results['ratio']:.3f}",
        f"{results['ratio_median']:.3f}",
        "",
    )
    encode = results["encode"]
    table.add_row(
        "encode (inference)", f"{encode['images_per_s']:.1f}", "", f"{encode['warmup_seconds']:.2f}"
    )
    return table


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the training-throughput benchmark; unset sizes follow --quick or the full defaults."""
    parser.add_argument(
        "--backbone", choices=BACKBONES, default=None, help="default alexnet (smallcnn with --quick)"
    )
    parser.add_argument("--bits", type=positive_int_arg, default=48)
    parser.add_argument("--num-classes", type=positive_int_arg, default=10)
    parser.add_argument(
        "--batch-size", type=positive_int_arg, default=None, help="default 64 (16 with --quick)"
    )
    parser.add_argument(
        "--image-size", type=positive_int_arg, default=None, help="default 224 (32 with --quick)"
    )
    parser.add_argument(
        "--steps", type=positive_int_arg, default=None, help="timed steps per run (cuda 50, cpu 10)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per run (cuda 10, cpu 3)")
    parser.add_argument("--precision", choices=PRECISIONS, default="32-true")
    parser.add_argument("--channels-last", action="store_true", help="channels_last weights and inputs")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (both loops)")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    parser.add_argument(
        "--repeats", type=positive_int_arg, default=None, help="alternating runs of each loop (3)"
    )
    parser.add_argument("--quick", action="store_true", help="small CPU-sized defaults, well under a minute")
    add_shared_arguments(parser, out=None)


def config_from_args(args: argparse.Namespace) -> TrainBenchConfig:
    """Fill unset options from the --quick or full defaults (steps/warmup depend on the device)."""
    quick = getattr(args, "quick", False)
    defaults = dict(QUICK_DEFAULTS if quick else FULL_DEFAULTS)
    if not quick:
        defaults["steps"], defaults["warmup"] = STEP_DEFAULTS[resolve_device(args.device).type]

    def pick(name: str) -> Any:
        value = getattr(args, name, None)
        return defaults[name] if value is None else value

    return TrainBenchConfig(
        backbone=pick("backbone"),
        bits=args.bits,
        num_classes=args.num_classes,
        batch_size=pick("batch_size"),
        image_size=pick("image_size"),
        steps=pick("steps"),
        warmup=pick("warmup"),
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        device=args.device,
        repeats=pick("repeats"),
        seed=args.seed,
    )


def run_train_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark for parsed options, print a table and write ``args.out`` (JSON) if given."""
    results = benchmark_train(config_from_args(args))
    return finish(results, render_table(results), getattr(args, "out", None))


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark("train", __doc__, add_train_arguments, run_train_bench, argv)


if __name__ == "__main__":
    raise SystemExit(main())
