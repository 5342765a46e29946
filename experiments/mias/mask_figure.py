"""Before/after figure and statistics for the mini-MIAS breast-mask fix (experiments/mias/README.md).

Compares two prepared copies of the same films (same salt, so the same image ids): for every film,
the share of mask pixels darker than ``--dark`` grey levels (film base or padding, not breast) and
whether the mask reaches the right edge; draws the ``--count`` films whose old mask was worst, each
as old outline | new outline (red), upscaled 2x.

    python experiments/mias/mask_figure.py OLD_DATASET NEW_DATASET OUT.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np

from mammo_anogan.utils.io import atomic_write_bytes


def _read(dataset: Path, relpath: str) -> np.ndarray:
    return cv2.imread(str(dataset / relpath), cv2.IMREAD_GRAYSCALE)


def _outlined(image: np.ndarray, mask: np.ndarray, scale: int) -> np.ndarray:
    size = (image.shape[1] * scale, image.shape[0] * scale)
    image = cv2.resize(image, size, interpolation=cv2.INTER_NEAREST)
    mask = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
    edge = mask - cv2.erode(mask, np.ones((3, 3), np.uint8))
    tile = np.repeat(image[..., None], 3, axis=2)
    tile[edge > 0] = (0, 0, 255)
    return tile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--dark", type=int, default=25)
    parser.add_argument("--count", type=int, default=6)
    args = parser.parse_args()
    with (args.new / "manifest.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    films = [
        (
            _read(args.new, row["image_path"]),
            _read(args.old, row["mask_path"]) > 0,
            _read(args.new, row["mask_path"]) > 0,
        )
        for row in rows
    ]

    def dark_share(image: np.ndarray, mask: np.ndarray) -> float:
        return float(((image < args.dark) & mask).sum() / max(mask.sum(), 1))

    old_dark = np.array([dark_share(image, old) for image, old, _ in films])
    new_dark = np.array([dark_share(image, new) for image, _, new in films])
    old_edge = np.array([old[:, -2:].any() for _, old, _ in films])
    new_edge = np.array([new[:, -2:].any() for _, _, new in films])
    print(f"films: {len(rows)}")
    print(
        f"mask pixels darker than {args.dark}: old mean {old_dark.mean():.3f} max {old_dark.max():.3f}; "
        f"new mean {new_dark.mean():.3f} max {new_dark.max():.3f}"
    )
    print(f"films with > 5 % such mask pixels: old {(old_dark > 0.05).sum()}, new {(new_dark > 0.05).sum()}")
    print(f"masks reaching the right edge: old {old_edge.sum()}, new {new_edge.sum()}")
    inside = np.zeros(2, int)
    lesions = 0
    for row, (image, old, new) in zip(rows, films):
        for x, y in zip(row["lesion_x"].split(";"), row["lesion_y"].split(";")) if row["lesion_x"] else []:
            col, line = (min(int(round(float(v))), image.shape[0] - 1) for v in (x, y))
            inside += (old[line, col], new[line, col])
            lesions += 1
    print(f"MIAS lesion centres inside the mask: old {inside[0]}/{lesions}, new {inside[1]}/{lesions}")
    removed = sum(row.get("pectoral_removed") == "True" for row in rows)
    print(f"new dataset: pectoral muscle removed on {removed} of {len(rows)} films")
    tiles = []
    for index in np.argsort(-old_dark)[: args.count]:
        image, old, new = films[index]
        pair = np.concatenate([_outlined(image, old, 2), _outlined(image, new, 2)], axis=1)
        tiles.append(np.pad(pair, ((2, 2), (2, 2), (0, 0)), constant_values=255))
    grid = np.concatenate([np.concatenate(tiles[i : i + 3], axis=1) for i in range(0, len(tiles), 3)], axis=0)
    ok, encoded = cv2.imencode(".png", grid)
    assert ok
    atomic_write_bytes(args.out, encoded.tobytes())


if __name__ == "__main__":
    main()
