"""``ProjectionModule``: the projection as a LightningModule, run through ``trainer.predict``.

Running it as a predict loop lets Lightning shard the images over several GPUs (one process per
device) while every process optimises all seeds of its batch together. Each ``predict_step`` returns
one :class:`~mammo_anogan.anomaly.outputs.ImageResult` per image (CPU arrays), which
:class:`~mammo_anogan.anomaly.outputs.ScoreWriter` writes to disk as soon as the batch is done, so a
killed run loses at most one batch.

The trainer must be built with ``inference_mode=False``: the projection needs gradients, which
``torch.inference_mode`` would forbid even inside ``torch.enable_grad()``.

With an encoder (``projection.init=encoder|encoder+seeds``) each batch is first encoded to W+ codes
that start the projection (``projection.steps=0``: f-AnoGAN's one-pass reconstruction ``G(E(x))``);
``projection.refine`` then runs the anomaly-preserving noise refinement (:mod:`.refine`) on every
start before the maps are built.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from pytorch_lightning import LightningModule
from torch import nn

from mammo_anogan.anomaly.map_scores import MapScoreSettings
from mammo_anogan.anomaly.outputs import ImageResult
from mammo_anogan.anomaly.projector import ProjectionResult, ProjectionSettings, Projector
from mammo_anogan.anomaly.refine import RefineSettings, refine_noise
from mammo_anogan.anomaly.scoring import EMPTY_MASK_NOTE, all_map_scores, difference_maps, score_images


class ProjectionModule(LightningModule):
    """Project each batch with ``N`` seeds, build its difference maps and score it."""

    def __init__(
        self,
        generator: nn.Module,
        loss_fn: nn.Module,
        settings: ProjectionSettings,
        score_method: str = "mean_map",
        topk_percent: float = 1.0,
        split: str = "test",
        encoder: nn.Module | None = None,
        map_settings: MapScoreSettings | None = None,
        refine: RefineSettings | None = None,
        feature_distance: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.generator = generator.eval().requires_grad_(False)
        self.loss_fn = loss_fn.eval().requires_grad_(False)
        self.settings = settings
        self.score_method = score_method
        self.topk_percent = float(topk_percent)
        self.split = split  # recorded with every result; set before each trainer.predict call
        if settings.init != "seeds" and encoder is None:
            raise ValueError(f"projection.init={settings.init} needs an encoder")
        self.encoder = encoder.eval().requires_grad_(False) if encoder is not None else None
        self.map_settings = map_settings or MapScoreSettings(topk_percent=self.topk_percent)
        self.refine = refine if refine is not None and refine.enabled else None
        # discriminator-feature distance of image vs mean projection (score disc_features), if given
        self.feature_distance = (
            feature_distance.eval().requires_grad_(False) if feature_distance is not None else None
        )
        self._projector: Projector | None = None

    @property
    def projector(self) -> Projector:
        """Built lazily on the module's final device (after Lightning moved it)."""
        if self._projector is None or self._projector.device != next(self.generator.parameters()).device:
            self._projector = Projector(self.generator, self.loss_fn, self.settings)
        return self._projector

    def forward(self, images: torch.Tensor) -> Any:
        return self.reconstruct(images)

    def reconstruct(self, images: torch.Tensor) -> ProjectionResult:
        """Encoder start (if any) -> latent projection -> optional anomaly-preserving refinement."""
        start_ws = None
        if self.encoder is not None and self.settings.init != "seeds":
            with torch.no_grad():
                start_ws = self.encoder(images).float()
        result = self.projector.project(images, start_ws)
        if self.refine is not None:
            batch, n = result.projections.shape[:2]
            flat = result.projections.flatten(0, 1).to(images.device)
            targets = images.repeat_interleave(n, dim=0)
            refined, _ = refine_noise(
                self.generator, result.latents.flatten(0, 1).to(images.device), targets, flat, self.refine
            )
            result.projections = refined.reshape(batch, n, *refined.shape[1:]).to(result.projections)
        return result

    def predict_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> list[ImageResult]:
        start = time.perf_counter()
        images = batch["image"].to(self.device, torch.float32)
        masks = batch["mask"].to(self.device, torch.float32)
        result = self.reconstruct(images)
        maps = difference_maps(images, result.projections, result.losses.to(self.device), result.valid)
        perceptual = features = None
        with torch.no_grad():
            if self.score_method == "perceptual":
                perceptual = self.loss_fn(maps.mean_projection.nan_to_num(), images).float()
            if self.feature_distance is not None:
                features = self.feature_distance(maps.mean_projection.nan_to_num(), images).float()
        scores = score_images(
            maps, masks, self.score_method, self.topk_percent, perceptual, self.map_settings, features
        )
        extra = all_map_scores(maps, masks, self.topk_percent, self.map_settings)
        if features is not None:
            extra["score_disc_features"] = torch.where(torch.isnan(scores), torch.nan, features)
        extra = {key: value.cpu() for key, value in extra.items()}
        seconds = (time.perf_counter() - start) / images.shape[0]
        empty = (masks > 0.5).flatten(1).sum(dim=1) == 0
        return [
            ImageResult(
                image_id=str(batch["image_id"][i]),
                split=self.split,
                label=str(batch["label_name"][i]),
                score=float(scores[i]),
                extra_scores={key: float(value[i]) for key, value in extra.items()},
                seed_losses=result.losses[i].cpu().numpy(),
                best_seed=int(maps.best_seed[i]),
                steps=self.settings.steps,
                seconds=seconds,
                note=_join_notes(EMPTY_MASK_NOTE if bool(empty[i]) else "", result.notes[i]),
                image=images[i].cpu().numpy(),
                mask=masks[i].cpu().numpy(),
                lesion_mask=batch["lesion_mask"][i].cpu().numpy() if "lesion_mask" in batch else None,
                projections=result.projections[i].cpu().numpy(),
                mean_projection=maps.mean_projection[i].cpu().numpy(),
                best_projection=maps.best_projection[i].cpu().numpy(),
                abs_map=maps.abs_map[i].cpu().numpy(),
                signed_map=maps.signed_map[i].cpu().numpy(),
            )
            for i in range(images.shape[0])
        ]


def _join_notes(*notes: str) -> str:
    return "; ".join(note for note in notes if note)
