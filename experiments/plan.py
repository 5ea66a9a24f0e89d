"""What a reproduction runs: the command line, the :class:`Plan` it fills, and the runs' state on disk.

The runs live in ``<out>/runs/<name>`` (``mnist/bits48``, ``mnist/baselines/itq-f7``); ``<out>/status.json``
records how each went (:mod:`experiments.launch`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deephash.cli import ArgumentParser
from deephash.methods.registry import DEEP, SHALLOW
from deephash.utils.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"
PAPER_DATASETS = ("mnist", "cifar10")
PAPER_BITS = (48, 128)
BASELINE_BITS = 48
YAHOO_BITS = 128
FEATURES = ("pixels", "f7")
FULL_BITS = (12, 24, 32, 48, 128)
SMOKE_BITS = (12, 24, 48, 128)
SMOKE_EPOCHS = 8
SMOKE_BENCH = ("--n-database", "20000", "--n-queries", "100", "--dim", "256")
# without ImageNet AlexNet weights these datasets train a small CNN recipe (on CPU) instead of the paper's
SMALL_CNN_EXPERIMENTS = {"mnist": "mnist_cnn"}
SMALL_CNN_BACKBONES = ("mnistcnn", "smallcnn")
SMALL_CNN_LABEL = "small CNN, not the paper's AlexNet"
# The compared methods of figures 4 and 6, from Xia et al. (AAAI 2014, Table 2), under their protocol
# (data.protocol=cnnh) on raw pixels: runs <dataset>/cnnh/<method>/bits<k>, the shallow methods at the table's
# code lengths in --bits, the deep ones (a CPU recipe per dataset, ours included) likewise
CNNH_BITS = (12, 24, 32, 48)
CNNH_SHALLOW = ("lsh", "sh", "itq", "bre", "mlh", "cca_itq", "ksh", "sdh")
CNNH_OWN = ("cnnh", "cnnh_plus")  # the methods of Xia et al.'s paper, trained under its protocol only
CNNH_DEEP = (*CNNH_OWN, "latent")  # ours beside them, on the same labelled images
CNNH_METHODS = (*CNNH_SHALLOW, *CNNH_DEEP)
CNNH_EXPERIMENTS = {"mnist": "mnist_cnnh"}
# the eight curves of figure 4 beside ours (ITQ-CCA is in the table only; SDH is ours to add)
FIGURE_METHODS = ("cnnh_plus", "cnnh", "ksh", "mlh", "bre", "sh", "itq", "lsh")
# The deep methods compared under one protocol, the paper's MNIST one, on a CPU recipe: runs
# <dataset>/methods/<method>/bits<k>/seed<s>, every seed of METHOD_SEEDS (or --seeds) at 48 bits, the first at
# the other code lengths of METHOD_BITS in --bits
DEEP_COMPARED = ("latent", "dpsh", "hashnet", "dsh", "greedyhash", "csq")
METHOD_BITS = (12, 24, 32, 48)
METHOD_SEEDS = (1, 2, 3)
METHOD_EXPERIMENTS = {"mnist": "mnist_methods"}
METHOD_MODES = ("hamming", "hierarchical")
SMOKE_DEEP_COMPARED = ("latent", "dpsh")  # --smoke's default: two methods keep it quick
# the stages that run jobs, in order (--only picks some; RESULTS.md is always written)
STAGES = ("training", "baselines", "cnnh", "methods", "yahoo", "speed")


@dataclass
class Plan:
    """What a reproduction runs. datasets: paper dataset -> the dataset trained for it (smoke: digits).

    small_cnn: the datasets that train their :data:`SMALL_CNN_EXPERIMENTS` recipe because no ImageNet
    AlexNet weights were found (set by :func:`~experiments.preflight.preflight`).
    """

    smoke: bool
    out: Path
    datasets: dict[str, str]
    bits: list[int]
    epochs: int | None
    methods: list[str]
    features: list[str]
    cnnh_methods: list[str]
    deep_methods: list[str]
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
    seeds: list[int] | None = None
    small_cnn: list[str] = field(default_factory=list)
    stages: list[str] = field(default_factory=lambda: list(STAGES))

    @property
    def runs(self) -> Path:
        return self.out / "runs"

    def seed_runs(self, name: str) -> list[str]:
        """The run names of ``name`` (``digits/bits48``): itself, or one per seed (``digits/bits48/seed0``)."""
        return [name] if self.seeds is None else [f"{name}/seed{seed}" for seed in self.seeds]

    @property
    def trained(self) -> list[str]:
        """The datasets trained, each once."""
        return list(dict.fromkeys(self.datasets.values()))

    @property
    def cnnh_bits(self) -> list[int]:
        """The code lengths of the CNNH table that --bits asks for (smoke: 48 only)."""
        return [BASELINE_BITS] if self.smoke else [b for b in self.bits if b in CNNH_BITS]

    @property
    def method_bits(self) -> list[int]:
        """The code lengths of the deep methods' comparison that --bits asks for (smoke: 12 and 48)."""
        return [12, BASELINE_BITS] if self.smoke else [b for b in self.bits if b in METHOD_BITS]

    @property
    def method_seeds(self) -> list[int]:
        """The seeds of the deep methods' 48-bit runs: --seeds, else METHOD_SEEDS (smoke: one)."""
        if self.seeds is not None:
            return list(self.seeds)
        return list(METHOD_SEEDS[:1] if self.smoke else METHOD_SEEDS)


