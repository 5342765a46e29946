"""Anomaly-preserving refinement of the noise maps (Lee et al., Nat. Commun. 2022).

After the latent stage (encoder code, optionally a short latent optimisation) the reconstruction
still misses fine detail, so the residual of a *normal* image is not zero and small lesions drown in
it. Optimising the generator's per-layer noise maps recovers that detail, but it would also
reproduce the lesion. Lee et al. therefore refine the noise maps with an L1 loss against a target in
which the pixels the latent stage already flagged as anomalous are *replaced by the latent-stage
reconstruction*: at those pixels the target agrees with the reconstruction, the loss has nothing to
fit, and the anomaly survives the refinement while everything else gets sharper.

Here (``projection.refine``):

1. flagged = (``map_polarity`` residual ``image - latent reconstruction`` smoothed with a Gaussian of
   ``smooth_sigma`` px) ``> flag_threshold``, dilated by ``flag_dilate`` px;
2. target = ``where(flagged, latent reconstruction, image)``;
3. ``steps`` Adam steps on the noise maps (``w`` fixed, starting from the generator's stored noise
   maps) minimising the per-sample mean ``|G(w, noise) - target|`` plus the projector's noise
   auto-correlation penalty (``noise_reg_weight``), noise renormalised after each step.

Shapes: ``w [M, 1 or num_ws, w_dim]``, images ``[M, C, H, W]`` in ``[-1, 1]``; every sample is
independent (loss summed over samples), so batching changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mammo_anogan.anomaly.map_scores import MAP_POLARITIES, gaussian_smooth, polarised
from mammo_anogan.anomaly.projector import noise_regularization, normalize_noise_
from mammo_anogan.utils.errors import ConfigError


@dataclass(frozen=True)
class RefineSettings:
    """``projection.refine.*`` (conf/projection/default.yaml)."""

    enabled: bool = False
    steps: int = 50
    lr: float = 0.05
    flag_threshold: float = 0.3  # map units ([0, 2]) of the smoothed latent-stage residual
    flag_dilate: int = 1  # px
    smooth_sigma: float = 1.0  # px
    map_polarity: str = "abs"
    noise_reg_weight: float = 0.0  # the projector's auto-correlation penalty (1e5 there) would forbid detail

    def __post_init__(self) -> None:
        if self.steps < 1 or self.lr <= 0:
            raise ConfigError("projection.refine.steps must be >= 1 and projection.refine.lr > 0")
        if self.flag_threshold < 0 or self.flag_dilate < 0 or self.smooth_sigma < 0:
            raise ConfigError("projection.refine.flag_threshold, flag_dilate and smooth_sigma must be >= 0")
        if self.map_polarity not in MAP_POLARITIES:
            raise ConfigError(f"projection.refine.map_polarity must be one of {', '.join(MAP_POLARITIES)}")

    @classmethod
    def from_config(cls, block: Any) -> RefineSettings:
        values = dict(block or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"projection.refine has unknown key(s) {', '.join(unknown)}")
        return cls(**values)


def flag_anomalies(targets: torch.Tensor, recon: torch.Tensor, settings: RefineSettings) -> torch.Tensor:
    """Boolean ``[M, 1, H, W]``: pixels the latent stage already calls anomalous (see module doc)."""
    residual = polarised(targets.float() - recon.float(), settings.map_polarity).mean(dim=1, keepdim=True)
    flagged = (gaussian_smooth(residual, settings.smooth_sigma) > settings.flag_threshold).float()
    if settings.flag_dilate > 0:
        size = 2 * settings.flag_dilate + 1
        flagged = F.max_pool2d(flagged, kernel_size=size, stride=1, padding=settings.flag_dilate)
    return flagged > 0.5


def refine_noise(
    generator: nn.Module,
    w: torch.Tensor,
    targets: torch.Tensor,
    recon: torch.Tensor,
    settings: RefineSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine the noise maps of ``M`` samples; returns ``(refined images [M,C,H,W], flagged [M,1,H,W])``.

    ``w`` is ``[M, 1, w_dim]`` (W space, broadcast to every layer) or ``[M, num_ws, w_dim]``;
    ``recon`` is the latent-stage reconstruction the flags and the replaced target come from.
    """
    device = targets.device
    num_samples = targets.shape[0]
    ws = w.detach().to(device, torch.float32)
    if ws.shape[1] == 1:
        ws = ws.expand(-1, generator.num_ws, -1)
    with torch.no_grad():
        flagged = flag_anomalies(targets, recon, settings)
        target = torch.where(flagged, recon.float(), targets.float())  # flagged: nothing to fit
    noises = [
        const.to(device).expand(num_samples, -1, -1, -1).clone().requires_grad_(True)
        for const in generator.synthesis.const_noise()
    ]
    optimizer = torch.optim.Adam(noises, lr=settings.lr)
    with torch.enable_grad():
        for _ in range(settings.steps):
            images = generator.synthesis(ws, noise=noises, fused_modconv=False).float()
            per_sample = (images - target).abs().flatten(1).mean(dim=1)
            per_sample = per_sample + settings.noise_reg_weight * noise_regularization(noises)
            optimizer.zero_grad(set_to_none=True)
            per_sample.sum().backward()
            optimizer.step()
            normalize_noise_(noises)
    with torch.no_grad():
        images = generator.synthesis(ws, noise=noises, fused_modconv=False).float()
    return images, flagged
