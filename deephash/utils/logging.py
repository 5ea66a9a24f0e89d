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


# Lightning's start-up chatter that says nothing about this run (the hardware lines are in the run's config,
# the advert and the checkpoint-restore notes are noise on a console).
_LIGHTNING_CHATTER = (
    "GPU available:",
    "TPU available:",
    "💡 Tip:",
    "Restoring states from the checkpoint path",
    "Loaded model weights from the checkpoint",
)


def _drop_chatter(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_LIGHTNING_CHATTER)


def quiet_third_party() -> None:
    """Silence what the libraries under deephash print at INFO that a user need not read: FAISS's loader
    (which reports an optional AVX512 build missing as a ``ModuleNotFoundError`` line), Lightning's
    "Seed set to" line (the seed is in the run's config), hardware lines and litlogger advert, and Lightning's ``_pytree`` deprecation warning (raised inside
    Lightning, not fixable here). Warnings and errors still get through."""
    import warnings

    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    logging.getLogger("lightning_fabric.utilities.seed").setLevel(logging.WARNING)  # "Seed set to 42"
    for name in ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if _drop_chatter not in logger.filters:
            logger.addFilter(_drop_chatter)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
