"""ADA augmentation pipe and the adaptive p controller."""

from __future__ import annotations

import math

import pytest
import torch

from mammo_anogan.models.stylegan2 import AdaController, AugmentPipe

GEOMETRIC_OFF = {"xflip": 0, "rotate90": 0, "xint": 0, "scale": 0, "rotate": 0, "aniso": 0, "xfrac": 0}
COLOR_OFF = {"brightness": 0, "contrast": 0}


def only(**ops: float) -> AugmentPipe:
    """A pipe with only the named ops enabled, at p = 1."""
    return AugmentPipe(**{**GEOMETRIC_OFF, **COLOR_OFF, **ops}, p=1.0)


def test_p_zero_is_exact_identity() -> None:
    aug = AugmentPipe()
    assert aug.p.item() == 0.0
    x = torch.rand(8, 1, 32, 32) * 2 - 1
    assert torch.equal(aug(x), x)


def test_p_one_changes_images_and_keeps_gradients() -> None:
    aug = AugmentPipe(p=1.0)
    x = (torch.rand(6, 1, 32, 32) * 2 - 1).requires_grad_(True)
    y = aug(x)
    assert y.shape == x.shape
    assert all((y[i] - x[i]).abs().max() > 1e-3 for i in range(6))
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_partial_p_leaves_some_samples_untouched() -> None:
    aug = AugmentPipe(p=0.2)
    x = torch.rand(64, 1, 16, 16)
    y = aug(x)
    untouched = torch.tensor([torch.equal(y[i], x[i]) for i in range(64)])
    # P(no op out of 9, rotation counted twice at 1 - sqrt(0.8)) = 0.8^8 * 0.8 ~ 0.13
    assert 1 <= int(untouched.sum()) <= 25


def test_xflip_gives_image_or_mirror() -> None:
    x = torch.rand(32, 1, 12, 12)
    y = only(xflip=1)(x)
    flipped = torch.tensor([torch.allclose(y[i], x[i].flip(-1), atol=1e-5) for i in range(32)])
    same = torch.tensor([torch.allclose(y[i], x[i], atol=1e-5) for i in range(32)])
    assert bool((flipped | same).all())
    assert 6 <= int(flipped.sum()) <= 26


def test_rotate90_gives_quarter_turns() -> None:
    x = torch.rand(32, 1, 12, 12)
    y = only(rotate90=1)(x)
    turns = [
        [torch.allclose(y[i], torch.rot90(x[i], k, dims=(1, 2)), atol=1e-5) for k in range(4)]
        for i in range(32)
    ]
    assert all(any(t) for t in turns)
    assert len({row.index(True) for row in turns}) == 4


def test_integer_translation_moves_whole_pixels() -> None:
    x = torch.rand(16, 1, 32, 32)
    y = only(xint=1)(x)
    for i in range(16):
        shifts = [
            (dy, dx)
            for dy in range(-4, 5)
            for dx in range(-4, 5)
            if torch.allclose(y[i, :, 8:-8, 8:-8], x[i, :, 8 + dy : 24 + dy, 8 + dx : 24 + dx], atol=1e-5)
        ]
        assert len(shifts) == 1  # exactly one integer shift within 0.125 * 32 = 4 px


def test_geometric_ops_keep_range_with_reflection_padding() -> None:
    x = torch.rand(16, 1, 32, 32) * 2 - 1
    y = only(scale=1, rotate=1, aniso=1, xfrac=1)(x)
    assert y.min() >= -1 - 1e-5 and y.max() <= 1 + 1e-5  # bilinear + reflection: no zero fill
    assert (y - x).abs().mean() > 0.1


def test_brightness_and_contrast_strengths() -> None:
    torch.manual_seed(1)
    x = torch.rand(4000, 1, 2, 2) + 0.5
    offsets = (only(brightness=1)(x) - x).mean(dim=(1, 2, 3))
    assert offsets.std().item() == pytest.approx(0.2, rel=0.08)
    assert offsets.mean().item() == pytest.approx(0.0, abs=0.02)
    log_ratio = torch.log2(only(contrast=1)(x) / x).mean(dim=(1, 2, 3))
    assert log_ratio.std().item() == pytest.approx(0.5, rel=0.08)


def test_isotropic_scale_strength() -> None:
    torch.manual_seed(2)
    aug = only(scale=1)
    matrices = aug._geometric_matrix(4000, 32, 32, torch.device("cpu"))
    log_scale = torch.log2(matrices[:, 0, 0])
    torch.testing.assert_close(matrices[:, 0, 0], matrices[:, 1, 1])
    assert log_scale.std().item() == pytest.approx(0.2, rel=0.08)


