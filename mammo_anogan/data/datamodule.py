"""LightningDataModule over a prepared dataset (see docs/interfaces.md, "Data module").

``setup()`` ensures the patient-level splits, then decodes every PNG once into an in-RAM uint8
cache (see :mod:`mammo_anogan.data.dataset` for why). A resize to ``resolution`` (longest side,
then zero padding on the right/bottom so the chest wall stays on the left) is done once at cache
time, never per batch, and only when asked for (``resize=True``): silently training at another
resolution than the one prepared is a mistake worth an error. Augmentation (off by default) is
mild and anatomy-preserving: small scale/shift/rotation and a gamma change that keeps the black
background black; no horizontal flip, since every prepared film has its chest wall on the left.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from pytorch_lightning import LightningDataModule
from torch.utils.data import DataLoader, get_worker_info

from mammo_anogan.data.dataset import CachedMammoDataset, collate_batches, decode_all, to_unit_range
from mammo_anogan.data.sampler import ResumableDataLoader, ResumableShuffleSampler
from mammo_anogan.data.splits import SPLIT_NAMES, ensure_splits, read_manifest
from mammo_anogan.utils.errors import UserError

PREPARE_HINT = "run `python -m mammo_anogan.prepare data=...` first (same data.* settings)"


def resize_transform(resolution: int) -> A.Compose:
    """Longest side to ``resolution`` (area filter when shrinking), then zero-pad right/bottom."""
    return A.Compose(
        [
            A.LongestMaxSize(max_size=resolution, interpolation=cv2.INTER_LINEAR, area_for_downscale="image"),
            A.PadIfNeeded(
                min_height=resolution,
                min_width=resolution,
                position="top_left",
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
            ),
        ]
    )


def augment_transform(seed: int) -> A.Compose:
    """Mild augmentation applied to image, breast mask and lesion mask consistently."""
    return A.Compose(
        [
            A.Affine(
                scale=(0.95, 1.05),
                translate_percent=(-0.03, 0.03),
                rotate=(-5.0, 5.0),
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=0.5,
            ),
            A.RandomGamma(gamma_limit=(90, 110), p=0.5),
        ],
        seed=seed,
    )


def _seed_worker(worker_id: int) -> None:
    """Each DataLoader worker draws its own augmentations (albumentations keeps its own RNG)."""
    info = get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed(torch.initial_seed())


class MammoDataModule(LightningDataModule):
    """Train (normals only) / val / test loaders of a prepared dataset, cached in RAM."""

    def __init__(
        self,
        dataset_dir: str | os.PathLike[str],
        resolution: int,
        batch_size: int,
        num_workers: int = 0,
        pin_memory: bool = True,
        persistent_workers: bool = False,
        augment: bool = False,
        val_fraction: float = 0.2,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        test_ids: str | os.PathLike[str] | Sequence[str] | None = None,
        resize: bool = False,
    ) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise UserError(f"data.loader.batch_size must be >= 1, got {batch_size}")
        if int(resolution) < 1:
            raise UserError(f"data.resolution must be >= 1, got {resolution}")
        if int(num_workers) < 0:
            raise UserError(f"data.loader.num_workers must be >= 0, got {num_workers}")
        self.dataset_dir = Path(dataset_dir)
        self.resolution = int(resolution)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self.augment = bool(augment)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.split_seed = int(split_seed)
        self.test_ids = (
            test_ids if test_ids is None or isinstance(test_ids, (str, os.PathLike)) else list(test_ids)
        )
        self.resize = bool(resize)
        self.splits: pd.DataFrame | None = None
        self._datasets: dict[str, CachedMammoDataset] = {}
        self.shuffle_seed = 0  # drawn in setup() from torch's RNG, so it follows seed_everything

    @classmethod
    def from_config(cls, data_cfg: Any) -> MammoDataModule:
        """Build from the ``data`` config: ``dataset_dir``, ``resolution``, ``split.*``, ``loader.*``."""
        split = data_cfg.get("split") or {}
        loader = data_cfg.get("loader") or {}
        test_ids = split.get("test_ids")
        if test_ids is not None and not isinstance(test_ids, str):
            test_ids = [str(item) for item in test_ids]
        return cls(
            dataset_dir=data_cfg.dataset_dir,
            resolution=data_cfg.resolution,
            batch_size=loader.get("batch_size", 8),
            num_workers=loader.get("num_workers", 0),
            pin_memory=loader.get("pin_memory", True),
            persistent_workers=loader.get("persistent_workers", False),
            augment=loader.get("augment", False),
            val_fraction=split.get("val_fraction", 0.2),
            test_fraction=split.get("test_fraction", 0.2),
            split_seed=split.get("seed", 0),
            test_ids=test_ids,
            resize=loader.get("resize", False),
        )

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        """Ensure splits and fill the cache (idempotent: the PNGs are decoded once)."""
        if self._datasets:
            return
        if not self.dataset_dir.is_dir() or not (self.dataset_dir / "manifest.csv").is_file():
            raise UserError(f"no prepared dataset at {self.dataset_dir}: {PREPARE_HINT}")
        manifest = read_manifest(self.dataset_dir)
        for column in ("image_path", "mask_path"):
            if column not in manifest.columns:
                raise UserError(
                    f"{self.dataset_dir / 'manifest.csv'} lacks the column {column}: prepare again with "
                    "prepare.overwrite=true"
                )
        self.splits = ensure_splits(
            self.dataset_dir, self.val_fraction, self.test_fraction, self.split_seed, self.test_ids
        )
        manifest = manifest.merge(self.splits[["image_id", "split"]], on="image_id", how="left")
        images, masks, lesions = self._load_arrays(manifest)
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())  # follows torch's seed (seed_everything)
        self.shuffle_seed = seed
        for name in SPLIT_NAMES:
            rows = np.flatnonzero((manifest["split"] == name).to_numpy())
            self._datasets[name] = CachedMammoDataset(
                images[rows],
                masks[rows],
                lesions[rows],
                manifest["label"].iloc[rows].tolist(),
                manifest["image_id"].iloc[rows].tolist(),
                augment=augment_transform(seed) if (self.augment and name == "train") else None,
            )

    def _load_arrays(self, manifest: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode image, breast mask and lesion mask PNGs into three uint8 arrays ``[N, R, R]``."""
        root = self.dataset_dir
        lesion_column = manifest.get("lesion_mask_path", pd.Series([""] * len(manifest)))
        images = decode_all([root / p for p in manifest["image_path"]])
        masks = decode_all([root / p for p in manifest["mask_path"]])
        lesions = decode_all([root / p if p else None for p in lesion_column])
        shapes = {image.shape for image in images}
        target = (self.resolution, self.resolution)
        if shapes - {target} and not self.resize:
            found = ", ".join(f"{h}x{w}" for h, w in sorted(shapes))
            raise UserError(
                f"prepared images in {root} are {found} but data.resolution={self.resolution}: "
                f"prepare again with data.resolution={self.resolution} (into another folder, or with "
                "prepare.overwrite=true), or set data.loader.resize=true"
            )
        for i, (image, mask, lesion) in enumerate(zip(images, masks, lesions)):
            if mask.shape != image.shape or (lesion is not None and lesion.shape != image.shape):
                raise UserError(
                    f"mask size differs from image size for image {manifest['image_id'].iloc[i]}: prepare "
                    "again with prepare.overwrite=true"
                )
        lesions = [
            np.zeros_like(image) if lesion is None else lesion for image, lesion in zip(images, lesions)
        ]
        if not shapes - {target}:
            return np.stack(images), np.stack(masks), np.stack(lesions)
        transform = resize_transform(self.resolution)
        resized = [transform(image=im, masks=[m, les]) for im, m, les in zip(images, masks, lesions)]
        return (
            np.stack([r["image"] for r in resized]),
            np.stack([r["masks"][0] for r in resized]),
            np.stack([r["masks"][1] for r in resized]),
        )

    # ------------------------------------------------------------ access
    def dataset(self, split: str) -> CachedMammoDataset:
        """The Dataset of one split (``train``, ``val`` or ``test``)."""
        if split not in SPLIT_NAMES:
            raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_NAMES)}")
        self.setup()
        return self._datasets[split]

    def real_images(self, split: str = "train", max_images: int | None = None) -> torch.Tensor:
        """The first ``max_images`` images of a split, un-augmented, ``[N, 1, R, R]`` in ``[-1, 1]``."""
        images = self.dataset(split).images
        if max_images is not None:
            images = images[: max(0, int(max_images))]
        if len(images) == 0:
            raise UserError(f"the {split} split of {self.dataset_dir} has no images")
        return to_unit_range(images.unsqueeze(1))

    def _loader_options(self) -> dict[str, Any]:
        return {
            "num_workers": self.num_workers,
            "pin_memory": self.pin_memory and torch.cuda.is_available(),
            "persistent_workers": self.persistent_workers and self.num_workers > 0,
            "collate_fn": collate_batches,
            "worker_init_fn": _seed_worker if self.num_workers > 0 else None,
        }

    def _loader(self, split: str) -> DataLoader:
        """An evaluation loader: fixed order, every image once."""
        return DataLoader(
            self.dataset(split), batch_size=self.batch_size, shuffle=False, **self._loader_options()
        )

    def train_dataloader(self) -> ResumableDataLoader:
        """Normals only, shuffled; drops the last partial batch only when there is more than one batch.

        The order is a function of (seed, epoch) and the loader's position is checkpointed, so a run
        resumed from a checkpoint taken mid-epoch sees exactly the batches the uninterrupted run would
        (see :mod:`mammo_anogan.data.sampler`). Under DDP each rank reads its own shard.
        """
        dataset = self.dataset("train")
        num_replicas, rank = _distributed_world()
        per_rank = len(dataset) // num_replicas
        if per_rank == 0:
            raise UserError(
                f"the train split of {self.dataset_dir} has {len(dataset)} image(s) for {num_replicas} "
                "device(s) (train holds normal images only): use fewer devices (trainer.devices=1), add "
                "normal images, or lower data.split.val_fraction/test_fraction"
            )
        sampler = ResumableShuffleSampler(
            dataset, batch_size=self.batch_size, seed=self.shuffle_seed, num_replicas=num_replicas, rank=rank
        )
        return ResumableDataLoader(
            dataset, sampler, drop_last=per_rank > self.batch_size, **self._loader_options()
        )

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self, split: str = "test") -> DataLoader:
        return self._loader(split)


def _distributed_world() -> tuple[int, int]:
    """``(world size, rank)`` of the initialised process group, ``(1, 0)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0
