"""Two CPU processes (gloo) train with GradientSyncDDPStrategy and stay in lock-step."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from mammo_anogan.utils.config import PROJECT_ROOT

SCRIPT = textwrap.dedent(
    """
    import sys
    import pytorch_lightning as pl
    import torch
    from torch.utils.data import DataLoader, Dataset

    from mammo_anogan.models.gan_module import StyleGAN2Module
    from mammo_anogan.train import AtomicCheckpointIO, GradientSyncDDPStrategy
    from mammo_anogan.utils.io import atomic_torch_save

    class Reals(Dataset):
        def __init__(self):
            self.images = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
        def __len__(self):
            return 8
        def __getitem__(self, i):
            return {"image": self.images[i]}

    out = sys.argv[1]
    torch.set_num_threads(1)
    pl.seed_everything(0)
    module = StyleGAN2Module(
        generator={"z_dim": 16, "w_dim": 16, "img_resolution": 16, "mapping_layers": 2,
                   "channel_base": 128, "channel_max": 16},
        discriminator={"img_resolution": 16, "channel_base": 128, "channel_max": 16},
        loss={"r1_gamma": 1.0, "r1_interval": 2, "pl_interval": 2},
        ada={"enabled": True, "interval": 1, "kimg": 0.01, "target": 0.0},
        ema={"kimg": 0.01},
        total_kimg=0.012,
        batch_size=2,
    )
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy=GradientSyncDDPStrategy(), max_epochs=-1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(module, train_dataloaders=DataLoader(Reals(), batch_size=2, shuffle=True))
    rank = trainer.global_rank
    atomic_torch_save(
        {
            "G": torch.cat([p.detach().flatten() for p in module.G.parameters()]),
            "D": torch.cat([p.detach().flatten() for p in module.D.parameters()]),
            "G_ema": torch.cat([p.detach().flatten() for p in module.G_ema.parameters()]),
            # Buffers too: w_avg is updated from each rank's own latents and must be averaged.
            "G_buffers": torch.cat([b.detach().float().flatten() for b in module.G.buffers()]),
            "pl_mean": module.path_length.pl_mean.clone(),
            "ada_p": module.augment_pipe.p.clone(),
            "cur_nimg": module.cur_nimg,
            "iterations": module.num_iterations,
            "world_size": trainer.world_size,
        },
        f"{out}/rank{rank}.pt",
    )
    """
)


def test_two_process_cpu_ddp_stays_in_sync(tmp_path: Path) -> None:
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    # cur_nimg counts the global batch: 3 steps x 2 ranks x 2 images = 12 = total_kimg.
    assert ranks[0]["cur_nimg"] == ranks[1]["cur_nimg"] == 12
    assert ranks[0]["iterations"] == 3
    # Different data and latents per rank, yet identical weights: gradients, the path-length mean
    # and the ADA statistics were all-reduced.
    for key in ("G", "D", "G_ema", "G_buffers", "pl_mean", "ada_p"):
        torch.testing.assert_close(ranks[0][key], ranks[1][key], rtol=0, atol=0, msg=key)
    assert ranks[0]["pl_mean"].item() > 0 and ranks[0]["ada_p"].item() > 0
