"""Lesion sizes and kinds of a prepared mini-MIAS dataset, in output pixels (README "Discussion").

Why: whether a lesion can show in an anomaly score depends on its size at the working resolution
and on its kind (calcification clusters vanish first when a film is downscaled).

    python experiments/mias/lesion_stats.py data/prepared/mias_mlo_64 [--split test]
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--split", default="test", help="split whose abnormal films are counted by kind")
    args = parser.parse_args()
    with (args.dataset / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    with (args.dataset / "splits.csv").open(newline="") as handle:
        split_of = {row["image_id"]: row["split"] for row in csv.DictReader(handle)}
    for label in ("malignant", "benign"):
        films = [row for row in rows if row["label"] == label]
        radii = np.array(
            [float(r) for row in films if row["lesion_radius"] for r in row["lesion_radius"].split(";")]
        )
        low, median, high = np.percentile(radii, [25, 50, 75])
        print(
            f"{label}: {len(radii)} circles, radius median {median:.1f} px (IQR {low:.1f}-{high:.1f}, "
            f"min {radii.min():.1f}, max {radii.max():.1f}); {sum(not r['lesion_radius'] for r in films)} "
            "films without a circle"
        )
        kinds = Counter(row["abnormality"] for row in films if split_of.get(row["image_id"]) == args.split)
        print(f"  {args.split} films by kind: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()))


if __name__ == "__main__":
    main()
