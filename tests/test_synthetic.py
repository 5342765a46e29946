"""Synthetic phantoms and the raw synthetic DICOM dataset."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest

from mammo_anogan.data.synthetic import (
    LESION_KINDS,
    MG_FOR_PRESENTATION,
    generate_dataset,
    make_phantom,
    power_law_texture,
)

H, W = 96, 80


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("raw"), 2, 2, height=H, width=W, seed=1)


def _display(ds: pydicom.Dataset) -> np.ndarray:
    """Pixels with bright = dense, whatever the photometric interpretation."""
    pixels = ds.pixel_array.astype(np.float64)
    return 4095 - pixels if ds.PhotometricInterpretation == "MONOCHROME1" else pixels


@pytest.mark.parametrize("view", ["CC", "MLO"])
def test_phantom_arrays_and_laterality(view: str) -> None:
    left = make_phantom(3, H, W, view, "L")
    assert left.image.shape == left.breast_mask.shape == left.lesion_mask.shape == (H, W)
    assert (
        left.image.dtype == np.float32 and left.breast_mask.dtype == bool and left.lesion_mask.dtype == bool
    )
    assert 0.0 <= left.image.min() and left.image.max() <= 1.0
    assert not left.lesion_mask.any()
    # The chest wall is on the image edge: the breast touches the left column, not the right one.
    assert left.breast_mask[:, 0].mean() > 0.5 and not left.breast_mask[:, -1].any()
    assert left.image[left.breast_mask].mean() > 0.2 > left.image[~left.breast_mask].mean()
    right = make_phantom(3, H, W, view, "R")
    np.testing.assert_array_equal(right.image, left.image[:, ::-1])
    assert right.breast_mask[:, -1].mean() > 0.5 and not right.breast_mask[:, 0].any()


def test_mlo_has_a_bright_pectoral_muscle() -> None:
    mlo = make_phantom(4, 320, 256, "MLO", "L")
    corner = mlo.image[:20, :20]
    assert mlo.breast_mask[:20, :20].all() and corner.mean() > 0.6


def test_texture_power_spectrum_slope_is_minus_three() -> None:
    size = 256
    rng = np.random.default_rng(0)
    power = np.mean(
        [np.abs(np.fft.fft2(power_law_texture((size, size), rng))) ** 2 for _ in range(4)], axis=0
    )
    freq = np.sqrt(np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2)
    bins = np.round(freq * size).astype(int)
    radial = np.bincount(bins.ravel(), power.ravel()) / np.bincount(bins.ravel())
    k = np.arange(2, size // 4)  # skip DC and the corners
    slope = np.polyfit(np.log(k / size), np.log(radial[k]), 1)[0]
    assert slope == pytest.approx(-3.0, abs=0.2)
    assert power_law_texture((size, size), np.random.default_rng(1), beta=2.0).std() == pytest.approx(1.0)


@pytest.mark.parametrize("kind", LESION_KINDS)
def test_lesions_are_inside_the_breast(kind: str) -> None:
    for seed in range(3):
        phantom = make_phantom(seed, 160, 128, "MLO" if seed % 2 else "CC", "LR"[seed % 2], (kind,))
        assert phantom.lesion_mask.sum() >= 10
        assert not (phantom.lesion_mask & ~phantom.breast_mask).any()
        inside_lesion = phantom.image[phantom.lesion_mask].mean()
        assert inside_lesion > phantom.image[phantom.breast_mask].mean()  # lesions are denser
    with pytest.raises(ValueError):
        make_phantom(0, H, W, lesion_kinds=("tumour",))


def test_dataset_layout_and_labels(raw: Path) -> None:
    labels = pd.read_csv(raw / "labels.csv", dtype=str, keep_default_na=False)
    assert list(labels.columns) == ["path", "label", "lesion_mask"]
    assert len(labels) == 4 * 4  # 4 patients x (L, R) x (CC, MLO)
    assert set(labels["label"]) <= {"normal", "benign", "malignant"}
    assert ((labels["lesion_mask"] != "") == (labels["label"] != "normal")).all()
    abnormal = labels[labels["label"] != "normal"]
    assert len(abnormal) == 4  # 2 abnormal patients, both views of one breast each
    assert abnormal["path"].str.split("/").str[1].nunique() == 2
    for row in labels.itertuples():
        assert (raw / row.path).is_file() and row.path.startswith("dicom/") and row.path.endswith(".dcm")
    for row in abnormal.itertuples():
        lesion = cv2.imread(str(raw / row.lesion_mask), cv2.IMREAD_UNCHANGED)
        assert lesion.shape == (H, W) and set(np.unique(lesion)) == {0, 255}
        pixels = _display(pydicom.dcmread(raw / row.path))
        assert pixels[lesion > 0].mean() > 0.3 * 4095  # the lesion sits on breast tissue


def test_dicom_tags_and_decoding(raw: Path) -> None:
    labels = pd.read_csv(raw / "labels.csv", dtype=str, keep_default_na=False)
    photometric, syntaxes = set(), set()
    for path in labels["path"]:
        ds = pydicom.dcmread(raw / path)
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == MG_FOR_PRESENTATION
        assert ds.Modality == "MG" and ds.BitsAllocated == 16 and ds.BitsStored == 12
        assert float(ds.WindowWidth) > 0 and 0 < float(ds.WindowCenter) < 4096
        for tag in ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "AccessionNumber"):
            assert str(ds.get(tag, "")) != ""
        laterality = path.rsplit("/", 1)[1][0]
        assert ds.ImageLaterality == ds.Laterality == laterality
        assert ds.ViewPosition == path.rsplit("_", 1)[1][:-4]
        pixels = _display(ds)
        assert pixels.shape == (H, W) and ds.pixel_array.dtype == np.uint16 and ds.pixel_array.max() <= 4095
        chest_wall, far_edge = (
            (pixels[:, :4], pixels[:, -4:]) if laterality == "L" else (pixels[:, -4:], pixels[:, :4])
        )
        assert chest_wall.mean() > far_edge.mean() + 500
        photometric.add(ds.PhotometricInterpretation)
        syntaxes.add(ds.file_meta.TransferSyntaxUID.name)
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}
    assert syntaxes == {"Explicit VR Little Endian", "RLE Lossless"}


def test_deterministic_and_idempotent(raw: Path, tmp_path: Path) -> None:
    again = generate_dataset(tmp_path / "again", 2, 2, height=H, width=W, seed=1)
    files = sorted(p.relative_to(raw) for p in raw.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for relative in files:
        assert (raw / relative).read_bytes() == (again / relative).read_bytes(), relative
    stamp = (again / "labels.csv").stat().st_mtime_ns
    generate_dataset(again, 2, 2, height=H, width=W, seed=1)
    assert (again / "labels.csv").stat().st_mtime_ns == stamp  # same arguments: nothing rewritten


def test_other_arguments_regenerate_and_clean_up(tmp_path: Path) -> None:
    out = generate_dataset(tmp_path / "raw", 2, 1, height=64, width=48, seed=0)
    before = pydicom.dcmread(out / "dicom/SYN00000000/L_CC.dcm").pixel_array
    generate_dataset(out, 1, 0, height=64, width=48, seed=5)
    labels = pd.read_csv(out / "labels.csv")
    assert len(labels) == 4 and set(labels["label"]) == {"normal"}
    assert not list(out.glob("lesions/*.png"))
    assert sorted(p.name for p in (out / "dicom").iterdir()) == ["SYN00500000"]
    assert not (out / "dicom/SYN00000000/L_CC.dcm").exists()
    assert before.shape == (64, 48)
