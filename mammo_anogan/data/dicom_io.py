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
from typing import NamedTuple

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, get_decoder

from mammo_anogan.data import dicom_header as header
from mammo_anogan.data.file_kinds import non_dicom_kind
from mammo_anogan.data.orientation import patient_orientation_directions
from mammo_anogan.data.preprocess import (
    LATERALITY_UNKNOWN,
    RawImage,
    RejectedInput,
    Window,
    normalise_to_uint8,
    stored_value_domain,
)
from mammo_anogan.data.views import (
    CBIS_DDSM_NAME,
    ViewFacts,
    laterality_from_text,
    parse_view_text,
    partial_view_from_code,
    view_from_code,
)

# Storage SOP classes that never hold a mammogram's pixels (reports, presentation states, documents).
_NON_IMAGE_SOP_WORDS = (
    "SR Storage",
    "Presentation State",
    "Key Object",
    "Encapsulated",
    "Raw Data",
    "Waveform",
    "Segmentation",
    "Spatial Registration",
    "Spatial Fiducials",
    "Real World Value Mapping",
    "Surface",
    "RT Structure",
    "Hanging Protocol",
    "Color Palette",
    "Implant",
    "Media Storage Directory",
)
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
_VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
_BIOPSY_IMAGE_TYPES = frozenset({"TOMO_SCOUT", "POSTBIOPSY", "POSTMARKER", "PREFIRE", "POSTFIRE"})


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


def is_dicomdir(dataset: Dataset) -> bool:
    """A DICOMDIR (Media Storage Directory): the index of a DICOM CD / export, not an image."""
    meta = getattr(dataset, "file_meta", None)
    sop = header.text(meta, "MediaStorageSOPClassUID") if meta is not None else ""
    return sop == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in dataset


