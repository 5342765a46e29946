"""Train the f-AnoGAN encoder of a trained generator: ``python -m mammo_anogan.train_encoder generator=PATH``.

A separate entry point (not a stage of ``train``) because the encoder is trained *after* the GAN, on
its frozen exported networks, and may be retrained with other settings without touching the GAN run
(f-AnoGAN's two-stage design). Hydra composes ``conf/train_encoder.yaml`` (data, trainer, logger and
the ``encoder_train`` block); the run trains on the normal training images of the prepared dataset for
``encoder_train.total_kimg`` thousand images and exports ``encoder.pt`` (weights only, loaded with
``weights_only=True``) into the run directory, plus ``reconstructions.png`` (images and ``G(E(x))``).

    python -m mammo_anogan.train_encoder +experiment=demo generator=RUN/generator.pt
    python -m mammo_anogan.train_encoder hydra.run.dir=ENC_RUN generator=... ckpt_path=last   (resume)

Scoring uses it with ``projection.init=encoder encoder=ENC_RUN/encoder.pt`` (``projection.steps=0``:
f-AnoGAN's one-pass score).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

import mammo_anogan.utils.config  # noqa: F401  (registers the resolvers before Hydra composes)
from mammo_anogan.config_schema import validate_data
from mammo_anogan.models.encoder import ENCODER_FILE, encoder_for_generator, save_encoder
from mammo_anogan.run_state import check_resume, encoder_training_fingerprint
from mammo_anogan.train import (
    CHECKPOINT_DIR,
    THIRD_PARTY_CONFIG_ERRORS,
    AtomicCheckpointIO,
    KimgCheckpoint,
    RunFingerprint,
    fit_trainer,
    instantiate_block,
    instantiate_loggers,
    resolve_ckpt_path,
    resolve_precision,
    run_dir_of,
)
from mammo_anogan.training.callbacks import KimgProgressBar, KimgStopping
from mammo_anogan.training.encoder_module import EncoderModule, encoder_settings
from mammo_anogan.training.preemption import PreemptionCheckpoint, stopped_by_preemption
from mammo_anogan.utils.errors import ConfigError, UserError, exit_on_user_error
from mammo_anogan.utils.io import remove_stale_temp_files
from mammo_anogan.utils.privacy import dataset_salt, save_sanitised_config

log = logging.getLogger(__name__)

RECONSTRUCTIONS_FILE = "reconstructions.png"


def load_networks(cfg: DictConfig) -> tuple[torch.nn.Module, torch.nn.Module | None, str]:
    """``(generator, discriminator or None, generator file hash)``; checks that they fit the data."""
    from mammo_anogan.anomaly.outputs import file_hash
    from mammo_anogan.models.stylegan2.export import load_discriminator, load_generator

    generator_path = cfg.get("generator")
    if generator_path in (None, "", "???") or not Path(str(generator_path)).is_file():
        raise UserError(f"generator={generator_path}: set it to an exported generator.pt")
    generator = load_generator(generator_path)
    if generator.img_resolution != int(cfg.data.resolution):
        raise UserError(
            f"generator {generator_path} makes {generator.img_resolution}px images but data.resolution="
            f"{cfg.data.resolution}: set data.resolution={generator.img_resolution} (and prepare it)"
        )
    discriminator = None
    if float(cfg.encoder_train.get("feature_weight", 1.0)) > 0:
        path = cfg.get("discriminator") or Path(str(generator_path)).with_name("discriminator.pt")
        if not Path(str(path)).is_file():
            raise UserError(
                f"encoder_train.feature_weight > 0 needs the discriminator: no file at {path} "
                "(set discriminator=PATH or encoder_train.feature_weight=0)"
            )
        discriminator = load_discriminator(path)
    return generator, discriminator, file_hash(generator_path)


def perceptual_network(settings: dict[str, Any]) -> torch.nn.Module | None:
    """LPIPS-VGG for the perceptual term: ``auto`` uses it when its weights load, ``true`` requires them."""
    mode = str(settings["perceptual"]).lower()
    if mode == "false" or float(settings["perceptual_weight"]) == 0:
        return None
    from mammo_anogan.anomaly.losses import build_lpips_network

    try:
        return build_lpips_network("vgg", settings.get("lpips_weights"))
    except (UserError, ImportError) as err:
        if mode == "true":  # the loader's own message names projection.* keys, not this run's
            given = settings.get("lpips_weights")
            if isinstance(err, ImportError):
                cause = f"the lpips package is missing ({err})"
            elif not given:
                cause = f"not in {Path(torch.hub.get_dir()) / 'checkpoints'} and not downloadable (offline?)"
            elif not Path(str(given)).expanduser().is_file():
                cause = f"no such file: {given}"
            else:
                cause = str(err).replace("projection.lpips_weights", "encoder_train.lpips_weights")
            raise UserError(
                f"encoder_train.perceptual=true needs LPIPS-VGG's ImageNet weights vgg16-397923af.pth: "
                f"{cause}; set encoder_train.lpips_weights=/path/to/vgg16-397923af.pth, or "
                "encoder_train.perceptual=auto to train without the perceptual term"
            ) from err
        log.info("encoder.perceptual=auto: no perceptual term (%s)", str(err).splitlines()[0])
        return None


class ReconstructionGrid(pl.Callback):
    """At the end of training, save ``reconstructions.png``: training images over ``G(E(x))``."""

    def __init__(self, path: Path, count: int = 8) -> None:
        self.path = path
        self.count = count

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from mammo_anogan.training.callbacks import image_grid, png_bytes
        from mammo_anogan.utils.io import atomic_write_bytes

        if not trainer.is_global_zero or trainer.datamodule is None:
            return
        dataset = trainer.datamodule.dataset("train")
        count = min(self.count, len(dataset))
        if count == 0:
            return
        batch = dataset.__getitems__(list(range(count)))
        images = batch["image"].to(pl_module.device)
        with torch.no_grad():
            _, recon = pl_module.reconstruct(images)
        grid = image_grid(torch.cat([images, recon.clamp(-1, 1)]).cpu(), nrow=count)
        atomic_write_bytes(self.path, png_bytes(grid))


def build_trainer(cfg: DictConfig, run_dir: Path, fitted: dict[str, Any] | None = None) -> pl.Trainer:
    """Kimg-scheduled checkpoints (``last.ckpt``), pre-emption, progress bar, atomic checkpoint IO.

    The ``trainer`` block is fitted to the machine first, as for ``train`` (a GPU preset on a CPU
    machine is one line naming ``trainer=cpu``).
    """
    checkpoint_cfg = OmegaConf.to_container(cfg.get("checkpoint") or {}, resolve=True)
    assert isinstance(checkpoint_cfg, dict)
    total_kimg = float(cfg.encoder_train.total_kimg)
    callbacks: list[pl.Callback] = [
        KimgCheckpoint(dirpath=str(run_dir / CHECKPOINT_DIR), **checkpoint_cfg),
        PreemptionCheckpoint(),
        KimgStopping(total_kimg),
        ReconstructionGrid(run_dir / RECONSTRUCTIONS_FILE),
    ]
    if bool(cfg.trainer.get("enable_progress_bar", True)):
        callbacks.append(KimgProgressBar(total_kimg=total_kimg))
    overrides = {
        **(fit_trainer(cfg) if fitted is None else fitted),
        "precision": resolve_precision(cfg.trainer),
        "max_epochs": -1,
        "max_steps": -1,
        "default_root_dir": str(run_dir),
        "callbacks": callbacks,
        "logger": instantiate_loggers(cfg),
        "plugins": [AtomicCheckpointIO()],
    }
    # _convert_="partial": plain lists for callbacks/plugins (Lightning < 2.6 wraps a ListConfig in a list)
    return instantiate_block(
        cfg.trainer, "trainer", THIRD_PARTY_CONFIG_ERRORS, _convert_="partial", **overrides
    )


def train_encoder(cfg: DictConfig) -> Path | None:
    """Train and export the encoder; returns the path of ``encoder.pt`` (None when pre-empted)."""
    from mammo_anogan.data.datamodule import MammoDataModule

    validate_data(cfg)
    fitted = fit_trainer(cfg)  # before any data or file work
    settings = encoder_settings(OmegaConf.to_container(cfg.encoder_train, resolve=True))  # type: ignore[arg-type]
    run_dir = run_dir_of(cfg)
    pl.seed_everything(int(cfg.get("seed", 0)), workers=True)
    dataset_dir = Path(str(cfg.data.dataset_dir))
    if not (dataset_dir / "manifest.csv").is_file():
        raise UserError(f"no prepared dataset at {dataset_dir}: run python -m mammo_anogan.prepare first")
    generator, discriminator, generator_hash = load_networks(cfg)
    # a resumed checkpoint must come from this generator, discriminator and these settings (one line)
    fingerprint = encoder_training_fingerprint(cfg, settings, dataset_dir, resolve_precision(cfg.trainer))
    resume = check_resume(resolve_ckpt_path(cfg, run_dir), fingerprint)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        remove_stale_temp_files(run_dir / CHECKPOINT_DIR)
        save_sanitised_config(cfg, run_dir, dataset_salt(dataset_dir))
    encoder = encoder_for_generator(
        generator, int(settings["channel_base"]), int(settings["channel_max"]), generator_hash
    )
    module = EncoderModule(encoder, generator, discriminator, settings, perceptual_network(settings))
    datamodule = MammoDataModule.from_config(cfg.data)
    datamodule.setup("fit")
    if len(datamodule.dataset("train")) < int(cfg.data.loader.batch_size):
        raise ConfigError(
            f"the train split has {len(datamodule.dataset('train'))} normal images, fewer than "
            f"data.loader.batch_size={cfg.data.loader.batch_size}"
        )
    resume.check_fits(module)  # a checkpoint from before fingerprints: one line, not a traceback
    trainer = build_trainer(cfg, run_dir, fitted)
    trainer.callbacks.append(RunFingerprint(fingerprint))
    ckpt_path = resume.path
    log.info(
        "training the encoder on %d normal images for %.1f kimg (generator %s)",
        len(datamodule.dataset("train")),
        float(settings["total_kimg"]),
        generator_hash,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if stopped_by_preemption(trainer, module.kimg, run_dir):
        return None
    if not trainer.is_global_zero or not cfg.get("export", True):
        return None
    path = save_encoder(module.encoder, run_dir / ENCODER_FILE)
    log.info("exported the encoder to %s", path)
    return path


@hydra.main(config_path="../conf", config_name="train_encoder", version_base="1.3")
def main(cfg: DictConfig) -> None:
    exit_on_user_error(train_encoder)(cfg)


if __name__ == "__main__":
    main()
