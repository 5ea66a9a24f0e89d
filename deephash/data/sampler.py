"""The training order: a seeded permutation per epoch that a resumed run can pick up in the middle.

A DataLoader's ``shuffle=True`` draws each epoch's order from a generator that advances with every epoch, and a
resumed run starts it again from its seed: the epochs after a resume see the first epoch's order again, and an
epoch resumed in its middle starts again from its first batch. :class:`EpochSampler` derives epoch ``e``'s order
from ``(seed, e)`` alone and skips the batches already trained. Each item also gets a seed of its own, from which
its random augmentation is drawn (:class:`~deephash.data.base.SplitDataset`), so the augmentation does not depend
on which DataLoader worker loads the item or on what the process drew before: the same run, interrupted and
resumed anywhere, trains on the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Sampler

MAX_ITEM_SEED = 2**62


class EpochSampler(Sampler[tuple[int, int]]):
    """``(k, item_seed)`` for every ``k < n`` in epoch ``epoch``'s seeded order, from item ``skip`` on.

    ``set_epoch`` (Lightning calls it before each epoch) selects the epoch; an epoch iterated without one (a
    distributed sampler wrapping this one does not pass it on) is the one after the last. The skip applies once,
    to the epoch it was given for."""

    def __init__(self, n: int, seed: int, epoch: int = 0, skip: int = 0) -> None:
        self.n, self.seed = int(n), int(seed)
        self.epoch, self.skip = int(epoch), int(skip)
        self._iterated = False  # whether the current epoch was iterated since it was set

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.skip = int(epoch), 0
        self._iterated = False

    def order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Epoch ``epoch``'s permutation ``(n,) int64`` and item seeds ``(n,) int64``."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=generator), torch.randint(
            MAX_ITEM_SEED, (self.n,), generator=generator
        )

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self._iterated:
            self.set_epoch(self.epoch + 1)
        self._iterated = True
        order, seeds = self.order(self.epoch)
        start, self.skip = self.skip, 0
        return iter(zip(order[start:].tolist(), seeds[start:].tolist()))


def resume_position(trainer: Any) -> tuple[int, int]:
    """``(epoch, batches already trained in it)`` where ``trainer``'s fit continues: its loops' progress, which
    Lightning restores from the checkpoint before it asks for the training loader; ``(0, 0)`` without a trainer.
    A checkpoint written at the end of an epoch continues with the next one."""
    loop = getattr(trainer, "fit_loop", None)
    if loop is None:
        return 0, 0
    epochs = loop.epoch_progress.current
    mid_epoch = epochs.started > epochs.processed
    return int(epochs.processed), int(loop.epoch_loop.batch_progress.current.processed) if mid_epoch else 0
