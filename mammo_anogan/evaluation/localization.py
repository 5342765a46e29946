"""Lesion localisation metrics for difference maps: pixel-level AUROC and the "hottest pixel" hit rate.

The image-level score only says *whether* a mammogram looks abnormal; these metrics ask whether the
difference map points at the lesion. Only pixels inside the breast count (the background is zero in
both the image and its projection and would inflate any pixel metric), and only images whose lesion
overlaps the breast are evaluated: normal images and abnormal ones without a lesion mask carry no
localisation ground truth. When no image has one, the metrics are NaN (with a warning), because a
test set without lesion masks is a legitimate input, not an error.

Inputs are ``[N, H, W]`` or ``[N, 1, H, W]`` arrays or tensors; masks are binarised with ``> 0.5``,
so both ``{0, 1}`` float masks and ``{0, 255}`` uint8 masks work.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from mammo_anogan.utils.errors import UserError

log = logging.getLogger(__name__)


def _as_stack(values: Any, name: str) -> np.ndarray:
    """``[N, H, W]`` numpy view of ``[N, H, W]`` / ``[N, 1, H, W]`` arrays or tensors."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 3:
        raise UserError(f"{name} must have shape [N, H, W] or [N, 1, H, W], got {tuple(array.shape)}")
    return array


def _prepare(
    maps: Any, lesion_masks: Any, breast_masks: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validated ``(maps float, lesion bool, breast bool, evaluable [N] bool)``."""
    heat = _as_stack(maps, "maps")
    if not np.issubdtype(heat.dtype, np.floating):
        heat = heat.astype(np.float32)  # keep float maps as they are: no 2x copy of a large stack
    breast = _as_stack(breast_masks, "breast_masks") > 0.5
    lesion = _as_stack(lesion_masks, "lesion_masks") > 0.5
    if not heat.shape == lesion.shape == breast.shape:
        shapes = f"{heat.shape}, {lesion.shape}, {breast.shape}"
        raise UserError(f"maps, lesion_masks and breast_masks differ in shape: {shapes}")
    lesion &= breast
    if not np.all(np.isfinite(heat[breast])):
        raise UserError("difference maps contain NaN or infinite values inside the breast")
    evaluable = lesion.reshape(lesion.shape[0], -1).any(axis=1)
    return heat, lesion, breast, evaluable


def pixel_auroc(maps: Any, lesion_masks: Any, breast_masks: Any) -> float:
    """ROC AUC of map values separating lesion from non-lesion pixels inside the breast.

    All breast pixels of all images with a lesion are pooled into one ranking (so large images and
    large lesions weigh more, as in the pixel AUROC of anomaly-detection benchmarks). NaN when no image
    has a lesion inside the breast or when the evaluable breasts are lesion everywhere.
    """
    heat, lesion, breast, evaluable = _prepare(maps, lesion_masks, breast_masks)
    if not evaluable.any():
        log.warning("pixel AUROC is undefined: no image has a lesion mask overlapping the breast")
        return float("nan")
    inside = breast[evaluable]
    pixel_labels = lesion[evaluable][inside]
    if pixel_labels.all():
        log.warning("pixel AUROC is undefined: the lesions cover the whole breast in every evaluable image")
        return float("nan")
    return float(roc_auc_score(pixel_labels, heat[evaluable][inside]))


def hits(maps: Any, lesion_masks: Any, breast_masks: Any) -> np.ndarray:
    """Per image: 1.0 if the map's maximum inside the breast lies in the lesion, 0.0 if not, NaN if no lesion.

    Ties for the maximum go to the first pixel in row-major order (deterministic; a flat map therefore
    scores a hit only by chance of geometry, not by design).
    """
    heat, lesion, breast, evaluable = _prepare(maps, lesion_masks, breast_masks)
    flat_heat = np.where(breast, heat, -np.inf).reshape(heat.shape[0], -1)
    hottest = np.argmax(flat_heat, axis=1)
    hit = lesion.reshape(lesion.shape[0], -1)[np.arange(heat.shape[0]), hottest]
    return np.where(evaluable, hit.astype(np.float64), np.nan)


def hit_rate(maps: Any, lesion_masks: Any, breast_masks: Any) -> float:
    """Fraction of images with a lesion whose difference-map maximum (inside the breast) hits the lesion."""
    per_image = hits(maps, lesion_masks, breast_masks)
    if np.all(np.isnan(per_image)):
        log.warning("hit rate is undefined: no image has a lesion mask overlapping the breast")
        return float("nan")
    return float(np.nanmean(per_image))
