"""In-RAM dataset of prepared mammograms: PNGs decoded once, batches sliced from uint8 arrays.

Why a RAM cache: prepared datasets are small (the paper's CBIS-DDSM normal CC set is a few thousand
512x512 8-bit films, about 0.3 MB each with its mask, so a few GB at most and typically far less),
while GAN training reads every image thousands of times. Decoding each PNG once removes the
decoder from the training loop; storing ``uint8`` (not float) keeps the cache 4x smaller, and
forked DataLoader workers share it copy-on-write.

Why ``__getitems__``: without augmentation a batch is one fancy-index into the cache and one
vectorised conversion to ``[-1, 1]``, instead of a Python call and a ``torch.stack`` per image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from mammo_anogan.utils.errors import UserError

LABEL_CODES = {"normal": 0, "benign": 1, "malignant": 1, "unknown": -1}

Batch = dict[str, Any]


def decode_png(path: Path) -> np.ndarray:
    """Read an 8-bit single-channel image; a clear UserError when it is missing or unreadable."""
    data = np.fromfile(path, dtype=np.uint8) if path.is_file() else None
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data is not None and data.size else None
    if image is None:
        raise UserError(
            f"prepared file missing or unreadable: {path}; re-run `python -m mammo_anogan.prepare "
            "data=... prepare.overwrite=true`"
        )
    return image


def decode_all(paths: Sequence[Path | None]) -> list[np.ndarray | None]:
    """Decode many PNGs with a few threads (OpenCV releases the GIL while decoding)."""
    workers = max(1, min(8, os.cpu_count() or 1))

    def one(path: Path | None) -> np.ndarray | None:
        return None if path is None else decode_png(path)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, paths))


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``0..255`` -> float32 ``[-1, 1]`` (``x / 127.5 - 1``, the project's convention)."""
    return images.to(torch.float32).div_(127.5).sub_(1.0)


class CachedMammoDataset(Dataset):
    """One split of a prepared dataset, held as uint8 arrays ``[N, H, W]``.

    Items and batches are dicts in the format of docs/interfaces.md ("Data module"). ``augment`` is
    an albumentations transform applied per image to image, breast mask and lesion mask together
    (random, so it cannot be batched); ``None`` gives the fully vectorised path.
    """

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        lesion_masks: np.ndarray,
        labels: Sequence[str],
        image_ids: Sequence[str],
        augment: Any | None = None,
    ) -> None:
        if not (images.shape == masks.shape == lesion_masks.shape and images.ndim == 3):
            raise ValueError("images, masks and lesion masks must share the shape [N, H, W]")
        if not (len(labels) == len(image_ids) == len(images)):
            raise ValueError("one label and one image id per image")
        self.images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
        self.masks = torch.from_numpy(np.ascontiguousarray(masks > 0, dtype=np.uint8))
        self.lesion_masks = torch.from_numpy(np.ascontiguousarray(lesion_masks > 0, dtype=np.uint8))
        self.label_names = list(labels)
        self.label_codes = torch.tensor([LABEL_CODES[name] for name in self.label_names], dtype=torch.long)
        self.image_ids = list(image_ids)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.image_ids)

    def reseed(self, seed: int) -> None:
        """Give the augmentation its own random stream (called once per DataLoader worker)."""
        if self.augment is not None:
            self.augment.set_random_seed(int(seed) % 2**32)

    def __getitem__(self, index: int) -> Batch:
        batch = self.__getitems__([index])
        return {
            key: value[0] if isinstance(value, (torch.Tensor, list)) else value
            for key, value in batch.items()
        }

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        """A whole batch at once (called by the DataLoader with the sampler's indices)."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        images, masks, lesions = self.images[index], self.masks[index], self.lesion_masks[index]
        if self.augment is not None:
            images, masks, lesions = self._augment(images, masks, lesions)
        return {
            "image": to_unit_range(images.unsqueeze(1)),
            "mask": masks.unsqueeze(1).to(torch.float32),
            "lesion_mask": lesions.unsqueeze(1).to(torch.float32),
            "label": self.label_codes[index],
            "label_name": [self.label_names[i] for i in index.tolist()],
            "image_id": [self.image_ids[i] for i in index.tolist()],
        }

    def _augment(
        self, images: torch.Tensor, masks: torch.Tensor, lesions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out_images, out_masks, out_lesions = (
            images.numpy().copy(),
            masks.numpy().copy(),
            lesions.numpy().copy(),
        )
        for i in range(len(out_images)):  # albumentations works on one image at a time
            result = self.augment(image=out_images[i], masks=[out_masks[i], out_lesions[i]])
            out_images[i] = result["image"]
            out_masks[i], out_lesions[i] = (np.asarray(m) > 0 for m in result["masks"])
        return torch.from_numpy(out_images), torch.from_numpy(out_masks), torch.from_numpy(out_lesions)


def collate_batches(items: Batch | list[Batch]) -> Batch:
    """Collate for :class:`CachedMammoDataset`: batches from ``__getitems__`` are already stacked."""
    if isinstance(items, dict):
        return items
    return default_collate(items)
