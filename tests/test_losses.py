"""Loss, regulariser and EMA math against hand computations and independent autograd."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mammo_anogan.models.ema import ema_beta, update_ema
from mammo_anogan.models.losses import (
    PathLengthPenalty,
    auto_r1_gamma,
    d_logistic_loss,
    g_nonsaturating_loss,
    lazy_regularization_adam,
    r1_loss,
    r1_squared_grad_norm,
    resolve_r1_gamma,
)
from mammo_anogan.utils.errors import ConfigError


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_nonsaturating_losses_on_known_logits() -> None:
    real = torch.tensor([[2.0], [-1.0]])
    fake = torch.tensor([[0.0], [3.0]])
    expected_d = (_softplus(0.0) + _softplus(3.0)) / 2 + (_softplus(-2.0) + _softplus(1.0)) / 2
    expected_g = (_softplus(-0.0) + _softplus(-3.0)) / 2
    assert d_logistic_loss(real, fake).item() == pytest.approx(expected_d, rel=1e-6)
    assert g_nonsaturating_loss(fake).item() == pytest.approx(expected_g, rel=1e-6)
    # At logits 0 both players are at log(2) per term.
    zeros = torch.zeros(4, 1)
    assert d_logistic_loss(zeros, zeros).item() == pytest.approx(2 * math.log(2), rel=1e-6)


class _TinyD(nn.Module):
    """Nonlinear 1-channel critic: conv -> leaky relu -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.fc = nn.Linear(3 * 8 * 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.nn.functional.leaky_relu(self.conv(x), 0.2).flatten(1))


def test_r1_matches_independent_per_sample_gradients() -> None:
    torch.manual_seed(1)
    critic = _TinyD()
    images = torch.randn(3, 1, 8, 8, requires_grad=True)
    logits = critic(images)
    norms = r1_squared_grad_norm(images, logits)
    # Independent computation: one sample at a time, plain first-order autograd.
    expected = []
    for i in range(3):
        x = images[i : i + 1].detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(critic(x).sum(), x)
        expected.append(g.pow(2).sum())
    torch.testing.assert_close(norms, torch.stack(expected), rtol=1e-5, atol=1e-7)
    loss = r1_loss(images, critic(images), gamma=10.0, interval=16)
    assert loss.item() == pytest.approx(10.0 / 2 * torch.stack(expected).mean().item() * 16, rel=1e-5)
    # The graph is kept: the penalty back-propagates into D's weights.
    loss.backward()
    assert critic.conv.weight.grad is not None and critic.conv.weight.grad.abs().sum() > 0


def test_r1_gamma_resolution() -> None:
    assert resolve_r1_gamma("preset", 256, 64) == 1.0
    assert resolve_r1_gamma("preset", 512, 8) == 0.5
    assert resolve_r1_gamma("preset", 64, 32) == pytest.approx(0.0002 * 64**2 / 32)
    assert resolve_r1_gamma("auto", 512, 8) == pytest.approx(auto_r1_gamma(512, 8)) == pytest.approx(6.5536)
    assert resolve_r1_gamma(5, 512, 8) == 5.0
    assert resolve_r1_gamma("2.5", 512, 8) == 2.5
    with pytest.raises(ConfigError, match="r1_gamma"):
        resolve_r1_gamma("big", 512, 8)
    with pytest.raises(ConfigError, match="r1_gamma"):
        resolve_r1_gamma(-1.0, 512, 8)


def test_lazy_regularization_adam_corrections() -> None:
    lr, betas = lazy_regularization_adam(0.002, (0.0, 0.99), 16)
    assert lr == pytest.approx(0.002 * 16 / 17)
    assert betas == pytest.approx((0.0, 0.99 ** (16 / 17)))
    lr, betas = lazy_regularization_adam(0.0025, (0.5, 0.99), 4)
    assert lr == pytest.approx(0.002)
    assert betas == pytest.approx((0.5**0.8, 0.99**0.8))
    assert lazy_regularization_adam(0.001, (0.0, 0.99), 0) == (0.001, (0.0, 0.99))


