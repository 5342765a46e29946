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
from typing import Any

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


# Depthwise weights built from a FIR kernel are cached on the kernel tensor itself, per (channels, dtype,
# gain): rebuilding them (flip, scale, cast, expand, make contiguous) at every call cost 3-4 kernel
# launches per FIR filter. A buffer moved to another device is a new tensor, with a new cache.
_CACHE_ATTRIBUTE = "_mammo_depthwise_cache"
_CACHE_SIZE = 4


def _depthwise(kernel: Tensor, channels: int, dtype: torch.dtype, gain: float = 1.0) -> Tensor:
    """A [kh, kw] kernel as a contiguous depthwise (groups = channels) weight, flipped for convolution."""
    key = (channels, dtype, float(gain), kernel._version)
    compiling = hasattr(torch, "compiler") and torch.compiler.is_compiling()
    cache: dict[tuple[Any, ...], Tensor] | None = None
    if not compiling and not kernel.requires_grad:
        cache = kernel.__dict__.setdefault(_CACHE_ATTRIBUTE, {})
        if key in cache:
            return cache[key]
    k = (kernel.detach() * gain).flip([0, 1]).to(dtype)
    weight = k[None, None].expand(channels, 1, *k.shape).contiguous()
    if cache is not None:
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        cache[key] = weight
    return weight


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


#: How the [1, 3, 3, 1] filter around a resolution change is applied (an implementation choice, equal
#: in exact arithmetic; bench/train.py --resampling compares them on a GPU):
#: "composed" (default): the filter folded into the 3x3 (or 1x1) weight, one (k+3)x(k+3) strided /
#: transposed convolution on tensor cores. More FLOPs, but no depthwise pass: on an H200 (bf16,
#: channels_last, 256 px, batch 32) cuDNN's depthwise kernels and their layout transforms took half of
#: a main-phase iteration, which fell from ~250 ms to ~130 ms with this mode (docs/performance.md).
#: "separate": a depthwise FIR convolution beside the strided convolution (the paper's formulation).
RESAMPLING_MODES = ("composed", "separate")
_RESAMPLING = {"mode": "composed"}


def set_resampling_mode(mode: str) -> None:
    """Select :data:`RESAMPLING_MODES` for every Conv2dLayer(down=2) / ModulatedConv2d(up=2)."""
    if mode not in RESAMPLING_MODES:
        raise ValueError(f"resampling mode must be one of {RESAMPLING_MODES}, got {mode!r}")
    _RESAMPLING["mode"] = mode


def resampling_mode() -> str:
    return _RESAMPLING["mode"]


