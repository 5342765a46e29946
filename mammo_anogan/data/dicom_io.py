"""DICOM reading for mammograms: validation before decoding, decoding, windowing tables, header facts.

Every check that can be made from the header is made *before* the pixel data is decoded (modality,
image SOP class, pixel data present, declared size, decoder installed, view), so a folder full of
structured reports, CT series or 100-megapixel scans costs almost nothing and each such file is
rejected with its own one-line reason. Pixel data is decoded with pylibjpeg when it is installed
(about 2-3x faster than pydicom's pure-Python RLE decoder on full-field films).

Intensities follow the standard pipeline: modality LUT / rescale (``apply_modality_lut``), then the
VOI LUT or window (``apply_voi_lut``, LINEAR / LINEAR_EXACT / SIGMOID), then MONOCHROME1 inversion.
They are evaluated once on every possible stored value (a table of at most 65,536 entries) and
applied to the film by table look-up.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

from mammo_anogan.data.preprocess import (
    LATERALITY_UNKNOWN,
    RawImage,
    RejectedInput,
    Window,
    normalise_to_uint8,
    stored_value_domain,
)

# Storage SOP classes that never hold a mammogram's pixels (reports, presentation states, documents).
_NON_IMAGE_SOP_WORDS = (
    "SR Storage",
    "Presentation State",
    "Key Object",
    "Encapsulated",
    "Raw Data",
    "Waveform",
)
_VIEW_CODES = {
    "R-10242": "CC",
    "399162004": "CC",
    "R-10226": "MLO",
    "399368009": "MLO",
    "R-10224": "ML",
    "399260004": "ML",
    "R-10228": "LM",
    "399352003": "LM",
}
_CBIS_PATIENT = re.compile(r"^(?:Calc|Mass)-(?:Test|Training)_(P_\d+)_(?:LEFT|RIGHT)_(?:CC|MLO)", re.I)


_QUOTED = re.compile(r"b?'[^']*'" + r'|b?"[^"]*"')
_SAFE_TOKEN = re.compile(r"[A-Z][A-Z0-9_ ]{0,15}")
_ELEMENT_NAMES: frozenset[str] | None = None


def _element_names() -> frozenset[str]:
    """Names of the standard DICOM elements ('Bits Stored', ...): quoting them reveals nothing."""
    global _ELEMENT_NAMES
    if _ELEMENT_NAMES is None:
        from pydicom.datadict import DicomDictionary

        _ELEMENT_NAMES = frozenset(entry[2] for entry in DicomDictionary.values())
    return _ELEMENT_NAMES


def _redact_quoted(match: re.Match[str]) -> str:
    """Keep a quoted element name or small number; anything else could be a header value."""
    inner = match.group(0).lstrip("b")[1:-1]
    if inner in _element_names() or (inner.isdigit() and len(inner) <= 4):
        return match.group(0)
    return "'...'"


def _short(err: BaseException, *secrets_to_hide: str) -> str:
    """First line of an exception message, capped in length, without paths or quoted header values.

    Parser messages can quote raw bytes of a damaged header, which may hold a patient's name or ID.
    """
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    for secret in secrets_to_hide:
        if secret:
            text = text.replace(secret, "<file>")
    text = _QUOTED.sub(_redact_quoted, text)
    text = f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text[:160]


def safe_token(value: str) -> str:
    """``value`` when it looks like a DICOM code string (``MG``, ``MONOCHROME2``), else ``invalid``.

    Why: a damaged length field makes a code string swallow the following elements (patient name,
    ID, UIDs); echoing it into ``rejected.csv`` would leak them.
    """
    return value if _SAFE_TOKEN.fullmatch(value) else "invalid"


def read_header(path: Path) -> Dataset:
    """Read a DICOM file lazily (large elements deferred); reject non-DICOM and truncated headers."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path, defer_size="512 KB")
    except InvalidDicomError:
        dataset = None
    except Exception as err:  # noqa: BLE001 - any parser failure is a property of the file
        raise RejectedInput(f"truncated or corrupt DICOM header ({_short(err, str(path))})") from None
    if dataset is not None:
        if "SOPClassUID" not in dataset and "Rows" not in dataset:  # the parser stopped at the cut
            raise RejectedInput("truncated or corrupt DICOM header (no image attributes)")
        return dataset
    # No 128-byte preamble: accept a bare data set only if it really looks like an image.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path, defer_size="512 KB", force=True)
        if "SOPClassUID" in dataset and "Rows" in dataset:
            return dataset
    except Exception:  # noqa: BLE001
        pass
    raise RejectedInput("not a DICOM file")


