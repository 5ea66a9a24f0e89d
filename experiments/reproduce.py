"""Regenerate the paper's results: ``python -m experiments.reproduce [--smoke] [--out DIR] ...``.

Stages, each a function writing under ``--out`` (default ``reports/reproduce``):

1. :func:`preflight`: the datasets, ImageNet AlexNet weights and Yahoo folder a run needs exist; if not,
   stop at once (exit 2) saying what to put where.
2. :func:`run_training`: MNIST and CIFAR-10 at 48 and 128 bits with the paper's experiment configs, plus a
   code-length sweep, each run in ``runs/<dataset>/bits<k>``.
3. :func:`run_baselines`: LSH, PCAH, ITQ, SH at 48 bits on raw pixels and on the F7 of our 48-bit model,
   in ``runs/<dataset>/baselines/<method>-<features>``.
4. :func:`run_yahoo`: the Yahoo-1M-style image folder run (``--yahoo-root``), in ``runs/yahoo/bits128``.
5. :func:`run_speed`: the ``deephash.bench`` retrieval timings, in ``bench/bench.json``.
6. :func:`write_results`: ``RESULTS.md``, every entry of ``paper_results.yaml`` against ours, the precision
   figures with the baselines, the mAP-vs-bits sweep, the speed table and the runs' W&B links.

A run whose metrics.json says completed is skipped and an interrupted training run resumes from its
``last.ckpt``, so the command can simply be re-run. ``--smoke`` runs every stage on the bundled digits on
CPU in minutes: digits stands in for MNIST and CIFAR-10, so its numbers are not comparable to the paper's.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from deephash.utils.errors import ConfigError, DataError, DeephashError
from deephash.utils.io import atomic_write_text, update_json

# a plain logger: this driver is one process (deephash.utils.get_logger needs Lightning's rank set)
log = logging.getLogger("experiments.reproduce")

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"
PAPER_RESULTS = Path(__file__).with_name("paper_results.yaml")
PAPER_DATASETS = ("mnist", "cifar10")
PAPER_BITS = (48, 128)
BASELINE_BITS = 48
YAHOO_BITS = 128
METHODS = ("lsh", "pcah", "itq", "sh")
FEATURES = ("pixels", "f7")
FULL_BITS = (12, 24, 32, 48, 128)
SMOKE_BITS = (12, 24, 48, 128)
SMOKE_EPOCHS = 8
SMOKE_BENCH = ("--n-database", "20000", "--n-queries", "100", "--dim", "256")
# the datamodules' file names (deephash.data.mnist.RAW_FILES, deephash.data.cifar10.FILES), listed here so
# that a failing preflight answers at once instead of after importing torch
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1 in its hub cache
WEIGHTS_HOST = ("download.pytorch.org", 443)
WANDB_URL = re.compile(r"https?://[^\s\"'<>()]+/runs/[\w-]+")
RUN_NAME = re.compile(r"(?P<dataset>[^/]+)/(?:bits(?P<bits>\d+)|baselines/(?P<method>\w+)-(?P<features>\w+))")


@dataclass
class Plan:
    """What a reproduction runs. datasets: paper dataset -> the dataset trained for it (smoke: digits)."""

    smoke: bool
    out: Path
    datasets: dict[str, str]
    bits: list[int]
    epochs: int | None
    methods: list[str]
    features: list[str]
    data_dir: Path
    weights: Path | None
    yahoo_root: Path | None
    download: bool
    launcher: str
    logger: str
    overrides: list[str]
    yahoo_overrides: list[str]
    bench_args: list[str]
    force: bool
    command: str

    @property
    def runs(self) -> Path:
        return self.out / "runs"

    @property
    def trained(self) -> list[str]:
        """The datasets trained, each once."""
        return list(dict.fromkeys(self.datasets.values()))


@dataclass
class Job:
    """One run of ``deephash.<entry>`` (``train`` or ``baseline``) with Hydra overrides, in ``runs/<name>``."""

    name: str
    entry: str
    overrides: list[str]


# ---------------------------------------------------------------------------------------------- plan


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.reproduce",
        description="Regenerate the paper's tables and figures (needs MNIST, CIFAR-10, ImageNet AlexNet "
        "weights and, realistically, a GPU); --smoke runs every stage on the bundled digits on CPU.",
    )
    parser.add_argument("--smoke", action="store_true", help="every stage on digits, CPU, a few minutes")
    parser.add_argument("--out", type=Path, default=Path("reports/reproduce"), help="where everything goes")
    parser.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="datasets folder (paths.data_dir; "
        "default $DEEPHASH_DATA or data): <dir>/mnist/MNIST/raw, <dir>/cifar10/cifar-10-batches-py",
    )
    parser.add_argument(
        "--weights", type=Path, default=None, help="ImageNet AlexNet state dict (model.weights)"
    )
    parser.add_argument(
        "--yahoo-root",
        type=Path,
        default=None,
        help="Yahoo-1M-style image folder "
        "(root/<class>/<image>; default $YAHOO_ROOT); no folder: the Yahoo run is left out",
    )
    parser.add_argument(
        "--download", action="store_true", help="fetch missing MNIST/CIFAR-10 (data.download=true)"
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        choices=PAPER_DATASETS,
        default=list(PAPER_DATASETS),
        help="paper datasets to run (smoke: digits stands in for both)",
    )
    parser.add_argument(
        "--bits",
        nargs="+",
        type=int,
        default=None,
        help=f"code lengths trained (default {FULL_BITS}; smoke {SMOKE_BITS})",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help=f"smoke only: epochs per run (default {SMOKE_EPOCHS})"
    )
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(METHODS), help="baselines at 48 bits"
    )
    parser.add_argument(
        "--features",
        nargs="+",
        choices=FEATURES,
        default=list(FEATURES),
        help="what the baselines hash: raw pixels, the F7 of our 48-bit model",
    )
    parser.add_argument(
        "--launcher",
        choices=("subprocess", "inprocess"),
        default=None,
        help="each run as `python -m deephash.train` (default) or in this process (smoke default)",
    )
    parser.add_argument(
        "--logger", choices=("wandb", "csv", "none"), default="wandb", help="the runs' logger"
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override for every training run, e.g. trainer.devices=2 (repeatable)",
    )
    parser.add_argument(
        "--yahoo-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override for the Yahoo run only, e.g. data.list_file=train.txt",
    )
    parser.add_argument(
        "--bench-args", default="", help='extra `deephash.bench` options, e.g. "--n-database 100000"'
    )
    parser.add_argument("--force", action="store_true", help="delete and redo runs that already completed")
    parser.add_argument(
        "--report-only", action="store_true", help="only rebuild RESULTS.md from the runs on disk"
    )
    return parser


def make_plan(args: argparse.Namespace, argv: Sequence[str] = ()) -> Plan:
    """Check the arguments and fill the mode's defaults."""
    bits = list(dict.fromkeys(args.bits or (SMOKE_BITS if args.smoke else FULL_BITS)))
    if any(b < 1 for b in bits):
        raise ConfigError(f"--bits must be positive integers, got {bits}")
    if args.epochs is not None and not args.smoke:
        raise ConfigError(
            "--epochs is for --smoke; the paper's runs are bounded by iterations: "
            "pass --override trainer.max_steps=N"
        )
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {args.epochs}")
    yahoo = args.yahoo_root or (Path(os.environ["YAHOO_ROOT"]) if os.environ.get("YAHOO_ROOT") else None)
    data_dir = args.data_root or Path(os.environ.get("DEEPHASH_DATA") or "data")
    datasets = {ds: "digits" for ds in PAPER_DATASETS} if args.smoke else {ds: ds for ds in args.datasets}
    return Plan(
        smoke=args.smoke,
        out=args.out.expanduser().resolve(),
        datasets=datasets,
        bits=sorted(bits),
        epochs=(args.epochs or SMOKE_EPOCHS) if args.smoke else None,
        methods=list(dict.fromkeys(args.methods)),
        features=list(dict.fromkeys(args.features)),
        data_dir=data_dir.expanduser().resolve(),
        weights=args.weights.expanduser().resolve() if args.weights else None,
        yahoo_root=yahoo.expanduser().resolve() if yahoo else None,
        download=args.download,
        launcher=args.launcher or ("inprocess" if args.smoke else "subprocess"),
        logger=args.logger,
        overrides=list(args.override),
        yahoo_overrides=list(args.yahoo_override),
        bench_args=[*(SMOKE_BENCH if args.smoke else ()), *shlex.split(args.bench_args)],
        force=args.force,
        command=" ".join(["python -m experiments.reproduce", *map(shlex.quote, argv)]),
    )


