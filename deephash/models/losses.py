"""Optional regularisers on the latent activations, from the authors' follow-up work (SSDH, Yang et al. 2017).

Both default to weight 0, i.e. the plain softmax cross-entropy of the 2015 paper. Like SSDH's
``K1_EuclideanLoss``/``K2_EuclideanLoss`` Caffe layers, each divides its sum of squares by 2 x the number of
terms (Caffe's Euclidean-loss convention), so SSDH's loss weights mean the same here. Two quirks of the
released layers are not reproduced: they divide once more by the batch size (which would tie a weight's
meaning to the batch size), and K2 averages the bits over the whole batch instead of per image (the SSDH
paper's term is per image).
"""

from __future__ import annotations

import torch


def forcing_binary_loss(latent: torch.Tensor) -> torch.Tensor:
    """Push each activation away from 0.5: ``-sum((h - 0.5)^2) / (2 B K)`` for ``latent: (B, K)``;
    minimal (-1/8) at h in {0, 1}."""
    return -((latent - 0.5) ** 2).mean() / 2


def balanced_bits_loss(latent: torch.Tensor) -> torch.Tensor:
    """50% fire rate: push each code's mean activation towards 0.5:
    ``sum_b((mean_j(h_bj) - 0.5)^2) / (2 B)`` for ``latent: (B, K)``."""
    return ((latent.mean(dim=1) - 0.5) ** 2).mean() / 2


def bit_balance_stats(latent: torch.Tensor) -> dict[str, torch.Tensor]:
    """Batch statistics of the latent layer: how often bits fire and how binary the activations are."""
    codes = (latent >= 0.5).float()
    fire = codes.mean(dim=0)  # per-bit fraction of ones
    return {
        "fire_rate_mean": fire.mean(),
        "fire_rate_min": fire.min(),
        "fire_rate_max": fire.max(),
        "dead_bits": ((fire == 0) | (fire == 1)).float().sum(),
        "binariness": (2 * (latent - 0.5).abs()).mean(),  # 1 = fully saturated
    }
