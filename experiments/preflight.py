"""Check what the runs need (datasets, ImageNet weights, the Yahoo folder) before any of them starts."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from deephash.utils.errors import DataError
from experiments.plan import SMALL_CNN_EXPERIMENTS, SMALL_CNN_LABEL, Plan

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

    Without ImageNet AlexNet weights (no ``--weights``, none in the torch hub cache, no network to fetch
    them) a dataset of :data:`~experiments.plan.SMALL_CNN_EXPERIMENTS` whose files exist trains that small
    CNN recipe instead: it goes into ``plan.small_cnn``. Returns warnings (that switch, no GPU in full
    mode). Smoke needs nothing but an existing ``--yahoo-root``.
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

    found: set[str] = set()  # datasets whose files are on disk
    if "mnist" in plan.datasets:
        raw = plan.data_dir / "mnist" / "MNIST" / "raw"
        if all((raw / f).is_file() or (raw / f"{f}.gz").is_file() for f in MNIST_FILES):
            found.add("mnist")
        else:
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
        plan.small_cnn = [ds for ds in plan.datasets if ds in SMALL_CNN_EXPERIMENTS and ds in found]
        if any(ds not in plan.small_cnn for ds in plan.datasets):
            hint = (
                f"; {', '.join(plan.small_cnn)} alone runs without them ({SMALL_CNN_LABEL}): "
                f"--datasets {' '.join(plan.small_cnn)}"
                if plan.small_cnn
                else ""
            )
            problems.append(
                f"ImageNet AlexNet weights not found: pass --weights /path/alexnet.pth (a torchvision state "
                f"dict, model.weights=<path>) or put {ALEXNET_FILE} in {torch_hub_dir() / 'checkpoints'}, or "
                f"make model.weights=IMAGENET1K_V1 downloadable (no network reached {WEIGHTS_HOST[0]}){hint}"
            )
    if problems:
        raise DataError("; ".join(problems))
    warnings = [
        f"no ImageNet AlexNet weights: {ds} trains experiment={SMALL_CNN_EXPERIMENTS[ds]} ({SMALL_CNN_LABEL})"
        for ds in plan.small_cnn
    ]
    import torch

    if not torch.cuda.is_available() and any(ds not in plan.small_cnn for ds in plan.datasets):
        warnings.append(
            "no GPU found: the paper's runs (AlexNet at 227x227, 50,000 iterations each) take days on a CPU; "
            "training switches to trainer=cpu"
        )
    return warnings
