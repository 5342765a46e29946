"""Issue 11: DICOM quirks reported from the field, each rebuilt from a real CBIS-DDSM film.

One test per field case of the issue (each failed before the fix), plus the other members of each
kind: (1) window and mask right whatever the VOI function, window count or lifted background;
(2) orientation from every header that states it, cross-checked with the pixels; (3) header
elements present but empty or malformed; (4) every non-image file kind named; (5) view and
laterality vocabularies (the parser's table is tested in ``test_views.py``).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_fixtures import make_dataset, phantom, write_dicom
from field_films import (
    MG_FOR_PROCESSING,
    SECONDARY_CAPTURE,
    chest_wall_side,
    film,
    prepare_folder,
    read_png,
    write_film,
)
from pydicom.dataset import Dataset
from pydicom.fileset import FileSet
from pydicom.sequence import Sequence

from mammo_anogan.data.preprocess import PreprocessSettings, RejectedInput, prepare_image
from mammo_anogan.data.readers import InputItem, load_item
from mammo_anogan.prepare import JobSettings, process_item

LEFT_CC = "1-130"
LEFT_CC_C02 = "1-280"  # the film of field case C02 (its 12-bit version equals the field file)


def _mask_fraction(out: Path, row: dict[str, str]) -> float:
    """Breast mask area over the film's area in the prepared square (the film is narrower)."""
    mask = read_png(out / row["mask_path"]) > 0
    width = int(round(int(row["raw_width"]) / int(row["raw_height"]) * mask.shape[0]))
    return float(mask.sum()) / (mask.shape[0] * width)


