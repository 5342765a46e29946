"""Intensity windowing and geometry of the paper's preprocessing, as pure NumPy/OpenCV functions.

The published method windows each film (DICOM centre/width), converts it to 8 bits, flips right
breasts so the chest wall is on the left, pads zeros on the right to a square and downsizes it with
area interpolation. This module holds those steps, independent of any file format, so that the
DICOM, mini-MIAS and generic-folder readers all share exactly one implementation.

Speed: every intensity transform is a lookup table over the *stored* value range (at most 65,536
entries), so a 4,500 x 2,800 film is windowed with a single fancy-index pass instead of floating
point arithmetic on 12 million pixels; the rough breast mask, the fallback window and the side of
the breast are computed on a small working copy (``work_side`` pixels on the long side).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mammo_anogan.data import masks
from mammo_anogan.data import orientation as orient
from mammo_anogan.data.film_checks import (
    background_brighter_than_tissue,
    background_level,
    lower_lifted_background,
    mask_problem,
)
from mammo_anogan.data.rejections import RejectedInput

LATERALITY_UNKNOWN = "U"


@dataclass(frozen=True)
class Window:
    """A linear or sigmoid intensity window in modality units, and where it came from."""

    center: float
    width: float
    source: str  # header | voi_lut | fallback_breast_percentile | none


def stored_value_domain(dtype: np.dtype) -> np.ndarray:
    """Every value a pixel of ``dtype`` can hold, ordered like ``lut_index`` addresses them.

    Signed 16-bit images are indexed through their unsigned view, so entry ``i`` holds the signed
    value whose bit pattern is ``i``; this keeps table look-ups a single ``table[view]``.
    """
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return np.arange(256, dtype=np.uint8)
    if dtype == np.uint16:
        return np.arange(65536, dtype=np.uint16)
    if dtype == np.int16:
        return np.arange(65536, dtype=np.uint16).view(np.int16)
    raise RejectedInput(f"unsupported pixel type {dtype} (expected 8- or 16-bit grayscale)")


def lut_index(pixels: np.ndarray) -> np.ndarray:
    """The array to index a :func:`stored_value_domain`-ordered table with (a view, no copy)."""
    return pixels.view(np.uint16) if pixels.dtype == np.int16 else pixels


def apply_lut(table: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """``table[pixels]`` for any supported pixel type."""
    return table[lut_index(pixels)]


def linear_window_to_uint8(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Map ``[center - width/2, center + width/2]`` linearly onto 0..255 (clipped), as float32."""
    width = max(float(width), 1e-6)
    scaled = (np.asarray(values, dtype=np.float64) - (center - width / 2.0)) / width
    return (np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.float32)


