"""Shared entry-point plumbing: turn user errors into one line on stderr and exit status 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from omegaconf import DictConfig

from deephash.utils.errors import DeephashError

T = TypeVar("T")


def exit_on_user_error(fn: Callable[..., T]) -> Callable[..., T]:
    """Print ``error: <message>`` for a :class:`DeephashError` and exit 2, without a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DeephashError as err:
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_with_user_errors(
    task: Callable[[DictConfig], dict[str, Any]],
    cfg: DictConfig,
    on_failure: Callable[[DictConfig, BaseException], None] | None = None,
) -> dict[str, Any]:
    """Run a Hydra task; on failure record it, then exit 2 with one line for user errors.

    In a multirun the exception propagates instead, so Hydra's launcher marks only this job failed and
    goes on with the others.
    """
    try:
        return task(cfg)
    except BaseException as err:
        if on_failure is not None and not isinstance(err, KeyboardInterrupt):
            on_failure(cfg, err)
        if isinstance(err, DeephashError) and not _is_multirun():
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        raise
