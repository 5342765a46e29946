"""Batched multi-seed projection: schedule, randomness, recovery, batch independence, restarts."""

from __future__ import annotations

import math

import pytest
import torch

from mammo_anogan.anomaly.losses import MseLoss
from mammo_anogan.anomaly.projector import (
    ProjectionSettings,
    Projector,
    counter_normal,
    latent_noise_std,
    learning_rate,
    noise_regularization,
    normalize_noise_,
    w_statistics,
)
from mammo_anogan.utils.errors import ConfigError


@pytest.fixture(scope="module")
def generator() -> torch.nn.Module:
    from mammo_anogan.models.stylegan2.generator import Generator

    torch.manual_seed(0)
    return Generator(
        z_dim=32, w_dim=32, img_resolution=32, channel_base=256, channel_max=32, mapping_layers=2
    ).eval()


@pytest.fixture(scope="module")
def targets(generator: torch.nn.Module) -> torch.Tensor:
    """Two images the generator itself made from known latents."""
    with torch.no_grad():
        z = torch.randn(2, 32, generator=torch.Generator().manual_seed(42))
        return generator.synthesis(generator.mapping(z), noise_mode="const")


def _settings(**overrides: object) -> ProjectionSettings:
    values = {"num_seeds": 2, "steps": 40, "w_std_samples": 500, "base_seed": 3}
    values.update(overrides)
    return ProjectionSettings(**values)  # type: ignore[arg-type]


def test_schedule_matches_the_stylegan2_projector() -> None:
    assert learning_rate(0, 1000, 0.1) == 0.0
    assert learning_rate(25, 1000, 0.1) == pytest.approx(0.05)  # half-way up the 5% ramp
    assert learning_rate(500, 1000, 0.1) == pytest.approx(0.1)
    assert learning_rate(875, 1000, 0.1) == pytest.approx(0.05)  # cosine half-way down the last 25%
    assert learning_rate(999, 1000, 0.1) < 1e-4
    assert latent_noise_std(0, 1000, 2.0) == pytest.approx(0.1)
    assert latent_noise_std(375, 1000, 2.0) == pytest.approx(0.1 * 0.25)  # quadratic decay
    assert latent_noise_std(750, 1000, 2.0) == 0.0


def test_counter_normal_is_reproducible_per_key_and_standard() -> None:
    keys = torch.tensor([11, 12, 13], dtype=torch.int64)
    draws = counter_normal(keys, stream=5, shape=(64, 64))
    assert draws.shape == (3, 64, 64)
    alone = counter_normal(keys[1:2], stream=5, shape=(64, 64))
    assert torch.equal(alone[0], draws[1])  # a row does not depend on the other rows
    assert not torch.equal(draws[0], draws[1])
    assert not torch.equal(counter_normal(keys, stream=6, shape=(64, 64)), draws)
    assert abs(float(draws.mean())) < 0.02 and abs(float(draws.std()) - 1) < 0.02


