"""Shared entry-point plumbing: turn user errors into one line on stderr and exit status 2.

Argparse mains are decorated with :func:`exit_on_user_error`; Hydra mains call :func:`run_hydra_task`.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from omegaconf import DictConfig

from deephash.utils.errors import DeephashError

T = TypeVar("T")


def exit_on_user_error(fn: Callable[..., T]) -> Callable[..., T]:
    """For argparse mains: print ``error: <message>`` for a :class:`DeephashError` and exit 2, without a
    traceback."""

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


def run_hydra_task(
    task: Callable[[DictConfig], dict[str, Any]],
    cfg: DictConfig,
    *,
    on_failure: Callable[[DictConfig, BaseException], None] | None = None,
    report: Callable[[dict[str, Any]], None] | None = None,
) -> float | None:
    """The body of every Hydra main: run ``task(cfg)``, ``report`` its result (the metrics table by
    default) and return the scalar a sweeper optimises (``cfg.optimized_metric``, a dotted key).

    On failure ``on_failure`` records it; a user error then exits 2 with one line. In a multirun the
    exception propagates instead, so Hydra's launcher marks only this job failed and goes on with the others.
    """
    from deephash.runs import optimized_value, print_summary

    try:
        result = task(cfg)
        (report or print_summary)(result)
        return optimized_value(result, cfg.get("optimized_metric"))
    except BaseException as err:
        if on_failure is not None and not isinstance(err, KeyboardInterrupt):
            on_failure(cfg, err)
        if isinstance(err, DeephashError) and not _is_multirun():
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)
        raise
