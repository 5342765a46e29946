"""Training-speed benchmark of StyleGAN2Module: s/kimg, images/s, per-phase time, top CUDA kernels.

    python bench/train.py                                  # 64/256/512 px, paper widths, auto device
    python bench/train.py --resolutions 256 --channel-base 16384 --batch 32 --anchor 7.19 7.57
    python bench/train.py --resolutions 64 --channel-base 2048 --steps 3 --warmup 1   # quick CPU run

Runs the real Lightning training step (all four phases at their lazy intervals, EMA, ADA at a fixed
p = 0.2 so the warp runs) on random in-memory images, so data loading is excluded. The first
``--warmup`` iterations (cuDNN autotuning, allocator growth, lazy inits) are not timed, but their
progress is printed so a killed run still shows where it was. The timed window is a multiple of 16
iterations (one R1 period, four path-length periods), so the figure is the amortised cost. On a GPU
the phases (G main, path length, D main, R1, step end) are timed with CUDA events, and after the
timed window ``--profile-steps`` more iterations run under ``torch.profiler`` to list the most
expensive kernels. ``--anchor`` takes the reference implementation's s/kimg on the same GPU and
prints the ratio (ours / reference; below 1 is faster).
"""

from __future__ import annotations

import argparse
import itertools
import json
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
from mammo_anogan.models.stylegan2 import layers  # noqa: E402
from mammo_anogan.utils import profiling  # noqa: E402

PHASES = ("G_main", "G_path_length", "D_main", "D_r1", "step_end")


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


def _top_kernels(prof: Any, count: int) -> list[dict[str, Any]]:
    """The ``count`` CUDA kernels with the most self device time (name, ms total, calls)."""
    rows = []
    for event in prof.key_averages():
        device_time = getattr(event, "self_device_time_total", None)
        if device_time is None:
            device_time = getattr(event, "self_cuda_time_total", 0.0)
        if (
            device_time
            and getattr(event, "device_type", None) is not None
            and "CUDA" in str(event.device_type)
        ):
            rows.append({"kernel": event.key[:90], "ms": device_time / 1000.0, "calls": event.count})
    if not rows:  # older profilers: every row with device time
        for event in prof.key_averages():
            device_time = getattr(
                event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0)
            )
            if device_time and not event.key.startswith(("aten::", "G_", "D_", "step_end", "ProfilerStep")):
                rows.append({"kernel": event.key[:90], "ms": device_time / 1000.0, "calls": event.count})
    rows.sort(key=lambda row: -row["ms"])
    return rows[:count]


class StepTimer(pl.Callback):
    """Warm-up (printed), timed window (wall clock + CUDA-event phase times), then a profiled window."""

    def __init__(self, warmup: int, steps: int, profile_steps: int, label: str) -> None:
        self.warmup, self.steps, self.profile_steps, self.label = warmup, steps, profile_steps, label
        self.start: float | None = None
        self.end: float | None = None
        self.start_nimg = self.end_nimg = 0
        self.phase_ms: dict[str, tuple[float, int]] = {}
        self.top_kernels: list[dict[str, Any]] = []
        self._profiler: Any = None
        self._iteration_start = time.perf_counter()
        self.device = "cpu"
        self.peak_gib: float | None = None

    @staticmethod
    def _sync(pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        i = pl_module.num_iterations
        on_gpu = pl_module.device.type == "cuda"
        if i <= self.warmup:
            self._sync(pl_module)
            now = time.perf_counter()
            print(
                f"  [{self.label}] warm-up iteration {i}/{self.warmup}: {now - self._iteration_start:.2f} s",
                flush=True,
            )
            self._iteration_start = now
        if i == self.warmup:
            if on_gpu:
                self.device = torch.cuda.get_device_name(pl_module.device)
                torch.cuda.reset_peak_memory_stats(pl_module.device)
                profiling.enable_phase_timing(True)
            self.start, self.start_nimg = time.perf_counter(), pl_module.cur_nimg
        elif i == self.warmup + self.steps:
            self._sync(pl_module)
            self.end, self.end_nimg = time.perf_counter(), pl_module.cur_nimg
            if on_gpu:
                self.peak_gib = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
                self.phase_ms = profiling.phase_times_ms()
                profiling.enable_phase_timing(False)
                if self.profile_steps:
                    self._profiler = torch.profiler.profile(
                        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                    )
                    self._profiler.__enter__()
        elif i == self.warmup + self.steps + self.profile_steps and self._profiler is not None:
            self._sync(pl_module)
            self._profiler.__exit__(None, None, None)
            self.top_kernels = _top_kernels(self._profiler, 10)
            self._profiler = None


def bench_one(resolution: int, args: argparse.Namespace, resampling: str = "composed") -> dict[str, Any]:
    layers.set_resampling_mode(resampling)
    profile_steps = args.profile_steps if torch.cuda.is_available() and args.device != "cpu" else 0
    total_steps = args.warmup + args.steps + profile_steps
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
            "mbstd_group_size": args.mbstd_group,
        },
        ada={"enabled": not args.no_ada, "initial_p": 0.2, "kimg": 1e9},  # p fixed at 0.2
        loss={"reg_precision": args.reg_precision},
        total_kimg=total_steps * args.batch / 1000,
        batch_size=args.batch,
        compile=args.compile,
    )
    label = f"{resolution}px {resampling}"
    timer = StepTimer(args.warmup, args.steps, profile_steps, label)
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
        benchmark=not args.no_cudnn_benchmark,
    )
    loader = DataLoader(
        RandomReals(resolution, args.batch * 4),
        batch_size=args.batch,
        shuffle=True,
        drop_last=True,
        pin_memory=torch.cuda.is_available(),
    )
    trainer.fit(module, train_dataloaders=loader)
    assert timer.start is not None and timer.end is not None, "the timed window did not complete"
    seconds, images = timer.end - timer.start, timer.end_nimg - timer.start_nimg
    # Lightning moves the module back to the CPU after fit: the timer recorded the device
    if timer.peak_gib is not None:
        memory = f"{timer.peak_gib:.2f} GiB (GPU)"
    else:
        memory = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (RSS)"
    iterations = max(1, args.steps)
    phase_ms = {name: ms / iterations for name, (ms, _count) in timer.phase_ms.items()}
    return {
        "resolution": resolution,
        "batch": args.batch,
        "channel_base": args.channel_base,
        "precision": args.precision,
        "reg_precision": args.reg_precision,
        "resampling": resampling,
        "cudnn_benchmark": not args.no_cudnn_benchmark,
        "params_G": sum(p.numel() for p in module.G.parameters()),
        "sec_per_kimg": seconds / images * 1000,
        "images_per_s": images / seconds,
        "ms_per_iteration": seconds / iterations * 1000,
        "phase_ms_per_iteration": phase_ms,  # amortised: path length every 4, R1 every 16 iterations
        "phase_calls": {name: count for name, (_ms, count) in timer.phase_ms.items()},
        "top_kernels": timer.top_kernels,
        "memory": memory,
        "device": timer.device,
    }


