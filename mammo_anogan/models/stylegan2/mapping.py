"""StyleGAN mapping network z -> w (Karras et al. 2019, sec. 2; unchanged in StyleGAN2).

An MLP turns a normalised Gaussian latent z into an intermediate latent w that need not follow a
fixed distribution, which disentangles the factors of variation. The running mean ``w_avg`` is the
centre of W used by the truncation trick (w' = w_avg + psi * (w - w_avg)) and as the projector's start.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mammo_anogan.models.stylegan2.layers import FullyConnected


def normalize_2nd_moment(z: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale each latent to unit mean square (the 'pixel norm' of z), computed in fp32."""
    z = z.float()
    return z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + eps)


class MappingNetwork(nn.Module):
    """Normalise z, ``num_layers`` lrelu FC layers (lr multiplier 0.01), broadcast to ``num_ws`` styles."""

    def __init__(
        self,
        z_dim: int,
        w_dim: int,
        num_ws: int,
        num_layers: int = 8,
        lr_mul: float = 0.01,
        w_avg_beta: float = 0.995,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"mapping_layers must be >= 1, got {num_layers}")
        self.z_dim = z_dim
        self.w_dim = w_dim
        self.num_ws = num_ws
        self.w_avg_beta = w_avg_beta
        features = [z_dim] + [w_dim] * num_layers
        self.layers = nn.Sequential(
            *[
                FullyConnected(features[i], features[i + 1], lr_mul=lr_mul, activation="lrelu")
                for i in range(num_layers)
            ]
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    @torch.no_grad()
    def update_w_avg(self, w: Tensor) -> None:
        """Move the running mean towards the batch mean: w_avg <- beta * w_avg + (1 - beta) * mean(w)."""
        self.w_avg.copy_(w.detach().float().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))

    def truncate(
        self, ws: Tensor, truncation_psi: float = 1.0, truncation_cutoff: int | None = None
    ) -> Tensor:
        """Truncation trick on [B, num_ws, w_dim]: pull the first ``cutoff`` styles towards ``w_avg``."""
        if truncation_psi == 1.0:
            return ws
        cutoff = self.num_ws if truncation_cutoff is None else int(truncation_cutoff)
        w_avg = self.w_avg.to(ws.dtype)
        truncated = w_avg.lerp(ws[:, :cutoff], truncation_psi)
        return torch.cat([truncated, ws[:, cutoff:]], dim=1)

    def forward(
        self,
        z: Tensor,
        truncation_psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_w_avg: bool = False,
    ) -> Tensor:
        torch._assert(z.ndim == 2 and z.shape[1] == self.z_dim, "mapping: z must be [B, z_dim]")
        w = self.layers(normalize_2nd_moment(z))
        if update_w_avg:
            self.update_w_avg(w)
        ws = w.unsqueeze(1).repeat(1, self.num_ws, 1)
        ws = self.truncate(ws, truncation_psi, truncation_cutoff)
        torch._assert(ws.shape[1] == self.num_ws and ws.shape[2] == self.w_dim, "mapping: bad output shape")
        return ws
