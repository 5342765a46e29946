"""Image -> W+ encoder for a trained, frozen StyleGAN2 generator (f-AnoGAN / Lee et al. 2022).

f-AnoGAN (Schlegl et al., Med. Image Anal. 2019) trains an encoder *after* the GAN, on normal images
only, so that ``G(E(x))`` reproduces ``x`` (the "izi" architecture: image -> latent -> image). Lee et
al. (Nat. Commun. 2022) use the same idea with StyleGAN2 and let the encoder predict one style vector
per synthesis layer (W+), which reconstructs far better than a single ``z`` or ``w``. This encoder
follows that choice:

* a convolutional trunk at the discriminator's widths (``channels_at``: ``channel_base / res`` capped at
  ``channel_max``), one residual down-sampling block per octave from ``R`` px to 4 px;
* a linear head on the 4x4 features that predicts ``num_ws`` offsets from the generator's ``w_avg``
  (``ws = w_avg + delta``), so an untrained encoder starts at the mean face of W - the projector's
  classic start - and training only has to learn the departure from it.

Shapes: ``x [B, C, R, R]`` in ``[-1, 1]`` -> ``ws [B, num_ws, w_dim]``. The encoder is exported as
``encoder.pt`` = ``{"kind": "encoder", "config", "state_dict"}`` (plain tensors, loaded with
``weights_only=True``); its config holds everything needed to rebuild it, plus the hash of the
generator it was trained for so that scoring refuses a mismatched pair.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mammo_anogan.models.stylegan2.synthesis import block_resolutions, channels_at
from mammo_anogan.training.nonfinite import check_finite_weights
from mammo_anogan.utils.errors import ConfigError, UserError
from mammo_anogan.utils.io import atomic_torch_save, safe_torch_load

KIND_ENCODER = "encoder"
ENCODER_FILE = "encoder.pt"


class _DownBlock(nn.Module):
    """Two 3x3 convolutions and a 2x average-pool, with a pooled 1x1 skip (residual, gain 1/sqrt 2)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.act = nn.LeakyReLU(0.2)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(self.conv0(x))
        y = self.pool(self.act(self.conv1(y)))
        return (y + self.pool(self.skip(x))) * (1 / math.sqrt(2))


class Encoder(nn.Module):
    """``x [B, C, R, R]`` -> ``ws [B, num_ws, w_dim]`` (W+ codes of a StyleGAN2 generator).

    Args:
        img_resolution, img_channels: the generator's output (power of two >= 8).
        num_ws, w_dim: the generator's ``num_ws`` and ``w_dim``.
        channel_base, channel_max: trunk widths, as the discriminator's.
        generator_hash: hash of the generator file it was trained for ("" when unknown).
    """

    def __init__(
        self,
        img_resolution: int,
        img_channels: int,
        num_ws: int,
        w_dim: int,
        channel_base: int = 1024,
        channel_max: int = 64,
        generator_hash: str = "",
    ) -> None:
        super().__init__()
        if img_resolution < 8:
            raise ConfigError(f"encoder img_resolution must be a power of two >= 8, got {img_resolution}")
        if min(img_channels, num_ws, w_dim, channel_base, channel_max) <= 0:
            raise ConfigError(
                "encoder sizes (channels, num_ws, w_dim, channel_base, channel_max) must be > 0"
            )
        self.config: dict[str, Any] = {
            "img_resolution": int(img_resolution),
            "img_channels": int(img_channels),
            "num_ws": int(num_ws),
            "w_dim": int(w_dim),
            "channel_base": int(channel_base),
            "channel_max": int(channel_max),
            "generator_hash": str(generator_hash),
        }
        self.num_ws, self.w_dim = int(num_ws), int(w_dim)
        resolutions = block_resolutions(int(img_resolution))[::-1]  # R, R/2, ..., 4
        width = [channels_at(res, channel_base, channel_max) for res in resolutions]
        self.stem = nn.Sequential(nn.Conv2d(img_channels, width[0], 3, padding=1), nn.LeakyReLU(0.2))
        self.blocks = nn.Sequential(
            *(_DownBlock(width[i], width[i + 1]) for i in range(len(resolutions) - 1))
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(width[-1] * 16, width[-1] * 4),
            nn.LeakyReLU(0.2),
            nn.Linear(width[-1] * 4, self.num_ws * self.w_dim),
        )
        nn.init.zeros_(self.head[-1].weight)  # start at w_avg: the untrained encoder = the mean image
        nn.init.zeros_(self.head[-1].bias)
        self.register_buffer("w_avg", torch.zeros(self.w_dim))

    def set_w_avg(self, w_avg: Tensor) -> None:
        """Copy the generator's ``mapping.w_avg`` (the centre the offsets are predicted from)."""
        self.w_avg.copy_(w_avg.detach().reshape(self.w_dim).to(self.w_avg))

    def forward(self, x: Tensor) -> Tensor:
        features = self.blocks(self.stem(x))
        delta = self.head(features).view(x.shape[0], self.num_ws, self.w_dim)
        return self.w_avg.to(delta.dtype) + delta

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())


def encoder_for_generator(
    generator: nn.Module, channel_base: int = 1024, channel_max: int = 64, generator_hash: str = ""
) -> Encoder:
    """An encoder sized for ``generator`` (its resolution, channels, ``num_ws``, ``w_dim``, ``w_avg``)."""
    encoder = Encoder(
        img_resolution=generator.img_resolution,
        img_channels=generator.img_channels,
        num_ws=generator.num_ws,
        w_dim=generator.w_dim,
        channel_base=channel_base,
        channel_max=channel_max,
        generator_hash=generator_hash,
    )
    encoder.set_w_avg(generator.mapping.w_avg)
    return encoder


def save_encoder(encoder: Encoder, path: str | os.PathLike[str]) -> Path:
    """Write ``{"kind": "encoder", "config", "state_dict"}`` atomically; refuse NaN/Inf weights."""
    state = {key: value.detach().cpu() for key, value in encoder.state_dict().items()}
    check_finite_weights(state, f"encoder export {Path(path).name}")
    return atomic_torch_save(
        {"kind": KIND_ENCODER, "config": dict(encoder.config), "state_dict": state}, path
    )


def load_encoder(path: str | os.PathLike[str], map_location: Any = "cpu") -> Encoder:
    """Read an ``encoder.pt`` (``weights_only=True``); a one-line UserError when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"encoder file not found: {path}")
    payload = safe_torch_load(path, map_location=map_location)
    if not isinstance(payload, dict) or payload.get("kind") != KIND_ENCODER or "state_dict" not in payload:
        raise UserError(f"{path} is not an exported encoder (expected kind 'encoder', config and state_dict)")
    config = payload.get("config")
    if not isinstance(config, dict):
        raise UserError(f"{path}: 'config' must be a dict of constructor arguments")
    try:
        encoder = Encoder(**config)
        encoder.load_state_dict(payload["state_dict"], strict=True)
    except (TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not match the stored encoder config: {first}") from err
    return encoder.eval()