def test_path_length_penalty_and_running_mean() -> None:
    torch.manual_seed(2)
    # A tiny "synthesis" image = tanh(ws.mean(1) @ A): J_w^T y has a closed form.
    w_dim, num_ws, side = 6, 3, 4
    matrix = torch.randn(w_dim, side * side)
    ws = torch.randn(5, num_ws, w_dim, requires_grad=True)
    images = torch.tanh(ws.mean(dim=1) @ matrix).view(5, 1, side, side)
    slope = (1 - images.detach().square()).flatten(1)

    reg = PathLengthPenalty(decay=0.01)
    torch.manual_seed(3)
    penalty = reg(images, ws)
    # Independent computation with the same noise draw.
    torch.manual_seed(3)
    y = torch.randn(5, 1, side, side) / math.sqrt(side * side)
    grad_mean_w = (y.flatten(1) * slope) @ matrix.T  # d(sum(img*y))/d(mean w)
    grad_per_ws = grad_mean_w[:, None, :].expand(5, num_ws, w_dim) / num_ws
    lengths = grad_per_ws.square().sum(2).mean(1).sqrt()
    expected_mean = 0.0 + 0.01 * (lengths.mean().item() - 0.0)
    assert reg.pl_mean.item() == pytest.approx(expected_mean, rel=1e-5)
    torch.testing.assert_close(penalty, (lengths - expected_mean).square(), rtol=1e-5, atol=1e-8)
    # The second update moves 1% of the way from the running mean to the new batch mean.
    torch.manual_seed(4)
    reg(images, ws)
    torch.manual_seed(4)
    y = torch.randn(5, 1, side, side) / math.sqrt(side * side)
    lengths2 = (((y.flatten(1) * slope) @ matrix.T)[:, None, :].expand(5, num_ws, w_dim) / num_ws).square()
    lengths2 = lengths2.sum(2).mean(1).sqrt()
    assert reg.pl_mean.item() == pytest.approx(
        expected_mean + 0.01 * (lengths2.mean().item() - expected_mean), rel=1e-5
    )
    # The penalty is differentiable w.r.t. the generator path (double backward).
    penalty.mean().backward()
    assert ws.grad is not None and torch.isfinite(ws.grad).all()
    assert "pl_mean" in reg.state_dict()


def test_ema_beta_half_life_and_rampup() -> None:
    # Without ramp-up: after ema_kimg*1000 images the old weights have half their weight.
    beta = ema_beta(batch_size=32, cur_nimg=10**9, ema_kimg=10, ema_rampup=None)
    assert beta == pytest.approx(0.5 ** (32 / 10_000))
    assert beta ** (10_000 / 32) == pytest.approx(0.5)
    # Ramp-up caps the half-life at cur_nimg * rampup (here 1000 * 0.05 = 50 images).
    assert ema_beta(32, 1000, 10, 0.05) == pytest.approx(0.5 ** (32 / 50))
    # Once cur_nimg * rampup exceeds ema_kimg * 1000 the ramp-up no longer matters.
    assert ema_beta(32, 10**7, 10, 0.05) == pytest.approx(0.5 ** (32 / 10_000))
    # The very first step copies G (beta 0).
    assert ema_beta(32, 0, 10, 0.05) == 0.0


def test_update_ema_lerps_parameters_and_copies_buffers() -> None:
    torch.manual_seed(5)
    model = nn.BatchNorm1d(3)
    ema = nn.BatchNorm1d(3)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        ema.weight.copy_(torch.tensor([3.0, 2.0, 1.0]))
        model.running_mean.copy_(torch.tensor([7.0, 8.0, 9.0]))
    update_ema(ema, model, beta=0.75)
    torch.testing.assert_close(ema.weight, torch.tensor([2.5, 2.0, 1.5]))
    torch.testing.assert_close(ema.running_mean, torch.tensor([7.0, 8.0, 9.0]))
    update_ema(ema, model, beta=0.0)
    torch.testing.assert_close(ema.weight, model.weight)
