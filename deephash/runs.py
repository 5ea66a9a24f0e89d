"""Run plumbing shared by the entry points: callbacks, loggers and trainers from config, where a run's
checkpoint and config live, the value a sweeper optimises, how a run ended, and the CLI summary table."""

from __future__ import annotations

import json
import os
import shutil
import traceback
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from deephash.utils.atomic_dir import holds, try_lock, unlock
from deephash.utils.errors import ConfigError
from deephash.utils.io import atomic_write_text, update_json
from deephash.utils.logging import get_logger

log = get_logger(__name__)


def instantiate_callbacks(cfg: DictConfig | None) -> list[pl.Callback]:
    """Every entry of the ``callbacks`` group that has a ``_target_``."""
    if not cfg:
        return []
    return [hydra.utils.instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def instantiate_loggers(cfg: DictConfig | None, run_cfg: DictConfig) -> list[pl.loggers.Logger]:
    """Every entry of the ``logger`` group that has a ``_target_``; the resolved run config is logged."""
    if not cfg:
        return []
    loggers = [hydra.utils.instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]
    params = OmegaConf.to_container(run_cfg, resolve=True, throw_on_missing=False)
    for logger in loggers:
        logger.log_hyperparams(params)
    return loggers


def finish_loggers(loggers: list[pl.loggers.Logger], metrics: dict[str, Any], run_dir: Path) -> None:
    """Log the final retrieval results (W&B summary, tables, images, artifacts) and close the runs."""
    from deephash.tracking.wandb import finish, logged_group
    from deephash.tracking.wandb_results import log_artifacts, log_retrieval_results

    url, group = wandb_url(loggers), logged_group()
    # where the run is on W&B: the dashboard of a sweep filters by the group its runs logged
    record = {key: value for key, value in (("wandb_url", url), ("wandb_group", group)) if value}
    if record:
        update_json(run_dir / "metrics.json", record)
    if metrics.get("modes"):
        log_retrieval_results(loggers, metrics, run_dir)
    log_artifacts(loggers, run_dir, metrics.get("best_checkpoint") or None, metrics.get("index_dir"))
    for logger in loggers:
        logger.finalize("success")
    finish(loggers)


def record_failure(cfg: DictConfig, err: BaseException) -> None:
    """Mark the run failed in its metrics.json, so sweep summaries report it instead of dropping it, and close
    an open W&B run with a failing exit code. A run stopped by a signal (SIGTERM from a scheduler, Ctrl-C: see
    ``deephash.utils.signals``) is recorded as ``"status": "interrupted"`` with the checkpoint to resume from
    (``"resume"``, null when none was written yet) and the signal."""
    import signal

    import wandb

    from deephash.tracking.wandb import logged_group
    from deephash.utils.signals import interruption_status

    status = interruption_status(err)
    group = logged_group()
    if wandb.run is not None:
        wandb.run.finish(exit_code=status or 1)
    try:
        output_dir = Path(cfg.paths.output_dir)
    except Exception:  # noqa: BLE001 - no run directory could be resolved: nothing to record
        return
    if not output_dir.exists():
        return
    if status is not None:
        last = output_dir / "checkpoints" / "last.ckpt"
        resume = str(last) if last.is_file() else None
        record = {
            "status": "interrupted",
            "error": None,
            "signal": signal.Signals(status - 128).name,
            "resume": resume,
        }
        hint = f"resume with ckpt_path={resume}" if resume else "no checkpoint was written yet; start again"
        log.warning("run interrupted; %s", hint)
    else:
        first_line = " ".join(str(err).split())
        record = {
            "status": "failed",
            "error": f"{err.__class__.__name__}: {first_line}",
            "traceback": traceback.format_exception_only(type(err), err)[-1].strip(),
        }
    if group:
        record["wandb_group"] = group
    try:
        update_json(output_dir / "metrics.json", record)
    except (OSError, ValueError) as write_err:  # a full disk or a corrupt file must not hide the real error
        log.warning("could not record the run's end in %s: %s", output_dir / "metrics.json", write_err)


def wandb_url(loggers: list[pl.loggers.Logger]) -> str | None:
    """The W&B run page of an online run (offline runs have none until synced)."""
    for logger in loggers:
        if isinstance(logger, pl.loggers.WandbLogger):
            run = logger.experiment
            if not getattr(run, "offline", True) and getattr(run, "url", None):
                return str(run.url)
    return None


def build_predict_trainer(cfg: DictConfig, trainer: pl.Trainer | None = None) -> pl.Trainer:
    """A trainer for encoding on the same devices/strategy as ``cfg.trainer``, without loggers or checkpoints."""
    if trainer is not None and trainer.world_size > 1:
        return trainer  # already launched processes: reuse their strategy
    return hydra.utils.instantiate(
        cfg.trainer,
        logger=False,
        callbacks=[],
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_predict_batches=None,
        default_root_dir=None,
    )


CHECKPOINT_SELECTIONS = ("best_val", "last")


def check_checkpoint_selection(selection: Any) -> str:
    """``checkpoint_selection`` as given, or a one-line ConfigError naming the choices."""
    if selection not in CHECKPOINT_SELECTIONS:
        raise ConfigError(
            f"checkpoint_selection must be one of {', '.join(CHECKPOINT_SELECTIONS)}, got {selection!r}"
        )
    return str(selection)


def select_checkpoint(cfg: DictConfig, trainer: pl.Trainer, run_dir: Path) -> dict[str, str]:
    """The checkpoint a finished fit is tested and evaluated with: ``{"selection", "evaluated_checkpoint"}``.

    ``best_val`` (the default): the checkpoint with the best monitored validation score. ``last``: the
    weights at the final iteration (the authors' protocol: all the training data, no model selection),
    written to ``<run>/checkpoints/last.ckpt`` now, so it is the final step's even when the periodic saves
    missed it. A ``best_val`` run that has no best checkpoint (no validation split, or no monitored metric)
    falls back to ``last`` and says so.
    """
    selection = check_checkpoint_selection(cfg.get("checkpoint_selection", "best_val"))
    callback = monitored_checkpoint_callback(trainer)
    best = callback.best_model_path if callback is not None and callback.monitor is not None else ""
    if selection == "best_val" and best:
        return {"selection": "best_val", "evaluated_checkpoint": best}
    last = run_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(last)  # every rank calls it (a collective under DDP); rank 0 writes
    return {"selection": "last", "evaluated_checkpoint": str(last)}


def checkpoint_run_dir(ckpt: Path) -> Path | None:
    """``<run>/checkpoints/x.ckpt`` -> ``<run>``."""
    return ckpt.resolve().parent.parent if ckpt.resolve().parent.name == "checkpoints" else None


DATA_DIR_KEYS = ("root", "cache_dir")  # directories: relative ones are relative to the launch directory
DATA_FILE_KEYS = ("list_file", "test_list_file", "classes_file")  # files: as given, else under root


def anchor_data_paths(data_cfg: DictConfig, cwd: str | os.PathLike | None) -> DictConfig:
    """``data_cfg`` with its relative paths made absolute against ``cwd``, the directory the run was launched
    from, so a later evaluation or index build from anywhere reads the same files (``data=folder
    data.root=photos`` launched in ``~/work`` means ``~/work/photos`` for good). Files that are not found
    under ``cwd`` stay as given: the datamodule also looks for them under ``root``."""
    if cwd is None:
        return data_cfg
    out = OmegaConf.create(OmegaConf.to_container(data_cfg, resolve=True))
    for key in (*DATA_DIR_KEYS, *DATA_FILE_KEYS):
        value = out.get(key)
        if not isinstance(value, str) or not value or os.path.isabs(os.path.expanduser(value)):
            continue
        anchored = Path(cwd) / value
        if key in DATA_DIR_KEYS or anchored.is_file():
            out[key] = str(anchored)
    return out


def current_launch_cwd() -> str:
    """The directory this command was launched from: Hydra's ``runtime.cwd`` (``hydra.job.chdir=true`` moves
    the process into the run directory), else the working directory."""
    from hydra.core.hydra_config import HydraConfig

    return str(HydraConfig.get().runtime.cwd) if HydraConfig.initialized() else os.getcwd()


def launch_cwd(run_dir: Path) -> str | None:
    """The directory a Hydra run was launched from (``.hydra/hydra.yaml``'s ``runtime.cwd``), if recorded."""
    path = run_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return None
    try:
        cwd = OmegaConf.load(path).hydra.runtime.cwd
    except Exception:  # noqa: BLE001 - an unreadable record: nothing to anchor to
        return None
    return str(cwd) if cwd else None


def run_data_config(run_dir: Path | None) -> DictConfig | None:
    """The ``data`` config of a training run: its resolved ``config.yaml`` (or Hydra's ``.hydra/config.yaml``),
    with relative data paths taken from where the run was launched, not from where this process runs."""
    if run_dir is None:
        return None
    for path in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
        if path.is_file():
            run_cfg = OmegaConf.load(path)
            data = OmegaConf.create(OmegaConf.to_container(run_cfg.data, resolve=True))
            return anchor_data_paths(data, launch_cwd(run_dir))
    return None


def run_preprocess(run_dir: Path | None, data_cfg: DictConfig | None = None) -> dict[str, Any]:
    """How a checkpoint's training images were preprocessed (an index manifest's ``meta.preprocess``), so new
    images are encoded the same way: recorded by its run's index (``<run>/index``), else rebuilt from
    ``data_cfg`` or the run's data config."""
    from deephash.data.query import preprocess_spec
    from deephash.retrieval.manifest import MANIFEST, check_preprocess

    manifest = run_dir / "index" / MANIFEST if run_dir is not None else None
    if manifest is not None and manifest.is_file():
        try:
            meta = json.loads(manifest.read_text(encoding="utf-8")).get("meta") or {}
        except (OSError, ValueError, AttributeError):
            meta = {}  # a damaged index: the data config says the same
        if isinstance(meta, dict) and meta.get("preprocess"):
            return check_preprocess(meta["preprocess"], str(manifest))
    data_cfg = data_cfg or run_data_config(run_dir)
    if data_cfg is None:
        raise ConfigError(
            "the checkpoint has no training run beside it to say how its images were preprocessed; "
            "pass the data config it was trained with (data=<name> ...)"
        )
    return preprocess_spec(hydra.utils.instantiate(data_cfg))


def optimized_value(metrics: dict[str, Any], key: str | None) -> float | None:
    """``metrics[key]`` for a dotted key such as ``val_retrieval.mAP``; a missing key is a clear error."""
    if not key:
        return None
    value: Any = metrics
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise ConfigError(
                f"optimized_metric {key!r} is not in the run's metrics (keys: {', '.join(metrics)})"
            )
        value = value[part]
    return float(value)


def print_summary(metrics: dict[str, Any]) -> None:
    """A short table of the retrieval metrics (CLI output)."""
    from rich.console import Console
    from rich.table import Table

    modes = metrics.get("modes") or {}
    if not modes:
        return
    title = f"retrieval: {metrics.get('n_queries')} queries x {metrics.get('n_database')} items"
    if metrics.get("bits"):
        title += f", {metrics['bits']} bits"
    accuracy = ", ".join(
        f"{k} {metrics[k]:.4f}" for k in ("val_acc", "test_acc") if metrics.get(k) is not None
    )
    table = Table(title=title, caption=accuracy or None)
    for column in ("mode", "mAP", "mAP@1000", "P@10", "P@100", "P@r2", "queries/s"):
        table.add_column(column, justify="right")

    def fmt(value: Any, spec: str = ".4f") -> str:
        return "-" if value is None else format(value, spec)

    for mode, m in modes.items():
        p = m.get("precision@k", {})
        table.add_row(
            mode,
            fmt(m.get("mAP")),
            fmt(m.get("mAP@1000")),
            fmt(p.get("10")),
            fmt(p.get("100")),
            fmt(m.get("precision@r2", m.get("precision"))),
            fmt(m.get("queries_per_second"), ",.0f"),
        )
    Console().print(table)


# ---- run directories: one run each, one live process each -----------------------------------------------

RUN_LOCK = ".run.lock"
# what a training run leaves in its directory (``checkpoints`` counts when it holds a checkpoint)
# what a training run leaves in its directory: checkpoints, metrics.json (unless it records a failure or an
# interruption before any checkpoint, which a retry may replace) and the encoded indexes
RUN_MARKERS = ("checkpoints", "metrics.json", "index", "queries")


class RunDirError(ConfigError):
    """The run directory holds another run or is in use; it was left untouched."""


def claim_run_dir(cfg: DictConfig, resumes: bool = True) -> Path:
    """Create ``cfg.paths.output_dir`` and make it this run's: lock it for this process's lifetime (another
    live process training there -> ``RunDirError``), and refuse a directory that holds an earlier run unless
    this run resumes it (``ckpt_path``, a checkpoint of that very run: ``resumes=False`` where ``ckpt_path``
    means something else) or ``overwrite=true`` (which removes the earlier run's checkpoints, metrics,
    indexes and reports first). Ranks other than 0 of a distributed run share rank 0's claim."""
    from pytorch_lightning.utilities import rank_zero_only

    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if getattr(rank_zero_only, "rank", 0) != 0:
        return run_dir
    _lock_run_dir(run_dir)
    held = previous_run(run_dir)
    resume = Path(str(cfg.ckpt_path)).expanduser() if resumes and cfg.get("ckpt_path") else None
    if held and resume is not None and checkpoint_run_dir(resume) != run_dir.resolve():
        if not cfg.get("overwrite"):
            raise RunDirError(
                f"{run_dir} already holds a run ({', '.join(held)}) and ckpt_path={resume} is a checkpoint of "
                "another run: resume into that run's directory, pass overwrite=true to replace this one, or "
                "choose another hydra.run.dir"
            )
        resume = None  # overwrite=true: replace this directory's run, starting from the given weights
    if held and resume is None:
        if not cfg.get("overwrite"):
            hint = "pass ckpt_path=<checkpoint> to resume it, " if resumes else "pass "
            raise RunDirError(
                f"{run_dir} already holds a run ({', '.join(held)}): {hint}overwrite=true to replace it, "
                "or choose another hydra.run.dir"
            )
        removed = [*held, *(p.name for p in run_outputs(run_dir) if p.name not in held)]
        for name in removed:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
        log.warning("overwrite=true: removed the earlier run's %s from %s", ", ".join(removed), run_dir)
    write_hydra_record(cfg)  # the directory is this run's now (a resume or an overwrite included)
    return run_dir


# what a run writes besides RUN_MARKERS: reports, the CSV log, the data records, image indexes (index-*);
# an overwritten run must not leave them beside the new run's, where they would pass for its results
RUN_OUTPUTS = (
    "bit_balance.csv",
    "bit_balance.png",
    "pr_curve.csv",
    "pr_curve.png",
    "precision_at_k.csv",
    "precision_at_k.png",
    "retrieval_grid.png",
    "csv",
    "method.npz",
    "bad_images.txt",
    "classes.json",
    "splits.npz",
    "config.yaml",
)


def run_outputs(run_dir: Path) -> list[Path]:
    """The files of ``RUN_OUTPUTS`` and the image indexes (``index-<folder>``) present in ``run_dir``."""
    found = [
        run_dir / name for name in RUN_OUTPUTS if (run_dir / name).exists() or (run_dir / name).is_symlink()
    ]
    return found + sorted(p for p in run_dir.glob("index-*") if (p / "manifest.json").is_file())


def write_hydra_record(cfg: DictConfig) -> None:
    """Hydra's record of the job (``.hydra/config.yaml``, ``hydra.yaml``, ``overrides.yaml``) in its output
    directory. Hydra writes it before the task runs (``hydra.output_subdir``), which would rewrite the record
    of an earlier run in a directory this job is then refused; so that is off (``conf/hydra/default.yaml``)
    and the task writes it here once the directory is its own. Nothing outside a Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.instance().cfg
    out = Path(str(hydra_cfg.hydra.runtime.output_dir)) / ".hydra"
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(cfg))
    atomic_write_text(out / "hydra.yaml", OmegaConf.to_yaml(hydra_cfg))
    atomic_write_text(out / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task))


def previous_run(run_dir: Path) -> list[str]:
    """What an earlier run left in ``run_dir`` (of ``RUN_MARKERS``)."""
    held = []
    for name in RUN_MARKERS:
        path = run_dir / name
        if name == "checkpoints":
            found = path.is_dir() and any(path.glob("*.ckpt"))
        elif name == "metrics.json":
            found = path.exists() and _recorded_status(path) not in ("failed", "interrupted")
        else:
            found = path.exists()
        if found:
            held.append(name)
    return held


def _recorded_status(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None


def _lock_run_dir(run_dir: Path) -> None:
    """Lock ``<run>/.run.lock`` until the process exits (an ``flock``: the kernel drops it even on kill -9)."""
    lock = run_dir.resolve() / RUN_LOCK
    if holds(lock):
        return
    holder = try_lock(lock)
    if holder is not None:
        raise RunDirError(
            f"{run_dir} is in use by another training process (pid {holder}); wait for it to finish "
            "or choose another hydra.run.dir"
        )


def release_run_dir(run_dir: Path) -> None:
    """Drop this process's lock on ``run_dir`` (an in-process caller that runs several trainings)."""
    unlock(Path(run_dir).resolve() / RUN_LOCK)


def record_train_failure(cfg: DictConfig, err: BaseException) -> None:
    """``record_failure``, except for a refused run directory: that holds another run's metrics.json."""
    if not isinstance(err, RunDirError):
        record_failure(cfg, err)


def last_checkpoint(trainer: pl.Trainer) -> str:
    """The last checkpoint this fit actually wrote ("" when none): a ModelCheckpoint's ``save_last`` record
    (which names ``last-v1.ckpt`` and the like where it had to pick another name), else the file of an
    unmonitored ``filename: last`` callback (``callbacks.last_checkpoint``)."""
    callbacks = trainer.checkpoint_callbacks
    for callback in callbacks:
        if getattr(callback, "last_model_path", ""):
            return str(callback.last_model_path)
    for callback in callbacks:
        if getattr(callback, "monitor", "") is None and getattr(callback, "filename", "") == "last":
            return str(getattr(callback, "best_model_path", "") or "")
    return ""


def monitored_checkpoint_callback(trainer: pl.Trainer) -> Any:
    """The checkpoint callback that keeps the best monitored score (model selection), else the first one."""
    callbacks = trainer.checkpoint_callbacks
    return next(
        (c for c in callbacks if getattr(c, "monitor", None) is not None), trainer.checkpoint_callback
    )


CONFIG_TREE_ORDER = ("data", "model", "trainer", "callbacks", "logger", "retrieval", "paths", "extras")


def print_config_tree(cfg: DictConfig) -> None:
    """With ``extras.print_config``: the composed config as a rich tree, one branch per config group (then
    the top-level values), as lightning-hydra-template prints it before a run."""
    if not OmegaConf.select(cfg, "extras.print_config", default=False):
        return
    import rich
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    groups = [k for k in CONFIG_TREE_ORDER if k in cfg] + [
        k for k in cfg if k not in CONFIG_TREE_ORDER and OmegaConf.is_config(cfg[k])
    ]
    for key in groups:
        branch = tree.add(str(key), style="dim", guide_style="dim")
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=True) if OmegaConf.is_config(node) else str(node)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    values = {k: cfg[k] for k in cfg if k not in groups}
    if values:
        tree.add("run", style="dim", guide_style="dim").add(
            rich.syntax.Syntax(OmegaConf.to_yaml(OmegaConf.create(values), resolve=True), "yaml")
        )
    rich.print(tree)
