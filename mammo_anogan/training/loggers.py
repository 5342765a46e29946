"""A CSV logger that survives resumption.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when a writer opens its directory
again, so resuming a run (``ckpt_path=last`` in the same run directory) silently threw away the
whole loss / fidelity history of the earlier segments. This logger appends instead: it reads the
existing header so that later rows land under the same columns (a new column rewrites the file
with the union header, which Lightning already does).
"""

from __future__ import annotations

import csv

from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class AppendingExperimentWriter(ExperimentWriter):
    """``ExperimentWriter`` that keeps an existing ``metrics.csv`` and appends to it."""

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            header = next(csv.reader(file), [])
        self.metrics_keys = sorted(header)


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose metrics file grows across resumed segments instead of being replaced."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
