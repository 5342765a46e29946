"""Input readers: turn a raw data folder into a stream of :class:`InputItem` and load each one.

Three layouts are understood:

* ``dicom``: every file under the folder (recursively, any name, with or without ``.dcm``); an
  optional labels CSV (``path,label[,patient_id,laterality,view,lesion_mask]``) adds labels.
* ``mias``: mini-MIAS, ``mdbNNN.pgm`` films + ``Info.txt``. All films are MLO, 1024 x 1024; odd
  numbers are right breasts, even numbers left, and films ``2k-1``/``2k`` belong to patient ``k``.
  Lesion centres are given with the origin at the BOTTOM-left; they are converted here to the
  top-left convention (``row = height - 1 - y``) and later to output pixels.
* ``folder``: a labels CSV listing PNG / TIFF / PGM / DICOM files (paths relative to the folder).

Listing is a generator (memory stays flat on huge folders) and never opens a file; everything that
can go wrong with a listed input becomes a rejection reason, not an exception.
"""

from __future__ import annotations

import csv
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from mammo_anogan.data.dicom_io import dicom_patient_key, load_dicom, read_header
from mammo_anogan.data.preprocess import (
    LATERALITY_UNKNOWN,
    RawImage,
    RejectedInput,
    Window,
    stored_value_domain,
)
from mammo_anogan.data.views import laterality_from_text, parse_view_text
from mammo_anogan.utils.errors import UserError