def print_rows(rows: list[dict[str, Any]], anchor: list[float] | None) -> None:
    header = f"{'res':>5} {'batch':>5} {'G params':>9} {'s/kimg':>8} {'img/s':>8} {'ms/it':>7}"
    print(header + "  peak memory  device")
    for row in rows:
        params = row["params_G"] / 1e6
        print(
            f"{row['resolution']:>5} {row['batch']:>5} {params:>8.2f}M {row['sec_per_kimg']:>8.2f} "
            f"{row['images_per_s']:>8.1f} {row['ms_per_iteration']:>7.1f}  {row['memory']:<12} "
            f"{row['device']}"
        )
        print(f"      resampling {row['resampling']}, R1/path length {row['reg_precision']}")
        if anchor:
            ratios = " / ".join(f"{row['sec_per_kimg'] / a:.2f}x of {a}" for a in anchor)
            print(f"      ratio to the reference s/kimg: {ratios}")
        if row["phase_ms_per_iteration"]:
            phases = ", ".join(
                f"{name} {row['phase_ms_per_iteration'][name]:.1f}"
                for name in PHASES
                if name in row["phase_ms_per_iteration"]
            )
            print(f"      GPU ms per iteration by phase (amortised): {phases}")
        for kernel in row["top_kernels"]:
            print(f"      {kernel['ms']:9.2f} ms {kernel['calls']:6d} calls  {kernel['kernel']}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--channel-base", type=int, default=32768, help="32768: config-f; 16384: paper256")
    parser.add_argument("--channel-max", type=int, default=512)
    parser.add_argument("--mapping-layers", type=int, default=8)
    parser.add_argument("--mbstd-group", type=int, default=4, help="minibatch-std group (paper256 anchor: 8)")
    parser.add_argument("--batch", type=int, default=8, help="per-device batch (the paper: 8)")
    parser.add_argument("--steps", type=int, default=32, help="timed minibatches (a multiple of 16)")
    parser.add_argument("--warmup", type=int, default=6, help="untimed minibatches first")
    parser.add_argument("--profile-steps", type=int, default=8, help="profiled minibatches after (GPU)")
    parser.add_argument("--device", default="auto", help="auto | cpu | gpu")
    parser.add_argument("--precision", default=None, help="default: bf16-mixed on GPU, 32-true on CPU")
    parser.add_argument("--reg-precision", default="fp32", choices=("fp32", "autocast"))
    parser.add_argument(
        "--resampling",
        nargs="+",
        default=["separate"],
        choices=layers.RESAMPLING_MODES,
        help="FIR formulation(s), each benchmarked in turn in this process (shares cuDNN's autotuning)",
    )
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--no-cudnn-benchmark",
        action="store_true",
        help="cuDNN heuristics instead of autotuning (quick warm-up)",
    )
    parser.add_argument("--no-ada", action="store_true")
    parser.add_argument("--anchor", type=float, nargs="*", default=None, help="reference s/kimg (same GPU)")
    parser.add_argument("--json", default=None, help="append the rows as JSON lines to this file")
    args = parser.parse_args()
    on_gpu = args.device == "gpu" or (args.device == "auto" and torch.cuda.is_available())
    if args.precision is None:
        args.precision = "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"
    rows = []
    for res, resampling in itertools.product(args.resolutions, args.resampling):
        rows.append(bench_one(res, args, resampling))
        if args.json:
            with open(args.json, "a") as handle:
                handle.write(json.dumps(rows[-1]) + "\n")
    print(f"\nStyleGAN2 training speed: channel_base {args.channel_base}, {args.precision}, {args.steps} its")
    print_rows(rows, args.anchor)


if __name__ == "__main__":
    main()
