"""``latent``: the paper's method (Lin et al., CVPRW 2015, section 3.1), the default.

A latent layer H = sigmoid(W F7 + b) sits between F7 and the classifier F8 = Linear(H); the network is
fine-tuned with plain softmax cross-entropy on the class labels (point-wise: no pairs), and the codes are
H's activations thresholded at 0.5 (eq. 1). H and F8 start random, so the first codes act like LSH random
projections. The hierarchical search re-ranks on F7 (section 3.2).

Two optional regularisers from the authors' follow-up work (SSDH, Yang et al. 2017), both weight 0 by
default (the 2015 paper's loss). Like SSDH's ``K1_EuclideanLoss``/``K2_EuclideanLoss`` Caffe layers, each
divides its sum of squares by 2 x the number of terms (Caffe's Euclidean-loss convention), so SSDH's loss
weights mean the same here. Two quirks of the released layers are not reproduced: they divide once more by
the batch size (which would tie a weight's meaning to the batch size), and K2 averages the bits over the
whole batch instead of per image (the SSDH paper's term is per image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deephash.methods.deep import HashHead, HashLoss, HashOutput, HeadOutput


class LatentHead(HashHead):
    """H = sigmoid(Linear(F7, bits)), F8 = Linear(H, classes). ``init=caffe``: the authors' prototxt fillers,
    H (``fc8_kevin``) weights N(0, 0.005) with bias 1, so every unit starts near sigmoid(1) = 0.73."""

    name = "latent"
    code_rule = "threshold"
    has_classifier = True
    caffe_bias = 1.0

    def forward(self, f7: torch.Tensor) -> HeadOutput:
        latent = torch.sigmoid(self.latent(f7))
        return HeadOutput(latent, self.classifier(latent))


class LatentLoss(HashLoss):
    """Softmax cross-entropy on F8, plus the optional SSDH terms on H."""

    def __init__(
        self, bits: int, num_classes: int, forcing_binary_weight: float = 0.0, balance_weight: float = 0.0
    ) -> None:
        super().__init__(bits, num_classes)
        self.forcing_binary_weight = float(forcing_binary_weight)
        self.balance_weight = float(balance_weight)

    def forward(self, out: HashOutput, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(out.logits, labels)
        if self.forcing_binary_weight:
            loss = loss + self.forcing_binary_weight * forcing_binary_loss(out.latent)
        if self.balance_weight:
            loss = loss + self.balance_weight * balanced_bits_loss(out.latent)
        return loss


def forcing_binary_loss(latent: torch.Tensor) -> torch.Tensor:
    """Push each activation away from 0.5: ``-sum((h - 0.5)^2) / (2 B K)`` for ``latent: (B, K)``;
    minimal (-1/8) at h in {0, 1}."""
    return -((latent - 0.5) ** 2).mean() / 2


def balanced_bits_loss(latent: torch.Tensor) -> torch.Tensor:
    """50% fire rate: push each code's mean activation towards 0.5:
    ``sum_b((mean_j(h_bj) - 0.5)^2) / (2 B)`` for ``latent: (B, K)``."""
    return ((latent.mean(dim=1) - 0.5) ** 2).mean() / 2
