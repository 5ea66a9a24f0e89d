"""Entry point: ``python -m deephash.baseline method=itq data=mnist bits=48`` / ``deephash-baseline``.

Evaluates a classical hashing baseline (config ``conf/baseline.yaml``) with the same search modes, report
files and ``metrics.json`` as a trained model; the work is :func:`deephash.baselines.run.run_baseline`.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from deephash.baselines.run import run_baseline
from deephash.cli import run_with_user_errors
from deephash.evaluate import print_summary
from deephash.runs import record_failure

CONFIG_PATH = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(config_path=CONFIG_PATH, config_name="baseline", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    metrics = run_with_user_errors(run_baseline, cfg, on_failure=record_failure)
    print_summary(metrics)
    # hydra sweepers optimise the scalar the task returns
    key = cfg.get("optimized_metric")
    return metrics.get(key) if key else None


if __name__ == "__main__":
    main()
