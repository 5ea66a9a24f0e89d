"""``mnistcnn``: a batch-normalised CNN for 28x28 digits, cheap enough to train on a few CPU cores.

Three conv blocks (5x5 then two 3x3, each conv -> batch norm -> ReLU -> max pool: 28 -> 14 -> 7 -> 3, the
last pool adaptive), then F7 = ReLU(batch norm(Linear(1152, f7_dim))). About 8.5M multiply-adds per image, a third of
``smallcnn``'s, because it pools before widening; batch norm lets it train at a high learning rate.
"""

from __future__ import annotations

import torch
from torch import nn

WIDTHS = (32, 64, 128)


def _block(in_channels: int, out_channels: int, kernel: int, pool: nn.Module) -> list[nn.Module]:
    # no conv bias: batch norm's shift replaces it
    return [
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        pool,
    ]


class MnistCNN(nn.Module):
    """Images ``(B, in_channels, 28, 28)`` -> F7 ``(B, f7_dim)``, non-negative (a ReLU output, like relu7)."""

    def __init__(self, in_channels: int = 1, f7_dim: int = 512) -> None:
        super().__init__()
        c1, c2, c3 = WIDTHS
        self.conv = nn.Sequential(
            *_block(in_channels, c1, 5, nn.MaxPool2d(2)),
            *_block(c1, c2, 3, nn.MaxPool2d(2)),
            *_block(c2, c3, 3, nn.AdaptiveMaxPool2d(3)),  # 7x7 -> 3x3 (other input sizes too)
            nn.Flatten(),
        )
        self.fc = nn.Sequential(
            nn.Linear(c3 * 3 * 3, f7_dim, bias=False),
            nn.BatchNorm1d(f7_dim),
            nn.ReLU(inplace=True),  # F7
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x))
