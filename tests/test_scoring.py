"""Difference maps and anomaly scores on hand-made maps and masks."""

from __future__ import annotations

import math

import pytest
import torch

from mammo_anogan.anomaly.scoring import (
    all_map_scores,
    difference_maps,
    masked_mean,
    score_images,
    topk_mean,
)


def _half_mask(size: int = 4) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size)
    mask[..., :, : size // 2] = 1  # breast on the left half
    return mask


def test_map_is_image_minus_mean_of_clamped_projections() -> None:
    image = torch.zeros(1, 1, 4, 4)
    projections = torch.stack([torch.full((1, 4, 4), 0.5), torch.full((1, 4, 4), 3.0)])[None]  # 3.0 -> 1.0
    maps = difference_maps(image, projections, torch.tensor([[0.2, 0.1]]), torch.tensor([[True, True]]))
    assert torch.allclose(maps.mean_projection, torch.full((1, 1, 4, 4), 0.75))
    assert torch.allclose(maps.signed_map, torch.full((1, 1, 4, 4), -0.75))
    assert torch.allclose(maps.abs_map, torch.full((1, 1, 4, 4), 0.75))
    assert maps.best_seed.tolist() == [1]  # lowest final loss
    assert torch.allclose(maps.best_abs_map, torch.ones(1, 1, 4, 4))


def test_paper_score_is_sum_inside_breast_over_area() -> None:
    image = torch.zeros(1, 1, 4, 4)
    image[0, 0, 0, 0] = 1.0  # one bright pixel inside the breast
    image[0, 0, 0, 3] = -1.0  # outside the breast: must not count
    projection = torch.zeros(1, 1, 1, 4, 4)
    maps = difference_maps(image, projection, torch.zeros(1, 1), torch.ones(1, 1, dtype=torch.bool))
    score = score_images(maps, _half_mask(), "mean_map")
    assert score.tolist() == pytest.approx([1.0 / 8.0])  # sum 1 over an area of 8 pixels
    assert masked_mean(maps.abs_map, torch.ones(1, 1, 4, 4)).tolist() == pytest.approx([2.0 / 16.0])


def test_invalid_seeds_are_left_out_of_the_mean_and_the_best() -> None:
    image = torch.zeros(1, 1, 2, 2)
    projections = torch.stack([torch.full((1, 2, 2), 0.2), torch.full((1, 2, 2), float("nan"))])[None]
    losses = torch.tensor([[0.5, float("nan")]])
    maps = difference_maps(image, projections, losses, torch.tensor([[True, False]]))
    assert torch.allclose(maps.abs_map, torch.full((1, 1, 2, 2), 0.2))
    assert maps.best_seed.tolist() == [0]
    none_valid = difference_maps(image, projections, losses, torch.tensor([[False, False]]))
    assert torch.isnan(score_images(none_valid, torch.ones(1, 1, 2, 2))).all()
    assert none_valid.best_seed.tolist() == [-1]


def test_topk_is_the_mean_of_the_highest_percent_inside_the_breast() -> None:
    values = torch.arange(1, 201, dtype=torch.float32).reshape(1, 1, 10, 20)
    mask = torch.zeros(1, 1, 10, 20)
    mask[..., :, :10] = 1  # 100 pixels: per row 1..10, 21..30, ..., 181..190
    inside = values[mask.bool()]
    expected = inside.sort(descending=True).values[:10].mean()
    assert topk_mean(values, mask, 10.0).tolist() == pytest.approx([float(expected)])
    assert topk_mean(values, mask, 0.1).tolist() == pytest.approx([190.0])  # at least one pixel


def test_empty_mask_gives_nan_for_every_method() -> None:
    image = torch.rand(2, 1, 4, 4)
    projections = torch.zeros(2, 1, 1, 4, 4)
    maps = difference_maps(image, projections, torch.zeros(2, 1), torch.ones(2, 1, dtype=torch.bool))
    masks = torch.cat([_half_mask(), torch.zeros(1, 1, 4, 4)])
    for name, scores in all_map_scores(maps, masks, 5.0).items():
        assert math.isfinite(float(scores[0])), name
        assert math.isnan(float(scores[1])), name
    perceptual = score_images(maps, masks, "perceptual", perceptual=torch.tensor([0.3, 0.4]))
    assert perceptual[0].item() == pytest.approx(0.3) and math.isnan(perceptual[1].item())
    with pytest.raises(ValueError, match="score.method"):
        score_images(maps, masks, "median")
