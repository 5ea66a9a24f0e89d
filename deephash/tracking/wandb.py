"""Weights & Biases tracking: a configured ``WandbLogger`` per run (its results: :mod:`.wandb_results`).

Usage from a training entry point (``conf/logger/wandb.yaml`` builds the logger)::

    loggers = instantiate_loggers(cfg.logger, cfg)  # build_wandb_logger(...) among them
    ...
    log_retrieval_results(loggers, metrics, run_dir)  # deephash.tracking.wandb_results
    log_artifacts(loggers, run_dir, best_checkpoint, run_dir / "index")
    finish(loggers)  # exit_code=1 for a failed job

Every helper accepts a ``WandbLogger``, a list of loggers (the W&B one is picked, none means no-op),
a ``wandb`` run, or ``None`` (the active run), and only acts on global rank 0.

One name per quantity on W&B: Lightning's ``train/*``, ``val/*``, ``test/*`` and ``epoch``; the final retrieval
results as ``retrieval/<mode>/<metric>`` (``precision@10``, not metrics.json's nested ``precision@k``) and
``retrieval/val/<metric>``, written to history once with ``bits`` as their x axis (:data:`METRIC_AXES`).
metrics.json keeps its own names (``val_acc``, ``modes``...); ``wandb_results.wandb_summary`` maps or drops them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import wandb
from lightning_utilities.core.rank_zero import rank_zero_only
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment

from deephash.tracking.sweep import PLACE_KEYS, dataset_from_target
from deephash.utils.errors import ConfigError
from deephash.utils.logging import get_logger

log = get_logger(__name__)

MODES = ("auto", "online", "offline", "disabled")
DEFAULT_BASE_URL = "https://api.wandb.ai"
# define_metric: (key or glob, x axis, summary); x axis None declares an axis
METRIC_AXES: tuple[tuple[str, str | None, str | None], ...] = (
    ("epoch", None, None),
    ("bits", None, None),
    ("train/acc", "epoch", None),
    ("val/*", "epoch", None),
    ("val/acc", "epoch", "max"),
    ("val/loss", "epoch", "min"),
    ("test/*", "epoch", None),
    ("retrieval/*", "bits", None),
    ("bit_balance/*", "bits", None),
)
# W&B's limit on the length of a tag and of a group name
MAX_TAG = 64
MAX_GROUP = 128
_REINIT: Any = (
    "finish_previous" if tuple(int(p) for p in wandb.__version__.split(".")[:2]) >= (0, 19) else True
)


def has_credentials(base_url: str | None = None) -> bool:
    """Whether W&B could log in without a prompt: ``WANDB_API_KEY``, an identity token file, or a netrc entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    token_file = os.environ.get("WANDB_IDENTITY_TOKEN_FILE")
    if token_file and Path(token_file).is_file():
        return True
    host = base_url or os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL
    try:
        from wandb.sdk.lib.wbauth import read_netrc_auth

        return bool(read_netrc_auth(host=host))
    except ImportError:  # wandb < 0.22 keeps the lookup elsewhere; read the netrc file ourselves
        import netrc
        from urllib.parse import urlsplit

        path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
        try:
            creds = netrc.netrc(path).authenticators(urlsplit(host).netloc)
        except (OSError, netrc.NetrcParseError):
            return False
        return bool(creds and creds[2])
    except Exception:  # noqa: BLE001 - a malformed key cannot log in either
        return False


