"""Building blocks of StyleGAN2 (Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN").

Implemented from the paper, in plain PyTorch (no custom CUDA ops):

* **Equalized learning rate** (Karras et al. 2018, sec. 4.1): parameters are stored as N(0, 1) / lr_mul
  and scaled at run time by ``lr_mul / sqrt(fan_in)``, so Adam's per-parameter step sizes are the same
  for every layer whatever its fan-in.
* **FIR resampling** with the separable binomial filter [1, 3, 3, 1] (normalised to unit DC gain) to
  avoid aliasing when changing resolution (StyleGAN2 appendix B).
* **Modulated convolution with weight demodulation** (StyleGAN2 sec. 2.2, equations 1-3).
* **Noise inputs** with learned per-layer strength, **toRGB** (modulated 1x1 conv without
  demodulation) and the **minibatch standard deviation** layer of the discriminator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LRELU_SLOPE = 0.2
# Gain that restores unit variance after a leaky ReLU with slope 0.2 (He et al.; StyleGAN uses sqrt(2)).
LRELU_GAIN = math.sqrt(2.0)
DEFAULT_FIR_TAPS: tuple[int, ...] = (1, 3, 3, 1)
NOISE_MODES = ("random", "const", "none")


# --------------------------------------------------------------------------------------------------
# FIR resampling
# --------------------------------------------------------------------------------------------------
def make_fir_kernel(taps: Sequence[float] = DEFAULT_FIR_TAPS) -> Tensor:
    """2-D separable low-pass kernel (outer product of ``taps``) normalised to sum 1 (unit DC gain)."""
    t = torch.as_tensor(taps, dtype=torch.float32)
    kernel = torch.outer(t, t)
    return kernel / kernel.sum()


def _depthwise(kernel: Tensor, channels: int, dtype: torch.dtype, gain: float = 1.0) -> Tensor:
    """Repeat a [kh, kw] kernel for a depthwise (groups = channels) conv, flipped for true convolution."""
    k = (kernel * gain).flip([0, 1]).to(dtype)
    return k[None, None].expand(channels, 1, *k.shape)


def fir_filter(x: Tensor, kernel: Tensor, pad: tuple[int, int], gain: float = 1.0) -> Tensor:
    """Filter every channel of ``x`` with ``kernel``; ``pad = (before, after)`` zero padding on both axes."""
    channels = x.shape[1]
    if pad[0] == pad[1]:
        return F.conv2d(x, _depthwise(kernel, channels, x.dtype, gain), padding=pad[0], groups=channels)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    return F.conv2d(x, _depthwise(kernel, channels, x.dtype, gain), groups=channels)


def upsample2d(x: Tensor, kernel: Tensor) -> Tensor:
    """2x up-sampling: zero insertion followed by the FIR low-pass, in one strided transposed conv.

    The gain 4 (= up^2) compensates the three zeros inserted for every sample, so a constant image
    stays constant away from the border. For a 4-tap kernel, padding 1 gives exactly 2H x 2W.
    """
    channels = x.shape[1]
    torch._assert(kernel.shape[0] == 4, "upsample2d expects a 4-tap kernel")
    weight = _depthwise(kernel, channels, x.dtype, gain=4.0)
    return F.conv_transpose2d(x, weight, stride=2, padding=1, groups=channels)


def downsample2d(x: Tensor, kernel: Tensor) -> Tensor:
    """2x down-sampling: FIR low-pass then keep every second sample (one strided depthwise conv)."""
    channels = x.shape[1]
    torch._assert(kernel.shape[0] == 4, "downsample2d expects a 4-tap kernel")
    return F.conv2d(x, _depthwise(kernel, channels, x.dtype), stride=2, padding=1, groups=channels)


# --------------------------------------------------------------------------------------------------
# Bias + activation
# --------------------------------------------------------------------------------------------------
def bias_act(
    x: Tensor,
    bias: Tensor | None,
    activation: str = "linear",
    gain: float = 1.0,
    clamp: float | None = None,
) -> Tensor:
    """Add a per-channel bias, apply the activation (lrelu includes its sqrt(2) gain), scale, clamp.

    ``clamp`` (the official ``conv_clamp``) bounds activations to +-clamp*gain so fp16 cannot overflow.
    """
    if bias is not None:
        shape = [1, -1] + [1] * (x.ndim - 2)
        x = x + bias.to(x.dtype).reshape(shape)
    if activation == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE) * LRELU_GAIN
    elif activation != "linear":
        raise ValueError(f"unknown activation {activation!r} (expected 'linear' or 'lrelu')")
    if gain != 1.0:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp * gain, clamp * gain)
    return x


# --------------------------------------------------------------------------------------------------
# Equalized-learning-rate layers
# --------------------------------------------------------------------------------------------------
class FullyConnected(nn.Module):
    """Dense layer with equalized learning rate.

    Stored weight ~ N(0, 1) / lr_mul, effective weight = stored * lr_mul / sqrt(in_features); stored
    bias = bias_init / lr_mul, effective bias = stored * lr_mul. A small ``lr_mul`` (0.01 in the mapping
    network) therefore slows that layer's learning by the same factor under Adam.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        bias_init: float = 0.0,
        lr_mul: float = 1.0,
        activation: str = "linear",
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init) / lr_mul)) if bias else None
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.bias_gain = lr_mul

    def effective_weight(self) -> Tensor:
        return self.weight * self.weight_gain

    def forward(self, x: Tensor) -> Tensor:
        torch._assert(
            x.ndim == 2 and x.shape[1] == self.in_features, "FullyConnected: expected [B, in_features]"
        )
        bias = self.bias * self.bias_gain if self.bias is not None else None
        x = F.linear(x, self.effective_weight(), bias)
        return bias_act(x, None, self.activation)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, act={self.activation}"


