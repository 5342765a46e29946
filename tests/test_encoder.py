"""The f-AnoGAN encoder: network, export, izi_f training step and the projector's encoder start."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mammo_anogan.anomaly.losses import MseLoss
from mammo_anogan.anomaly.projector import ProjectionSettings, Projector, start_indices
from mammo_anogan.models.encoder import Encoder, encoder_for_generator, load_encoder, save_encoder
from mammo_anogan.models.stylegan2 import Discriminator, Generator, save_network
from mammo_anogan.training.encoder_module import EncoderModule, encoder_settings
from mammo_anogan.utils.errors import ConfigError, UserError

RES = 16


@pytest.fixture(scope="module")
def networks() -> tuple[Generator, Discriminator]:
    torch.manual_seed(0)
    generator = Generator(
        z_dim=16, w_dim=16, img_resolution=RES, channel_base=128, channel_max=16, mapping_layers=1
    )
    generator.mapping.w_avg.normal_()  # a non-trivial centre of W
    discriminator = Discriminator(img_resolution=RES, channel_base=128, channel_max=16)
    return generator.eval(), discriminator.eval()


def _images(count: int = 4) -> torch.Tensor:
    return torch.rand(count, 1, RES, RES, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_untrained_encoder_starts_at_w_avg_and_has_the_generator_shape(networks) -> None:
    generator, _ = networks
    encoder = encoder_for_generator(generator, channel_base=128, channel_max=16, generator_hash="abc")
    ws = encoder(_images())
    assert ws.shape == (4, generator.num_ws, generator.w_dim)
    assert torch.allclose(ws, generator.mapping.w_avg.expand_as(ws))
    assert encoder.config["generator_hash"] == "abc" and encoder.config["num_ws"] == generator.num_ws
    with pytest.raises(ConfigError):
        Encoder(img_resolution=4, img_channels=1, num_ws=2, w_dim=8)


def test_export_round_trip_and_refusals(networks, tmp_path: Path) -> None:
    generator, _ = networks
    encoder = encoder_for_generator(generator, channel_base=128, channel_max=16)
    with torch.no_grad():
        encoder.head[-1].bias.normal_()
    path = save_encoder(encoder, tmp_path / "encoder.pt")
    payload = torch.load(path, weights_only=True)  # plain weights only
    assert payload["kind"] == "encoder"
    loaded = load_encoder(path)
    assert torch.equal(loaded(_images()), encoder(_images()))
    save_network(generator, tmp_path / "generator.pt")
    with pytest.raises(UserError, match="not an exported encoder"):
        load_encoder(tmp_path / "generator.pt")
    with pytest.raises(UserError, match="not found"):
        load_encoder(tmp_path / "missing.pt")
    with torch.no_grad():
        encoder.head[-1].bias[0] = float("nan")
    with pytest.raises(Exception, match="non-finite|NaN|nan"):
        save_encoder(encoder, tmp_path / "bad.pt")


def test_izi_f_training_lowers_the_loss_and_leaves_g_and_d_alone(networks) -> None:
    generator, discriminator = networks
    torch.manual_seed(0)
    encoder = encoder_for_generator(generator, channel_base=128, channel_max=16)
    module = EncoderModule(encoder, generator, discriminator, {"lr": 0.01, "perceptual": "false"})
    before_g = {k: v.clone() for k, v in generator.state_dict().items()}
    targets = _images(8)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=0.01)
    first = module.loss_terms(targets)
    assert set(first) == {"pixel", "feature", "loss"}
    first = {name: value.detach() for name, value in first.items()}
    assert float(first["loss"]) == pytest.approx(float(first["pixel"] + first["feature"]), rel=1e-5)
    for _ in range(15):
        loss = module.loss_terms(targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(module.loss_terms(targets)["loss"]) < 0.8 * float(first["loss"])
    assert all(torch.equal(v, before_g[k]) for k, v in generator.state_dict().items())
    assert not any(p.requires_grad for p in generator.parameters())
    assert not any(p.grad is not None for p in discriminator.parameters())


def test_settings_are_checked() -> None:
    assert encoder_settings({"total_kimg": 2})["pixel_norm"] == "l2"
    with pytest.raises(ConfigError, match="unknown key"):
        encoder_settings({"learning_rate": 1})
    with pytest.raises(ConfigError, match="perceptual"):
        encoder_settings({"perceptual": "maybe"})
    with pytest.raises(ConfigError, match="total_kimg"):
        encoder_settings({"total_kimg": 0})


def test_one_pass_projection_is_g_of_e(networks) -> None:
    generator, _ = networks
    encoder = encoder_for_generator(generator, channel_base=128, channel_max=16)
    with torch.no_grad():
        encoder.head[-1].bias.normal_(std=0.5)
    images = _images(3)
    settings = ProjectionSettings(init="encoder", steps=0, space="w_plus", w_std_samples=100)
    with torch.no_grad():
        codes = encoder(images)
        expected = generator.synthesis(codes, noise_mode="const", fused_modconv=False)
    result = Projector(generator, MseLoss(), settings).project(images, codes)
    assert result.projections.shape == (3, 1, 1, RES, RES)
    assert torch.allclose(result.projections[:, 0], expected, atol=1e-5)
    assert torch.allclose(result.latents[:, 0], codes)


def test_encoder_plus_seeds_adds_the_encoder_start_to_the_seeds(networks) -> None:
    generator, _ = networks
    encoder = encoder_for_generator(generator, channel_base=128, channel_max=16)
    images = _images(2)
    codes = encoder(images).detach()
    both = ProjectionSettings(init="encoder+seeds", num_seeds=2, steps=2, space="w_plus", w_std_samples=100)
    seeds = ProjectionSettings(init="seeds", num_seeds=2, steps=2, space="w_plus", w_std_samples=100)
    assert start_indices(both).tolist() == [-1, 0, 1]
    combined = Projector(generator, MseLoss(), both).project(images, codes)
    alone = Projector(generator, MseLoss(), seeds).project(images)
    assert combined.projections.shape[1] == 3
    # the seeded starts are the same seeds as without the encoder (same keys, same trajectory)
    assert torch.allclose(combined.projections[:, 1:], alone.projections, atol=1e-5)
    with pytest.raises(ValueError, match="start_ws"):
        Projector(generator, MseLoss(), both).project(images)


def test_encoder_plus_jitter_restarts_around_the_encoder_code_and_nest_in_n(networks) -> None:
    generator, _ = networks
    encoder = encoder_for_generator(generator, channel_base=128, channel_max=16)
    images = _images(2)
    codes = encoder(images).detach()

    def starts(num_seeds: int, jitter: float = 0.25):
        settings = ProjectionSettings(
            init="encoder+jitter",
            num_seeds=num_seeds,
            steps=0,
            space="w_plus",
            w_std_samples=200,
            init_jitter=jitter,
        )
        return Projector(generator, MseLoss(), settings).project(images, codes).latents

    jitter_settings = ProjectionSettings(init="encoder+jitter", num_seeds=3, space="w_plus")
    assert start_indices(jitter_settings).tolist() == [0, 1, 2]
    four = starts(4)
    assert four.shape == (2, 4, generator.num_ws, generator.w_dim)
    # start 0 is the encoder's code itself (N = 1 is the encoder start)
    assert torch.allclose(four[:, 0], codes, atol=1e-6)
    # restarts are offsets of about init_jitter * w_std per layer, the same offset for every image
    from mammo_anogan.anomaly.projector import w_statistics

    _, w_std = w_statistics(generator, 200)
    offsets = four[:, 1:] - codes[:, None]
    lengths = offsets.norm(dim=-1)
    assert torch.all(lengths > 0)
    assert abs(float(lengths.mean()) / (0.25 * float(w_std)) - 1.0) < 0.3
    assert torch.allclose(offsets[0], offsets[1], atol=1e-6)
    # nested: the first 2 of 4 starts are the 2-start projection (derive N=1, 9 from N=16)
    assert torch.allclose(starts(2), four[:, :2], atol=1e-6)
    # no jitter: every start is the encoder's code
    assert torch.allclose(starts(3, jitter=0.0), codes[:, None].expand(-1, 3, -1, -1), atol=1e-6)


def test_encoder_start_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="w_plus"):
        ProjectionSettings(init="encoder", space="w")
    with pytest.raises(ConfigError, match="steps"):
        ProjectionSettings(init="seeds", steps=0)
    with pytest.raises(ConfigError, match="init"):
        ProjectionSettings(init="nearest", space="w_plus")


@pytest.mark.parametrize(
    "experiment",
    sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "conf" / "experiment").glob("*.yaml")),
)
def test_every_experiment_composes_with_train_encoder(experiment: str, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir

    import mammo_anogan.utils.config  # noqa: F401

    config_dir = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(str(config_dir), version_base="1.3"):
        cfg = compose(
            "train_encoder",
            overrides=[
                f"+experiment={experiment}",
                f"generator={tmp_path / 'generator.pt'}",
                "data.source=/x",
            ],
        )
    settings = encoder_settings(dict(cfg.encoder_train))
    assert settings["total_kimg"] > 0 and cfg.ckpt_path is None


@pytest.mark.parametrize("init", ["encoder", "encoder+jitter"])
def test_encoder_scoring_under_bf16_autocast_keeps_fp32_codes_and_maps(networks, init: str) -> None:
    """The GPU path's precision on the CPU: under bf16 autocast the encoder's W+ codes (and the
    jittered restarts around them), the W+ projection and the reconstruction stay fp32 and within
    bf16 rounding of the fp32 run."""
    from mammo_anogan.anomaly.module import ProjectionModule

    generator, _ = networks
    encoder = encoder_for_generator(generator, channel_base=128, channel_max=16)
    settings = ProjectionSettings(init=init, num_seeds=3, steps=3, space="w_plus", lr=0.01, w_std_samples=100)
    module = ProjectionModule(generator, MseLoss(), settings, encoder=encoder)
    images = _images(3)
    reference = module.reconstruct(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = module.reconstruct(images)
    assert low.latents.dtype == low.projections.dtype == torch.float32
    assert torch.isfinite(low.projections).all() and bool(low.valid.all())
    assert (low.latents - reference.latents).abs().max() < 0.05 * reference.latents.abs().max()
    assert (low.projections - reference.projections).abs().max() < 0.1
    # the anomaly-preserving noise refinement on top: also fp32 and close to its fp32 run
    from mammo_anogan.anomaly.refine import RefineSettings

    refine = RefineSettings(enabled=True, steps=2, lr=0.05)
    refined = ProjectionModule(generator, MseLoss(), settings, encoder=encoder, refine=refine)
    reference = refined.reconstruct(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = refined.reconstruct(images)
    assert low.projections.dtype == torch.float32 and torch.isfinite(low.projections).all()
    assert (low.projections - reference.projections).abs().max() < 0.1
