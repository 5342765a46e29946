"""Contact sheets of the pectoral-muscle removal on every mini-MIAS film (experiments/mias/README.md).

Reads two prepared copies of the same films (same settings except
``data.preprocess.pectoral_removal``; manifests are ordered by pixel hash, so rows pair up): the
breast mask without and with the removal. Each film is
drawn at its prepared size with the removed region tinted red and the breast outline in green,
labelled with its position in the sheet (row-major, numbered from 0 in manifest order) so films
cut wrongly can be listed by eye; ``--sheet-size`` films per PNG.

    python experiments/mias/pectoral_figure.py KEPT_DATASET REMOVED_DATASET OUT_PREFIX
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


def tile(image: np.ndarray, kept: np.ndarray, removed_mask: np.ndarray, label: str) -> np.ndarray:
    """RGB tile: image, removed region (in ``kept`` but not ``removed_mask``) tinted red, outline green."""
    rgb = np.repeat(image[..., None], 3, axis=2).astype(np.float32)
    cut = kept & ~removed_mask
    rgb[cut] = 0.5 * rgb[cut] + 0.5 * np.array([0, 0, 255], np.float32)  # BGR red
    mask8 = removed_mask.astype(np.uint8)
    edge = mask8 - cv2.erode(mask8, np.ones((3, 3), np.uint8))
    rgb[edge > 0] = (0, 255, 0)
    out = rgb.astype(np.uint8)
    cv2.putText(out, label, (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kept", type=Path, help="dataset prepared with pectoral_removal=false")
    parser.add_argument("removed", type=Path, help="the same films with pectoral_removal=true")
    parser.add_argument("out_prefix", type=Path)
    parser.add_argument("--sheet-size", type=int, default=64)
    parser.add_argument("--columns", type=int, default=8)
    args = parser.parse_args()
    with open(args.removed / "manifest.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with open(args.kept / "manifest.csv", newline="", encoding="utf-8") as handle:
        kept_rows = list(csv.DictReader(handle))
    if len(kept_rows) != len(rows):
        raise SystemExit("the two datasets hold different numbers of films")
    tiles = []
    for index, (row, kept_row) in enumerate(zip(rows, kept_rows)):
        # Manifests are ordered by pixel hash and the images are identical: rows pair up in order.
        image = _read(args.removed, row["image_path"])
        if not np.array_equal(image, _read(args.kept, kept_row["image_path"])):
            raise SystemExit(
                f"film {index} differs between the datasets: prepare both with the same settings"
            )
        removed_mask = _read(args.removed, row["mask_path"]) > 0
        kept = _read(args.kept, kept_row["mask_path"]) > 0
        tiles.append(tile(image, kept, removed_mask, str(index)))
    for start in range(0, len(tiles), args.sheet_size):
        chunk = tiles[start : start + args.sheet_size]
        chunk += [np.zeros_like(tiles[0])] * (-len(chunk) % args.columns)
        lines = [np.hstack(chunk[i : i + args.columns]) for i in range(0, len(chunk), args.columns)]
        ok, buffer = cv2.imencode(".png", np.vstack(lines))
        assert ok
        path = Path(f"{args.out_prefix}_{start // args.sheet_size}.png")
        atomic_write_bytes(path, buffer.tobytes())
        print(path)


if __name__ == "__main__":
    main()
