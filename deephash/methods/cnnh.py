"""CNNH and CNNH+ (Xia, Pan, Lai, Liu & Yan, AAAI 2014): the compared deep methods of the paper's figures 4 and 6.

Stage 1 (:func:`approximate_codes`, run in :meth:`CNNHLoss.setup` on the training split before the network
trains) factorises the label similarity of the ``n`` training images, ``S_ij = +1`` for a shared label and
``-1`` otherwise, as ``min ||S - H H^T / q||_F^2`` over ``H`` in ``[-1, 1]^(n x q)`` by coordinate descent: one
entry ``H_ij`` at a time, in a random order, moves by the Newton step of the objective along that coordinate,
clipped to the box. The change of the objective along one coordinate is a quartic in the step whose
coefficients cost ``O(q)`` (kept from ``H^T H``, the class sums of ``H`` and its column sums, since ``S`` comes
from labels), so each step is checked exactly and halved until it lowers the objective: the objective never
rises. ``sign(H)`` are the target codes, kept in the loss's buffers (and so in every checkpoint).

Stage 2: the network learns them. The hash layer is ``sigmoid(Linear(F7))`` (codes: >= 0.5) trained with
binary cross-entropy against the targets, looked up by each sample's pool index; CNNH+ adds the class labels
as outputs beside the hash outputs on the shared layer (a classifier on F7, softmax cross-entropy).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deephash.methods.deep import HashHead, HashLoss, HashOutput, HeadOutput
from deephash.utils.checks import check_int
from deephash.utils.errors import ConfigError
from deephash.utils.logging import get_logger

log = get_logger(__name__)
HALVINGS = 20  # step halvings tried before a coordinate is left as it is
EPS = 1e-7  # clamp of the sigmoid outputs inside the logarithms


class CNNHHead(HashHead):
    """``sigmoid(Linear(F7, bits))``: the hash outputs."""

    name = "cnnh"
    code_rule = "threshold"

    def forward(self, f7: torch.Tensor) -> HeadOutput:
        return HeadOutput(torch.sigmoid(self.latent(f7)), None)


class CNNHPlusHead(CNNHHead):
    """The hash outputs and, beside them on F7, the class outputs (CNNH+)."""

    name = "cnnh_plus"
    has_classifier = True

    def __init__(self, in_features: int, bits: int, num_classes: int, *, init: str = "torch") -> None:
        super().__init__(in_features, bits, num_classes, init=init)
        # the class outputs are a second output layer on the shared representation, not a layer on the codes
        self.classifier = nn.Linear(in_features, num_classes)
        if init == "caffe":
            nn.init.normal_(self.classifier.weight, 0.0, 0.01)
            nn.init.zeros_(self.classifier.bias)

    def forward(self, f7: torch.Tensor) -> HeadOutput:
        return HeadOutput(torch.sigmoid(self.latent(f7)), self.classifier(f7))


class CNNHLoss(HashLoss):
    """Binary cross-entropy of the hash outputs against the stage-1 targets, plus ``label_weight`` times the
    softmax cross-entropy of the class outputs (CNNH+; 0 for CNNH).

    Buffers: ``pool_index (n,)`` (sorted) and ``targets (n, bits)`` of the training images, ``class_targets
    (classes, bits)`` (each class's majority target, what a sample outside the training split is scored
    against, e.g. in validation) and ``objective`` (stage 1's objective, ``||S - H H^T / q||^2 / n^2``, before
    the first sweep and after each)."""

    def __init__(
        self,
        bits: int,
        num_classes: int,
        label_weight: float = 0.0,
        sweeps: int = 20,
        tol: float = 1e-4,
        seed: int = 0,
    ) -> None:
        super().__init__(bits, num_classes)
        if isinstance(label_weight, bool) or not isinstance(label_weight, (int, float)) or label_weight < 0:
            raise ConfigError(f"model.loss.label_weight must be a number >= 0, got {label_weight!r}")
        self.label_weight = float(label_weight)
        self.sweeps = check_int(sweeps, "model.loss.sweeps", 1)
        self.tol = float(tol)
        self.seed = check_int(seed, "model.loss.seed", 0)
        self.register_buffer("pool_index", torch.zeros(0, dtype=torch.long))
        self.register_buffer("targets", torch.zeros(0, bits))
        self.register_buffer("class_targets", torch.zeros(num_classes, bits))
        self.register_buffer("objective", torch.zeros(0))

    def setup(self, labels: torch.Tensor, index: torch.Tensor) -> None:
        """Stage 1 on the training split; skipped when the buffers already hold its targets (a resumed run)."""
        order = torch.argsort(index)
        index, labels = index[order].long(), labels[order].long()
        if torch.equal(self.pool_index.cpu(), index.cpu()):
            return
        log.info("CNNH stage 1: target codes of %d training images, %d bits", len(index), self.bits)
        H, objective = approximate_codes(labels.cpu().numpy(), self.bits, self.sweeps, self.tol, self.seed)
        targets = torch.from_numpy(H >= 0).float()
        log.info(
            "CNNH stage 1: objective %.4f -> %.4f in %d sweeps",
            objective[0],
            objective[-1],
            len(objective) - 1,
        )
        class_targets = torch.zeros(self.num_classes, self.bits)
        for c in labels.unique():
            class_targets[c] = (targets[labels == c].mean(dim=0) >= 0.5).float()
        device = self.targets.device
        self.pool_index = index.to(device)
        self.targets = targets.to(device)
        self.class_targets = class_targets.to(device)
        self.objective = torch.as_tensor(objective, dtype=torch.float32, device=device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # the buffers' sizes are the training split's: take them from the checkpoint
        for name in ("pool_index", "targets", "objective"):
            if prefix + name in state_dict:
                setattr(
                    self, name, torch.empty_like(state_dict[prefix + name], device=getattr(self, name).device)
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def lookup(self, index: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Targets ``(B, bits)`` in {0, 1} of the samples at pool ``index``; a sample outside the training split
        gets its class's majority target."""
        if self.pool_index.numel() == 0:
            raise RuntimeError("CNNH has no target codes: setup(labels, index) runs stage 1 before training")
        pos = torch.searchsorted(self.pool_index, index).clamp(max=self.pool_index.numel() - 1)
        known = self.pool_index[pos] == index
        return torch.where(known[:, None], self.targets[pos], self.class_targets[labels])

    def forward(self, out: HashOutput, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        target = self.lookup(index, labels)
        p = out.latent.float().clamp(EPS, 1 - EPS)
        # written out: F.binary_cross_entropy refuses to run under autocast
        loss = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
        if self.label_weight and out.logits is not None:
            loss = loss + self.label_weight * F.cross_entropy(out.logits, labels)
        return loss


def approximate_codes(
    labels: np.ndarray, bits: int, sweeps: int = 20, tol: float = 1e-4, seed: int = 0
) -> tuple[np.ndarray, list[float]]:
    """Stage 1: ``H (n, bits)`` in [-1, 1] with ``H H^T / bits`` close to the label similarity, and the objective
    ``||S - H H^T / q||_F^2 / n^2`` before the first sweep and after each (it never rises).

    ``H`` starts uniform in [-1, 1]; a sweep visits every entry once, the samples in a random order. With
    ``R = H H^T - q S`` and ``u`` column ``j`` of ``H``, moving ``H_ij`` by ``d`` changes ``||R||^2`` by
    ``4 d R_i.u + d^2 (2 ||u||^2 + 2 H_ij^2 + 2 R_ii) + 4 d^3 H_ij + d^4``, where ``R_i.u = h_i . (H^T H)_j -
    q (2 C[y_i, j] - T_j)`` with ``C`` the class sums and ``T`` the column sums of ``H``. Stops after ``sweeps``
    sweeps or when one lowers the objective by less than ``tol`` (relative).
    """
    rng = np.random.default_rng(seed)
    _, y = np.unique(labels, return_inverse=True)
    n, q = len(y), bits
    H = rng.uniform(-1.0, 1.0, (n, q))
    G = H.T @ H
    C = np.zeros((y.max() + 1, q))
    np.add.at(C, y, H)
    T = H.sum(axis=0)
    norms = (H**2).sum(axis=1)
    scale = float(q * q) * n * n

    def objective() -> float:
        return float((G**2).sum() - 2 * q * (2 * (C**2).sum() - (T**2).sum()) + q * q * n * n)

    f = objective()
    history = [f / scale]
    for _ in range(sweeps):
        for i in rng.permutation(n):
            h, c = H[i], C[y[i]]
            for j in range(q):
                f += _coordinate_step(h, c, G, T, norms, i, j, q)
        f = objective()  # recomputed from the sums each sweep, so rounding does not accumulate
        history.append(f / scale)
        if history[-2] - history[-1] <= tol * history[-2]:
            break
    return H, history


def _coordinate_step(
    h: np.ndarray, c: np.ndarray, G: np.ndarray, T: np.ndarray, norms: np.ndarray, i: int, j: int, q: int
) -> float:
    """One coordinate of :func:`approximate_codes`: updates ``h = H[i]``, ``c = C[y_i]``, ``G``, ``T`` and ``norms``
    in place; returns the change of ``||H H^T - q S||^2`` (<= 0)."""
    hij = float(h[j])
    r_u = float(h @ G[:, j]) - q * (2.0 * float(c[j]) - float(T[j]))
    curvature = 2.0 * (float(G[j, j]) + hij * hij + float(norms[i]) - q)  # the d^2 coefficient
    low, high = -1.0 - hij, 1.0 - hij
    if curvature > 0:
        d = min(max(-4.0 * r_u / (2.0 * curvature), low), high)
    else:
        d = low if r_u > 0 else high
    for _ in range(HALVINGS):
        change = d * (4.0 * r_u + d * (curvature + d * (4.0 * hij + d)))
        if change < 0:
            break
        d *= 0.5
    else:
        return 0.0
    G[j, :] += d * h
    G[:, j] += d * h
    G[j, j] += d * d
    norms[i] += 2.0 * d * hij + d * d
    h[j] = hij + d
    c[j] += d
    T[j] += d
    return change