def transfer_syntax(dataset: Dataset) -> pydicom.uid.UID | None:
    """The file's transfer syntax UID; a damaged or unknown one is a rejection, not a ValueError."""
    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    if syntax is None:
        return None
    try:
        known = syntax.is_transfer_syntax  # raises ValueError for private (e.g. bit-flipped) UIDs
    except ValueError:
        known = False
    if not known:
        raise RejectedInput("invalid or unknown transfer syntax UID in the file meta header")
    return syntax


def check_image_header(dataset: Dataset, modalities: list[str], max_pixels: int) -> None:
    """Reject, from the header alone, anything that is not a decodable single 2-D grayscale image."""
    modality = str(dataset.get("Modality", "") or "").upper()
    if modalities and modality not in {m.upper() for m in modalities}:
        shown = safe_token(modality) if modality else "missing"
        raise RejectedInput(f"modality {shown} not in [{', '.join(modalities)}]")
    sop_class = dataset.get("SOPClassUID")
    sop_name = getattr(sop_class, "name", str(sop_class or "unknown"))
    if any(word in sop_name for word in _NON_IMAGE_SOP_WORDS):
        raise RejectedInput(f"non-image DICOM ({sop_name})")
    if "PixelData" not in dataset and "FloatPixelData" not in dataset:
        raise RejectedInput("missing pixel data")
    try:
        rows, cols = int(dataset.Rows), int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        raise RejectedInput("missing or invalid Rows/Columns") from None
    if rows * cols * frames > max_pixels:
        raise RejectedInput(f"declares {rows * cols * frames} pixels (over max_pixels {max_pixels})")
    if frames > 1:
        raise RejectedInput(f"multi-frame DICOM ({frames} frames) is not supported")
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise RejectedInput(f"photometric interpretation {safe_token(photometric)} is not grayscale")
    syntax = transfer_syntax(dataset)
    if syntax is not None and syntax.is_compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise RejectedInput(f"no decoder exists for transfer syntax {syntax.name}") from None
        if not decoder.is_available:
            raise RejectedInput(f"no decoder installed for transfer syntax {syntax.name}")


def decode_pixels(dataset: Dataset, path: Path) -> np.ndarray:
    """Decode the (single-frame) pixel data as stored values; reject undecodable data."""
    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    options: dict[str, str] = {}
    if syntax is not None and syntax.is_compressed:
        if "pylibjpeg" in get_decoder(syntax).available_plugins:
            options["decoding_plugin"] = "pylibjpeg"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if options:
                dataset.pixel_array_options(**options)
            pixels = dataset.pixel_array
    except Exception as err:  # noqa: BLE001 - any decoder failure is a property of the file
        raise RejectedInput(f"pixel data could not be decoded ({_short(err, str(path))})") from None
    if pixels.ndim != 2:
        raise RejectedInput(f"pixel array has shape {pixels.shape}, expected a 2-D grayscale image")
    if pixels.dtype not in (np.uint8, np.uint16, np.int16):
        pixels = pixels.astype(np.int16 if pixels.min() < 0 else np.uint16)
    return pixels


