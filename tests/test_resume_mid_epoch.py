"""Resuming from a checkpoint taken in the middle of an epoch continues exactly (tiny 16 px GAN, CPU).

7 training images, batch 2 -> 3 batches per epoch (the 7th image is dropped), so a checkpoint after
4 minibatches falls inside the second epoch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from data_factory import make_prepared_dataset
from torch.utils.data import Dataset

from mammo_anogan.data.datamodule import MammoDataModule
from mammo_anogan.data.sampler import ResumableDataLoader, ResumableShuffleSampler, shuffled_shard
from mammo_anogan.models.gan_module import StyleGAN2Module
from mammo_anogan.train import AtomicCheckpointIO, KimgCheckpoint
from mammo_anogan.utils.config import PROJECT_ROOT

RES = 16
NUM_IMAGES = 7
BATCH = 2


class _IndexedReals(Dataset):
    """Seven fixed images; each item also carries its index so tests can see the order."""

    def __init__(self) -> None:
        self.images = torch.rand(NUM_IMAGES, 1, RES, RES, generator=torch.Generator().manual_seed(5)) * 2 - 1

    def __len__(self) -> int:
        return NUM_IMAGES

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "index": index}


def _loader(seed: int = 11) -> ResumableDataLoader:
    dataset = _IndexedReals()
    return ResumableDataLoader(dataset, ResumableShuffleSampler(dataset, BATCH, seed=seed), drop_last=True)


def _module() -> StyleGAN2Module:
    return StyleGAN2Module(
        generator={
            "z_dim": 8,
            "w_dim": 8,
            "img_resolution": RES,
            "mapping_layers": 1,
            "channel_base": 64,
            "channel_max": 8,
        },
        discriminator={"img_resolution": RES, "channel_base": 64, "channel_max": 8, "mbstd_group_size": 2},
        loss={"r1_gamma": 1.0, "r1_interval": 2, "pl_interval": 2},
        ema={"kimg": 0.01},
        ada={"enabled": True, "interval": 1, "kimg": 0.01, "target": 0.0},
        total_kimg=0.012,  # 6 minibatches of 2
        batch_size=BATCH,
    )


class _SeenIndices(pl.Callback):
    """Records which images each training step received."""

    def __init__(self) -> None:
        self.steps: list[list[int]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.steps.append(batch["index"].tolist())


def _fit(root: Path, callbacks: list[pl.Callback], ckpt_path: str | None = None) -> StyleGAN2Module:
    module = _module()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=-1,
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(module, train_dataloaders=_loader(), ckpt_path=ckpt_path)
    return module


def _assert_same_state(a: StyleGAN2Module, b: StyleGAN2Module) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    differing = [key for key in state_a if not torch.equal(state_a[key], state_b[key])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


def test_order_is_a_pure_function_of_seed_and_epoch_and_shards_partition() -> None:
    first, again = shuffled_shard(10, seed=3, epoch=2), shuffled_shard(10, seed=3, epoch=2)
    assert torch.equal(first, again) and sorted(first.tolist()) == list(range(10))
    assert not torch.equal(first, shuffled_shard(10, seed=3, epoch=3))
    assert not torch.equal(first, shuffled_shard(10, seed=4, epoch=2))
    shards = [shuffled_shard(11, seed=3, epoch=2, rank=r, num_replicas=3) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]  # 11 // 3 each: every rank runs as many steps
    assert len(set(torch.cat(shards).tolist())) == 9  # disjoint
    # The ranks' union is the single-device permutation minus its tail, interleaved.
    assert torch.equal(torch.stack(shards, 1).flatten(), shuffled_shard(11, 3, 2)[:9])


def test_loader_state_skips_the_consumed_batches() -> None:
    loader = _loader()
    loader.resumable_sampler.set_epoch(4)
    full = [batch["index"].tolist() for batch in loader]
    assert len(full) == len(loader) == 3 and all(len(b) == BATCH for b in full)
    iterator = iter(loader)
    next(iterator)
    state = loader.state_dict()
    assert state == {"seed": 11, "epoch": 4, "batches_consumed": 1, "batch_size": 2, "num_replicas": 1}

    fresh = _loader(seed=99)  # the checkpointed seed wins over the new loader's
    fresh.load_state_dict(state)
    assert [batch["index"].tolist() for batch in fresh] == full[1:]
    assert [batch["index"].tolist() for batch in fresh] == full  # the skip is one-shot
    fresh.resumable_sampler.set_epoch(5)
    assert fresh.state_dict()["epoch"] == 4  # position reported is that of the last iteration

    # Saved after the epoch's last batch: continue with the next epoch from its start.
    at_end = _loader()
    at_end.load_state_dict({**state, "batches_consumed": 3})
    at_end.resumable_sampler.set_epoch(5)  # what Lightning calls next; keeps the position
    expected = _loader()
    expected.resumable_sampler.set_epoch(5)
    assert [b["index"].tolist() for b in at_end] == [b["index"].tolist() for b in expected]


def test_iterating_does_not_touch_the_global_rng() -> None:
    """Creating the iterator must not shift the latents the training step draws afterwards."""
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    loader = _loader()
    next(iter(loader))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("every_n_kimg", "steps_before"),
    [(0.008, 4), (0.006, 3)],
    ids=["mid_epoch", "epoch_end"],
)
def test_resume_continues_exactly(tmp_path: Path, every_n_kimg: float, steps_before: int) -> None:
    """6 uninterrupted steps (A) == ``steps_before`` steps, checkpoint, fresh trainer resumed (B)."""
    pl.seed_everything(0)
    seen_a = _SeenIndices()
    checkpoint = KimgCheckpoint(every_n_kimg=every_n_kimg, dirpath=str(tmp_path / "ckpt"), save_top_k=-1)
    module_a = _fit(tmp_path / "a", [checkpoint, seen_a])
    assert module_a.cur_nimg == 12 and len(seen_a.steps) == 6
    saved = tmp_path / "ckpt" / f"kimg{steps_before * BATCH / 1000:010.3f}.ckpt"
    loader_state = torch.load(saved, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state[0]["batches_consumed"] == (steps_before - 1) % 3 + 1
    assert loader_state[0]["epoch"] == (steps_before - 1) // 3

    pl.seed_everything(1)  # a different seed: order, RNG and weights must all come from the checkpoint
    seen_b = _SeenIndices()
    module_b = _fit(tmp_path / "b", [seen_b], ckpt_path=str(saved))
    assert module_b.cur_nimg == 12
    assert seen_b.steps == seen_a.steps[steps_before:]
    _assert_same_state(module_a, module_b)


def test_datamodule_train_loader_is_resumable(tmp_path: Path) -> None:
    dataset_dir = make_prepared_dataset(tmp_path / "prepared", resolution=RES)
    datamodule = MammoDataModule(dataset_dir, resolution=RES, batch_size=2)
    loader = datamodule.train_dataloader()
    assert isinstance(loader, ResumableDataLoader) and loader.drop_last
    sampler = loader.resumable_sampler
    size = len(datamodule.dataset("train"))
    assert (sampler.num_replicas, sampler.rank, len(loader)) == (1, 0, size // 2)
    ids = [batch["image_id"] for batch in loader]
    assert len({i for batch in ids for i in batch}) == 2 * (size // 2)
    resumed = MammoDataModule(dataset_dir, resolution=RES, batch_size=2).train_dataloader()
    resumed.load_state_dict({**loader.state_dict(), "batches_consumed": 1})
    assert [batch["image_id"] for batch in resumed] == ids[1:]


DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import Dataset

    from mammo_anogan.data.datamodule import _distributed_world
    from mammo_anogan.data.sampler import ResumableDataLoader, ResumableShuffleSampler
    from mammo_anogan.models.gan_module import StyleGAN2Module
    from mammo_anogan.train import AtomicCheckpointIO, GradientSyncDDPStrategy, KimgCheckpoint
    from mammo_anogan.utils.io import atomic_torch_save

    class Reals(Dataset):  # 14 images: 7 per rank, 3 batches of 2 per rank and epoch
        def __init__(self):
            self.images = torch.rand(14, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
        def __len__(self):
            return 14
        def __getitem__(self, i):
            return {"image": self.images[i], "index": i}

    class Loader(pl.LightningDataModule):  # built after the process group exists, as MammoDataModule
        def train_dataloader(self):
            num_replicas, rank = _distributed_world()
            sampler = ResumableShuffleSampler(Reals(), 2, seed=11, num_replicas=num_replicas, rank=rank)
            return ResumableDataLoader(Reals(), sampler, drop_last=True)

    class Seen(pl.Callback):
        def __init__(self):
            self.steps = []
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.steps.append(batch["index"].tolist())

    out, ckpt = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else None)
    torch.set_num_threads(1)
    pl.seed_everything(0 if ckpt is None else 1)
    module = StyleGAN2Module(
        generator={"z_dim": 8, "w_dim": 8, "img_resolution": 16, "mapping_layers": 1,
                   "channel_base": 64, "channel_max": 8},
        discriminator={"img_resolution": 16, "channel_base": 64, "channel_max": 8, "mbstd_group_size": 2},
        loss={"r1_gamma": 1.0, "r1_interval": 2, "pl_interval": 2},
        ada={"enabled": True, "interval": 1, "kimg": 0.01, "target": 0.0},
        ema={"kimg": 0.01},
        total_kimg=0.024,  # 6 steps of 2 ranks x 2 images
        batch_size=2,
    )
    seen = Seen()
    callbacks = [seen]
    if ckpt is None:  # after 4 steps (16 images): the second epoch's first batch
        callbacks.append(KimgCheckpoint(every_n_kimg=0.016, dirpath=f"{out}/ckpt", save_top_k=-1))
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy=GradientSyncDDPStrategy(), max_epochs=-1, logger=False,
        enable_checkpointing=ckpt is None, enable_progress_bar=False, enable_model_summary=False,
        plugins=[AtomicCheckpointIO()], callbacks=callbacks,
    )
    trainer.fit(module, datamodule=Loader(), ckpt_path=ckpt)
    atomic_torch_save(
        {"state": module.state_dict(), "steps": seen.steps, "cur_nimg": module.cur_nimg},
        f"{out}/rank{trainer.global_rank}.pt",
    )
    """
)


