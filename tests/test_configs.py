"""Every experiment composes with train.yaml (and score.yaml) and instantiates its model."""

from __future__ import annotations

from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import mammo_anogan.utils.config  # noqa: F401  (resolvers first)
from mammo_anogan.models.gan_module import StyleGAN2Module
from mammo_anogan.utils.config import CONFIG_DIR

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def missing_group_overrides(config_name: str = "train") -> list[str]:
    """``~logger`` / ``~callbacks`` while those config groups are not written yet."""
    overrides = []
    for group, default in (("logger", "wandb"), ("callbacks", "default")):
        if not (CONFIG_DIR / group / f"{default}.yaml").is_file() and config_name == "train":
            overrides.append(f"~{group}")
    return overrides


def compose_train(overrides: list[str]) -> object:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=missing_group_overrides() + overrides)


def test_expected_experiments_exist() -> None:
    assert {"demo", "paper_cc512", "mias256"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_builds_its_model(experiment: str) -> None:
    # The large presets are built at 64 px: same code path, a fraction of the memory and time.
    cfg = compose_train([f"+experiment={experiment}", "data.source=/nonexistent", "data.resolution=64"])
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    assert isinstance(model, StyleGAN2Module)
    assert model.G.img_resolution == 64 and model.G.img_channels == 1
    assert model.D.config["img_resolution"] == 64
    # Hyper-parameters are plain containers (checkpoints load with weights_only=True).
    assert isinstance(model.hparams["generator"], dict)
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"


def test_paper_and_demo_settings() -> None:
    paper = compose_train(["+experiment=paper_cc512", "data.source=/x"])
    assert paper.data.resolution == 512 and list(paper.data.views) == ["CC"]
    assert paper.model.optimizer.g_lr == paper.model.optimizer.d_lr == 0.001
    assert paper.data.loader.batch_size * paper.trainer.devices == 8
    assert paper.model.generator.channel_base == paper.model.discriminator.channel_base == 32768
    assert paper.trainer.strategy._target_ == "mammo_anogan.train.GradientSyncDDPStrategy"
    mias = compose_train(["+experiment=mias256"])
    assert mias.data.reader == "mias" and mias.data.resolution == 256 and mias.model.ada.enabled is True
    assert mias.data.loader.batch_size == 16
    demo = compose_train(["+experiment=demo"])
    assert demo.data.resolution == demo.model.generator.img_resolution == 64
    assert demo.model.generator.mapping_layers == 2 and demo.trainer.accelerator == "cpu"
    assert demo.data.name == "demo" and demo.data.synthetic.lesion_free_twins is True
    assert demo.projection.init == "encoder" and demo.score.method == "auto"
    # Defaults: Adam betas as floats, lazy intervals, ADA auto.
    base = compose_train([])
    assert OmegaConf.to_container(base.model.optimizer.betas) == [0.0, 0.99]
    assert all(isinstance(b, float) for b in base.model.optimizer.betas)
    assert base.model.loss.r1_interval == 16 and base.model.loss.pl_interval == 4
    assert base.model.ada.enabled == "auto" and base.ckpt_path is None


def test_multirun_and_optuna_search_compose() -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="train",
            overrides=missing_group_overrides() + ["+experiment=tiny", "hparams_search=optuna"],
            return_hydra_config=True,
        )
    assert cfg.optimized_metric == "fidelity/frd"
    assert cfg.hydra.sweeper.direction == "minimize"
    assert "model.r1_gamma" in cfg.hydra.sweeper.params


@pytest.mark.skipif(not (CONFIG_DIR / "score.yaml").is_file(), reason="no score.yaml")
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_with_score_config(experiment: str, tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            config_name="score",
            overrides=[
                f"+experiment={experiment}",
                f"generator={tmp_path / 'generator.pt'}",
                "data.source=/x",
            ],
        )
    assert cfg.data.resolution == cfg.model.generator.img_resolution


def test_chunked_mias256_checkpoint_fits_the_64_mib_transfer_limit() -> None:
    """mias256_chunked exists so last.ckpt can travel between 10-minute GPU chunks (<= 64 MiB)."""
    cfg = compose_train(["+experiment=mias256_chunked", "data.source=/nonexistent"])
    assert cfg.data.resolution == 256 and cfg.data.split.seed == 5  # everything else is mias256
    model = hydra.utils.instantiate(cfg.model, _convert_="all")
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())  # G, D, G_ema
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    checkpoint_bytes = weights + 2 * trainable  # + Adam's two moments per trainable parameter
    assert checkpoint_bytes < 48 * 2**20
    full = compose_train(["+experiment=mias256", "data.source=/nonexistent"])
    assert full.model.generator.channel_max > cfg.model.generator.channel_max
