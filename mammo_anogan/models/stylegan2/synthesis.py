"""StyleGAN2 synthesis network, 'skip' architecture (Karras et al. 2020, sec. 4 and fig. 7).

A learned 4x4 constant is refined by modulated 3x3 convolutions; every resolution doubles via a
FIR-filtered up-sampling convolution. Each resolution emits an RGB (here: ``img_channels``) image via a
modulated 1x1 toRGB; the image is up-sampled with the same FIR filter and summed with the next
resolution's toRGB, so the generator can build the image coarse to fine without progressive growing.

Styles: the 4x4 block consumes 2 (conv, toRGB); every later block 3 (up-conv, conv, toRGB) of which
the toRGB style is shared with the next block's up-conv, hence ``num_ws = 2 * log2(res) - 2``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mammo_anogan.models.stylegan2.layers import (
    DEFAULT_FIR_TAPS,
    NOISE_MODES,
    SynthesisLayer,
    ToRGB,
    make_fir_kernel,
    upsample2d,
)
from mammo_anogan.utils.errors import ConfigError


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature maps at a resolution: min(channel_base // res, channel_max) (at least 1)."""
    return max(1, min(channel_base // resolution, channel_max))


def block_resolutions(img_resolution: int) -> list[int]:
    """[4, 8, ..., img_resolution]; the resolution must be a power of two >= 4."""
    log2 = int(math.log2(img_resolution)) if img_resolution > 0 else 0
    if img_resolution < 4 or 2**log2 != img_resolution:
        raise ConfigError(f"img_resolution must be a power of two >= 4, got {img_resolution}")
    return [2**i for i in range(2, log2 + 1)]


class SynthesisBlock(nn.Module):
    """One resolution: (const or up-conv) -> conv -> toRGB, image skip-summed with the previous one."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int,
        conv_clamp: float | None = None,
        fir_taps: Sequence[float] = DEFAULT_FIR_TAPS,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.out_channels = out_channels
        self.is_first = in_channels == 0
        if self.is_first:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
            self.conv0 = None
        else:
            self.conv0 = SynthesisLayer(
                in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp, fir_taps=fir_taps
            )
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGB(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.register_buffer("fir_kernel", make_fir_kernel(fir_taps), persistent=False)
        self.num_conv = 1 if self.is_first else 2
        self.num_torgb = 1

    def noise_layers(self) -> list[SynthesisLayer]:
        return [layer for layer in (self.conv0, self.conv1) if layer is not None]

    def forward(
        self,
        x: Tensor | None,
        img: Tensor | None,
        ws: Tensor,
        noise_mode: str,
        noise: Sequence[Tensor | None],
        fused: bool,
    ) -> tuple[Tensor, Tensor]:
        torch._assert(ws.shape[1] == self.num_conv + self.num_torgb, "SynthesisBlock: wrong number of ws")
        batch = ws.shape[0]
        w_iter = iter(ws.unbind(dim=1))
        if self.conv0 is None:
            x = self.const.to(ws.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
            x = self.conv1(x, next(w_iter), noise_mode, noise[0], fused=fused)
        else:
            assert x is not None
            x = self.conv0(x, next(w_iter), noise_mode, noise[0], fused=fused)
            x = self.conv1(x, next(w_iter), noise_mode, noise[1], fused=fused)
        rgb = self.torgb(x, next(w_iter), fused=fused)  # fp32 (see ToRGB)
        if img is not None:
            with torch.autocast(device_type=rgb.device.type, enabled=False):
                rgb = upsample2d(img.float(), self.fir_kernel).add_(rgb)
        img = rgb
        torch._assert(img.shape[2] == self.resolution, "SynthesisBlock: wrong image resolution")
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [B, num_ws, w_dim] -> image [B, img_channels, R, R]."""

    def __init__(
        self,
        w_dim: int,
        img_resolution: int,
        img_channels: int,
        channel_base: int = 16384,
        channel_max: int = 512,
        conv_clamp: float | None = None,
        fir_taps: Sequence[float] = DEFAULT_FIR_TAPS,
    ) -> None:
        super().__init__()
        self.w_dim = w_dim
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.resolutions = block_resolutions(img_resolution)
        blocks = []
        in_channels = 0
        for res in self.resolutions:
            out_channels = channels_at(res, channel_base, channel_max)
            blocks.append(
                SynthesisBlock(in_channels, out_channels, w_dim, res, img_channels, conv_clamp, fir_taps)
            )
            in_channels = out_channels
        self.blocks = nn.ModuleList(blocks)
        self.num_ws = sum(block.num_conv for block in self.blocks) + self.blocks[-1].num_torgb
        self._noise_layers = [layer for block in self.blocks for layer in block.noise_layers()]

    @property
    def noise_shapes(self) -> list[tuple[int, int, int, int]]:
        """Shapes of the noise inputs in layer order, batch dim 1 (an explicit noise list may use B)."""
        return [layer.noise.noise_shape for layer in self._noise_layers]

    def const_noise(self) -> list[Tensor]:
        """Copies of the stored constant noise maps (a convenient start for projection)."""
        return [layer.noise.noise_const.detach().clone() for layer in self._noise_layers]

    def forward(
        self,
        ws: Tensor,
        noise_mode: str = "random",
        noise: Sequence[Tensor] | None = None,
        fused_modconv: bool | None = None,
    ) -> Tensor:
        """Synthesise images; ``fused_modconv=None``: fused form in eval mode, input scaling in training."""
        torch._assert(
            ws.ndim == 3 and ws.shape[1] == self.num_ws and ws.shape[2] == self.w_dim,
            f"synthesis: ws must be [B, {self.num_ws}, {self.w_dim}]",
        )
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        num_noise = len(self._noise_layers)
        if noise is not None and len(noise) != num_noise:
            raise ValueError(
                f"noise must be a list of {num_noise} tensors (see noise_shapes), got {len(noise)}"
            )
        noise_list: list[Tensor | None] = list(noise) if noise is not None else [None] * num_noise
        fused = (not self.training) if fused_modconv is None else fused_modconv

        x: Tensor | None = None
        img: Tensor | None = None
        w_index = 0
        noise_index = 0
        for block in self.blocks:
            block_ws = ws.narrow(1, w_index, block.num_conv + block.num_torgb)
            block_noise = noise_list[noise_index : noise_index + block.num_conv]
            x, img = block(x, img, block_ws, noise_mode, block_noise, fused)
            w_index += block.num_conv
            noise_index += block.num_conv
        assert img is not None
        torch._assert(
            img.shape[1] == self.img_channels and img.shape[2] == self.img_resolution, "synthesis: bad output"
        )
        return img