# ----------------------------------------------------------------------------------------- preflight


def has_network(host: tuple[str, int] = WEIGHTS_HOST, timeout: float = 3.0) -> bool:
    """Whether ``host`` answers a TCP connection within ``timeout`` seconds."""
    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False


def torch_hub_dir() -> Path:
    """``torch.hub.get_dir()`` as torch computes it by default, without importing torch."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch"
    )
    return Path(torch_home).expanduser() / "hub"


def preflight(plan: Plan) -> list[str]:
    """Check what the runs need before any of them starts; DataError listing every missing piece.

    Returns warnings (no GPU in full mode). Smoke needs nothing but an existing ``--yahoo-root``.
    """
    problems: list[str] = []
    if plan.yahoo_root is not None and not plan.yahoo_root.is_dir():
        problems.append(
            f"Yahoo folder not found: {plan.yahoo_root} (data.root of experiment=paper_yahoo: a folder of "
            f"<class>/<image> subfolders); fix --yahoo-root / YAHOO_ROOT or leave it out"
        )
    if plan.smoke:
        if problems:
            raise DataError("; ".join(problems))
        return []

    network: bool | None = None  # asked at most once, only when something is missing

    def online() -> bool:
        nonlocal network
        if network is None:
            network = has_network()
        return network

    if "mnist" in plan.datasets:
        raw = plan.data_dir / "mnist" / "MNIST" / "raw"
        if not all((raw / f).is_file() or (raw / f"{f}.gz").is_file() for f in MNIST_FILES):
            if not (plan.download and online()):
                problems.append(
                    f"MNIST not found at {raw}: put the four *-ubyte files there ({', '.join(MNIST_FILES)}) or "
                    f"pass --data-root DIR (data.root=DIR/mnist), or run with a network and --download "
                    f"(data.download=true)"
                )
    if "cifar10" in plan.datasets:
        folder = plan.data_dir / "cifar10" / "cifar-10-batches-py"
        if not all((folder / f).is_file() for f in CIFAR10_FILES):
            if not (plan.download and online()):
                problems.append(
                    f"CIFAR-10 not found at {folder}: unpack cifar-10-python.tar.gz there or pass "
                    f"--data-root DIR (data.root=DIR/cifar10), or run with a network and --download "
                    f"(data.download=true)"
                )
    if plan.weights is not None:
        if not plan.weights.is_file():
            problems.append(
                f"--weights file not found: {plan.weights} (model.weights: a torchvision AlexNet state dict)"
            )
    elif not (torch_hub_dir() / "checkpoints" / ALEXNET_FILE).is_file() and not online():
        problems.append(
            f"ImageNet AlexNet weights not found: pass --weights /path/alexnet.pth (a torchvision state dict, "
            f"model.weights=<path>) or put {ALEXNET_FILE} in {torch_hub_dir() / 'checkpoints'}, or make "
            f"model.weights=IMAGENET1K_V1 downloadable (no network reached {WEIGHTS_HOST[0]})"
        )
    if problems:
        raise DataError("; ".join(problems))
    import torch

    if not torch.cuda.is_available():
        return [
            "no GPU found: the paper's runs (AlexNet at 227x227, 50,000 iterations each) take days on a CPU; "
            "training switches to trainer=cpu"
        ]
    return []


# ------------------------------------------------------------------------------------------------ jobs


def hydra_value(value: Any) -> str:
    """A value as a Hydra override accepts it: quoted unless it is a plain word or path."""
    text = str(value)
    if re.fullmatch(r"[\w./+-]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def common_overrides(plan: Plan) -> list[str]:
    """Overrides of every training run: logger, data folder, weights, device."""
    out = [f"logger={plan.logger}", f"paths.data_dir={hydra_value(plan.data_dir)}", "task_name=reproduce"]
    if not plan.smoke:
        if plan.weights is not None:
            out.append(f"model.weights={hydra_value(plan.weights)}")
        if plan.download:
            out.append("data.download=true")
        if not _cuda():
            out.append("trainer=cpu")
    return out


def training_jobs(plan: Plan) -> list[Job]:
    """The paper's 48/128-bit runs first, then the rest of the code-length sweep, for every dataset."""
    order = [b for b in PAPER_BITS if b in plan.bits] + [b for b in plan.bits if b not in PAPER_BITS]
    jobs = []
    for dataset in plan.trained:
        for bits in order:
            if plan.smoke:
                experiment = ["experiment=demo", f"trainer.max_epochs={plan.epochs}"]
            else:
                experiment = [f"experiment=paper_{dataset}_{128 if bits == 128 else 48}"]
            overrides = [*experiment, f"model.bits={bits}", *common_overrides(plan), *plan.overrides]
            jobs.append(Job(f"{dataset}/bits{bits}", "train", overrides))
    return jobs


