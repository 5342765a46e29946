"""Adaptive discriminator augmentation (Karras et al. 2020, "Training Generative Adversarial Networks
with Limited Data", ADA).

:class:`AugmentPipe` applies the same random, differentiable augmentations to reals and fakes before
D, each op independently per sample with probability ``p`` (times the op's multiplier). Because the
augmentations are non-leaking for p < ~0.8 (ADA sec. 2.3), G still learns the clean distribution.

:class:`AdaController` adapts ``p`` from the overfitting heuristic r_t = E[sign(D(x_real))] (ADA eq. 1 /
sec. 3): p goes up when D becomes too confident on reals (r_t > target 0.6) and down otherwise.

Geometric ops (x-flip, 90-degree rotation, integer translation, isotropic scaling, arbitrary rotation,
anisotropic scaling, fractional translation; the 'blit' + 'geom' groups of ADA) are composed into one
3x3 matrix per sample and applied with a single ``affine_grid``/``grid_sample`` pass (bilinear, reflection
padding). Colour ops for grayscale reduce to brightness (additive) and contrast (multiplicative).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mammo_anogan.models.ops import grid_sample_2x

# Upper bound for p: p = 1 would leak augmentations into G (ADA sec. 2.3); keep it strictly below 1.
P_MAX = 1.0 - 1e-6

#: Geometric ops in the order they are composed (ADA appendix B.1: the 'blit' then the 'geom' group);
#: ``rotate`` appears twice (before and after the anisotropic scaling).
GEOMETRIC_OPS = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "rotate", "xfrac")
COLOR_OPS = ("brightness", "contrast")


def _affine(a: Tensor, b: Tensor, c: Tensor, d: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """Per-sample 3x3 matrices ``[[a, b, tx], [c, d, ty], [0, 0, 1]]`` from ``[B]`` tensors (one stack)."""
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([a, b, tx, c, d, ty, zero, zero, one], dim=1).reshape(-1, 3, 3)


def translate2d(tx: Tensor, ty: Tensor) -> Tensor:
    one, zero = torch.ones_like(tx), torch.zeros_like(tx)
    return _affine(one, zero, zero, one, tx, ty)


def scale2d(sx: Tensor, sy: Tensor) -> Tensor:
    zero = torch.zeros_like(sx)
    return _affine(sx, zero, zero, sy, zero, zero)


def rotate2d(theta: Tensor) -> Tensor:
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero = torch.zeros_like(theta)
    return _affine(cos, -sin, sin, cos, zero, zero)


class AugmentPipe(nn.Module):
    """Differentiable per-sample augmentation for 1- or 3-channel images in [-1, 1].

    Each multiplier (``xflip`` ... ``contrast``) scales the probability ``p`` of its op (0 disables it).
    Strengths follow ADA's defaults: integer translation up to 0.125 of the size, scale and aniso
    2^N(0, 0.2) (lognormal std 0.2*ln2), rotation U(-pi, pi) applied twice with probability
    1 - sqrt(1 - p) each, fractional translation N(0, 0.125) of the size, brightness N(0, 0.2),
    contrast 2^N(0, 0.5). p = 0 returns the input unchanged bit for bit.

    GPU notes: ``p`` stays on the device and every random draw is made there in three batched calls
    (no host sync, a few dozen kernels per call); the geometry (matrices, sampling grid, bilinear
    resampling) runs in fp32 with autocast disabled, and the resampling is
    :func:`mammo_anogan.models.ops.grid_sample_2x`, which R1 can differentiate twice on any torch.
    """

    def __init__(
        self,
        xflip: float = 1.0,
        rotate90: float = 1.0,
        xint: float = 1.0,
        scale: float = 1.0,
        rotate: float = 1.0,
        aniso: float = 1.0,
        xfrac: float = 1.0,
        brightness: float = 1.0,
        contrast: float = 1.0,
        xint_max: float = 0.125,
        scale_std: float = 0.2,
        rotate_max: float = 1.0,
        aniso_std: float = 0.2,
        xfrac_std: float = 0.125,
        brightness_std: float = 0.2,
        contrast_std: float = 0.5,
        p: float = 0.0,
    ) -> None:
        super().__init__()
        self.xflip, self.rotate90, self.xint = float(xflip), float(rotate90), float(xint)
        self.scale, self.rotate, self.aniso, self.xfrac = (
            float(scale),
            float(rotate),
            float(aniso),
            float(xfrac),
        )
        self.brightness, self.contrast = float(brightness), float(contrast)
        self.xint_max, self.scale_std, self.rotate_max = float(xint_max), float(scale_std), float(rotate_max)
        self.aniso_std, self.xfrac_std = float(aniso_std), float(xfrac_std)
        self.brightness_std, self.contrast_std = float(brightness_std), float(contrast_std)
        self.register_buffer("p", torch.tensor(float(p)))
        multipliers = [getattr(self, name) for name in GEOMETRIC_OPS + COLOR_OPS]
        self.register_buffer("multipliers", torch.tensor(multipliers), persistent=False)
        rotation = [name == "rotate" for name in GEOMETRIC_OPS + COLOR_OPS]
        self.register_buffer("is_rotation", torch.tensor(rotation), persistent=False)
        self.register_buffer("eye", torch.eye(3), persistent=False)
        self._to_normalised: dict[tuple[int, int], Tensor] = {}

    @property
    def geometric_enabled(self) -> bool:
        return any(getattr(self, name) > 0 for name in GEOMETRIC_OPS)

    @torch.no_grad()
    def set_p(self, value: float) -> None:
        self.p.fill_(float(value))

    def _op_probabilities(self) -> Tensor:
        """Probability of each op in GEOMETRIC_OPS + COLOR_OPS, [10] fp32 (device-side, no sync).

        A rotation is applied twice, each with 1 - sqrt(1 - p * rotate), so that the probability of
        "some rotation" is p * rotate (ADA appendix B.1).
        """
        q = (self.p.float() * self.multipliers).clamp(0.0, 1.0)
        q_rotation = 1.0 - torch.sqrt(1.0 - q)
        return torch.where(self.is_rotation, q_rotation, q)

    def _draw(self, batch: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """``chosen [B, 10]`` (op applied?), uniforms ``[B, 6]``, normals ``[B, 6]``: three RNG calls."""
        chosen = torch.rand(batch, len(GEOMETRIC_OPS) + len(COLOR_OPS), device=device)
        chosen = chosen < self._op_probabilities().to(device)
        return chosen, torch.rand(batch, 6, device=device), torch.randn(batch, 6, device=device)

    def _geometric_matrix(
        self,
        batch: int,
        height: int,
        width: int,
        device: torch.device,
        draws: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Inverse transform (output pixel -> input pixel, centred pixel units) per sample, [B, 3, 3] fp32."""
        with torch.autocast(device_type=device.type, enabled=False):
            chosen, u, n = self._draw(batch, device) if draws is None else draws
            c = chosen.float()
            flip = c[:, 0] * (u[:, 0] < 0.5).float()
            quarter = c[:, 1] * torch.floor(u[:, 1] * 4).clamp(max=3)
            shift_x = c[:, 2] * (u[:, 2] * 2 - 1) * self.xint_max
            shift_y = c[:, 2] * (u[:, 3] * 2 - 1) * self.xint_max
            iso = torch.exp2(c[:, 3] * n[:, 0] * self.scale_std)
            theta1 = c[:, 4] * (u[:, 4] * 2 - 1) * math.pi * self.rotate_max
            aniso = torch.exp2(c[:, 5] * n[:, 1] * self.aniso_std)
            theta2 = c[:, 6] * (u[:, 5] * 2 - 1) * math.pi * self.rotate_max
            frac_x = c[:, 7] * n[:, 2] * self.xfrac_std * width
            frac_y = c[:, 7] * n[:, 3] * self.xfrac_std * height
            g = scale2d(1 - 2 * flip, torch.ones_like(flip))
            g = g @ rotate2d(-math.pi / 2 * quarter)
            g = g @ translate2d(torch.round(shift_x * width), torch.round(shift_y * height))
            g = g @ scale2d(iso, iso)
            g = g @ rotate2d(-theta1)
            g = g @ scale2d(aniso, 1 / aniso)
            g = g @ rotate2d(-theta2)
            g = g @ translate2d(frac_x, frac_y)
        return g

    def _normalising_factor(self, height: int, width: int, device: torch.device) -> Tensor:
        """``[2, 3]`` factor f with ``theta = g[:, :2] * f`` = S^-1 g S, S = diag(W/2, H/2, 1) (cached)."""
        key = (height, width)
        factor = self._to_normalised.get(key)
        if factor is None or factor.device != device:
            values = [[1.0, height / width, 2.0 / width], [width / height, 1.0, 2.0 / height]]
            factor = torch.tensor(values, dtype=torch.float32).to(device)
            self._to_normalised[key] = factor
        return factor

    def _warp(self, x: Tensor, g: Tensor) -> Tensor:
        """Resample ``x`` with the per-sample pixel-space matrices ``g`` (bilinear, reflection padding)."""
        batch, channels, height, width = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            g = g.float()
            theta = g[:, :2, :] * self._normalising_factor(height, width, x.device)
            grid = F.affine_grid(theta, [batch, channels, height, width], align_corners=False)
            warped = grid_sample_2x(x, grid, padding_mode="reflection", align_corners=False).to(x.dtype)
            identity = (g != self.eye).flatten(1).any(dim=1).logical_not()
        return torch.where(identity[:, None, None, None], x, warped)  # untouched samples stay bit-exact

    def _color(self, x: Tensor, chosen: Tensor, n: Tensor) -> Tensor:
        offset = len(GEOMETRIC_OPS)
        if self.brightness > 0:
            b = torch.where(chosen[:, offset], n[:, 4] * self.brightness_std, 0.0)
            x = x + b.to(x.dtype)[:, None, None, None]
        if self.contrast > 0:
            c = torch.where(chosen[:, offset + 1], torch.exp2(n[:, 5] * self.contrast_std), 1.0)
            x = x * c.to(x.dtype)[:, None, None, None]
        return x

    def forward(self, x: Tensor) -> Tensor:
        torch._assert(x.ndim == 4, "AugmentPipe expects [B, C, H, W]")
        batch, _, height, width = x.shape
        with torch.autocast(device_type=x.device.type, enabled=False):
            draws = self._draw(batch, x.device)
        if self.geometric_enabled:
            x = self._warp(x, self._geometric_matrix(batch, height, width, x.device, draws))
        return self._color(x, draws[0], draws[2])

    def extra_repr(self) -> str:
        ops = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "brightness", "contrast")
        return ", ".join(f"{name}={getattr(self, name)}" for name in ops)


