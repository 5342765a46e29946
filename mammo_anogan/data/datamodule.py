"""LightningDataModule over a prepared dataset (see docs/interfaces.md, "Data module").

``setup()`` ensures the patient-level splits, then chooses where the decoded uint8 pixels live
(:func:`mammo_anogan.data.store.choose_storage`, one log line saying why): an in-RAM cache per
process for small sets (at most ``data.loader.ram_limit_mb``), else the packed store, one file per
dataset read with random access and shared by every process through the page cache, so that memory
does not grow with the number of films (:mod:`mammo_anogan.data.store`). Either way each film is
decoded once, not per batch, and both give the same batches. A resize to ``resolution`` (longest
side, then zero padding on the right/bottom so the chest wall stays on the left) is done at that one
decode, and only when asked for (``resize=True``): silently training at another resolution than the
one prepared is a mistake worth an error. Augmentation (off by default) is mild and
anatomy-preserving: small scale/shift/rotation and a gamma change that keeps the black background
black; no horizontal flip, since every prepared film has its chest wall on the left.
"""

from __future__ import annotations

import logging
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

from mammo_anogan.data.dataset import (
    CachedMammoDataset,
    MammoDataset,
    PackedMammoDataset,
    collate_batches,
    decode_films,
    resize_transform,
    to_unit_range,
)
from mammo_anogan.data.loader import MammoDataLoader
from mammo_anogan.data.sampler import ResumableDataLoader, ResumableShuffleSampler
from mammo_anogan.data.splits import SPLIT_NAMES, ensure_splits, read_manifest
from mammo_anogan.data.store import (
    DEFAULT_RAM_LIMIT_MB,
    PackedStore,
    StorageChoice,
    choose_storage,
    ensure_store,
    open_store,
)
from mammo_anogan.utils.errors import UserError

log = logging.getLogger(__name__)

PREPARE_HINT = "run `python -m mammo_anogan.prepare data=...` first (same data.* settings)"
#: The splits ``setup(stage)`` loads; a split not loaded yet is loaded when first asked for.
STAGE_SPLITS = {"fit": ("train",), "validate": ("val",), "test": ("test",), "predict": ("val", "test")}

__all__ = ["STAGE_SPLITS", "MammoDataModule", "augment_transform", "resize_transform"]


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
    """Train (normals only) / val / test loaders of a prepared dataset, from RAM or a packed store."""

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
        store: str = "auto",
        ram_limit_mb: float = DEFAULT_RAM_LIMIT_MB,
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
        self.store_mode = str(store)
        self.ram_limit_mb = float(ram_limit_mb)
        choose_storage(0, self.resolution, self.store_mode, self.ram_limit_mb)  # validates both now
        self.splits: pd.DataFrame | None = None
        self.storage: StorageChoice | None = None  # decided by setup()
        self.store: PackedStore | None = None  # the packed store, when storage.kind == "packed"
        self._index: pd.DataFrame | None = None  # per manifest row: id, label, split (+ paths for RAM)
        self._datasets: dict[str, MammoDataset] = {}
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
            store=loader.get("store", "auto"),
            ram_limit_mb=loader.get("ram_limit_mb", DEFAULT_RAM_LIMIT_MB),
        )

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str | None = None) -> None:
        """Ensure splits, choose the pixel source and load the splits of ``stage`` (idempotent).

        ``stage``: ``fit`` loads train, ``validate`` val, ``test`` test, ``predict`` val and test,
        ``None`` every split. With the packed store a split costs no decoding (the store is built
        once, here, when it is missing or stale); with the in-RAM cache its films are decoded now.
        """
        if self.storage is None:
            self._prepare()
        for name in SPLIT_NAMES if stage is None else STAGE_SPLITS.get(str(stage), SPLIT_NAMES):
            self._load_split(name)

    def _prepare(self) -> None:
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
        columns = ["image_id", "label", "image_path", "mask_path"]
        columns += ["lesion_mask_path"] if "lesion_mask_path" in manifest.columns else []
        index = manifest[columns].merge(self.splits[["image_id", "split"]], on="image_id", how="left")
        storage = choose_storage(len(index), self.resolution, self.store_mode, self.ram_limit_mb)
        log.info("data: %s", storage.reason)
        if storage.kind == "packed":
            self.store = ensure_store(self.dataset_dir, index, self.resolution, self.resize)
            index = index[["image_id", "label", "split"]]  # the paths are not needed any more
        self._index = index
        self.storage = storage
        self.shuffle_seed = int(torch.randint(0, 2**31 - 1, (1,)).item())  # follows seed_everything

    def _load_split(self, name: str) -> None:
        """Build the Dataset of split ``name`` (decoding its films when they are cached in RAM)."""
        if name in self._datasets:
            return
        assert self._index is not None
        rows = np.flatnonzero((self._index["split"] == name).to_numpy())
        part = self._index.iloc[rows]
        labels, ids = part["label"].tolist(), part["image_id"].tolist()
        augment = augment_transform(self.shuffle_seed) if (self.augment and name == "train") else None
        if self.store is not None:
            self._datasets[name] = PackedMammoDataset(self.store, rows, labels, ids, augment=augment)
            return
        stored = open_store(self.dataset_dir, self.resolution, len(self._index), self.resize)
        if stored is not None:  # built earlier (by prepare, or a run with the packed store): no decoding
            images, masks, lesions = stored.read_films(rows)
            films = (images.numpy(), masks.numpy(), lesions.numpy())
        else:
            decoded = decode_films(self.dataset_dir, part, self.resolution, self.resize)
            films = (decoded.images, decoded.masks, decoded.lesions)
        self._datasets[name] = CachedMammoDataset(*films, labels, ids, augment=augment)

    # ------------------------------------------------------------ access
    def dataset(self, split: str) -> MammoDataset:
        """The Dataset of one split (``train``, ``val`` or ``test``), loaded on first use."""
        if split not in SPLIT_NAMES:
            raise UserError(f"unknown split {split!r}; choose one of {', '.join(SPLIT_NAMES)}")
        if self.storage is None:
            self._prepare()
        self._load_split(split)
        return self._datasets[split]

    def real_images(self, split: str = "train", max_images: int | None = None) -> torch.Tensor:
        """The first ``max_images`` images of a split, un-augmented, ``[N, 1, R, R]`` in ``[-1, 1]``."""
        dataset = self.dataset(split)
        count = len(dataset) if max_images is None else min(len(dataset), max(0, int(max_images)))
        if count == 0:
            raise UserError(f"the {split} split of {self.dataset_dir} has no images")
        images, _, _ = dataset.read(np.arange(count))
        return to_unit_range(images.unsqueeze(1))

    def loader_options(self) -> dict[str, Any]:
        """Keyword arguments for a :class:`PreemptionSafeLoader` over this data (workers, collate)."""
        return self._loader_options()

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
        return MammoDataLoader(
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
