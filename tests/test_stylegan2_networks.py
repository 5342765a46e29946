"""StyleGAN2 generator / discriminator: shapes, truncation, noise, style mixing, export, autocast."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pytest
import torch

from mammo_anogan.models.stylegan2 import (
    Discriminator,
    Generator,
    load_discriminator,
    load_generator,
    save_network,
)
from mammo_anogan.utils.errors import ConfigError, UserError

TINY = {"z_dim": 32, "w_dim": 32, "channel_base": 256, "channel_max": 32}


def tiny_generator(resolution: int = 32, img_channels: int = 1, **overrides: object) -> Generator:
    kwargs = {**TINY, "img_resolution": resolution, "img_channels": img_channels, "mapping_layers": 2}
    kwargs.update(overrides)
    return Generator(**kwargs)


def tiny_discriminator(resolution: int = 32, img_channels: int = 1, **overrides: object) -> Discriminator:
    kwargs = {
        "channel_base": 256,
        "channel_max": 32,
        "img_resolution": resolution,
        "img_channels": img_channels,
    }
    kwargs.update(overrides)
    return Discriminator(**kwargs)


def with_noise_strength(G: Generator, value: float = 0.5) -> Generator:
    """Noise strengths start at 0 (no effect); give them a value so noise tests can see the noise."""
    with torch.no_grad():
        for layer in G.synthesis._noise_layers:
            layer.noise.strength.fill_(value)
    return G


@pytest.mark.parametrize(
    ("resolution", "img_channels", "channel_base", "channel_max"),
    [(32, 1, 256, 32), (64, 3, 256, 32), (256, 1, 512, 8)],
)
def test_generator_and_discriminator_shapes(
    resolution: int, img_channels: int, channel_base: int, channel_max: int
) -> None:
    kwargs = {"channel_base": channel_base, "channel_max": channel_max}
    G = tiny_generator(resolution, img_channels, **kwargs)
    D = tiny_discriminator(resolution, img_channels, **kwargs)
    assert G.num_ws == 2 * int(math.log2(resolution)) - 2
    z = torch.randn(2, 32)
    ws = G.mapping(z)
    assert ws.shape == (2, G.num_ws, 32)
    img = G.synthesis(ws)
    assert img.shape == (2, img_channels, resolution, resolution)
    assert torch.isfinite(img).all()
    logits, feats = D(img, return_features=True)
    assert logits.shape == (2, 1)
    # one residual block per resolution from R down to 8, each halving: R/2 ... 4
    assert [f.shape[-1] for f in feats] == [
        resolution // 2**i for i in range(1, int(math.log2(resolution)) - 1)
    ]
    assert feats[-1].shape == (2, min(channel_base // 4, channel_max), 4, 4)
    torch.testing.assert_close(D(img), logits)


def test_channel_counts_follow_channel_base() -> None:
    G = tiny_generator(64)
    assert [block.out_channels for block in G.synthesis.blocks] == [32, 32, 16, 8, 4]
    assert G.synthesis.blocks[0].const.shape == (32, 4, 4)


def test_noise_shapes_in_layer_order() -> None:
    G = tiny_generator(32)
    assert G.synthesis.noise_shapes == [(1, 1, 4, 4)] + [(1, 1, r, r) for r in (8, 8, 16, 16, 32, 32)]


def test_mapping_normalises_z_and_updates_w_avg() -> None:
    G = tiny_generator(32)
    z = torch.randn(4, 32)
    torch.testing.assert_close(G.mapping(z), G.mapping(z * 7.0))  # 2nd-moment normalisation
    assert torch.count_nonzero(G.mapping.w_avg) == 0
    ws = G.mapping(z, update_w_avg=True)
    torch.testing.assert_close(G.mapping.w_avg, 0.005 * ws[:, 0].mean(dim=0))
    torch.testing.assert_close(ws[:, 0], ws[:, -1])  # broadcast to all layers


def test_truncation_psi_zero_gives_w_avg_image() -> None:
    G = tiny_generator(32).eval()
    G.mapping(torch.randn(64, 32), update_w_avg=True)
    z = torch.randn(3, 32)
    img = G(z, truncation_psi=0.0, noise_mode="const")
    w_avg_ws = G.mapping.w_avg.expand(1, G.num_ws, -1)
    expected = G.synthesis(w_avg_ws, noise_mode="const").expand(3, -1, -1, -1)
    torch.testing.assert_close(img, expected, rtol=1e-5, atol=1e-5)


def test_truncation_cutoff_only_touches_first_layers() -> None:
    G = tiny_generator(32)
    G.mapping(torch.randn(64, 32), update_w_avg=True)
    z = torch.randn(2, 32)
    full = G.mapping(z)
    cut = G.mapping(z, truncation_psi=0.5, truncation_cutoff=3)
    torch.testing.assert_close(cut[:, 3:], full[:, 3:])
    torch.testing.assert_close(cut[:, :3], G.mapping.w_avg + 0.5 * (full[:, :3] - G.mapping.w_avg))


def test_noise_modes() -> None:
    G = with_noise_strength(tiny_generator(32).eval())
    z = torch.randn(2, 32)
    const_a = G(z, noise_mode="const")
    torch.testing.assert_close(const_a, G(z, noise_mode="const"))
    random_a, random_b = G(z, noise_mode="random"), G(z, noise_mode="random")
    assert (random_a - random_b).abs().max() > 1e-3
    none_img = G(z, noise_mode="none")
    assert (none_img - const_a).abs().max() > 1e-3
    with pytest.raises(ValueError, match="noise_mode"):
        G(z, noise_mode="sometimes")


def test_explicit_noise_overrides_mode() -> None:
    G = with_noise_strength(tiny_generator(32).eval())
    ws = G.mapping(torch.randn(2, 32))
    const_noise = G.synthesis.const_noise()
    assert [tuple(n.shape) for n in const_noise] == G.synthesis.noise_shapes
    const_img = G.synthesis(ws, noise_mode="const")
    torch.testing.assert_close(G.synthesis(ws, noise_mode="random", noise=const_noise), const_img)
    per_sample = [torch.randn(2, *shape[1:]) for shape in G.synthesis.noise_shapes]
    out = G.synthesis(ws, noise=per_sample)
    assert out.shape == (2, 1, 32, 32)
    assert (out - const_img).abs().max() > 1e-3
    # sample 0 only depends on its own noise maps
    single = G.synthesis(ws[:1], noise=[n[:1] for n in per_sample])
    torch.testing.assert_close(out[:1], single, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="list of 7 tensors"):
        G.synthesis(ws, noise=per_sample[:-1])


def test_gradients_reach_ws_and_noise() -> None:
    G = with_noise_strength(tiny_generator(32).eval())
    ws = G.mapping(torch.randn(2, 32)).detach().requires_grad_(True)
    noise = [n.requires_grad_(True) for n in G.synthesis.const_noise()]
    G.synthesis(ws, noise=noise).square().mean().backward()
    assert ws.grad is not None and ws.grad.abs().sum() > 0
    assert all(n.grad is not None and n.grad.abs().sum() > 0 for n in noise)


def test_fused_and_input_scaling_generators_agree() -> None:
    G = tiny_generator(32)
    with torch.no_grad():
        for block in G.synthesis.blocks:
            block.torgb.conv.affine.bias.normal_(1.0, 0.3)
    ws = G.mapping(torch.randn(3, 32))
    fused = G.synthesis(ws, noise_mode="const", fused_modconv=True)
    scaled = G.synthesis(ws, noise_mode="const", fused_modconv=False)
    torch.testing.assert_close(fused, scaled, rtol=1e-4, atol=1e-5)


def _layer_source(ws: torch.Tensor, ws1: torch.Tensor, ws2: torch.Tensor) -> torch.Tensor:
    """1 where a style row came from z1, 2 where from z2 (rows of ws1/ws2 differ)."""
    from_1 = (ws == ws1).all(dim=-1)
    from_2 = (ws == ws2).all(dim=-1)
    assert bool((from_1 | from_2).all())
    return torch.where(from_1, 1, 2)


def test_style_mixing_crossover() -> None:
    G = tiny_generator(32)
    z1, z2 = torch.randn(64, 32), torch.randn(64, 32)
    ws1, ws2 = G.mapping(z1), G.mapping(z2)
    source = _layer_source(G.mix_styles(z1, z2, prob=1.0), ws1, ws2)
    crossover = (source == 1).sum(dim=1)
    # z1 for layers [0, c), z2 for [c, num_ws), with 1 <= c < num_ws chosen per sample
    layer = torch.arange(G.num_ws)
    torch.testing.assert_close(source, torch.where(layer[None] < crossover[:, None], 1, 2))
    assert crossover.min() >= 1 and crossover.max() <= G.num_ws - 1
    assert len(crossover.unique()) >= 4  # per-sample, roughly uniform crossover
    assert (_layer_source(G.mix_styles(z1, z2, prob=0.0), ws1, ws2) == 1).all()


def test_style_mixing_probability() -> None:
    G = tiny_generator(32)
    z1, z2 = torch.randn(400, 32), torch.randn(400, 32)
    source = _layer_source(G.mix_styles(z1, z2, prob=0.5), G.mapping(z1), G.mapping(z2))
    mixed_fraction = (source == 2).any(dim=1).float().mean().item()
    assert mixed_fraction == pytest.approx(0.5, abs=0.08)


def test_mix_styles_updates_w_avg_only_when_asked() -> None:
    G = tiny_generator(32)
    z1, z2 = torch.randn(8, 32), torch.randn(8, 32)
    G.mix_styles(z1, z2, 0.9)
    assert torch.count_nonzero(G.mapping.w_avg) == 0
    G.mix_styles(z1, z2, 0.9, update_w_avg=True)
    torch.testing.assert_close(G.mapping.w_avg, 0.005 * G.mapping(z1)[:, 0].mean(dim=0))


@pytest.mark.parametrize("batch", [1, 3, 6, 8])
def test_discriminator_any_batch_size(batch: int) -> None:
    D = tiny_discriminator(32)
    assert D.epilogue.conv.in_channels == D.epilogue.conv.out_channels + 1  # mbstd adds one channel
    logits = D(torch.randn(batch, 1, 32, 32))
    assert logits.shape == (batch, 1)
    assert torch.isfinite(logits).all()


def test_discriminator_rejects_wrong_shape() -> None:
    with pytest.raises(AssertionError, match=r"expects \[B, 1, 32, 32\]"):
        tiny_discriminator(32)(torch.randn(2, 1, 64, 64))


def test_bad_resolution_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="power of two"):
        tiny_generator(48)
    with pytest.raises(ConfigError, match="power of two"):
        tiny_discriminator(100)


def test_config_rebuilds_same_architecture() -> None:
    G = tiny_generator(32, conv_clamp=256)
    rebuilt = Generator(**json.loads(json.dumps(G.config)))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in G.state_dict().items()
    }
    D = tiny_discriminator(32)
    assert Discriminator(**json.loads(json.dumps(D.config))).config == D.config


def test_export_round_trip(tmp_path: Path) -> None:
    G = with_noise_strength(tiny_generator(32))
    G.mapping(torch.randn(16, 32), update_w_avg=True)
    D = tiny_discriminator(32)
    save_network(G, tmp_path / "generator.pt")
    save_network(D, tmp_path / "discriminator.pt")
    G2, D2 = load_generator(tmp_path / "generator.pt"), load_discriminator(tmp_path / "discriminator.pt")
    assert not G2.training and not D2.training
    assert G2.config == G.config
    z = torch.randn(2, 32)
    G.eval()
    img = G(z, truncation_psi=0.7, noise_mode="const")
    torch.testing.assert_close(G2(z, truncation_psi=0.7, noise_mode="const"), img, rtol=0, atol=0)
    torch.testing.assert_close(D2(img), D(img), rtol=0, atol=0)
    with pytest.raises(UserError, match="holds a discriminator"):
        load_generator(tmp_path / "discriminator.pt")


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pwned",))


def test_malicious_checkpoint_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "generator.pt"
    torch.save({"config": {}, "state_dict": {}, "payload": _RunsCode()}, path)
    with pytest.raises(UserError, match="refusing to load"):
        load_generator(path)
    assert "pwned" not in capsys.readouterr().out
    path.write_bytes(pickle.dumps({"config": {}}, protocol=2))
    with pytest.raises(UserError):
        load_generator(path)


def test_mismatched_weights_are_a_user_error(tmp_path: Path) -> None:
    G = tiny_generator(32)
    payload = {"kind": "generator", "config": {**G.config, "channel_max": 16}, "state_dict": G.state_dict()}
    torch.save(payload, tmp_path / "g.pt")
    with pytest.raises(UserError, match="do not match"):
        load_generator(tmp_path / "g.pt")


@pytest.mark.parametrize("fused", [True, False])
def test_bfloat16_autocast_on_cpu(fused: bool) -> None:
    G = tiny_generator(32, conv_clamp=256)
    D = tiny_discriminator(32, conv_clamp=256)
    z = torch.randn(3, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img = G(z, noise_mode="const", fused_modconv=fused)
        logits, feats = D(img, return_features=True)
    assert torch.isfinite(img).all() and torch.isfinite(logits).all()
    assert all(torch.isfinite(f).all() for f in feats)
    reference = G(z, noise_mode="const", fused_modconv=fused)
    assert (img.float() - reference).abs().mean() < 0.05 * reference.abs().mean() + 1e-3


def test_generator_training_step_updates_all_parameters() -> None:
    G, D = tiny_generator(32), tiny_discriminator(32)
    G.train()
    z = torch.randn(4, 32)
    loss = torch.nn.functional.softplus(-D(G.synthesis(G.mix_styles(z, torch.randn(4, 32), 0.9)))).mean()
    loss.backward()
    missing = [name for name, p in G.named_parameters() if p.grad is None]
    assert missing == []


def test_config_f_parameter_counts_match_published_stylegan2() -> None:
    """The 1024px config-f networks have the official parameter counts (built on 'meta': no memory)."""
    with torch.device("meta"):
        G = Generator(z_dim=512, w_dim=512, img_resolution=1024, img_channels=3, channel_base=32768)
        D = Discriminator(img_resolution=1024, img_channels=3, channel_base=32768)
    assert G.num_ws == 18
    assert sum(p.numel() for p in G.mapping.parameters()) == 2_101_248
    assert sum(p.numel() for p in G.parameters()) == 30_370_060
    assert sum(p.numel() for p in D.parameters()) == 29_012_513


def test_deepcopy_for_ema_keeps_noise_layers_separate() -> None:
    """G_ema is a deepcopy of G: its noise-layer bookkeeping must point at its own layers."""
    import copy

    G = tiny_generator(32).eval()
    G_ema = copy.deepcopy(G)
    z = torch.randn(2, 32)
    before = G(z, noise_mode="const")
    with_noise_strength(G_ema, 1.0)
    assert (G_ema(z, noise_mode="const") - before).abs().max() > 1e-3
    torch.testing.assert_close(G(z, noise_mode="const"), before)


def test_channels_last_networks_match() -> None:
    G, D = tiny_generator(32).eval(), tiny_discriminator(32).eval()
    z = torch.randn(2, 32)
    img = G(z, noise_mode="const", fused_modconv=False)
    logits = D(img)
    G_cl = G.to(memory_format=torch.channels_last)
    D_cl = D.to(memory_format=torch.channels_last)
    img_cl = G_cl(z, noise_mode="const", fused_modconv=False)
    torch.testing.assert_close(img_cl, img, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(D_cl(img.to(memory_format=torch.channels_last)), logits, rtol=1e-4, atol=1e-5)
