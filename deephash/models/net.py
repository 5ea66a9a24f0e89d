"""HashNetwork: a backbone cut at F7, then a hashing method's head (paper section 3.1 for ``latent``)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

from deephash.methods.deep import HashHead, HashOutput
from deephash.methods.registry import deep_method
from deephash.models.backbones import build_backbone
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError

MAX_BITS = 4096
FEATURES = ("f7", "latent")  # the layer the hierarchical and euclidean modes re-rank on

HeadFactory = Callable[..., HashHead]


def validate_bits(bits: object) -> int:
    """``model.net.bits`` must be an integer in 1..4096."""
    return check_int(bits, "model.net.bits", 1, MAX_BITS)


class HashNetwork(nn.Module):
    """F7 = backbone(x), then ``head(dropout(F7))`` -> relaxed codes (and logits).

    ``head``: a method name (``latent``), its head class, or a partial of it with the method's options (what
    Hydra's ``_partial_: true`` gives); it is completed with ``(f7_dim, bits, num_classes)``. ``dropout``
    is Caffe's drop7, between relu7 and the head (inactive in eval mode). ``features``: the layer
    :meth:`encode` returns for the re-rank, ``f7`` (the paper's) or ``latent`` (the relaxed codes).
    ``backbone_dropout``: see :func:`~deephash.models.backbones.build_backbone`.
    """

    def __init__(
        self,
        backbone: str,
        bits: int,
        num_classes: int,
        head: str | HeadFactory = "latent",
        weights: str | None = None,
        *,
        in_channels: int = 3,
        f7_dim: int = 256,
        dropout: float = 0.5,
        backbone_dropout: str = "torchvision",
        features: str = "f7",
    ) -> None:
        super().__init__()
        self.bits = validate_bits(bits)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ConfigError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        if features not in FEATURES:
            raise ConfigError(f"model.net.features must be one of {', '.join(FEATURES)}, got {features!r}")
        head_cls, options = _head_factory(head)
        built = build_backbone(
            backbone, weights, in_channels=in_channels, f7_dim=f7_dim, dropout_layout=backbone_dropout
        )
        self.backbone_name = backbone
        self.backbone = built.features
        self.f7_dim = built.f7_dim
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = head_cls(self.f7_dim, self.bits, num_classes, **options)
        self.num_classes = num_classes
        self.features = features
        # what rebuilds this network without its weights (a checkpoint records it): plain types only
        self.spec: dict[str, Any] = {
            "method": head_cls.name,
            "head_class": f"{head_cls.__module__}.{head_cls.__qualname__}",  # imported to load a checkpoint
            "head": options,
            "backbone": backbone,
            "bits": self.bits,
            "num_classes": num_classes,
            "in_channels": int(in_channels),
            "f7_dim": self.f7_dim,
            "dropout": float(dropout),
            "backbone_dropout": backbone_dropout,
            "features": features,
        }

    @property
    def method(self) -> str:
        return self.head.name

    @property
    def feature_dim(self) -> int:
        """Width of the re-rank features :meth:`encode` returns."""
        return self.f7_dim if self.features == "f7" else self.bits

    def forward(self, x: torch.Tensor) -> HashOutput:
        f7 = self.backbone(x)
        # the head in float32 even under bf16/fp16 autocast: codes threshold its output, where bf16's
        # spacing (2^-9 below 0.5) would round activations in (0.499, 0.5) up to 0.5 and flip their bits
        with torch.autocast(device_type=f7.device.type, enabled=False):
            out = self.head(self.dropout(f7).float())
        return HashOutput(out.logits, out.latent, f7)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary codes ``(B, bits) bool`` by the method's code rule, and the re-rank features
        ``(B, feature_dim)`` (F7, or the relaxed codes)."""
        out = self.forward(x)
        return self.head.codes(out.latent), (out.f7 if self.features == "f7" else out.latent)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role (``backbone``, then the head's ``latent`` and ``classifier``), for per-layer
        learning-rate multipliers."""
        return {"backbone": list(self.backbone.parameters()), **self.head.parameter_groups()}


def _head_factory(head: str | HeadFactory) -> tuple[type[HashHead], dict[str, Any]]:
    """The head class and its options (plain types) from a method name, a head class or a partial of one."""
    if isinstance(head, str):
        return deep_method(head), {}
    options: dict[str, Any] = {}
    if isinstance(head, functools.partial):
        if head.args:
            raise ConfigError("model.net.head takes keyword options only")
        options = {k: _plain(v) for k, v in head.keywords.items()}
        head = head.func
    if not (isinstance(head, type) and issubclass(head, HashHead) and "name" in vars(head)):
        raise ConfigError(
            f"model.net.head must be a hashing method's head (a HashHead subclass with a name), got {head!r}"
        )
    return head, options


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def build_network(spec: Mapping[str, Any], weights: str | None = None) -> HashNetwork:
    """The network a :attr:`HashNetwork.spec` describes (weights random unless ``weights``); an unknown method
    is a one-line ConfigError."""
    spec = dict(spec)
    spec.pop("head_class", None)
    head = functools.partial(deep_method(str(spec.pop("method"))), **dict(spec.pop("head", {}) or {}))
    return HashNetwork(head=head, weights=weights, **spec)
