"""Encoder training as a LightningModule: f-AnoGAN's izi_f objective on a frozen StyleGAN2.

For a normal training image ``x`` and ``x_hat = G(E(x))`` (W+ codes, the generator's stored constant
noise maps), the loss is (Schlegl et al. 2019, eq. 4-5, with the discriminator's block features ``f``):

    L = pixel_weight * mean((x - x_hat)^2)            (or |x - x_hat| with pixel_norm=l1)
      + feature_weight * mean_l mean((f_l(x) - f_l(x_hat))^2)
      + perceptual_weight * LPIPS(x, x_hat)           (only when ImageNet weights are available)
      + latent_weight * mean((E(x) - w_avg)^2)         (optional pull to the centre of W)

``G`` and ``D`` are frozen (eval mode, no gradients to their weights); only ``E`` is optimised, with
Adam. Training length is in kimg like the GAN (``encoder_train.total_kimg``); ``cur_nimg`` is saved in
checkpoints so that ``ckpt_path=last`` resumes where a run stopped, with the same data order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from pytorch_lightning import LightningModule
from torch import Tensor, nn

from mammo_anogan.anomaly.losses import DiscFeatureLoss, LpipsLoss
from mammo_anogan.models.encoder import Encoder
from mammo_anogan.utils.errors import ConfigError

log = logging.getLogger(__name__)

#: ``encoder_train.*`` keys and defaults (conf/encoder_train/default.yaml); an unknown key: ConfigError.
ENCODER_DEFAULTS: dict[str, Any] = {
    "channel_base": 1024,
    "channel_max": 64,
    "total_kimg": 20.0,
    "lr": 0.001,
    "betas": [0.9, 0.99],
    "pixel_weight": 1.0,
    "pixel_norm": "l2",
    "feature_weight": 1.0,
    "perceptual": "auto",
    "perceptual_weight": 1.0,
    "lpips_weights": None,
    "lpips_resize": 256,
    "latent_weight": 0.0,
}


def encoder_settings(given: Mapping[str, Any] | None) -> dict[str, Any]:
    """``encoder_train.*`` merged over :data:`ENCODER_DEFAULTS`, checked (one-line ConfigError)."""
    values = dict(given or {})
    unknown = sorted(set(values) - set(ENCODER_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"encoder_train has unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(ENCODER_DEFAULTS))}"
        )
    settings = {**ENCODER_DEFAULTS, **values}
    if float(settings["total_kimg"]) <= 0:
        raise ConfigError(
            f"encoder_train.total_kimg={settings['total_kimg']} is out of range; it must be > 0"
        )
    if float(settings["lr"]) <= 0:
        raise ConfigError(f"encoder_train.lr={settings['lr']} is out of range; it must be > 0")
    for key in ("pixel_weight", "feature_weight", "perceptual_weight", "latent_weight"):
        if float(settings[key]) < 0:
            raise ConfigError(f"encoder_train.{key}={settings[key]} is out of range; it must be >= 0")
    if settings["pixel_norm"] not in ("l1", "l2"):
        raise ConfigError(
            f"encoder_train.pixel_norm={settings['pixel_norm']!r} is not allowed; use one of l1, l2"
        )
    if str(settings["perceptual"]).lower() not in ("auto", "true", "false"):
        raise ConfigError(
            f"encoder_train.perceptual={settings['perceptual']!r} is not allowed; use auto, true or false"
        )
    return settings


class EncoderModule(LightningModule):
    """Train ``encoder`` so that ``generator.synthesis(encoder(x))`` reproduces normal images ``x``.

    Args:
        encoder: the :class:`~mammo_anogan.models.encoder.Encoder` to train.
        generator: the trained generator (frozen here).
        discriminator: its discriminator, for the feature term (None: ``feature_weight`` must be 0).
        settings: :func:`encoder_settings` output.
        lpips_net: a ready LPIPS network for the perceptual term (None: no perceptual term).
    """

    def __init__(
        self,
        encoder: Encoder,
        generator: nn.Module,
        discriminator: nn.Module | None,
        settings: Mapping[str, Any],
        lpips_net: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.settings = encoder_settings(settings)
        self.encoder = encoder
        self.generator = generator.eval().requires_grad_(False)
        if discriminator is None and float(self.settings["feature_weight"]) > 0:
            raise ConfigError("encoder_train.feature_weight > 0 needs the discriminator (discriminator.pt)")
        self.features = DiscFeatureLoss(discriminator) if discriminator is not None else None
        self.perceptual = LpipsLoss(lpips_net, resize=self.settings["lpips_resize"]) if lpips_net else None
        self.total_kimg = float(self.settings["total_kimg"])
        self.cur_nimg = 0
        self.save_hyperparameters({"encoder": dict(encoder.config), "settings": self.settings})

    @property
    def kimg(self) -> float:
        """Thousands of training images shown so far."""
        return self.cur_nimg / 1000.0

    def train(self, mode: bool = True) -> EncoderModule:
        """Only the encoder ever trains: the frozen networks stay in eval mode."""
        super().train(mode)
        self.generator.eval()
        if self.features is not None:
            self.features.eval()
        if self.perceptual is not None:
            self.perceptual.eval()
        return self

    def reconstruct(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(ws [B, num_ws, w_dim], G(ws) [B, C, R, R])`` with the generator's constant noise maps.

        Input-scaling modulation (``fused_modconv=False``): one shared convolution for the batch,
        much faster than per-sample grouped convolutions when gradients flow back to ``ws``.
        """
        ws = self.encoder(images)
        return ws, self.generator.synthesis(ws, noise_mode="const", fused_modconv=False)

    def loss_terms(self, images: Tensor) -> dict[str, Tensor]:
        """Every weighted term of the izi_f loss and their sum ``loss`` (scalars)."""
        s = self.settings
        ws, recon = self.reconstruct(images)
        diff = recon.float() - images.float()
        terms: dict[str, Tensor] = {}
        pixel = diff.square().mean() if s["pixel_norm"] == "l2" else diff.abs().mean()
        terms["pixel"] = pixel
        total = float(s["pixel_weight"]) * pixel
        if self.features is not None and float(s["feature_weight"]) > 0:
            terms["feature"] = self.features(recon, images).mean()
            total = total + float(s["feature_weight"]) * terms["feature"]
        if self.perceptual is not None and float(s["perceptual_weight"]) > 0:
            terms["perceptual"] = self.perceptual(recon, images).mean()
            total = total + float(s["perceptual_weight"]) * terms["perceptual"]
        if float(s["latent_weight"]) > 0:
            terms["latent"] = (ws - self.encoder.w_avg).square().mean()
            total = total + float(s["latent_weight"]) * terms["latent"]
        terms["loss"] = total
        return terms

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        images = batch["image"]
        terms = self.loss_terms(images)
        self.cur_nimg += int(images.shape[0]) * self.trainer.world_size
        logs = {f"train/{name}": value.detach() for name, value in terms.items()}
        logs["train/kimg"] = torch.tensor(self.kimg)
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=images.shape[0])
        return terms["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.cur_nimg >= self.total_kimg * 1000:
            self.trainer.should_stop = True

    def configure_optimizers(self) -> torch.optim.Optimizer:
        betas = tuple(float(b) for b in self.settings["betas"])
        return torch.optim.Adam(self.encoder.parameters(), lr=float(self.settings["lr"]), betas=betas)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["encoder_progress"] = {"cur_nimg": int(self.cur_nimg)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        progress = checkpoint.get("encoder_progress")
        if progress is not None:
            self.cur_nimg = int(progress["cur_nimg"])
