"""Projection losses: per-sample values, batch independence, and the offline LPIPS error."""

from __future__ import annotations

import urllib.error

import pytest
import torch

from mammo_anogan.anomaly.losses import (
    CombinedLoss,
    MseLoss,
    MsSsimLoss,
    PixelLoss,
    build_projection_loss,
)
from mammo_anogan.utils.errors import ConfigError, UserError


def _images(count: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, 1, size, size, generator=generator) * 2 - 1


@pytest.mark.parametrize("size", [32, 64])
def test_mse_and_ms_ssim_are_per_sample_and_zero_on_identity(size: int) -> None:
    a, b = _images(3, size, 0), _images(3, size, 1)
    expected_mse = ((a - b) ** 2).flatten(1).mean(1)
    assert torch.allclose(MseLoss()(a, b), expected_mse)
    ms_ssim = MsSsimLoss()
    values = ms_ssim(a, b)
    assert values.shape == (3,)
    assert torch.all(values > 0.2)  # independent noise images are far apart
    assert torch.allclose(ms_ssim(a, a), torch.zeros(3), atol=1e-5)
    # per sample: one image alone gives the value it has inside a batch
    assert torch.allclose(ms_ssim(a[1:2], b[1:2]), values[1:2], atol=1e-6)


def test_pixel_term_is_added_with_its_weight() -> None:
    a, b = _images(2, seed=2), _images(2, seed=3)
    combined = build_projection_loss("mse", pixel_weight=0.5, pixel_norm="l1")
    assert isinstance(combined, CombinedLoss)
    l1 = (a - b).abs().flatten(1).mean(1)
    assert torch.allclose(combined(a, b), MseLoss()(a, b) + 0.5 * l1)
    assert torch.allclose(PixelLoss("l2")(a, b), MseLoss()(a, b))
    with pytest.raises(ConfigError):
        PixelLoss("l3")


def test_lpips_with_injected_random_network() -> None:
    lpips = pytest.importorskip("lpips")
    net = lpips.LPIPS(
        pretrained=False, pnet_rand=True, net="alex", verbose=False
    )  # smaller than vgg: fast random init
    loss = build_projection_loss("lpips_alex", lpips_net=net)
    a, b = _images(2, seed=4), _images(2, seed=5)
    values = loss(a, b)
    assert values.shape == (2,)
    assert torch.all(values > 0)
    assert torch.allclose(loss(a, a), torch.zeros(2), atol=1e-6)
    assert torch.allclose(loss(a[:1], b[:1]), values[:1], atol=1e-5)


def test_lpips_offline_without_weights_names_the_file(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match="vgg16-397923af.pth") as info:
        build_projection_loss("lpips_vgg")
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="alexnet-owt-7be5be79.pth"):
        build_projection_loss("lpips_alex")
    with pytest.raises(UserError, match="not found"):
        build_projection_loss("lpips_vgg", lpips_weights=str(tmp_path / "missing.pth"))


def test_disc_features_loss_is_batch_independent() -> None:
    from mammo_anogan.models.stylegan2.discriminator import Discriminator

    torch.manual_seed(0)
    disc = Discriminator(img_resolution=32, img_channels=1, channel_base=256, channel_max=32)
    loss = build_projection_loss("disc_features", discriminator=disc)
    a, b = _images(4, seed=6), _images(4, seed=7)
    values = loss(a, b)
    assert values.shape == (4,) and torch.all(values > 0)
    assert torch.allclose(loss(a[2:3], b[2:3]), values[2:3], rtol=1e-4, atol=1e-7)
    assert torch.allclose(loss(a, a), torch.zeros(4), atol=1e-7)
    with pytest.raises(UserError, match="discriminator"):
        build_projection_loss("disc_features")


def test_unknown_loss_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="projection.loss"):
        build_projection_loss("l7")


def test_precomputed_target_features_equal_the_plain_loss() -> None:
    """loss_against(): target features computed once (LPIPS, D features, combined) == loss(synth, target)."""
    from mammo_anogan.anomaly.losses import loss_against
    from mammo_anogan.models.stylegan2.discriminator import Discriminator
    from mammo_anogan.utils.profiling import OpCounter

    lpips = pytest.importorskip("lpips")
    torch.manual_seed(0)
    net = lpips.LPIPS(pretrained=False, pnet_rand=True, net="alex", verbose=False)
    disc = Discriminator(img_resolution=32, img_channels=1, channel_base=256, channel_max=32)
    a, b = _images(3, seed=8), _images(3, seed=9)
    for loss in (
        build_projection_loss("lpips_alex", lpips_net=net),
        build_projection_loss("disc_features", discriminator=disc, pixel_weight=0.5),
        build_projection_loss("mse"),
    ):
        against_b = loss_against(loss, b)
        torch.testing.assert_close(against_b(a), loss(a, b), rtol=1e-5, atol=1e-7)
    # the prepared loss runs only the synth side: fewer operators than the plain two-sided call
    loss = build_projection_loss("disc_features", discriminator=disc)
    against_b = loss_against(loss, b)
    with OpCounter() as plain:
        loss(a, b)
    with OpCounter() as prepared:
        against_b(a)
    assert prepared.kernels < 0.7 * plain.kernels
