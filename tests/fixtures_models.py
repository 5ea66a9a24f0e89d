"""The paper's network and module built directly, as the tests need them (Hydra builds them from conf/)."""

from __future__ import annotations

import functools
from typing import Any

from deephash.methods.latent import LatentHead, LatentLoss
from deephash.models.module import HashModule
from deephash.models.net import HashNetwork

NET_OPTIONS = ("weights", "f7_dim", "dropout", "backbone_dropout", "features")


def latent_net(
    backbone: str = "smallcnn", bits: int = 8, num_classes: int = 3, *, init: str = "torch", **options: Any
) -> HashNetwork:
    """A HashNetwork with the paper's latent head (``init``: torch or caffe)."""
    return HashNetwork(backbone, bits, num_classes, functools.partial(LatentHead, init=init), **options)


def latent_module(
    backbone: str = "smallcnn",
    bits: int = 8,
    num_classes: int = 3,
    *,
    in_channels: int = 1,
    init: str = "torch",
    forcing_binary_weight: float = 0.0,
    balance_weight: float = 0.0,
    **options: Any,
) -> HashModule:
    """A HashModule of the latent method; ``options`` are the network's (``f7_dim``, ``dropout``, ...) and the
    module's (``optimizer``, ``lr_mult``, ``channels_last``, ...)."""
    net_options = {k: options.pop(k) for k in NET_OPTIONS if k in options}
    net = latent_net(backbone, bits, num_classes, init=init, in_channels=in_channels, **net_options)
    loss = functools.partial(
        LatentLoss, forcing_binary_weight=forcing_binary_weight, balance_weight=balance_weight
    )
    return HashModule(net, loss, **options)
