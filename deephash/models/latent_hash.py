"""LatentHashNet: backbone up to F7, latent layer H (sigmoid), classifier F8 (paper section 3.1)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from deephash.models.backbones import build_backbone
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError

MAX_BITS = 4096
INITS = ("torch", "caffe")


class HashOutput(NamedTuple):
    logits: torch.Tensor  # (B, num_classes)
    latent: torch.Tensor  # (B, bits) sigmoid activations in (0, 1)
    f7: torch.Tensor  # (B, f7_dim)


def validate_bits(bits: object) -> int:
    """``model.bits`` must be an integer in 1..4096."""
    return check_int(bits, "model.bits", 1, MAX_BITS)


class LatentHashNet(nn.Module):
    """F7 -> H = sigmoid(Linear(F7, bits)) -> F8 = Linear(bits, classes).

    The paper inserts H between F7 and F8 of an ImageNet-pretrained AlexNet and fine-tunes the whole
    network with softmax cross-entropy; H's activations thresholded at 0.5 are the binary codes (eq. 1).
    H and F8 are randomly initialised, so the initial codes act like LSH random projections.

    ``init``: ``torch`` keeps PyTorch's default (uniform) initialisation of H and F8; ``caffe`` uses the
    fillers of the authors' prototxt (see :func:`caffe_init`). ``backbone_dropout``: see
    :func:`~deephash.models.backbones.build_backbone`.
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
    ) -> None:
        super().__init__()
        self.bits = validate_bits(bits)
        if num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {num_classes}")
        if init not in INITS:
            raise ConfigError(f"model.init must be one of {', '.join(INITS)}, got {init!r}")
        built = build_backbone(
            backbone, weights, in_channels=in_channels, f7_dim=f7_dim, dropout_layout=backbone_dropout
        )
        self.backbone_name = backbone
        self.backbone = built.features
        self.f7_dim = built.f7_dim
        # Caffe's drop7 sits between relu7 and the next layer; it is inactive in eval mode.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.latent = nn.Linear(self.f7_dim, bits)
        self.classifier = nn.Linear(bits, num_classes)
        self.num_classes = num_classes
        if init == "caffe":
            caffe_init(self.latent, self.classifier)

    def forward(self, x: torch.Tensor) -> HashOutput:
        f7 = self.backbone(x)
        # H in float32 even under bf16/fp16 autocast: the codes threshold it at 0.5, where bf16's spacing
        # (2^-9 below 0.5) would round activations in (0.499, 0.5) up to 0.5 and flip their bits.
        with torch.autocast(device_type=f7.device.type, enabled=False):
            latent = torch.sigmoid(self.latent(self.dropout(f7).float()))
        return HashOutput(self.classifier(latent), latent, f7)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Binary codes ``(B, bits) bool`` (H >= 0.5) and F7 features ``(B, f7_dim)``."""
        out = self.forward(x)
        return codes_from_latent(out.latent), out.f7

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role, for per-layer learning-rate multipliers."""
        return {
            "backbone": list(self.backbone.parameters()),
            "latent": list(self.latent.parameters()),
            "classifier": list(self.classifier.parameters()),
        }


@torch.no_grad()
def caffe_init(latent: nn.Linear, classifier: nn.Linear) -> None:
    """The authors' prototxt fillers: H (``fc8_kevin``) weights N(0, 0.005) and bias 1, so every unit starts
    near sigmoid(1) = 0.73; F8 weights N(0, 0.01) and bias 0."""
    nn.init.normal_(latent.weight, 0.0, 0.005)
    nn.init.constant_(latent.bias, 1.0)
    nn.init.normal_(classifier.weight, 0.0, 0.01)
    nn.init.zeros_(classifier.bias)


def codes_from_latent(latent: torch.Tensor) -> torch.Tensor:
    """Paper eq. (1): bit j is 1 iff Out_j(H) >= 0.5."""
    return latent >= 0.5
