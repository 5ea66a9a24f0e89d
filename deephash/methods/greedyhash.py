"""``greedyhash``: GreedyHash (Su, Zhang, Han and Tian, NeurIPS 2018).

The hash layer h = W F7 + b0 is binarised in the forward pass, b = sign(h), and the classifier sees only the
codes: logits = Linear(b). sign has no useful gradient, so the backward pass hands the gradient of b to h
unchanged (a straight-through estimator: the paper's greedy step, h moves the way b should). The loss is softmax
cross-entropy on those logits plus alpha |h - sign(h)|^3 (the paper's cubic penalty, p = 3), which keeps h
near the codes it rounds to. Codes are sign(h).

The authors' classifier has no bias; this one keeps the contract's (a learned offset per class of the logits;
the codes, all that retrieval uses, are sign(h) either way).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deephash.methods.deep import HashHead, HashLoss, HashOutput, HeadOutput, sign_codes
from deephash.utils.checks import check_number


class StraightThroughSign(torch.autograd.Function):
    """sign(h) forward (0 counts as +1, as the stored bits); the incoming gradient passed through unchanged."""

    @staticmethod
    def forward(ctx, h: torch.Tensor) -> torch.Tensor:
        return sign_codes(h)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class GreedyHashHead(HashHead):
    """h = Linear(F7); logits = classifier(sign(h)) with a straight-through gradient."""

    name = "greedyhash"
    code_rule = "sign"
    has_classifier = True

    def forward(self, f7: torch.Tensor) -> HeadOutput:
        h = self.latent(f7)
        return HeadOutput(h, self.classifier(StraightThroughSign.apply(h)))


class GreedyHashLoss(HashLoss):
    """Cross-entropy on the classifier over the signed codes plus ``alpha`` times the mean of |h - sign(h)|^3."""

    def __init__(self, bits: int, num_classes: int, alpha: float = 0.1) -> None:
        super().__init__(bits, num_classes)
        self.alpha = check_number(alpha, "model.loss.alpha")

    def forward(self, out: HashOutput, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        h = out.latent
        penalty = (h - sign_codes(h)).abs().pow(3).mean()
        return F.cross_entropy(out.logits, labels) + self.alpha * penalty
