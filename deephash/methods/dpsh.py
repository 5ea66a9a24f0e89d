"""``dpsh``: Deep Pairwise-Supervised Hashing (Li, Wang and Kang, IJCAI 2016).

The hash layer is linear, ``u = W F7 + b``, and the codes are sign(u). Two samples of a batch are similar when
their labels agree (s_ij = 1). The likelihood of s_ij is sigmoid(Theta_ij)^s (1 - sigmoid(Theta_ij))^(1-s) on
the inner product Theta_ij = u_i . u_j / 2; the loss is its negative log, log(1 + e^Theta) - s Theta (as
softplus, which does not overflow for large Theta), plus the quantization term eta ||u_i - sign(u_i)||^2.

The paper sums the likelihood over the pairs of the training set and the quantization term over its n samples.
Divided by the number of pairs, that is mean_pairs(-log p) + (eta / n) mean_i ||u_i - b_i||^2, which is what the
authors' PyTorch code computes for a batch against the whole training set (both sums divided by n x batch).
Here the pairs are those of two different samples of the batch (an estimate of the same mean) and n is the
training split's size, which :meth:`DPSHLoss.setup` takes from the data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deephash.methods.deep import (
    HashLoss,
    HashOutput,
    LinearHead,
    distinct_pairs,
    masked_mean,
    sign_codes,
    similarity,
)
from deephash.utils.checks import check_int, check_number


class DPSHHead(LinearHead):
    """u = Linear(F7), no activation; codes sign(u)."""

    name = "dpsh"


class DPSHLoss(HashLoss):
    """Pairwise negative log-likelihood on Theta = u_i . u_j / 2 plus (eta / n) times the mean squared distance
    of u to its signs. ``train_size`` (n): None takes the training split's size in :meth:`setup`."""

    def __init__(self, bits: int, num_classes: int, eta: float = 10.0, train_size: int | None = None) -> None:
        super().__init__(bits, num_classes)
        self.eta = check_number(eta, "model.loss.eta")
        self.train_size = None if train_size is None else check_int(train_size, "model.loss.train_size", 1)

    def setup(self, labels: torch.Tensor, index: torch.Tensor) -> None:
        if self.train_size is None:
            self.train_size = len(labels)

    def forward(self, out: HashOutput, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if self.train_size is None:
            raise RuntimeError(
                "dpsh needs the training set's size: train with a datamodule (HashLoss.setup) or set "
                "model.loss.train_size"
            )
        u = out.latent
        theta = u @ u.T / 2
        nll = F.softplus(theta) - similarity(labels) * theta
        likelihood = masked_mean(nll, distinct_pairs(len(u), u.device))
        quantization = ((u - sign_codes(u)) ** 2).sum(dim=1).mean()
        return likelihood + self.eta / self.train_size * quantization
