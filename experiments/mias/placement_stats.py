"""What placement normalisation (``data.preprocess.crop_to_breast``) does to prepared mini-MIAS films.

For each prepared dataset: the breast area fraction of the output (the breast mask before pectoral
removal, as ``breast_area_px`` of a dataset prepared with ``pectoral_removal=false``) and the SWD
(ProGAN's sliced Wasserstein distance, descriptors normalised, mean +- sd over ``--repeats`` patch
seeds) between the normal training films and the normal validation films: real versus real, so it
measures how far apart the two sets of films are, the spread a generator has to cover.

    python experiments/mias/placement_stats.py DATASET_WITHOUT_CROP DATASET_WITH_CROP
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np
import torch

from mammo_anogan.evaluation.swd import sliced_wasserstein_distance


def _films(dataset: Path, rows: list[dict[str, str]], split_of: dict[str, str], split: str) -> torch.Tensor:
    images = [
        cv2.imread(str(dataset / row["image_path"]), cv2.IMREAD_GRAYSCALE)
        for row in rows
        if split_of.get(row["image_id"]) == split and row["label"] == "normal"
    ]
    return torch.from_numpy(np.stack(images)).float().div(127.5).sub(1.0)[:, None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", type=Path, nargs="+")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for dataset in args.datasets:
        with (dataset / "manifest.csv").open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        with (dataset / "splits.csv").open(newline="") as handle:
            split_of = {row["image_id"]: row["split"] for row in csv.DictReader(handle)}
        side = cv2.imread(str(dataset / rows[0]["image_path"]), cv2.IMREAD_GRAYSCALE).shape[0]
        fractions = np.array([int(row["breast_area_px"]) / side**2 for row in rows])
        train, val = _films(dataset, rows, split_of, "train"), _films(dataset, rows, split_of, "val")
        swd = [sliced_wasserstein_distance(train, val, seed=seed)["swd"] for seed in range(args.repeats)]
        print(
            f"{dataset.name}: breast area fraction mean {fractions.mean():.3f} "
            f"(median {np.median(fractions):.3f}, {len(rows)} films); "
            f"SWD train vs val normals ({len(train)} / {len(val)}) "
            f"{np.mean(swd):.1f} +- {np.std(swd):.1f}"
        )


if __name__ == "__main__":
    main()