def compose_fir(weight: Tensor, kernel: Tensor) -> Tensor:
    """``[O, I, k, k]`` weight -> ``[O, I, k+t-1, k+t-1]``: its full correlation with a ``[t, t]`` kernel.

    Down path: ``corr(corr(x, flip(f)), W) == corr(x, compose_fir(W, f))`` (blur, then strided conv).
    Up path: a transposed conv with W followed by ``corr(., a)`` equals one transposed conv with
    ``compose_fir(W, a)`` (padding 2 for a 3x3 W and 4 taps). Computed in fp32 with autocast off;
    differentiable in ``weight``.
    """
    out_channels, in_channels, kh, kw = weight.shape
    pad = kernel.shape[0] - 1
    with torch.autocast(device_type=weight.device.type, enabled=False):
        flat = weight.float().reshape(out_channels * in_channels, 1, kh, kw)
        composed = F.conv2d(F.pad(flat, [pad, pad, pad, pad]), kernel.float()[None, None])
    return composed.reshape(out_channels, in_channels, kh + pad, kw + pad)


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
        """``[B, in_features] -> [B, out_features]`` in fp32 whatever the autocast state.

        Dense layers (mapping network, style affines, D's head) are a negligible share of the FLOPs,
        and their outputs set the styles and w: the reference keeps them in fp32, and so do we.
        """
        torch._assert(
            x.ndim == 2 and x.shape[1] == self.in_features, "FullyConnected: expected [B, in_features]"
        )
        with torch.autocast(device_type=x.device.type, enabled=False):
            bias = self.bias * self.bias_gain if self.bias is not None else None
            x = F.linear(x.float(), self.effective_weight(), bias)
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
        """``[B, C_in, H, W] -> [B, C_out, H / down, W / down]``, equal to
        ``bias_act(conv(x, w * weight_gain) , bias, activation, gain, clamp)``.

        The activation's gain (sqrt 2 for lrelu) and ``gain`` are folded into the weight and the bias
        (tiny tensors) instead of two extra passes over the activations: lrelu is positively
        homogeneous, so ``lrelu(a * (x + b)) == a * lrelu(x + b)`` for ``a > 0``.
        """
        torch._assert(x.ndim == 4 and x.shape[1] == self.in_channels, "Conv2dLayer: wrong input channels")
        scale = gain * (LRELU_GAIN if self.activation == "lrelu" else 1.0)
        weight = self.weight * (self.weight_gain * scale)
        if self.down == 2:
            # blur then strided conv; total padding makes the output exactly H/2 x W/2
            taps = self.fir_kernel.shape[0]
            total = (taps - 2) + (self.kernel_size - 1)
            pad = ((total + 1) // 2, total // 2)
            if resampling_mode() == "composed":
                # corr(corr(x, flip(f)), W) == corr(x, K'), K' = full correlation of W with f
                composed = compose_fir(weight, self.fir_kernel).to(x.dtype)
                if pad[0] != pad[1]:
                    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
                    x = F.conv2d(x, composed, stride=2)
                else:
                    x = F.conv2d(x, composed, stride=2, padding=pad[0])
            else:
                x = fir_filter(x, self.fir_kernel, pad)
                x = F.conv2d(x, weight.to(x.dtype), stride=2)
        elif self.kernel_size == 1 and self.in_channels == 1:
            # fromRGB of a 1-channel image: a [B*H*W, 1] x [1, C] GEMM, not a degenerate convolution
            # (cuDNN's 1-channel kernels, its backward above all, were among the slowest on a GPU)
            x = F.linear(x.permute(0, 2, 3, 1), weight.reshape(self.out_channels, 1).to(x.dtype))
            x = x.permute(0, 3, 1, 2)
        else:
            x = F.conv2d(x, weight.to(x.dtype), padding=self.kernel_size // 2)
        if self.bias is not None:
            x = x.add_((self.bias * scale).reshape(1, -1, 1, 1))  # in place: conv's backward keeps no output
        if self.activation == "lrelu":
            x = F.leaky_relu(x, LRELU_SLOPE)
        elif self.activation != "linear":
            raise ValueError(f"unknown activation {self.activation!r} (expected 'linear' or 'lrelu')")
        if self.conv_clamp is not None:
            x = x.clamp(-self.conv_clamp * gain, self.conv_clamp * gain)
        return x

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
        """1 / sigma_j of eq. 3 for every sample, [B, out] in fp32 (autocast off: a bf16 matmul here
        would put a ~0.4 % error on every output channel's scale)."""
        with torch.autocast(device_type=styles.device.type, enabled=False):
            weight_sq = self.weight.float().square().sum(dim=[2, 3])  # [out, in]
            return torch.rsqrt(styles.float().square() @ weight_sq.t() + 1e-8)

    def forward(self, x: Tensor, w: Tensor, fused: bool = True, gain: float = 1.0) -> Tensor:
        """``x [B, in, H, W]``, ``w [B, w_dim]`` -> ``[B, out, H * up, W * up]``, times ``gain``.

        ``gain`` scales the output through the (tiny) demodulation coefficients, so callers can fold
        a following activation gain in without a pass over the activations.
        """
        batch, _, height, width = x.shape
        torch._assert(x.shape[1] == self.in_channels, "ModulatedConv2d: wrong input channels")
        torch._assert(w.shape[0] == batch, "ModulatedConv2d: w and x batch sizes differ")
        styles = self.styles(w)  # [B, in]
        dcoefs = self.demod_coefficients(styles) if self.demodulate else None
        if gain != 1.0:
            if dcoefs is not None:
                dcoefs = dcoefs * gain
            else:
                styles = styles * gain
        if self.out_channels == 1 and self.kernel_size == 1 and self.up == 1 and dcoefs is None:
            out = self._to_one_channel(x, styles)
        elif fused:
            out = self._fused(x, styles, dcoefs)
        elif self.up == 2 and resampling_mode() == "composed":
            out = self._input_scaling_composed_up(x, styles, dcoefs)
        else:
            out = self._input_scaling(x, styles, dcoefs)
        if self.up == 2 and (fused or resampling_mode() != "composed"):
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

    def _to_one_channel(self, x: Tensor, styles: Tensor) -> Tensor:
        """toRGB to one channel: per sample a ``[H*W, C] x [C, 1]`` product (one batched GEMM).

        Equal to the modulated 1x1 convolution without demodulation; cuDNN's kernels for a
        one-channel output (and their backward) were among the slowest of the training step.
        """
        batch, channels, height, width = x.shape
        weights = (styles * self.weight[:, :, 0, 0].float()).to(x.dtype)  # [B, C]: eq. 1 for a 1x1 kernel
        pixels = x.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
        out = torch.bmm(pixels, weights.unsqueeze(-1))  # [B, H*W, 1]
        return out.reshape(batch, height, width, 1).permute(0, 3, 1, 2)

    def _input_scaling_composed_up(self, x: Tensor, styles: Tensor, dcoefs: Tensor | None) -> Tensor:
        """Input scaling with the up-sampling filter folded into a (k+3)x(k+3) transposed convolution."""
        x = x * styles.to(x.dtype)[:, :, None, None]
        depthwise = self.fir_kernel.flip([0, 1]) * 4.0  # the kernel fir_filter(..., gain=4) applies
        composed = compose_fir(self.weight, depthwise).to(x.dtype)  # [out, in, k+3, k+3]
        out = F.conv_transpose2d(x, composed.transpose(0, 1), stride=2, padding=2)
        if dcoefs is not None:
            out = out * dcoefs.to(out.dtype)[:, :, None, None]
        return out

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

    def forward(
        self, x: Tensor, noise_mode: str = "random", noise: Tensor | None = None, gain: float = 1.0
    ) -> Tensor:
        """``x + gain * strength * noise`` (one fused multiply-add over the activations)."""
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
        strength = self.strength * gain if gain != 1.0 else self.strength
        return torch.addcmul(x, noise.to(x.dtype), strength.to(x.dtype))


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
        # lrelu(x + noise + b) * sqrt2 == lrelu(sqrt2 * x + sqrt2 * noise + sqrt2 * b): the gain goes into
        # the demodulation coefficients, the noise strength and the bias (all tiny tensors).
        x = self.conv(x, w, fused=fused, gain=LRELU_GAIN)
        torch._assert(x.shape[2] == self.resolution, "SynthesisLayer: unexpected resolution")
        x = self.noise(x, noise_mode, noise, gain=LRELU_GAIN)
        x = x.add_((self.bias * LRELU_GAIN).reshape(1, -1, 1, 1))
        x = F.leaky_relu(x, LRELU_SLOPE)
        if self.conv_clamp is not None:
            x = x.clamp(-self.conv_clamp * LRELU_GAIN, self.conv_clamp * LRELU_GAIN)
        return x


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
        """``[B, C, H, W]`` features -> ``[B, img_channels, H, W]`` image contribution, always fp32.

        The image path (toRGB and the skip sum of the up-sampled images) stays in fp32 under autocast:
        in bf16 the summed image, from which anomaly maps are computed, carried errors of 2-3 grey
        levels. It is a 1x1 conv to one channel, a negligible share of the work.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            out = self.conv(x.float(), w, fused=fused)
            return bias_act(out, self.bias, "linear", clamp=self.conv_clamp)


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