def baseline_jobs(plan: Plan) -> list[Job]:
    """LSH/PCAH/ITQ/SH at 48 bits on pixels, and on F7 where the 48-bit model completed."""
    jobs = []
    for dataset in plan.trained:
        model_run = plan.runs / dataset / f"bits{BASELINE_BITS}"
        metrics = read_metrics(model_run)
        checkpoint = metrics.get("best_checkpoint") or metrics.get("last_checkpoint")
        for features in plan.features:
            extra = [f"features={features}"]
            if features == "f7":
                if not (is_complete(metrics) and checkpoint and Path(checkpoint).is_file()):
                    log.warning(
                        "%s: no completed %d-bit model, F7 baselines left out", dataset, BASELINE_BITS
                    )
                    continue
                extra += [f"ckpt_path={hydra_value(checkpoint)}", *_data_options(model_run)]
                if not plan.smoke and _cuda():
                    extra.append("trainer=gpu")
            for method in plan.methods:
                overrides = [
                    f"method={method}",
                    f"data={dataset}",
                    f"bits={BASELINE_BITS}",
                    f"logger={plan.logger}",
                    f"paths.data_dir={hydra_value(plan.data_dir)}",
                    *extra,
                ]
                if plan.download and not plan.smoke:
                    overrides.append("data.download=true")
                jobs.append(Job(f"{dataset}/baselines/{method}-{features}", "baseline", overrides))
    return jobs


