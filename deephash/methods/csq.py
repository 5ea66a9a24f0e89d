"""``csq``: Central Similarity Quantization (Yuan et al., CVPR 2020).

Each class gets a hash centre, a +-1 code of k bits, the centres pairwise far apart; the network pulls the
relaxed code h = tanh(W F7 + b) of every image to its class's centre. The loss is the binary cross-entropy
between (h + 1) / 2 and (c + 1) / 2, averaged over bits and images (the paper's central similarity, as the
authors' code computes it with ``BCELoss``), plus lambda (|h| - 1)^2 averaged the same way (the quantization
term of the authors' ``train.py``; the paper writes it as the smoother log cosh(|h| - 1)).
Codes are sign(h).

Centres (the paper's algorithm 1): when 2 x classes <= k and k is a power of 2, the rows of the Hadamard
matrix H_k and of -H_k, pairwise k/2 apart (or k, for a row and its negation). Otherwise random +-1 codes
(fair coins), drawn one at a time from a seeded generator and kept when at least ceil(k/2) bits from every
centre kept so far; if that fails (too many classes for the code length: at most 2k codes of k bits can be
k/2 apart), the least distance is lowered one bit at a time, with a warning. The centres are a buffer of the
loss, saved with the checkpoint.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from deephash.methods.deep import HashHead, HashLoss, HashOutput, HeadOutput
from deephash.utils.checks import check_int, check_number
from deephash.utils.logging import get_logger

log = get_logger(__name__)

# random centres: candidates drawn per block, blocks tried per centre, fresh starts per least distance
_BLOCK, _BLOCKS, _RESTARTS = 256, 16, 20


def hadamard(k: int) -> np.ndarray:
    """Sylvester's Hadamard matrix ``(k, k)`` of +-1, k a power of 2: rows pairwise orthogonal, k/2 bits apart."""
    matrix = np.ones((1, 1), dtype=np.int64)
    while len(matrix) < k:
        matrix = np.block([[matrix, matrix], [matrix, -matrix]])
    return matrix


def hash_centres(num_classes: int, bits: int, seed: int = 0) -> torch.Tensor:
    """``(num_classes, bits)`` float +-1 centres: Hadamard rows where they suffice, else seeded random codes
    pairwise at least ceil(bits / 2) apart (less, with a warning, where no such set was found)."""
    if 2 * num_classes <= bits and bits & (bits - 1) == 0:
        rows = np.concatenate([hadamard(bits), -hadamard(bits)])[:num_classes]
        return torch.from_numpy(rows).float()
    rng = np.random.default_rng(seed)
    wanted = math.ceil(bits / 2)
    for distance in range(wanted, -1, -1):
        for _ in range(_RESTARTS):
            centres = _draw_centres(rng, num_classes, bits, distance)
            if centres is not None:
                if distance < wanted:
                    log.warning(
                        "csq: no %d random centres of %d bits pairwise %d bits apart were found; they are at "
                        "least %d apart",
                        num_classes,
                        bits,
                        wanted,
                        distance,
                    )
                return torch.from_numpy(centres).float()
    raise AssertionError("unreachable: any codes are at least 0 bits apart")


def _draw_centres(rng: np.random.Generator, n: int, bits: int, distance: int) -> np.ndarray | None:
    """n random +-1 codes, each the first candidate at least ``distance`` bits from those before it, or None
    when some centre found no such candidate among ``_BLOCKS x _BLOCK`` draws."""
    centres = np.empty((0, bits))
    while len(centres) < n:
        for _ in range(_BLOCKS):
            candidates = rng.integers(0, 2, (_BLOCK, bits)) * 2.0 - 1.0
            hamming = (bits - candidates @ centres.T) / 2  # (block, kept) bits that differ
            fits = np.flatnonzero((hamming >= distance).all(axis=1))
            if len(fits):
                centres = np.vstack([centres, candidates[fits[0]]])
                break
        else:
            return None
    return centres


class CSQHead(HashHead):
    """h = tanh(Linear(F7)); codes sign(h)."""

    name = "csq"
    code_rule = "sign"

    def forward(self, f7: torch.Tensor) -> HeadOutput:
        return HeadOutput(torch.tanh(self.latent(f7)), None)


class CSQLoss(HashLoss):
    """Binary cross-entropy of (h + 1) / 2 against the class centre's bits, plus ``quantization_weight`` times
    the mean of (|h| - 1)^2; ``seed`` draws the random centres (unused for Hadamard ones)."""

    centres: torch.Tensor

    def __init__(self, bits: int, num_classes: int, quantization_weight: float = 0.05, seed: int = 0) -> None:
        super().__init__(bits, num_classes)
        self.quantization_weight = check_number(quantization_weight, "model.loss.quantization_weight")
        self.register_buffer(
            "centres", hash_centres(num_classes, bits, check_int(seed, "model.loss.seed", 0))
        )

    def forward(self, out: HashOutput, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        h = out.latent
        target = (self.centres[labels] + 1) / 2
        # BCE is not autocast-safe (it refuses float16 inputs on CUDA): computed in float32 (h already is)
        with torch.autocast(device_type=h.device.type, enabled=False):
            central = F.binary_cross_entropy(((h.float() + 1) / 2).clamp(0, 1), target.float())
        quantization = ((h.abs() - 1) ** 2).mean()
        return central + self.quantization_weight * quantization
