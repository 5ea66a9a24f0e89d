"""HashModule: the LightningModule that fine-tunes a LatentHashNet with softmax cross-entropy."""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from deephash.models.latent_hash import LatentHashNet, codes_from_latent
from deephash.models.losses import balanced_bits_loss, bit_balance_stats, forcing_binary_loss
from deephash.utils.errors import ConfigError, DeephashError

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]

# Caffe fine-tuning convention (the authors' prototxt): pretrained layers at the base rate, the newly added
# layers faster. Overridable per group through ``model.lr_mult``.
DEFAULT_LR_MULT = {"backbone": 1.0, "latent": 1.0, "classifier": 10.0}


class HashModule(pl.LightningModule):
    """Point-wise training of the latent hash layer (paper section 3.1).

    ``optimizer`` and ``scheduler`` are partials (Hydra ``_partial_: true``) completed in
    :meth:`configure_optimizers`; ``scheduler_interval`` is ``"step"`` for the paper's iteration-based
    step decay or ``"epoch"``.
    """

    def __init__(
        self,
        backbone: str,
        bits: int,
        num_classes: int,
        weights: str | None = None,
        *,
        in_channels: int = 3,
        f7_dim: int = 256,
        dropout: float = 0.5,
        init: str = "torch",
        backbone_dropout: str = "torchvision",
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "step",
        lr_mult: Mapping[str, float] | None = None,
        forcing_binary_weight: float = 0.0,
        balance_weight: float = 0.0,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("step", "epoch"):
            raise ConfigError(
                f"model.scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}"
            )
        # plain types only: checkpoints are loaded with weights_only=True, which refuses OmegaConf objects
        lr_mult = {str(k): float(v) for k, v in (lr_mult or {}).items()}
        unknown = set(lr_mult) - set(DEFAULT_LR_MULT)
        if unknown:
            raise ConfigError(
                f"model.lr_mult has unknown groups {sorted(unknown)}; expected keys among {sorted(DEFAULT_LR_MULT)}"
            )
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.net = LatentHashNet(
            backbone,
            bits,
            num_classes,
            weights,
            in_channels=in_channels,
            f7_dim=f7_dim,
            dropout=dropout,
            init=init,
            backbone_dropout=backbone_dropout,
        )
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        # kept outside the module registry: a registered compiled wrapper would add a second copy of every
        # weight (``_orig_mod.*``) to the state dict and break loading checkpoints without compile
        object.__setattr__(self, "forward_fn", torch.compile(self.net) if compile else self.net)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.lr_mult = {**DEFAULT_LR_MULT, **lr_mult}
        # validate_args=False: the argument check calls torch.unique on the targets, a device sync every step
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    @property
    def bits(self) -> int:
        return self.net.bits

    def forward(self, x: torch.Tensor):
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.forward_fn(x)

    def _loss(self, latent: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, y)
        if self.hparams.forcing_binary_weight:
            loss = loss + self.hparams.forcing_binary_weight * forcing_binary_loss(latent)
        if self.hparams.balance_weight:
            loss = loss + self.hparams.balance_weight * balanced_bits_loss(latent)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        out = self(x)
        loss = self._loss(out.latent, out.logits, y)
        self.train_acc(out.logits, y)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(y))
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        out = self(x)
        loss = F.cross_entropy(out.logits, y)
        self.val_acc(out.logits, y)
        self.log("val/loss", loss, prog_bar=False, sync_dist=True, batch_size=len(y))
        self.log("val/acc", self.val_acc, prog_bar=True, batch_size=len(y))
        stats = bit_balance_stats(out.latent.float())
        for key, value in stats.items():
            self.log(f"val/bits/{key}", value, sync_dist=True, batch_size=len(y))

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        out = self(x)
        self.test_acc(out.logits, y)
        self.log("test/loss", F.cross_entropy(out.logits, y), sync_dist=True, batch_size=len(y))
        self.log("test/acc", self.test_acc, batch_size=len(y))

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """Codes ``(B, bits) bool``, F7 ``(B, f7_dim) float16``, labels and pool indices of one batch."""
        x, y, index = batch[0], batch[1], batch[2]
        out = self(x)
        return {
            "codes": codes_from_latent(out.latent).cpu(),
            "f7": out.f7.to(torch.float16).cpu(),
            "labels": y.cpu(),
            "index": index.cpu(),
        }

    def param_groups(self, base_lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """One group per role (backbone/latent/classifier) and per kind (weights/biases).

        Caffe convention: biases learn at twice the rate and have no weight decay.
        """
        groups = []
        for role, params in self.net.parameter_groups().items():
            mult = self.lr_mult[role]
            weights = [p for p in params if p.ndim > 1 and p.requires_grad]
            others = [p for p in params if p.ndim <= 1 and p.requires_grad]
            if weights:
                groups.append({"name": f"{role}/weight", "params": weights, "lr": base_lr * mult})
            if others:
                groups.append(
                    {"name": f"{role}/bias", "params": others, "lr": base_lr * mult * 2, "weight_decay": 0.0}
                )
        for g in groups:
            g.setdefault("weight_decay", weight_decay)
        return groups

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise ConfigError("model.optimizer is not set; expected a _partial_ optimizer config")
        kwargs = getattr(self.optimizer_factory, "keywords", {})
        if "lr" not in kwargs:
            raise ConfigError("model.optimizer.lr is not set; expected a base learning rate, e.g. 0.001")
        base_lr, weight_decay = float(kwargs["lr"]), float(kwargs.get("weight_decay", 0.0))
        optimizer = self.optimizer_factory(params=self.param_groups(base_lr, weight_decay))
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": self.hparams.scheduler_interval},
        }


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
    if not isinstance(hparams, dict) or "state_dict" not in ckpt or not {"bits", "backbone"} <= set(hparams):
        raise ConfigError(
            f"{path} is not a deephash checkpoint (no model hyper-parameters or state_dict); "
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


def load_hash_module(ckpt_path: str | Path, map_location: str = "cpu") -> HashModule:
    """Load a trained HashModule for inference on ``map_location``; never downloads (the checkpoint holds
    every weight). Every way this fails (missing file, not a checkpoint, a device this machine lacks, weights
    that do not fit) is a one-line ConfigError."""
    path = Path(ckpt_path).expanduser()
    check_device(map_location)
    read_checkpoint(path)
    try:
        module = HashModule.load_from_checkpoint(path, map_location=map_location, weights=None, compile=False)
    except DeephashError:
        raise
    except Exception as err:  # noqa: BLE001 - a checkpoint that does not fit this code is a user error
        reason = " ".join(str(err).split())[:200]
        raise ConfigError(f"cannot load checkpoint {path}: {err.__class__.__name__}: {reason}") from None
    return module.eval()