# ------------------------------------------------------------------ (1) window and mask
@pytest.fixture(scope="module")
def reference_fraction(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """Mask fraction of each plain film (no window tags: the documented fallback window)."""
    base = tmp_path_factory.mktemp("reference")
    fractions = {}
    for name in (LEFT_CC, LEFT_CC_C02):
        write_film(base / name / "raw" / "plain.dcm", film(name), ImageLaterality="L", ViewPosition="CC")
        rows, _ = prepare_folder(base / name / "raw", base / name / "out")
        fractions[name] = _mask_fraction(base / name / "out", rows[0])
    return fractions


def _sigmoid_12bit(path: Path, **extra: object) -> Path:
    """Field case C02: the film shifted to 12-bit data, three SIGMOID windows, no LUT sequence."""
    return write_film(
        path,
        (film(LEFT_CC_C02) >> 4).astype(np.uint16),
        BitsStored=12,
        HighBit=11,
        Laterality="L",
        PatientOrientation="CC",
        SOPClassUID=SECONDARY_CAPTURE,
        WindowCenter=[1743, 1943, 1543],
        WindowWidth=[3478, 2435, 4521],
        VOILUTFunction="SIGMOID",
        **extra,
    )


def test_sigmoid_multiwindow_keeps_a_breast_only_mask_and_a_black_background(
    tmp_path: Path, reference_fraction: dict[str, float]
) -> None:
    _sigmoid_12bit(tmp_path / "raw" / "c02.dcm")
    rows, rejected = prepare_folder(tmp_path / "raw", tmp_path / "out")
    assert rejected == [] and len(rows) == 1
    row = rows[0]
    fraction = _mask_fraction(tmp_path / "out", row)
    # Before the fix: the lifted background (grey ~30) put the whole film in the mask (~100 %).
    assert fraction == pytest.approx(reference_fraction[LEFT_CC_C02], rel=0.1) and fraction < 0.5
    assert row["window_source"] == "header" and float(row["window_center"]) == 1743.0  # window 1 of 3
    assert "lifts the background to grey" in row["window_check"]
    image = read_png(tmp_path / "out" / row["image_path"])
    assert np.median(image[read_png(tmp_path / "out" / row["mask_path"]) == 0]) == 0  # background black


def test_a_window_whose_mask_fails_the_sanity_check_gives_way_to_the_fallback(
    tmp_path: Path, reference_fraction: dict[str, float]
) -> None:
    """With the background correction off, the area check catches the whole-film mask itself."""
    _sigmoid_12bit(tmp_path / "raw" / "c02.dcm")
    rows, _ = prepare_folder(tmp_path / "raw", tmp_path / "out", "data.preprocess.background_lift_max=255")
    row = rows[0]
    assert row["window_source"] == "fallback_breast_percentile"
    assert (
        "header window replaced by the fallback window: mask covers 100% of the film" in row["window_check"]
    )
    assert _mask_fraction(tmp_path / "out", row) == pytest.approx(reference_fraction[LEFT_CC_C02], rel=0.1)


@pytest.mark.parametrize(
    ("attributes", "source", "center", "check"),
    [
        # a LINEAR window centred below the background lifts it just like SIGMOID does
        ({"WindowCenter": 9000, "WindowWidth": 30000}, "header", 9000.0, "lifts the background"),
        # more centres than widths: pairs in order, the first is the default
        ({"WindowCenter": [20000, 9000, 1], "WindowWidth": [40000, 5]}, "header", 20000.0, ""),
        # the first window is unusable (width 0): the next usable one, said in the manifest
        (
            {"WindowCenter": [20000, 21000], "WindowWidth": [0, 40000]},
            "header",
            21000.0,
            "window 2 of 2 used",
        ),
        # an unknown VOI LUT Function reads as LINEAR, the standard's default
        (
            {"WindowCenter": 20000, "WindowWidth": 40000, "VOILUTFunction": "LOG"},
            "header",
            20000.0,
            "LINEAR used",
        ),
        # SIGMOID with width 0 is unusable: the fallback window
        (
            {"WindowCenter": 20000, "WindowWidth": 0, "VOILUTFunction": "SIGMOID"},
            "fallback_breast_percentile",
            None,
            "header window unusable (width 0)",
        ),
    ],
    ids=["linear-low-centre", "count-mismatch", "first-unusable", "unknown-function", "sigmoid-width-0"],
)
def test_window_kind_members(
    tmp_path: Path, attributes: dict, source: str, center: float | None, check: str
) -> None:
    write_film(
        tmp_path / "raw" / "f.dcm", film(LEFT_CC), ImageLaterality="L", ViewPosition="CC", **attributes
    )
    rows, rejected = prepare_folder(tmp_path / "raw", tmp_path / "out")
    assert rejected == []
    row = rows[0]
    assert row["window_source"] == source and check in row["window_check"]
    if center is not None:
        assert float(row["window_center"]) == center
    assert _mask_fraction(tmp_path / "out", row) < 0.5  # never the whole film


def test_an_unusable_voi_lut_sequence_falls_through_to_the_window(tmp_path: Path) -> None:
    item = Dataset()
    item.LUTDescriptor = [0, 0, 16]
    item.LUTData = []
    path = write_film(
        tmp_path / "raw" / "f.dcm", film(LEFT_CC), ViewPosition="CC", WindowCenter=20000, WindowWidth=40000
    )
    dataset = pydicom.dcmread(path)
    dataset.VOILUTSequence = Sequence([item])
    dataset.save_as(path, enforce_file_format=True)
    rows, _ = prepare_folder(tmp_path / "raw", tmp_path / "out")
    assert rows[0]["window_source"] == "header" and "VOI LUT Sequence unusable" in rows[0]["window_check"]


# ------------------------------------------------------- (1) raw data never kept inverted
def _raw_detector(stored: np.ndarray) -> np.ndarray:
    """Field case C05's pixels: raw = 16383 exp(-2.5 v / 65535), 14 bit, background brightest."""
    return np.rint(16383 * np.exp(-2.5 * stored.astype(np.float64) / 65535)).astype(np.uint16)


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        (
            {"SOPClassUID": MG_FOR_PROCESSING, "PresentationIntentType": "FOR PROCESSING"},
            "for-processing image (raw detector data",
        ),
        ({"SOPClassUID": MG_FOR_PROCESSING}, "for-processing image"),
        ({"PresentationIntentType": "FOR PROCESSING"}, "for-processing image"),
        ({}, "background brighter than the breast"),  # untagged raw data: caught from the pixels
    ],
    ids=["C05", "sop-class-only", "intent-only", "untagged"],
)
def test_raw_detector_images_are_rejected_never_inverted(
    tmp_path: Path, attributes: dict, reason: str
) -> None:
    write_film(
        tmp_path / "raw" / "raw.dcm",
        _raw_detector(film(LEFT_CC)),
        BitsStored=14,
        HighBit=13,
        ImageLaterality="L",
        ViewPosition="CC",
        **attributes,
    )
    rows, rejected = prepare_folder(tmp_path / "raw", tmp_path / "out")
    assert rows == [] and len(rejected) == 1 and rejected[0]["reason"].startswith(reason)


