"""Fidelity over training (SWD, FRD and their real-vs-real baselines) from a run's ``train.log``.

Why the log and not ``csv/metrics.csv``: the log is appended by every resumed segment of a run,
including segments written before the CSV logger kept its history across resumption.

    python experiments/mias/fidelity_history.py RUN_DIR [--every KIMG]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

LINE = re.compile(r"fidelity at (?P<kimg>[0-9.]+) kimg: (?P<values>.*)$")


def history(log_path: Path) -> dict[float, dict[str, float]]:
    """kimg -> {metric: value}; a kimg logged twice (end of a segment + resume) keeps the last."""
    points: dict[float, dict[str, float]] = {}
    for line in log_path.read_text().splitlines():
        match = LINE.search(line)
        if match:
            pairs = (item.split("=") for item in match["values"].split(", "))
            points[float(match["kimg"])] = {key.strip(): float(value) for key, value in pairs}
    return points


def markdown(points: dict[float, dict[str, float]], every: float) -> str:
    kept = [k for k in sorted(points) if every <= 0 or abs(k / every - round(k / every)) < 1e-6]
    if kept and kept[-1] != max(points):
        kept.append(max(points))
    metrics = [m for m in ("swd", "frd") if m in points[kept[0]]]
    lines = ["| kimg | " + " | ".join(f"{k:g}" for k in kept) + " |", "|---" * (len(kept) + 1) + "|"]
    for metric in metrics:
        baseline = points[kept[0]].get(f"{metric}_baseline")
        label = metric.upper() + (f" (baseline {baseline:.3g})" if baseline is not None else "")
        lines.append(f"| {label} | " + " | ".join(f"{points[k][metric]:.3g}" for k in kept) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--every", type=float, default=0.0, help="keep kimg that are multiples of this")
    args = parser.parse_args()
    print(markdown(history(args.run_dir / "train.log"), args.every), end="")


if __name__ == "__main__":
    main()
