"""Breast masks, pectoral-muscle removal, surgical clip / marker detection and lesion geometry.

The breast mask matters beyond display: its area is the normaliser of the anomaly score (sum of the
difference map inside the breast / breast area), so it must be the breast and only the breast:
a threshold (triangle by default, Otsu, or a fixed value), the largest connected component (drops
film labels, scanner noise and markers outside the breast), then hole filling (dense tissue and
lesions inside the breast are never holes). All steps use OpenCV / SciPy primitives on small images.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage


def to_uint8_range(values: np.ndarray) -> np.ndarray:
    """Min-max rescale any array to uint8 (for thresholding images that are not 8-bit yet)."""
    values = np.asarray(values, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def otsu_threshold(image_uint8: np.ndarray) -> float:
    """Otsu's threshold of an 8-bit image (OpenCV's implementation)."""
    threshold, _ = cv2.threshold(
        np.ascontiguousarray(image_uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU
    )
    return float(threshold)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (empty in, empty out)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return np.zeros(mask.shape, dtype=bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def triangle_threshold(image_uint8: np.ndarray) -> float:
    """The triangle threshold of an 8-bit image (OpenCV's implementation).

    A mammogram's histogram is one tall background peak with a long tissue tail; the triangle
    method puts the threshold at the foot of that peak, so the faint fatty periphery and the skin
    line stay inside the breast. Otsu instead splits fat from dense tissue (on CBIS-DDSM films it
    cut off 40-60% of the breast), so it is kept only as an option.
    """
    threshold, _ = cv2.threshold(
        np.ascontiguousarray(image_uint8), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_TRIANGLE
    )
    return float(threshold)


def breast_mask(
    image_uint8: np.ndarray, threshold: float | None = None, method: str = "triangle"
) -> np.ndarray:
    """Breast mask of an 8-bit image: threshold + opening + largest component + holes filled.

    ``threshold`` (0..255) overrides ``method`` (``triangle`` or ``otsu``). The small opening
    detaches thin bright film borders and labels touching the breast before the largest
    component is taken.
    """
    if threshold is None:
        threshold = otsu_threshold(image_uint8) if method == "otsu" else triangle_threshold(image_uint8)
    foreground = (image_uint8 > threshold).astype(np.uint8)
    radius = max(image_uint8.shape) // 200
    if radius >= 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        foreground = cv2.morphologyEx(foreground, cv2.MORPH_OPEN, kernel)
    return ndimage.binary_fill_holes(largest_component(foreground > 0))


def rough_breast_mask(values: np.ndarray) -> np.ndarray:
    """Breast mask of a small working copy in any value range (min-max scaled, triangle threshold)."""
    return breast_mask(to_uint8_range(values))


def _taper_muscle_foot(
    triangle: np.ndarray, right_edge: np.ndarray, left: int, max_foot: float
) -> np.ndarray:
    """Cut a removal that ends in a vertical strip (a "foot") back to a taper that meets the chest wall.

    The pectoral muscle narrows to the chest wall at its lowest row. On mini-MIAS the bright
    component often goes on down the chest wall as a strip of constant width (the skin fold and
    the film edge are as bright as the muscle), so the staircase outline ends in a rectangle. When
    its lowest row is wider than ``max_foot`` times its top row, the removal is limited to the
    straight line from the top row's right end to the chest wall below the lowest row.
    """
    rows = np.flatnonzero(triangle.any(axis=1))
    if rows.size < 2:
        return triangle
    first, last = int(rows[0]), int(rows[-1])
    top_width = int(right_edge[first]) - left
    if top_width <= 0 or int(right_edge[last]) - left <= max_foot * top_width:
        return triangle
    row = np.arange(triangle.shape[0])
    line = left + top_width * (1.0 - (row - first) / (last + 1 - first))
    line = np.where((row >= first) & (row <= last), line, 0.0)
    return triangle & (np.arange(triangle.shape[1])[None, :] < line[:, None])


def remove_pectoral(
    image_uint8: np.ndarray, mask: np.ndarray, min_contrast: float = 10.0, max_foot: float = 0.25
) -> tuple[np.ndarray, bool]:
    """Remove the pectoral muscle from an MLO breast mask (chest wall on the LEFT, after flipping).

    Method (a documented heuristic, not a learned model): on MLO films the pectoral muscle is the
    brightest large region in the upper-left corner. Inside the upper half / left half of the
    breast's bounding box, pixels brighter than the Otsu threshold of the breast pixels there are
    candidates (if their mean is not ``min_contrast`` grey levels above the breast's median,
    there is no muscle to remove); the candidate component touching the left edge in the top
    quarter of the breast is the muscle. Its outline is regularised to a staircase triangle (each
    row filled from the chest wall, widths never growing downwards), as the muscle is. It is
    removed only if its area is between 1% and 40% of the breast; otherwise the mask is unchanged. A
    removal whose lowest row is wider than ``max_foot`` times its top row ends in a strip down the
    chest wall, not in a taper: it is cut back to the straight edge (:func:`_taper_muscle_foot`;
    validated on the 246 mini-MIAS films, experiments/mias/README.md). Returns ``(mask, removed)``.
    """
    if not mask.any():
        return mask, False
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    top, bottom = int(rows[0]), int(rows[-1]) + 1
    left, right = int(cols[0]), int(cols[-1]) + 1
    region = np.zeros_like(mask)
    region[top : top + (bottom - top) // 2, left : left + (right - left) // 2] = True
    region &= mask
    if region.sum() < 16:
        return mask, False
    threshold = otsu_threshold(image_uint8[region].reshape(1, -1))
    candidates = region & (image_uint8 > threshold)
    if not candidates.any() or image_uint8[candidates].mean() - np.median(image_uint8[mask]) < min_contrast:
        return mask, False  # nothing in the corner is clearly brighter than the breast
    count, labels = cv2.connectedComponents(candidates.astype(np.uint8), connectivity=8)
    if count <= 1:
        return mask, False
    edge_band = labels[top : top + max(1, (bottom - top) // 4), left : left + max(2, (right - left) // 50)]
    touching = np.unique(edge_band[edge_band > 0])
    if touching.size == 0:
        return mask, False
    sizes = np.bincount(labels.ravel(), minlength=count)[touching]
    muscle = labels == touching[int(np.argmax(sizes))]
    # Staircase triangle: per row, fill from the chest wall to the muscle's right-most pixel.
    has_pixel = muscle.any(axis=1)
    right_edge = np.where(has_pixel, muscle.shape[1] - np.argmax(muscle[:, ::-1], axis=1), 0)
    right_edge[:top] = 0
    right_edge[top:] = np.minimum.accumulate(right_edge[top:])
    triangle = np.arange(mask.shape[1])[None, :] < right_edge[:, None]
    triangle &= mask
    triangle = _taper_muscle_foot(triangle, right_edge, left, max_foot)
    fraction = triangle.sum() / mask.sum()
    if not 0.01 <= fraction <= 0.40:
        return mask, False
    return mask & ~triangle, True


def count_clips(
    presentation: np.ndarray,
    breast: np.ndarray,
    percentiles: tuple[float, float],
    margin: float,
    min_area_px: int,
    max_area_fraction: float,
    min_extent: float,
) -> int:
    """Count very bright, small, compact objects in or near the breast (surgical clips, markers).

    Metal is brighter than any tissue: a pixel is "metal-bright" when it exceeds the breast's high
    percentile by ``margin`` times the breast's percentile span. Components of such pixels within a
    small dilation of the breast, whose area lies between ``min_area_px`` and ``max_area_fraction``
    of the breast area and which fill at least ``min_extent`` of their bounding box, are counted.
    Calcifications are tissue-bright, not metal-bright, and dense tissue is large, not small.
    """
    if not breast.any():
        return 0
    low, high = np.percentile(presentation[breast].astype(np.float64), percentiles)
    threshold = high + margin * max(high - low, 1e-6)
    radius = max(1, round(0.02 * max(breast.shape)))
    near = cv2.dilate(breast.astype(np.uint8), np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)) > 0
    bright = (presentation > threshold) & near
    count, _, stats, _ = cv2.connectedComponentsWithStats(bright.astype(np.uint8), connectivity=8)
    if count <= 1:
        return 0
    stats = stats[1:]
    area = stats[:, cv2.CC_STAT_AREA]
    extent = area / (stats[:, cv2.CC_STAT_WIDTH] * stats[:, cv2.CC_STAT_HEIGHT])
    max_area = max_area_fraction * breast.sum()
    return int(np.count_nonzero((area >= min_area_px) & (area <= max_area) & (extent >= min_extent)))


def disk_mask(resolution: int, xs: np.ndarray, ys: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Union of filled circles (output pixel coordinates) on a ``resolution`` square, vectorised."""
    grid = np.arange(resolution, dtype=np.float32)
    xs = np.asarray(xs, np.float32)[:, None, None]
    ys = np.asarray(ys, np.float32)[:, None, None]
    radii = np.maximum(np.asarray(radii, np.float32), 0.5)[:, None, None]
    inside = (grid[None, None, :] - xs) ** 2 + (grid[None, :, None] - ys) ** 2 <= radii**2
    return inside.any(axis=0)


def lesion_geometry(lesion: np.ndarray) -> list[tuple[float, float, float]]:
    """Centre (x, y) and equivalent-circle radius of each connected lesion, largest first."""
    count, _, stats, centroids = cv2.connectedComponentsWithStats(lesion.astype(np.uint8), connectivity=8)
    order = 1 + np.argsort(-stats[1:, cv2.CC_STAT_AREA])
    return [
        (float(centroids[i, 0]), float(centroids[i, 1]), float(np.sqrt(stats[i, cv2.CC_STAT_AREA] / np.pi)))
        for i in order[: count - 1]
    ]
