"""DataLoader for :class:`~mammo_anogan.data.dataset.MammoDataset`: workers send uint8, reusing shared memory.

Why: with DataLoader workers, a batch crosses to the main process through shared memory, and on a
CPU that crossing, not reading the films, is the cost. Measured on the project's 2-core machine
(``bench/data.py``): float32 image + masks are 12 bytes per pixel, and a fresh shared-memory segment
per batch costs more than the rest of the pipeline together (allocation, zero-fill and page faults in
both processes). So the workers here only fill raw ``uint8`` films (2 bytes per pixel, augmented
when asked) into a small ring of shared-memory slots that they reuse, and the main process converts
each batch (:meth:`~mammo_anogan.data.dataset.MammoDataset.finish`) as it hands it out.

Why reusing a slot is safe: the DataLoader gives each worker at most ``prefetch_factor`` batches that
the main process has not taken yet (tasks are dealt round-robin from a window of ``prefetch_factor *
num_workers``), and the main process converts a batch before it asks for the next one. A worker's
ring therefore holds ``prefetch_factor + 2`` slots: one more than can be in flight, plus one spare.
Each slot also carries a generation number that the worker bumps before it writes; the main process
compares it after converting, so a reuse that broke this reasoning (a changed DataLoader) would stop
the run with an error instead of delivering a wrong image.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mammo_anogan.data.dataset import Batch, MammoDataset
from mammo_anogan.utils.signals import PreemptionSafeLoader

_HEADER = 8  # bytes of the generation counter in front of a slot's pixels


class SharedSlots:
    """A worker's ring of shared-memory buffers for raw batches of one shape."""

    def __init__(self, shape: tuple[int, ...], size: int) -> None:
        numel = int(np.prod(shape))
        self.slots = [torch.empty(_HEADER + numel, dtype=torch.uint8).share_memory_() for _ in range(size)]
        self.shape = shape
        self.next = 0
        self.generation = 0

    def take(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(generation view int64 [1], films uint8 view, generation)`` of the next slot, marked."""
        storage = self.slots[self.next % len(self.slots)]
        self.next += 1
        self.generation += 1
        header = storage[:_HEADER].view(torch.int64)
        header.fill_(self.generation)  # before any pixel is written: a late reader sees the change
        return header, storage[_HEADER:].view(self.shape), self.generation


class RawBatches(Dataset):
    """What the workers of a :class:`MammoDataLoader` see: raw batches written into shared slots."""

    def __init__(self, dataset: MammoDataset, ring_size: int) -> None:
        self.dataset = dataset
        self.ring_size = int(ring_size)
        self._rings: dict[tuple[int, ...], SharedSlots] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Batch:
        return self.__getitems__([index])

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        shape = (len(indices), 2, *self.dataset.image_shape)
        ring = self._rings.get(shape)
        if ring is None:
            ring = self._rings[shape] = SharedSlots(shape, self.ring_size)
        header, films, generation = ring.take()
        raw = self.dataset.read_raw(indices, films.numpy())
        return {"index": raw["index"], "films": films, "header": header, "generation": generation}

    def reseed(self, seed: int) -> None:
        self.dataset.reseed(seed)


class MammoDataLoader(PreemptionSafeLoader):
    """A DataLoader whose workers fill raw uint8 batches and whose main process converts them.

    Its workers survive pre-emption signals sent to the whole job (:class:`PreemptionSafeLoader`): the
    main process saves first, then stops them.

    Without workers, or over a dataset that is not a :class:`MammoDataset`, it is a plain
    DataLoader. With ``pin_memory`` the converted batch is written straight into page-locked memory.
    Raises RuntimeError if a worker overwrote a batch before it was converted (see the module).
    """

    def __init__(self, dataset: Dataset, *args: Any, **kwargs: Any) -> None:
        if isinstance(dataset, RawBatches):  # re-instantiated (e.g. by Lightning) from its attributes
            dataset = dataset.dataset
        self._finisher: MammoDataset | None = None
        self._pin_finished = False
        if int(kwargs.get("num_workers", 0)) > 0 and isinstance(dataset, MammoDataset):
            prefetch = kwargs.get("prefetch_factor")
            self._finisher = dataset
            self._pin_finished = bool(kwargs.get("pin_memory", False))
            kwargs["pin_memory"] = False  # the converted batch is pinned, not the raw one
            dataset = RawBatches(dataset, ring_size=(2 if prefetch is None else int(prefetch)) + 2)
        super().__init__(dataset, *args, **kwargs)

    def __iter__(self) -> Any:
        batches = super().__iter__()
        if self._finisher is None:
            return batches
        return self._finished(batches, self._finisher)

    def _finished(self, batches: Iterator[Batch], dataset: MammoDataset) -> Iterator[Batch]:
        for raw in batches:
            batch = dataset.finish(raw, pin=self._pin_finished)
            if int(raw["header"].item()) != raw["generation"]:
                raise RuntimeError(
                    "a DataLoader worker reused a shared batch buffer before the main process had "
                    "converted it; please report this (torch version and loader settings)"
                )
            del raw
            yield batch
