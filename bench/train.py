"""Training-speed benchmark of StyleGAN2Module: sec/kimg, images/s and peak memory per resolution.

    python bench/train.py                                  # 64/256/512 px, paper widths, auto device
    python bench/train.py --resolutions 64 --channel-base 2048 --steps 3 --warmup 1   # quick CPU run

Runs the real Lightning training step (all four phases, lazy regularisation at their intervals, EMA,
ADA) on random in-memory images, so data loading is excluded. Warm-up steps (cuDNN autotuning,
allocator growth, lazy inits) are not timed; CUDA is synchronised before reading the clock.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mammo_anogan.models.gan_module import StyleGAN2Module  # noqa: E402


class RandomReals(Dataset):
    """``length`` random 1-channel images in [-1, 1] (fixed seed), as dict batches."""

    def __init__(self, resolution: int, length: int) -> None:
        self.images = torch.rand(
            length, 1, resolution, resolution, generator=torch.Generator().manual_seed(0)
        )
        self.images = self.images * 2 - 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index]}


class StepTimer(pl.Callback):
    """Clock from the end of the warm-up steps to the end of training; peak memory after warm-up."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.start_nimg = 0
        self.end: float | None = None
        self.end_nimg = 0

    @staticmethod
    def _sync(pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        if pl_module.num_iterations == self.warmup:
            self._sync(pl_module)
            if pl_module.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(pl_module.device)
            self.start, self.start_nimg = time.perf_counter(), pl_module.cur_nimg

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self._sync(pl_module)
        self.end, self.end_nimg = time.perf_counter(), pl_module.cur_nimg


def bench_one(resolution: int, args: argparse.Namespace) -> dict[str, Any]:
    total_steps = args.warmup + args.steps
    module = StyleGAN2Module(
        generator={
            "img_resolution": resolution,
            "channel_base": args.channel_base,
            "channel_max": args.channel_max,
            "mapping_layers": args.mapping_layers,
        },
        discriminator={
            "img_resolution": resolution,
            "channel_base": args.channel_base,
            "channel_max": args.channel_max,
        },
        ada={"enabled": not args.no_ada},
        total_kimg=total_steps * args.batch / 1000,
        batch_size=args.batch,
        compile=args.compile,
    )
    timer = StepTimer(args.warmup)
    trainer = pl.Trainer(
        accelerator=args.device,
        devices=1,
        precision=args.precision,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        benchmark=True,
    )
    loader = DataLoader(
        RandomReals(resolution, args.batch * 4), batch_size=args.batch, shuffle=True, drop_last=True
    )
    trainer.fit(module, train_dataloaders=loader)
    assert timer.start is not None and timer.end is not None
    seconds, images = timer.end - timer.start, timer.end_nimg - timer.start_nimg
    if module.device.type == "cuda":
        peak_gib = torch.cuda.max_memory_allocated(module.device) / 2**30
        memory = f"{peak_gib:.2f} GiB (GPU)"
    else:
        memory = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (RSS)"
    return {
        "resolution": resolution,
        "params_G": sum(p.numel() for p in module.G.parameters()),
        "sec_per_kimg": seconds / images * 1000,
        "images_per_s": images / seconds,
        "memory": memory,
        "device": str(module.device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--channel-base", type=int, default=32768, help="32768: the paper's config-f widths")
    parser.add_argument("--channel-max", type=int, default=512)
    parser.add_argument("--mapping-layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="per-device batch (the paper: 8)")
    parser.add_argument("--steps", type=int, default=20, help="timed minibatches")
    parser.add_argument("--warmup", type=int, default=5, help="untimed minibatches first")
    parser.add_argument("--device", default="auto", help="auto | cpu | gpu")
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on GPU, 32-true on CPU")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--no-ada", action="store_true")
    args = parser.parse_args()
    on_gpu = args.device == "gpu" or (args.device == "auto" and torch.cuda.is_available())
    if args.precision is None:
        args.precision = "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"
    rows = [bench_one(res, args) for res in args.resolutions]
    print(
        f"\nStyleGAN2 training speed: batch {args.batch}, channel_base {args.channel_base}, {args.precision}"
    )
    print(f"{'res':>5} {'G params':>10} {'sec/kimg':>10} {'img/s':>8}  peak memory        device")
    for row in rows:
        print(
            f"{row['resolution']:>5} {row['params_G'] / 1e6:>9.2f}M {row['sec_per_kimg']:>10.1f} "
            f"{row['images_per_s']:>8.1f}  {row['memory']:<18} {row['device']}"
        )


if __name__ == "__main__":
    main()
