"""StyleGAN2 losses and regularisers, written from the papers (Karras et al. 2019/2020).

The adversarial game is the non-saturating logistic loss. Two regularisers keep it stable and the
generator smooth, both computed *lazily* (every ``k`` steps, multiplied by ``k``) because they are
expensive double-backward passes:

- R1 (Mescheder et al. 2018): ``gamma / 2 * E ||grad_x D(x_real)||^2`` keeps the discriminator flat on
  the data manifold.
- Path-length regularisation: for ``y ~ N(0, I) / sqrt(H * W)``, ``J_w^T y`` should have a constant
  length ``a`` (a running mean), so a fixed step in W gives a fixed-size change in the image; this is
  what makes latent projection (the anomaly score) well behaved.

Both gradient computations run in fp32 with autocast disabled: squared gradient norms overflow or lose
all precision in fp16/bf16.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mammo_anogan.utils.errors import ConfigError

#: R1 gamma of the official ADA configurations, by resolution (other resolutions use the "auto" rule).
R1_GAMMA_PRESETS: dict[int, float] = {32: 0.01, 256: 1.0, 512: 0.5, 1024: 2.0}


def d_logistic_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator loss ``softplus(D(fake)) + softplus(-D(real))``, each averaged over its batch."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def g_nonsaturating_loss(fake_logits: Tensor) -> Tensor:
    """Generator loss ``softplus(-D(G(z)))``: the non-saturating form, strong gradients early on."""
    return F.softplus(-fake_logits).mean()


def r1_squared_grad_norm(real_images: Tensor, real_logits: Tensor) -> Tensor:
    """Per-sample ``||grad_x D(x)||^2`` ([B]); the graph is kept so the penalty can be back-propagated.

    ``real_images`` must have ``requires_grad=True`` and be the tensor ``real_logits`` was computed from
    (before any augmentation, as in StyleGAN2-ADA, so the penalty is on the data distribution).
    """
    (grads,) = torch.autograd.grad(real_logits.float().sum(), real_images, create_graph=True)
    return grads.float().square().flatten(1).sum(dim=1)


def r1_loss(real_images: Tensor, real_logits: Tensor, gamma: float, interval: int = 1) -> Tensor:
    """Lazy R1 loss: ``gamma / 2 * mean ||grad||^2 * interval`` (the interval compensates laziness)."""
    return r1_squared_grad_norm(real_images, real_logits).mean() * (gamma / 2.0) * interval


def auto_r1_gamma(resolution: int, global_batch_size: int) -> float:
    """The ADA "auto" heuristic ``0.0002 * res^2 / batch``: gamma grows with the pixel count."""
    return 0.0002 * resolution**2 / max(1, global_batch_size)


def resolve_r1_gamma(value: float | str, resolution: int, global_batch_size: int) -> float:
    """Turn the config value (a number, ``"preset"`` or ``"auto"``) into a float gamma.

    ``"preset"`` takes the official ADA value for 32/256/512/1024 px and falls back to ``"auto"``.
    """
    if isinstance(value, str):
        key = value.strip().lower()
        if key == "preset":
            return R1_GAMMA_PRESETS.get(int(resolution), auto_r1_gamma(resolution, global_batch_size))
        if key == "auto":
            return auto_r1_gamma(resolution, global_batch_size)
        try:
            value = float(key)
        except ValueError:
            raise ConfigError(f"model.r1_gamma={value!r}: use a number >= 0, 'preset' or 'auto'") from None
    gamma = float(value)
    if gamma < 0 or not math.isfinite(gamma):
        raise ConfigError(f"model.r1_gamma={value!r}: must be a finite number >= 0")
    return gamma


def lazy_regularization_adam(
    lr: float, betas: Sequence[float], interval: int
) -> tuple[float, tuple[float, float]]:
    """Adam hyper-parameters for a network regularised every ``interval`` steps.

    A lazily regularised network takes ``interval + 1`` optimiser steps per ``interval`` minibatches,
    so StyleGAN2 scales ``lr`` by ``r = k / (k + 1)`` and raises the betas to ``r`` to keep the
    effective learning rate and momentum horizon per minibatch unchanged.
    """
    if interval is None or interval <= 0:
        return float(lr), (float(betas[0]), float(betas[1]))
    ratio = interval / (interval + 1)
    return float(lr) * ratio, (float(betas[0]) ** ratio, float(betas[1]) ** ratio)


def _all_reduce_mean(value: Tensor) -> Tensor:
    """Mean over ranks (identity when not distributed), so every rank keeps the same running mean."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size()
        if world > 1:
            value = value.clone()
            torch.distributed.all_reduce(value)
            value = value / world
    return value


class PathLengthPenalty(nn.Module):
    """Path-length regulariser with its running mean ``a`` stored as a buffer (saved in checkpoints).

    ``forward(images, ws)`` returns the per-sample penalty ``(|J_w^T y| - a)^2`` after updating ``a``
    with an exponential moving average (``decay``) of the batch mean of the lengths, all-reduced over
    ranks under DDP. The penalty uses the updated, detached mean, as in the StyleGAN2 paper's code.
    """

    pl_mean: Tensor

    def __init__(self, decay: float = 0.01) -> None:
        super().__init__()
        self.decay = float(decay)
        self.register_buffer("pl_mean", torch.zeros([]))

    @staticmethod
    def path_lengths(images: Tensor, ws: Tensor) -> Tensor:
        """``|J_w^T y|`` per sample ([B]), ``y ~ N(0, I) / sqrt(H * W)``; ``ws`` is ``[B, num_ws, w_dim]``."""
        height, width = images.shape[-2:]
        noise = torch.randn_like(images, dtype=torch.float32) / math.sqrt(height * width)
        (grads,) = torch.autograd.grad((images.float() * noise).sum(), ws, create_graph=True)
        return grads.float().square().sum(dim=2).mean(dim=1).sqrt()

    def forward(self, images: Tensor, ws: Tensor) -> Tensor:
        lengths = self.path_lengths(images, ws)
        batch_mean = _all_reduce_mean(lengths.detach().mean())
        with torch.no_grad():
            self.pl_mean.copy_(self.pl_mean.lerp(batch_mean.to(self.pl_mean.dtype), self.decay))
        return (lengths - self.pl_mean.detach()).square()