def test_photometric_interpretation_is_checked_against_the_pixels(tmp_path: Path) -> None:
    """MONOCHROME1 pixels kept as MONOCHROME1 are fine; labelled MONOCHROME2 they are rejected."""
    inverted = (65535 - film(LEFT_CC)).astype(np.uint16)
    write_film(
        tmp_path / "raw" / "m1.dcm", inverted, PhotometricInterpretation="MONOCHROME1", ViewPosition="LCC"
    )
    write_film(tmp_path / "raw" / "m1_as_m2.dcm", inverted, ImageLaterality="L", ViewPosition="CC")
    rows, rejected = prepare_folder(tmp_path / "raw", tmp_path / "out")
    assert [r["reason"].split(":")[0] for r in rejected] == ["background brighter than the breast"]
    image = read_png(tmp_path / "out" / rows[0]["image_path"])
    assert chest_wall_side(image) == "L" and image[:, -8:].max() == 0  # dark background, as presented


# ------------------------------------------------------------------------- (2) orientation
def test_mirrored_storage_follows_patient_orientation(tmp_path: Path) -> None:
    """Field case C10: a left CC stored mirrored, PatientOrientation P\\R: chest wall on the left."""
    write_film(
        tmp_path / "raw" / "c10.dcm",
        np.ascontiguousarray(film(LEFT_CC)[:, ::-1]),
        ImageLaterality="L",
        Laterality="L",
        ViewPosition="CC",
        PatientOrientation=["P", "R"],
    )
    rows, _ = prepare_folder(tmp_path / "raw", tmp_path / "out")
    row = rows[0]
    assert (row["laterality"], row["flipped"], row["orientation_source"]) == (
        "L",
        "True",
        "patient_orientation",
    )
    assert "stored mirrored" in row["orientation_check"]
    assert chest_wall_side(read_png(tmp_path / "out" / row["image_path"])) == "L"


def test_headers_contradicting_the_pixels_are_reported_and_the_pixels_win(tmp_path: Path) -> None:
    mirrored = np.ascontiguousarray(film(LEFT_CC)[:, ::-1])
    write_film(tmp_path / "raw" / "a.dcm", mirrored, ImageLaterality="L", ViewPosition="CC")  # no PO
    write_film(
        tmp_path / "raw" / "b.dcm",
        mirrored,
        ImageLaterality="L",
        ViewPosition="CC",
        PatientOrientation=["A", "R"],
    )
    rows, _ = prepare_folder(tmp_path / "raw", tmp_path / "out")
    assert len(rows) == 2
    for row in rows:
        assert row["orientation_source"] == "pixels" and row["flipped"] == "True"
        assert "pixels say right: followed the pixels" in row["orientation_check"]
        assert chest_wall_side(read_png(tmp_path / "out" / row["image_path"])) == "L"
    _, rejected = prepare_folder(
        tmp_path / "raw", tmp_path / "strict", "data.preprocess.orientation_conflict=reject"
    )
    assert sorted(r["reason"] for r in rejected) == [
        "orientation contradiction (laterality says chest wall left, pixels say right)",
        "orientation contradiction (patient_orientation says chest wall left, pixels say right)",
    ]


def test_laterality_sources_that_disagree_are_reported(tmp_path: Path) -> None:
    write_film(tmp_path / "raw" / "f.dcm", film(LEFT_CC), ImageLaterality="L", ViewPosition="RCC")
    rows, _ = prepare_folder(tmp_path / "raw", tmp_path / "out")
    row = rows[0]
    assert row["laterality"] == "L" and row["flipped"] == "False"  # ImageLaterality first; pixels agree
    assert "laterality sources disagree (ImageLaterality L, ViewPosition R)" in row["orientation_check"]


def test_an_mlo_stored_upside_down_is_turned_by_patient_orientation(tmp_path: Path) -> None:
    mlo = film("1-131")
    write_film(
        tmp_path / "up" / "f.dcm",
        mlo,
        ImageLaterality="L",
        ViewPosition="MLO",
        PatientOrientation=["A", "FR"],
    )
    upside_down = np.ascontiguousarray(mlo[::-1])
    write_film(
        tmp_path / "down" / "f.dcm",
        upside_down,
        ImageLaterality="L",
        ViewPosition="MLO",
        PatientOrientation=["A", "HR"],
    )
    upright, _ = prepare_folder(tmp_path / "up", tmp_path / "out_up")
    turned, _ = prepare_folder(tmp_path / "down", tmp_path / "out_down")
    assert "stored upside down, flipped vertically" in turned[0]["orientation_check"]
    a = read_png(tmp_path / "out_up" / upright[0]["image_path"])
    b = read_png(tmp_path / "out_down" / turned[0]["image_path"])
    assert np.array_equal(a, b)


