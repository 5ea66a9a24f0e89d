"""Entry point: ``python -m deephash.baseline method=itq data=mnist bits=48`` / ``deephash-baseline``.

Evaluates a classical hashing baseline (config ``conf/baseline.yaml``) with the same search modes, report
files and ``metrics.json`` as a trained model; the work is :func:`deephash.baselines.run.run_baseline`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from deephash.baselines.run import run_baseline
from deephash.cli import accepts_version, check_overrides, run_hydra_task
from deephash.config import CONFIG_PATH
from deephash.runs import record_train_failure


@accepts_version("deephash-baseline")
@check_overrides("baseline")
@hydra.main(config_path=CONFIG_PATH, config_name="baseline", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    # Hydra sweepers optimise the scalar the task returns
    return run_hydra_task(run_baseline, cfg, on_failure=record_train_failure)


if __name__ == "__main__":
    main()