def _run_ddp(script: Path, out: Path, *extra: str) -> list[dict[str, Any]]:
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(out), *extra],
        cwd=out,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]


@pytest.mark.slow
def test_two_process_ddp_resume_mid_epoch_is_exact(tmp_path: Path) -> None:
    """Each rank reads its own shard, and both continue exactly from a mid-epoch checkpoint."""
    script = tmp_path / "ddp_resume.py"
    script.write_text(DDP_SCRIPT)
    run_a = _run_ddp(script, tmp_path / "a")
    assert [len(rank["steps"]) for rank in run_a] == [6, 6] and run_a[0]["cur_nimg"] == 24
    epoch_0 = [{i for step in rank["steps"][:3] for i in step} for rank in run_a]
    assert len(epoch_0[0]) == len(epoch_0[1]) == 6 and not epoch_0[0] & epoch_0[1]  # disjoint shards
    run_b = _run_ddp(script, tmp_path / "b", str(tmp_path / "a" / "ckpt" / "kimg000000.016.ckpt"))
    for rank_a, rank_b in zip(run_a, run_b):
        assert rank_b["cur_nimg"] == 24 and rank_b["steps"] == rank_a["steps"][4:]
        assert all(torch.equal(rank_a["state"][k], rank_b["state"][k]) for k in rank_a["state"])