class Conv2dLayer(nn.Module):
    """Convolution with equalized learning rate, optional FIR 2x down-sampling, bias and activation.

    Down-sampling follows StyleGAN2: blur with the FIR kernel first, then a stride-2 convolution, so the
    kernel sees the full-resolution (anti-aliased) signal.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        down: int = 1,
        conv_clamp: float | None = None,
        fir_taps: Sequence[float] = DEFAULT_FIR_TAPS,
    ) -> None:
        super().__init__()
        if down not in (1, 2):
            raise ValueError(f"down must be 1 or 2, got {down}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.activation = activation
        self.down = down
        self.conv_clamp = conv_clamp
        self.register_buffer("fir_kernel", make_fir_kernel(fir_taps), persistent=False)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)

    def forward(self, x: Tensor, gain: float = 1.0) -> Tensor:
        torch._assert(x.ndim == 4 and x.shape[1] == self.in_channels, "Conv2dLayer: wrong input channels")
        weight = (self.weight * self.weight_gain).to(x.dtype)
        if self.down == 2:
            # blur then strided conv; total padding makes the output exactly H/2 x W/2
            taps = self.fir_kernel.shape[0]
            total = (taps - 2) + (self.kernel_size - 1)
            x = fir_filter(x, self.fir_kernel, ((total + 1) // 2, total // 2))
            x = F.conv2d(x, weight, stride=2)
        else:
            x = F.conv2d(x, weight, padding=self.kernel_size // 2)
        return bias_act(x, self.bias, self.activation, gain=gain, clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}->{self.out_channels}, k={self.kernel_size}, down={self.down}, "
            f"act={self.activation}"
        )


# --------------------------------------------------------------------------------------------------
# Modulated convolution (StyleGAN2 sec. 2.2)
# --------------------------------------------------------------------------------------------------
class ModulatedConv2d(nn.Module):
    """Style-modulated convolution with optional weight demodulation and 2x FIR up-sampling.

    With style s (from an affine layer of w, bias initialised to 1 so every style starts at identity):

    * eq. 1 (modulation):   w'_ijk  = s_i * w_ijk
    * eq. 2 (output std):   sigma_j = sqrt( sum_{i,k} w'_ijk^2 )   (for unit-variance i.i.d. input)
    * eq. 3 (demodulation): w''_ijk = w'_ijk / sqrt( sum_{i,k} w'_ijk^2 + eps )

    Two mathematically equal forms (chosen by ``fused``):

    * fused: build one weight per sample and run a grouped convolution (groups = batch); fastest for
      small batches and inference;
    * non-fused: scale the *input* by s, convolve with the shared weight, scale the output by 1/sigma;
      one ordinary convolution, fastest for large training batches and friendly to channels_last.

    sigma is computed as sqrt(s^2 @ sum_k w^2) in fp32 without materialising per-sample weights.
    Up-sampling (``up=2``) is a stride-2 transposed conv followed by the [1,3,3,1] FIR blur (gain 4),
    which equals zero insertion -> conv -> blur.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        kernel_size: int,
        demodulate: bool = True,
        up: int = 1,
        fir_taps: Sequence[float] = DEFAULT_FIR_TAPS,
    ) -> None:
        super().__init__()
        if up not in (1, 2):
            raise ValueError(f"up must be 1 or 2, got {up}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.up = up
        self.affine = FullyConnected(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.register_buffer("fir_kernel", make_fir_kernel(fir_taps), persistent=False)

    def styles(self, w: Tensor) -> Tensor:
        """Per-sample input-channel scales s (fp32), including the equalized-lr weight gain."""
        return self.affine(w).float() * self.weight_gain

    def demod_coefficients(self, styles: Tensor) -> Tensor:
        """1 / sigma_j of eq. 3 for every sample, [B, out] in fp32."""
        weight_sq = self.weight.float().square().sum(dim=[2, 3])  # [out, in]
        return torch.rsqrt(styles.square() @ weight_sq.t() + 1e-8)

    def forward(self, x: Tensor, w: Tensor, fused: bool = True) -> Tensor:
        batch, _, height, width = x.shape
        torch._assert(x.shape[1] == self.in_channels, "ModulatedConv2d: wrong input channels")
        torch._assert(w.shape[0] == batch, "ModulatedConv2d: w and x batch sizes differ")
        styles = self.styles(w)  # [B, in]
        dcoefs = self.demod_coefficients(styles) if self.demodulate else None
        if fused:
            out = self._fused(x, styles, dcoefs)
        else:
            out = self._input_scaling(x, styles, dcoefs)
        if self.up == 2:
            out = fir_filter(out, self.fir_kernel, (1, 1), gain=4.0)
        torch._assert(
            out.shape[2] == height * self.up and out.shape[3] == width * self.up, "ModulatedConv2d: bad shape"
        )
        return out

    def _conv(self, x: Tensor, weight: Tensor, groups: int) -> Tensor:
        if self.up == 2:
            # conv_transpose2d expects [in, out/groups, k, k]
            return F.conv_transpose2d(x, weight.transpose(0, 1), stride=2, groups=groups)
        return F.conv2d(x, weight, padding=self.kernel_size // 2, groups=groups)

    def _fused(self, x: Tensor, styles: Tensor, dcoefs: Tensor | None) -> Tensor:
        batch = x.shape[0]
        weight = self.weight.float()[None] * styles[:, None, :, None, None]  # eq. 1, [B, out, in, k, k]
        if dcoefs is not None:
            weight = weight * dcoefs[:, :, None, None, None]  # eq. 3
        k = self.kernel_size
        x = x.reshape(1, batch * self.in_channels, *x.shape[2:])
        if self.up == 2:
            # grouped transposed conv wants its weight as [B*in, out, k, k]
            weight = weight.transpose(1, 2).reshape(batch * self.in_channels, self.out_channels, k, k)
            out = F.conv_transpose2d(x, weight.to(x.dtype), stride=2, groups=batch)
        else:
            weight = weight.reshape(batch * self.out_channels, self.in_channels, k, k)
            out = F.conv2d(x, weight.to(x.dtype), padding=k // 2, groups=batch)
        return out.reshape(batch, self.out_channels, *out.shape[2:])

    def _input_scaling(self, x: Tensor, styles: Tensor, dcoefs: Tensor | None) -> Tensor:
        x = x * styles.to(x.dtype)[:, :, None, None]  # modulating the input == modulating the weight
        out = self._conv(x, self.weight.to(x.dtype), groups=1)
        if dcoefs is not None:
            out = out * dcoefs.to(out.dtype)[:, :, None, None]
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}->{self.out_channels}, k={self.kernel_size}, up={self.up}, "
            f"demodulate={self.demodulate}"
        )


class NoiseInjection(nn.Module):
    """Per-pixel Gaussian noise, one map shared by all channels, scaled by a learned strength (init 0).

    ``noise_const`` is a fixed stored map for deterministic output (``noise_mode="const"``); an explicit
    ``noise`` tensor [1 or B, 1, H, W] overrides the mode (the projector optimises these maps).
    """

    def __init__(self, resolution: int) -> None:
        super().__init__()
        self.resolution = resolution
        self.strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))

    @property
    def noise_shape(self) -> tuple[int, int, int, int]:
        return (1, 1, self.resolution, self.resolution)

    def forward(self, x: Tensor, noise_mode: str = "random", noise: Tensor | None = None) -> Tensor:
        batch = x.shape[0]
        if noise is not None:
            torch._assert(
                noise.ndim == 4
                and noise.shape[0] in (1, batch)
                and noise.shape[1] == 1
                and noise.shape[2] == self.resolution
                and noise.shape[3] == self.resolution,
                f"noise map must be [1 or B, 1, {self.resolution}, {self.resolution}]",
            )
        elif noise_mode == "random":
            noise = torch.randn(batch, 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
        elif noise_mode == "const":
            noise = self.noise_const
        elif noise_mode == "none":
            return x
        else:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        return x + noise.to(x.dtype) * self.strength.to(x.dtype)


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally 2x up) -> noise -> bias + lrelu (+ clamp): one style input."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        up: int = 1,
        conv_clamp: float | None = None,
        fir_taps: Sequence[float] = DEFAULT_FIR_TAPS,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.conv = ModulatedConv2d(
            in_channels, out_channels, w_dim, 3, demodulate=True, up=up, fir_taps=fir_taps
        )
        self.noise = NoiseInjection(resolution)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.conv_clamp = conv_clamp

    def forward(
        self,
        x: Tensor,
        w: Tensor,
        noise_mode: str = "random",
        noise: Tensor | None = None,
        fused: bool = True,
    ) -> Tensor:
        x = self.conv(x, w, fused=fused)
        torch._assert(x.shape[2] == self.resolution, "SynthesisLayer: unexpected resolution")
        x = self.noise(x, noise_mode, noise)
        return bias_act(x, self.bias, "lrelu", clamp=self.conv_clamp)


