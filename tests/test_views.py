"""The view / laterality vocabularies (docs/dicom_vocabulary.md): DICOM codes, vendors, public datasets."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_fixtures import make_dataset
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mammo_anogan.data.dicom_io import dicom_view_facts
from mammo_anogan.data.views import (
    laterality_from_text,
    parse_view_text,
    partial_view_from_code,
    view_from_code,
)

PIXELS = np.zeros((8, 8), np.uint16)


@pytest.mark.parametrize(
    ("text", "view", "side"),
    [
        # DICOM ViewPosition defined terms (ACR MQCM 1999) and combined vendor codes
        ("CC", "CC", None),
        ("MLO", "MLO", None),
        ("ML", "ML", None),
        ("LM", "LM", None),
        ("LMO", "LMO", None),
        ("XCCL", "XCCL", None),
        ("XCCM", "XCCM", None),
        ("FB", "FB", None),
        ("SIO", "SIO", None),
        ("AT", "AT", None),
        ("CV", "CV", None),
        ("RCC", "CC", "R"),
        ("LCC", "CC", "L"),
        ("RMLO", "MLO", "R"),
        ("LMLO", "MLO", "L"),
        ("RML", "ML", "R"),
        ("LLM", "LM", "L"),
        ("RXCCL", "XCCL", "R"),
        ("LCCID", "CC", "L"),  # implant displaced (Eklund): still a full-field CC
        ("CCR", "CC", "R"),
        ("MLOL", "MLO", "L"),
        ("R-CC", "CC", "R"),
        ("L_MLO", "MLO", "L"),
        ("RIGHT CC", "CC", "R"),
        ("LEFT MLO", "MLO", "L"),
        ("R CC", "CC", "R"),  # Hologic / Siemens SeriesDescription
        ("L MLO TOMO", "MLO", "L"),
        # ViewCodeSequence code meanings (CID 4014) and other spelled-out forms
        ("cranio-caudal", "CC", None),
        ("medio-lateral oblique", "MLO", None),
        ("Mediolateral Oblique", "MLO", None),
        ("latero-medial", "LM", None),
        ("cranio-caudal exaggerated laterally", "XCCL", None),
        ("caudo-cranial (from below)", "FB", None),
        ("CRANIOCAUDAL", "CC", None),
        # Spanish / Portuguese / French / German side words seen in exported series
        ("OML IZQ", "MLO", "L"),
        ("CC DERECHA", "CC", "R"),
        ("CC GAUCHE", "CC", "L"),
        ("MLO RECHTS", "MLO", "R"),
        # public datasets' naming
        ("Mass-Training_P_00001_LEFT_CC", "CC", "L"),  # CBIS-DDSM ids and folders
        ("Calc-Test_P_00038_RIGHT_MLO_1", "MLO", "R"),
        ("22678622_61b13c59bcba149e_MG_R_CC_ANON.dcm", "CC", "R"),  # INbreast file names
    ],
)
def test_views_and_sides_of_vendors_and_datasets(text: str, view: str, side: str | None) -> None:
    facts = parse_view_text(text)
    assert (facts.view, facts.laterality, facts.partial) == (view, side, frozenset())


@pytest.mark.parametrize(
    ("text", "partial"),
    [
        ("MCC", "magnification"),
        ("SCC", "spot compression"),
        ("LMMLO", "magnification"),
        ("SPOT CC", "spot compression"),
    ],
)
def test_partial_views_are_flagged(text: str, partial: str) -> None:
    assert partial in parse_view_text(text).partial


@pytest.mark.parametrize(
    "text",
    ["full mammogram images", "Mammo at screening", "L CC, L MLO", "ROI mask images", "R", "ISO_IR 100"],
)
def test_free_text_without_a_single_view_gives_none(text: str) -> None:
    assert parse_view_text(text, free_text=True).view is None


@pytest.mark.parametrize(
    ("code", "view"),
    [
        ("R-10242", "CC"),
        ("399162004", "CC"),
        ("R-10226", "MLO"),
        ("399368009", "MLO"),
        ("R-10224", "ML"),
        ("R-10228", "LM"),
        ("R-10230", "LMO"),
        ("R-1024A", "XCCL"),
        ("Y-X1770", "XCCL"),
        ("R-1024B", "XCCM"),
        ("R-10244", "FB"),
        ("R-102D0", "SIO"),
        ("R-40AAA", "ISO"),
        ("G-8310", "SPECIMEN"),
        ("399099002", "LMO"),
        ("399192008", "XCCL"),
        ("399101009", "XCCM"),
        ("399196006", "FB"),
        ("399188001", "SIO"),
        ("441555000", "ISO"),
        ("399260004", "ML"),
        ("399352003", "LM"),
    ],
)
def test_cid_4014_codes(code: str, view: str) -> None:
    assert view_from_code(code).view == view


def test_cid_4015_partial_view_modifiers() -> None:
    assert partial_view_from_code("R-102D6") == partial_view_from_code("399163009") == "magnification"
    assert partial_view_from_code("R-102D7") == partial_view_from_code("399055006") == "spot compression"
    assert partial_view_from_code("R-102D5", "Implant Displaced") is None


@pytest.mark.parametrize(
    ("value", "side"), [("L", "L"), ("Left", "L"), ("RIGHT", "R"), ("R", "R"), ("B", "B"), ("", None)]
)
def test_laterality_values(value: str, side: str | None) -> None:
    assert laterality_from_text(value) == side


def test_header_sources_in_order_and_disagreements_noted() -> None:
    code = Dataset()
    code.CodeValue, code.CodeMeaning = "399368009", "medio-lateral oblique"
    modifier = Dataset()
    modifier.CodeValue, modifier.CodeMeaning = "R-102D7", "Spot Compression"
    code.ViewModifierCodeSequence = Sequence([modifier])
    ds = make_dataset(PIXELS, ViewPosition="CC", SeriesDescription="L MLO", ImageLaterality="R")
    ds.ViewCodeSequence = Sequence([code])
    facts = dicom_view_facts(ds)
    assert facts.view == "MLO" and facts.laterality == "R" and facts.partial == {"spot compression"}
    assert (
        "view sources disagree (ViewCodeSequence MLO, ViewPosition CC, SeriesDescription MLO)" in facts.note
    )
    assert "laterality sources disagree (ImageLaterality R, SeriesDescription L)" in facts.note
    fuji = dicom_view_facts(
        make_dataset(PIXELS, ViewPosition="", AcquisitionDeviceProcessingDescription="L CC")
    )
    assert (fuji.view, fuji.laterality, fuji.note) == ("CC", "L", "")
    named = dicom_view_facts(make_dataset(PIXELS), relpath="patient/20586908_MG_L_MLO_ANON.dcm")
    assert (named.view, named.laterality) == ("MLO", "L")
