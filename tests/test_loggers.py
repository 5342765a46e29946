"""The CSV logger keeps the history of earlier segments when a run is resumed in its directory."""

from __future__ import annotations

import csv
from pathlib import Path

from mammo_anogan.training.loggers import ResumableCSVLogger


def _segment(root: Path, rows: list[dict[str, float]], first_step: int) -> None:
    logger = ResumableCSVLogger(root, name="csv", version="")
    for offset, row in enumerate(rows):
        logger.log_metrics(row, step=first_step + offset)
    logger.finalize("success")


def test_resumed_segments_append_and_merge_columns(tmp_path: Path) -> None:
    _segment(tmp_path, [{"train/kimg": 1.0, "loss": 0.5}, {"train/kimg": 2.0, "loss": 0.4}], 0)
    # a resumed segment: same directory, a new column (a fidelity metric) appears
    _segment(tmp_path, [{"train/kimg": 3.0, "loss": 0.3, "fidelity/swd": 90.0}], 2)
    with open(tmp_path / "csv" / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [float(r["train/kimg"]) for r in rows] == [1.0, 2.0, 3.0]
    assert [r["step"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["fidelity/swd"] == "" and float(rows[2]["fidelity/swd"]) == 90.0
    assert [float(r["loss"]) for r in rows] == [0.5, 0.4, 0.3]


def test_same_columns_append_without_rewriting_the_header(tmp_path: Path) -> None:
    _segment(tmp_path, [{"a": 1.0}], 0)
    _segment(tmp_path, [{"a": 2.0}], 1)
    lines = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    assert lines == ["a,step", "1.0,0", "2.0,1"]
