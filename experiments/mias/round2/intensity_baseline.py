"""The trivial baseline of the round-2 table: mean breast intensity, evaluated like the model's scores.

Score of a film = the mean grey level inside its breast mask (the prepared dataset's masks, so the
pectoral muscle is out where it was removed); the Youden threshold on validation is applied to
test, with the same bootstrap CIs as ``score``.

    python experiments/mias/round2/intensity_baseline.py data/prepared/mias_mlo_128
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np

from mammo_anogan.evaluation.metrics import COMPARISONS, evaluate_protocol


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", type=Path)
    args = parser.parse_args()
    with (args.dataset / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    with (args.dataset / "splits.csv").open(newline="") as handle:
        split_of = {row["image_id"]: row["split"] for row in csv.DictReader(handle)}
    score = {}
    for row in rows:
        image = cv2.imread(str(args.dataset / row["image_path"]), cv2.IMREAD_GRAYSCALE).astype(np.float64)
        mask = cv2.imread(str(args.dataset / row["mask_path"]), cv2.IMREAD_GRAYSCALE) > 0
        score[row["image_id"]] = float(image[mask].mean())
    for comparison, classes in COMPARISONS.items():
        data = {}
        for split in ("val", "test"):
            kept = [r for r in rows if split_of.get(r["image_id"]) == split and r["label"] in classes]
            data[split] = ([classes[r["label"]] for r in kept], [score[r["image_id"]] for r in kept])
        result = evaluate_protocol(*data["val"], *data["test"])
        print(
            f"{comparison}: mean breast intensity, test AUC {100 * result['auc']:.1f} "
            f"[{100 * result['auc_ci_low']:.1f}, {100 * result['auc_ci_high']:.1f}] "
            f"(validation AUC {100 * result['validation']['auc']:.1f}), sensitivity "
            f"{100 * result['sensitivity']:.1f}, specificity {100 * result['specificity']:.1f} "
            "at the validation Youden threshold"
        )


if __name__ == "__main__":
    main()
