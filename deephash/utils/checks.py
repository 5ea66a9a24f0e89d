"""The checks behind every config value, argument and CLI option that must be a whole number or a number."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from deephash.utils.errors import ConfigError


def check_int(value: Any, name: str, low: int = 1, high: int | None = None) -> int:
    """``value`` as an int in ``[low, high]``, or a one-line ConfigError naming ``name``.

    Python and numpy integers pass; bools, floats (even 2.0) and strings do not, so a typo in a config
    never truncates silently.
    """
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < low or (high is not None and value > high):
        bound = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be an integer {bound}, got {value!r}")
    return int(value)


def check_number(value: Any, name: str, low: float = 0.0, high: float | None = None) -> float:
    """``value`` as a finite float in ``[low, high]``, or a one-line ConfigError naming ``name``. Ints and
    floats pass; bools, strings, NaN and infinities do not."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not ok or not np.isfinite(value) or value < low or (high is not None and value > high):
        bound = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise ConfigError(f"{name} must be a number {bound}, got {value!r}")
    return float(value)


def positive_int_arg(text: str) -> int:
    """argparse ``type=`` for options that take an integer >= 1 (argparse prints the one-line error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value
