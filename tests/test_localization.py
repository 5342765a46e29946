"""Localisation metrics on hand-made 4x4 maps and masks with hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mammo_anogan.evaluation.localization import hit_rate, hits, pixel_auroc
from mammo_anogan.utils.errors import UserError


def _case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three 4x4 images: breast = left 3 columns (12 pixels each).

    Image 0: lesion at (0,0),(0,1); the map's breast maximum (9) is at (0,0) -> hit. A larger value (99)
             sits outside the breast in column 3 and must be ignored.
    Image 1: lesion at (3,0); the breast maximum (8) is at (1,1), outside the lesion -> miss.
    Image 2: normal, no lesion -> not evaluated (its hot map must not count).
    """
    breast = np.zeros((3, 4, 4), np.float32)
    breast[:, :, :3] = 1
    lesion = np.zeros((3, 4, 4), np.float32)
    lesion[0, 0, 0:2] = 1
    lesion[1, 3, 0] = 1
    maps = np.zeros((3, 4, 4), np.float32)
    maps[0] = [[9, 7, 1, 99], [2, 3, 0, 99], [0, 0, 0, 99], [0, 0, 0, 99]]
    maps[1] = [[0, 0, 0, 0], [0, 8, 0, 0], [0, 0, 0, 0], [5, 0, 0, 0]]
    maps[2] = 50
    return maps, lesion, breast


def test_hits_per_image_and_hit_rate() -> None:
    maps, lesion, breast = _case()
    per_image = hits(maps, lesion, breast)
    assert per_image[:2].tolist() == [1.0, 0.0]
    assert math.isnan(per_image[2])
    assert hit_rate(maps, lesion, breast) == pytest.approx(0.5)


def test_pixel_auroc_matches_hand_count() -> None:
    maps, lesion, breast = _case()
    # Lesion pixels (breast only, images 0-1): 9, 7, 5. Non-lesion breast pixels: image 0 -> 1, 2, 3 and
    # seven 0s; image 1 -> 8 and ten 0s (21 in all). Pairs won: 9 -> 21, 7 -> 20 and 5 -> 20 (both lose to 8).
    expected = (21 + 20 + 20) / (3 * 21)
    assert pixel_auroc(maps, lesion, breast) == pytest.approx(expected)


def test_channel_dim_tensors_and_uint8_masks_are_accepted() -> None:
    maps, lesion, breast = _case()
    as_tensors = (torch.from_numpy(maps)[:, None], torch.from_numpy(lesion * 255).to(torch.uint8)[:, None])
    assert pixel_auroc(*as_tensors, breast[:, None]) == pytest.approx(pixel_auroc(maps, lesion, breast))
    assert hit_rate(*as_tensors, breast[:, None]) == pytest.approx(0.5)


def test_lesion_outside_breast_is_ignored_and_no_lesion_gives_nan() -> None:
    maps, lesion, breast = _case()
    lesion_outside = np.zeros_like(lesion)
    lesion_outside[:, :, 3] = 1  # only in the background column
    assert math.isnan(pixel_auroc(maps, lesion_outside, breast))
    assert math.isnan(hit_rate(maps, lesion_outside, breast))
    assert np.isnan(hits(maps, lesion_outside, breast)).all()


def test_perfect_map_scores_one() -> None:
    _, lesion, breast = _case()
    assert pixel_auroc(lesion * 3.0, lesion, breast) == 1.0
    assert hit_rate(lesion * 3.0, lesion, breast) == 1.0


def test_shape_mismatch_raises_user_error() -> None:
    maps, lesion, breast = _case()
    with pytest.raises(UserError, match="differ in shape"):
        pixel_auroc(maps, lesion[:, :3], breast)
    with pytest.raises(UserError, match="shape"):
        hit_rate(maps[0], lesion, breast)
