"""Datasets of prepared mammograms: batches sliced from uint8 pixels held in RAM or in a packed store.

Two sources of pixels, one batch format (docs/interfaces.md, "Data module"):

* :class:`CachedMammoDataset` - the PNGs decoded once into uint8 arrays in this process's RAM. Fast
  and simple for small sets (the default for up to ``data.loader.ram_limit_mb``), but its memory
  grows with the number of films and every process (DDP rank) holds its own copy.
* :class:`PackedMammoDataset` - rows of a :class:`~mammo_anogan.data.store.PackedStore`, one file
  per dataset read with random access: the pixels live in the kernel's page cache, shared by every
  rank and DataLoader worker, and this process holds only the batch being built, whatever the
  number of films.

Both store ``uint8`` (not float: 4x smaller) and decode nothing while training: GAN training reads
every image thousands of times, so the decoder stays out of the loop.

Why ``__getitems__``: without augmentation a batch is one fancy-index (or a few reads) and one
vectorised conversion to ``[-1, 1]``, instead of a Python call and a ``torch.stack`` per image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset, default_collate

from mammo_anogan.utils.errors import UserError

if TYPE_CHECKING:
    from mammo_anogan.data.store import PackedStore

LABEL_CODES = {"normal": 0, "benign": 1, "malignant": 1, "unknown": -1}

Batch = dict[str, Any]


class DecodedFilms(NamedTuple):
    """uint8 ``[N, R, R]`` images (0..255), breast masks and lesion masks (0/1); ``resized``: whether
    any film was not already ``R x R`` (it was resized and padded)."""

    images: np.ndarray
    masks: np.ndarray
    lesions: np.ndarray
    resized: bool


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


def decode_films(root: Path, rows: pd.DataFrame, resolution: int, resize: bool) -> DecodedFilms:
    """Decode the image, breast mask and lesion mask PNGs of manifest ``rows`` (paths relative to
    ``root``) into :class:`DecodedFilms`. Films of
    another size are resized (longest side to ``R``, zero padding right/bottom, so the chest wall stays
    on the left) only when ``resize`` is true; otherwise that is a one-line UserError, since silently
    training at another resolution than the one prepared is a mistake.
    """
    if len(rows) == 0:  # an empty split (e.g. no normal film for train): the caller explains why
        empty = np.zeros((0, resolution, resolution), np.uint8)
        return DecodedFilms(empty, empty.copy(), empty.copy(), False)
    lesion_column = rows["lesion_mask_path"] if "lesion_mask_path" in rows else pd.Series([""] * len(rows))
    images = decode_all([root / p for p in rows["image_path"]])
    masks = decode_all([root / p for p in rows["mask_path"]])
    lesions = decode_all([root / p if p else None for p in lesion_column])
    shapes = {image.shape for image in images if image is not None}
    target = (resolution, resolution)
    if shapes - {target} and not resize:
        found = ", ".join(f"{h}x{w}" for h, w in sorted(shapes))
        raise UserError(
            f"prepared images in {root} are {found} but data.resolution={resolution}: "
            f"prepare again with data.resolution={resolution} (into another folder, or with "
            "prepare.overwrite=true), or set data.loader.resize=true"
        )
    for i, (image, mask, lesion) in enumerate(zip(images, masks, lesions)):
        assert image is not None and mask is not None
        if mask.shape != image.shape or (lesion is not None and lesion.shape != image.shape):
            raise UserError(
                f"mask size differs from image size for image {rows['image_id'].iloc[i]}: prepare "
                "again with prepare.overwrite=true"
            )
    filled = [np.zeros_like(image) if lesion is None else lesion for image, lesion in zip(images, lesions)]
    if not shapes - {target}:
        stacked = np.stack(images), np.stack(masks), np.stack(filled)
    else:
        transform = resize_transform(resolution)
        resized = [transform(image=im, masks=[m, les]) for im, m, les in zip(images, masks, filled)]
        stacked = (
            np.stack([r["image"] for r in resized]),
            np.stack([r["masks"][0] for r in resized]),
            np.stack([r["masks"][1] for r in resized]),
        )
    masks_01, lesions_01 = ((plane > 0).view(np.uint8) for plane in stacked[1:])
    return DecodedFilms(stacked[0], masks_01, lesions_01, bool(shapes - {target}))


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``0..255`` -> float32 ``[-1, 1]`` (``x / 127.5 - 1``, the project's convention)."""
    return images.to(torch.float32).div_(127.5).sub_(1.0)


