"""Experiment tracking: Weights & Biases logging (``deephash.tracking.wandb``) and sweep comparison.

``deephash.tracking.wandb`` imports wandb and Lightning, so it is not imported here; the comparison
tool needs neither.
"""

from deephash.tracking.compare import Comparison, compare_runs
from deephash.tracking.sweep import Job, dataset_from_target, find_jobs, load_jobs

__all__ = ["Comparison", "Job", "compare_runs", "dataset_from_target", "find_jobs", "load_jobs"]