@dataclass
class Job:
    """One run of ``deephash.<entry>`` (``train`` or ``baseline``) with Hydra overrides, in ``runs/<name>``."""

    name: str
    entry: str
    overrides: list[str]


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
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
        "--methods",
        nargs="+",
        choices=list(SHALLOW),
        default=[name for name, cls in SHALLOW.items() if not cls.supervised],
        help="shallow methods (baselines) at 48 bits under the paper's protocol (default: the unsupervised ones)",
    )
    parser.add_argument(
        "--cnnh-methods",
        nargs="*",
        choices=CNNH_METHODS,
        default=list(CNNH_METHODS),
        metavar="METHOD",
        help="the compared methods of figures 4 and 6 under Xia et al.'s protocol, at the table's code lengths "
        f"(latent: ours beside them): any of {', '.join(CNNH_METHODS)} (default: all; none: no such runs)",
    )
    parser.add_argument(
        "--deep-methods",
        nargs="*",
        choices=[name for name in DEEP if name not in CNNH_OWN],  # CNNH: its own protocol, --cnnh-methods
        default=None,
        metavar="METHOD",
        help="the deep methods compared under the paper's MNIST protocol (experiment=mnist_methods), three seeds "
        f"at 48 bits and one at the other code lengths of {METHOD_BITS}: any of {', '.join(DEEP_COMPARED)} "
        f"(default: all; smoke: {', '.join(SMOKE_DEEP_COMPARED)}; none: no such runs)",
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
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        metavar="SEED",
        help="run every configuration with these seeds and report mean ± std (--seeds 1 7 42; --seeds 7 is "
        "seed 7 alone); runs go to runs/<name>/seed<s>",
    )
    parser.add_argument(
        "--n-seeds",
        type=int,
        default=None,
        metavar="N",
        help="the same with seeds 0 to N-1",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=STAGES,
        default=list(STAGES),
        metavar="STAGE",
        help=f"run only these stages ({', '.join(STAGES)}; default: all), then write RESULTS.md, e.g. "
        "--only methods for the deep methods' comparison alone",
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
    seeds = None
    if args.seeds is not None and args.n_seeds is not None:
        raise ConfigError("--seeds lists the seeds and --n-seeds counts them from 0: pass one of them")
    if args.n_seeds is not None and args.n_seeds < 1:
        raise ConfigError(f"--n-seeds takes a count N >= 1, got {args.n_seeds}")
    if args.seeds is not None and any(s < 0 for s in args.seeds):
        raise ConfigError(f"--seeds takes seeds >= 0, got {' '.join(map(str, args.seeds))}")
    if args.seeds is not None or args.n_seeds is not None:
        seeds = list(range(args.n_seeds)) if args.n_seeds is not None else list(dict.fromkeys(args.seeds))
        if any(o.lstrip("+~").split("=", 1)[0] == "seed" for o in [*args.override, *args.yahoo_override]):
            raise ConfigError("--seeds sets each run's seed: drop --override seed=...")
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
        cnnh_methods=list(dict.fromkeys(args.cnnh_methods)),
        deep_methods=list(
            dict.fromkeys(
                args.deep_methods
                if args.deep_methods is not None
                else (SMOKE_DEEP_COMPARED if args.smoke else DEEP_COMPARED)
            )
        ),
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
        seeds=seeds,
        stages=[stage for stage in STAGES if stage in args.only],
    )


def stage_of(name: str) -> str:
    """The stage that runs the run ``name``: ``mnist/cnnh/ksh/bits48`` -> ``cnnh``."""
    parts = name.split("/")
    if parts[0] == "yahoo":
        return "yahoo"
    if len(parts) > 1 and parts[1] in ("baselines", "cnnh", "methods"):
        return parts[1]
    return "training"


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


def completed_runs(plan: Plan, name: str) -> list[tuple[str, dict[str, Any]]]:
    """``(run name, metrics)`` of each completed seed run of ``name`` (the run itself without --seeds)."""
    runs = [(run, read_metrics(plan.runs / run)) for run in plan.seed_runs(name)]
    return [(run, metrics) for run, metrics in runs if is_complete(metrics)]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``, ``{}`` when missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_status(plan: Plan) -> dict[str, Any]:
    """status.json: ``{run name: {"status": ..., "seconds": ..., "error": ...}}``."""
    return read_json(plan.out / "status.json")
