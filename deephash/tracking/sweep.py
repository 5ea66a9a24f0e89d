"""The jobs of a sweep on disk, and which of them ran the same setting (so only their seeds differ).

A job is a directory holding ``metrics.json`` or ``.hydra/config.yaml`` (a job that crashed before
writing its metrics still has the latter). metrics.json holds the run's status, dataset, backbone, method,
features (baselines), bits, seed, val/test accuracy and, under ``modes``, each search mode's retrieval
metrics. ``.hydra/overrides.yaml`` holds the job's command-line overrides.

Two jobs run the same *setting* when their dataset, backbone, method and features agree and so does every
override swept across the jobs, except the seed, the code length (the x axis of the comparison) and the
overrides that only say where a job writes, logs or resumes from. Only jobs of one setting are averaged.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from deephash.utils.errors import ConfigError

INFO = ("dataset", "backbone", "method", "features", "bits", "seed")
SETTING_INFO = ("dataset", "backbone", "method", "features")
SEED_KEYS = frozenset({"seed"})
BITS_KEYS = frozenset({"bits", "model.net.bits", "model.bits"})
# overrides (or their top-level group) that change where a job writes, logs or resumes from, not its result;
# ckpt_path is a resumed checkpoint, or the per-seed model whose F7 a baseline hashes
PLACE_KEYS = frozenset(
    {"ckpt_path", "task_name", "logger", "paths", "hydra", "tags", "extras", "group", "name"}
)
MODE_ORDER = ("hamming", "hierarchical", "euclidean")
NO_METRICS = "no metrics.json: the job stopped before writing results (or is still running)"

Setting = tuple[tuple[str, Any], ...]


@dataclass
class Job:
    """One job of a sweep: ``name`` is its path relative to the sweep directory.

    overrides: ``{key: value}`` from ``.hydra/overrides.yaml`` (``+``/``++``/``~`` prefixes dropped).
    """

    name: str
    path: Path
    status: str
    info: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    overrides: dict[str, str] = field(default_factory=dict)


def dataset_from_target(target: str) -> str:
    """Datamodule class path -> dataset name: ``deephash.data.mnist.MNISTDataModule`` -> ``mnist``."""
    cls = str(target).rsplit(".", 1)[-1]
    return re.sub(r"DataModule$", "", cls).lower() or cls.lower()


def find_jobs(root: str | os.PathLike, skip: Sequence[str] = ()) -> list[Path]:
    """Job directories under ``root`` (``root`` itself for a single run), in natural order (2 before 10);
    ``skip``: folders of ``root`` left out (``methods``)."""
    jobs = []
    for dirpath, dirnames, filenames in os.walk(root):
        path = Path(dirpath)
        if path == Path(root):
            dirnames[:] = [d for d in dirnames if d not in skip]
        if "metrics.json" in filenames or (path / ".hydra" / "config.yaml").is_file():
            jobs.append(path)
            dirnames.clear()  # a job's own subfolders (index/, checkpoints/, wandb/) are not jobs
        else:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return sorted(jobs, key=lambda p: natural_key(p.relative_to(root).as_posix()))


def load_job(path: Path, root: Path) -> Job:
    """Read a job's metrics.json, falling back to its Hydra config for what a failed job never wrote."""
    name = path.relative_to(root).as_posix() if path != root else path.name
    metrics: dict[str, Any] = {}
    error = ""
    metrics_path = path / "metrics.json"
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, ValueError) as err:
            error = f"unreadable metrics.json: {err}"
        if not isinstance(metrics, dict):
            metrics, error = {}, "metrics.json does not hold a JSON object"
    else:
        error = NO_METRICS
    if error:
        status = "failed"
    else:
        status = str(metrics.get("status") or ("completed" if metrics.get("modes") else "unknown"))
        error = " ".join(str(metrics.get("error") or "").split())
    known = {k: metrics[k] for k in INFO if metrics.get(k) not in (None, "")}
    info = {**_config_info(path / ".hydra" / "config.yaml"), **known}
    overrides = read_overrides(path / ".hydra" / "overrides.yaml")
    return Job(name, path, status, info, metrics=metrics, error=error, overrides=overrides)


def load_jobs(multirun_dir: str | os.PathLike, skip: Sequence[str] = ()) -> list[Job]:
    root = Path(multirun_dir)
    if not root.exists():
        raise ConfigError(
            f"multirun directory {root} does not exist: pass a sweep folder (multirun/<task>/<time>)"
        )
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory: pass a sweep folder (multirun/<task>/<time>)")
    jobs = [load_job(path, root) for path in find_jobs(root, skip)]
    if not jobs:
        raise ConfigError(
            f"no runs found in {root}: expected job folders with metrics.json or .hydra/config.yaml"
        )
    return jobs


