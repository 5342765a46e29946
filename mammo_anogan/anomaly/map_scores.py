"""Lesion-sensitive image scores from a difference map, and the validation-only choice among them.

The seed paper scores an image by the mean of ``|image - reconstruction|`` over the breast
(``mean_map``). A lesion covering 1 % of the breast then moves the score by about 1 % of its own
contrast, while the reconstruction error spread over the whole breast (texture, film placement,
the breast edge) moves it by far more: small lesions are diluted away. These scores look at the
*most anomalous place* instead:

* ``smooth_max``: maximum inside the breast of the map smoothed with a Gaussian of
  ``smooth_sigma`` px (a matched filter for a blob of that size: single hot pixels and thin edge
  residuals average out, a lesion-sized excess survives);
* ``smooth_topk``: mean of the highest ``topk_percent`` % of the smoothed map inside the breast;
* ``component``: the largest connected region of the smoothed map above ``component_threshold``,
  scored by its summed excess over the threshold (size x intensity; Lee et al. 2022 score residuals
  above a threshold after a median filter);
* ``disc_features``: mean squared distance between the discriminator's block features of the image
  and of its reconstruction (f-AnoGAN's feature residual; computed by the caller).

The breast mask can be eroded by ``edge_margin`` px first, so a misplaced skin line cannot dominate a
max-type score. ``map_polarity=positive`` scores only where the image is *brighter* than its
reconstruction (masses and calcifications are dense), ``abs`` (the paper's) both directions.

Units: maps in ``[0, 2]`` (images in ``[-1, 1]``), so ``smooth_max`` / ``smooth_topk`` are in
``[0, 2]``, ``component`` in map units x pixels. Everything is vectorised over the batch except the
connected-component labelling (``scipy.ndimage.label``, one C call per image).

``select_method`` implements ``score.method=auto``: it picks the method with the highest
*validation* AUC (ties: the earlier method in :data:`AUTO_CANDIDATES`), never looking at test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mammo_anogan.utils.errors import ConfigError

MAP_METHODS = ("smooth_max", "smooth_topk", "component")
MAP_POLARITIES = ("abs", "positive")
#: Candidates of ``score.method=auto``, in order of preference on ties (the paper's score first).
AUTO_CANDIDATES = ("mean_map", "best_map", "topk", "smooth_max", "smooth_topk", "component", "disc_features")


@dataclass(frozen=True)
class MapScoreSettings:
    """``score.*`` keys of the lesion-sensitive scores (see the module docstring)."""

    smooth_sigma: float = 1.5  # px at the image resolution
    topk_percent: float = 1.0
    component_threshold: float = 0.25  # map units ([0, 2])
    edge_margin: int = 0  # px eroded from the breast mask before max-type scores
    map_polarity: str = "abs"

    def __post_init__(self) -> None:
        if self.smooth_sigma < 0:
            raise ConfigError(f"score.smooth_sigma={self.smooth_sigma} is out of range; it must be >= 0")
        if not 0 < self.topk_percent <= 100:
            raise ConfigError(
                f"score.topk_percent={self.topk_percent} is out of range; allowed: 0 < value <= 100"
            )
        if self.component_threshold < 0:
            raise ConfigError(f"score.component_threshold={self.component_threshold} must be >= 0")
        if self.edge_margin < 0:
            raise ConfigError(f"score.edge_margin={self.edge_margin} must be >= 0")
        if self.map_polarity not in MAP_POLARITIES:
            raise ConfigError(
                f"score.map_polarity={self.map_polarity!r} is not allowed; "
                f"use one of {', '.join(MAP_POLARITIES)}"
            )

    @classmethod
    def from_config(cls, score_cfg: Mapping[str, Any]) -> MapScoreSettings:
        names = cls.__dataclass_fields__.keys()
        return cls(**{key: score_cfg[key] for key in names if key in score_cfg})


def topk_mean(values: torch.Tensor, mask: torch.Tensor, percent: float) -> torch.Tensor:
    """Per-image mean of the highest ``percent`` % of ``values`` inside ``mask`` ``[B]`` (NaN if empty)."""
    flat = values.flatten(1)
    inside = (mask > 0.5).flatten(1)
    area = inside.sum(dim=1)
    count = torch.ceil(area.to(flat.dtype) * percent / 100.0).clamp_min(1).long()
    ranked = (
        torch.where(inside, flat, torch.full_like(flat, float("-inf"))).sort(dim=1, descending=True).values
    )
    ranked = torch.where(torch.isfinite(ranked), ranked, torch.zeros_like(ranked))
    cumulative = ranked.cumsum(dim=1)
    top_sum = cumulative.gather(1, (count - 1).clamp(max=flat.shape[1] - 1)[:, None]).squeeze(1)
    return torch.where(area > 0, top_sum / count, torch.full_like(top_sum, float("nan")))


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[B, C, H, W]`` maps (reflect padding keeps the edges unbiased)."""
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma * sigma))
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    channels = maps.shape[1]
    pad = min(radius, maps.shape[-1] - 1, maps.shape[-2] - 1)
    kernel = kernel[radius - pad : radius + pad + 1]
    x = F.pad(maps, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def erode_mask(masks: torch.Tensor, margin: int) -> torch.Tensor:
    """Binary breast masks ``[B, 1, H, W]`` eroded by ``margin`` px (square structuring element).

    Prepared films have the chest wall on the LEFT (docs/interfaces.md): the breast continues past
    that border, so it counts as inside; the top, bottom and right borders count as outside, so the
    corners where the skin line meets the film edge are eroded like the rest of the skin line.
    """
    binary = (masks > 0.5).to(torch.float32)
    if margin <= 0:
        return binary
    outside = F.pad(1.0 - binary, (0, margin, margin, margin), value=1.0)  # right, top, bottom
    outside = F.pad(outside, (margin, 0, 0, 0), value=0.0)  # left: the chest wall
    return 1.0 - F.max_pool2d(outside, kernel_size=2 * margin + 1, stride=1)


def polarised(signed_map: torch.Tensor, polarity: str) -> torch.Tensor:
    """The map a score reads: ``|signed|`` (abs) or ``max(signed, 0)`` (positive: brighter than G)."""
    return signed_map.abs() if polarity == "abs" else signed_map.clamp_min(0.0)


def masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per image the maximum of ``values [B, ...]`` where ``mask [B, ...] > 0.5``; NaN for an empty mask."""
    flat = torch.where(
        mask.flatten(1) > 0.5, values.flatten(1), torch.full_like(values.flatten(1), -math.inf)
    )
    best = flat.max(dim=1).values
    return torch.where(torch.isfinite(best), best, torch.full_like(best, math.nan))


def component_scores(smoothed: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per image: summed excess over ``threshold`` of the largest connected supra-threshold region.

    0 when nothing inside the mask exceeds the threshold; NaN when the mask is empty. 8-connectivity.
    """
    from scipy import ndimage

    excess = (smoothed - threshold).clamp_min(0.0) * (mask > 0.5)
    planes = excess.detach().cpu().numpy()[:, 0]
    # one labelling call for the whole batch: 8-connected within an image, never across images
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    labels, count = ndimage.label(planes > 0, structure=structure)
    sums = np.bincount(labels.ravel(), weights=planes.ravel(), minlength=count + 1)[1:]
    image_of = np.zeros(count + 1, dtype=np.int64)  # the image each label lies in
    image_of[labels.reshape(planes.shape[0], -1)] = np.arange(planes.shape[0])[:, None]
    out = np.zeros(planes.shape[0], dtype=np.float64)
    np.maximum.at(out, image_of[1:], sums)
    empty = (mask > 0.5).flatten(1).sum(dim=1).cpu().numpy() == 0
    out[empty] = math.nan
    return torch.from_numpy(out).to(smoothed.device, torch.float32)


def lesion_scores(
    signed_map: torch.Tensor, masks: torch.Tensor, settings: MapScoreSettings
) -> dict[str, torch.Tensor]:
    """``{"smooth_max", "smooth_topk", "component"}`` scores ``[B]`` of ``image - reconstruction``."""
    values = polarised(signed_map.float(), settings.map_polarity)
    smoothed = gaussian_smooth(values, settings.smooth_sigma)
    inner = erode_mask(masks, settings.edge_margin)
    return {
        "smooth_max": masked_max(smoothed, inner),
        "smooth_topk": topk_mean(smoothed, inner, settings.topk_percent),
        "component": component_scores(smoothed, inner, settings.component_threshold),
    }


def score_map(signed_map: torch.Tensor, masks: torch.Tensor, settings: MapScoreSettings) -> torch.Tensor:
    """The smoothed, polarised map a lesion score reads, zero outside the (eroded) breast: for figures
    and localisation (its maximum is where ``smooth_max`` looks)."""
    smoothed = gaussian_smooth(polarised(signed_map.float(), settings.map_polarity), settings.smooth_sigma)
    return smoothed * erode_mask(masks, settings.edge_margin)


def select_method(
    labels: Sequence[int] | np.ndarray, columns: Mapping[str, Sequence[float] | np.ndarray]
) -> tuple[str, dict[str, float]]:
    """``score.method=auto``: the candidate with the highest validation AUC, and every candidate's AUC.

    ``columns`` maps a method name to its validation scores (aligned with ``labels``); methods whose
    scores are not all finite are skipped. Raises ConfigError when validation lacks a class.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels, dtype=int)
    if y.size == 0 or y.min() == y.max():
        raise ConfigError("score.method=auto needs a validation split with both normal and abnormal images")
    aucs: dict[str, float] = {}
    for method in AUTO_CANDIDATES:
        if method not in columns:
            continue
        values = np.asarray(columns[method], dtype=np.float64)
        if values.shape != y.shape or not np.all(np.isfinite(values)):
            continue
        aucs[method] = float(roc_auc_score(y, values))
    if not aucs:
        raise ConfigError("score.method=auto: no candidate score is available for every validation image")
    best = max(aucs.values())
    chosen = next(method for method in AUTO_CANDIDATES if aucs.get(method) == best)
    return chosen, aucs