class ToRGB(nn.Module):
    """Modulated 1x1 conv *without* demodulation to the image channels (StyleGAN2 'skip' generator)."""

    def __init__(
        self, in_channels: int, img_channels: int, w_dim: int, conv_clamp: float | None = None
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, img_channels, w_dim, 1, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.conv_clamp = conv_clamp

    def forward(self, x: Tensor, w: Tensor, fused: bool = True) -> Tensor:
        return bias_act(self.conv(x, w, fused=fused), self.bias, "linear", clamp=self.conv_clamp)


class MinibatchStd(nn.Module):
    """Minibatch standard deviation (Karras et al. 2018, sec. 3; StyleGAN2 uses group size 4, 1 channel).

    Samples are split into groups of G; within a group the std of every feature is taken over the
    group, averaged over (channels of a slice, H, W) and appended as ``num_channels`` constant maps.
    This lets D see the variety of a batch and penalise mode collapse. G = the largest divisor of the
    batch that is <= group_size, so any batch size works (3 -> 3, 6 -> 3, 8 -> 4).
    """

    def __init__(self, group_size: int = 4, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size = group_size
        self.num_channels = num_channels

    def group_for(self, batch: int) -> int:
        for g in range(min(self.group_size, batch), 0, -1):
            if batch % g == 0:
                return g
        return 1

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        torch._assert(
            channels % self.num_channels == 0, "MinibatchStd: channels not divisible by num_channels"
        )
        g = self.group_for(int(batch))
        f = self.num_channels
        # sample n belongs to group n % (batch // g): [G, M, F, c, H, W]
        y = x.float().reshape(g, -1, f, channels // f, height, width)
        y = (y - y.mean(dim=0)).square().mean(dim=0)  # variance over the group
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])  # [M, F]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, height, width).to(x.dtype)  # [B, F, H, W]
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"