def yahoo_job(plan: Plan) -> Job | None:
    """``experiment=paper_yahoo`` on ``--yahoo-root``; in smoke the small CNN for a few epochs on CPU."""
    if plan.yahoo_root is None:
        return None
    overrides = [
        "experiment=paper_yahoo",
        f"data.root={hydra_value(plan.yahoo_root)}",
        *common_overrides(plan),
    ]
    if plan.smoke:
        overrides += [
            "model=smallcnn",
            "trainer=cpu",
            "data.transform=native",
            "data.image_size=32",
            "data.num_workers=0",
            "data.persistent_workers=false",
            "trainer.max_steps=-1",
            f"trainer.max_epochs={plan.epochs}",
            "trainer.val_check_interval=null",
            "trainer.check_val_every_n_epoch=1",
        ]
    return Job(f"yahoo/bits{YAHOO_BITS}", "train", [*overrides, *plan.yahoo_overrides])


def _data_options(model_run: Path) -> list[str]:
    """The data options a model was trained with that change its input (so its F7 is computed alike)."""
    path = model_run / "config.yaml"
    if not path.is_file():
        return []
    data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    keys = ("transform", "image_size", "resize", "protocol", "n_queries", "val_size")
    return [f"data.{k}={hydra_value(data[k])}" for k in keys if data.get(k) is not None]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """A run's metrics.json, ``{}`` when missing or unreadable."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def is_complete(metrics: dict[str, Any]) -> bool:
    """Completed and evaluated (a run killed while evaluating says completed but has no ``modes``)."""
    return metrics.get("status") == "completed" and bool(metrics.get("modes"))


def run_job(plan: Plan, job: Job) -> dict[str, Any]:
    """Run ``job`` unless it already completed; records and returns its status entry."""
    run_dir = plan.runs / job.name
    if is_complete(read_metrics(run_dir)):
        if not plan.force:
            log.info("%s: completed earlier, skipped", job.name)
            return _record(plan, job.name, {"status": "completed", "skipped": True})
        shutil.rmtree(run_dir)
    overrides = list(job.overrides)
    last = run_dir / "checkpoints" / "last.ckpt"
    if job.entry == "train" and last.is_file():
        log.info("%s: resuming from %s", job.name, last)
        overrides.append(f"ckpt_path={hydra_value(last)}")
    log.info("%s: deephash.%s %s", job.name, job.entry, " ".join(overrides))
    start = time.perf_counter()
    error = ""
    try:
        if plan.launcher == "inprocess":
            _run_inprocess(job.entry, overrides, run_dir)
        else:
            _run_subprocess(job.entry, overrides, run_dir)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - one failed run must not stop the others
        error = _one_line(f"{err.__class__.__name__}: {err}")
    metrics = read_metrics(run_dir)
    entry: dict[str, Any] = {"status": "completed" if is_complete(metrics) else "failed"}
    entry["seconds"] = round(time.perf_counter() - start, 1)
    if entry["status"] == "failed":
        entry["error"] = _one_line(str(metrics.get("error") or error or "the run wrote no results"))
        log.error("%s failed: %s", job.name, entry["error"])
    return _record(plan, job.name, entry)


def _run_inprocess(entry: str, overrides: list[str], run_dir: Path) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from deephash.runs import record_failure

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=entry, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    if entry == "train":
        from deephash.train import train as task
    else:
        from deephash.baselines.run import run_baseline as task
    try:
        task(cfg)
    except Exception as err:
        record_failure(cfg, err)  # what the entry point does: metrics.json says failed, W&B run closed
        raise


def _run_subprocess(entry: str, overrides: list[str], run_dir: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", f"deephash.{entry}", *overrides, f"hydra.run.dir={hydra_value(run_dir)}"]
    done = subprocess.run(command, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"deephash.{entry} exited with status {done.returncode} (log in {run_dir})")


def _record(plan: Plan, name: str, entry: dict[str, Any]) -> dict[str, Any]:
    update_json(plan.out / "status.json", {name: entry})
    return entry


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------- stages


def run_training(plan: Plan) -> dict[str, dict[str, Any]]:
    """Stage 2: the paper's runs and the code-length sweep; ``{run name: status entry}``."""
    return {job.name: run_job(plan, job) for job in training_jobs(plan)}


