"""Bad inputs never crash the run: each lands in rejected.csv with its own one-line reason."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from dicom_fixtures import compose_prepare, phantom, write_dicom
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML

from mammo_anogan.prepare import prepare_dataset, run

SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR


def _bad_folder(root: Path) -> Path:
    source = root / "raw"
    good = write_dicom(
        source / "p1" / "good.dcm", phantom(), WindowCenter=2000, WindowWidth=2000, ViewPosition="CC"
    )
    data = good.read_bytes()
    (source / "p1" / "truncated_pixels.dcm").write_bytes(data[: len(data) - 4000])
    (source / "p1" / "truncated_header.dcm").write_bytes(data[:200])
    (source / "notes.txt").write_text("not an image\n")
    write_dicom(source / "p2" / "ct", phantom(), Modality="CT", ViewPosition="CC")  # no suffix
    write_dicom(source / "p2" / "report.dcm", phantom(), SOPClassUID=SR_SOP_CLASS, Modality="MG")
    pixel_less = write_dicom(source / "p2" / "nopixels.dcm", phantom(), ViewPosition="CC")
    import pydicom

    dataset = pydicom.dcmread(pixel_less)
    del dataset.PixelData
    dataset.save_as(pixel_less)
    write_dicom(source / "p3" / "huge.dcm", phantom(), ViewPosition="CC", Rows=20000, Columns=20000)
    video = write_dicom(source / "p3" / "video.dcm", phantom(), ViewPosition="CC")
    dataset = pydicom.dcmread(video)
    dataset.file_meta.TransferSyntaxUID = MPEG2MPML
    dataset.PixelData = encapsulate([b"\x00" * 64])
    dataset.save_as(video, enforce_file_format=True)
    write_dicom(source / "p3" / "blank.dcm", np.zeros((96, 64), np.uint16), ViewPosition="CC")
    return source


EXPECTED_REASONS = {
    "truncated_pixels": "pixel data could not be decoded",
    "truncated_header": "truncated or corrupt DICOM header",
    "notes": "not a DICOM file",
    "ct": "modality CT not in [MG]",
    "report": "non-image DICOM",
    "nopixels": "missing pixel data",
    "huge": "declares 400000000 pixels",
    "video": "no decoder exists for transfer syntax",
    "blank": "empty breast mask",
}


def test_every_bad_file_rejected_with_a_distinct_reason(tmp_path: Path) -> None:
    source = _bad_folder(tmp_path)
    out = tmp_path / "out"
    cfg = compose_prepare(
        [
            "data=dicom",
            f"data.source={source}",
            "data.resolution=32",
            f"prepare.out_dir={out}",
            "prepare.workers=2",
        ]
    )
    result = prepare_dataset(cfg)
    assert (result.kept, result.rejected) == (1, len(EXPECTED_REASONS))
    reasons = [r["reason"] for r in csv.DictReader((out / "rejected.csv").open())]
    assert all("\n" not in r and str(tmp_path) not in r for r in reasons)
    for expected in EXPECTED_REASONS.values():
        assert sum(reason.startswith(expected) for reason in reasons) == 1, (expected, reasons)
    kept = list(csv.DictReader((out / "manifest.csv").open()))
    sources = [r["source"] for r in kept] + [
        r["source"] for r in csv.DictReader((out / "rejected.csv").open())
    ]
    n_files = sum(1 for p in source.rglob("*") if p.is_file())
    assert len(sources) == len(set(sources)) == n_files  # each input in exactly one file
    assert kept[0]["window_source"] == "header" and kept[0]["window_center"] == "2000.00"


def test_per_file_time_limit(tmp_path: Path) -> None:
    source = tmp_path / "raw"
    write_dicom(source / "a.dcm", phantom(height=400, width=300), ViewPosition="CC")
    write_dicom(source / "b.dcm", phantom(height=400, width=300, seed=1), ViewPosition="CC")
    cfg = compose_prepare(
        [
            "data=dicom",
            f"data.source={source}",
            "data.resolution=32",
            f"prepare.out_dir={tmp_path / 'out'}",
            "prepare.workers=0",
            "prepare.file_timeout_s=0.000001",
        ]
    )
    with pytest.raises(SystemExit) as exit_info:  # nothing kept -> one-line error, exit 2
        run(cfg)
    assert exit_info.value.code == 2
    reasons = [r["reason"] for r in csv.DictReader((tmp_path / "out" / "rejected.csv").open())]
    assert reasons == ["exceeded the per-file time limit of 1e-06 s"] * 2


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_missing_or_empty_source_is_one_line_user_error(
    tmp_path: Path, make: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "raw"
    if make == "empty":
        source.mkdir()
    cfg = compose_prepare(["data=dicom", f"data.source={source}", f"prepare.out_dir={tmp_path / 'out'}"])
    with pytest.raises(SystemExit) as exit_info:
        run(cfg)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data.source") and "\n" not in err
    assert not (tmp_path / "out").exists()  # nothing written for a bad source
