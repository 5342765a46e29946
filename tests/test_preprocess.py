"""Preprocessing geometry and intensities: fallback window, flip/pad/resize, point mapping, clips."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_fixtures import phantom

from mammo_anogan.data.preprocess import (
    PreprocessSettings,
    RawImage,
    RejectedInput,
    fallback_breast_window,
    laterality_from_signal,
    orient_pad_resize,
    prepare_image,
    stored_value_domain,
    transform_points,
)


def _raw(pixels: np.ndarray, laterality: str = "U", view: str = "CC") -> RawImage:
    return RawImage(
        pixels, stored_value_domain(pixels.dtype).astype(np.float64), laterality=laterality, view=view
    )


def test_fallback_window_uses_breast_percentiles() -> None:
    image = np.zeros((40, 40), np.float64)
    image[:, :20] = np.linspace(1000, 2000, 20 * 40).reshape(40, 20)
    mask = image > 0
    window = fallback_breast_window(image, mask, (0.0, 100.0))
    assert window.source == "fallback_breast_percentile"
    assert window.center == pytest.approx(1500.0) and window.width == pytest.approx(1000.0)


def test_orient_pad_resize_pads_right_and_flips() -> None:
    image = np.array([[1, 2], [3, 4], [5, 6], [7, 8]], np.uint8)  # 4 x 2 portrait
    out = orient_pad_resize(image, flip=True, resolution=4)
    expected = np.array([[2, 1, 0, 0], [4, 3, 0, 0], [6, 5, 0, 0], [8, 7, 0, 0]], np.uint8)
    np.testing.assert_array_equal(out, expected)
    landscape = orient_pad_resize(np.ones((2, 4), np.uint8), flip=False, resolution=4)
    assert landscape[:2].all() and not landscape[2:].any()  # landscape films pad below


@pytest.mark.parametrize(("height", "width", "resolution"), [(200, 100, 50), (413, 207, 40), (90, 150, 64)])
def test_transform_points_tracks_a_block_through_reduce_flip_pad_resize(
    height: int, width: int, resolution: int
) -> None:
    image = np.zeros((height, width), np.float32)
    image[40:60, 60:80] = 1.0  # block centred at x=69.5, y=49.5
    out = orient_pad_resize(image, flip=True, resolution=resolution)
    ys, xs = np.nonzero(out)
    x_out, y_out, scale = transform_points(
        np.array([69.5]), np.array([49.5]), (height, width), True, resolution
    )
    assert scale == pytest.approx(resolution / max(height, width), rel=0.02)
    assert out.sum() * scale**-2 == pytest.approx(400, rel=0.02)  # area preserved by area resizing
    assert x_out[0] == pytest.approx(np.average(xs, weights=out[ys, xs]), abs=0.02)
    assert y_out[0] == pytest.approx(np.average(ys, weights=out[ys, xs]), abs=0.02)


def test_laterality_from_signal() -> None:
    assert laterality_from_signal(phantom(right=True)) == "R"
    assert laterality_from_signal(phantom(right=False)) == "L"


def test_prepare_image_flips_unknown_right_breast_and_uses_fallback_window() -> None:
    settings = PreprocessSettings(resolution=32, window_percentiles=(0.5, 99.5))
    prepared = prepare_image(_raw(phantom(right=True)), settings)
    assert prepared.flipped and prepared.laterality == "U"
    assert prepared.image.shape == (32, 32) and prepared.image.dtype == np.uint8
    assert prepared.window.source == "fallback_breast_percentile"
    assert 1000 < prepared.window.center - prepared.window.width / 2 < 1100  # p0.5 of U(1000, 3000)
    left, right = prepared.image[:, :16].sum(), prepared.image[:, 16:].sum()
    assert left > 5 * right  # chest wall on the left
    # 96x64 film: breast area ~ pi/4 * 0.7*64 * 0.84*96 / 2 ... scaled by (32/96)^2
    expected_area = np.pi * (0.7 * 64) * (0.42 * 96) / 2 * (32 / 96) ** 2
    assert prepared.mask.sum() == pytest.approx(expected_area, rel=0.15)


def test_prepare_image_rejects_clips_and_keeps_clean_films() -> None:
    settings = PreprocessSettings(resolution=32, clip_min_area_px=4)
    film = phantom(height=192, width=128)
    assert prepare_image(_raw(film), settings).mask.any()
    film[80:85, 30:35] = 4095  # a 5x5 metal-bright clip inside the breast
    with pytest.raises(RejectedInput, match="surgical clip or marker detected"):
        prepare_image(_raw(film), settings)
    relaxed = PreprocessSettings(resolution=32, exclude_clips=False)
    assert prepare_image(_raw(film), relaxed).mask.any()


def test_uniform_image_is_rejected_with_empty_mask() -> None:
    with pytest.raises(RejectedInput, match="empty breast mask"):
        prepare_image(_raw(np.zeros((64, 64), np.uint16)), PreprocessSettings(resolution=32))


def test_lesion_circle_lands_at_transformed_position() -> None:
    settings = PreprocessSettings(resolution=48)
    film = phantom(height=96, width=64, right=True)
    circles = np.array([[50.0, 48.0, 6.0]])  # x, y, r in raw coordinates (top-left origin)
    prepared = prepare_image(_raw(film, laterality="R"), settings, lesion_circles=circles)
    x, y, r = prepared.lesions[0]
    assert (x, y, r) == pytest.approx(((63 - 50 + 0.5) * 0.5 - 0.5, (48 + 0.5) * 0.5 - 0.5, 3.0))
    assert prepared.lesion_mask[round(y), round(x)] and prepared.mask[round(y), round(x)]
    assert prepared.lesion_mask.sum() == pytest.approx(np.pi * 9, rel=0.35)


def _film_with_thin_border(side: int = 512, border_px: int = 2) -> np.ndarray:
    """An 8-bit left breast (half ellipse on the chest wall) plus a thin bright film border.

    The border runs along the top edge and down the right edge, so it touches the breast where
    the breast meets the top of the film, as the film frames on scanned mini-MIAS films do.
    """
    rows, cols = np.mgrid[0:side, 0:side]
    breast = ((cols / (0.45 * side)) ** 2 + ((rows - side / 2) / (0.55 * side)) ** 2) <= 1
    rng = np.random.default_rng(0)
    film = np.where(breast, rng.integers(100, 200, (side, side)), 0).astype(np.uint8)
    film[:border_px, :] = 255
    film[:, side - border_px :] = 255
    return film


def test_small_outputs_get_their_mask_at_mask_side_so_thin_borders_detach() -> None:
    raw = _raw(_film_with_thin_border(), laterality="L", view="MLO")
    prepared = prepare_image(
        raw, PreprocessSettings(exclude_clips=False, resolution=64)
    )  # mask_side 256 by default
    assert not prepared.mask[:, 56:].any()  # the right-edge border is not breast
    assert prepared.mask[32, :20].all()  # the chest-wall side is
    expected_area = np.pi * (0.45 * 64) * (0.55 * 64) / 2
    assert prepared.mask.sum() == pytest.approx(expected_area, rel=0.1)
    # The old behaviour (mask computed on the 64 px image itself) keeps the border attached.
    at_output = prepare_image(raw, PreprocessSettings(exclude_clips=False, resolution=64, mask_side=64))
    assert at_output.mask[:, 60:].sum() > 50
    # At or above mask_side the mask is computed on the output image itself.
    large = prepare_image(raw, PreprocessSettings(exclude_clips=False, resolution=256))
    assert np.array_equal(prepared.image, at_output.image)  # only the mask changes
    assert not large.mask[:, 250:].any()


def test_fixed_threshold_keeps_a_noisy_film_base_out_of_the_mask() -> None:
    """mini-MIAS: black padding, a film base of grey 5-20 noise, then the breast (data/mias.yaml)."""
    film = _film_with_thin_border(border_px=0)
    rng = np.random.default_rng(1)
    film_base = np.zeros(film.shape, bool)
    film_base[40:470, :400] = True
    film = np.where((film == 0) & film_base, rng.integers(5, 21, film.shape), film).astype(np.uint8)
    raw = _raw(film, laterality="L", view="MLO")
    triangle = prepare_image(
        raw, PreprocessSettings(exclude_clips=False, resolution=64, window_fallback="minmax")
    )
    fixed = prepare_image(
        raw,
        PreprocessSettings(exclude_clips=False, resolution=64, window_fallback="minmax", mask_threshold=25),
    )
    dark = fixed.image < 25
    assert (dark & triangle.mask).sum() > 0.1 * triangle.mask.sum()  # triangle takes the film base
    assert (dark & fixed.mask).sum() < 0.02 * fixed.mask.sum()  # 25 does not
    assert fixed.mask[32, :20].all()


def _placed(breast: np.ndarray, canvas: tuple[int, int], top: int, chest_gap: int, right: bool) -> np.ndarray:
    """``breast`` pasted into a black film at row ``top``, ``chest_gap`` px from the chest-wall edge."""
    film = np.zeros(canvas, dtype=breast.dtype)
    height, width = breast.shape
    left = canvas[1] - chest_gap - width if right else chest_gap
    film[top : top + height, left : left + width] = breast
    return film


@pytest.mark.parametrize("right", [False, True])
def test_crop_to_breast_removes_the_film_placement(right: bool) -> None:
    """Placement normalisation: the same breast anywhere on the film gives the same prepared image."""
    breast = phantom(height=96, width=48, right=right)
    ramp = 1000 + 15 * np.mgrid[0:96, 0:48][0]  # smooth tissue: the images compare pixel by pixel
    breast = np.where(breast > 0, ramp, 0).astype(np.uint16)
    settings = PreprocessSettings(resolution=128, crop_to_breast=True, crop_margin=0.0, mask_threshold=10)
    lesion = np.array([[20.0, 50.0, 4.0]])  # in the breast's own coordinates
    outputs = []
    for top, gap in ((0, 0), (40, 20), (70, 50)):
        film = _placed(breast, (200, 160), top, gap, right)
        x0 = 160 - gap - 48 if right else gap
        circles = lesion + np.array([[x0, top, 0.0]])
        prepared = prepare_image(_raw(film, laterality="R" if right else "L"), settings, circles)
        assert prepared.crop_box is not None
        box_top, box_bottom, box_left, box_right = prepared.crop_box
        # the box is the breast's (rows top+8..top+88 of the half-ellipse; chest wall at the breast's
        # edge), found on the full-resolution film (the darkest rows fall below the mask threshold)
        assert 0 <= box_top - (top + 8) <= 6 and abs(box_bottom - (top + 88)) <= 2
        assert abs(box_left - x0) <= 1 if not right else abs(box_right - (x0 + 48)) <= 1
        outputs.append(prepared)
    first = outputs[0]
    # the breast fills the canvas from the chest wall on, wherever it sat on the film
    assert first.mask[:, 0].sum() >= 80
    for other in outputs[1:]:
        assert (other.mask != first.mask).mean() < 0.01
        assert np.abs(other.image.astype(int) - first.image.astype(int)).mean() < 1.0
        assert other.lesions[0] == pytest.approx(first.lesions[0], abs=0.1)
    film = _placed(breast, (200, 160), 70, 50, right)
    uncropped = prepare_image(
        _raw(film, laterality="R" if right else "L"), PreprocessSettings(resolution=128, mask_threshold=10)
    )
    assert uncropped.mask.mean() < 0.6 * first.mask.mean()  # without the crop the breast is small


def test_crop_margin_is_checked() -> None:
    from omegaconf import OmegaConf

    from mammo_anogan.prepare import preprocess_settings
    from mammo_anogan.utils.errors import ConfigError

    cfg = OmegaConf.create({"resolution": 64, "preprocess": {"crop_to_breast": True, "crop_margin": 0.9}})
    with pytest.raises(ConfigError, match="crop_margin"):
        preprocess_settings(cfg)


@pytest.mark.parametrize("crop", [False, True])
def test_lesion_mask_of_another_shape_is_rejected_before_any_work(crop: bool) -> None:
    film = phantom(height=96, width=64)
    settings = PreprocessSettings(resolution=32, crop_to_breast=crop)
    with pytest.raises(
        RejectedInput, match=r"lesion mask shape \(96, 63\) differs from the image \(96, 64\)"
    ):
        prepare_image(_raw(film, laterality="L"), settings, lesion_mask_raw=np.zeros((96, 63), bool))
    same = np.zeros((96, 64), bool)
    same[40:50, 10:20] = True
    prepared = prepare_image(_raw(film, laterality="L"), settings, lesion_mask_raw=same)
    assert prepared.lesion_mask is not None and prepared.lesion_mask.any()
