"""Synthetic mammogram phantoms written as real DICOM MG files: the project runs with no private data.

A phantom is built from a few vectorised numpy fields (no loops over pixels):

* **Outline**: the chest wall lies along one image edge and the skin follows a superellipse
  ``(x/depth)^p + (|y-cy|/half_height)^p = 1`` with ``p`` between parabolic-ish (1.6) and
  elliptical (2.4), so size and shape vary; near the skin the compressed thickness, hence the
  brightness, falls off, and a thin skin line is drawn.
* **Parenchyma**: mammographic texture has a power spectrum close to ``1/f^3`` (Burgess et al.);
  :func:`power_law_texture` filters Gaussian noise in the Fourier domain to that slope. A density
  level (fatty to dense) sets how much of it is thresholded into fibroglandular tissue, which is
  concentrated behind the nipple.
* **Pectoral muscle** (MLO only): a bright, smooth triangle in the upper corner at the chest wall.
* **Lesions** (abnormal breasts): round masses with soft edges, spiculated masses (a core plus
  radial spicules) and microcalcification clusters (tiny bright specks); each comes with its
  ground-truth mask (the mass, or the cluster's disc for calcifications).

:func:`generate_dataset` writes ``dicom/<patient>/<file>.dcm``, ``lesions/<file>.png`` and
``labels.csv`` (see docs/interfaces.md, "Raw synthetic data"). The DICOM files carry fake but
plausible identifiers so that privacy tests have something to look for, window tags, laterality and
view; a few are MONOCHROME1 (inverted) or RLE Lossless compressed to exercise those code paths.
Everything is derived from ``seed`` through per-image generators, so reruns are byte-identical.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import scipy.fft
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, RLELossless, generate_uid

from mammo_anogan.utils.io import atomic_write_bytes, atomic_write_csv, atomic_write_text

MG_FOR_PRESENTATION = (
    "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation
)
BITS_STORED = 12
MAX_VALUE = 2**BITS_STORED - 1
VIEWS = ("CC", "MLO")
LATERALITIES = ("L", "R")
LESION_KINDS = ("round_mass", "spiculated_mass", "calcifications")
MALIGNANT_PROBABILITY = {"round_mass": 0.3, "spiculated_mass": 0.85, "calcifications": 0.5}
MONOCHROME1_EVERY = 9  # every 9th image (by position) is stored inverted
RLE_EVERY = 7  # every 7th image is RLE Lossless compressed
PARAMS_FILE = "generate.json"
TWINS_FILE = "twins.csv"  # path,twin_path: films with a lesion and their lesion-free twins

_FIRST_NAMES = ("Ada", "Grace", "Marie", "Rosalind", "Lise", "Emmy", "Dorothy", "Barbara", "Chien", "Hedy")
_LAST_NAMES = ("Lovelace", "Hopper", "Curie", "Franklin", "Meitner", "Noether", "Hodgkin", "McClintock", "Wu")


class Phantom(NamedTuple):
    """One synthetic film: ``image`` float32 in [0, 1] (bright = dense), boolean masks.

    ``lesion_free`` is the same film without its lesions (same anatomy, same quantum noise): the
    "lesion-free twin" that bounds what any reconstruction-based score can reach (the oracle).
    """

    image: np.ndarray
    breast_mask: np.ndarray
    lesion_mask: np.ndarray
    lesion_free: np.ndarray | None = None


@dataclass(frozen=True)
class LesionStyle:
    """How conspicuous inserted lesions are; the defaults are the phantoms' standard lesions.

    ``scale`` multiplies every lesion's size (mass radius and spicule length, calcification cluster
    radius and speck size); ``contrast`` multiplies the intensity a lesion adds. A demo at 64 px needs
    ``scale`` ~2.5-3 to make a mass 4-8 px across (at 640 px a standard mass is 25-60 px across).
    """

    scale: float = 1.0
    contrast: float = 1.0


@dataclass(frozen=True)
class BreastParams:
    """The anatomy of one breast, shared by its CC and MLO views (views jitter it slightly)."""

    depth: float  # chest wall to nipple, fraction of the width
    half_height: float  # fraction of the height
    exponent: float  # superellipse exponent of the outline
    density: float  # 0 fatty .. 1 extremely dense


@lru_cache(maxsize=8)
def _spectral_amplitude(height: int, width: int, beta: float) -> np.ndarray:
    """``|f|^(-beta/2)`` on the half-plane grid of ``rfft2`` (DC set to 0), cached per shape."""
    fy = np.fft.fftfreq(height).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(width).astype(np.float32)[None, :]
    frequency = np.sqrt(fx * fx + fy * fy)
    frequency[0, 0] = 1.0
    amplitude = frequency ** np.float32(-beta / 2.0)  # power = amplitude^2
    amplitude[0, 0] = 0.0  # zero mean
    amplitude.setflags(write=False)
    return amplitude


def power_law_texture(shape: tuple[int, int], rng: np.random.Generator, beta: float = 3.0) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian field whose power spectrum falls as ``1/f^beta``.

    White Gaussian noise has a flat complex-Gaussian spectrum, so the noise is drawn directly in
    the Fourier half-plane and shaped there: one single-precision inverse FFT per field.
    """
    height, width = shape
    amplitude = _spectral_amplitude(int(height), int(width), float(beta))
    spectrum = np.empty(amplitude.shape, dtype=np.complex64)
    spectrum.real = rng.standard_normal(amplitude.shape, dtype=np.float32)
    spectrum.imag = rng.standard_normal(amplitude.shape, dtype=np.float32)
    spectrum *= amplitude
    field = scipy.fft.irfft2(spectrum, s=(height, width))
    field -= field.mean()
    return field / max(float(field.std()), 1e-12)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _soft_disc(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """Smooth-edged ellipse profile (1 inside, 0 outside, ~2 px transition)."""
    r = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return np.clip((1.0 - r) * min(rx, ry) / 2.0 + 0.5, 0.0, 1.0)


def _place_lesion(rng: np.random.Generator, inner: np.ndarray) -> tuple[int, int]:
    """A random pixel of ``inner`` (the breast away from its edge)."""
    candidates = np.flatnonzero(inner)
    flat = int(candidates[rng.integers(len(candidates))])
    return divmod(flat, inner.shape[1])


def _mass(
    rng: np.random.Generator,
    yy: np.ndarray,
    xx: np.ndarray,
    cy: int,
    cx: int,
    scale: float,
    spiculated: bool,
    style: LesionStyle = LesionStyle(),
) -> tuple[np.ndarray, np.ndarray]:
    """Intensity added by a mass and its mask. Spicules are thin radial wedges of random length."""
    radius = scale * rng.uniform(0.025, 0.06) * style.scale
    aspect = rng.uniform(0.75, 1.0)
    body = _soft_disc(yy, xx, cy, cx, radius * aspect, radius)
    if spiculated:
        count = int(rng.integers(8, 16))
        angles = rng.uniform(0, 2 * np.pi, count).astype(np.float32)[:, None, None]
        lengths = (radius * rng.uniform(1.6, 3.0, count)).astype(np.float32)[:, None, None]
        rho = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)[None]
        theta = np.arctan2(yy - cy, xx - cx)[None]
        angular = np.abs((theta - angles + np.pi) % (2 * np.pi) - np.pi)
        across = angular * rho  # distance from the spicule's axis (small-angle)
        width = 0.7 + 1.5 * (1.0 - rho / lengths)  # tapering, at least ~1.5 px wide (no aliasing)
        spicules = ((across < width) & (rho < lengths)).any(axis=0).astype(np.float32)
        body = np.maximum(body, 0.8 * spicules)
    amplitude = rng.uniform(0.08, 0.18) * style.contrast
    return amplitude * body, body > 0.5