def test_ada_controller_raises_p_when_overfitting() -> None:
    aug = AugmentPipe()
    ada = AdaController(target=0.6, interval=4, ada_kimg=500)
    step = 32 * 4 / (500 * 1000)
    for i in range(3):
        ada.accumulate(torch.tensor([[2.0], [1.0], [0.5], [-1.0]]))
        assert ada.update(aug, batch_size=32) is False, i
    ada.accumulate(torch.ones(4, 1))
    assert ada.update(aug, batch_size=32) is True
    # 16 logits: 3 * (3 - 1) + 4 = 10 positive minus negative -> r_t = 10 / 16
    assert ada.r_t == pytest.approx(10 / 16)
    assert aug.p.item() == pytest.approx(step)
    assert ada.p == pytest.approx(step)


def test_ada_controller_lowers_p_and_clamps_at_zero() -> None:
    aug = AugmentPipe(p=0.001)
    ada = AdaController(target=0.6, interval=1, ada_kimg=100)
    ada.accumulate(-torch.ones(8, 1))
    ada.update(aug, batch_size=64)
    assert ada.r_t == -1.0
    assert aug.p.item() == pytest.approx(0.001 - 64 / 100_000)
    for _ in range(3):
        ada.accumulate(torch.zeros(8, 1))
        ada.update(aug, batch_size=64)
    assert aug.p.item() == 0.0
    ada.accumulate(torch.ones(8, 1))
    ada.update(aug, batch_size=64)
    assert aug.p.item() == pytest.approx(64 / 100_000)


def test_ada_controller_clamps_below_one() -> None:
    aug = AugmentPipe(p=0.9999)
    ada = AdaController(interval=1, ada_kimg=1)
    ada.accumulate(torch.ones(4, 1))
    ada.update(aug, batch_size=64)
    assert 0.999 < aug.p.item() < 1.0


def test_ada_state_dict_round_trip() -> None:
    aug = AugmentPipe()
    ada = AdaController(target=0.5, interval=2, ada_kimg=10)
    ada.accumulate(torch.ones(4, 1))
    ada.update(aug, 16)
    ada.accumulate(torch.ones(4, 1))
    ada.update(aug, 16)
    ada.accumulate(-torch.ones(2, 1))
    restored = AdaController()
    restored.load_state_dict(ada.state_dict())
    assert restored.state_dict()["calls"] == 2
    assert restored.r_t == 1.0 and restored.p == pytest.approx(16 * 2 / 10_000)
    aug_copy = AugmentPipe()
    aug_copy.load_state_dict(aug.state_dict())
    restored.update(aug_copy, 16)
    assert restored.update(aug_copy, 16) is True
    assert restored.r_t == -1.0
    assert math.isclose(aug_copy.p.item(), 0.0, abs_tol=1e-7)


def test_ada_controller_all_reduces_stats_under_ddp(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under DDP the [sign sum, count] tensor is summed over ranks before r_t is computed."""
    other_rank = torch.tensor([-3.0, 3.0])  # another rank saw 3 negative logits

    def fake_all_reduce(tensor: torch.Tensor) -> None:
        tensor += other_rank

    monkeypatch.setattr(torch.distributed, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", fake_all_reduce)
    aug = AugmentPipe()
    ada = AdaController(interval=1)
    ada.accumulate(torch.ones(5, 1))
    ada.update(aug, batch_size=8)
    assert ada.r_t == pytest.approx((5 - 3) / 8)


def test_augment_under_bfloat16_autocast() -> None:
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = AugmentPipe(p=1.0)(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    assert torch.isfinite(y.float()).all()


def test_geometry_is_fp32_under_bfloat16_autocast() -> None:
    """Regression (issue 10): under autocast the matrices and the grid were computed in bf16 (up to 4 px
    off at 512 px). The same draws must give the same fp32 matrices and warp with or without autocast."""
    aug = AugmentPipe(p=1.0)
    x = torch.rand(8, 1, 64, 64) * 2 - 1
    torch.manual_seed(3)
    draws = aug._draw(8, x.device)
    reference = aug._geometric_matrix(8, 512, 512, x.device, draws)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = aug._geometric_matrix(8, 512, 512, x.device, draws)
        warped = aug._warp(x, aug._geometric_matrix(8, 64, 64, x.device, draws))
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, reference, rtol=0, atol=0)
    torch.testing.assert_close(warped, aug._warp(x, aug._geometric_matrix(8, 64, 64, x.device, draws)))


def test_ada_controller_update_needs_no_host_sync() -> None:
    """p and r_t stay device tensors inside update(); reading them is the caller's choice."""
    aug = AugmentPipe()
    ada = AdaController(interval=1, ada_kimg=1)
    ada.accumulate(torch.ones(4, 1))
    ada.update(aug, batch_size=8)
    assert isinstance(ada.r_t_tensor, torch.Tensor) and ada.r_t_tensor.item() == 1.0
    assert ada.p == pytest.approx(8 / 1000)
