"""Per-iteration launch and sync budget of the StyleGAN2 training step, counted on the CPU.

    python bench/train_overhead.py                          # 256 px, 16 iterations (one R1 period)
    python bench/train_overhead.py --resolution 512 --json out.json

Every aten operator that reaches the dispatcher is (at least) one kernel launch on a GPU, and a few
operators force the host to wait for the device (``.item()``/``float()``/``bool()`` of a tensor, data-
dependent shapes, tensors built from host data). Neither depends on the network widths, so this runs
the real Lightning training step (all four phases at their lazy intervals, EMA, ADA with p > 0) with
tiny widths at the chosen resolution and counts, per iteration: operators, kernels (operators minus
views), dtype casts, sync points, and kernels by phase (G main, path length, D main, R1, step end).
The average over 16 iterations is the amortised cost (R1 runs every 16, path length every 4).

Run it under ``torch.autocast``-equivalent precision with ``--precision bf16-mixed`` to count the casts a
GPU run makes (bf16 on the CPU). Figures in the issue notes come from this script.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mammo_anogan.models.gan_module import StyleGAN2Module  # noqa: E402
from mammo_anogan.utils.profiling import OpCounter  # noqa: E402


class _Reals(Dataset):
    def __init__(self, resolution: int, length: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(length, 1, resolution, resolution, generator=g) * 2 - 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index]}


class StepCounter(pl.Callback):
    """One :class:`OpCounter` per training iteration (from batch start to batch end)."""

    def __init__(self) -> None:
        self.counters: list[OpCounter] = []
        self._active: OpCounter | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._active = OpCounter()
        self._active.__enter__()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        assert self._active is not None
        self._active.__exit__(None, None, None)
        self.counters.append(self._active)
        self._active = None


def count_iterations(
    resolution: int = 256,
    iterations: int = 16,
    batch: int = 4,
    precision: str = "32-true",
    ada_p: float = 0.2,
    nonfinite_check_interval: int | None = 16,
) -> list[OpCounter]:
    """Run ``iterations`` real training steps on the CPU and return one OpCounter per iteration."""
    torch.manual_seed(0)
    module = StyleGAN2Module(
        generator={
            "img_resolution": resolution,
            "channel_base": 64,
            "channel_max": 4,
            "z_dim": 8,
            "w_dim": 8,
            "mapping_layers": 8,
        },
        discriminator={"img_resolution": resolution, "channel_base": 64, "channel_max": 4},
        ada={"enabled": True, "initial_p": ada_p},
        total_kimg=iterations * batch / 1000,
        batch_size=batch,
        nonfinite_check_interval=nonfinite_check_interval,
    )
    counter = StepCounter()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[counter],
    )
    loader = DataLoader(_Reals(resolution, batch * iterations), batch_size=batch, drop_last=True)
    trainer.fit(module, train_dataloaders=loader)
    return counter.counters


def summarise(counters: list[OpCounter]) -> dict[str, Any]:
    """Iteration 0 (all four phases), iteration 1 (main phases only) and the average per iteration."""
    n = len(counters)
    phases = sorted({label for c in counters for label in c.kernels_by_phase})
    return {
        "iterations": n,
        "first_iteration": counters[0].summary(),
        "main_only_iteration": counters[1].summary() if n > 1 else None,
        "mean_per_iteration": {
            "ops": sum(c.total for c in counters) / n,
            "kernels": sum(c.kernels for c in counters) / n,
            "casts": sum(c.casts for c in counters) / n,
            "syncs": sum(c.sync_count for c in counters) / n,
            "kernels_by_phase": {p: sum(c.kernels_by_phase[p] for c in counters) / n for p in phases},
            "syncs_by_phase": {p: sum(c.syncs_by_phase[p] for c in counters) / n for p in phases},
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--precision", default="32-true", help="32-true | bf16-mixed (CPU autocast)")
    parser.add_argument("--json", default=None, help="also write the summary here")
    args = parser.parse_args()
    summary = summarise(count_iterations(args.resolution, args.iterations, args.batch, args.precision))
    mean = summary["mean_per_iteration"]
    first = summary["first_iteration"]
    n = summary["iterations"]
    print(f"StyleGAN2 training step at {args.resolution} px, {args.precision}, {n} iterations")
    print(f"{'':28}{'ops':>8}{'kernels':>9}{'casts':>7}{'syncs':>7}")
    row = (first["ops"], first["kernels"], first["casts"], first["syncs"])
    print(f"{'iteration 0 (4 phases)':28}{row[0]:>8}{row[1]:>9}{row[2]:>7}{row[3]:>7}")
    row = (mean["ops"], mean["kernels"], mean["casts"], mean["syncs"])
    print(f"{'mean per iteration':28}{row[0]:>8.0f}{row[1]:>9.0f}{row[2]:>7.1f}{row[3]:>7.2f}")
    by_phase = mean["kernels_by_phase"].items()
    print("kernels per iteration by phase: " + ", ".join(f"{k} {v:.0f}" for k, v in by_phase))
    syncs = mean["syncs_by_phase"].items()
    print("syncs per iteration by phase: " + ", ".join(f"{k} {v:.2f}" for k, v in syncs))
    print("sync operators in iteration 0:", first["sync_ops"])
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
