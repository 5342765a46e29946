"""Lesion-sensitive map scores and the validation-only choice of score.method=auto."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mammo_anogan.anomaly.map_scores import (
    MapScoreSettings,
    component_scores,
    erode_mask,
    gaussian_smooth,
    lesion_scores,
    score_map,
    select_method,
)
from mammo_anogan.anomaly.scoring import masked_mean
from mammo_anogan.utils.errors import ConfigError


def _maps() -> tuple[torch.Tensor, torch.Tensor]:
    """Image 0: a 4x4 blob of 1.0 on a clean map; image 1: diffuse 0.2 error with a bigger mean."""
    signed = torch.zeros(2, 1, 32, 32)
    signed[0, 0, 12:16, 12:16] = 1.0
    signed[1] = 0.2
    masks = torch.ones(2, 1, 32, 32)
    return signed, masks


def test_smooth_max_finds_the_blob_that_the_mean_dilutes() -> None:
    signed, masks = _maps()
    mean = masked_mean(signed.abs(), masks)
    assert mean[0] < mean[1]  # the paper's score ranks the diffuse image higher
    scores = lesion_scores(signed, masks, MapScoreSettings(smooth_sigma=1.0, component_threshold=0.3))
    assert scores["smooth_max"][0] > 0.7 and scores["smooth_max"][1] == pytest.approx(0.2, abs=1e-5)
    assert scores["smooth_topk"][0] > scores["smooth_topk"][1]
    assert scores["component"][0] > 0 and scores["component"][1] == 0  # 0.2 never crosses 0.3


def test_gaussian_smooth_preserves_mass_and_constants() -> None:
    x = torch.zeros(1, 1, 21, 21)
    x[0, 0, 10, 10] = 1.0
    y = gaussian_smooth(x, 1.5)
    assert float(y.sum()) == pytest.approx(1.0, abs=1e-5) and float(y.max()) < 0.1
    assert torch.allclose(gaussian_smooth(torch.full((1, 1, 8, 8), 0.7), 2.0), torch.full((1, 1, 8, 8), 0.7))
    assert torch.equal(gaussian_smooth(x, 0.0), x)


def test_component_score_is_the_largest_region_excess() -> None:
    maps = torch.zeros(1, 1, 10, 10)
    maps[0, 0, 1:3, 1:3] = 0.5  # 4 px x excess 0.3 = 1.2
    maps[0, 0, 6:9, 6:9] = 0.4  # 9 px x excess 0.2 = 1.8 (the larger sum wins)
    maps[0, 0, 0, 9] = 2.0  # one pixel x excess 1.8, also 1.8; not larger
    score = component_scores(maps, torch.ones(1, 1, 10, 10), threshold=0.2)
    assert float(score[0]) == pytest.approx(1.8, abs=1e-5)
    empty = component_scores(maps, torch.zeros(1, 1, 10, 10), threshold=0.2)
    assert math.isnan(float(empty[0]))
    # a batch is labelled at once: regions at the same place in neighbouring images stay apart
    batch = torch.cat([maps, maps, torch.zeros_like(maps), maps.flip(-1)])  # 0 and 1 overlap fully
    masks = torch.ones(4, 1, 10, 10)
    masks[2] = 0
    scores = component_scores(batch, masks, threshold=0.2)
    assert scores[[0, 1, 3]].tolist() == pytest.approx([1.8, 1.8, 1.8], abs=1e-5)
    assert math.isnan(float(scores[2]))


def test_edge_margin_and_polarity() -> None:
    signed = torch.zeros(1, 1, 16, 16)
    signed[0, 0, :, 11] = 1.5  # a skin-line residual along the mask's edge
    signed[0, 0, 8, 8] = -1.0  # the reconstruction is brighter here
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :, :12] = 1
    # the chest wall (left border) is not an edge; the top and bottom film borders are
    assert erode_mask(mask, 2).sum() == 12 * 10
    plain = lesion_scores(signed, mask, MapScoreSettings(smooth_sigma=0))
    inner = lesion_scores(signed, mask, MapScoreSettings(smooth_sigma=0, edge_margin=2))
    positive = lesion_scores(
        signed, mask, MapScoreSettings(smooth_sigma=0, edge_margin=2, map_polarity="positive")
    )
    assert float(plain["smooth_max"][0]) == 1.5 and float(inner["smooth_max"][0]) == 1.0
    assert float(positive["smooth_max"][0]) == 0.0
    shown = score_map(signed, mask, MapScoreSettings(smooth_sigma=0, edge_margin=2))
    assert shown.shape == signed.shape and float(shown[0, 0, :, 10:].abs().sum()) == 0.0


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="map_polarity"):
        MapScoreSettings(map_polarity="negative")
    with pytest.raises(ConfigError, match="topk_percent"):
        MapScoreSettings(topk_percent=0)
    assert MapScoreSettings.from_config({"smooth_sigma": 2.0, "method": "auto"}).smooth_sigma == 2.0


def test_auto_picks_the_best_validation_auc_and_prefers_the_paper_on_ties() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    columns = {
        "mean_map": np.array([0.1, 0.2, 0.3, 0.2, 0.3, 0.4]),  # AUC 0.78
        "smooth_max": np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),  # AUC 1.0
        "component": np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]),  # AUC 1.0, later in the preference order
        "disc_features": np.array([np.nan, 0.2, 0.3, 0.4, 0.5, 0.6]),  # not usable: skipped
        "unknown": np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]),  # not a candidate
    }
    chosen, aucs = select_method(labels, columns)
    assert chosen == "smooth_max" and set(aucs) == {"mean_map", "smooth_max", "component"}
    assert aucs["mean_map"] == pytest.approx(7 / 9)
    tie, _ = select_method(labels, {"topk": columns["smooth_max"], "mean_map": columns["smooth_max"]})
    assert tie == "mean_map"
    with pytest.raises(ConfigError, match="both normal and abnormal"):
        select_method(np.zeros(4, dtype=int), {"mean_map": np.zeros(4)})