def read_header(path: Path) -> Dataset:
    """Read a DICOM file lazily (large elements deferred); reject non-DICOM, index and truncated files.

    A file that is not DICOM gets ``not a DICOM file (<kind>)`` when its kind can be told
    (:func:`~mammo_anogan.data.file_kinds.non_dicom_kind`: empty, .DS_Store, archive, PNG, ...).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path, defer_size="512 KB")
    except InvalidDicomError:
        dataset = None
    except Exception as err:  # noqa: BLE001 - any parser failure is a property of the file
        raise RejectedInput(f"truncated or corrupt DICOM header ({_short(err, str(path))})") from None
    if dataset is not None:
        if is_dicomdir(dataset):
            raise RejectedInput("DICOMDIR (index file, not an image)")
        if "SOPClassUID" not in dataset and "Rows" not in dataset:  # the parser stopped at the cut
            raise RejectedInput("truncated or corrupt DICOM header (no image attributes)")
        return dataset
    # No 128-byte preamble: accept a bare data set only if it really looks like an image.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = pydicom.dcmread(path, defer_size="512 KB", force=True)
        if is_dicomdir(dataset):
            raise RejectedInput("DICOMDIR (index file, not an image)")
        if "SOPClassUID" in dataset and "Rows" in dataset:
            return dataset
    except RejectedInput:
        raise
    except Exception:  # noqa: BLE001
        pass
    kind = non_dicom_kind(path)
    raise RejectedInput(f"not a DICOM file ({kind})" if kind else "not a DICOM file")


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


def _sop_class_name(dataset: Dataset) -> str:
    uid = header.text(dataset, "SOPClassUID")
    if not uid:
        return "unknown"
    name = pydicom.uid.UID(uid).name
    return name if name != uid else "unknown"


def check_image_header(dataset: Dataset, modalities: list[str], max_pixels: int) -> None:
    """Reject, from the header alone, anything that is not a decodable single 2-D presentation mammogram.

    Every element is read tolerantly (:mod:`~mammo_anogan.data.dicom_header`): an element that is
    present but empty or malformed counts as absent.
    """
    modality = header.text(dataset, "Modality")
    if modalities and modality not in {m.upper() for m in modalities}:
        shown = safe_token(modality) if modality else "missing"
        raise RejectedInput(f"modality {shown} not in [{', '.join(modalities)}]")
    sop_name = _sop_class_name(dataset)
    if any(word in sop_name for word in _NON_IMAGE_SOP_WORDS):
        raise RejectedInput(f"non-image DICOM ({sop_name})")
    if "For Processing" in sop_name or header.text(dataset, "PresentationIntentType") == "FOR PROCESSING":
        raise RejectedInput(
            "for-processing image (raw detector data, not for display): not supported, "
            "export the FOR PRESENTATION images"
        )
    _check_image_type(dataset)
    _check_derived_series(dataset)
    if "PixelData" not in dataset and "FloatPixelData" not in dataset:
        raise RejectedInput("missing pixel data")
    rows, cols = _single_int(dataset, "Rows"), _single_int(dataset, "Columns")
    if rows is None or cols is None or rows < 1 or cols < 1:
        raise RejectedInput("missing or invalid Rows/Columns")
    for keyword in ("BitsAllocated", "BitsStored", "PixelRepresentation"):
        if keyword in dataset and _single_int(dataset, keyword) is None:
            raise RejectedInput(f"invalid {keyword} (empty or malformed)")
    frames = header.integer(dataset, "NumberOfFrames") or 1
    if rows * cols * frames > max_pixels:
        raise RejectedInput(f"declares {rows * cols * frames} pixels (over max_pixels {max_pixels})")
    if frames > 1:
        raise RejectedInput(f"multi-frame DICOM ({frames} frames) is not supported")
    photometric = header.text(dataset, "PhotometricInterpretation")
    if not photometric:
        raise RejectedInput("missing PhotometricInterpretation (cannot tell dark from bright)")
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


def _single_int(dataset: Dataset, keyword: str) -> int | None:
    """A whole-number element holding exactly one value, else ``None``."""
    values = header.numbers(dataset, keyword)
    if len(values) != 1 or values[0] is None or not float(values[0]).is_integer():
        return None
    return int(values[0])


def _check_image_type(dataset: Dataset) -> None:
    """Biopsy, tomosynthesis and contrast-enhanced recombined images are not screening films.

    ImageType (0008,0008) values 3-5 (PS3.3 C.8.11.7.1.4, C.8.21.6.1.1): stereotactic biopsy
    (``STEREO_*``, ``PREFIRE*``, ``POSTFIRE*``, ...), DBT projections / reconstructions, contrast-
    enhanced high-energy and recombined (``SUBTRACTION`` / ``ADDITION``) images. Low-energy
    contrast images and synthesized 2D views are mammograms and are kept.
    """
    values = header.texts(dataset, "ImageType")
    for value in values[2:]:
        if value in _BIOPSY_IMAGE_TYPES or value.startswith(("STEREO_", "PREFIRE", "POSTFIRE")):
            raise RejectedInput(
                f"stereotactic biopsy image (ImageType {safe_token(value)}), not a screening film"
            )
        if value in ("TOMO_PROJ", "TOMOSYNTHESIS"):
            raise RejectedInput(f"tomosynthesis image (ImageType {value}), not a 2D mammogram")
        if value in ("SUBTRACTION", "ADDITION", "HIGH_ENERGY"):
            raise RejectedInput(f"contrast-enhanced {value.lower().replace('_', '-')} image, not a mammogram")


def _check_derived_series(dataset: Dataset) -> None:
    """CBIS-DDSM ships lesion ROI masks and cropped lesion patches as MG DICOMs beside the films."""
    description = header.text(dataset, "SeriesDescription")
    if "ROI MASK" in description:
        raise RejectedInput("lesion ROI mask image (CBIS-DDSM), not a mammogram")
    if "CROPPED" in description:
        raise RejectedInput("cropped lesion patch (CBIS-DDSM), not a full mammogram")


def decode_pixels(dataset: Dataset, path: Path) -> np.ndarray:
    """Decode the (single-frame) pixel data as stored values; reject undecodable data."""
    syntax = dataset.file_meta.get("TransferSyntaxUID") if hasattr(dataset, "file_meta") else None
    options: dict[str, str] = {}
    if "NumberOfFrames" in dataset and header.integer(dataset, "NumberOfFrames") is None:
        del dataset.NumberOfFrames  # empty or malformed: a single frame (checked from the header)
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


class WindowTables(NamedTuple):
    """The header's intensity pipeline over every stored value (see :func:`window_tables`)."""

    modality: np.ndarray
    display: np.ndarray | None
    window: Window | None
    note: str


