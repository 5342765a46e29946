"""mini-MIAS reader on a tiny written fixture: lesion coordinates, flips, pairing, rejections."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from dicom_fixtures import compose_prepare

from mammo_anogan.data.readers import list_mias_inputs, parse_mias_info
from mammo_anogan.prepare import prepare_dataset

INFO = """Some header text the parser must skip.
1st column: MIAS database reference number.
mdb001 G CIRC B 48 40 8
mdb002 G NORM
mdb003 F CALC M *NOTE 3*
mdb003 F CIRC B 20 30 5
mdb005 F NORM
"""


def _film(right: bool, seed: int) -> np.ndarray:
    """64x64 8-bit film: a half-ellipse breast against the right or left edge."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64]
    edge = 63 if right else 0
    breast = ((xx - edge) / 45.0) ** 2 + ((yy - 32) / 27.0) ** 2 <= 1
    return np.where(breast, rng.integers(120, 180, (64, 64)), 0).astype(np.uint8)


@pytest.fixture()
def mias_dir(tmp_path: Path) -> Path:
    source = tmp_path / "mini-mias"
    source.mkdir()
    (source / "Info.txt").write_text(INFO)
    cv2.imwrite(str(source / "mdb001.pgm"), _film(right=True, seed=1))
    cv2.imwrite(str(source / "mdb002.pgm"), _film(right=False, seed=2))
    cv2.imwrite(str(source / "mdb003.pgm"), _film(right=True, seed=3))
    cv2.imwrite(str(source / "mdb007.pgm"), _film(right=True, seed=7))  # not in Info.txt
    (source / "mdb009.pgm").write_bytes(b"P5\n64 64\n255\n" + b"\x01" * 100)  # truncated
    return source


def test_info_parser_handles_multiple_rows_and_missing_coordinates(mias_dir: Path) -> None:
    entries = parse_mias_info(mias_dir / "Info.txt")
    assert entries["mdb001"] == [("G", "CIRC", "B", (48, 40, 8))]
    assert entries["mdb003"] == [("F", "CALC", "M", None), ("F", "CIRC", "B", (20, 30, 5))]
    items = {i.relpath: i for i in list_mias_inputs(mias_dir, film_height=64)}
    assert set(items) == {"mdb001.pgm", "mdb002.pgm", "mdb003.pgm", "mdb005.pgm", "mdb007.pgm", "mdb009.pgm"}
    assert items["mdb001.pgm"].lesion_circles == [(48.0, 63 - 40, 8.0)]  # origin moved to the top-left
    assert items["mdb003.pgm"].label == "malignant" and items["mdb003.pgm"].abnormality == "CALC;CIRC"
    assert items["mdb007.pgm"].label == "unknown"
    assert items["mdb005.pgm"].reject_reason == "listed in Info.txt but the image file is missing"


def _mias_cfg(mias_dir: Path, out: Path, crop: str):
    """prepare on the small mini-MIAS fixture at 32 px, in-process, with a fixed salt."""
    return compose_prepare(
        [
            "data=mias",
            f"data.source={mias_dir}",
            "data.resolution=32",
            f"prepare.out_dir={out}",
            "prepare.workers=0",
            "prepare.salt_seed=0",
            f"data.preprocess.crop_to_breast={crop}",
        ]
    )


def test_prepare_mias_lesion_lands_in_breast_at_expected_output_position(
    mias_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    # the hand computation below is of the whole film: placement normalisation off
    result = prepare_dataset(_mias_cfg(mias_dir, out, crop="false"))
    assert (result.kept, result.rejected) == (4, 2)
    rows = list(csv.DictReader((out / "manifest.csv").open()))
    rejected = {r["reason"] for r in csv.DictReader((out / "rejected.csv").open())}
    assert len(rejected) == 2 and "listed in Info.txt but the image file is missing" in rejected
    assert any(reason.startswith("unreadable image file") for reason in rejected)

    by_tissue_label = {(r["laterality"], r["label"]): r for r in rows}
    right = by_tissue_label[("R", "benign")]  # mdb001
    left = by_tissue_label[("L", "normal")]  # mdb002
    assert right["flipped"] == "True" and left["flipped"] == "False"
    assert right["patient_id"] == left["patient_id"]  # mdb001 + mdb002 = patient 1
    assert by_tissue_label[("R", "malignant")]["patient_id"] != right["patient_id"]  # mdb003 = patient 2
    assert all(r["view"] == "MLO" and r["window_source"] == "none" for r in rows)

    # Hand-computed: raw (x=48, y=40 from the bottom) -> row 63-40=23 -> flipped x 63-48=15
    # -> scale 32/64: ((15+0.5)*0.5-0.5, (23+0.5)*0.5-0.5) = (7.25, 11.25), radius 4.
    assert float(right["lesion_x"]) == pytest.approx(7.25, abs=0.06)
    assert float(right["lesion_y"]) == pytest.approx(11.25, abs=0.06)
    assert float(right["lesion_radius"]) == pytest.approx(4.0)
    lesion = cv2.imread(str(out / right["lesion_mask_path"]), cv2.IMREAD_GRAYSCALE)
    mask = cv2.imread(str(out / right["mask_path"]), cv2.IMREAD_GRAYSCALE)
    image = cv2.imread(str(out / right["image_path"]), cv2.IMREAD_GRAYSCALE)
    assert lesion[11, 7] == 255 and mask[11, 7] == 255
    assert ((lesion > 0) & (mask == 0)).sum() == 0  # the whole circle lies inside the breast
    assert image[:, :16].sum() > 3 * image[:, 16:].sum()  # chest wall on the left after the flip
    assert by_tissue_label[("R", "malignant")]["lesion_x"] != ""  # the row with coordinates
    assert left["lesion_mask_path"] == ""


def test_prepare_mias_default_crops_to_the_breast_and_the_lesion_follows(
    mias_dir: Path, tmp_path: Path
) -> None:
    """data=mias places every film by its breast (crop_to_breast): the circle stays on its lesion."""
    outputs = {}
    for crop in ("false", "true"):
        out = tmp_path / crop
        prepare_dataset(_mias_cfg(mias_dir, out, crop))
        rows = {(r["laterality"], r["label"]): r for r in csv.DictReader((out / "manifest.csv").open())}
        outputs[crop] = (out, rows[("R", "benign")])
    (_, whole), (out, cropped) = outputs["false"], outputs["true"]
    assert int(cropped["breast_area_px"]) > int(whole["breast_area_px"])  # the breast fills more canvas
    assert float(cropped["lesion_radius"]) > float(whole["lesion_radius"])  # magnified with it
    lesion = cv2.imread(str(out / cropped["lesion_mask_path"]), cv2.IMREAD_GRAYSCALE) > 0
    mask = cv2.imread(str(out / cropped["mask_path"]), cv2.IMREAD_GRAYSCALE) > 0
    x, y = round(float(cropped["lesion_x"])), round(float(cropped["lesion_y"]))
    assert lesion[y, x] and mask[y, x] and not (lesion & ~mask).any()
