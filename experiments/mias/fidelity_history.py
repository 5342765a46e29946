"""Fidelity over training (SWD, FRD and their real-vs-real baselines) from a run's ``train.log``.

Why the log and not ``csv/metrics.csv``: the log is appended by every resumed segment of a run,
including segments written before the CSV logger kept its history across resumption.

    python experiments/mias/fidelity_history.py RUN_DIR [--every KIMG] [--ada 10 76 100]

``--ada`` also prints ADA's p and r_t nearest to the given kimg, from ``csv/metrics.csv``
(``logger=csv``; rows of segments before the CSV logger appended on resume are missing there).
"""

from __future__ import annotations

import argparse
import csv
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


def ada_at(metrics_csv: Path, kimgs: list[float]) -> list[tuple[float, float, float]]:
    """(kimg, ADA p, r_t) of the logged row nearest to each requested kimg."""
    with metrics_csv.open(newline="") as handle:
        points = [
            (float(row["train/kimg"]), float(row["train/ada_p"]), float(row["train/ada_rt"]))
            for row in csv.DictReader(handle)
            if row.get("train/ada_p") and row.get("train/kimg")
        ]
    return [min(points, key=lambda point: abs(point[0] - kimg)) for kimg in kimgs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--every", type=float, default=0.0, help="keep kimg that are multiples of this")
    parser.add_argument("--ada", type=float, nargs="*", default=[], help="kimg at which to print ADA p")
    args = parser.parse_args()
    print(markdown(history(args.run_dir / "train.log"), args.every), end="")
    for kimg, p, r_t in ada_at(args.run_dir / "csv" / "metrics.csv", args.ada) if args.ada else []:
        print(f"ADA at {kimg:.2f} kimg: p {p:.3f}, r_t {r_t:.2f}")


if __name__ == "__main__":
    main()