def _modality_table(dataset: Dataset, domain: np.ndarray, notes: list[str]) -> np.ndarray:
    """Modality LUT or rescale; an unusable RescaleSlope/Intercept is ignored (and noted)."""
    if header.items(dataset, "ModalityLUTSequence"):
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                return np.asarray(apply_modality_lut(domain, dataset), dtype=np.float64)
        except Exception as err:  # noqa: BLE001 - invalid LUT values in the header
            raise RejectedInput(f"invalid modality LUT in the header ({_short(err)})") from None
    slope, intercept = header.number(dataset, "RescaleSlope"), header.number(dataset, "RescaleIntercept")
    if slope is None or slope == 0:
        if header.raw_value(dataset, "RescaleSlope") is not None:
            notes.append("RescaleSlope unusable: 1 used")
        slope = 1.0
    if intercept is None:
        if header.raw_value(dataset, "RescaleIntercept") is not None:
            notes.append("RescaleIntercept unusable: 0 used")
        intercept = 0.0
    return domain.astype(np.float64) * slope + intercept


def _voi_lut_table(dataset: Dataset, modality: np.ndarray, notes: list[str]) -> np.ndarray | None:
    """The first VOI LUT Sequence item applied to ``modality`` as 8 bits; ``None`` when unusable."""
    if not header.items(dataset, "VOILUTSequence"):
        return None
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            displayed = np.asarray(apply_voi(modality, dataset, index=0), dtype=np.float64)
            lut_data = np.asarray(dataset.VOILUTSequence[0].LUTData, dtype=np.float64)
        low, high = float(lut_data.min()), float(lut_data.max())
        if high > low and np.isfinite(displayed).all():
            return normalise_to_uint8(displayed, low, high)
    except Exception:  # noqa: BLE001 - a damaged LUT falls through to the window, noted
        pass
    notes.append("VOI LUT Sequence unusable: ignored")
    return None


def _header_window(dataset: Dataset, notes: list[str]) -> tuple[float, float, str] | None:
    """``(center, width, function)`` of the first usable window; ``None`` (noted) when none is usable.

    Windows are paired in order (WindowCenter[i], WindowWidth[i]); the first is the default (PS3.3
    C.11.2.1.2). An unknown VOI LUT Function is read as LINEAR, the standard's default.
    """
    centers = header.numbers(dataset, "WindowCenter")
    widths = header.numbers(dataset, "WindowWidth")
    function = header.text(dataset, "VOILUTFunction") or "LINEAR"
    if function not in _VOI_FUNCTIONS:
        notes.append(f"VOI LUT Function {safe_token(function)} unknown: LINEAR used")
        function = "LINEAR"
    pairs = list(zip(centers, widths))
    usable = [
        i
        for i, (c, w) in enumerate(pairs)
        if c is not None and w is not None and (w >= 1.0 if function == "LINEAR" else w > 0.0)
    ]
    if not usable:
        if "WindowCenter" in dataset or "WindowWidth" in dataset:
            notes.append(
                f"header window unusable ({_window_defect(dataset, centers, widths)}): fallback window"
            )
        return None
    index = usable[0]
    if index > 0:
        notes.append(f"header window 1 unusable: window {index + 1} of {len(pairs)} used")
    center, width = pairs[index]
    assert center is not None and width is not None
    return center, width, function


def _window_defect(dataset: Dataset, centers: list[float | None], widths: list[float | None]) -> str:
    """What is wrong with the first window, in a few words (``empty``, ``width 0``, ...)."""
    problems = []
    for keyword, values in (("WindowCenter", centers), ("WindowWidth", widths)):
        if not values:
            state = "absent" if keyword not in dataset else "empty"
            problems.append(f"{keyword} {state}")
        elif values[0] is None:
            problems.append(f"{keyword} malformed")
    if not problems and widths and widths[0] is not None:
        return f"width {widths[0]:g}"
    if all(p.endswith("empty") for p in problems) and len(problems) == 2:
        return "empty"
    return ", ".join(problems)


