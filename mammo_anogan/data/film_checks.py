"""Sanity checks of a rendered film: background really dark, background really black, mask really a breast.

Used by :func:`mammo_anogan.data.preprocess.prepare_image` (docs/reliability.md, "DICOM quirks from
the field", kind 1). All work on the small working copy or the output-size mask, so they cost a few
milliseconds per film.
"""

from __future__ import annotations

import cv2
import numpy as np

from mammo_anogan.data import masks
from mammo_anogan.data import orientation as orient


def background_brighter_than_tissue(presentation_small: np.ndarray) -> bool:
    """Whether the bright region of a film is its background (raw detector data, or inverted data).

    In a presentation mammogram the bright region (above the triangle threshold) is the textured
    breast and the dark region the flat background. When the bright region is the smooth one (its
    median high-pass energy is under half the dark region's), the film shows its background bright:
    raw FOR PROCESSING data or MONOCHROME1 pixels labelled MONOCHROME2. Only checked when the bright
    region has the extent of a breast (:func:`orientation.breast_like`), so a bright film edge or
    label strip is no trigger.
    """
    scaled = masks.to_uint8_range(presentation_small)
    bright = scaled > masks.triangle_threshold(scaled)
    if not orient.breast_like(bright):
        return False
    values = scaled.astype(np.float64) / 255.0
    energy = np.abs(values - cv2.GaussianBlur(values, (0, 0), 2.0))
    kernel = np.ones((7, 7), np.uint8)
    inside = cv2.erode(bright.astype(np.uint8), kernel) > 0
    outside = cv2.erode((~bright).astype(np.uint8), kernel) > 0
    if inside.sum() < 100 or outside.sum() < 100:
        return False
    return bool(np.median(energy[inside]) < 0.5 * np.median(energy[outside]))


def background_level(display_small: np.ndarray, rough: np.ndarray) -> float:
    """The display grey level of the film background: a low percentile outside a dilated tissue mask.

    The 10th percentile, not the median: the outside of a scanned film also holds bright film
    edges, labels and markers, while the background the window lifted is its darkest large part.
    """
    radius = max(1, round(0.02 * max(rough.shape)))
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    outside = cv2.dilate(rough.astype(np.uint8), kernel) == 0
    if outside.sum() < 0.02 * rough.size:
        return 0.0
    return float(np.percentile(display_small[outside], 10))


def lower_lifted_background(table: np.ndarray, level: float) -> np.ndarray:
    """Stretch a display table so grey ``level`` (the background) becomes 0 and 255 stays 255."""
    stretched = (table.astype(np.float64) - level) * (255.0 / max(255.0 - level, 1.0))
    return np.clip(np.rint(stretched), 0, 255).astype(np.uint8)


def mask_problem(mask: np.ndarray, film: np.ndarray, max_film_fraction: float) -> str | None:
    """Why ``mask`` cannot be the breast, or ``None``; both arrays in output coordinates.

    A breast never fills the film: the nipple side always shows background. A mask over more than
    ``max_film_fraction`` of the film is a threshold that fell below the background (a window that
    lifts it, a noisy or grey background).
    """
    fraction = float((mask & film).sum()) / max(int(film.sum()), 1)
    if fraction > max_film_fraction:
        return f"mask covers {fraction:.0%} of the film"
    return None
