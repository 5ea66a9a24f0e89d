"""Run a plan's jobs, each once: skip completed runs, resume interrupted ones, record each in status.json."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from deephash.utils.errors import DeephashError
from deephash.utils.io import atomic_write_text, update_json
from experiments.jobs import baseline_jobs, cnnh_jobs, hydra_value, methods_jobs, training_jobs, yahoo_jobs
from experiments.plan import CONF_DIR, REPO, Job, Plan, is_complete, read_metrics

log = logging.getLogger(__name__)


def run_job(plan: Plan, job: Job) -> dict[str, Any]:
    """Run ``job`` unless it already completed; records and returns its status entry."""
    run_dir = plan.runs / job.name
    if is_complete(read_metrics(run_dir)):
        if not plan.force:
            log.info("%s: completed earlier, skipped", job.name)
            return record_status(plan, job.name, {"status": "completed", "skipped": True})
        shutil.rmtree(run_dir)
    overrides = list(job.overrides)
    last = run_dir / "checkpoints" / "last.ckpt"
    if job.entry == "train" and last.is_file():
        log.info("%s: resuming from %s", job.name, last)
        overrides.append(f"ckpt_path={hydra_value(last)}")
    if job.entry == "baseline" and run_dir.exists():  # an unfinished baseline has nothing to resume: redo it
        overrides.append("overwrite=true")
    log.info("%s: deephash.%s %s", job.name, job.entry, " ".join(overrides))
    start = time.perf_counter()
    error = ""
    try:
        if plan.launcher == "inprocess":
            _run_inprocess(job.entry, overrides, run_dir)
        else:
            _run_subprocess(job.entry, overrides, run_dir)
    except Exception as err:  # noqa: BLE001 - one failed run must not stop the others
        error = one_line(f"{err.__class__.__name__}: {err}")
    metrics = read_metrics(run_dir)
    entry: dict[str, Any] = {"status": "completed" if is_complete(metrics) else "failed"}
    entry["seconds"] = round(time.perf_counter() - start, 1)
    if entry["status"] == "failed":
        entry["error"] = one_line(str(metrics.get("error") or error or "the run wrote no results"))
        log.error("%s failed: %s", job.name, entry["error"])
    return record_status(plan, job.name, entry)


def _run_inprocess(entry: str, overrides: list[str], run_dir: Path) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from deephash.runs import record_failure

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=entry, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
    # what a Hydra launch writes: the comparison reads the job's config and groups runs by their overrides
    atomic_write_text(run_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
    atomic_write_text(run_dir / ".hydra" / "overrides.yaml", yaml.safe_dump(list(overrides)))
    if entry == "train":
        from deephash.train import train as task
    else:
        from deephash.baselines.run import run_baseline as task
    try:
        task(cfg)
    except Exception as err:
        record_failure(cfg, err)  # what the entry point does: metrics.json says failed, W&B run closed
        raise


def _run_subprocess(entry: str, overrides: list[str], run_dir: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", f"deephash.{entry}", *overrides, f"hydra.run.dir={hydra_value(run_dir)}"]
    # its own session: a Ctrl-C or SIGTERM reaches it once, forwarded below, so it stops after the current batch
    # with a checkpoint (a second signal would stop it at once), and this driver waits for that
    with subprocess.Popen(command, env=env, start_new_session=True) as proc:
        try:
            returncode = proc.wait()
        except BaseException as err:
            signum = getattr(err, "signum", signal.SIGINT)  # deephash.utils.signals.Interrupted, or Ctrl-C
            proc.send_signal(signum)
            proc.wait()
            raise
    if returncode != 0:
        raise RuntimeError(f"deephash.{entry} exited with status {returncode} (log in {run_dir})")


def record_status(plan: Plan, name: str, entry: dict[str, Any]) -> dict[str, Any]:
    update_json(plan.out / "status.json", {name: entry})
    return entry


def one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_training(plan: Plan) -> dict[str, dict[str, Any]]:
    """Stage 2: the paper's runs and the code-length sweep; ``{run name: status entry}``."""
    return {job.name: run_job(plan, job) for job in training_jobs(plan)}


def run_baselines(plan: Plan) -> dict[str, dict[str, Any]]:
    """Stage 3: the hashing baselines at 48 bits."""
    return {job.name: run_job(plan, job) for job in baseline_jobs(plan)}


def run_cnnh(plan: Plan) -> dict[str, dict[str, Any]]:
    """Stage 4: the compared methods of figures 4 and 6 under Xia et al.'s protocol."""
    return {job.name: run_job(plan, job) for job in cnnh_jobs(plan)}


def run_methods(plan: Plan) -> dict[str, dict[str, Any]]:
    """Stage 5: the deep methods under one protocol (the paper's MNIST one), several seeds."""
    return {job.name: run_job(plan, job) for job in methods_jobs(plan)}


def run_yahoo(plan: Plan) -> dict[str, dict[str, Any]]:
    """Stage 6: the Yahoo-style folder run, when a folder was given."""
    return {job.name: run_job(plan, job) for job in yahoo_jobs(plan)}


def run_speed(plan: Plan) -> dict[str, dict[str, Any]]:
    """Stage 7: ``deephash.bench retrieval`` into ``bench/bench.json`` (skipped when it exists)."""
    path = plan.out / "bench" / "bench.json"
    if path.is_file() and not plan.force:
        log.info("bench: %s exists, skipped", path)
        return {"bench": record_status(plan, "bench", {"status": "completed", "skipped": True})}
    from deephash.benchmarks.retrieval import parse_retrieval_args, run_retrieval

    start = time.perf_counter()
    entry: dict[str, Any] = {"status": "completed"}
    try:
        run_retrieval(parse_retrieval_args([*plan.bench_args, "--out", str(path)]))
    # SystemExit: argparse rejected --bench-args
    except (DeephashError, SystemExit, OSError, MemoryError) as err:
        entry = {"status": "failed", "error": one_line(f"{err.__class__.__name__}: {err}")}
        log.error("bench failed: %s", entry["error"])
    entry["seconds"] = round(time.perf_counter() - start, 1)
    return {"bench": record_status(plan, "bench", entry)}
