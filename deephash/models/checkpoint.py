"""Reading deephash checkpoints: the archive's integrity, the method they record, and the trained network.

A checkpoint written by ``deephash-train`` records its method and what rebuilds its network
(``hyper_parameters["net"]``, :attr:`~deephash.models.net.HashNetwork.spec`), so every command that reads one
loads any method's checkpoint. Checkpoints of the releases before methods (the paper's latent layer, with the
network's settings flat in ``hyper_parameters``) load as method ``latent``.
"""

from __future__ import annotations

import importlib
import zipfile
from pathlib import Path
from typing import Any

import torch

from deephash.methods.registry import DEEP
from deephash.models.module import HashModule
from deephash.models.net import build_network
from deephash.utils.errors import ConfigError, DeephashError

# the network settings a checkpoint of the releases before methods kept flat in its hyper-parameters
_LEGACY_NET = ("backbone", "bits", "num_classes", "in_channels", "f7_dim", "dropout", "backbone_dropout")
_LEGACY_PREFIXES = {"net.latent.": "net.head.latent.", "net.classifier.": "net.head.classifier."}


def check_device(device: str) -> torch.device:
    """``device`` as a torch device that this machine has, or a one-line ConfigError."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"unknown device {device!r} ({err}); expected cpu, cuda or cuda:<n>") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {device!r} requested but this machine has no CUDA device; use cpu")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(
                f"device {device!r} requested but this machine has {count} CUDA device(s): cuda:0..cuda:{count - 1}"
            )
    return dev


def read_checkpoint(ckpt_path: str | Path) -> dict[str, Any]:
    """The contents of a deephash checkpoint (tensors memory-mapped, not read), or a one-line ConfigError if
    the file is missing or is not a checkpoint written by deephash-train."""
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path} (expected a .ckpt written by deephash-train)")
    if not zipfile.is_zipfile(path):
        raise ConfigError(
            f"{path} is not a deephash checkpoint (not a PyTorch zip archive); "
            f"expected a .ckpt written by deephash-train"
        )
    damaged = _damaged_member(path)
    if damaged is not None:
        raise ConfigError(
            f"{path} is damaged: {damaged} does not match the CRC-32 the archive records (a partial copy or a "
            "disk error); copy it again or use another checkpoint"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - pickle, zip and torch errors alike: not a checkpoint
        reason = " ".join(str(err).split())[:120]
        raise ConfigError(
            f"{path} is not a deephash checkpoint ({err.__class__.__name__}: {reason}); "
            f"expected a .ckpt written by deephash-train"
        ) from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hparams, dict) or "state_dict" not in ckpt or _record(hparams) is None:
        raise ConfigError(
            f"{path} is not a deephash checkpoint (no hashing method, network record or state_dict); "
            f"expected a .ckpt written by deephash-train"
        )
    return ckpt


def _damaged_member(path: Path) -> str | None:
    """The first member of the checkpoint's zip archive whose bytes fail their recorded CRC-32, or None.
    torch.load does not check them: a flipped bit in a weight would load as a different weight. Reading
    the whole file costs about a second per GB."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        return f"the archive ({' '.join(str(err).split())[:120]})"


def network_record(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """What rebuilds the checkpoint's network (a :attr:`HashNetwork.spec`), its method known to this
    installation; else a one-line ConfigError naming the methods it has."""
    spec = _record(ckpt["hyper_parameters"])
    if spec is None:
        raise ConfigError(f"{path} is not a deephash checkpoint (no hashing method or network record)")
    if spec["method"] not in DEEP:
        _import_method(spec.get("head_class"))
    if spec["method"] not in DEEP:
        raise ConfigError(
            f"{path} was trained with hashing method {spec['method']!r}, which this installation does not have "
            f"(its methods: {', '.join(DEEP)}); install the package that defines it"
        )
    return spec


def _import_method(head_class: Any) -> None:
    """Import the module that defines a method outside this package (its head registers on import), if it can
    be imported here; nothing else is executed."""
    if not isinstance(head_class, str) or "." not in head_class:
        return
    try:
        importlib.import_module(head_class.rsplit(".", 1)[0])
    except ImportError:
        pass  # the caller names the methods this installation has


def _record(hparams: dict[str, Any]) -> dict[str, Any] | None:
    net = hparams.get("net")
    if isinstance(net, dict) and isinstance(net.get("method"), str):
        return dict(net)
    if {"bits", "backbone"} <= set(hparams):  # before methods: the paper's latent layer
        spec = {k: hparams[k] for k in _LEGACY_NET if k in hparams}
        return {"method": "latent", "head": {"init": hparams.get("init", "torch")}, **spec}
    return None


def load_hash_module(ckpt_path: str | Path, map_location: str = "cpu") -> HashModule:
    """A trained HashModule of any method, for inference on ``map_location``; never downloads (the checkpoint
    holds every weight). Every way this fails (missing or damaged file, not a deephash checkpoint, a method
    this installation lacks, a device this machine lacks, weights that do not fit) is a one-line
    ConfigError."""
    path = Path(ckpt_path).expanduser()
    device = check_device(map_location)
    ckpt = read_checkpoint(path)
    spec = network_record(ckpt, path)
    hparams = ckpt["hyper_parameters"]
    try:
        module = HashModule(
            build_network(spec),
            None,  # inference only: no loss
            scheduler_interval=hparams.get("scheduler_interval", "step"),
            lr_mult=hparams.get("lr_mult"),
            channels_last=bool(hparams.get("channels_last", False)),
        )
        module.load_state_dict(_network_state(ckpt["state_dict"]), strict=True)
    except DeephashError:
        raise
    except Exception as err:  # noqa: BLE001 - a checkpoint that does not fit this code is a user error
        reason = " ".join(str(err).split())[:200]
        raise ConfigError(f"cannot load checkpoint {path}: {err.__class__.__name__}: {reason}") from None
    return module.to(device).eval()


def _network_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict without the loss's buffers (inference needs none), old key names renamed."""
    out = {}
    for key, value in state.items():
        if key.startswith("loss."):
            continue
        for old, new in _LEGACY_PREFIXES.items():
            if key.startswith(old):
                key = new + key[len(old) :]
        out[key] = value
    return out


def check_trained_on(ckpt_path: str | Path, identity: dict[str, Any], remedy: str) -> None:
    """A one-line ConfigError if the checkpoint was trained on other data than ``identity`` describes
    (:meth:`~deephash.data.base.RetrievalDataModule.identity`; checkpoints record it under ``"dataset"``);
    ``remedy`` ends the message. Checkpoints written before the record existed are not checked."""
    from deephash.data.base import same_data

    recorded = read_checkpoint(ckpt_path).get("dataset")
    if not isinstance(recorded, dict):
        return
    difference = same_data(recorded, identity)
    if difference is not None:
        raise ConfigError(f"{ckpt_path} was trained on other data ({difference}); {remedy}")