def window_tables(dataset: Dataset, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray | None, Window | None]:
    """``(modality_table, display_table, window)`` over every stored value of ``dtype``.

    ``display_table`` is ``None`` when the header has neither a VOI LUT nor a window; then the
    caller computes the documented fallback window. The VOI output range (which pydicom leaves in
    stored-value units) is found by evaluating the transform far below and above the input range,
    which works for linear and sigmoid windows and for monotonic LUTs alike.
    """
    domain = stored_value_domain(dtype)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        modality = np.asarray(apply_modality_lut(domain, dataset), dtype=np.float64)
        has_lut = bool(dataset.get("VOILUTSequence"))
        has_window = "WindowCenter" in dataset and "WindowWidth" in dataset
        if not (has_lut or has_window):
            return modality, None, None
        try:
            displayed = np.asarray(apply_voi_lut(modality, dataset, prefer_lut=True), dtype=np.float64)
            span = float(np.abs(modality).max()) * 1e3 + 1e6
            extremes = np.asarray(
                apply_voi_lut(np.array([-span, span]), dataset, prefer_lut=True), dtype=np.float64
            )
        except Exception as err:  # noqa: BLE001 - invalid window / LUT values in the header
            raise RejectedInput(f"invalid VOI LUT or window in the header ({_short(err)})") from None
    low, high = float(np.nanmin(extremes)), float(np.nanmax(extremes))
    if has_lut:
        lut_data = np.asarray(dataset.VOILUTSequence[0].LUTData, dtype=np.float64)
        low, high = float(lut_data.min()), float(lut_data.max())
    table = normalise_to_uint8(displayed, low, high)
    if str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        table = 255 - table
    if has_lut:
        window = Window(center=float("nan"), width=float("nan"), source="voi_lut")
    else:
        window = Window(
            center=_first(dataset.WindowCenter), width=_first(dataset.WindowWidth), source="header"
        )
    return modality, table, window


def _first(value: object) -> float:
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]


def dicom_laterality(dataset: Dataset) -> str:
    """``L``/``R`` from ImageLaterality, then Laterality; ``U`` when neither says."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(dataset.get(keyword, "") or "").strip().upper()
        if value in ("L", "LEFT"):
            return "L"
        if value in ("R", "RIGHT"):
            return "R"
    return LATERALITY_UNKNOWN


def normalise_view(value: str) -> str | None:
    """``CC``/``MLO``/other view token from free text; ``None`` when no view is recognisable."""
    text = value.strip().upper().replace("-", " ").replace("_", " ")
    if not text:
        return None
    if text in ("CC", "MLO", "ML", "LM", "XCCL", "XCCM", "LMO", "FB", "SIO", "AT", "CV"):
        return text
    if "CRANIO CAUDAL" in text or "CRANIOCAUDAL" in text or re.search(r"\bCC\b", text):
        return "CC"
    if "OBLIQUE" in text or re.search(r"\bMLO\b", text):
        return "MLO"
    return None


def dicom_view(dataset: Dataset) -> str:
    """View from ViewPosition, ViewCodeSequence, PatientOrientation, then SeriesDescription."""
    view = normalise_view(str(dataset.get("ViewPosition", "") or ""))
    if view:
        return view
    for item in dataset.get("ViewCodeSequence", []) or []:
        code = str(item.get("CodeValue", "") or "")
        if code in _VIEW_CODES:
            return _VIEW_CODES[code]
        view = normalise_view(str(item.get("CodeMeaning", "") or ""))
        if view:
            return view
    orientation = dataset.get("PatientOrientation", "")
    if isinstance(orientation, str):  # CBIS-DDSM stores the view here ('CC' / 'MLO')
        view = normalise_view(orientation)
        if view:
            return view
    view = normalise_view(str(dataset.get("SeriesDescription", "") or ""))
    return view or "UNKNOWN"


def dicom_patient_key(dataset: Dataset) -> str | None:
    """The raw patient key to hash (never written): CBIS-DDSM per-image IDs collapse to ``P_xxxxx``."""
    patient_id = str(dataset.get("PatientID", "") or "").strip()
    if not patient_id:
        return None
    match = _CBIS_PATIENT.match(patient_id)
    return match.group(1) if match else patient_id


def load_dicom(
    path: Path, modalities: list[str], max_pixels: int, views: list[str] | None
) -> tuple[RawImage, str | None]:
    """Validate, view-filter and decode one DICOM file; returns ``(raw image, raw patient key)``.

    ``views`` (when given) rejects unwanted views before decoding, which is where the time goes.
    """
    dataset = read_header(path)
    check_image_header(dataset, modalities, max_pixels)
    view = dicom_view(dataset)
    if views is not None and view not in views:
        raise RejectedInput(f"view {view} not in [{', '.join(views)}]")
    pixels = decode_pixels(dataset, path)
    modality_table, display_table, window = window_tables(dataset, pixels.dtype)
    raw = RawImage(
        pixels=pixels,
        modality_table=modality_table,
        invert=str(dataset.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1",
        display_table=display_table,
        window=window,
        laterality=dicom_laterality(dataset),
        view=view,
    )
    return raw, dicom_patient_key(dataset)
