"""The training order, resumable at any batch, drawn exactly as ``DataLoader(shuffle=True, generator=...)`` draws it.

A DataLoader with ``shuffle=True`` draws each epoch's permutation from its generator, which advances with every
epoch; a resumed process would start that generator again from its seed, and an epoch resumed in its middle
would start again from its first batch. :class:`ResumableRandomSampler` is torch's ``RandomSampler`` (the same
draws from the same generator, so an uninterrupted run trains on what it trained on before) that also records
what a resume needs: the generator's state now and before the epoch's permutation.

The random augmentation is drawn from torch's global stream, which the checkpoint holds
(:mod:`deephash.models.resume`); Lightning loads a sized loader's batches one at a time, so the stream saved
after batch ``k`` is the one batch ``k + 1`` draws from. Augmentation drawn in DataLoader workers comes from the
workers' own streams, which start again with a resume: exact resume holds with ``num_workers: 0`` (or without
random augmentation).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import RandomSampler


class ResumableRandomSampler(RandomSampler):
    """``RandomSampler(range(n), generator=generator)`` whose position :meth:`state_dict` records and
    :meth:`resume` continues from; ``batch_size``: the loader's."""

    def __init__(self, n: int, generator: torch.Generator, batch_size: int) -> None:
        super().__init__(range(n), generator=generator)
        self.batch_size = int(batch_size)
        self._epoch_state: torch.Tensor | None = None  # the generator before this epoch's permutation
        self._resume: tuple[torch.Tensor, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "epoch_generator": self._epoch_state}

    def resume(self, state: dict[str, Any], batches: int | None) -> None:
        """Continue from ``state`` (:meth:`state_dict`): within its epoch after ``batches`` trained batches, or,
        with ``batches`` None, with the epoch after it."""
        if batches is None or state.get("epoch_generator") is None:
            self.generator.set_state(state["generator"])
        else:
            self._resume = (state["epoch_generator"], batches)

    def __iter__(self) -> Iterator[int]:
        resume, self._resume = self._resume, None
        if resume is not None:  # the DataLoader drew its workers' base seed since: draw the permutation again
            self.generator.set_state(resume[0])
        self._epoch_state = self.generator.get_state()
        skip = resume[1] * self.batch_size if resume is not None else 0
        for position, k in enumerate(super().__iter__()):
            if position >= skip:
                yield k


def resume_position(trainer: Any) -> int | None:
    """The batches already trained in the epoch ``trainer``'s fit continues, or None when it starts a new
    epoch (or without a trainer). Lightning restores its loops' progress before it asks for the training loader."""
    loop = getattr(trainer, "fit_loop", None)
    if loop is None:
        return None
    epochs = loop.epoch_progress.current
    if epochs.started <= epochs.processed:
        return None
    return int(loop.epoch_loop.batch_progress.current.processed)
