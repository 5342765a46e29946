"""Table 1 aggregation and metrics.json writing."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from mammo_anogan.evaluation.table import (
    aggregate_table,
    format_percent,
    main,
    read_metrics_json,
    write_metrics_json,
)
from mammo_anogan.utils.errors import UserError


def _metrics(num_seeds: int, accuracy: float, **extra: object) -> dict:
    metrics = {"num_seeds": num_seeds, "threshold": 0.25, "threshold_source": "in_sample_youden"}
    for offset, name in enumerate(("accuracy", "sensitivity", "specificity", "ppv", "npv", "auc")):
        value = accuracy + offset / 100
        metrics.update({name: value, f"{name}_ci_low": value - 0.089, f"{name}_ci_high": value + 0.083})
    metrics.update(extra)
    return metrics


def _write_runs(root: Path, runs: dict[str, dict]) -> list[Path]:
    dirs = []
    for name, metrics in runs.items():
        write_metrics_json(root / name / "metrics.json", metrics)
        dirs.append(root / name)
    return dirs


def test_write_metrics_json_stores_nan_as_null_and_numpy_as_numbers(tmp_path: Path) -> None:
    path = write_metrics_json(
        tmp_path / "m.json",
        {"ppv": float("nan"), "auc": np.float32(0.5), "tp": np.int64(3), "nested": {"x": [np.inf]}},
    )
    raw = path.read_text()
    assert "NaN" not in raw and "Infinity" not in raw
    assert json.loads(raw) == {"ppv": None, "auc": 0.5, "tp": 3, "nested": {"x": [None]}}


def test_format_percent() -> None:
    assert format_percent(0.64, 0.551, 0.723) == "64.0 [55.1, 72.3]"
    assert format_percent(0.64) == "64.0"
    assert format_percent(float("nan"), 0.1, 0.2) == "n/a"
    assert format_percent(0.5, None, 0.6) == "50.0"


def test_table_has_one_row_per_run_sorted_by_seeds(tmp_path: Path) -> None:
    runs = _write_runs(
        tmp_path / "runs",
        {"n16": _metrics(16, 0.63), "n1": _metrics(1, 0.61, ppv=float("nan")), "n9": _metrics(9, 0.64)},
    )
    markdown_path, csv_path = aggregate_table(runs, tmp_path / "out")
    assert (markdown_path.name, csv_path.name) == ("table.md", "table.csv")

    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["run"] for row in rows] == ["n1", "n9", "n16"]
    assert [int(row["num_seeds"]) for row in rows] == [1, 9, 16]
    assert float(rows[1]["accuracy"]) == pytest.approx(0.64)
    assert float(rows[1]["accuracy_ci_low"]) == pytest.approx(0.551)
    assert float(rows[1]["auc_ci_high"]) == pytest.approx(0.64 + 0.05 + 0.083)
    assert rows[0]["ppv"] == ""  # NaN -> blank cell
    assert "loss" not in rows[0]  # no run records a loss: no empty column

    text = markdown_path.read_text()
    table_lines = [line for line in text.splitlines() if line.startswith("| ")]
    header, n1, n9, n16, *reference = table_lines
    assert header.split(" | ")[:3] == ["| Seeds", "Accuracy", "Sensitivity"]
    assert n9.startswith("| 9 | 64.0 [55.1, 72.3] | 65.0 [56.1, 73.3] |")
    assert "| n/a |" in n1  # the NaN PPV
    assert n16.startswith("| 16 | 63.0 [54.1, 71.3]")
    assert "in sample youden" in n9
    assert "Published" in text
    assert reference[1] == "| 1 | 61.0 | 74.0 | 48.0 | 58.7 | 64.9 | 66.6 |"
    assert reference[2] == "| 9 | 64.0 | 78.0 | 52.0 | 61.4 | 70.2 | 70.0 |"


def test_loss_and_comparison_columns_sort_within_seeds(tmp_path: Path) -> None:
    runs = _write_runs(
        tmp_path,
        {
            "b": _metrics(9, 0.60, loss="mse"),
            "a": _metrics(9, 0.62, loss="lpips", comparison="mean"),
            "c": _metrics(1, 0.58, loss="mse"),
        },
    )
    markdown_path, csv_path = aggregate_table(runs, tmp_path / "out", include_reference=False)
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["num_seeds"], row["loss"]) for row in rows] == [("1", "mse"), ("9", "lpips"), ("9", "mse")]
    lines = [line for line in markdown_path.read_text().splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| Seeds | Loss | Comparison | Accuracy")
    assert lines[2].startswith("| 9 | lpips | mean | 62.0 [53.1, 70.3]")
    assert "Published" not in markdown_path.read_text()


def test_bad_run_dirs_raise_one_line_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no metrics.json"):
        aggregate_table([tmp_path / "missing"], tmp_path / "out")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot read"):
        read_metrics_json(tmp_path / "broken")
    write_metrics_json(tmp_path / "partial" / "metrics.json", {"num_seeds": 1, "auc": 0.5})
    with pytest.raises(UserError, match="lacks accuracy"):
        aggregate_table([tmp_path / "partial"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_read_back_turns_null_into_nan(tmp_path: Path) -> None:
    write_metrics_json(tmp_path / "metrics.json", _metrics(1, 0.5, ppv=float("nan")))
    assert math.isnan(read_metrics_json(tmp_path)["ppv"])


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = _write_runs(tmp_path, {"r1": _metrics(1, 0.61)})
    main([str(runs[0]), "--out-dir", str(tmp_path / "out")])
    assert "| 1 | 61.0 [52.1, 69.3]" in capsys.readouterr().out
    assert (tmp_path / "out" / "table.csv").is_file()
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path / "nope"), "--out-dir", str(tmp_path / "out")])
    assert info.value.code == 2
    assert "error: no metrics.json" in capsys.readouterr().err
