"""DICOM header handling: windowing tables, inversion, sigmoid, rescale, laterality/view, checks."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_fixtures import make_dataset
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mammo_anogan.data.dicom_io import (
    check_image_header,
    dicom_laterality,
    dicom_patient_key,
    dicom_view,
    window_tables,
)
from mammo_anogan.data.preprocess import RejectedInput

PIXELS = np.zeros((8, 8), np.uint16)


def test_linear_header_window_gives_known_values() -> None:
    ds = make_dataset(PIXELS, WindowCenter=1000, WindowWidth=1000)
    modality, table, window, _ = window_tables(ds, np.dtype(np.uint16))
    assert window.source == "header" and (window.center, window.width) == (1000.0, 1000.0)
    assert modality[1234] == 1234.0
    # DICOM LINEAR: ((x - (c - 0.5)) / (w - 1) + 0.5) scaled to 0..255
    assert table[499] == 0 and table[1500] == 255
    assert table[1000] == 128
    assert table[750] == round(((750 - 999.5) / 999 + 0.5) * 255)


def test_monochrome1_is_inverted() -> None:
    ds = make_dataset(PIXELS, WindowCenter=1000, WindowWidth=1000, PhotometricInterpretation="MONOCHROME1")
    _, table, _, _ = window_tables(ds, np.dtype(np.uint16))
    assert table[499] == 255 and table[1500] == 0
    assert table[750] == 255 - round(((750 - 999.5) / 999 + 0.5) * 255)


def test_sigmoid_window() -> None:
    ds = make_dataset(PIXELS, WindowCenter=1000, WindowWidth=400, VOILUTFunction="SIGMOID")
    _, table, _, _ = window_tables(ds, np.dtype(np.uint16))
    assert table[1000] == 128  # 255 / 2 at the centre
    assert table[1200] == round(255 / (1 + np.exp(-2.0)))  # 225
    assert table[800] == round(255 / (1 + np.exp(2.0)))  # 30


def test_rescale_slope_intercept_applied_before_window() -> None:
    ds = make_dataset(PIXELS, WindowCenter=1000, WindowWidth=1000, RescaleSlope=2, RescaleIntercept=-1000)
    modality, table, _, _ = window_tables(ds, np.dtype(np.uint16))
    assert modality[1000] == 1000.0 and modality[700] == 400.0
    assert table[1000] == 128  # modality 1000 = window centre
    assert table[700] == 0 and table[1300] == 255


def test_voi_lut_sequence_is_preferred() -> None:
    item = Dataset()
    item.LUTDescriptor = [4, 100, 8]  # 4 entries, first input value 100, 8-bit output
    item.LUTData = [0, 50, 200, 255]
    ds = make_dataset(PIXELS, WindowCenter=5000, WindowWidth=10)
    ds.VOILUTSequence = Sequence([item])
    _, table, window, _ = window_tables(ds, np.dtype(np.uint16))
    assert window.source == "voi_lut"
    assert list(table[[0, 100, 101, 102, 103, 4000]]) == [0, 0, 50, 200, 255, 255]


def test_no_window_tags_returns_no_display_table() -> None:
    modality, table, window, note = window_tables(make_dataset(PIXELS), np.dtype(np.uint16))
    assert table is None and window is None and note == "" and modality.shape == (65536,)


def test_laterality_and_view_fallback_chain() -> None:
    assert dicom_laterality(make_dataset(PIXELS, ImageLaterality="R", Laterality="L")) == "R"
    assert dicom_laterality(make_dataset(PIXELS, Laterality="L")) == "L"
    assert dicom_laterality(make_dataset(PIXELS)) == "U"
    assert dicom_view(make_dataset(PIXELS, ViewPosition="MLO", PatientOrientation="CC")) == "MLO"
    code = Dataset()
    code.CodeValue, code.CodeMeaning = "399162004", "cranio-caudal"
    ds = make_dataset(PIXELS)
    ds.ViewCodeSequence = Sequence([code])
    assert dicom_view(ds) == "CC"
    assert dicom_view(make_dataset(PIXELS, PatientOrientation="MLO")) == "MLO"  # CBIS-DDSM
    assert dicom_view(make_dataset(PIXELS, PatientOrientation=["A", "R"])) == "UNKNOWN"
    assert dicom_view(make_dataset(PIXELS, SeriesDescription="R CC screening")) == "CC"


def test_cbis_patient_ids_collapse_to_the_patient() -> None:
    ids = ["Mass-Test_P_00173_LEFT_CC", "Mass-Test_P_00173_RIGHT_MLO"]
    keys = {dicom_patient_key(make_dataset(PIXELS, PatientID=i)) for i in ids}
    assert keys == {"P_00173"}


@pytest.mark.parametrize(
    ("attributes", "reason"),
    [
        ({"Modality": "CT"}, "modality CT not in [MG]"),
        ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.88.22"}, "non-image DICOM"),
        ({"Rows": 20000, "Columns": 20000}, "declares 400000000 pixels"),
        ({"PhotometricInterpretation": "RGB"}, "photometric interpretation RGB"),
    ],
)
def test_header_checks_reject_before_decoding(attributes: dict, reason: str) -> None:
    ds = make_dataset(PIXELS, **attributes)
    with pytest.raises(RejectedInput, match=reason.replace("[", r"\[").replace("]", r"\]")):
        check_image_header(ds, ["MG"], 100_000_000)


def test_missing_pixel_data_is_rejected() -> None:
    ds = make_dataset(PIXELS)
    del ds.PixelData
    with pytest.raises(RejectedInput, match="missing pixel data"):
        check_image_header(ds, [], 100_000_000)
