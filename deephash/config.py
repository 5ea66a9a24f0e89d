"""Checks on a composed config that run before any data is read or model built.

:func:`validate_config` checks every section a config has (``seed``, ``data``, ``trainer``, ``retrieval``,
``split``, a baseline's ``bits``), so a typo costs a second, not a whole run; ``deephash.cli.run_hydra_task``
calls it for every Hydra main. :func:`validate_train_config` adds the checks of a training run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from deephash.data.base import check_val_size
from deephash.data.protocols import SPLITS
from deephash.evaluation.pipeline import pool_rule
from deephash.methods.registry import DEEP, SHALLOW
from deephash.models.backbones import BACKBONES, NATIVE_BACKBONES, _looks_like_path
from deephash.models.checkpoint import network_record, read_checkpoint
from deephash.models.net import validate_bits
from deephash.retrieval.codecs import codec_options
from deephash.retrieval.modes import MODES
from deephash.retrieval.sublinear import COARSE_METHODS, check_coarse_params
from deephash.retrieval.torch_search import torch_device
from deephash.utils.checks import check_int, check_number
from deephash.utils.errors import ConfigError

# The Hydra config directory every entry point composes from.
# inside the package when installed from a wheel (pyproject.toml ships conf/ as deephash/conf), the
# repository's conf/ in a source checkout
_PACKAGED_CONF = Path(__file__).resolve().parent / "conf"
CONFIG_PATH = str(_PACKAGED_CONF if _PACKAGED_CONF.is_dir() else _PACKAGED_CONF.parent.parent / "conf")
MAX_SEED = 2**32 - 1  # numpy's seed range
NET_KEYS = ("backbone", "bits", "weights", "f7_dim", "dropout", "backbone_dropout")
# what a required value (``???`` in conf/) is, for the error that asks for it
# the keys of the releases before methods, when the network's settings sat flat under ``model``: still
# accepted on the command line (``model.bits=128``) and moved to where they live now (``rewrite_moved_keys``)
MOVED_KEYS = {
    **{f"model.{key}": f"model.net.{key}" for key in NET_KEYS},
    "model.init": "model.net.head.init",
    "model.forcing_binary_weight": "model.loss.forcing_binary_weight",
    "model.balance_weight": "model.loss.balance_weight",
}
REQUIRED_HINTS = {
    "ckpt_path": "a .ckpt written by deephash-train, e.g. ckpt_path=<run>/checkpoints/last.ckpt",
    "data.root": "the folder of class subfolders, e.g. data.root=/path/to/images",
}


def rewrite_moved_keys(overrides: list[str]) -> list[str]:
    """Command-line overrides with each key of :data:`MOVED_KEYS` (``model.bits=128``, ``~model.init``,
    ``model.bits=16,32``) renamed to its place now (``model.net.bits=128``); everything else unchanged."""
    out = []
    for override in overrides:
        key, sep, value = override.partition("=")
        prefix = key[: len(key) - len(key.lstrip("+~"))]
        name = key[len(prefix) :]
        out.append(f"{prefix}{MOVED_KEYS[name]}{sep}{value}" if name in MOVED_KEYS else override)
    return out


def validate_config(cfg: DictConfig) -> None:
    """Check every section ``cfg`` has; a one-line ConfigError names the first bad value."""
    for key in missing_keys(cfg):
        hint = REQUIRED_HINTS.get(key, f"pass {key}=<value>")
        raise ConfigError(f"{key} is required and was not given (expected {hint})")
    if "seed" in cfg:
        seed = cfg.seed
        if seed is None:
            raise ConfigError(
                "seed must be an integer in 0..4294967295, got null (runs are always seeded so they can be "
                "repeated; pick any number)"
            )
        check_int(seed, "seed", 0, MAX_SEED)
    if cfg.get("data") is not None:
        validate_data(cfg.data)
    if cfg.get("trainer") is not None:
        validate_trainer(cfg.trainer)
    if cfg.get("retrieval") is not None:
        validate_retrieval(cfg.retrieval)
    if "split" in cfg and cfg.split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {cfg.split!r}")
    if "batch_size" in cfg:  # deephash-index build's encoding batch
        check_int(cfg.batch_size, "batch_size")
    if "bits" in cfg:  # a baseline's code length
        check_int(cfg.bits, "bits", 1, 4096)
    if cfg.get("fit_samples") is not None:
        check_int(cfg.fit_samples, "fit_samples")


def missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    """The dotted keys of ``cfg`` still ``???`` (required, not given), in order. Unlike
    ``OmegaConf.missing_keys`` this resolves no interpolation, so one that cannot resolve yet is not an
    error here."""
    found = []
    for key in cfg.keys():
        node = cfg._get_node(key)
        if isinstance(node, DictConfig) and not (
            node._is_missing() or node._is_none() or node._is_interpolation()
        ):
            found += missing_keys(node, f"{prefix}{key}.")
        elif OmegaConf.is_missing(cfg, key):
            found.append(f"{prefix}{key}")
    return found


def validate_data(data: DictConfig) -> None:
    """The settings every datamodule takes (the rest are checked by its constructor)."""
    if data.get("n_queries") is not None:
        check_int(data.n_queries, "data.n_queries")
    if "val_size" in data:
        check_val_size(data.val_size)
    for key in ("batch_size", "eval_batch_size"):
        if data.get(key) is not None:
            check_int(data.get(key), f"data.{key}")
    if data.get("num_workers") is not None:
        check_int(data.num_workers, "data.num_workers", 0)


def validate_trainer(trainer: DictConfig) -> None:
    """Epoch and step limits (Lightning would refuse them only after the data is loaded)."""
    for key in ("max_epochs", "max_steps"):
        value = trainer.get(key)
        if value is not None and value != -1:
            check_int(value, f"trainer.{key} (-1: no limit)")
    if trainer.get("min_epochs") is not None:
        check_int(trainer.min_epochs, "trainer.min_epochs", 0)


def validate_retrieval(retrieval: DictConfig) -> None:
    """Search modes, ks, mAP cut-off, the hierarchical pool rule and the coarse index of ``retrieval``."""
    modes = list(retrieval.get("modes") or [])
    unknown = [m for m in modes if m not in MODES]
    if not modes or unknown:
        raise ConfigError(
            f"retrieval.modes must list search modes among {', '.join(MODES)}, got {unknown or modes}"
        )
    ks = list(retrieval.get("ks") or [])
    if not ks:
        raise ConfigError("retrieval.ks must list at least one k, e.g. [1, 10, 100, 1000]")
    for k in ks:
        check_int(k, f"retrieval.ks entry (in {ks})")
    check_int(retrieval.get("map_at"), "retrieval.map_at")
    check_int(retrieval.get("radius"), "retrieval.radius", 0)
    for key in ("min_pool", "max_pool", "pool_size"):
        check_int(retrieval.get(key), f"retrieval.{key}")
    try:
        pool_rule(retrieval).limits(max(ks))
    except ConfigError as err:
        raise ConfigError(f"retrieval: {err}") from None
    if "grid_queries" in retrieval:
        check_int(retrieval.grid_queries, "retrieval.grid_queries", 0)
    coarse = retrieval.get("coarse") or {}
    method = coarse.get("method", "flat")
    if method not in COARSE_METHODS:
        raise ConfigError(
            f"retrieval.coarse.method must be one of {', '.join(COARSE_METHODS)}, got {method!r}"
        )
    try:
        check_coarse_params(method, coarse.get("params") or {})
    except ConfigError as err:
        raise ConfigError(f"retrieval.coarse.params: {err}") from None
    torch_device(str(retrieval.get("device", "cpu")))  # an unknown device, or cuda on a machine without one
    codec_options(retrieval)  # the database index's re-rank codec (float16 when absent)


def validate_train_config(cfg: DictConfig) -> None:
    """Fail fast with one line on the mistakes a user makes most: bits, backbone, batch size, weights, and a
    checkpoint to resume that is not one or was trained with other codes."""
    validate_config(cfg)
    if "data" not in cfg or cfg.data is None or "_target_" not in cfg.data:
        raise ConfigError("no dataset selected; pass data=<digits|mnist|cifar10|folder>")
    validate_method(cfg)
    model = cfg.model
    net = model.net
    for key in ("backbone", "bits"):
        if key not in net:
            raise ConfigError(
                f"model.net.{key} is required (the model config sets it; was it removed with ~model.net.{key}?)"
            )
    validate_training_numbers(model)
    if net.backbone not in BACKBONES:
        raise ConfigError(f"unknown backbone {net.backbone!r}; expected one of: {', '.join(BACKBONES)}")
    validate_bits(net.bits)
    check_int(cfg.data.get("batch_size"), "data.batch_size")
    weights = net.get("weights")
    if (
        weights is not None
        and _looks_like_path(str(weights))
        and not Path(str(weights)).expanduser().is_file()
    ):
        raise ConfigError(
            f"model.net.weights file not found: {weights} (expected a torchvision weight name such as "
            f"IMAGENET1K_V1, null, or the path of a saved state dict)"
        )
    if net.backbone not in NATIVE_BACKBONES and cfg.data.get("transform") == "native":
        raise ConfigError(
            f"backbone {net.backbone!r} needs 3-channel ImageNet-style input; use data.transform=imagenet "
            f"(data.transform=native is for {' and '.join(NATIVE_BACKBONES)})"
        )
    ckpt, finetune = cfg.get("ckpt_path"), cfg.get("finetune", False)
    if not isinstance(finetune, bool):
        raise ConfigError(f"finetune must be true or false, got {finetune!r}")
    if finetune and ckpt is None:
        raise ConfigError("finetune=true needs ckpt_path=<checkpoint> (the weights the new run starts from)")
    if ckpt is not None:
        if not Path(str(ckpt)).expanduser().is_file():
            raise ConfigError(
                f"ckpt_path not found: {ckpt} (expected a .ckpt file, e.g. <run>/checkpoints/last.ckpt)"
            )
        # fine-tuning takes the weights whose shapes fit; a resume needs the checkpoint's very network
        read_checkpoint(str(ckpt)) if finetune else check_resume(str(ckpt), model)


# optimizer and scheduler settings a typo or a sign slip would otherwise turn into a traceback after the
# data is loaded (torch's "Invalid learning rate"), or into a run that silently does not learn
_OPTIMIZER_NUMBERS = {"lr": (0.0, None), "weight_decay": (0.0, None), "momentum": (0.0, 1.0)}
_SCHEDULER_NUMBERS = {"gamma": (0.0, None)}


def validate_training_numbers(model: DictConfig) -> None:
    """``model.optimizer.{lr,weight_decay,momentum}`` and ``model.scheduler.{gamma,step_size}``."""
    for section, numbers in (("optimizer", _OPTIMIZER_NUMBERS), ("scheduler", _SCHEDULER_NUMBERS)):
        settings = model.get(section)
        if settings is None:
            continue
        for key, (low, high) in numbers.items():
            if key in settings:
                check_number(settings[key], f"model.{section}.{key}", low, high)
    if model.get("scheduler") is not None and "step_size" in model.scheduler:
        check_int(model.scheduler.step_size, "model.scheduler.step_size")


def validate_method(cfg: DictConfig) -> None:
    """A training run needs a deep method (``method=<name>``, which fills in ``model.method``, the head and the
    loss); a shallow one is refused with the command that runs it."""
    shallow = cfg.get("method")
    if isinstance(shallow, DictConfig) and shallow.get("name") in SHALLOW:
        raise ConfigError(
            f"method={shallow.name} is a shallow method; run it with deephash-baseline method={shallow.name} "
            f"(deephash-train takes a deep method: {', '.join(DEEP)})"
        )
    model = cfg.get("model")
    if model is None or "net" not in model:
        raise ConfigError(f"no model selected; pass model=<{'|'.join(BACKBONES)}>")
    if model.get("method") is None or model.net.get("head") is None or model.get("loss") is None:
        raise ConfigError(f"no hashing method selected; pass method=<{'|'.join(DEEP)}>")


def check_resume(ckpt: str, model: Any) -> None:
    """A checkpoint to resume must be one, of this run's method, code length and backbone (named if not)."""
    recorded = network_record(read_checkpoint(ckpt), ckpt)
    ours = {
        "method": model.get("method"),
        "bits": model.net.get("bits"),
        "backbone": model.net.get("backbone"),
    }
    for key, value in ours.items():
        if recorded.get(key) != value:
            where = "method" if key == "method" else f"model.net.{key}"
            raise ConfigError(
                f"ckpt_path {ckpt} was trained with {where}={recorded.get(key)} but this run has "
                f"{where}={value}; resume with {where}={recorded.get(key)} or start a new run without ckpt_path"
            )
