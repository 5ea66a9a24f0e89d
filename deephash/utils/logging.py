"""Rank-zero aware logging through Python's ``logging``."""

from __future__ import annotations

import logging

from lightning_utilities.core.rank_zero import rank_zero_only


def get_logger(name: str) -> logging.Logger:
    """A logger whose info/warning calls only emit on global rank 0 under DDP."""
    logger = logging.getLogger(name)
    if getattr(logger, "_deephash_rank_zero", False):
        return logger
    logger._deephash_rank_zero = True  # type: ignore[attr-defined]
    for level in ("debug", "info", "warning", "error", "exception", "critical"):
        setattr(logger, level, rank_zero_only(getattr(logger, level)))
    return logger