# ---------------------------------------------------------- (3) empty / malformed elements
def test_empty_window_elements_use_the_fallback_window(tmp_path: Path) -> None:
    """Field case C13: WindowCenter/Width present with zero length (was ``unexpected error (TypeError)``)."""
    write_film(tmp_path / "raw" / "blank.dcm", film(LEFT_CC), Laterality="L", PatientOrientation="CC")
    dataset = pydicom.dcmread(tmp_path / "raw" / "blank.dcm")
    dataset.WindowCenter, dataset.WindowWidth = None, None
    dataset.save_as(tmp_path / "raw" / "blank.dcm", enforce_file_format=True)
    write_film(
        tmp_path / "raw" / "zero.dcm",
        film(LEFT_CC),
        Laterality="L",
        PatientOrientation="CC",
        WindowCenter=20000,
        WindowWidth=0,
    )
    rows, rejected = prepare_folder(tmp_path / "raw", tmp_path / "out")
    assert rejected == [] and len(rows) == 2
    checks = sorted(r["window_check"] for r in rows)
    assert checks == [
        "header window unusable (empty): fallback window",
        "header window unusable (width 0): fallback window",
    ]
    assert {r["window_source"] for r in rows} == {"fallback_breast_percentile"}


#: Every element the DICOM reader reads, with its VR. Present-but-empty or malformed, each must give a
#: kept film or a one-line reason (never ``unexpected error``); the optional ones must keep the film.
OPTIONAL_ELEMENTS = [
    ("WindowCenter", "DS"),
    ("WindowWidth", "DS"),
    ("VOILUTFunction", "CS"),
    ("RescaleSlope", "DS"),
    ("RescaleIntercept", "DS"),
    ("ViewPosition", "CS"),
    ("ImageLaterality", "CS"),
    ("Laterality", "CS"),
    ("PatientOrientation", "CS"),
    ("SeriesDescription", "LO"),
    ("ProtocolName", "LO"),
    ("AcquisitionDeviceProcessingDescription", "LO"),
    ("PresentationIntentType", "CS"),
    ("ImageType", "CS"),
    ("PatientID", "LO"),
    ("NumberOfFrames", "IS"),
    ("ViewCodeSequence", "SQ"),
    ("VOILUTSequence", "SQ"),
]
REQUIRED_ELEMENTS = [
    ("Modality", "CS"),
    ("SOPClassUID", "UI"),
    ("Rows", "US"),
    ("Columns", "US"),
    ("PhotometricInterpretation", "CS"),
    ("BitsAllocated", "US"),
    ("BitsStored", "US"),
    ("PixelRepresentation", "US"),
]
_GARBAGE = {
    "DS": b"1e9x",
    "CS": b"?%&",
    "LO": b"\xff\xfe\x00",
    "IS": b"x1 ",
    "UI": b"1..2",
    "US": b"\x07\x00\x08\x00",
}


def _element_variant(tmp_path: Path, keyword: str, vr: str, variant: str) -> InputItem:
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    dataset = make_dataset(
        phantom(96, 64), ViewPosition="CC", ImageLaterality="L", WindowCenter=2000, WindowWidth=2000
    )
    tag = Tag(tag_for_keyword(keyword))
    value = b"" if variant == "empty" or vr == "SQ" else _GARBAGE[vr]
    if vr == "SQ":
        dataset[tag] = pydicom.DataElement(tag, "SQ", Sequence([Dataset()]) if variant == "malformed" else [])
    else:
        dataset[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)
    dataset["PixelData"].VR = "OW"  # explicit, so the file can be written without BitsAllocated
    path = tmp_path / f"{keyword}_{variant}.dcm"
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    path.write_bytes(buffer.getvalue())
    return InputItem(relpath=path.name, path=str(path))