def run_baselines(plan: Plan) -> dict[str, dict[str, Any]]:
    """Stage 3: the hashing baselines at 48 bits."""
    return {job.name: run_job(plan, job) for job in baseline_jobs(plan)}


def run_yahoo(plan: Plan) -> dict[str, dict[str, Any]]:
    """Stage 4: the Yahoo-style folder run, when a folder was given."""
    job = yahoo_job(plan)
    return {job.name: run_job(plan, job)} if job else {}


def run_speed(plan: Plan) -> dict[str, dict[str, Any]]:
    """Stage 5: ``deephash.bench retrieval`` into ``bench/bench.json`` (skipped when it exists)."""
    path = plan.out / "bench" / "bench.json"
    if path.is_file() and not plan.force:
        log.info("bench: %s exists, skipped", path)
        return {"bench": _record(plan, "bench", {"status": "completed", "skipped": True})}
    from deephash.bench import build_parser as bench_parser
    from deephash.bench import run_retrieval

    start = time.perf_counter()
    entry: dict[str, Any] = {"status": "completed"}
    try:
        args = bench_parser("retrieval").parse_args(["retrieval", *plan.bench_args, "--out", str(path)])
        run_retrieval(args)
    # SystemExit: argparse rejected --bench-args
    except (DeephashError, SystemExit, OSError, MemoryError) as err:
        entry = {"status": "failed", "error": _one_line(f"{err.__class__.__name__}: {err}")}
        log.error("bench failed: %s", entry["error"])
    entry["seconds"] = round(time.perf_counter() - start, 1)
    return {"bench": _record(plan, "bench", entry)}


# --------------------------------------------------------------------------------------------- results


def load_paper_results(path: Path = PAPER_RESULTS) -> list[dict[str, Any]]:
    """The entries of paper_results.yaml, checked: id, quantity, value, unit, run, metric, source."""
    entries = (yaml.safe_load(path.read_text()) or {}).get("entries") or []
    for entry in entries:
        missing = [
            k for k in ("id", "quantity", "value", "unit", "run", "metric", "source") if k not in entry
        ]
        if missing:
            raise ConfigError(f"{path}: entry {entry.get('id', '?')} lacks {', '.join(missing)}")
        figure_only = entry.get("reported") == "figure-only"
        if figure_only != (entry["value"] is None):
            raise ConfigError(
                f"{path}: entry {entry['id']}: value must be null exactly when reported: figure-only"
            )
    return entries


def resolve_run(plan: Plan, run: str) -> tuple[str | None, str]:
    """Paper run name (``mnist/bits48``) -> ours (smoke: ``digits/bits48``), or ``None`` and why not."""
    head, _, rest = run.partition("/")
    if head == "yahoo" and plan.yahoo_root is None:
        return None, "no --yahoo-root (or YAHOO_ROOT) given"
    if head in PAPER_DATASETS:
        if head not in plan.datasets:
            return None, f"{head} not in --datasets"
        return f"{plan.datasets[head]}/{rest}", ""
    return run, ""


def planned_reason(plan: Plan, name: str) -> str:
    """Why the run ``name`` is not (yet) in the results."""
    status = _status(plan).get(name) or {}
    if status.get("status") == "failed":
        return f"failed: {status.get('error', 'see its run directory')}"
    m = RUN_NAME.fullmatch(name)
    if m and m["bits"] and int(m["bits"]) not in plan.bits:
        return f"{m['bits']} bits not in --bits"
    if m and m["method"]:
        if m["method"] not in plan.methods:
            return f"{m['method']} not in --methods"
        if m["features"] not in plan.features:
            return f"{m['features']} not in --features"
        if m["features"] == "f7" and not is_complete(
            read_metrics(plan.runs / m["dataset"] / f"bits{BASELINE_BITS}")
        ):
            return f"no completed {BASELINE_BITS}-bit model to take F7 from"
    return f"no results in runs/{name} yet"


