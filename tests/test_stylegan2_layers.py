"""StyleGAN2 building blocks: equalized lr, FIR resampling, modulated conv, noise, minibatch std."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mammo_anogan.models.stylegan2.layers import (
    Conv2dLayer,
    FullyConnected,
    MinibatchStd,
    ModulatedConv2d,
    NoiseInjection,
    bias_act,
    downsample2d,
    fir_filter,
    make_fir_kernel,
    upsample2d,
)
from mammo_anogan.models.stylegan2.mapping import MappingNetwork


def test_fir_kernel_is_normalised_binomial() -> None:
    kernel = make_fir_kernel()
    expected = torch.outer(torch.tensor([1.0, 3, 3, 1]), torch.tensor([1.0, 3, 3, 1])) / 64
    assert kernel.shape == (4, 4)
    torch.testing.assert_close(kernel, expected)


def test_fully_connected_equalized_lr_scaling() -> None:
    fc = FullyConnected(256, 512, bias_init=0.5, lr_mul=0.01)
    # stored ~ N(0, 1) / lr_mul, effective = stored * lr_mul / sqrt(fan_in)
    assert fc.weight.std().item() == pytest.approx(100.0, rel=0.02)
    assert fc.weight_gain == pytest.approx(0.01 / 16.0)
    torch.testing.assert_close(fc.effective_weight(), fc.weight * 0.01 / 16.0)
    assert fc.effective_weight().std().item() == pytest.approx(1 / 16.0, rel=0.02)
    x = torch.randn(5, 256)
    expected = x @ (fc.weight * 0.01 / 16.0).t() + 0.5
    torch.testing.assert_close(fc(x), expected, rtol=1e-5, atol=1e-5)


def test_mapping_uses_lr_multiplier_and_unit_gain_lrelu() -> None:
    mapping = MappingNetwork(z_dim=64, w_dim=64, num_ws=4, num_layers=3, lr_mul=0.01)
    for layer in mapping.layers:
        assert layer.weight_gain == pytest.approx(0.01 / 8.0)
        assert layer.weight.std().item() == pytest.approx(100.0, rel=0.05)
        assert layer.activation == "lrelu"


def test_conv_layer_equalized_lr() -> None:
    conv = Conv2dLayer(32, 64, 3)
    assert conv.weight.std().item() == pytest.approx(1.0, rel=0.05)
    assert conv.weight_gain == pytest.approx(1 / math.sqrt(32 * 9))
    x = torch.randn(2, 32, 8, 8)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight * conv.weight_gain, conv.bias, padding=1))


def test_conv_layer_down_halves_resolution() -> None:
    conv = Conv2dLayer(4, 6, 3, down=2)
    assert conv(torch.randn(2, 4, 16, 16)).shape == (2, 6, 8, 8)
    skip = Conv2dLayer(4, 6, 1, bias=False, down=2)
    assert skip.bias is None
    assert skip(torch.randn(2, 4, 16, 16)).shape == (2, 6, 8, 8)


def test_bias_act_lrelu_gain_and_clamp() -> None:
    x = torch.tensor([[-1.0, 2.0]])
    out = bias_act(x, torch.tensor([0.0, 1.0]), "lrelu")
    torch.testing.assert_close(out, torch.tensor([[-0.2 * math.sqrt(2), 3 * math.sqrt(2)]]))
    clamped = bias_act(x * 100, None, "linear", clamp=5.0)
    torch.testing.assert_close(clamped, torch.tensor([[-5.0, 5.0]]))


@pytest.mark.parametrize("size", [8, 17])
def test_upsample_keeps_constant_and_doubles(size: int) -> None:
    x = torch.full((2, 3, size, size), 0.7)
    y = upsample2d(x, make_fir_kernel())
    assert y.shape == (2, 3, 2 * size, 2 * size)
    torch.testing.assert_close(y[..., 2:-2, 2:-2], torch.full_like(y[..., 2:-2, 2:-2], 0.7))


def test_upsample_equals_zero_insertion_then_fir() -> None:
    x = torch.randn(2, 3, 6, 6)
    kernel = make_fir_kernel()
    zeros = torch.zeros(2, 3, 6, 2, 6, 2)
    zeros[:, :, :, 0, :, 0] = x
    reference = fir_filter(zeros.reshape(2, 3, 12, 12), kernel, (2, 1), gain=4.0)
    torch.testing.assert_close(upsample2d(x, kernel), reference)


def test_downsample_keeps_constant_and_halves() -> None:
    x = torch.full((2, 3, 16, 16), -0.3)
    kernel = make_fir_kernel()
    y = downsample2d(x, kernel)
    assert y.shape == (2, 3, 8, 8)
    torch.testing.assert_close(y[..., 1:-1, 1:-1], torch.full_like(y[..., 1:-1, 1:-1], -0.3))
    z = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(downsample2d(z, kernel), fir_filter(z, kernel, (1, 1))[..., ::2, ::2])


def _modconv_with_varied_styles(up: int, demodulate: bool, kernel_size: int = 3) -> ModulatedConv2d:
    conv = ModulatedConv2d(16, 24, w_dim=8, kernel_size=kernel_size, demodulate=demodulate, up=up)
    with torch.no_grad():
        conv.affine.bias.normal_(1.0, 0.5)  # styles differ per channel and per sample
    return conv


def test_demodulation_keeps_unit_variance() -> None:
    conv = ModulatedConv2d(64, 64, w_dim=16, kernel_size=3)
    with torch.no_grad():
        conv.affine.bias.normal_(1.0, 0.5)
    x = torch.randn(8, 64, 24, 24)
    w = torch.randn(8, 16) * 3
    out = conv(x, w)[..., 1:-1, 1:-1]  # the zero-padded border has less support
    per_channel_var = out.var(dim=(0, 2, 3))
    assert out.var().item() == pytest.approx(1.0, abs=0.06)
    assert per_channel_var.min().item() > 0.8 and per_channel_var.max().item() < 1.2
    # without demodulation the output variance follows the styles and is far from 1
    conv.demodulate = False
    assert abs(conv(x, w).var().item() - 1.0) > 0.2


def test_demod_coefficients_match_eq3() -> None:
    conv = _modconv_with_varied_styles(up=1, demodulate=True)
    styles = conv.styles(torch.randn(3, 8))
    weight = conv.weight[None] * styles[:, None, :, None, None]
    expected = torch.rsqrt(weight.square().sum(dim=[2, 3, 4]) + 1e-8)
    torch.testing.assert_close(conv.demod_coefficients(styles), expected)


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
def test_fused_equals_input_scaling(up: int, demodulate: bool) -> None:
    conv = _modconv_with_varied_styles(up, demodulate)
    x = torch.randn(3, 16, 8, 8, requires_grad=True)
    w = torch.randn(3, 8, requires_grad=True)
    fused = conv(x, w, fused=True)
    scaled = conv(x, w, fused=False)
    assert fused.shape == (3, 24, 8 * up, 8 * up)
    torch.testing.assert_close(fused, scaled, rtol=1e-4, atol=1e-5)
    grads_fused = torch.autograd.grad(fused.square().sum(), [x, w, conv.weight])
    grads_scaled = torch.autograd.grad(scaled.square().sum(), [x, w, conv.weight])
    for a, b in zip(grads_fused, grads_scaled):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_fused_modconv_channels_last() -> None:
    conv = _modconv_with_varied_styles(up=1, demodulate=True)
    x = torch.randn(2, 16, 8, 8)
    w = torch.randn(2, 8)
    reference = conv(x, w, fused=True)
    for fused in (True, False):
        out = conv(x.to(memory_format=torch.channels_last), w, fused=fused)
        torch.testing.assert_close(out, reference, rtol=1e-4, atol=1e-5)


def test_noise_injection_modes() -> None:
    layer = NoiseInjection(8)
    x = torch.zeros(2, 4, 8, 8)
    torch.testing.assert_close(layer(x, "random"), x)  # strength starts at 0
    with torch.no_grad():
        layer.strength.fill_(0.5)
    const = layer(x, "const")
    torch.testing.assert_close(const, layer(x, "const"))
    torch.testing.assert_close(const[0, 0], 0.5 * layer.noise_const[0, 0])
    torch.testing.assert_close(layer(x, "none"), x)
    random = layer(x, "random")
    assert not torch.allclose(random[0], random[1])  # per-sample noise
    explicit = torch.ones(2, 1, 8, 8)
    torch.testing.assert_close(layer(x, "none", explicit), torch.full_like(x, 0.5))
    with pytest.raises(AssertionError, match="noise map must be"):
        layer(x, "none", torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="noise_mode"):
        layer(x, "bogus")


@pytest.mark.parametrize(("batch", "group"), [(8, 4), (3, 3), (6, 3), (5, 1), (1, 1)])
def test_minibatch_std_groups(batch: int, group: int) -> None:
    mbstd = MinibatchStd(group_size=4, num_channels=1)
    assert mbstd.group_for(batch) == group
    x = torch.randn(batch, 5, 4, 4)
    y = mbstd(x)
    assert y.shape == (batch, 6, 4, 4)
    torch.testing.assert_close(y[:, :5], x)
    # reference: sample n is in group n % (batch // group); std over the group, averaged over C, H, W
    groups = batch // group
    for n in range(batch):
        members = x[torch.arange(n % groups, batch, groups)]
        expected = (members.var(dim=0, unbiased=False) + 1e-8).sqrt().mean()
        torch.testing.assert_close(y[n, 5], torch.full((4, 4), expected.item()))


@pytest.mark.parametrize("taps", [(1, 3, 3, 1), (1, 2, 5, 3)])
def test_composed_resampling_equals_separate_with_gradients(taps: tuple[int, ...]) -> None:
    """The filter folded into the 3x3 / 1x1 weights ("composed") equals blur + conv ("separate"), in the
    outputs and the gradients, for D's down path (3x3 and skip 1x1) and G's up path; asymmetric taps
    catch a flipped kernel."""
    from mammo_anogan.models.stylegan2 import layers

    torch.manual_seed(0)
    down = Conv2dLayer(8, 16, 3, activation="lrelu", down=2, fir_taps=taps)
    skip = Conv2dLayer(8, 16, 1, bias=False, down=2, fir_taps=taps)
    up = ModulatedConv2d(8, 16, 12, 3, up=2, fir_taps=taps)
    x, w = torch.randn(2, 8, 16, 16), torch.randn(2, 12)
    results = []
    try:
        for mode in layers.RESAMPLING_MODES:
            layers.set_resampling_mode(mode)
            xr = x.clone().requires_grad_(True)
            outputs = (down(xr), skip(xr), up(xr, w, fused=False))
            loss = sum(out.square().sum() for out in outputs)
            results.append((outputs, torch.autograd.grad(loss, [xr, down.weight, skip.weight, up.weight])))
    finally:
        layers.set_resampling_mode("composed")
    (out_a, grad_a), (out_b, grad_b) = results
    assert layers.resampling_mode() == "composed"  # the default
    assert [o.shape for o in out_a] == [(2, 16, 8, 8), (2, 16, 8, 8), (2, 16, 32, 32)]
    for a, b in zip(out_a + grad_a, out_b + grad_b):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max()))
    with pytest.raises(ValueError, match="resampling mode"):
        layers.set_resampling_mode("fft")


def test_one_channel_gemm_forms_equal_convolutions() -> None:
    """fromRGB of a 1-channel image and toRGB to one channel run as GEMMs; same numbers as convs."""
    torch.manual_seed(0)
    from_rgb = Conv2dLayer(1, 16, 1, activation="lrelu")
    to_rgb = ModulatedConv2d(16, 1, 12, 1, demodulate=False)
    img, feats, w = torch.randn(2, 1, 8, 8), torch.randn(2, 16, 8, 8), torch.randn(2, 12)
    expected = bias_act(F.conv2d(img, from_rgb.weight * from_rgb.weight_gain), from_rgb.bias, "lrelu")
    torch.testing.assert_close(from_rgb(img), expected)
    styles = to_rgb.styles(w)
    expected = F.conv2d(feats * styles[:, :, None, None], to_rgb.weight)
    for fused in (True, False):
        torch.testing.assert_close(to_rgb(feats, w, fused=fused), expected, rtol=1e-5, atol=1e-6)
    cl = feats.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(to_rgb(cl, w), expected, rtol=1e-5, atol=1e-6)