@pytest.mark.parametrize("variant", ["empty", "malformed"])
def test_every_element_read_may_be_present_but_empty_or_malformed(tmp_path: Path, variant: str) -> None:
    job = JobSettings(
        str(tmp_path / "out"), "salt", None, ("MG",), 10**8, 0, PreprocessSettings(resolution=32)
    )
    (tmp_path / "out").mkdir()
    for keyword, vr in OPTIONAL_ELEMENTS + REQUIRED_ELEMENTS:
        row = process_item(_element_variant(tmp_path, keyword, vr, variant), job)
        reason = row.get("reason", "")
        assert not reason.startswith("unexpected error"), (keyword, reason)
        assert "\n" not in reason and len(reason) < 200
        if (keyword, vr) in OPTIONAL_ELEMENTS:
            assert not reason, (keyword, variant, reason)


# ----------------------------------------------------------------- (4) non-image file kinds
def test_dicomdir_and_junk_each_get_their_own_reason(tmp_path: Path) -> None:
    """Field case C12 plus the other kinds found in exported folders; the image is kept."""
    source = tmp_path / "raw"
    image = make_dataset(
        film(LEFT_CC),
        BitsStored=16,
        HighBit=15,
        ImageLaterality="L",
        ViewPosition="CC",
        SeriesInstanceUID=pydicom.uid.generate_uid(),
        StudyTime="120000",
        StudyID="1",
        SeriesNumber=1,
        InstanceNumber=1,
    )
    file_set = FileSet()
    file_set.add(image)
    file_set.write(source)  # a real DICOMDIR (as dcmmkdir writes) beside the image
    junk = {
        "IM000002": b"",
        ".DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(60),
        "._IM000001": b"\x00\x05\x16\x07" + bytes(60),
        "Thumbs.db": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(60),
        "report.pdf": b"%PDF-1.4\n" + bytes(60),
        "export.png": b"\x89PNG\r\n\x1a\n" + bytes(60),
        "labels.csv": b"path,label\na.dcm,normal\n",
    }
    for name, data in junk.items():
        (source / name).write_bytes(data)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("x.dcm", b"DICM")
    (source / "more.zip").write_bytes(archive.getvalue())
    rows, rejected = prepare_folder(source, tmp_path / "out")
    assert len(rows) == 1 and rows[0]["view"] == "CC"
    assert sorted(r["reason"] for r in rejected) == [
        "DICOMDIR (index file, not an image)",
        "not a DICOM file (CSV table)",
        "not a DICOM file (Microsoft OLE file (Thumbs.db, old Office document))",
        "not a DICOM file (PDF document)",
        "not a DICOM file (PNG image: use data=folder with a labels CSV)",
        "not a DICOM file (ZIP archive: extract it first)",
        "not a DICOM file (empty file, 0 bytes)",
        "not a DICOM file (macOS .DS_Store folder metadata)",
        "not a DICOM file (macOS AppleDouble resource fork)",
    ]


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({"SeriesDescription": "ROI mask images"}, "lesion ROI mask image (CBIS-DDSM)"),
        ({"SeriesDescription": "cropped images"}, "cropped lesion patch (CBIS-DDSM)"),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "TOMO_PROJ"]}, "tomosynthesis image"),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "STEREO_SCOUT"]}, "stereotactic biopsy image"),
        ({"ImageType": ["DERIVED", "PRIMARY", "", "SUBTRACTION"]}, "contrast-enhanced subtraction image"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.66.4"}, "non-image DICOM (Segmentation Storage)"),
        ({"ViewPosition": "SCC"}, "spot compression view"),
        ({"ViewPosition": "MCC"}, "magnification view"),
        ({"ImageLaterality": "B"}, "laterality B (both breasts"),
    ],
)
def test_dicom_files_that_are_not_screening_films_are_named(
    tmp_path: Path, attributes: dict, reason: str
) -> None:
    job = JobSettings(
        str(tmp_path / "out"), "salt", None, ("MG",), 10**8, 0, PreprocessSettings(resolution=32)
    )
    (tmp_path / "out").mkdir()
    path = write_dicom(tmp_path / "f.dcm", phantom(96, 64), **{"ViewPosition": "CC", **attributes})
    row = process_item(InputItem(relpath="f.dcm", path=str(path)), job)
    assert row.get("reason", "").startswith(reason), row.get("reason")