def test_noise_regularization_penalises_correlated_noise_per_sample() -> None:
    white = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    smooth = torch.nn.functional.interpolate(white[:, :, :8, :8], size=32, mode="bilinear")
    noises = [torch.cat([white, smooth])]
    normalize_noise_(noises)
    assert torch.allclose(noises[0].mean(dim=(1, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(noises[0].std(dim=(1, 2, 3), unbiased=False), torch.ones(2), atol=1e-4)
    reg = noise_regularization(noises)
    assert reg.shape == (2,)
    assert float(reg[1]) > 100 * float(reg[0])


def test_w_statistics_are_cached(generator: torch.nn.Module) -> None:
    w_avg, w_std = w_statistics(generator, 500)
    assert w_avg.shape == (32,) and w_std > 0
    assert w_statistics(generator, 500)[0] is w_avg


def test_projection_recovers_a_generated_image(generator, targets) -> None:
    settings = _settings(steps=30)
    result = Projector(generator, MseLoss(), settings).project(targets)
    assert result.projections.shape == (2, 2, 1, 32, 32)
    assert result.latents.shape == (2, 2, 1, 32)
    with torch.no_grad():
        start = generator.synthesis(generator.mapping(torch.randn(4, 32)), noise_mode="const")
    initial = MseLoss()(start, targets.repeat(2, 1, 1, 1)).mean()
    assert result.valid.all() and torch.isfinite(result.losses).all()
    assert float(result.losses.min(dim=1).values.max()) < float(initial) / 10
    start_error = (start.clamp(-1, 1) - targets.repeat(2, 1, 1, 1).clamp(-1, 1)).abs().mean()
    reconstruction = (result.projections.clamp(-1, 1) - targets[:, None].clamp(-1, 1)).abs().mean()
    assert float(reconstruction) < float(start_error) / 2
    again = Projector(generator, MseLoss(), settings).project(targets)
    assert torch.equal(again.projections, result.projections)  # same image and seed, same result


def test_batched_projection_equals_separate_projection(generator, targets) -> None:
    settings = _settings(steps=8, space="w_plus")
    batched = Projector(generator, MseLoss(), settings).project(targets)
    assert batched.latents.shape == (2, 2, generator.num_ws, 32)
    for index in range(2):
        alone = Projector(generator, MseLoss(), settings).project(targets[index : index + 1])
        assert torch.allclose(alone.losses[0], batched.losses[index], rtol=1e-4, atol=1e-6)
        assert torch.allclose(alone.projections[0], batched.projections[index], atol=1e-4)
    assert not torch.allclose(batched.losses[0, 0], batched.losses[0, 1])  # seeds start apart


class NanOnce(torch.nn.Module):
    """MSE that returns NaN for the first sample on its first call only."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, synth: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = MseLoss()(synth, target)
        self.calls += 1
        if self.calls == 1:
            loss = torch.where(torch.arange(loss.shape[0]) == 0, torch.full_like(loss, math.nan), loss)
        return loss


class NanForMarkedImage(torch.nn.Module):
    """MSE that is always NaN for targets whose first pixel is exactly the marker."""

    MARKER = 0.123

    def forward(self, synth: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = MseLoss()(synth, target)
        marked = target[:, 0, 0, 0] == self.MARKER
        return torch.where(marked, torch.full_like(loss, math.nan), loss)


def test_non_finite_seed_restarts_once_then_is_dropped(generator, targets) -> None:
    settings = _settings(steps=4)
    restarted = Projector(generator, NanOnce(), settings).project(targets)
    assert restarted.restarted.tolist() == [[True, False], [False, False]]
    assert restarted.valid.all() and torch.isfinite(restarted.losses).all()
    assert "restarted seed 0" in restarted.notes[0] and restarted.notes[1] == ""
    reference = Projector(generator, MseLoss(), settings).project(targets)
    assert not torch.allclose(restarted.losses[0, 0], reference.losses[0, 0])  # a new start
    assert torch.allclose(restarted.losses[1], reference.losses[1])

    marked = targets.clone()
    marked[1, 0, 0, 0] = NanForMarkedImage.MARKER
    dropped = Projector(generator, NanForMarkedImage(), settings).project(marked)
    assert dropped.valid.tolist() == [[True, True], [False, False]]
    assert torch.isnan(dropped.losses[1]).all() and torch.isfinite(dropped.losses[0]).all()
    assert "dropped seed 0/1" in dropped.notes[1]


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="space"):
        ProjectionSettings(space="z")
    with pytest.raises(ConfigError):
        ProjectionSettings(steps=0)


def test_projection_steps_make_no_host_sync(generator, targets) -> None:
    """Per-step work has no sync point (a host-data tensor or .item() per step was one on a GPU)."""
    from mammo_anogan.utils.profiling import OpCounter
    from mammo_anogan.utils.torch_compat import supports_fused_adam

    if not supports_fused_adam("cpu"):
        pytest.skip("CPU fused Adam (torch >= 2.4) needed to model the GPU optimiser")

    w_statistics(generator, 500)
    few, many = _settings(steps=2), _settings(steps=6)
    with OpCounter() as short_run:
        Projector(generator, MseLoss(), few).project(targets)
    with OpCounter() as long_run:
        Projector(generator, MseLoss(), many).project(targets)
    assert long_run.sync_count == short_run.sync_count  # syncs do not grow with the number of steps
    assert long_run.kernels > short_run.kernels