def our_value(plan: Plan, entry: dict[str, Any]) -> tuple[float | None, str, str]:
    """(our value in the entry's unit, its text, the run it came from); value None and the reason if absent."""
    name, reason = resolve_run(plan, str(entry["run"]))
    if name is None:
        return None, f"not run: {reason}", "-"
    metric = str(entry["metric"])
    if name == "bench":
        source, data = "bench/bench.json", _read_json(plan.out / "bench" / "bench.json")
        if not data:
            error = (_status(plan).get("bench") or {}).get("error")
            return None, f"not run: {f'failed: {error}' if error else 'no bench/bench.json yet'}", name
    else:
        source, data = f"runs/{name}/metrics.json", read_metrics(plan.runs / name)
        if not is_complete(data):
            failed = data.get("status") == "failed"
            why = f"failed: {_one_line(str(data.get('error')))}" if failed else planned_reason(plan, name)
            return None, f"not run: {why}", name
    if metric.startswith("curve."):
        mode = metric.split(".")[1]
        stats = curve_stats(plan.runs / name / "precision_at_k.csv", mode)
        if stats is None:
            return None, f"not available: no {mode} curve in runs/{name}/precision_at_k.csv", name
        mean, sd = (_scaled(v, entry) for v in stats)
        return mean, f"{_fmt(mean, entry)} (sd {_fmt(sd, entry)})", name
    if metric == "test_error":
        acc = lookup(data, "test_acc")
        value = None if acc is None else 1.0 - acc
    else:
        value = lookup(data, metric)
    if value is None:
        return None, f"not available: no {metric} in {source}", name
    scaled = _scaled(value, entry)
    return scaled, _fmt(scaled, entry), name


