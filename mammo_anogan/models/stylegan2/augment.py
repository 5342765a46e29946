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

# Upper bound for p: p = 1 would leak augmentations into G (ADA sec. 2.3); keep it strictly below 1.
P_MAX = 1.0 - 1e-6


def _eye(batch: int, device: torch.device) -> Tensor:
    return torch.eye(3, device=device).expand(batch, 3, 3).clone()


def translate2d(tx: Tensor, ty: Tensor) -> Tensor:
    m = _eye(tx.shape[0], tx.device)
    m[:, 0, 2] = tx
    m[:, 1, 2] = ty
    return m


def scale2d(sx: Tensor, sy: Tensor) -> Tensor:
    m = _eye(sx.shape[0], sx.device)
    m[:, 0, 0] = sx
    m[:, 1, 1] = sy
    return m


def rotate2d(theta: Tensor) -> Tensor:
    m = _eye(theta.shape[0], theta.device)
    cos, sin = torch.cos(theta), torch.sin(theta)
    m[:, 0, 0] = cos
    m[:, 0, 1] = -sin
    m[:, 1, 0] = sin
    m[:, 1, 1] = cos
    return m


class AugmentPipe(nn.Module):
    """Differentiable per-sample augmentation for 1- or 3-channel images in [-1, 1].

    Each multiplier (``xflip`` ... ``contrast``) scales the probability ``p`` of its op (0 disables it).
    Strengths follow ADA's defaults: integer translation up to 0.125 of the size, scale and aniso
    2^N(0, 0.2) (lognormal std 0.2*ln2), rotation U(-pi, pi) applied twice with probability
    1 - sqrt(1 - p) each, fractional translation N(0, 0.125) of the size, brightness N(0, 0.2),
    contrast 2^N(0, 0.5). p = 0 returns the input unchanged bit for bit, and no host sync is needed
    (p stays on the device), so the pipe can run every step of a GPU training loop.
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

    @torch.no_grad()
    def set_p(self, value: float) -> None:
        self.p.fill_(float(value))

    def _chosen(
        self, batch: int, multiplier: float, device: torch.device, prob: Tensor | None = None
    ) -> Tensor:
        """Per-sample boolean: apply this op? (probability p * multiplier, or ``prob`` if given)."""
        prob = self.p * multiplier if prob is None else prob
        return torch.rand(batch, device=device) < prob

    def _geometric_matrix(self, batch: int, height: int, width: int, device: torch.device) -> Tensor:
        """Inverse transform (output pixel -> input pixel, centred pixel units) per sample, [B, 3, 3]."""
        g = _eye(batch, device)
        zeros = torch.zeros(batch, device=device)

        if self.xflip > 0:
            flip = torch.randint(0, 2, (batch,), device=device).float()
            flip = torch.where(self._chosen(batch, self.xflip, device), flip, zeros)
            g = g @ scale2d(1 - 2 * flip, torch.ones_like(flip))
        if self.rotate90 > 0:
            quarter = torch.randint(0, 4, (batch,), device=device).float()
            quarter = torch.where(self._chosen(batch, self.rotate90, device), quarter, zeros)
            g = g @ rotate2d(-math.pi / 2 * quarter)
        if self.xint > 0:
            shift = (torch.rand(batch, 2, device=device) * 2 - 1) * self.xint_max
            shift = torch.where(self._chosen(batch, self.xint, device)[:, None], shift, 0.0)
            g = g @ translate2d(torch.round(shift[:, 0] * width), torch.round(shift[:, 1] * height))
        if self.scale > 0:
            s = torch.exp2(torch.randn(batch, device=device) * self.scale_std)
            s = torch.where(self._chosen(batch, self.scale, device), s, 1.0)
            g = g @ scale2d(s, s)
        # rotation is applied before and after anisotropic scaling; each with 1 - sqrt(1 - p) so that the
        # probability of "some rotation" is p (ADA appendix B.1)
        p_rot = 1 - torch.sqrt((1 - self.p * self.rotate).clamp(0, 1))
        if self.rotate > 0:
            theta = (torch.rand(batch, device=device) * 2 - 1) * math.pi * self.rotate_max
            theta = torch.where(self._chosen(batch, 1.0, device, prob=p_rot), theta, zeros)
            g = g @ rotate2d(-theta)
        if self.aniso > 0:
            s = torch.exp2(torch.randn(batch, device=device) * self.aniso_std)
            s = torch.where(self._chosen(batch, self.aniso, device), s, 1.0)
            g = g @ scale2d(s, 1 / s)
        if self.rotate > 0:
            theta = (torch.rand(batch, device=device) * 2 - 1) * math.pi * self.rotate_max
            theta = torch.where(self._chosen(batch, 1.0, device, prob=p_rot), theta, zeros)
            g = g @ rotate2d(-theta)
        if self.xfrac > 0:
            shift = torch.randn(batch, 2, device=device) * self.xfrac_std
            shift = torch.where(self._chosen(batch, self.xfrac, device)[:, None], shift, 0.0)
            g = g @ translate2d(shift[:, 0] * width, shift[:, 1] * height)
        return g

    def _warp(self, x: Tensor, g: Tensor) -> Tensor:
        """Resample ``x`` with the per-sample pixel-space matrices ``g`` (reflection padding)."""
        batch, _, height, width = x.shape
        # normalised coords n = S^-1 p with S = diag(W/2, H/2): theta = S^-1 g S
        to_pixels = torch.diag(torch.tensor([width / 2, height / 2, 1.0], device=x.device))
        to_norm = torch.diag(torch.tensor([2 / width, 2 / height, 1.0], device=x.device))
        theta = (to_norm @ g @ to_pixels)[:, :2, :]
        # sampling positions in fp32 even under autocast: bf16 coordinates would be off by whole pixels
        grid = F.affine_grid(theta.float(), [batch, x.shape[1], height, width], align_corners=False)
        warped = F.grid_sample(
            x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )
        warped = warped.to(x.dtype)
        identity = (g - torch.eye(3, device=x.device)).abs().amax(dim=(1, 2)) == 0
        return torch.where(identity[:, None, None, None], x, warped)  # untouched samples stay bit-exact

    def _color(self, x: Tensor) -> Tensor:
        batch, device = x.shape[0], x.device
        if self.brightness > 0:
            b = torch.randn(batch, device=device) * self.brightness_std
            b = torch.where(self._chosen(batch, self.brightness, device), b, 0.0)
            x = x + b.to(x.dtype)[:, None, None, None]
        if self.contrast > 0:
            c = torch.exp2(torch.randn(batch, device=device) * self.contrast_std)
            c = torch.where(self._chosen(batch, self.contrast, device), c, 1.0)
            x = x * c.to(x.dtype)[:, None, None, None]
        return x

    def forward(self, x: Tensor) -> Tensor:
        torch._assert(x.ndim == 4, "AugmentPipe expects [B, C, H, W]")
        batch, _, height, width = x.shape
        if any(
            m > 0
            for m in (self.xflip, self.rotate90, self.xint, self.scale, self.rotate, self.aniso, self.xfrac)
        ):
            x = self._warp(x, self._geometric_matrix(batch, height, width, x.device))
        return self._color(x)

    def extra_repr(self) -> str:
        ops = ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "brightness", "contrast")
        return ", ".join(f"{name}={getattr(self, name)}" for name in ops)


class AdaController:
    """Adjusts ``aug.p`` from the sign of D's outputs on reals (ADA sec. 3).

    ``accumulate(real_logits)`` after every D step adds sum(sign(D(real))) and the count to a device
    tensor (no host sync). Every ``interval``-th ``update(aug, batch_size)`` computes
    r_t = E[sign(D(real))] and moves p by sign(r_t - target) * batch_size * interval / (ada_kimg * 1000),
    so p can sweep 0 -> 1 in ``ada_kimg`` thousand images. ``batch_size`` is the *global* batch.

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
        self.r_t = float("nan")
        self.p = 0.0

    def accumulate(self, real_logits: Tensor) -> None:
        logits = real_logits.detach().float()
        stats = torch.stack([logits.sign().sum(), torch.tensor(float(logits.numel()), device=logits.device)])
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
            self.p = float(aug.p)  # start from the pipe's own p (e.g. a fixed initial value)
        self._calls += 1
        if self._calls % self.interval != 0 or self._stats is None:
            return False
        sign_sum, count = self._reduced_stats(all_reduce).tolist()
        self._stats = None
        if count <= 0:
            return False
        self.r_t = sign_sum / count
        adjust = math.copysign(1.0, self.r_t - self.target) if self.r_t != self.target else 0.0
        step = adjust * batch_size * self.interval / (self.ada_kimg * 1000)
        aug.p.copy_((aug.p + step).clamp(0.0, P_MAX))
        self.p = float(aug.p)
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
        self.r_t = float(state["r_t"])
        self.p = float(state["p"])
        stats = state.get("stats")
        self._stats = None if stats is None else torch.as_tensor(stats, dtype=torch.float32).clone()
