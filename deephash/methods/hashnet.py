"""``hashnet``: HashNet, deep learning to hash by continuation (Cao, Long, Wang and Yu, ICCV 2017).

The relaxed codes are h = tanh(beta z) on z = W F7 + b; the continuation raises beta during training, so tanh
tends to sign, the codes (sign(h) = sign(z)). The schedule is the authors' (their PyTorch ``network.py``):
beta = init_scale (1 + gamma t)^power, updated every ``step_size`` iterations t, counted from 1 as they do
(global step 0 is their iteration 1).

The loss is the weighted maximum likelihood of the batch's pairwise labels: for a pair of two different samples,
-log p(s_ij | h_i, h_j) = log(1 + e^(alpha h_i . h_j)) - s_ij alpha h_i . h_j (as softplus), weighted
w_ij = |S| / |S_1| for similar pairs and |S| / |S_0| for dissimilar ones (the paper's weights), so that the
many dissimilar pairs do not drown the few similar ones. Divided by |S|, the weighted sum is the mean over the
similar pairs plus the mean over the dissimilar pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deephash.methods.deep import (
    HashHead,
    HashLoss,
    HashOutput,
    HeadOutput,
    distinct_pairs,
    masked_mean,
    similarity,
)
from deephash.utils.checks import check_int, check_number


def continuation_scale(step: int, step_size: int, gamma: float, power: float, init_scale: float) -> float:
    """beta before the batch of global step ``step``: init_scale (1 + gamma t)^power, t the last multiple of
    ``step_size`` reached by the iteration count (``step + 1``: the authors count from 1)."""
    t = (step + 1) // step_size * step_size
    return init_scale * (1.0 + gamma * t) ** power


class HashNetHead(HashHead):
    """h = tanh(beta Linear(F7)), beta a buffer (saved in checkpoints) that :meth:`update` sets each step."""

    name = "hashnet"
    code_rule = "sign"

    def __init__(
        self,
        in_features: int,
        bits: int,
        num_classes: int,
        *,
        init: str = "torch",
        step_size: int = 200,
        gamma: float = 0.005,
        power: float = 0.5,
        init_scale: float = 1.0,
    ) -> None:
        super().__init__(in_features, bits, num_classes, init=init)
        self.step_size = check_int(step_size, "model.net.head.step_size", 1)
        self.gamma = check_number(gamma, "model.net.head.gamma")
        self.power = check_number(power, "model.net.head.power")
        self.init_scale = check_number(init_scale, "model.net.head.init_scale")
        self.register_buffer("scale", torch.tensor(self.init_scale))

    def update(self, step: int) -> None:
        self.scale.fill_(continuation_scale(step, self.step_size, self.gamma, self.power, self.init_scale))

    def forward(self, f7: torch.Tensor) -> HeadOutput:
        return HeadOutput(torch.tanh(self.scale * self.latent(f7)), None)


class HashNetLoss(HashLoss):
    """Weighted pairwise negative log-likelihood on alpha h_i . h_j; ``alpha`` None: 10 / bits, the authors'
    ``sigmoid_param`` (so alpha h_i . h_j spans [-10, 10] whatever the code length)."""

    def __init__(self, bits: int, num_classes: int, alpha: float | None = None) -> None:
        super().__init__(bits, num_classes)
        self.alpha = 10.0 / bits if alpha is None else check_number(alpha, "model.loss.alpha")

    def forward(self, out: HashOutput, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        h = out.latent
        product = self.alpha * (h @ h.T)
        s = similarity(labels)
        nll = F.softplus(product) - s * product
        pairs = distinct_pairs(len(h), h.device)
        return masked_mean(nll, pairs & (s > 0)) + masked_mean(nll, pairs & (s == 0))
