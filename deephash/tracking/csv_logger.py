"""``logger=csv``: Lightning's CSVLogger, continued across a resume.

Lightning's CSV writer deletes ``metrics.csv`` when its directory already holds files, so a run resumed
from its checkpoint (``ckpt_path=<run>/checkpoints/last.ckpt``) would keep only the epochs after it. This
writer continues the file instead. The rows of steps at or after the first step the resumed run logs are
dropped on its first save: they were logged by the interrupted run after the checkpoint it resumes from,
and are logged again. A fresh run never finds a file (the run directory is its own, or
``overwrite=true`` removed the earlier run's ``csv/``).
"""

from __future__ import annotations

import csv
import io
import os

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from deephash.utils.io import atomic_write_text


class ContinuedExperimentWriter(ExperimentWriter):
    """Lightning's ``ExperimentWriter``, appending to an existing ``metrics.csv`` (see the module docstring)."""

    def __init__(self, log_dir: str) -> None:
        self._earlier: list[dict[str, str]] | None = None  # the rows found, until the first save
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes the earlier metrics.csv
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as file:
            reader = csv.DictReader(file)
            self._earlier = list(reader)
            self.metrics_keys = sorted(reader.fieldnames or [])

    def save(self) -> None:
        if self._earlier is not None and self.metrics:
            first_new = min(int(row["step"]) for row in self.metrics)
            kept = [row for row in self._earlier if _step(row) < first_new]
            self._record_new_keys()
            out = io.StringIO(newline="")
            writer = csv.DictWriter(out, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(kept)
            atomic_write_text(self.metrics_file_path, out.getvalue())
            self._earlier = None
        super().save()


def _step(row: dict[str, str]) -> int:
    """The step of an earlier row; a row without one (edited by hand) is kept, first."""
    try:
        return int(float(row.get("step") or -1))
    except ValueError:
        return -1


class ResumableCSVLogger(CSVLogger):
    """``pytorch_lightning.loggers.CSVLogger`` with :class:`ContinuedExperimentWriter` (``conf/logger/csv.yaml``)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ContinuedExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ContinuedExperimentWriter(log_dir=self.log_dir)
        return self._experiment
