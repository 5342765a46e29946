"""Training order that survives a restart in the middle of an epoch.

Why this exists: Lightning (2.x) restores its loop counters from a mid-epoch checkpoint but simply
re-iterates the train DataLoader, so a plain shuffled loader starts a *new* permutation and the
resumed run sees other images than the uninterrupted one. Creating that iterator also draws a seed
from the global torch RNG, which shifts every latent drawn afterwards. Lightning does save and
restore the state of a train DataLoader that implements ``state_dict()`` / ``load_state_dict()``
(before it creates the iterator), which is the hook used here:

* :class:`ResumableShuffleSampler` - the order is a pure function of ``(seed, epoch)`` (like
  ``DistributedSampler``, of which it is a subclass so Lightning leaves it alone under DDP and each
  rank reads its own shard), and it can start ``k`` batches into the epoch.
* :class:`ResumableDataLoader` - counts the batches it has *handed out* (not the ones workers have
  prefetched), checkpoints ``(seed, epoch, batches consumed)`` and seeds its worker base seed from
  ``(seed, epoch)`` instead of the global RNG.

Lightning (no prefetching for sized loaders) resumes with exactly ``batches consumed`` batches of the
epoch already counted, so it asks for the remaining ones, which is what the sampler yields.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import Dataset, DistributedSampler

from mammo_anogan.data.loader import MammoDataLoader

log = logging.getLogger(__name__)

_MASK_63 = 2**63 - 1


def epoch_seed(seed: int, epoch: int) -> int:
    """One non-negative 63-bit seed per ``(seed, epoch)``, distinct for neighbouring seeds."""
    return (int(seed) * 1_000_003 + int(epoch)) & _MASK_63


def shuffled_shard(
    num_items: int, seed: int, epoch: int, rank: int = 0, num_replicas: int = 1
) -> torch.Tensor:
    """This rank's indices of the epoch's permutation (tail dropped so every rank gets as many)."""
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
    usable = (num_items // num_replicas) * num_replicas
    return order[:usable][rank::num_replicas]


class ResumableShuffleSampler(DistributedSampler):
    """Shuffled, sharded sampler whose order depends only on ``(seed, epoch)`` and can skip batches.

    ``set_epoch`` must be called before each epoch (Lightning does); iterating twice without it
    repeats the order, as with ``DistributedSampler``. :meth:`resume` makes the *next* iteration
    start ``batches_consumed`` batches into the epoch; later iterations are complete again.
    """

    def __init__(
        self, dataset: Dataset, batch_size: int, seed: int = 0, num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=int(seed), drop_last=True
        )
        self.batch_size = int(batch_size)
        self.start_batch = 0  # batches to skip at the next iteration (one-shot)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's permutation; a pending resume offset survives only for the same epoch."""
        if int(epoch) != self.epoch:
            self.start_batch = 0
        self.epoch = int(epoch)

    def resume(self, epoch: int, batches_consumed: int) -> None:
        """Continue epoch ``epoch`` after its first ``batches_consumed`` batches."""
        self.epoch = int(epoch)
        self.start_batch = max(0, int(batches_consumed))

    def __iter__(self) -> Iterator[int]:
        indices = shuffled_shard(len(self.dataset), self.seed, self.epoch, self.rank, self.num_replicas)
        start = self.start_batch * self.batch_size
        self.start_batch = 0
        return iter(indices[start:].tolist())

    def __len__(self) -> int:
        """Size of this rank's full shard (Lightning sizes the epoch from it, resumed or not)."""
        return len(self.dataset) // self.num_replicas


class ResumableDataLoader(MammoDataLoader):
    """DataLoader over a :class:`ResumableShuffleSampler` whose position is saved in checkpoints.

    Lightning calls :meth:`state_dict` when it writes a checkpoint and :meth:`load_state_dict` before
    it creates the iterator on resume. The worker base seed comes from ``(seed, epoch)``, so creating
    an iterator never consumes the global torch RNG (which the training step's latents come from).
    """

    def __init__(self, dataset: Dataset, sampler: ResumableShuffleSampler, **kwargs: Any) -> None:
        for reserved in ("batch_size", "shuffle", "batch_sampler", "generator"):
            kwargs.pop(reserved, None)
        super().__init__(
            dataset, batch_size=sampler.batch_size, sampler=sampler, generator=torch.Generator(), **kwargs
        )
        self._epoch = sampler.epoch
        self._batches_consumed = 0

    @property
    def resumable_sampler(self) -> ResumableShuffleSampler:
        assert isinstance(self.sampler, ResumableShuffleSampler)
        return self.sampler

    def __iter__(self) -> Iterator[Any]:
        sampler = self.resumable_sampler
        self.generator.manual_seed(epoch_seed(sampler.seed, sampler.epoch) ^ 0x5DEECE66D)
        self._epoch, self._batches_consumed = sampler.epoch, sampler.start_batch
        return self._counted(super().__iter__())

    def _counted(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self._batches_consumed += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        sampler = self.resumable_sampler
        return {
            "seed": int(sampler.seed),
            "epoch": int(self._epoch),
            "batches_consumed": int(self._batches_consumed),
            "batch_size": int(sampler.batch_size),
            "num_replicas": int(sampler.num_replicas),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sampler = self.resumable_sampler
        saved = (int(state_dict.get("batch_size", -1)), int(state_dict.get("num_replicas", -1)))
        if saved != (sampler.batch_size, sampler.num_replicas):
            log.warning(
                "resuming with batch size %d on %d device(s) from a checkpoint taken with %d on %d: "
                "training continues but not in the exact order of the interrupted run",
                sampler.batch_size,
                sampler.num_replicas,
                *saved,
            )
        epoch, consumed = int(state_dict["epoch"]), int(state_dict["batches_consumed"])
        if consumed >= len(self):  # saved after the epoch's last batch: the next epoch starts afresh
            epoch, consumed = epoch + 1, 0
        sampler.seed = int(state_dict["seed"])
        sampler.resume(epoch, consumed)
        self._epoch, self._batches_consumed = epoch, consumed