def read_overrides(path: Path) -> dict[str, str]:
    """``.hydra/overrides.yaml`` (a list of ``key=value``) -> ``{key: value}``; ``{}`` when missing or broken."""
    try:
        items = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    out = {}
    for item in items if isinstance(items, list) else []:
        key, sep, value = str(item).partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    """Override keys set differently across ``jobs`` (or only in some), seed and code length included;
    the keys of :data:`PLACE_KEYS` left out."""
    keys = dict.fromkeys(k for job in jobs for k in job.overrides)
    return [
        k
        for k in keys
        if k.split(".")[0] not in PLACE_KEYS and len({job.overrides.get(k) for job in jobs}) > 1
    ]


def setting(job: Job, swept: Sequence[str]) -> Setting:
    """What ``job`` ran apart from its seed and code length: its dataset, backbone, method and features,
    then its value (``None``: not set) of each swept override."""
    info = tuple((k, None if job.info.get(k) is None else str(job.info[k])) for k in SETTING_INFO)
    return info + tuple((k, job.overrides.get(k)) for k in swept if k not in SEED_KEYS and k not in BITS_KEYS)


def setting_overrides(key: Setting) -> str:
    """The swept overrides of a setting as ``lr=0.01 batch=64`` (``-`` when none)."""
    parts = [f"{k}={v}" for k, v in key[len(SETTING_INFO) :] if v is not None]
    return " ".join(parts) or "-"


def setting_labels(keys: Sequence[Setting]) -> dict[Setting, str]:
    """A short legend name per setting: the info that varies across ``keys``, then the overrides that tell
    apart settings sharing that info (``k=default`` where one of them leaves ``k`` unset)."""
    n = len(SETTING_INFO)
    varying = [i for i in range(n) if len({key[i][1] for key in keys}) > 1]
    labels = {}
    for key in keys:
        peers = [other for other in keys if other[:n] == key[:n]]
        parts = [str(key[i][1]) for i in varying if key[i][1] is not None]
        for i in range(n, len(key)):
            if len({other[i][1] for other in peers}) > 1:
                parts.append(f"{key[i][0]}={'default' if key[i][1] is None else key[i][1]}")
        labels[key] = " ".join(parts)
    return labels


def metric_value(mode_metrics: Mapping[str, Any], metric: str) -> float | None:
    """``mAP``, ``mAP@1000``, ``precision@10`` (or ``precision@k/10``), ``queries_per_second``... of one mode."""
    path = metric.split("/")
    if len(path) == 1 and (m := re.fullmatch(r"precision@(\d+)", metric)):
        path = ["precision@k", m.group(1)]
    value: Any = mode_metrics
    for key in path:
        value = value.get(key) if isinstance(value, Mapping) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def result_modes(jobs: Sequence[Job]) -> list[str]:
    """Search modes with ranking metrics in any job (hamming, hierarchical, euclidean first)."""
    found = {
        m
        for j in jobs
        for m, v in (j.metrics.get("modes") or {}).items()
        if isinstance(v, Mapping) and "mAP" in v
    }
    return [m for m in MODE_ORDER if m in found] + sorted(found - set(MODE_ORDER))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (0 for a single seed)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def completed(jobs: Sequence[Job]) -> list[Job]:
    return [j for j in jobs if j.status == "completed"]


def natural_key(text: str) -> list[Any]:
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part
    ]


def _config_info(path: Path) -> dict[str, Any]:
    """dataset/backbone/method/features/bits/seed from a saved Hydra config (interpolations left unresolved)."""
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(path)
    except Exception:  # noqa: BLE001 - a broken config only costs the columns it would fill
        return {}

    def get(key: str) -> Any:
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        return value if isinstance(value, (str, int, float)) else None

    def first(*keys: str) -> Any:
        return next((v for v in map(get, keys) if v is not None), None)

    target = get("data._target_")
    # model.method: a deep method; method.name: a shallow one; a training run of the releases before
    # methods (network settings flat under model) trained the paper's latent layer
    legacy = "latent" if get("model._target_") and get("model.net._target_") is None else None
    info = {
        "dataset": get("dataset") or (dataset_from_target(target) if target else None),
        "backbone": first("model.net.backbone", "model.backbone"),
        "method": first("model.method", "method.name") or legacy,
        "features": get("features.name"),
        "bits": first("model.net.bits", "model.bits", "bits"),
        "seed": get("seed"),
    }
    return {k: v for k, v in info.items() if v is not None}
