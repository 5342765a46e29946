"""The mini-MIAS model committed in experiments/mias/model: loadable, consistent, small, re-scorable.

The round-2 study (experiments/mias/round2/README.md) ships the scored generator, discriminator and
encoder (weights only) with the validation threshold, so anyone with mini-MIAS re-scores the table
without training. These checks keep the four files usable together: a threshold is only valid on
the score scale of exactly these networks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from mammo_anogan.models.encoder import load_encoder
from mammo_anogan.models.stylegan2.export import load_discriminator, load_generator
from mammo_anogan.utils.fingerprint import file_digest

MODEL = Path(__file__).resolve().parents[1] / "experiments" / "mias" / "model"
FILES = ("generator.pt", "discriminator.pt", "encoder.pt", "threshold.json")


def test_the_four_files_are_there_and_fit_in_8_mib() -> None:
    sizes = {name: (MODEL / name).stat().st_size for name in FILES}
    assert sum(sizes[name] for name in FILES[:3]) <= 8 * 2**20, sizes


def test_networks_load_weights_only_and_fit_together() -> None:
    generator = load_generator(MODEL / "generator.pt")
    discriminator = load_discriminator(MODEL / "discriminator.pt")
    encoder = load_encoder(MODEL / "encoder.pt")
    assert generator.img_resolution == discriminator.img_resolution == 128
    images = torch.zeros(2, 1, 128, 128)
    with torch.no_grad():
        codes = encoder(images)
        assert codes.shape == (2, generator.num_ws, generator.w_dim)
        out = generator.synthesis(codes, noise_mode="const")
        assert out.shape == (2, 1, 128, 128) and torch.isfinite(out).all()
        assert discriminator(out).shape == (2, 1)


def test_threshold_belongs_to_these_networks_and_was_fitted_on_validation() -> None:
    record = json.loads((MODEL / "threshold.json").read_text())
    values = record["fingerprint"]["values"]
    assert values["generator"] == file_digest(MODEL / "generator.pt")
    assert values["encoder"] == file_digest(MODEL / "encoder.pt")
    assert values["projection.init"] == "encoder+jitter"
    assert record["threshold_source"] == "validation_youden"
    assert record["score_method"] not in (None, "auto")  # the validation pick is recorded
    assert record["comparison"] == "malignant_vs_normal"
    assert isinstance(record["threshold"], float)


def test_rescore_command_reuses_the_threshold() -> None:
    """The README's re-score command: its config accepts the shipped threshold (same networks, settings)."""
    from hydra import compose, initialize_config_dir

    from mammo_anogan.run_state import check_threshold_record, threshold_fingerprint
    from mammo_anogan.score import projection_settings

    config_dir = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(str(config_dir), version_base="1.3"):
        cfg = compose(
            "score",
            overrides=[
                "+experiment=mias128_cpu",
                f"generator={MODEL / 'generator.pt'}",
                f"encoder={MODEL / 'encoder.pt'}",
                f"score.threshold_from={MODEL / 'threshold.json'}",
            ],
        )
    record = json.loads((MODEL / "threshold.json").read_text())
    cfg.score.method = record["score_method"]
    expected = threshold_fingerprint(cfg, projection_settings(cfg.projection))
    check_threshold_record(record, expected, str(MODEL / "threshold.json"))