def lookup(data: dict[str, Any], path: str) -> float | None:
    """The number at a dotted key path (``modes.hamming.precision@k.1000``), or ``None``."""
    value: Any = data
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_curves(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """precision_at_k.csv -> ``{mode: (ks (m,), precision (m,))}`` (empty cells dropped); ``{}`` if missing."""
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    curves = {}
    for mode in rows[0].keys() if rows else []:
        if mode == "k":
            continue
        points = [(int(float(r["k"])), float(r[mode])) for r in rows if r.get(mode) not in (None, "")]
        if points:
            ks, p = zip(*points)
            curves[mode] = (np.asarray(ks, np.int64), np.asarray(p, np.float64))
    return curves


def curve_stats(path: Path, mode: str, max_k: int = 1000) -> tuple[float, float] | None:
    """Mean and standard deviation of a precision curve at k = 10, 20, ..., ``max_k`` (all its points if none)."""
    curve = read_curves(path).get(mode)
    if curve is None:
        return None
    ks, p = curve
    uniform = (ks % 10 == 0) & (ks <= max_k)
    values = p[uniform] if uniform.any() else p
    return float(values.mean()), float(values.std())


def wandb_link(run_dir: Path, metrics: dict[str, Any]) -> str:
    """The run's W&B page: online, its URL (where recorded); offline, the command that uploads it."""
    if metrics.get("wandb_url"):
        return str(metrics["wandb_url"])
    found = list((run_dir / "wandb").glob("run-*")) + list((run_dir / "wandb").glob("offline-run-*"))
    if not found:
        return "no W&B run"
    latest = max(found, key=lambda p: p.name.removeprefix("offline-"))
    if latest.name.startswith("offline-"):
        return f"offline: `wandb sync {shlex.quote(str(latest))}`"
    run_id = latest.name.rsplit("-", 1)[-1]
    for log_file in ("files/output.log", "logs/debug.log", "logs/debug-internal.log"):
        try:
            text = (latest / log_file).read_text(errors="replace")
        except OSError:
            continue
        urls = [u for u in WANDB_URL.findall(text) if u.endswith(f"/runs/{run_id}")]
        if urls:
            return urls[-1]
    logger_cfg = (
        (yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
        if (run_dir / "config.yaml").is_file()
        else {}
    ).get("logger") or {}
    wandb_cfg = logger_cfg.get("wandb") or {}
    entity = wandb_cfg.get("entity") or os.environ.get("WANDB_ENTITY")
    project = wandb_cfg.get("project") or os.environ.get("WANDB_PROJECT") or "deephash"
    if entity and not os.environ.get("WANDB_BASE_URL"):
        return f"https://wandb.ai/{entity}/{project}/runs/{run_id}"
    return f"online run {run_id} in project {project} (URL not recorded)"


def write_results(plan: Plan) -> Path:
    """Stage 6: ``RESULTS.md`` with the paper-vs-ours table, figures, sweep, speed and runs."""
    sections = [
        _header(plan),
        _paper_table(plan),
        _precision_section(plan),
        _sweep_section(plan),
        _speed_section(plan),
        _runs_section(plan),
    ]
    path = atomic_write_text(plan.out / "RESULTS.md", "\n".join(sections))
    log.info("results written to %s", path)
    return path


def _header(plan: Plan) -> str:
    lines = [
        "# Reproduction of Lin et al., CVPRW 2015",
        "",
        "*Deep Learning of Binary Hash Codes for Fast Image Retrieval.*",
        f"Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `{plan.command}`; "
        f"the paper's numbers come from `experiments/paper_results.yaml`.",
        "",
    ]
    if plan.smoke:
        lines += [
            "> **smoke: digits stands in for MNIST/CIFAR-10; numbers are not comparable.** Every stage ran on "
            "scikit-learn's 8x8 digits (about 1,300 database images, 130 per class, so precision@1000 cannot "
            f"exceed about 0.13) with the small CNN for {plan.epochs} epoch(s) per run on CPU.",
            "",
        ]
    return "\n".join(lines)


def _paper_table(plan: Plan) -> str:
    rows = []
    for entry in load_paper_results():
        value, text, run = our_value(plan, entry)
        paper = entry["value"]
        paper_text = "- (figure only)" if paper is None else _fmt(float(paper), entry)
        if value is None or paper is None:
            diff = "-"
        elif entry["unit"] == "percent":
            diff = f"{value - float(paper):+.2f} pp"
        else:
            diff = f"{value / float(paper):.3g}x the paper's"
        note = str(entry.get("note") or "-")
        rows.append(
            [f"`{entry['id']}`", entry["quantity"], entry["source"], paper_text, text, diff, run, note]
        )
    header = ["id", "quantity", "source", "paper", "ours", "difference", "our run", "note"]
    return "## Paper vs ours\n\n" + _markdown_table(header, rows)


def _precision_section(plan: Plan) -> str:
    from deephash.evaluation.plots import write_precision_curves

    parts = [f"## Precision at k, {BASELINE_BITS} bits (figures 4 and 6)\n"]
    for dataset in plan.trained:
        runs = [
            (f"ours {mode}", f"{dataset}/bits{BASELINE_BITS}", mode) for mode in ("hamming", "hierarchical")
        ]
        runs += [
            (f"{m} ({f})", f"{dataset}/baselines/{m}-{f}", "hamming")
            for f in plan.features
            for m in plan.methods
        ]
        curves, rows = {}, []
        for label, name, mode in runs:
            metrics = read_metrics(plan.runs / name)
            curve = read_curves(plan.runs / name / "precision_at_k.csv").get(mode)
            if not is_complete(metrics) or curve is None:
                rows.append([label, *["-"] * 4, planned_reason(plan, name)])
                continue
            curves[label] = curve
            results = metrics["modes"].get(mode) or {}
            p = results.get("precision@k") or {}
            rows.append(
                [
                    label,
                    *(_num(v) for v in (results.get("mAP"), p.get("10"), p.get("100"), p.get("1000"))),
                    name,
                ]
            )
        title = f"{dataset}, {BASELINE_BITS} bits" + (" (stands in for MNIST/CIFAR-10)" if plan.smoke else "")
        parts.append(f"### {title}\n")
        if curves:
            stem = plan.out / "figures" / f"{dataset}_precision_{BASELINE_BITS}"
            write_precision_curves(curves, stem.with_suffix(".csv"), stem.with_suffix(".png"), title=title)
            parts.append(f"![{title}](figures/{stem.name}.png)\n")
        parts.append(_markdown_table(["curve", "mAP", "P@10", "P@100", "P@1000", "run"], rows))
    return "\n".join(parts)


def _sweep_section(plan: Plan) -> str:
    from deephash.tracking.compare import compare_runs

    parts = ["## Code length sweep (mAP vs bits)\n"]
    for dataset in plan.trained:
        rows = []
        for bits in sorted({*plan.bits, *PAPER_BITS}):
            name = f"{dataset}/bits{bits}"
            metrics = read_metrics(plan.runs / name)
            if not is_complete(metrics):
                rows.append([str(bits), "-", "-", "-", "-", f"not run: {planned_reason(plan, name)}"])
                continue
            modes = metrics["modes"]
            acc = metrics.get("test_acc")
            rows.append(
                [
                    str(bits),
                    _num(100 * acc if isinstance(acc, (int, float)) else None, ".2f"),
                    *(
                        _num((modes.get(m) or {}).get("mAP"))
                        for m in ("hamming", "hierarchical", "euclidean")
                    ),
                    "completed",
                ]
            )
        parts.append(f"### {dataset}\n")
        parts.append(
            _markdown_table(
                ["bits", "test acc (%)", "hamming mAP", "hierarchical mAP", "euclidean mAP", "status"], rows
            )
        )
        if (plan.runs / dataset).is_dir():
            try:
                compare_runs(plan.runs / dataset, plan.out / "compare" / dataset)
                parts.append(
                    f"\n![mAP vs bits, {dataset}](compare/{dataset}/map_vs_bits.png)\n\n"
                    f"Every run of {dataset}: [compare/{dataset}/compare.md](compare/{dataset}/compare.md)\n"
                )
            except DeephashError as err:
                parts.append(f"\n(no comparison figure: {err})\n")
    return "\n".join(parts)


def _speed_section(plan: Plan) -> str:
    bench = _read_json(plan.out / "bench" / "bench.json")
    head = "## Retrieval speed (section 4.5)\n\n"
    if not bench:
        status = _status(plan).get("bench") or {}
        return head + f"not run: {status.get('error') or 'no bench/bench.json yet'}\n"
    cfg, cmp_ = bench.get("config") or {}, bench.get("hamming_over_euclidean") or {}
    hier = (bench.get("hierarchical") or {}).get(str(cmp_.get("bits"))) or {}
    rows = [
        [
            f"Hamming k-NN, {cmp_.get('bits')} bits, ms/query",
            _num(cmp_.get("hamming_ms_per_query"), ".4f"),
            "0.113",
        ],
        [
            f"exhaustive L2, {cmp_.get('dim')}-d F7, ms/query",
            _num(cmp_.get("euclidean_ms_per_query"), ".3f"),
            "109.767",
        ],
        ["Hamming over L2 speed-up", _num(cmp_.get("speedup"), ".1f"), "971.3"],
        [
            f"hierarchical search, {cmp_.get('bits')} bits, ms/query",
            _num(hier.get("ms_per_query"), ".3f"),
            "-",
        ],
    ]
    setup = (
        f"`deephash.bench` on {cfg.get('n_database', '?'):,} synthetic items, {cfg.get('n_queries')} queries "
        f"({cfg.get('euclidean_queries')} for L2), k = {cmp_.get('k')}, {cfg.get('faiss_threads')} threads; "
        "the paper: C/C++ on a CPU over Yahoo-1M. Full output: [bench/bench.json](bench/bench.json).\n\n"
    )
    return head + setup + _markdown_table(["measure", "ours", "paper"], rows)


def _runs_section(plan: Plan) -> str:
    from deephash.tracking.compare import find_jobs

    status = _status(plan)
    names = set(status) - {"bench"}
    if plan.runs.is_dir():
        names |= {p.relative_to(plan.runs).as_posix() for p in find_jobs(plan.runs)}
    rows = []
    for name in sorted(names):
        metrics = read_metrics(plan.runs / name)
        entry = status.get(name) or {}
        state = metrics.get("status") or entry.get("status") or "missing"
        if state == "completed" and not is_complete(metrics):
            state = "interrupted (not evaluated)"
        seconds = entry.get("seconds")
        rows.append(
            [
                name,
                state,
                _num(seconds, ".0f") + (" (earlier)" if entry.get("skipped") else ""),
                wandb_link(plan.runs / name, metrics),
            ]
        )
    if not rows:
        return "## Runs\n\nno runs yet\n"
    return "## Runs\n\n" + _markdown_table(["run (under runs/)", "status", "seconds", "W&B"], rows)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        text = " ".join(str(value).split()).replace("|", "\\|")
        return text or "-"

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _scaled(value: float | None, entry: dict[str, Any]) -> float | None:
    """Our fractions as percent where the paper's unit is percent."""
    return None if value is None else value * 100 if entry["unit"] == "percent" else value


def _fmt(value: float | None, entry: dict[str, Any]) -> str:
    if value is None:
        return "-"
    digits = {"percent": 2, "x": 1}.get(entry["unit"], 3)
    unit = {"percent": "%", "x": "x"}.get(entry["unit"], f" {entry['unit']}")
    return f"{value:.{digits}f}{unit}"


def _num(value: Any, spec: str = ".4f") -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _status(plan: Plan) -> dict[str, Any]:
    return _read_json(plan.out / "status.json")


# ------------------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stages; 0 when every run completed, 1 when some failed, 2 on bad input or missing data."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        from rich.logging import RichHandler

        logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False)])
    ran: dict[str, dict[str, Any]] = {}
    try:
        plan = make_plan(args, argv)
        if not args.report_only:
            for warning in preflight(plan):
                log.warning(warning)
            plan.out.mkdir(parents=True, exist_ok=True)
            log.info("stage 2/6: training runs (%s)", ", ".join(plan.trained))
            ran.update(run_training(plan))
            log.info("stage 3/6: baselines at %d bits", BASELINE_BITS)
            ran.update(run_baselines(plan))
            log.info(
                "stage 4/6: Yahoo-style folder run%s",
                "" if plan.yahoo_root else " (no --yahoo-root: left out)",
            )
            ran.update(run_yahoo(plan))
            log.info("stage 5/6: retrieval speed")
            ran.update(run_speed(plan))
        log.info("stage 6/6: RESULTS.md")
        path = write_results(plan)
    except DeephashError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = sorted(name for name, entry in ran.items() if entry["status"] == "failed")
    print(f"results: {path}")
    if failed:
        print(f"failed runs: {', '.join(failed)} (see RESULTS.md and their run directories)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
