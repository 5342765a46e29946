"""Table 1 of the seed paper, rebuilt from the ``metrics.json`` of several scoring runs.

``aggregate_table(run_dirs, out_dir)`` writes ``table.md`` (percentages with 95% CIs, one row per run,
sorted by number of seeds, then loss and comparison when the runs record them, plus the published
numbers in a separate table for comparison) and ``table.csv`` (the same rows as plain numbers, CI
bounds in their own columns, for plotting and further analysis). ``write_metrics_json`` is the
writer the scoring side uses for ``metrics.json``: atomic, with NaN stored as ``null`` because JSON
has no NaN and an undefined metric must stay visibly undefined.

Command line: ``python -m mammo_anogan.evaluation.table RUN_DIR [RUN_DIR ...] --out-dir DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mammo_anogan.utils.errors import UserError, exit_on_user_error
from mammo_anogan.utils.io import atomic_write_csv, atomic_write_text

METRICS_FILE = "metrics.json"

#: (key in metrics.json, column header) in the order of the paper's Table 1.
TABLE_METRICS: tuple[tuple[str, str], ...] = (
    ("accuracy", "Accuracy"),
    ("sensitivity", "Sensitivity"),
    ("specificity", "Specificity"),
    ("ppv", "PPV"),
    ("npv", "NPV"),
    ("auc", "AUC"),
)
OPTIONAL_KEYS: tuple[str, ...] = ("loss", "comparison")

#: The seed paper's Table 1 (percent; in-sample Youden threshold on a 50 + 50 test set).
PAPER_TABLE1: dict[int, dict[str, float]] = {
    1: {"accuracy": 61.0, "sensitivity": 74.0, "specificity": 48.0, "ppv": 58.7, "npv": 64.9, "auc": 66.6},
    9: {"accuracy": 64.0, "sensitivity": 78.0, "specificity": 52.0, "ppv": 61.4, "npv": 70.2, "auc": 70.0},
    16: {"accuracy": 63.0, "sensitivity": 78.0, "specificity": 48.0, "ppv": 60.0, "npv": 68.6, "auc": 67.8},
}


# --------------------------------------------------------------------------------------------- JSON
def _json_safe(value: Any) -> Any:
    """Plain-JSON version of ``value``: numpy scalars/arrays to Python, NaN and infinities to ``None``."""
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_json_safe(item) for item in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_metrics_json(path: str | os.PathLike[str], metrics: Mapping[str, Any]) -> Path:
    """Write ``metrics`` as indented JSON, atomically, with NaN/inf as ``null`` (strict JSON)."""
    text = json.dumps(_json_safe(metrics), indent=2, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def read_metrics_json(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``metrics.json`` of a run, with ``null`` read back as NaN; one-line UserError if unusable."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise UserError(f"no {METRICS_FILE} in run directory {run_dir}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}".splitlines()[0]) from err
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object")
    required = ["num_seeds", *(key for key, _ in TABLE_METRICS)]
    missing = [key for key in required if key not in data]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}")
    return {key: (float("nan") if value is None else value) for key, value in data.items()}


# --------------------------------------------------------------------------------------------- formatting
def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def format_percent(value: Any, low: Any = None, high: Any = None) -> str:
    """``0.64, 0.551, 0.723 -> "64.0 [55.1, 72.3]"``; ``n/a`` for undefined values; no CI if absent."""
    point = _number(value)
    if math.isnan(point):
        return "n/a"
    text = f"{100 * point:.1f}"
    low_value, high_value = _number(low), _number(high)
    if not (math.isnan(low_value) or math.isnan(high_value)):
        text += f" [{100 * low_value:.1f}, {100 * high_value:.1f}]"
    return text


def _markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _sort_key(run: Mapping[str, Any]) -> tuple[Any, ...]:
    seeds = _number(run["num_seeds"])
    return (math.isnan(seeds), seeds, *(str(run.get(key) or "") for key in OPTIONAL_KEYS), run["run"])


# --------------------------------------------------------------------------------------------- table
def aggregate_table(
    run_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    include_reference: bool = True,
) -> tuple[Path, Path]:
    """Write ``table.md`` and ``table.csv`` in ``out_dir`` from each run's ``metrics.json``.

    One row per run, sorted by ``num_seeds`` then ``loss`` and ``comparison`` (columns that appear
    only when some run records them) then the run's folder name. Markdown cells are percentages with
    their CI, e.g. ``64.0 [55.1, 72.3]``; the CSV keeps fractions, with ``<metric>_ci_low/_ci_high``
    columns. ``include_reference`` appends the paper's published Table 1 as a separate Markdown table.
    """
    if not run_dirs:
        raise UserError("no run directories given to aggregate")
    runs = []
    for run_dir in run_dirs:
        metrics = read_metrics_json(run_dir)
        metrics["run"] = Path(run_dir).resolve().name
        runs.append(metrics)
    runs.sort(key=_sort_key)
    optional = [key for key in OPTIONAL_KEYS if any(run.get(key) not in (None, "") for run in runs)]

    headers = ["Seeds", *(key.capitalize() for key in optional), *(title for _, title in TABLE_METRICS)]
    headers += ["Threshold", "Run"]
    md_rows = []
    for run in runs:
        seeds = _number(run["num_seeds"])
        cells = ["n/a" if math.isnan(seeds) else f"{seeds:g}", *(str(run.get(key) or "") for key in optional)]
        cells += [
            format_percent(run[key], run.get(f"{key}_ci_low"), run.get(f"{key}_ci_high"))
            for key, _ in TABLE_METRICS
        ]
        cells += [str(run.get("threshold_source", "")).replace("_", " "), run["run"]]
        md_rows.append(cells)

    confidence = _number(runs[0].get("ci", 0.95))
    parts = [
        "# Table 1: image-level anomaly detection",
        "",
        f"Percent, with {100 * confidence:g}% stratified bootstrap confidence intervals in brackets.",
        "",
        _markdown(headers, md_rows),
    ]
    if include_reference:
        reference_rows = [
            [str(seeds), *(f"{values[key]:.1f}" for key, _ in TABLE_METRICS)]
            for seeds, values in PAPER_TABLE1.items()
        ]
        parts += [
            "",
            "## Published (seed paper, Youden threshold chosen on its 50 + 50 test set)",
            "",
            _markdown(["Seeds", *(title for _, title in TABLE_METRICS)], reference_rows),
        ]
    out_dir = Path(out_dir)
    markdown_path = atomic_write_text(out_dir / "table.md", "\n".join(parts) + "\n")

    fieldnames = ["run", "num_seeds", *optional]
    for key, _ in TABLE_METRICS:
        fieldnames += [key, f"{key}_ci_low", f"{key}_ci_high"]
    fieldnames += ["threshold", "threshold_source", "n", "n_abnormal", "n_normal"]
    csv_rows = [{name: _csv_value(run.get(name)) for name in fieldnames} for run in runs]
    csv_path = atomic_write_csv(out_dir / "table.csv", csv_rows, fieldnames)
    return markdown_path, csv_path


def _csv_value(value: Any) -> Any:
    """Empty cell for missing or NaN values, so spreadsheets read them as blank, not as the text 'nan'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: aggregate run directories into Table 1."""
    parser = argparse.ArgumentParser(
        description="Aggregate scoring runs (metrics.json) into the paper's Table 1."
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run directories, each holding metrics.json")
    parser.add_argument("--out-dir", type=Path, required=True, help="where to write table.md and table.csv")
    parser.add_argument("--no-reference", action="store_true", help="leave out the paper's published numbers")
    args = parser.parse_args(argv)
    markdown_path, csv_path = aggregate_table(
        args.run_dirs, args.out_dir, include_reference=not args.no_reference
    )
    print(markdown_path.read_text(encoding="utf-8"))
    print(f"wrote {markdown_path} and {csv_path}")


if __name__ == "__main__":
    main()
