"""Difference maps and anomaly scores from the projections of an image.

Units: images are in ``[-1, 1]``; projections are clamped to that range before averaging, so the
absolute difference map is in ``[0, 2]`` and the signed map (image minus mean projection) in
``[-2, 2]``. A score is a mean of map values over the breast, hence also in ``[0, 2]``.

The seed paper's score (``mean_map``) is the sum of ``|image - mean of the N projections|`` inside
the breast divided by the breast area. Alternatives: ``best_map`` (the map of the seed with the
lowest final loss), ``topk`` (mean of the highest ``topk_percent`` % of the map inside the breast,
sensitive to small lesions that a whole-breast mean dilutes) and ``perceptual`` (the projection
loss between the image and its mean projection, computed by the caller). The lesion-sensitive
scores ``smooth_max``, ``smooth_topk``, ``component`` and ``disc_features`` live in
:mod:`mammo_anogan.anomaly.map_scores`; ``auto`` picks one of them on validation (never on test).
Everything is fp32 and vectorised over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mammo_anogan.anomaly.map_scores import MAP_METHODS, MapScoreSettings, lesion_scores, topk_mean

SCORE_METHODS = ("mean_map", "best_map", "topk", "perceptual", *MAP_METHODS, "disc_features", "auto")
EMPTY_MASK_NOTE = "empty breast mask: excluded from metrics"


@dataclass
class DifferenceMaps:
    """Per-image maps ``[B, C, H, W]`` (fp32) and the index of the best seed ``[B]``."""

    mean_projection: torch.Tensor
    best_projection: torch.Tensor
    signed_map: torch.Tensor  # image - mean projection, in [-2, 2]
    abs_map: torch.Tensor  # |image - mean projection|, in [0, 2]
    best_abs_map: torch.Tensor  # |image - best projection|, in [0, 2]
    best_seed: torch.Tensor  # [B] long; -1 where no seed is valid


def difference_maps(
    images: torch.Tensor, projections: torch.Tensor, losses: torch.Tensor, valid: torch.Tensor
) -> DifferenceMaps:
    """Maps for ``images [B,C,H,W]`` from ``projections [B,N,C,H,W]``, their final ``losses [B,N]``
    and ``valid [B,N]`` (dropped seeds are left out of the mean and cannot be the best one).
    An image without any valid seed gets NaN maps.
    """
    images = images.float()
    projections = projections.float().clamp(-1.0, 1.0)
    weights = valid.to(projections.dtype)
    count = weights.sum(dim=1)
    weights_5d = weights[:, :, None, None, None]
    mean_projection = (projections.nan_to_num() * weights_5d).sum(dim=1) / count[:, None, None, None]
    masked_losses = torch.where(
        valid, losses.float(), torch.full_like(losses, float("inf"), dtype=torch.float32)
    )
    best_seed = masked_losses.argmin(dim=1)
    best_projection = projections[torch.arange(projections.shape[0]), best_seed]
    none_valid = count == 0
    best_projection = torch.where(none_valid[:, None, None, None], float("nan"), best_projection)
    best_seed = torch.where(none_valid, torch.full_like(best_seed, -1), best_seed)
    signed = images - mean_projection
    return DifferenceMaps(
        mean_projection=mean_projection,
        best_projection=best_projection,
        signed_map=signed,
        abs_map=signed.abs(),
        best_abs_map=(images - best_projection).abs(),
        best_seed=best_seed,
    )


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image sum of ``values`` inside ``mask`` divided by the mask area ``[B]`` (NaN if empty)."""
    mask = (mask > 0.5).to(values.dtype)
    area = mask.flatten(1).sum(dim=1)
    total = (values * mask).flatten(1).sum(dim=1)
    return torch.where(area > 0, total / area.clamp_min(1.0), torch.full_like(area, float("nan")))


def score_images(
    maps: DifferenceMaps,
    masks: torch.Tensor,
    method: str = "mean_map",
    topk_percent: float = 1.0,
    perceptual: torch.Tensor | None = None,
    map_settings: MapScoreSettings | None = None,
    features: torch.Tensor | None = None,
) -> torch.Tensor:
    """Anomaly scores ``[B]`` (higher = more abnormal); NaN where the breast mask is empty.

    ``perceptual`` / ``features`` are the caller's perceptual and discriminator-feature distances of
    the mean projections (methods ``perceptual`` / ``disc_features``); ``map_settings`` configures
    the lesion-sensitive methods. ``auto`` is resolved on validation later: here it gives
    ``mean_map``, which every row also stores in its own column.
    """
    empty = (masks > 0.5).flatten(1).sum(dim=1) == 0
    if method in ("mean_map", "auto"):
        scores = masked_mean(maps.abs_map, masks)
    elif method == "best_map":
        scores = masked_mean(maps.best_abs_map, masks)
    elif method == "topk":
        scores = topk_mean(maps.abs_map, masks, topk_percent)
    elif method == "perceptual":
        if perceptual is None:
            raise ValueError("score.method=perceptual needs the perceptual distances of the mean projections")
        scores = perceptual.float()
    elif method in MAP_METHODS:
        scores = lesion_scores(maps.signed_map, masks, map_settings or MapScoreSettings())[method]
    elif method == "disc_features":
        if features is None:
            raise ValueError("score.method=disc_features needs the discriminator-feature distances")
        scores = features.float()
    else:
        raise ValueError(f"score.method must be one of {', '.join(SCORE_METHODS)}, got {method!r}")
    return torch.where(empty, torch.full_like(scores, float("nan")), scores)


def all_map_scores(
    maps: DifferenceMaps,
    masks: torch.Tensor,
    topk_percent: float = 1.0,
    map_settings: MapScoreSettings | None = None,
) -> dict[str, torch.Tensor]:
    """The cheap map-based scores side by side, so another method can be evaluated without re-projecting."""
    empty = (masks > 0.5).flatten(1).sum(dim=1) == 0
    lesion = lesion_scores(
        maps.signed_map, masks, map_settings or MapScoreSettings(topk_percent=topk_percent)
    )
    return {
        "score_mean_map": score_images(maps, masks, "mean_map"),
        "score_best_map": score_images(maps, masks, "best_map"),
        "score_topk": score_images(maps, masks, "topk", topk_percent),
        **{f"score_{name}": torch.where(empty, torch.nan, value) for name, value in lesion.items()},
    }