def resolve_mode(mode: str = "auto") -> str:
    """``online``, ``offline`` or ``disabled``: ``WANDB_MODE`` wins, then ``mode``; ``auto`` is online with credentials."""
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode:
        env_mode = {"dryrun": "offline", "run": "online"}.get(env_mode, env_mode)
        if env_mode not in MODES[1:]:
            raise ConfigError(f"WANDB_MODE={env_mode!r} is not one of online, offline, disabled")
        return env_mode
    if mode not in MODES:
        raise ConfigError(f"W&B mode {mode!r} is not one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    return "online" if has_credentials() else "offline"


class DeephashWandbLogger(WandbLogger):
    """A ``WandbLogger`` that declares the run's axes and best-value summaries (:data:`METRIC_AXES`) on start."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Lightning always passes `anonymous`, which W&B deprecates with a warning on every run
        self._wandb_init.pop("anonymous", None)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        started = self._experiment is not None
        run = super().experiment
        if not started:
            define_metrics(run)
        return run


def define_metrics(run: Any) -> None:
    """The epoch and bits axes, ``val/acc`` summarised by its maximum (``val/loss`` by its minimum), and the
    retrieval metrics plotted against bits."""
    if not hasattr(run, "define_metric"):
        return
    for key, axis, summary in METRIC_AXES:
        kwargs: dict[str, Any] = {"step_metric": axis} if axis else {}
        if summary:
            kwargs["summary"] = summary
        run.define_metric(key, **kwargs)


def build_wandb_logger(
    project: str = "deephash",
    entity: str | None = None,
    group: str | None = None,
    name: str | None = None,
    job_type: str = "train",
    tags: Sequence[str] | str | None = (),
    mode: str = "auto",
    save_dir: str | os.PathLike = ".",
    log_model: bool | str = True,
    dataset: str | None = None,
    data_target: str | None = None,
    backbone: str | None = None,
    method: str | None = None,
    bits: int | None = None,
    seed: int | None = None,
    task_name: str = "train",
    sweep_dir: str | None = None,
    overrides: Sequence[str] | None = None,
    **init_kwargs: Any,
) -> WandbLogger:
    """A ``WandbLogger`` for one run (one job of a multirun): a new W&B run, never the previous job's.

    Group: ``group``, else one per sweep (``sweep-<id>`` under a ``wandb agent``, else the Hydra sweep
    directory), else ``<dataset>-<task_name>`` for a single run. Name ``<method>-bits<k>-seed<s>``. Tags:
    ``tags``, the dataset, method, backbone, ``bits<k>`` and the job's overrides (``model.net.bits=48``). ``sweep_dir`` and
    ``overrides`` default to the running Hydra job's. ``dataset`` falls back to the datamodule class in
    ``data_target`` (``...DigitsDataModule`` -> ``digits``). ``log_model`` (Lightning uploading every
    checkpoint) is online only; offline, :func:`log_artifacts` records the best one for ``wandb sync``.
    """
    resolved = resolve_mode(mode)
    if wandb.run is not None:
        # WandbLogger would silently reuse a run left open by the previous job
        wandb.finish()
    hydra_sweep, hydra_overrides = hydra_job()
    sweep_dir = sweep_dir if sweep_dir is not None else hydra_sweep
    overrides = [o for o in (hydra_overrides if overrides is None else overrides) if is_setting(o)]
    dataset = dataset or (dataset_from_target(data_target) if data_target else None) or "unknown"
    user_tags = [tags] if isinstance(tags, str) else list(tags or ())
    extra_tags = [dataset, method, backbone, f"bits{bits}" if bits is not None else None, *overrides]
    all_tags = list(dict.fromkeys(str(t)[:MAX_TAG] for t in [*user_tags, *extra_tags] if t))
    config = {
        "dataset": dataset,
        "method": method,
        "backbone": backbone,
        "bits": bits,
        "seed": seed,
        "task_name": task_name,
        "overrides": " ".join(overrides) or None,
        "sweep_dir": sweep_dir,
    }
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")  # quiet by default; WANDB_SILENT=false shows W&B's lines
    logger = DeephashWandbLogger(
        project=project,
        entity=entity,
        group=run_group(group, sweep_dir, dataset, task_name),
        name=name or default_run_name(bits, seed, method),
        job_type=job_type,
        tags=all_tags,
        save_dir=str(save_dir),
        log_model=log_model if resolved == "online" else False,
        mode=resolved,
        config={k: v for k, v in config.items() if v is not None},
        reinit=_REINIT,
        **init_kwargs,
    )
    if resolved == "offline":
        log.info("W&B runs offline; upload later with: wandb sync %s", save_dir / "wandb" / "offline-run-*")
    return logger


def run_group(group: str | None, sweep_dir: str | None, dataset: str, task_name: str) -> str:
    """The explicit group, else ``sweep-<id>`` under a W&B sweep agent, else the sweep directory (its last
    :data:`MAX_GROUP` characters), else ``<dataset>-<task_name>``."""
    if group:
        return str(group)
    if os.environ.get("WANDB_SWEEP_ID"):
        return f"sweep-{os.environ['WANDB_SWEEP_ID']}"
    if sweep_dir:
        return str(sweep_dir)[-MAX_GROUP:]
    return f"{dataset}-{task_name}"


def logged_group() -> str | None:
    """The W&B group of the run open in this process (what the dashboard of its sweep filters by), or None."""
    run = wandb.run
    return str(run.group) if run is not None and getattr(run, "group", None) else None


def sweep_name(sweep_dir: str | os.PathLike, cwd: str | os.PathLike | None = None) -> str:
    """A sweep directory as its runs' group names it: relative to the directory the sweep was launched from
    (``multirun/train/2024-05-01_12-00-00``), absolute when outside it."""
    path = Path(os.path.abspath(sweep_dir))
    try:
        return path.relative_to(os.path.abspath(cwd or os.getcwd())).as_posix()
    except ValueError:
        return path.as_posix()


def hydra_job() -> tuple[str | None, list[str]]:
    """The running Hydra job's sweep directory (multirun jobs only, see :func:`sweep_name`) and its task
    overrides; ``(None, [])`` outside Hydra."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, []
    hydra_cfg = HydraConfig.get()
    overrides = [str(o) for o in hydra_cfg.overrides.task]
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None, overrides
    # the job's own directory minus its subdir, rather than sweep.dir re-resolved in this process
    # (a ${now:...} in it would differ between jobs a launcher starts in separate processes)
    out, sub = Path(hydra_cfg.runtime.output_dir), Path(str(hydra_cfg.sweep.subdir))
    n = len(sub.parts)
    root = Path(*out.parts[:-n]) if n and out.parts[-n:] == sub.parts else Path(str(hydra_cfg.sweep.dir))
    return sweep_name(root, hydra_cfg.runtime.cwd), overrides


def is_setting(override: str) -> bool:
    """Whether an override changes the result (``model.net.bits=48``), not where the job writes or logs."""
    key = override.partition("=")[0].lstrip("+~")
    return bool(key) and key.split(".")[0].split("/")[0] not in PLACE_KEYS


def default_run_name(bits: int | None, seed: int | None, method: str | None = None) -> str | None:
    """``latent-bits48-seed42`` (parts that are unknown are left out; ``None`` lets W&B pick a name)."""
    parts = [
        method or "",
        f"bits{bits}" if bits is not None else "",
        f"seed{seed}" if seed is not None else "",
    ]
    return "-".join(p for p in parts if p) or None


@rank_zero_only
def finish(logger_or_run: Any = None, exit_code: int = 0) -> None:
    """Close the run (a logger's, or the active one) so the next job of a multirun starts its own."""
    loggers = wandb_loggers(logger_or_run)
    if loggers:
        run = loggers[0]._experiment  # not ``.experiment``: that would start a run just to close it
    else:
        run = wandb.run if logger_or_run is None else logger_or_run
    if run is not None and hasattr(run, "finish"):
        run.finish(exit_code=exit_code)


def wandb_loggers(logger_or_run: Any) -> list[WandbLogger]:
    if isinstance(logger_or_run, WandbLogger):
        return [logger_or_run]
    if isinstance(logger_or_run, Iterable) and not isinstance(logger_or_run, (str, bytes, Mapping)):
        return [lg for lg in logger_or_run if isinstance(lg, WandbLogger)]
    return []


def active_run(logger_or_run: Any) -> Any:
    """The wandb run to log to, or ``None`` (no W&B logger, or a disabled run)."""
    if logger_or_run is None:
        run = wandb.run
    elif isinstance(logger_or_run, (WandbLogger, list, tuple)):
        loggers = wandb_loggers(logger_or_run)
        run = loggers[0].experiment if loggers else None
    else:
        run = logger_or_run
    if run is None or not hasattr(run, "log") or getattr(run, "disabled", False):
        return None
    return run