def normalise_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Rescale ``values`` from ``[low, high]`` to 0..255 and round to uint8 (clipped)."""
    span = high - low
    if span <= 0:
        return np.zeros(np.shape(values), dtype=np.uint8)
    scaled = (np.asarray(values, dtype=np.float64) - low) * (255.0 / span)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def block_reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """Exact ``factor`` x ``factor`` block means (OpenCV's fast integer area path).

    The last ``height % factor`` rows and ``width % factor`` columns are dropped (less than one
    block); :func:`transform_points` accounts for it.
    """
    if factor <= 1:
        return image
    height, width = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    return cv2.resize(
        image[:height, :width], (width // factor, height // factor), interpolation=cv2.INTER_AREA
    )


def resize_long_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Downscale ``image`` by the integer factor that brings its long side to about ``long_side``.

    Only a working copy (rough mask, fallback window, clips) is made this way, so the exact size
    does not matter, while the integer path is about 5x faster than a fractional area resize.
    """
    factor = -(-max(image.shape[:2]) // long_side)  # ceil
    return block_reduce(image, factor)


def reduction_factor(height: int, width: int, resolution: int) -> int:
    """Integer pre-reduction before the final resize (leaves a fractional step of 2x or less)."""
    return max(1, max(height, width) // (2 * resolution))


def fallback_breast_window(
    modality_small: np.ndarray, rough_mask: np.ndarray, percentiles: tuple[float, float]
) -> Window:
    """Window for files without window tags: percentiles of the modality values inside the breast.

    ``rough_mask`` comes from Otsu + largest component on the small *presentation* copy (bright =
    dense, MONOCHROME1 already inverted). Percentiles over the whole film would be dominated by the
    background and the film labels; inside the breast they span the tissue contrast a reader
    needs, as a radiologist's window would.
    """
    inside = modality_small[rough_mask] if rough_mask.any() else modality_small.ravel()
    low, high = np.percentile(inside.astype(np.float64), percentiles)
    if high <= low:
        high = low + 1.0
    return Window(
        center=float(low + high) / 2.0, width=float(high - low), source="fallback_breast_percentile"
    )


def laterality_from_signal(image_small: np.ndarray) -> str:
    """``L`` when the left half holds more signal (chest wall on the left), else ``R``.

    Used only when the header has no laterality: a breast always lies against one vertical edge,
    so the half with more summed brightness is the chest-wall side.
    """
    half = image_small.shape[1] // 2
    left = float(image_small[:, :half].sum(dtype=np.float64))
    right = float(image_small[:, image_small.shape[1] - half :].sum(dtype=np.float64))
    return "L" if left >= right else "R"


def square_canvas_geometry(height: int, width: int) -> int:
    """Side of the zero-padded square canvas (padding goes right, or below for landscape films)."""
    return max(height, width)


def orient_pad_resize(
    image: np.ndarray, flip: bool, resolution: int, interpolation: int = cv2.INTER_AREA
) -> np.ndarray:
    """Flip (optional), pad zeros on the right (or bottom) to a square, resize to ``resolution``.

    Area interpolation is done in two steps for speed: exact integer block means on the film
    (:func:`reduction_factor`), then a fractional area resize of at most 2x on the padded square;
    both are averages over the same raw pixels, so the result matches a single area resize up to
    rounding. The flip is written straight into the zero canvas (one copy of the reduced film).
    """
    image = block_reduce(image, reduction_factor(image.shape[0], image.shape[1], resolution))
    height, width = image.shape[:2]
    side = square_canvas_geometry(height, width)
    canvas = np.zeros((side, side), dtype=image.dtype)
    canvas[:height, :width] = image[:, ::-1] if flip else image
    if side == resolution:
        return canvas
    return cv2.resize(canvas, (resolution, resolution), interpolation=interpolation)


def transform_points(
    x: np.ndarray, y: np.ndarray, raw_shape: tuple[int, int], flip: bool, resolution: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Map raw pixel coordinates (origin top-left, pixel centres at integers) to output pixels.

    Returns ``(x_out, y_out, scale)``; radii scale by ``scale``. Uses the same reduction, flip,
    pad and resize as :func:`orient_pad_resize`, with the area-resize convention that pixel
    centres sit at ``(i + 0.5) * scale - 0.5``.
    """
    height, width = raw_shape
    factor = reduction_factor(height, width, resolution)
    height, width = (height // factor) * factor, (width // factor) * factor
    scale = resolution / (factor * square_canvas_geometry(height // factor, width // factor))
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if flip:
        x = (width - 1) - x
    return (x + 0.5) * scale - 0.5, (y + 0.5) * scale - 0.5, scale


def binary_resize(mask: np.ndarray, flip: bool, resolution: int) -> np.ndarray:
    """Flip/pad/resize a {0,1} mask like the image; a lesion never vanishes at low resolution.

    Area interpolation gives the covered fraction per output pixel; pixels at least half covered
    are kept, and if that leaves nothing the best-covered pixels are kept instead.
    """
    coverage = orient_pad_resize(mask.astype(np.float32), flip, resolution)
    out = coverage >= 0.5
    if not out.any() and coverage.max() > 0:
        out = coverage >= coverage.max() * 0.999
    return out


def breast_crop_box(mask: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """Box ``(top, bottom, left, right)`` (end exclusive) around a raw-resolution breast mask.

    The bounding box of ``mask`` ``[H, W]`` widened by ``margin`` times its longer side on every side
    and clipped to the film. Cropping the raw film to it before padding and resizing puts every breast
    at the same place and scale (placement normalisation: after flipping, the chest wall sits
    ``margin`` from the left edge). An empty mask gives the whole film.
    """
    height, width = mask.shape[:2]
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return 0, height, 0, width
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    pad = int(round(margin * max(bottom - top, right - left)))
    return max(0, top - pad), min(height, bottom + pad), max(0, left - pad), min(width, right + pad)


@dataclass
class RawImage:
    """A decoded film plus everything the readers know about it (no patient identifiers).

    ``modality_table`` maps each stored value (:func:`stored_value_domain` order) to its modality
    value (rescale slope/intercept or modality LUT applied). ``display_table`` is the header's
    final 8-bit rendering of each stored value (VOI LUT or window, MONOCHROME1 inversion included),
    or ``None`` when the header has no window and the fallback must be computed.
    """

    pixels: np.ndarray
    modality_table: np.ndarray
    invert: bool = False
    display_table: np.ndarray | None = None
    window: Window | None = None
    laterality: str = LATERALITY_UNKNOWN
    view: str = "UNKNOWN"
    window_note: str = ""  # why the header's window was not used as is (empty, width 0, ...)
    patient_orientation: tuple[str, ...] = ()  # PatientOrientation (0020,0020) values, as read
    header_note: str = ""  # disagreements between headers (laterality, view)


@dataclass(frozen=True)
class PreprocessSettings:
    """The ``data.preprocess`` config block plus the output resolution, as plain values."""

    resolution: int
    flip_right: bool = True
    window_fallback: str = "breast_percentile"
    window_percentiles: tuple[float, float] = (0.5, 99.5)
    mask_threshold: float | None = None
    mask_method: str = "triangle"
    pectoral_removal: bool = False
    crop_to_breast: bool = False
    crop_margin: float = 0.02
    exclude_clips: bool = True
    work_side: int = 512
    mask_side: int = 256
    clip_margin: float = 0.5
    clip_min_area_px: int = 4
    clip_max_area_fraction: float = 0.02
    clip_min_extent: float = 0.3
    orientation_conflict: str = "pixels"
    background_lift_max: int = 12
    mask_max_film_fraction: float = 0.95


@dataclass
class PreparedImage:
    """The outputs of :func:`prepare_image`, all in output pixel coordinates."""

    image: np.ndarray  # uint8 [R, R], chest wall on the left
    mask: np.ndarray  # bool [R, R]
    laterality: str  # as found (header or signal fallback), before flipping
    flipped: bool
    window: Window
    pectoral_removed: bool = False
    lesion_mask: np.ndarray | None = None  # bool [R, R] where ground truth exists
    lesions: list[tuple[float, float, float]] | None = None  # (x, y, radius) per lesion
    window_check: str = ""  # what a sanity check changed about the window ("" = nothing)
    orientation_source: str = ""  # patient_orientation | laterality | pixels | signal
    orientation_check: str = ""  # header/pixel contradictions found ("" = none)
    crop_box: tuple[int, int, int, int] | None = None  # (top, bottom, left, right) in raw pixels


def display_table_from_window(raw: RawImage, window: Window) -> np.ndarray:
    """8-bit rendering of every stored value through a linear window (inversion included)."""
    table = linear_window_to_uint8(raw.modality_table, window.center, window.width)
    if raw.invert:
        table = 255.0 - table
    return np.rint(table).astype(np.uint8)


def _fallback_window(raw: RawImage, modality_small: np.ndarray, rough: np.ndarray, settings) -> Window:
    if settings.window_fallback == "breast_percentile":
        return fallback_breast_window(modality_small, rough, settings.window_percentiles)
    if settings.window_fallback == "minmax":
        low, high = float(modality_small.min()), float(modality_small.max())
        return Window(center=(low + high) / 2.0, width=max(high - low, 1.0), source="fallback_minmax")
    raise RejectedInput(f"no window in the header and window_fallback={settings.window_fallback}")


def breast_mask_for(
    display: np.ndarray, flip: bool, image: np.ndarray, settings: PreprocessSettings
) -> np.ndarray:
    """Breast mask of ``image``, computed at ``mask_side`` pixels when the output is smaller.

    ``display`` is the full-size 8-bit film that ``image`` was rendered from. At 64 px a film
    border or a label is one or two pixels wide and the opening in :func:`masks.breast_mask`
    (radius ``side // 200``) is zero, so thin bright borders stay attached to the breast. The mask
    is therefore computed on a ``mask_side`` rendering of the same oriented, padded film and
    area-downsampled (pixels at least half covered are breast).
    """
    resolution = settings.resolution
    if resolution >= settings.mask_side:
        return masks.breast_mask(image, settings.mask_threshold, settings.mask_method)
    large = orient_pad_resize(display, flip, settings.mask_side)
    large_mask = masks.breast_mask(large, settings.mask_threshold, settings.mask_method)
    coverage = cv2.resize(
        large_mask.astype(np.float32), (resolution, resolution), interpolation=cv2.INTER_AREA
    )
    return coverage >= 0.5


def _render(
    raw_pixels: np.ndarray, table: np.ndarray, flip: bool, settings: PreprocessSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image and breast mask in output coordinates through one display table, and the display."""
    display = apply_lut(table, raw_pixels)  # the full-size 8-bit film, rendered once
    return (*_render_display(display, flip, settings), display)


def _render_display(
    display: np.ndarray, flip: bool, settings: PreprocessSettings
) -> tuple[np.ndarray, np.ndarray]:
    """Image and breast mask in output coordinates of a full-size 8-bit film."""
    image = orient_pad_resize(display, flip, settings.resolution)
    return image, breast_mask_for(display, flip, image, settings)


def _display_with_background_check(
    table: np.ndarray, small: np.ndarray, rough: np.ndarray, settings: PreprocessSettings, notes: list[str]
) -> np.ndarray:
    level = background_level(apply_lut(table, small), rough)
    if level > settings.background_lift_max:
        notes.append(f"window lifts the background to grey {level:.0f}: rescaled to black")
        return lower_lifted_background(table, level)
    return table


def prepare_image(
    raw: RawImage,
    settings: PreprocessSettings,
    lesion_circles: np.ndarray | None = None,
    lesion_mask_raw: np.ndarray | None = None,
) -> PreparedImage:
    """Window, orient, pad, resize and mask one film; reject it (``RejectedInput``) when unusable.

    ``lesion_circles`` is an ``[K, 3]`` array of ``(x, y, radius)`` in raw pixel coordinates
    (origin top-left); ``lesion_mask_raw`` a boolean mask in the raw film's geometry. Both come
    out in output coordinates, transformed exactly like the image.

    Sanity checks (docs/reliability.md, "DICOM quirks"): a film whose background is its bright,
    smooth region is rejected; a window that lifts the background above black is stretched so the
    background is black; a breast mask that covers (nearly) the whole film makes the header window
    give way to the fallback window (``window_check`` says so) and, if that fails too, rejects the
    film.
    The chest-wall side comes from the headers checked against the pixels
    (:mod:`mammo_anogan.data.orientation`). With ``settings.crop_to_breast`` the raw film is cropped to
    the breast's bounding box (:func:`breast_crop_box`) and rendered again through the same display
    table, so every breast fills the square canvas from the chest wall on; ``crop_box`` records the box
    and the lesion geometry follows the crop.
    """
    header = orient.header_orientation(
        list(raw.patient_orientation), raw.laterality, raw.view, raw.header_note
    )
    pixels = raw.pixels
    if lesion_mask_raw is not None and lesion_mask_raw.shape[:2] != pixels.shape[:2]:
        raise RejectedInput(
            f"lesion mask shape {lesion_mask_raw.shape[:2]} differs from the image {pixels.shape[:2]}"
        )
    if header.flip_vertical:
        pixels = np.ascontiguousarray(pixels[::-1])
        if lesion_circles is not None and len(lesion_circles):
            lesion_circles = np.asarray(lesion_circles, dtype=np.float64).reshape(-1, 3).copy()
            lesion_circles[:, 1] = pixels.shape[0] - 1 - lesion_circles[:, 1]
        if lesion_mask_raw is not None:
            lesion_mask_raw = lesion_mask_raw[::-1]
    small = resize_long_side(pixels, settings.work_side)
    modality_small = apply_lut(raw.modality_table, small)
    presentation_small = -modality_small if raw.invert else modality_small
    rough = masks.rough_breast_mask(presentation_small)
    if not rough.any():
        raise RejectedInput("empty breast mask (blank or uniform image)")
    if background_brighter_than_tissue(presentation_small):
        raise RejectedInput(
            "background brighter than the breast: raw (for-processing) data "
            "or a wrong PhotometricInterpretation"
        )

    notes = [raw.window_note] if raw.window_note else []
    window = raw.window
    display_table = raw.display_table
    if display_table is None:
        window = _fallback_window(raw, modality_small, rough, settings)
        display_table = display_table_from_window(raw, window)
    assert window is not None

    if settings.exclude_clips:
        clips = masks.count_clips(
            presentation_small,
            rough,
            settings.window_percentiles,
            settings.clip_margin,
            settings.clip_min_area_px,
            settings.clip_max_area_fraction,
            settings.clip_min_extent,
        )
        if clips:
            raise RejectedInput(f"surgical clip or marker detected ({clips} metal-bright compact objects)")

    decided = orient.resolve_orientation(
        header, orient.chest_wall_from_mask(rough), settings.orientation_conflict
    )
    side, source = decided.chest_wall, decided.source
    if source == "none":
        side, source = laterality_from_signal(apply_lut(display_table, small)), "signal"
    flip = settings.flip_right and side == "R"

    display_table = _display_with_background_check(display_table, small, rough, settings, notes)
    image, mask, display = _render(pixels, display_table, flip, settings)
    film = orient_pad_resize(np.ones(small.shape, np.float32), flip, settings.resolution) >= 0.5
    problem = mask_problem(mask, film, settings.mask_max_film_fraction)
    if problem is not None and not window.source.startswith("fallback"):
        fallback = _fallback_window(raw, modality_small, rough, settings)
        fallback_notes: list[str] = []
        table = _display_with_background_check(
            display_table_from_window(raw, fallback), small, rough, settings, fallback_notes
        )
        fallback_image, fallback_mask, fallback_display = _render(pixels, table, flip, settings)
        if mask_problem(fallback_mask, film, settings.mask_max_film_fraction) is None:
            notes = [
                *notes,
                f"{window.source} window replaced by the fallback window: {problem}",
                *fallback_notes,
            ]
            image, mask, window, problem = fallback_image, fallback_mask, fallback, None
            display = fallback_display
    if problem is not None:
        raise RejectedInput(f"breast mask failed the sanity check ({problem})")
    crop_box = None
    if settings.crop_to_breast:
        # the box from the breast mask of the full-resolution rendering (exact to a raw pixel); the
        # cropped film is the same rendering cut out, so nothing is windowed twice
        full_mask = masks.breast_mask(display, settings.mask_threshold, settings.mask_method)
        crop_box = breast_crop_box(full_mask, settings.crop_margin)
        top, bottom, left, right = crop_box
        image, mask = _render_display(np.ascontiguousarray(display[top:bottom, left:right]), flip, settings)
        pixels = pixels[top:bottom, left:right]  # the raw geometry the lesions are mapped from
        if lesion_circles is not None and len(lesion_circles):
            lesion_circles = np.asarray(lesion_circles, dtype=np.float64).reshape(-1, 3).copy()
            lesion_circles[:, 0] -= left
            lesion_circles[:, 1] -= top
        if lesion_mask_raw is not None:
            lesion_mask_raw = lesion_mask_raw[top:bottom, left:right]
    pectoral_removed = False
    if settings.pectoral_removal and raw.view == "MLO":
        mask, pectoral_removed = masks.remove_pectoral(image, mask)
    if not mask.any():
        raise RejectedInput("empty breast mask after thresholding")

    prepared = PreparedImage(
        image,
        mask,
        raw.laterality,
        flip,
        window,
        pectoral_removed,
        window_check="; ".join(notes),
        orientation_source=source,
        orientation_check=decided.note,
        crop_box=crop_box,
    )
    shape = pixels.shape[:2]
    lesion_parts: list[np.ndarray] = []
    if lesion_circles is not None and len(lesion_circles):
        circles = np.asarray(lesion_circles, dtype=np.float64).reshape(-1, 3)
        xs, ys, scale = transform_points(circles[:, 0], circles[:, 1], shape, flip, settings.resolution)
        radii = circles[:, 2] * scale
        lesion_parts.append(masks.disk_mask(settings.resolution, xs, ys, radii))
        prepared.lesions = [(float(x), float(y), float(r)) for x, y, r in zip(xs, ys, radii)]
    if lesion_mask_raw is not None:
        resized = binary_resize(lesion_mask_raw > 0, flip, settings.resolution)
        lesion_parts.append(resized)
        prepared.lesions = (prepared.lesions or []) + masks.lesion_geometry(resized)
    if lesion_parts:
        prepared.lesion_mask = np.logical_or.reduce(lesion_parts)
    return prepared