# --------------------------------------------------------------- (5) views and laterality
def test_view_only_in_acquisition_device_processing_description(tmp_path: Path) -> None:
    """Field case C08 (Fujifilm): ViewPosition empty, PatientOrientation absent, (0018,1400) = CC."""
    write_film(
        tmp_path / "raw" / "c08.dcm",
        film(LEFT_CC),
        Manufacturer="FUJIFILM Corporation",
        AcquisitionDeviceProcessingDescription="CC",
        ViewPosition="",
        ImageLaterality="L",
    )
    rows, rejected = prepare_folder(tmp_path / "raw", tmp_path / "out", "data.views=[CC]")
    assert rejected == [] and rows[0]["view"] == "CC"


@pytest.mark.parametrize("view_position", ["RCC", "RIGHT CC", "R-CC", "CC R", "R_CC"])
def test_laterality_and_view_combined_in_view_position(tmp_path: Path, view_position: str) -> None:
    """Field case C09: ViewPosition "RCC", no laterality tags: right CC, flipped to the left."""
    write_film(tmp_path / "raw" / "c09.dcm", film("1-132"), ViewPosition=view_position)
    rows, rejected = prepare_folder(tmp_path / "raw", tmp_path / "out", "data.views=[CC]")
    assert rejected == []
    row = rows[0]
    assert (row["view"], row["laterality"], row["flipped"]) == ("CC", "R", "True")
    assert chest_wall_side(read_png(tmp_path / "out" / row["image_path"])) == "L"


def test_dataset_naming_outside_the_tags(tmp_path: Path) -> None:
    """INbreast names the view in the file name; CBIS-DDSM in PatientID; CMMD/OPTIMAM code it."""
    pixels = film("1-132")
    write_film(tmp_path / "raw" / "20586908_6c613a14b80a8591_MG_R_CC_ANON.dcm", pixels)
    write_film(tmp_path / "raw" / "cbis.dcm", pixels, PatientID="Mass-Training_P_00001_RIGHT_CC")
    coded = make_dataset(pixels, BitsStored=16, HighBit=15, ImageLaterality="R")
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "R-10242", "SRT", "cranio-caudal"
    coded.ViewCodeSequence = Sequence([item])
    coded.save_as(tmp_path / "raw" / "coded.dcm", enforce_file_format=True)
    rows, rejected = prepare_folder(tmp_path / "raw", tmp_path / "out", "data.views=[CC]")
    assert rejected == []
    assert [(r["view"], r["laterality"], r["flipped"]) for r in rows] == [("CC", "R", "True")] * 3


def test_public_dataset_table_columns_are_read(tmp_path: Path) -> None:
    """VinDr-Mammo's ``view_position`` and CMMD's ``LeftRight`` columns in a labels CSV."""
    source = tmp_path / "raw"
    write_film(source / "a.dcm", film("1-132"))
    (source / "labels.csv").write_text("path,label,LeftRight,view_position\na.dcm,normal,R,CC\n")
    item = next(
        i
        for i in __import__("mammo_anogan.data.readers", fromlist=["x"]).list_folder_inputs(
            source, source / "labels.csv"
        )
    )
    assert (item.laterality, item.view) == ("R", "CC")
    loaded = load_item(item, ["MG"], 10**8, ["CC"])
    prepared = prepare_image(loaded.raw, PreprocessSettings(resolution=32))
    assert prepared.flipped


def test_prepare_image_reports_an_unusable_film_as_a_rejection() -> None:
    """A uniform film has no breast: a one-line rejection, not an exception of another type."""
    from mammo_anogan.data.preprocess import RawImage, stored_value_domain

    pixels = np.full((64, 48), 1000, np.uint16)
    with pytest.raises(RejectedInput, match="empty breast mask"):
        prepare_image(
            RawImage(pixels, stored_value_domain(pixels.dtype).astype(float)), PreprocessSettings(32)
        )


def test_resuming_into_a_dataset_of_the_previous_manifest_layout_is_refused(tmp_path: Path) -> None:
    """The manifest gained columns (window_check, orientation_*): appending would misalign rows."""
    from mammo_anogan.data.manifest import MANIFEST_COLUMNS, DatasetWriter
    from mammo_anogan.utils.errors import UserError

    (tmp_path / "manifest.csv").write_text(",".join(c for c in MANIFEST_COLUMNS if "check" not in c) + "\n")
    with pytest.raises(UserError, match="prepare.overwrite=true"):
        DatasetWriter(tmp_path)
