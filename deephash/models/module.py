"""HashModule: the LightningModule that trains any deep hashing method's network with that method's loss."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from deephash.methods.deep import HashLoss
from deephash.models.net import HashNetwork
from deephash.utils.errors import ConfigError

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]
LossFactory = Callable[..., nn.Module]

# Caffe fine-tuning convention (the authors' prototxt): pretrained layers at the base rate, the newly added
# layers faster. Overridable per group through ``model.lr_mult``.
DEFAULT_LR_MULT = {"backbone": 1.0, "latent": 1.0, "classifier": 10.0}


class HashModule(pl.LightningModule):
    """Training and encoding for every deep method (lightning-hydra-template's shape: a ready network and a
    loss go in, the module owns the loop).

    ``net``: the :class:`~deephash.models.net.HashNetwork` (backbone + the method's head). ``loss``: the
    method's :class:`~deephash.methods.deep.HashLoss`, or a partial of it (Hydra ``_partial_: true``)
    completed here with the code length and the number of classes; None for inference only. ``method``:
    the method's name, checked against the head's (a YAML that names one method and builds another is
    refused). ``optimizer`` and ``scheduler`` are partials completed in :meth:`configure_optimizers`;
    ``scheduler_interval`` is ``"step"`` for the paper's iteration-based step decay or ``"epoch"``.
    """

    def __init__(
        self,
        net: HashNetwork,
        loss: HashLoss | LossFactory | None = None,
        *,
        method: str | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "step",
        lr_mult: Mapping[str, float] | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(net, HashNetwork):
            raise ConfigError(f"model.net must build a HashNetwork, got {type(net).__name__}")
        if method is not None and method != net.method:
            raise ConfigError(f"model.method is {method!r} but model.net.head builds method {net.method!r}")
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
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"])
        # the checkpoint's record of the method: what rebuilds the network (load_hash_module), and the loss
        self.hparams["method"] = net.method
        self.hparams["net"] = net.spec
        self.hparams["loss"] = _loss_spec(loss)
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.loss = loss(bits=net.bits, num_classes=net.num_classes) if _is_factory(loss) else loss
        # kept outside the module registry: a registered compiled wrapper would add a second copy of every
        # weight (``_orig_mod.*``) to the state dict and break loading checkpoints without compile
        object.__setattr__(self, "forward_fn", torch.compile(self.net) if compile else self.net)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.lr_mult = {**DEFAULT_LR_MULT, **lr_mult}
        num_classes = net.num_classes
        # validate_args=False: the argument check calls torch.unique on the targets, a device sync every step
        self.train_acc = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    @property
    def bits(self) -> int:
        return self.net.bits

    @property
    def method(self) -> str:
        return self.net.method

    @property
    def backbone(self) -> str:
        return self.net.backbone_name

    @property
    def in_channels(self) -> int:
        return self.net.spec["in_channels"]

    @property
    def feature_dim(self) -> int:
        """Width of the re-rank features ``predict_step`` yields."""
        return self.net.feature_dim

    def forward(self, x: torch.Tensor):
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.forward_fn(x)

    def on_fit_start(self) -> None:
        """Hand the loss the training split's labels and pool indices, if it asks for them (``setup``)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        if type(self.loss).setup is HashLoss.setup or datamodule is None:
            return
        train = np.asarray(datamodule.splits["train"])
        self.loss.setup(torch.from_numpy(datamodule.labels("train")), torch.from_numpy(train))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.net.head.update(self.global_step)  # the method's schedule, if it has one

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        out = self(x)
        loss = self.loss(out, y, batch[2])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(y))
        if out.logits is not None:
            self.train_acc(out.logits, y)
            self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        out = self(x)
        if self.loss is not None:
            self.log(
                "val/loss", self.loss(out, y, batch[2]), prog_bar=False, sync_dist=True, batch_size=len(y)
            )
        if out.logits is not None:
            self.val_acc(out.logits, y)
            self.log("val/acc", self.val_acc, prog_bar=True, batch_size=len(y))
        codes = self.net.head.codes(out.latent)
        stats = bit_balance_stats(codes, self.net.head.saturation(out.latent.float()))
        for key, value in stats.items():
            self.log(f"val/bits/{key}", value, sync_dist=True, batch_size=len(y))

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        out = self(x)
        if self.loss is not None:
            self.log("test/loss", self.loss(out, y, batch[2]), sync_dist=True, batch_size=len(y))
        if out.logits is not None:
            self.test_acc(out.logits, y)
            self.log("test/acc", self.test_acc, batch_size=len(y))

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        """Codes ``(B, bits) bool``, re-rank features ``(B, feature_dim) float16`` (under the key ``f7``, the
        index's name for them), labels and pool indices of one batch."""
        x, y, index = batch[0], batch[1], batch[2]
        out = self(x)
        features = out.f7 if self.net.features == "f7" else out.latent
        return {
            "codes": self.net.head.codes(out.latent).cpu(),
            "f7": features.to(torch.float16).cpu(),
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


def _is_factory(loss: Any) -> bool:
    return isinstance(loss, functools.partial) or (isinstance(loss, type) and issubclass(loss, nn.Module))


def _loss_spec(loss: Any) -> dict[str, Any] | None:
    """The loss's class and options as plain types, for the checkpoint's record (None without a loss)."""
    if loss is None:
        return None
    func = (
        loss.func if isinstance(loss, functools.partial) else loss if isinstance(loss, type) else type(loss)
    )
    options = loss.keywords if isinstance(loss, functools.partial) else {}
    plain = {
        k: OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
        for k, v in options.items()
    }
    return {"class": f"{func.__module__}.{func.__qualname__}", **plain}


def bit_balance_stats(codes: torch.Tensor, saturation: torch.Tensor) -> dict[str, torch.Tensor]:
    """Batch statistics of the codes ``(B, bits) bool``: how often bits fire, how many never change, and how
    decided the relaxed codes are (``saturation`` ``(B, bits)`` in [0, 1], 1 = fully saturated)."""
    fire = codes.float().mean(dim=0)  # per-bit fraction of ones
    return {
        "fire_rate_mean": fire.mean(),
        "fire_rate_min": fire.min(),
        "fire_rate_max": fire.max(),
        "dead_bits": ((fire == 0) | (fire == 1)).float().sum(),
        "binariness": saturation.mean(),
    }
