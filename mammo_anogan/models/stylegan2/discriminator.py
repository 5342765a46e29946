"""StyleGAN2 discriminator, 'resnet' architecture (Karras et al. 2020, sec. 4 and fig. 7c).

fromRGB (1x1 conv) at the input resolution, then one residual block per resolution down to 8x8:
two 3x3 convs (the second one FIR-down-sampling) plus a skip path (FIR down-sample + 1x1 conv, no
bias), summed and scaled by 1/sqrt(2) to keep the variance. The 4x4 epilogue appends the minibatch
standard deviation, then conv 3x3 -> FC -> FC to one logit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mammo_anogan.models.stylegan2.layers import DEFAULT_FIR_TAPS, Conv2dLayer, FullyConnected, MinibatchStd
from mammo_anogan.models.stylegan2.synthesis import block_resolutions, channels_at
from mammo_anogan.utils.errors import ConfigError

RESIDUAL_GAIN = math.sqrt(0.5)


class DiscriminatorBlock(nn.Module):
    """Residual block: [B, C_in, r, r] -> [B, C_out, r/2, r/2] (with fromRGB when it is the first)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        resolution: int,
        img_channels: int,
        from_rgb: bool,
        conv_clamp: float | None = None,
        fir_taps: Sequence[float] = DEFAULT_FIR_TAPS,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.img_channels = img_channels
        self.fromrgb = (
            Conv2dLayer(img_channels, in_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
            if from_rgb
            else None
        )
        self.conv0 = Conv2dLayer(in_channels, in_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(
            in_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp, fir_taps=fir_taps
        )
        self.skip = Conv2dLayer(in_channels, out_channels, 1, bias=False, down=2, fir_taps=fir_taps)

    def forward(self, x: Tensor) -> Tensor:
        torch._assert(
            x.shape[2] == self.resolution and x.shape[3] == self.resolution, "D block: bad resolution"
        )
        if self.fromrgb is not None:
            torch._assert(x.shape[1] == self.img_channels, "D block: wrong number of image channels")
            x = self.fromrgb(x)
        residual = self.skip(x, gain=RESIDUAL_GAIN)
        x = self.conv0(x)
        x = self.conv1(x, gain=RESIDUAL_GAIN)
        return residual + x


class DiscriminatorEpilogue(nn.Module):
    """4x4 head: minibatch std -> conv 3x3 -> FC -> FC(1)."""

    def __init__(
        self,
        in_channels: int,
        resolution: int = 4,
        mbstd_group_size: int = 4,
        mbstd_num_channels: int = 1,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.mbstd = MinibatchStd(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        extra = mbstd_num_channels if self.mbstd is not None else 0
        self.conv = Conv2dLayer(
            in_channels + extra, in_channels, 3, activation="lrelu", conv_clamp=conv_clamp
        )
        self.fc = FullyConnected(in_channels * resolution * resolution, in_channels, activation="lrelu")
        self.out = FullyConnected(in_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        torch._assert(
            x.shape[2] == self.resolution and x.shape[3] == self.resolution, "D epilogue: bad input"
        )
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        x = self.fc(x.flatten(1).float())
        return self.out(x)


class Discriminator(nn.Module):
    """img [B, C, R, R] -> logits [B, 1]; ``return_features=True`` also returns every block's output."""

    def __init__(
        self,
        img_resolution: int = 256,
        img_channels: int = 1,
        channel_base: int = 16384,
        channel_max: int = 512,
        mbstd_group_size: int = 4,
        mbstd_num_channels: int = 1,
        conv_clamp: float | None = None,
    ) -> None:
        super().__init__()
        if img_resolution < 8:
            raise ConfigError(
                f"discriminator img_resolution must be a power of two >= 8, got {img_resolution}"
            )
        for name, value in (("img_channels", img_channels), ("channel_base", channel_base)):
            if value <= 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        if mbstd_group_size < 1 or mbstd_num_channels < 0:
            raise ConfigError("mbstd_group_size must be >= 1 and mbstd_num_channels >= 0")
        self.config: dict[str, Any] = {
            "img_resolution": int(img_resolution),
            "img_channels": int(img_channels),
            "channel_base": int(channel_base),
            "channel_max": int(channel_max),
            "mbstd_group_size": int(mbstd_group_size),
            "mbstd_num_channels": int(mbstd_num_channels),
            "conv_clamp": None if conv_clamp is None else float(conv_clamp),
        }
        self.img_resolution = int(img_resolution)
        self.img_channels = int(img_channels)
        resolutions = block_resolutions(self.img_resolution)[::-1]  # R, R/2, ..., 4
        blocks = []
        for i, res in enumerate(resolutions[:-1]):
            blocks.append(
                DiscriminatorBlock(
                    channels_at(res, channel_base, channel_max),
                    channels_at(res // 2, channel_base, channel_max),
                    res,
                    self.img_channels,
                    from_rgb=i == 0,
                    conv_clamp=self.config["conv_clamp"],
                )
            )
        self.blocks = nn.ModuleList(blocks)
        self.epilogue = DiscriminatorEpilogue(
            channels_at(4, channel_base, channel_max),
            mbstd_group_size=mbstd_group_size,
            mbstd_num_channels=mbstd_num_channels,
            conv_clamp=self.config["conv_clamp"],
        )

    def forward(self, img: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        torch._assert(
            img.ndim == 4
            and img.shape[1] == self.img_channels
            and img.shape[2] == self.img_resolution
            and img.shape[3] == self.img_resolution,
            f"discriminator expects [B, {self.img_channels}, {self.img_resolution}, {self.img_resolution}]",
        )
        x = img
        feats: list[Tensor] = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        logits = self.epilogue(x)
        torch._assert(logits.shape[1] == 1, "discriminator: logits must be [B, 1]")
        if return_features:
            return logits, feats
        return logits

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())