class AdaController:
    """Adjusts ``aug.p`` from the sign of D's outputs on reals (ADA sec. 3), entirely on the device.

    ``accumulate(real_logits)`` after every D step adds sum(sign(D(real))) and the count to a device
    tensor. Every ``interval``-th ``update(aug, batch_size)`` computes r_t = E[sign(D(real))] and moves
    p by sign(r_t - target) * batch_size * interval / (ada_kimg * 1000), so p can sweep 0 -> 1 in
    ``ada_kimg`` thousand images. ``batch_size`` is the *global* batch. Neither call synchronises
    with the host: ``r_t`` and ``p`` are read lazily (properties) by loggers and checkpoints only.

    DDP: the [sum, count] tensor is all-reduced (summed over ranks) inside ``update`` when
    ``torch.distributed`` is initialised, so every rank computes the same r_t and p; pass
    ``all_reduce=False`` to ``update`` to skip it.
    """

    def __init__(self, target: float = 0.6, interval: int = 4, ada_kimg: float = 500.0) -> None:
        if interval < 1 or ada_kimg <= 0:
            raise ValueError("AdaController needs interval >= 1 and ada_kimg > 0")
        self.target = float(target)
        self.interval = int(interval)
        self.ada_kimg = float(ada_kimg)
        self._stats: Tensor | None = None  # [sum of signs, count]
        self._calls = 0
        self._r_t: Tensor | float = float("nan")
        self._p: Tensor | float = 0.0

    @property
    def r_t(self) -> float:
        """The last overfitting heuristic E[sign(D(real))] (NaN before the first adjustment); syncs."""
        return float(self._r_t)

    @property
    def r_t_tensor(self) -> Tensor | None:
        """``r_t`` as a device tensor (for logging without a host sync), None before the first update."""
        return self._r_t if isinstance(self._r_t, Tensor) else None

    @property
    def p(self) -> float:
        """The augmentation probability after the last update (reads the device; syncs)."""
        return float(self._p)

    def accumulate(self, real_logits: Tensor, weight: Tensor | float = 1.0) -> None:
        """Add sum(sign(logits)) and the count; ``weight`` (a 0-d device tensor) 0 leaves them out."""
        logits = real_logits.detach().float()
        sign_sum = logits.sign().sum()
        stats = torch.stack([sign_sum, torch.full_like(sign_sum, float(logits.numel()))]) * weight
        self._stats = stats if self._stats is None else self._stats.to(stats.device) + stats

    def _reduced_stats(self, all_reduce: bool) -> Tensor:
        assert self._stats is not None
        stats = self._stats.clone()
        if all_reduce and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
        return stats

    @torch.no_grad()
    def update(self, aug: AugmentPipe, batch_size: int, all_reduce: bool = True) -> bool:
        """Count one training step; every ``interval`` steps adjust ``aug.p``. Returns True if it adjusted."""
        if self._calls == 0:
            self._p = aug.p.detach().clone()  # start from the pipe's own p (e.g. a fixed initial value)
        self._calls += 1
        if self._calls % self.interval != 0 or self._stats is None:
            return False
        stats = self._reduced_stats(all_reduce)
        self._stats = None
        sign_sum, count = stats[0], stats[1]
        r_t = sign_sum / count.clamp(min=1.0)
        step_size = batch_size * self.interval / (self.ada_kimg * 1000)
        step = torch.sign(r_t - self.target) * step_size * (count > 0).to(r_t.dtype)
        aug.p.copy_((aug.p + step.to(aug.p.dtype)).clamp(0.0, P_MAX))
        self._r_t = torch.where(count > 0, r_t, torch.full_like(r_t, float("nan")))
        self._p = aug.p.detach().clone()
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "interval": self.interval,
            "ada_kimg": self.ada_kimg,
            "calls": self._calls,
            "r_t": self.r_t,
            "p": self.p,
            "stats": None if self._stats is None else self._stats.detach().cpu().clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.target = float(state["target"])
        self.interval = int(state["interval"])
        self.ada_kimg = float(state["ada_kimg"])
        self._calls = int(state["calls"])
        self._r_t = float(state["r_t"])
        self._p = float(state["p"])
        stats = state.get("stats")
        self._stats = None if stats is None else torch.as_tensor(stats, dtype=torch.float32).clone()