LABELS = ("normal", "benign", "malignant", "unknown")
_LABEL_SYNONYMS = {
    "norm": "normal",
    "negative": "normal",
    "b": "benign",
    "benign_without_callback": "benign",
    "m": "malignant",
    "cancer": "malignant",
    "": "unknown",
}
_IMAGE_SUFFIXES = {".png", ".pgm", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"}
_MIAS_LINE = re.compile(
    r"^(mdb\d{3})\s+([FGD])\s+([A-Z]{4})(?:\s+([BM]))?(?:\s+(\d+)\s+(\d+)\s+(\d+))?", re.I
)


@dataclass
class InputItem:
    """One input to prepare: where it is and what the reader already knows (picklable, small).

    ``relpath`` is only ever written hashed; ``reject_reason`` marks inputs known to be bad at
    listing time (missing file, bad label), which go straight to ``rejected.csv``.
    """

    relpath: str
    path: str
    kind: str = "dicom"  # dicom | image
    label: str = "unknown"
    patient_key: str | None = None
    laterality: str | None = None
    view: str | None = None
    lesion_circles: list[tuple[float, float, float]] = field(default_factory=list)
    lesion_mask_path: str | None = None
    abnormality: str = ""
    tissue: str = ""
    reject_reason: str | None = None


@dataclass
class LoadedInput:
    """A decoded input: the raw film plus the ground truth in the raw film's geometry."""

    raw: RawImage
    patient_key: str | None
    lesion_circles: np.ndarray | None
    lesion_mask: np.ndarray | None


LATERALITY_COLUMNS = ("laterality", "image_laterality", "imagelaterality", "leftright", "side")
VIEW_COLUMNS = ("view", "view_position", "viewposition")


def _first_column(row: dict[str, str], names: tuple[str, ...]) -> str:
    """The first non-empty value among columns ``names`` (matched case-insensitively)."""
    lowered = {key.strip().lower(): value for key, value in row.items() if key}
    return next((lowered[name].strip() for name in names if (lowered.get(name) or "").strip()), "")


def normalise_label(value: str) -> str:
    """Map a label (case-insensitive, a few synonyms) to normal/benign/malignant/unknown."""
    text = str(value).strip().lower()
    text = _LABEL_SYNONYMS.get(text, text)
    if text not in LABELS:
        raise RejectedInput(f"label '{value[:20]}' not in normal/benign/malignant/unknown")
    return text


def apply_default_label(items: Iterator[InputItem], label: str | None) -> Iterator[InputItem]:
    """``data.label``: give ``label`` to every listed film that has none (``unknown``).

    For the common case of a folder of normal screening exams without a labels CSV. Films labelled
    by a labels CSV or the reader (mini-MIAS ``Info.txt``) keep their label; ``None`` changes nothing.
    """
    if label is None or str(label).strip() == "":
        yield from items
        return
    try:
        default = normalise_label(str(label))
    except RejectedInput:
        raise UserError(f"data.label={label!r} is not allowed; use one of {', '.join(LABELS)}") from None
    for item in items:
        if item.label == "unknown" and item.reject_reason is None:
            item.label = default
        yield item


def _kind_of(path: Path) -> str:
    return "image" if path.suffix.lower() in _IMAGE_SUFFIXES else "dicom"


def _check_source(source: Path) -> None:
    if not source.is_dir():
        raise UserError("data.source is not an existing folder (set data.source=DIR)")
    if not any(source.iterdir()):
        raise UserError("data.source is an empty folder")


def _walk_files(root: Path) -> Iterator[Path]:
    """All files under ``root`` in a deterministic order, streamed directory by directory."""
    for directory, subdirs, files in os.walk(root):
        subdirs.sort()
        for name in sorted(files):
            yield Path(directory) / name


def read_labels_csv(csv_path: Path, source: Path) -> list[dict[str, str]]:
    """Rows of a labels CSV (``path`` and ``label`` required); a missing/malformed CSV is a UserError."""
    if not csv_path.is_file():
        raise UserError(
            f"labels CSV not found: {csv_path}; set data.labels_csv=<CSV with columns path,label> (paths "
            "relative to data.source)"
        )
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = {c.strip() for c in reader.fieldnames or []}
        missing = {"path", "label"} - columns
        if missing:
            raise UserError(
                f"labels CSV {csv_path.name} lacks column(s) {', '.join(sorted(missing))}: its header must "
                "name path and label (optional: patient_id, laterality, view, lesion_mask)"
            )
        return [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]


def _item_from_csv_row(row: dict[str, str], source: Path) -> InputItem:
    relpath = Path(row["path"]).as_posix()
    path = Path(row["path"]) if Path(row["path"]).is_absolute() else source / row["path"]
    item = InputItem(relpath=relpath, path=str(path), kind=_kind_of(path))
    try:
        item.label = normalise_label(row.get("label", ""))
    except RejectedInput as err:
        item.reject_reason = str(err)
    item.patient_key = row.get("patient_id") or None
    # Column names of the public datasets' tables are accepted too (VinDr-Mammo: view_position,
    # CMMD: LeftRight); values in any vocabulary of mammo_anogan.data.views (L, Left, RCC, ...).
    laterality_text = _first_column(row, LATERALITY_COLUMNS)
    view_text = _first_column(row, VIEW_COLUMNS)
    facts = parse_view_text(view_text)
    laterality = laterality_from_text(laterality_text) or facts.laterality
    item.laterality = laterality if laterality in ("L", "R") else None
    item.view = facts.view or view_text.upper() or None
    if row.get("lesion_mask"):
        lesion = Path(row["lesion_mask"])
        item.lesion_mask_path = str(lesion if lesion.is_absolute() else source / lesion)
    if item.reject_reason is None and not path.is_file():
        item.reject_reason = "file listed in the labels CSV not found"
    return item


def list_dicom_inputs(source: Path, labels_csv: Path | None = None) -> Iterator[InputItem]:
    """Every file under ``source``; labels from ``labels_csv`` when given, else ``unknown``."""
    _check_source(source)
    by_path: dict[str, dict[str, str]] = {}
    if labels_csv is not None:
        by_path = {Path(r["path"]).as_posix(): r for r in read_labels_csv(labels_csv, source)}
    skip = labels_csv.resolve() if labels_csv is not None else None
    for path in _walk_files(source):
        if skip is not None and path.resolve() == skip:
            continue
        relpath = path.relative_to(source).as_posix()
        row = by_path.get(relpath)
        if row is not None:
            item = _item_from_csv_row(row, source)
            item.kind = "dicom"
        else:
            item = InputItem(relpath=relpath, path=str(path), kind="dicom")
        yield item


def list_folder_inputs(source: Path, labels_csv: Path) -> Iterator[InputItem]:
    """The rows of ``labels_csv`` (the inputs), paths relative to ``source``; duplicates rejected."""
    _check_source(source)
    seen: set[str] = set()
    for row in read_labels_csv(labels_csv, source):
        item = _item_from_csv_row(row, source)
        if item.relpath in seen:
            item.relpath = f"{item.relpath}#duplicate{len(seen)}"
            item.reject_reason = "duplicate row in the labels CSV"
        seen.add(item.relpath)
        yield item


def parse_mias_info(info_path: Path) -> dict[str, list[tuple[str, str, str, tuple[int, int, int] | None]]]:
    """``{reference: [(tissue, class, severity, (x, y, radius) or None), ...]}`` from Info.txt."""
    entries: dict[str, list[tuple[str, str, str, tuple[int, int, int] | None]]] = {}
    for line in info_path.read_text(encoding="latin-1").splitlines():
        match = _MIAS_LINE.match(line.strip())
        if not match:
            continue
        ref, tissue, klass, severity, x, y, radius = match.groups()
        geometry = (int(x), int(y), int(radius)) if x is not None else None
        entries.setdefault(ref.lower(), []).append(
            (tissue.upper(), klass.upper(), (severity or "").upper(), geometry)
        )
    return entries


def mias_label(rows: list[tuple[str, str, str, tuple[int, int, int] | None]]) -> str:
    """normal for NORM, otherwise the worst severity (malignant > benign), unknown without one."""
    severities = {severity for _, klass, severity, _ in rows if klass != "NORM"}
    if not severities and all(klass == "NORM" for _, klass, _, _ in rows):
        return "normal"
    if "M" in severities:
        return "malignant"
    return "benign" if "B" in severities else "unknown"


def list_mias_inputs(source: Path, film_height: int = 1024) -> Iterator[InputItem]:
    """mini-MIAS films; every ``*.pgm`` and every Info.txt reference is exactly one input.

    Lesion centres become top-left coordinates with ``row = film_height - 1 - y`` (all MIAS films
    are 1024 high; :func:`load_item` re-checks against the real height).
    """
    _check_source(source)
    info_path = source / "Info.txt"
    if not info_path.is_file():
        raise UserError("data.source has no Info.txt (expected a mini-MIAS folder: mdbNNN.pgm + Info.txt)")
    entries = parse_mias_info(info_path)
    films = {p.stem.lower(): p for p in _walk_files(source) if p.suffix.lower() == ".pgm"}
    for ref in sorted(set(entries) | set(films)):
        path = films.get(ref)
        relpath = path.relative_to(source).as_posix() if path else f"{ref}.pgm"
        item = InputItem(relpath=relpath, path=str(path or source / relpath), kind="image", view="MLO")
        match = re.search(r"(\d+)$", ref)
        number = int(match.group(1)) if match else 0
        item.patient_key = f"mias-{(number + 1) // 2}"
        item.laterality = "R" if number % 2 else "L"
        rows = entries.get(ref)
        if path is None:
            item.reject_reason = "listed in Info.txt but the image file is missing"
        if rows:
            item.label = mias_label(rows)
            item.tissue = rows[0][0]
            item.abnormality = ";".join(sorted({klass for _, klass, _, _ in rows if klass != "NORM"}))
            item.lesion_circles = [
                (float(g[0]), float(film_height - 1 - g[1]), float(g[2])) for *_, g in rows if g is not None
            ]
        yield item


def _decode_image_bytes(path: Path, flags: int) -> np.ndarray | None:
    """Decode from bytes (``cv2.imdecode``): OpenCV's own error log would print the raw path."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError:
        return None
    return cv2.imdecode(data, flags) if data.size else None


def read_image_file(path: Path, max_pixels: int) -> np.ndarray:
    """Decode a PNG / PGM / TIFF / JPEG as a 2-D 8- or 16-bit array; size checked before decoding."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's metadata warnings; real failures become reasons
            with Image.open(path) as probe:  # lazy: reads the header only
                width, height = probe.size
    except Image.DecompressionBombError as err:
        # PIL refuses headers over 2 x MAX_IMAGE_PIXELS (~179 M) itself; keep the size reason.
        declared = re.search(r"\((\d+) pixels\)", str(err))
        count = declared.group(1) if declared else f"over {2 * (Image.MAX_IMAGE_PIXELS or 0)}"
        raise RejectedInput(f"declares {count} pixels (over max_pixels {max_pixels})") from None
    except Exception as err:  # noqa: BLE001 - unreadable header
        raise RejectedInput(f"unreadable image file ({type(err).__name__})") from None
    if width * height > max_pixels:
        raise RejectedInput(f"declares {width * height} pixels (over max_pixels {max_pixels})")
    pixels = _decode_image_bytes(path, cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.size == 0:
        raise RejectedInput("unreadable image file (decoder failed, truncated or corrupt)")
    if pixels.ndim == 3:
        channels = pixels[..., :3]
        if not (
            np.array_equal(channels[..., 0], channels[..., 1])
            and np.array_equal(channels[..., 0], channels[..., 2])
        ):
            raise RejectedInput("colour image (channels differ); mammograms must be grayscale")
        pixels = np.ascontiguousarray(pixels[..., 0])
    if pixels.dtype not in (np.uint8, np.uint16):
        raise RejectedInput(f"unsupported pixel type {pixels.dtype} (expected 8- or 16-bit grayscale)")
    return pixels


def silence_decoder_logs() -> None:
    """Turn OpenCV's own decoder log lines off: each failure already becomes a rejection reason.

    Without this, a folder of broken files floods the terminal with ``imdecode_`` errors. OpenCV builds
    without the ``cv2.utils.logging`` binding (4.11, which albumentations 1.4 installs) read
    ``OPENCV_LOG_LEVEL`` instead, which worker processes started afterwards inherit.
    """
    logging_api = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_api is not None:
        logging_api.setLogLevel(logging_api.LOG_LEVEL_SILENT)
    else:
        os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")


def _raw_from_image(pixels: np.ndarray) -> RawImage:
    """8-bit files are already displayable (window ``none``); 16-bit ones get the fallback window."""
    domain = stored_value_domain(pixels.dtype).astype(np.float64)
    if pixels.dtype == np.uint8:
        nan = float("nan")
        identity = np.arange(256, dtype=np.uint8)
        return RawImage(pixels, domain, display_table=identity, window=Window(nan, nan, "none"))
    return RawImage(pixels, domain)


def fallback_patient_key(item: InputItem) -> str:
    """No patient id in the CSV or header: one folder per patient is the common layout."""
    parent = Path(item.relpath).parent.as_posix()
    return f"folder:{parent}" if parent != "." else f"file:{item.relpath}"


def raw_patient_key(item: InputItem) -> str:
    """The raw patient key :func:`load_item` gives ``item``, reading only the DICOM header if needed.

    Used to re-derive the key of films prepared earlier (a resumed prepare, a new split). It is a raw
    identifier: hash it, never write it. Raises :class:`RejectedInput` when the header is unreadable.
    """
    key = item.patient_key
    if key is None and item.kind == "dicom":
        key = dicom_patient_key(read_header(Path(item.path)))
    return key or fallback_patient_key(item)


def load_item(
    item: InputItem, modalities: list[str], max_pixels: int, views: list[str] | None
) -> LoadedInput:
    """Decode one input and apply the reader's overrides (laterality, view); reject unwanted views."""
    path = Path(item.path)
    patient_key = item.patient_key
    if item.kind == "dicom":
        early_views = views if item.view is None else None
        raw, header_patient = load_dicom(path, modalities, max_pixels, early_views, relpath=item.relpath)
        patient_key = patient_key or header_patient
    else:
        if item.view is not None and views is not None and item.view not in views:
            raise RejectedInput(f"view {item.view} not in [{', '.join(views)}]")
        raw = _raw_from_image(read_image_file(path, max_pixels))
    if item.laterality in ("L", "R"):
        raw.laterality = item.laterality
    elif raw.laterality not in ("L", "R"):
        raw.laterality = LATERALITY_UNKNOWN
    if item.view is not None:
        raw.view = item.view
    if views is not None and raw.view not in views:
        raise RejectedInput(f"view {raw.view} not in [{', '.join(views)}]")
    patient_key = patient_key or fallback_patient_key(item)
    circles = None
    if item.lesion_circles:
        circles = np.asarray(item.lesion_circles, dtype=np.float64)
        film_height = raw.pixels.shape[0]
        if film_height != 1024 and item.kind == "image":  # MIAS rows were converted assuming 1024
            circles[:, 1] += film_height - 1024
    lesion_mask = None
    if item.lesion_mask_path:
        lesion = _decode_image_bytes(Path(item.lesion_mask_path), cv2.IMREAD_GRAYSCALE)
        if lesion is None:
            raise RejectedInput("lesion mask file missing or unreadable")
        lesion_mask = lesion > 0
    return LoadedInput(raw, patient_key, circles, lesion_mask)
