"""The baselines' input features: raw pixels, and the F7 of a pretrained backbone that is not fine-tuned."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from deephash.utils.errors import DataError


def flatten_images(images: Any) -> np.ndarray:
    """Images ``(n, ...)`` as ``float32 (n, d)`` pixel vectors in [0, 1].

    Integer pixels are divided by their type's maximum (255 for uint8); float images must already lie
    in [0, 1], since rescaling each batch by its own range would encode queries and database differently.
    """
    images = np.asarray(images)
    if images.ndim < 2 or images.shape[0] == 0:
        raise DataError(f"images must be an array (n, ...) with n >= 1, got shape {images.shape}")
    flat = images.reshape(images.shape[0], -1)
    if np.issubdtype(flat.dtype, np.unsignedinteger):
        return flat.astype(np.float32) / np.float32(np.iinfo(flat.dtype).max)
    if flat.dtype == bool:
        return flat.astype(np.float32)
    if not np.issubdtype(flat.dtype, np.floating):
        raise DataError(f"images must be unsigned integer or float pixels, got dtype {flat.dtype}")
    flat = flat.astype(np.float32)
    if not np.isfinite(flat).all():
        raise DataError("images contain NaN or infinite values")
    low, high = float(flat.min()), float(flat.max())
    if low < 0.0 or high > 1.0:
        raise DataError(f"float images must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]")
    return flat


def pretrained_f7_module(
    features: Mapping[str, Any], *, num_classes: int, in_channels: int, bits: int
) -> Any:
    """A HashModule whose backbone holds ``features.weights`` and is not fine-tuned: its F7 is the pretrained
    network's (relu7 for AlexNet/VGG16), figure 8's "AlexNet" curve under exhaustive L2. Its head is random;
    the baseline's method supplies the codes. ``features``: ``backbone``, ``weights`` (a torchvision
    weight name or a state-dict path) and ``f7_dim`` (the small CNNs' F7 width, or None)."""
    from deephash.models.module import HashModule
    from deephash.models.net import HashNetwork

    f7_dim = features.get("f7_dim")
    net = HashNetwork(
        str(features["backbone"]),
        bits,
        num_classes,
        "latent",
        str(features["weights"]),
        in_channels=in_channels,
        **({"f7_dim": int(f7_dim)} if f7_dim is not None else {}),
    )
    return HashModule(net).eval()
