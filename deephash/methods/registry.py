"""Every hashing method by name: deep ones (a head and a loss for ``deephash-train method=<name>``) and
shallow ones (fit/encode for ``deephash-baseline method=<name>``).

Each module of ``deephash.methods`` is imported here, and each method class registers itself by its
``name`` (:data:`~deephash.methods.deep.DEEP_METHODS`, :data:`~deephash.methods.shallow.SHALLOW_METHODS`),
so adding a method is one module plus ``conf/method/<name>.yaml``. A method defined outside the package
registers the same way once its module is imported (Hydra imports it through the YAML's ``_target_``).
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import zipfile
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy as np

import deephash.methods
from deephash.methods.deep import DEEP_METHODS, HashHead
from deephash.methods.shallow import FORMAT_VERSION, SHALLOW_METHODS, HashMethod, validate_bits
from deephash.utils.errors import ConfigError, IndexFormatError

for _module in pkgutil.iter_modules(deephash.methods.__path__):
    importlib.import_module(f"deephash.methods.{_module.name}")

# live, read-only views: the one list of each kind of method
DEEP: Mapping[str, type[HashHead]] = MappingProxyType(DEEP_METHODS)
SHALLOW: Mapping[str, type] = MappingProxyType(SHALLOW_METHODS)
METHODS = SHALLOW  # the shallow methods, under the name deephash-baseline has always used


def method_kind(name: str) -> str | None:
    """``deep``, ``shallow``, or None for a name no method has."""
    return "deep" if name in DEEP else "shallow" if name in SHALLOW else None


def deep_method(name: str) -> type[HashHead]:
    """The head class of deep method ``name``, or a one-line ConfigError naming the choices."""
    if name not in DEEP:
        hint = f" (a shallow method: run it with deephash-baseline method={name})" if name in SHALLOW else ""
        raise ConfigError(f"unknown deep hashing method {name!r}{hint}; expected one of: {', '.join(DEEP)}")
    return DEEP[name]


def build_method(name: str, bits: int, seed: int = 0, **kwargs: Any) -> HashMethod:
    """An unfitted shallow method by ``name``; ``kwargs`` are its options (itq: n_iter)."""
    key = str(name).strip().lower()
    if key not in SHALLOW:
        hint = f" (a deep method: train it with deephash-train method={key})" if key in DEEP else ""
        raise ConfigError(
            f"unknown shallow hashing method {name!r}{hint}, expected one of: {', '.join(SHALLOW)}"
        )
    cls = SHALLOW[key]
    options = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "bits", "seed")]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        accepted = ", ".join(options) if options else "none"
        raise ConfigError(f"{key} got unknown options {unknown}, accepted: {accepted}")
    return cls(validate_bits(bits), seed, **kwargs)


def load_method(path: str | os.PathLike) -> HashMethod:
    """A fitted shallow method from an npz file written by its ``save``."""
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
    if name not in SHALLOW:
        raise IndexFormatError(f"{os.fspath(path)} holds unknown hashing method {name!r}")
    params = {k[len("param_") :]: arrays[k].item() for k in arrays if k.startswith("param_")}
    state = {k[len("state_") :]: arrays[k] for k in arrays if k.startswith("state_")}
    try:
        method = SHALLOW[name](**params)
        method._set_state(int(arrays["dim"]), state)
    except (TypeError, ValueError, KeyError) as err:
        raise IndexFormatError(f"{os.fspath(path)} is a damaged {name} file ({err})") from None
    return method