def _float_planes(shape: tuple[int, ...], count: int, pin: bool) -> list[np.ndarray]:
    """``count`` float32 arrays of ``shape`` (page-locked when ``pin``, for fast copies to a GPU)."""
    if pin:
        return [torch.empty(shape, dtype=torch.float32, pin_memory=True).numpy() for _ in range(count)]
    return [np.empty(shape, dtype=np.float32) for _ in range(count)]


class MammoDataset(Dataset):
    """One split of a prepared dataset; subclasses say where the uint8 pixels come from.

    Items and batches are dicts in the format of docs/interfaces.md ("Data module"). A batch is
    made in two steps: :meth:`read_raw` fills a ``uint8 [B, 2, H, W]`` array of films (plane 0 the
    image, plane 1 the masks as bits: bit 0 breast, bit 1 lesion), augmented when ``augment`` is set
    (an albumentations transform applied per image to image, breast mask and lesion mask together;
    random, so it cannot be batched), and :meth:`finish` converts it (float32 planes, labels, ids).
    ``__getitems__`` does both; :class:`~mammo_anogan.data.loader.MammoDataLoader` runs the first in
    its workers and the second in the main process, so a worker sends 2 bytes per pixel, not 12.
    """

    def __init__(self, labels: Sequence[str], image_ids: Sequence[str], augment: Any | None = None) -> None:
        if len(labels) != len(image_ids):
            raise ValueError("one label and one image id per image")
        self.label_names = list(labels)
        self.label_codes = torch.tensor([LABEL_CODES[name] for name in self.label_names], dtype=torch.long)
        self.image_ids = list(image_ids)
        self.augment = augment
        self._scratch: np.ndarray | None = None  # the in-process raw buffer, reused batch after batch

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_scratch"] = None  # a buffer, not state: spawned workers make their own
        return state

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` of every image."""
        raise NotImplementedError

    def read_into(self, index: np.ndarray, films: np.ndarray) -> None:
        """Write the films of ``index`` into ``films`` (``uint8 [B, 2, H, W]``). Subclasses implement it."""
        raise NotImplementedError

    def read(self, index: np.ndarray | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 ``[B, H, W]`` images, breast masks (0/1) and lesion masks (0/1) of ``index``."""
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        films = np.empty((len(index), 2, *self.image_shape), dtype=np.uint8)
        self.read_into(index, films)
        bits = films[:, 1]
        return torch.from_numpy(films[:, 0]), torch.from_numpy(bits & 1), torch.from_numpy(bits >> 1)

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
        shape = (len(indices), 2, *self.image_shape)
        if self._scratch is None or self._scratch.shape != shape:
            self._scratch = np.empty(shape, dtype=np.uint8)
        return self.finish(self.read_raw(indices, self._scratch))

    def read_raw(self, indices: Sequence[int], films: np.ndarray | None = None) -> Batch:
        """``{"index": int64 [B], "films": uint8 [B, 2, H, W]}`` (numpy), augmented.

        ``films``: the array to fill (e.g. a shared-memory slot), else a new one.
        """
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        if films is None:
            films = np.empty((len(index), 2, *self.image_shape), dtype=np.uint8)
        self.read_into(index, films)
        if self.augment is not None:
            self._augment(films)
        return {"index": index, "films": films}

    def finish(self, raw: Batch, pin: bool = False) -> Batch:
        """A raw batch (:meth:`read_raw`) in the batch format: float32 ``[B, 1, H, W]`` planes.

        The conversion is numpy's (one thread: no oversubscription on a busy machine) and gives
        exactly ``x / 127.5 - 1`` (:func:`to_unit_range`). ``pin``: page-locked outputs.
        """
        index = np.asarray(raw["index"], dtype=np.int64)
        films = np.asarray(raw["films"])
        images, bits = films[:, 0:1], films[:, 1:2]
        out_image, out_mask, out_lesion = _float_planes(images.shape, 3, pin)
        np.divide(images, np.float32(127.5), out=out_image, dtype=np.float32)
        out_image -= np.float32(1.0)
        np.bitwise_and(bits, 1, out=out_mask, casting="unsafe")
        np.right_shift(bits, 1, out=out_lesion, casting="unsafe")
        positions = index.tolist()
        return {
            "image": torch.from_numpy(out_image),
            "mask": torch.from_numpy(out_mask),
            "lesion_mask": torch.from_numpy(out_lesion),
            "label": self.label_codes[torch.from_numpy(index)],
            "label_name": [self.label_names[i] for i in positions],
            "image_id": [self.image_ids[i] for i in positions],
        }

    def _augment(self, films: np.ndarray) -> None:
        """Augment ``films`` in place, one film at a time (albumentations works on single images)."""
        for film in films:
            bits = film[1]
            result = self.augment(image=film[0].copy(), masks=[bits & 1, bits >> 1])
            mask, lesion = ((np.asarray(m) > 0).view(np.uint8) for m in result["masks"])
            film[0] = result["image"]
            film[1] = mask | (lesion << 1)


class CachedMammoDataset(MammoDataset):
    """One split held in this process's RAM as uint8 tensors ``[N, H, W]`` (small sets)."""

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
        if len(labels) != len(images):
            raise ValueError("one label and one image id per image")
        super().__init__(labels, image_ids, augment)
        self.images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
        self.masks = torch.from_numpy(np.ascontiguousarray(masks > 0, dtype=np.uint8))
        self.lesion_masks = torch.from_numpy(np.ascontiguousarray(lesion_masks > 0, dtype=np.uint8))

    @property
    def image_shape(self) -> tuple[int, int]:
        return (int(self.images.shape[1]), int(self.images.shape[2]))

    def read_into(self, index: np.ndarray, films: np.ndarray) -> None:
        np.take(self.images.numpy(), index, axis=0, out=films[:, 0])
        np.take(self.masks.numpy(), index, axis=0, out=films[:, 1])
        films[:, 1] |= np.take(self.lesion_masks.numpy(), index, axis=0) << 1


class PackedMammoDataset(MammoDataset):
    """One split as rows of a :class:`~mammo_anogan.data.store.PackedStore` (any number of films).

    ``rows[i]`` is the store row of the split's ``i``-th image. Nothing but the batch being built is
    held in this process; the file's pages are cached (and shared) by the kernel.
    """

    def __init__(
        self,
        store: PackedStore,
        rows: np.ndarray,
        labels: Sequence[str],
        image_ids: Sequence[str],
        augment: Any | None = None,
    ) -> None:
        super().__init__(labels, image_ids, augment)
        self.rows = np.asarray(rows, dtype=np.int64)
        if len(self.rows) != len(self.image_ids):
            raise ValueError("one store row per image")
        self.store = store

    @property
    def image_shape(self) -> tuple[int, int]:
        return (self.store.resolution, self.store.resolution)

    def read_into(self, index: np.ndarray, films: np.ndarray) -> None:
        self.store.read(self.rows[index], out=films)


def collate_batches(items: Batch | list[Batch]) -> Batch:
    """Collate for :class:`MammoDataset`: batches from ``__getitems__`` are already stacked."""
    if isinstance(items, dict):
        return items
    return default_collate(items)
