"""Backbones cut at F7: each maps an image batch to its F7 feature vector.

F7 is the output of the second fully connected layer's ReLU for AlexNet/VGG16
(Caffe's ``relu7``), the pooled penultimate features for ResNet-50, and a small
fully connected layer for ``smallcnn`` and ``mnistcnn``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from deephash.models.mnist_cnn import MnistCNN
from deephash.utils.errors import ConfigError


@dataclass
class Backbone:
    """``features`` maps images (B, C, H, W) to F7 (B, f7_dim); ``pretrained`` names its parameters' origin."""

    features: nn.Module
    f7_dim: int


class SmallCNN(nn.Module):
    """A plain CNN for fast CPU runs on digits/MNIST: two conv blocks, then F6/F7 fully connected layers."""

    def __init__(self, in_channels: int = 1, f7_dim: int = 256, dropout: float = 0.25) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.fc = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(128 * 4, 512),
            nn.ReLU(inplace=True),  # F6
            nn.Dropout(dropout),
            nn.Linear(512, f7_dim),
            nn.ReLU(inplace=True),  # F7
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))


class _TorchvisionFC7(nn.Module):
    """AlexNet/VGG: convolutional trunk, then the classifier up to relu7 (fc8 dropped)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.trunk = net.features
        self.avgpool = net.avgpool
        # AlexNet's classifier is [drop, fc6, relu6, drop, fc7, relu7, fc8] (a dropout on pool5, none after
        # relu7); VGG16's is [fc6, relu6, drop6, fc7, relu7, drop7, fc8]. Keep through relu7.
        layers = list(net.classifier.children())
        last_relu = max(i for i, m in enumerate(layers) if isinstance(m, nn.ReLU))
        self.head = nn.Sequential(*layers[: last_relu + 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.avgpool(self.trunk(x)), 1))


class _ResNetPooled(nn.Module):
    """ResNet: everything up to the global average pool; F7 = the pooled 2048-d features."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        net.fc = nn.Identity()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


_TORCHVISION: dict[str, tuple[Callable[..., nn.Module], Callable[[nn.Module], nn.Module], int]] = {
    "alexnet": (tvm.alexnet, _TorchvisionFC7, 4096),
    "vgg16": (tvm.vgg16, _TorchvisionFC7, 4096),
    "resnet50": (tvm.resnet50, _ResNetPooled, 2048),
}
BACKBONES = ("alexnet", "vgg16", "resnet50", "smallcnn", "mnistcnn")
# the backbones that take the dataset's own resolution and channels (data.transform=native)
NATIVE_BACKBONES: dict[str, Callable[..., nn.Module]] = {"smallcnn": SmallCNN, "mnistcnn": MnistCNN}
BACKBONE_DROPOUTS = ("torchvision", "caffenet")


def drop_pool5_dropout(head: nn.Sequential) -> None:
    """CaffeNet's dropout placement: no dropout on the input of fc6 (drop6/drop7 follow relu6/relu7).

    Replaces every dropout before the head's first fully connected layer by an identity, in place, so the
    layer indices (and state-dict keys) stay those of the torchvision layout.
    """
    for i, layer in enumerate(head):
        if isinstance(layer, nn.Linear):
            return
        if isinstance(layer, nn.Dropout):
            head[i] = nn.Identity()


def build_backbone(
    name: str,
    weights: str | None = None,
    *,
    in_channels: int = 3,
    f7_dim: int = 256,
    dropout_layout: str = "torchvision",
) -> Backbone:
    """Build backbone ``name`` cut at F7.

    ``weights``: a torchvision weight name (``IMAGENET1K_V1``, downloaded where a network exists), ``None``
    for random initialisation, or a path to a local state dict of the full torchvision model (for air-gapped
    clusters; loaded with ``weights_only=True``).
    ``dropout_layout``: ``torchvision`` keeps the library's layout; ``caffenet`` removes the dropout on the input
    of fc6 (torchvision's AlexNet and the small CNN have one, CaffeNet, VGG16 and ResNet-50 do not).
    """
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; expected one of: {', '.join(BACKBONES)}")
    if dropout_layout not in BACKBONE_DROPOUTS:
        raise ConfigError(
            f"model.net.backbone_dropout must be one of {', '.join(BACKBONE_DROPOUTS)}, got {dropout_layout!r}"
        )
    built = _build(name, weights, in_channels=in_channels, f7_dim=f7_dim)
    if dropout_layout == "caffenet":
        # the fully connected part: ``head`` of AlexNet/VGG16, ``fc`` of the small CNN; ResNet-50 has none
        head = getattr(built.features, "head", None) or getattr(built.features, "fc", None)
        if isinstance(head, nn.Sequential):
            drop_pool5_dropout(head)
    return built


def _build(name: str, weights: str | None, *, in_channels: int, f7_dim: int) -> Backbone:
    if name in NATIVE_BACKBONES:
        net = NATIVE_BACKBONES[name](in_channels=in_channels, f7_dim=f7_dim)
        if weights is not None:
            net.load_state_dict(_strip_prefix(_load_state_dict(weights)))
        return Backbone(net, f7_dim)
    factory, wrap, dim = _TORCHVISION[name]
    if in_channels != 3:
        raise ConfigError(
            f"backbone {name!r} expects 3-channel input, got {in_channels}; use data.transform=imagenet"
        )
    if weights is None:
        net = factory(weights=None)
    elif _looks_like_path(weights):
        net = factory(weights=None)
        net.load_state_dict(_load_state_dict(weights))
    else:
        try:
            net = factory(weights=weights)
        except ValueError as err:
            raise ConfigError(f"unknown torchvision weights {weights!r} for {name}: {err}") from None
        except (OSError, RuntimeError) as err:  # urllib errors subclass OSError
            raise ConfigError(
                f"cannot download {name} weights {weights!r} ({err.__class__.__name__}: {err}); "
                f"without a network pass model.net.weights=<path to a saved state dict>"
            ) from None
    return Backbone(wrap(net), dim)


def _looks_like_path(weights: str) -> bool:
    return os.sep in weights or weights.endswith((".pt", ".pth", ".ckpt", ".bin")) or Path(weights).exists()


def _load_state_dict(path: str) -> dict[str, torch.Tensor]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"model.net.weights file not found: {p} (expected a torchvision state dict saved with torch.save)"
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ConfigError(f"cannot load model.net.weights {p}: {err.__class__.__name__}: {err}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConfigError(f"model.net.weights {p} does not hold a state dict (got {type(state).__name__})")
    return state


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("module."): v for k, v in state.items()}