def _window_table(modality: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """pydicom's windowing (LINEAR / LINEAR_EXACT / SIGMOID) on sanitised values, as 8 bits.

    The output range is found by evaluating the transform far below and above the input range,
    which works for linear and sigmoid windows alike.
    """
    voi = Dataset()
    voi.PhotometricInterpretation = "MONOCHROME2"
    voi.BitsStored, voi.PixelRepresentation = 16, 0
    voi.WindowCenter, voi.WindowWidth, voi.VOILUTFunction = center, width, function
    span = float(np.abs(modality).max()) * 1e3 + 1e6
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        displayed = np.asarray(apply_windowing(modality, voi), dtype=np.float64)
        extremes = np.asarray(apply_windowing(np.array([-span, span]), voi), dtype=np.float64)
    return normalise_to_uint8(displayed, float(np.nanmin(extremes)), float(np.nanmax(extremes)))


def window_tables(dataset: Dataset, dtype: np.dtype) -> WindowTables:
    """``(modality, display, window, note)`` tables over every stored value of ``dtype``.

    ``display`` is ``None`` when the header has neither a usable VOI LUT nor a usable window; the
    caller then computes the documented fallback window. Present-but-empty or malformed elements
    (empty WindowCenter, width 0, text in RescaleSlope, an unknown VOI LUT Function) never raise:
    each is ignored or replaced by the standard's default, and ``note`` says which.
    """
    notes: list[str] = []
    modality = _modality_table(dataset, stored_value_domain(dtype), notes)
    table = _voi_lut_table(dataset, modality, notes)
    window: Window | None = None
    if table is not None:
        window = Window(center=float("nan"), width=float("nan"), source="voi_lut")
    else:
        chosen = _header_window(dataset, notes)
        if chosen is not None:
            center, width, function = chosen
            table = _window_table(modality, center, width, function)
            window = Window(center=center, width=width, source="header")
    if table is not None and header.text(dataset, "PhotometricInterpretation") == "MONOCHROME1":
        table = 255 - table
    return WindowTables(modality, table, window, "; ".join(notes))


class DicomViewFacts(NamedTuple):
    """View, breast side and partial-view modifiers of a file, with the header disagreements found."""

    view: str | None
    laterality: str | None
    partial: frozenset[str]
    note: str


def _view_sources(dataset: Dataset, relpath: str | None) -> list[tuple[str, ViewFacts]]:
    """Every place that states a view or side, in order of trust (coded first, file name last)."""
    sources: list[tuple[str, ViewFacts]] = []
    partial: set[str] = set()
    for item in header.items(dataset, "ViewCodeSequence"):
        sources.append(
            (
                "ViewCodeSequence",
                view_from_code(header.text(item, "CodeValue"), header.text(item, "CodeMeaning")),
            )
        )
        for modifier in header.items(item, "ViewModifierCodeSequence"):
            found = partial_view_from_code(
                header.text(modifier, "CodeValue"), header.text(modifier, "CodeMeaning")
            )
            partial.update([found] if found else [])
    for modifier in header.items(dataset, "ViewModifierCodeSequence"):
        found = partial_view_from_code(
            header.text(modifier, "CodeValue"), header.text(modifier, "CodeMeaning")
        )
        partial.update([found] if found else [])
    if partial:
        sources.append(("ViewModifierCodeSequence", ViewFacts(partial=frozenset(partial))))
    sources.append(("ViewPosition", parse_view_text(header.text(dataset, "ViewPosition"))))
    for keyword in ("AcquisitionDeviceProcessingDescription", "SeriesDescription", "ProtocolName"):
        sources.append((keyword, parse_view_text(header.text(dataset, keyword), free_text=True)))
    orientation = header.texts(dataset, "PatientOrientation")
    if patient_orientation_directions(orientation) is None:  # CBIS-DDSM writes the view here
        sources.insert(-2, ("PatientOrientation", parse_view_text(" ".join(orientation), free_text=True)))
    cbis = CBIS_DDSM_NAME.search(header.text(dataset, "PatientID"))
    if cbis is not None:
        sources.append(("PatientID", ViewFacts(cbis.group("view").upper(), cbis.group("side")[0].upper())))
    if relpath:
        sources.append(("file name", parse_view_text(relpath, free_text=True)))
    return [(name, facts) for name, facts in sources if facts]


def dicom_view_facts(dataset: Dataset, relpath: str | None = None) -> DicomViewFacts:
    """View and laterality from every header that states them; disagreements go into ``note``.

    Laterality: ImageLaterality, Laterality, then the sides in combined codes (``RCC``,
    ``LEFT MLO``, CBIS-DDSM ids, INbreast file names). View: ViewCodeSequence (CID 4014 codes),
    ViewPosition, (0018,1400) Acquisition Device Processing Description (Fujifilm),
    PatientOrientation when it holds a view (CBIS-DDSM), SeriesDescription, ProtocolName, the
    CBIS-DDSM PatientID, the file name. The first source that states one wins.
    """
    stated_sides: list[tuple[str, str]] = []
    for keyword in ("ImageLaterality", "Laterality"):
        side = laterality_from_text(header.text(dataset, keyword))
        if side:
            stated_sides.append((keyword, side))
    sources = _view_sources(dataset, relpath)
    stated_sides += [(name, facts.laterality) for name, facts in sources if facts.laterality]
    stated_views = [(name, facts.view) for name, facts in sources if facts.view]
    partial = frozenset().union(*(facts.partial for _, facts in sources))
    notes = []
    if len({side for _, side in stated_sides}) > 1:
        listed = ", ".join(f"{name} {side}" for name, side in stated_sides)
        notes.append(f"laterality sources disagree ({listed}): {stated_sides[0][0]} used")
    header_views = [(name, view) for name, view in stated_views if name != "file name"]
    if len({view for _, view in header_views}) > 1:
        listed = ", ".join(f"{name} {view}" for name, view in header_views)
        notes.append(f"view sources disagree ({listed}): {header_views[0][0]} used")
    return DicomViewFacts(
        view=stated_views[0][1] if stated_views else None,
        laterality=stated_sides[0][1] if stated_sides else None,
        partial=partial,
        note="; ".join(notes),
    )


def dicom_laterality(dataset: Dataset) -> str:
    """``L``/``R`` (or ``B``) from every header that states it; ``U`` when none does."""
    return dicom_view_facts(dataset).laterality or LATERALITY_UNKNOWN


def dicom_view(dataset: Dataset) -> str:
    """The view from every header that states it (see :func:`dicom_view_facts`); ``UNKNOWN`` when none."""
    return dicom_view_facts(dataset).view or "UNKNOWN"


def dicom_patient_key(dataset: Dataset) -> str | None:
    """The raw patient key to hash (never written): CBIS-DDSM per-image IDs collapse to ``P_xxxxx``."""
    patient_id = header.text(dataset, "PatientID")
    if not patient_id:
        return None
    raw = str(header.raw_value(dataset, "PatientID") or "").strip()
    match = CBIS_DDSM_NAME.match(raw)
    return match.group("patient") if match else raw


def load_dicom(
    path: Path, modalities: list[str], max_pixels: int, views: list[str] | None, relpath: str | None = None
) -> tuple[RawImage, str | None]:
    """Validate, view-filter and decode one DICOM file; returns ``(raw image, raw patient key)``.

    ``views`` (when given) rejects unwanted views before decoding, which is where the time goes.
    ``relpath`` (never written anywhere) is the last place a view or side is looked for (INbreast
    and CBIS-DDSM file names).
    """
    dataset = read_header(path)
    check_image_header(dataset, modalities, max_pixels)
    facts = dicom_view_facts(dataset, relpath)
    view = facts.view or "UNKNOWN"
    if facts.partial:
        kinds = " and ".join(sorted(facts.partial))
        raise RejectedInput(f"{kinds} view (a partial view, not a full-field film)")
    if facts.laterality == "B":
        raise RejectedInput("laterality B (both breasts in one image) is not supported")
    if views is not None and view not in views:
        raise RejectedInput(f"view {view} not in [{', '.join(views)}]")
    pixels = decode_pixels(dataset, path)
    tables = window_tables(dataset, pixels.dtype)
    raw = RawImage(
        pixels=pixels,
        modality_table=tables.modality,
        invert=header.text(dataset, "PhotometricInterpretation") == "MONOCHROME1",
        display_table=tables.display,
        window=tables.window,
        laterality=facts.laterality or LATERALITY_UNKNOWN,
        view=view,
        window_note=tables.note,
        patient_orientation=tuple(header.texts(dataset, "PatientOrientation")),
        header_note=facts.note,
    )
    return raw, dicom_patient_key(dataset)