def _calcifications(
    rng: np.random.Generator,
    yy: np.ndarray,
    xx: np.ndarray,
    cy: int,
    cx: int,
    scale: float,
    style: LesionStyle = LesionStyle(),
) -> tuple[np.ndarray, np.ndarray]:
    """A cluster of 6-20 tiny bright specks; the mask is the cluster's disc (like a radiologist's ROI)."""
    cluster_radius = scale * rng.uniform(0.02, 0.04) * style.scale
    count = int(rng.integers(6, 21))
    offsets = rng.normal(0.0, cluster_radius / 2.0, (count, 2)).clip(-cluster_radius, cluster_radius)
    sizes = rng.uniform(0.8, 1.8, count) * style.scale
    dy = yy[None] - (cy + offsets[:, 0, None, None])
    dx = xx[None] - (cx + offsets[:, 1, None, None])
    specks = np.exp(-(dy * dy + dx * dx) / (2.0 * sizes[:, None, None] ** 2)).max(axis=0).astype(np.float32)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2) <= (cluster_radius + 2.0) ** 2
    return rng.uniform(0.35, 0.55) * style.contrast * specks, mask


def make_phantom(
    seed: int | np.random.Generator = 0,
    height: int = 640,
    width: int = 512,
    view: str = "CC",
    laterality: str = "L",
    lesion_kinds: tuple[str, ...] = (),
    breast: BreastParams | None = None,
    lesion_style: LesionStyle = LesionStyle(),
    with_lesion_free: bool = False,
    parenchyma_contrast: float = 1.0,
) -> Phantom:
    """One film as arrays; the chest wall is on the left for ``L`` and on the right for ``R``.

    ``lesion_kinds`` lists the lesions to insert (values of :data:`LESION_KINDS`); ``breast``
    fixes the anatomy (else it is drawn from ``seed``); ``lesion_style`` sizes them;
    ``parenchyma_contrast`` scales how much brighter fibroglandular tissue is than fat.
    ``with_lesion_free`` also returns the film without its lesions (``Phantom.lesion_free``); the
    random draws are the same either way, so the film itself does not change.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if breast is None:
        breast = draw_breast(rng)
    unknown = set(lesion_kinds) - set(LESION_KINDS)
    if unknown or view not in VIEWS or laterality not in LATERALITIES:
        raise ValueError(
            f"bad phantom request: view={view}, laterality={laterality}, lesions={sorted(unknown)}"
        )
    # Separable coordinates ([H, 1] and [1, W]): per-axis terms cost O(H + W), not O(H * W).
    yy = np.arange(height, dtype=np.float32)[:, None]
    xx = np.arange(width, dtype=np.float32)[None, :]
    mlo = view == "MLO"
    depth = width * breast.depth * rng.uniform(0.95, 1.05)
    half_height = height * min(0.49, breast.half_height * rng.uniform(0.95, 1.05) * (1.08 if mlo else 1.0))
    center_y = height * (0.5 + rng.uniform(-0.03, 0.03) - (0.04 if mlo else 0.0))
    exponent = breast.exponent
    radial = ((xx / depth) ** exponent + (np.abs(yy - center_y) / half_height) ** exponent) ** (
        1.0 / exponent
    )
    inside = radial <= 1.0
    thickness = np.sqrt(np.clip((1.0 - radial) / 0.12, 0.0, 1.0))  # compression falls off at the skin
    skin = np.exp(-(((1.0 - radial) * depth / 2.0) ** 2)) * inside  # ~2 px bright line at the skin
    texture = power_law_texture((height, width), rng)
    gland_prior = np.exp(-(((xx / depth - 0.45) / 0.35) ** 2)) * np.exp(
        -(((yy - center_y) / (0.6 * half_height)) ** 2)
    )
    threshold = 2.2 - 3.2 * breast.density
    glandular = _sigmoid((texture + 2.0 * gland_prior - threshold) / 0.35)
    tissue = 0.3 + 0.4 * parenchyma_contrast * glandular + 0.03 * texture
    image = (inside * thickness * tissue + 0.12 * skin).astype(np.float32)
    breast_mask = inside.copy()
    if mlo:
        muscle_w, muscle_h = width * rng.uniform(0.22, 0.38), height * rng.uniform(0.45, 0.75)
        muscle = (xx / muscle_w + yy / muscle_h) <= 1.0
        edge = np.clip((1.0 - (xx / muscle_w + yy / muscle_h)) * 40.0, 0.0, 1.0)
        image = np.where(muscle, np.maximum(image, edge * (0.74 + 0.04 * texture)), image)
        breast_mask |= muscle
    lesion_mask = np.zeros((height, width), dtype=bool)
    inner = (radial < 0.7) & (xx > 0.15 * depth)
    if mlo:
        inner &= (xx / muscle_w + yy / muscle_h) > 1.4  # keep lesions (and spicules) off the muscle
    scale = float(min(height, width))
    reach = int(np.ceil(0.2 * scale * max(1.0, lesion_style.scale)))  # every lesion fits in this half-window
    lesion_free = image.copy() if with_lesion_free else None
    for kind in lesion_kinds:  # a handful of lesions, each a vectorised field on a local window
        cy, cx = _place_lesion(rng, inner)
        rows, cols = slice(max(0, cy - reach), cy + reach + 1), slice(max(0, cx - reach), cx + reach + 1)
        box = (rows, cols)
        if kind == "calcifications":
            added, mask = _calcifications(rng, yy[rows], xx[:, cols], cy, cx, scale, lesion_style)
        else:
            added, mask = _mass(
                rng, yy[rows], xx[:, cols], cy, cx, scale, kind == "spiculated_mass", lesion_style
            )
        image[box] += added * inside[box]
        lesion_mask[box] |= mask & inside[box]
    noise = 0.004 * rng.standard_normal(image.shape, dtype=np.float32)  # quantum noise
    image = np.clip(image + noise, 0.0, 1.0).astype(np.float32)
    if lesion_free is not None:
        lesion_free = np.clip(lesion_free + noise, 0.0, 1.0).astype(np.float32)
    if laterality == "R":  # right breasts face the other way on the film
        image, breast_mask, lesion_mask = image[:, ::-1], breast_mask[:, ::-1], lesion_mask[:, ::-1]
        lesion_free = lesion_free[:, ::-1] if lesion_free is not None else None
    return Phantom(
        np.ascontiguousarray(image),
        np.ascontiguousarray(breast_mask),
        np.ascontiguousarray(lesion_mask),
        np.ascontiguousarray(lesion_free) if lesion_free is not None else None,
    )


def draw_breast(rng: np.random.Generator) -> BreastParams:
    """Random anatomy: size, outline shape and density (fatty to dense, BI-RADS a-d like)."""
    return BreastParams(
        depth=float(rng.uniform(0.55, 0.9)),
        half_height=float(rng.uniform(0.3, 0.45)),
        exponent=float(rng.uniform(1.6, 2.4)),
        density=float(rng.beta(2.0, 2.5)),
    )


# --------------------------------------------------------------------------------------- DICOM
def _fake_identity(rng: np.random.Generator, seed: int, patient_index: int) -> dict[str, str]:
    """Plausible fake identifiers (never real): what a privacy test must not find in outputs."""
    birth_year = int(rng.integers(1940, 1981))
    study_year = int(rng.integers(2012, 2024))
    last, first = _LAST_NAMES[rng.integers(len(_LAST_NAMES))], _FIRST_NAMES[rng.integers(len(_FIRST_NAMES))]
    return {
        "PatientName": f"{last}^{first}",
        "PatientID": f"SYN{seed:03d}{patient_index:05d}",
        "PatientBirthDate": f"{birth_year}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
        "StudyDate": f"{study_year}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
        "AccessionNumber": f"ACC{rng.integers(10**6, 10**7)}",
        "InstitutionName": "Synthetic Breast Imaging Centre",
        "StudyInstanceUID": str(generate_uid(entropy_srcs=["study", str(seed), str(patient_index)])),
    }


def to_stored_values(image: np.ndarray, monochrome1: bool) -> np.ndarray:
    """Float [0, 1] (bright = dense) -> 12-bit stored values, inverted for MONOCHROME1."""
    stored = np.round(image * MAX_VALUE).astype(np.uint16)
    return (MAX_VALUE - stored).astype(np.uint16) if monochrome1 else stored


def window_for(stored: np.ndarray, breast_mask: np.ndarray, headroom: float = 0.0) -> tuple[float, float]:
    """A window (center, width) covering the breast's 0.5-99.5 percentile range, as a console would.

    ``headroom`` extends the window above the 99.5th percentile by that fraction of its width, so
    structures denser than the tissue (a hyperdense mass) stay below white instead of clipping.
    """
    low, high = np.percentile(stored[breast_mask], [0.5, 99.5])
    high = high + headroom * (high - low)
    return float(round((low + high) / 2.0)), float(max(round(high - low), 16))


def dicom_bytes(
    stored: np.ndarray,
    identity: dict[str, str],
    view: str,
    laterality: str,
    window: tuple[float, float],
    monochrome1: bool,
    rle: bool,
    uid_entropy: list[str],
) -> bytes:
    """Encode one MG For-Presentation image as a complete DICOM Part 10 file."""
    sop_uid = generate_uid(entropy_srcs=["sop", *uid_entropy])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MG_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MG_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", *uid_entropy])
    for key, value in identity.items():
        setattr(ds, key, value)
    ds.Modality = "MG"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.BodyPartExamined = "BREAST"
    ds.ViewPosition = view
    ds.ImageLaterality = laterality
    ds.Laterality = laterality
    # Rows run from the chest wall to the nipple: A for a left breast (chest wall on the left, as
    # stored here), P for a right one; columns run towards the other side (CC) or the feet (MLO).
    rows = "A" if laterality == "L" else "P"
    columns = "R" if laterality == "L" else "L"
    ds.PatientOrientation = [rows, columns if view == "CC" else "F" + columns]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = BITS_STORED
    ds.HighBit = BITS_STORED - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.1, 0.1]
    ds.WindowCenter, ds.WindowWidth = window
    ds.VOILUTFunction = "LINEAR"
    ds.PixelData = stored.astype("<u2").tobytes()
    if rle:
        ds.compress(RLELossless, stored, generate_instance_uid=False)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------- dataset
def _png_bytes(mask: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", mask.astype(np.uint8) * 255)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()


def _patient_plan(
    rng: np.random.Generator, abnormal: bool, kinds_allowed: tuple[str, ...] = LESION_KINDS
) -> tuple[str | None, tuple[str, ...], str]:
    """(abnormal side or None, lesion kinds, label of the abnormal side)."""
    if not abnormal:
        return None, (), "normal"
    side = str(rng.choice(LATERALITIES))
    kinds = (str(rng.choice(kinds_allowed)),)
    if rng.random() < 0.25:  # some breasts hold a mass and a calcification cluster
        second = [k for k in ("calcifications", "round_mass", "spiculated_mass") if k != kinds[0]]
        second = [k for k in second if k in kinds_allowed]
        kinds += tuple(second[:1])
    probability = max(MALIGNANT_PROBABILITY[k] for k in kinds)
    return side, kinds, "malignant" if rng.random() < probability else "benign"


def generate_dataset(
    out_dir: str | os.PathLike[str],
    num_normal_patients: int = 48,
    num_abnormal_patients: int = 24,
    height: int = 640,
    width: int = 512,
    seed: int = 0,
    views: Sequence[str] = VIEWS,
    lesion_kinds: Sequence[str] = LESION_KINDS,
    lesion_scale: float = 1.0,
    lesion_contrast: float = 1.0,
    parenchyma_contrast: float = 1.0,
    lesion_free_twins: bool = False,
    window_excludes_lesions: bool = False,
    window_headroom: float = 0.0,
) -> Path:
    """Write the synthetic raw dataset under ``out_dir`` and return it.

    Idempotent: when ``labels.csv`` exists and ``generate.json`` records the same arguments, nothing
    is rewritten; otherwise every file is (re)written, deterministically, and ``labels.csv`` last
    (its presence marks a complete dataset).

    ``views`` limits the views written (the others are not drawn at all; the written films do not
    change); ``lesion_kinds`` the kinds drawn for abnormal breasts; ``lesion_scale`` and
    ``lesion_contrast`` make lesions larger / brighter (:class:`LesionStyle`); ``parenchyma_contrast``
    scales the brightness of fibroglandular tissue over fat (``< 1``: fattier-looking, smoother films).
    ``lesion_free_twins`` also writes, for every film with a lesion, the same film without it
    (``twins/<patient>/<file>.dcm``, same window tags) and ``twins.csv`` (``path,twin_path``): the
    oracle of :mod:`mammo_anogan.evaluation.oracle`. ``window_excludes_lesions`` sets the display
    window of a film with lesions from the same film without them, as a console windows the tissue:
    otherwise a large bright lesion raises the 99.5th percentile and darkens the rest of the breast,
    a tell-tale that has nothing to do with the lesion itself. ``window_headroom`` widens every
    window above the tissue's 99.5th percentile by that fraction of its width (:func:`window_for`),
    so hyperdense lesions are not clipped to white. With the defaults the files are byte-identical
    to those of earlier versions.
    """
    out = Path(out_dir)
    if min(num_normal_patients, num_abnormal_patients) < 0 or num_normal_patients + num_abnormal_patients < 1:
        raise ValueError("need at least one patient and no negative counts")
    if height < 32 or width < 32:
        raise ValueError("phantoms need at least 32x32 pixels")
    views = tuple(str(v).upper() for v in views)
    kinds_allowed = tuple(str(k) for k in lesion_kinds)
    if not views or set(views) - set(VIEWS):
        raise ValueError(f"views must be a non-empty subset of {list(VIEWS)}, got {list(views)}")
    if not kinds_allowed or set(kinds_allowed) - set(LESION_KINDS):
        raise ValueError(f"lesion_kinds must be a non-empty subset of {list(LESION_KINDS)}")
    if min(lesion_scale, lesion_contrast, parenchyma_contrast) <= 0 or window_headroom < 0:
        raise ValueError(
            "lesion_scale, lesion_contrast, parenchyma_contrast must be > 0, window_headroom >= 0"
        )
    style = LesionStyle(scale=float(lesion_scale), contrast=float(lesion_contrast))
    params: dict[str, object] = {
        "num_normal_patients": int(num_normal_patients),
        "num_abnormal_patients": int(num_abnormal_patients),
        "height": int(height),
        "width": int(width),
        "seed": int(seed),
    }
    extras = {  # recorded only when they differ from the defaults (old folders stay valid)
        "views": list(views) if views != VIEWS else None,
        "lesion_kinds": list(kinds_allowed) if kinds_allowed != LESION_KINDS else None,
        "lesion_scale": float(lesion_scale) if lesion_scale != 1.0 else None,
        "lesion_contrast": float(lesion_contrast) if lesion_contrast != 1.0 else None,
        "parenchyma_contrast": float(parenchyma_contrast) if parenchyma_contrast != 1.0 else None,
        "lesion_free_twins": True if lesion_free_twins else None,
        "window_excludes_lesions": True if window_excludes_lesions else None,
        "window_headroom": float(window_headroom) if window_headroom else None,
    }
    params.update({key: value for key, value in extras.items() if value is not None})
    params_path, labels_path, twins_path = out / PARAMS_FILE, out / "labels.csv", out / TWINS_FILE
    if labels_path.is_file() and params_path.is_file():
        try:
            if json.loads(params_path.read_text(encoding="utf-8")) == params:
                return out
        except json.JSONDecodeError:
            pass
    previous = _listed_files(labels_path) | _listed_files(twins_path, ("twin_path",))
    labels_path.unlink(missing_ok=True)  # until the new labels.csv is written, the dataset is incomplete
    twins_path.unlink(missing_ok=True)
    rows: list[dict[str, str]] = []
    twin_rows: list[dict[str, str]] = []
    image_number = 0
    for patient_index in range(num_normal_patients + num_abnormal_patients):
        patient_rng = np.random.default_rng([seed, patient_index])
        identity = _fake_identity(patient_rng, seed, patient_index)
        side, kinds, abnormal_label = _patient_plan(
            patient_rng, patient_index >= num_normal_patients, kinds_allowed
        )
        anatomy = {lat: draw_breast(patient_rng) for lat in LATERALITIES}
        folder = identity["PatientID"]
        for laterality in LATERALITIES:
            for view in VIEWS:
                if view not in views:
                    continue  # each film has its own generator: skipping one changes no other
                image_rng = np.random.default_rng(
                    [seed, patient_index, LATERALITIES.index(laterality), VIEWS.index(view)]
                )
                lesions = kinds if laterality == side else ()
                phantom = make_phantom(
                    image_rng,
                    height,
                    width,
                    view,
                    laterality,
                    lesions,
                    anatomy[laterality],
                    lesion_style=style,
                    parenchyma_contrast=parenchyma_contrast,
                    with_lesion_free=(lesion_free_twins or window_excludes_lesions) and bool(lesions),
                )
                monochrome1 = image_number % MONOCHROME1_EVERY == MONOCHROME1_EVERY // 2
                rle = image_number % RLE_EVERY == RLE_EVERY // 2
                stored = to_stored_values(phantom.image, monochrome1)
                windowed = phantom.image
                if window_excludes_lesions and phantom.lesion_free is not None:
                    windowed = phantom.lesion_free
                window = window_for(to_stored_values(windowed, False), phantom.breast_mask, window_headroom)
                if monochrome1:  # the window is defined on stored values, so it is mirrored too
                    window = (MAX_VALUE - window[0], window[1])
                entropy = [str(seed), str(patient_index), laterality, view]
                name = f"{laterality}_{view}"
                relative = f"dicom/{folder}/{name}.dcm"
                data = dicom_bytes(stored, identity, view, laterality, window, monochrome1, rle, entropy)
                atomic_write_bytes(out / relative, data)
                lesion_relative = ""
                if lesions:
                    lesion_relative = f"lesions/{folder}_{name}.png"
                    atomic_write_bytes(out / lesion_relative, _png_bytes(phantom.lesion_mask))
                if lesion_free_twins and phantom.lesion_free is not None:  # same header, window, encoding
                    twin_relative = f"twins/{folder}/{name}.dcm"
                    twin_stored = to_stored_values(phantom.lesion_free, monochrome1)
                    twin = dicom_bytes(
                        twin_stored, identity, view, laterality, window, monochrome1, rle, entropy
                    )
                    atomic_write_bytes(out / twin_relative, twin)
                    twin_rows.append({"path": relative, "twin_path": twin_relative})
                label = abnormal_label if lesions else "normal"
                rows.append({"path": relative, "label": label, "lesion_mask": lesion_relative})
                image_number += 1
    current = {row[key] for row in rows for key in ("path", "lesion_mask") if row[key]}
    current |= {row["twin_path"] for row in twin_rows}
    for stale in sorted(previous - current):  # files of an earlier run with other arguments
        (out / stale).unlink(missing_ok=True)
        try:
            (out / stale).parent.rmdir()  # only succeeds once the folder is empty
        except OSError:
            pass
    atomic_write_text(params_path, json.dumps(params, indent=2) + "\n")
    if lesion_free_twins:
        atomic_write_csv(twins_path, twin_rows, ("path", "twin_path"))
    atomic_write_csv(labels_path, rows, ("path", "label", "lesion_mask"))
    return out


def _listed_files(labels_path: Path, keys: tuple[str, ...] = ("path", "lesion_mask")) -> set[str]:
    """Relative paths a previous run listed in ``labels.csv`` (only those may be cleaned up)."""
    if not labels_path.is_file():
        return set()
    with labels_path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {
        value
        for row in rows
        for key in keys
        if (value := row.get(key) or "") and ".." not in Path(value).parts and not Path(value).is_absolute()
    }
