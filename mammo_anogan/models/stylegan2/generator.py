"""StyleGAN2 generator = mapping network (z -> ws) + synthesis network (ws -> image)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mammo_anogan.models.stylegan2.mapping import MappingNetwork
from mammo_anogan.models.stylegan2.synthesis import SynthesisNetwork
from mammo_anogan.utils.errors import ConfigError


def _check_positive(**values: float) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ConfigError(f"{name} must be > 0, got {value}")


class Generator(nn.Module):
    """StyleGAN2 config-f family generator, scaled by ``img_resolution`` and ``channel_base``.

    ``G.config`` holds the constructor kwargs (JSON-serialisable) so ``Generator(**G.config)`` rebuilds
    the same architecture for export/import. 32px CPU test model: ``channel_base=256, channel_max=32,
    z_dim=w_dim=32``; the paper's 512px model: ``channel_base=32768, channel_max=512``.
    """

    def __init__(
        self,
        z_dim: int = 512,
        w_dim: int = 512,
        img_resolution: int = 256,
        img_channels: int = 1,
        mapping_layers: int = 8,
        channel_base: int = 16384,
        channel_max: int = 512,
        mapping_lr_mul: float = 0.01,
        w_avg_beta: float = 0.995,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        _check_positive(
            z_dim=z_dim,
            w_dim=w_dim,
            img_channels=img_channels,
            mapping_layers=mapping_layers,
            channel_base=channel_base,
            channel_max=channel_max,
            mapping_lr_mul=mapping_lr_mul,
        )
        if not 0.0 <= w_avg_beta <= 1.0:
            raise ConfigError(f"w_avg_beta must be in [0, 1], got {w_avg_beta}")
        self.config: dict[str, Any] = {
            "z_dim": int(z_dim),
            "w_dim": int(w_dim),
            "img_resolution": int(img_resolution),
            "img_channels": int(img_channels),
            "mapping_layers": int(mapping_layers),
            "channel_base": int(channel_base),
            "channel_max": int(channel_max),
            "mapping_lr_mul": float(mapping_lr_mul),
            "w_avg_beta": float(w_avg_beta),
            "conv_clamp": None if conv_clamp is None else float(conv_clamp),
        }
        self.z_dim = int(z_dim)
        self.w_dim = int(w_dim)
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        self.synthesis = SynthesisNetwork(
            w_dim=self.w_dim,
            img_resolution=self.img_resolution,
            img_channels=self.img_channels,
            channel_base=int(channel_base),
            channel_max=int(channel_max),
            conv_clamp=self.config["conv_clamp"],
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(
            z_dim=self.z_dim,
            w_dim=self.w_dim,
            num_ws=self.num_ws,
            num_layers=int(mapping_layers),
            lr_mul=float(mapping_lr_mul),
            w_avg_beta=float(w_avg_beta),
        )

    def forward(
        self,
        z: Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        noise_mode: str = "random",
        noise: Sequence[Tensor] | None = None,
        update_w_avg: bool = False,
        fused_modconv: bool | None = None,
    ) -> Tensor:
        ws = self.mapping(z, truncation_psi, truncation_cutoff, update_w_avg=update_w_avg)
        return self.synthesis(ws, noise_mode=noise_mode, noise=noise, fused_modconv=fused_modconv)

    def mix_styles(
        self,
        z1: Tensor,
        z2: Tensor,
        prob: float = 0.9,
        update_w_avg: bool = False,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Style mixing regularisation (StyleGAN sec. 3.1): with probability ``prob`` per sample, the
        styles from a crossover layer c ~ U{1, ..., num_ws - 1} onwards come from z2, those before from z1.

        Both latents go through the mapping network in one batch. ``update_w_avg`` updates ``w_avg``
        from the z1 latents only (the training step's main latents).
        """
        torch._assert(z1.shape == z2.shape, "mix_styles: z1 and z2 must have the same shape")
        batch = z1.shape[0]
        ws_both = self.mapping(torch.cat([z1, z2]))
        ws1, ws2 = ws_both[:batch], ws_both[batch:]
        if update_w_avg:
            self.mapping.update_w_avg(ws1[:, 0])
        if prob <= 0 or self.num_ws < 2:
            return ws1
        device = z1.device
        cutoff = torch.randint(1, self.num_ws, (batch,), device=device, generator=generator)
        mixed = torch.rand(batch, device=device, generator=generator) < prob
        cutoff = torch.where(mixed, cutoff, torch.full_like(cutoff, self.num_ws))
        layer = torch.arange(self.num_ws, device=device)
        from_z1 = (layer[None, :] < cutoff[:, None]).unsqueeze(-1)  # [B, num_ws, 1]
        return torch.where(from_z1, ws1, ws2)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())
