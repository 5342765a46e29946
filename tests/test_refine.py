"""Anomaly-preserving noise refinement (Lee et al. 2022): sharpen the normal part, keep the anomaly."""

from __future__ import annotations

import pytest
import torch

from mammo_anogan.anomaly.refine import RefineSettings, flag_anomalies, refine_noise
from mammo_anogan.models.stylegan2 import Generator
from mammo_anogan.utils.errors import ConfigError

RES = 16


def test_flags_follow_the_smoothed_residual_and_are_dilated() -> None:
    recon = torch.zeros(2, 1, RES, RES)
    targets = recon.clone()
    targets[0, 0, 6:9, 6:9] = 1.0  # a bright 3x3 anomaly
    targets[1] = 0.1  # diffuse small error everywhere
    flags = flag_anomalies(
        targets, recon, RefineSettings(flag_threshold=0.3, flag_dilate=1, smooth_sigma=0.5)
    )
    assert flags[0, 0, 7, 7] and flags[0, 0, 5, 7] and not flags[0, 0, 0, 0]
    assert not flags[1].any()
    darker = flag_anomalies(-targets, recon, RefineSettings(flag_threshold=0.3, map_polarity="positive"))
    assert not darker.any()  # positive polarity ignores places where the image is darker


def test_refinement_fits_normal_pixels_but_not_the_flagged_anomaly() -> None:
    torch.manual_seed(0)
    generator = Generator(
        z_dim=16, w_dim=16, img_resolution=RES, channel_base=128, channel_max=16, mapping_layers=1
    )
    with torch.no_grad():
        for name, param in generator.named_parameters():
            if name.endswith("noise.strength"):
                param.fill_(0.5)  # make the noise inputs matter, as in a trained generator
        w = generator.mapping(torch.randn(2, 16))
        recon = generator.synthesis(w, noise_mode="const", fused_modconv=False)
    targets = (recon + 0.15 * torch.randn_like(recon)).clamp(-1, 1)  # detail the latent stage missed
    targets[:, :, 5:9, 5:9] = 1.0  # and an anomaly
    settings = RefineSettings(
        enabled=True, steps=30, lr=0.05, flag_threshold=0.4, flag_dilate=1, smooth_sigma=0.5
    )
    refined, flags = refine_noise(generator, w, targets, recon, settings)
    assert refined.shape == targets.shape and flags.shape == (2, 1, RES, RES)
    anomaly = torch.zeros_like(flags)
    anomaly[:, :, 5:9, 5:9] = True
    assert bool(flags[anomaly.bool()].all())
    normal = ~flags
    before_normal = (recon - targets).abs()[normal].mean()
    after_normal = (refined - targets).abs()[normal].mean()
    assert after_normal < 0.5 * before_normal  # the normal part got sharper
    before_anomaly = (recon - targets).abs()[anomaly.bool()].mean()
    after_anomaly = (refined - targets).abs()[anomaly.bool()].mean()
    assert after_anomaly > 0.95 * before_anomaly  # the anomaly was not fitted away


def test_settings_are_checked() -> None:
    assert RefineSettings.from_config({"enabled": True, "steps": 5}).steps == 5
    with pytest.raises(ConfigError, match="unknown"):
        RefineSettings.from_config({"iterations": 5})
    with pytest.raises(ConfigError):
        RefineSettings(steps=0)
    with pytest.raises(ConfigError, match="map_polarity"):
        RefineSettings(map_polarity="negative")
