"""Build a baseline by name, or reload a fitted one saved with ``method.save(path)``."""

from __future__ import annotations

import inspect
import os
import zipfile
from typing import Any

import numpy as np

from deephash.baselines.base import FORMAT_VERSION, BaseHash, HashMethod, validate_bits
from deephash.baselines.itq import ITQ
from deephash.baselines.lsh import LSH
from deephash.baselines.pcah import PCAH
from deephash.baselines.sh import SH
from deephash.utils.errors import ConfigError, IndexFormatError

METHODS: dict[str, type[BaseHash]] = {cls.name: cls for cls in (LSH, PCAH, ITQ, SH)}


def build_method(name: str, bits: int, seed: int = 0, **kwargs: Any) -> HashMethod:
    """An unfitted baseline: ``name`` in lsh, pcah, itq, sh; ``kwargs`` are method options (itq: n_iter)."""
    key = str(name).strip().lower()
    if key not in METHODS:
        raise ConfigError(f"unknown hashing method {name!r}, expected one of: {', '.join(METHODS)}")
    cls = METHODS[key]
    options = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "bits", "seed")]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        accepted = ", ".join(options) if options else "none"
        raise ConfigError(f"{key} got unknown options {unknown}, accepted: {accepted}")
    return cls(validate_bits(bits), seed, **kwargs)


def load_method(path: str | os.PathLike) -> HashMethod:
    """A fitted baseline from an npz file written by ``save``."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise IndexFormatError(f"no saved hashing method at {os.fspath(path)}") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise IndexFormatError(f"{os.fspath(path)} is not a saved hashing method ({err})") from None
    if "method" not in arrays or int(arrays.get("format_version", -1)) != FORMAT_VERSION:
        raise IndexFormatError(
            f"{os.fspath(path)} is not a saved hashing method (format version {FORMAT_VERSION})"
        )
    name = str(arrays["method"])
    if name not in METHODS:
        raise IndexFormatError(f"{os.fspath(path)} holds unknown hashing method {name!r}")
    params = {k[len("param_") :]: arrays[k].item() for k in arrays if k.startswith("param_")}
    state = {k[len("state_") :]: arrays[k] for k in arrays if k.startswith("state_")}
    try:
        method = METHODS[name](**params)
        method._set_state(int(arrays["dim"]), state)
    except (TypeError, ValueError, KeyError) as err:
        raise IndexFormatError(f"{os.fspath(path)} is a damaged {name} file ({err})") from None
    return method
