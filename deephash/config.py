"""Checks on a composed config that run before any data is read or model built."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from deephash.models.backbones import BACKBONES, NATIVE_BACKBONES, _looks_like_path
from deephash.models.latent_hash import validate_bits
from deephash.runs import check_checkpoint_selection
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError

# The Hydra config directory every entry point composes from.
CONFIG_PATH = str(Path(__file__).resolve().parent.parent / "conf")


def validate_train_config(cfg: DictConfig) -> None:
    """Fail fast with one line on the mistakes a user makes most: bits, backbone, batch size, weights."""
    if "data" not in cfg or cfg.data is None or "_target_" not in cfg.data:
        raise ConfigError("no dataset selected; pass data=<digits|mnist|cifar10|folder>")
    model = cfg.model
    if model.backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone {model.backbone!r}; expected one of: {', '.join(BACKBONES)}")
    validate_bits(model.bits)
    for key in ("batch_size", "eval_batch_size"):
        value = cfg.data.get(key)
        if key == "eval_batch_size" and value is None:
            continue
        check_int(value, f"data.{key}")
    weights = model.get("weights")
    if (
        weights is not None
        and _looks_like_path(str(weights))
        and not Path(str(weights)).expanduser().is_file()
    ):
        raise ConfigError(
            f"model.weights file not found: {weights} (expected a torchvision weight name such as "
            f"IMAGENET1K_V1, null, or the path of a saved state dict)"
        )
    if model.backbone not in NATIVE_BACKBONES and cfg.data.get("transform") == "native":
        raise ConfigError(
            f"backbone {model.backbone!r} needs 3-channel ImageNet-style input; use data.transform=imagenet "
            f"(data.transform=native is for {' and '.join(NATIVE_BACKBONES)})"
        )
    check_checkpoint_selection(cfg.get("checkpoint_selection", "best_val"))
    ckpt = cfg.get("ckpt_path")
    if ckpt is not None and not Path(str(ckpt)).expanduser().is_file():
        raise ConfigError(
            f"ckpt_path not found: {ckpt} (expected a .ckpt file, e.g. <run>/checkpoints/last.ckpt)"
        )
