"""``dsh``: Deep Supervised Hashing (Liu, Wang, Shan and Chen, CVPR 2016).

The hash layer is linear, b = W F7 + b0, and the codes are sign(b). Every pair of two different samples of a
batch is a training pair (the paper's online pair generation). With D = ||b_i - b_j||^2 and s_ij = 1 for a
similar pair, the loss is the contrastive 1/2 s D + 1/2 (1 - s) max(m - D, 0), with margin m = 2k for k bits
(codes of a dissimilar pair pushed at least k/2 bits apart), plus the regulariser alpha || |b_i| - 1 ||_1 that
draws each output to +-1. As in the authors' Caffe layer (``hashing_loss_layer.cpp``), the pair terms are
averaged over the pairs and the regulariser over the samples.
"""

from __future__ import annotations

import torch

from deephash.methods.deep import (
    HashLoss,
    HashOutput,
    LinearHead,
    distinct_pairs,
    masked_mean,
    similarity,
)
from deephash.utils.checks import check_number


class DSHHead(LinearHead):
    """b = Linear(F7), no activation; codes sign(b)."""

    name = "dsh"


class DSHLoss(HashLoss):
    """Contrastive loss on squared distances with margin ``margin`` (None: 2 x bits) plus ``alpha`` times the
    L1 distance of |b| to 1."""

    def __init__(self, bits: int, num_classes: int, margin: float | None = None, alpha: float = 0.01) -> None:
        super().__init__(bits, num_classes)
        self.margin = 2.0 * bits if margin is None else check_number(margin, "model.loss.margin")
        self.alpha = check_number(alpha, "model.loss.alpha")

    def forward(self, out: HashOutput, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        b = out.latent
        squares = (b * b).sum(dim=1)
        # ||b_i - b_j||^2 without the (B, B, bits) difference tensor
        distance = (squares[:, None] + squares[None, :] - 2 * (b @ b.T)).clamp(min=0)
        s = similarity(labels)
        contrastive = s * distance / 2 + (1 - s) * (self.margin - distance).clamp(min=0) / 2
        pairs = masked_mean(contrastive, distinct_pairs(len(b), b.device))
        regulariser = (b.abs() - 1).abs().sum(dim=1).mean()
        return pairs + self.alpha * regulariser
