"""GPU tier: the training step, EMA, projection, export and pre-emption on a real CUDA device.

Run with ``pytest -m gpu`` (skipped without CUDA). Sizes are small so the tier takes about a minute
on one GPU; ``bench/gpu_check.sh`` runs it first. Each test states the GPU-specific property it checks.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mammo_anogan.models.gan_module import StyleGAN2Module

DEVICE = "cuda"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


class _Reals(Dataset):
    def __init__(self, resolution: int, length: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(length, 1, resolution, resolution, generator=g) * 2 - 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index]}


def _module(resolution: int = 64, batch: int = 8, steps: int = 6, **kwargs: Any) -> StyleGAN2Module:
    torch.manual_seed(0)
    return StyleGAN2Module(
        generator={
            "img_resolution": resolution,
            "channel_base": 2048,
            "channel_max": 128,
            "z_dim": 64,
            "w_dim": 64,
        },
        discriminator={"img_resolution": resolution, "channel_base": 2048, "channel_max": 128},
        ada={"enabled": True, "initial_p": 0.5},
        loss={"r1_interval": 2, "pl_interval": 2},
        total_kimg=steps * batch / 1000,
        batch_size=batch,
        r1_gamma=1.0,
        **kwargs,
    )


class _Record(pl.Callback):
    """Records the logged losses of every step, and forbids host syncs in steps >= ``strict_from``."""

    def __init__(self, strict_from: int) -> None:
        self.strict_from = strict_from
        self.losses: list[dict[str, float]] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if pl_module.num_iterations >= self.strict_from:
            torch.cuda.set_sync_debug_mode("error")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        torch.cuda.set_sync_debug_mode("default")
        metrics = trainer.callback_metrics
        self.losses.append({k: float(v) for k, v in metrics.items() if k.startswith("train/loss")})


def _fit(
    module: StyleGAN2Module, callbacks: list[pl.Callback], resolution: int = 64, batch: int = 8
) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed",
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        benchmark=True,
    )
    loader = DataLoader(_Reals(resolution, batch * 8), batch_size=batch, shuffle=True, drop_last=True)
    trainer.fit(module, train_dataloaders=loader)
    return trainer


def test_training_step_all_four_phases_bf16_ada_r1_pl_without_host_sync() -> None:
    """Iterations 0, 2, 4 run G main + path length + D main + R1 (through the ADA warp, p = 0.5) in
    bf16; from iteration 2 on any host-device sync inside the step raises (sync debug mode)."""
    module = _module(steps=6, nonfinite_check_interval=1000)
    record = _Record(strict_from=2)
    _fit(module, [record])
    assert module.num_iterations == 6 and module._device_skip  # fused Adam, device-side skip
    assert all(
        k in record.losses[0] for k in ("train/loss_g", "train/loss_pl", "train/loss_d", "train/loss_r1")
    )
    assert all(all(torch.isfinite(torch.tensor(v)) for v in step.values()) for step in record.losses)
    module.check_nonfinite()
    assert module.nonfinite_skipped == 0
    assert float(module.augment_pipe.p) == pytest.approx(0.5, abs=0.01)
    # G_ema moved away from G's initial weights and shares G's memory format (foreach fast path)
    conv = module.G_ema.synthesis.blocks[-1].conv1.conv.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert module.G.synthesis.blocks[-1].conv1.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_nonfinite_minibatch_is_skipped_on_the_device() -> None:
    """A NaN real batch: the D updates of that minibatch are skipped by fused Adam's found_inf (weights
    unchanged by it), G_ema's weights untouched, and the next check counts it (skip mode)."""
    module = _module(steps=4, on_nonfinite="skip", nonfinite_check_interval=1000)

    class _Poison(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
            if pl_module.num_iterations == 2:
                batch["image"][0] = float("nan")  # a whole image: the ADA warp cannot crop it away
                self.before = {k: v.detach().clone() for k, v in pl_module.D.state_dict().items()}
                self.ema_before = {k: v.detach().clone() for k, v in pl_module.G_ema.named_parameters()}

        def on_train_batch_end(self, trainer, pl_module, *args) -> None:  # type: ignore[no-untyped-def]
            if pl_module.num_iterations == 3:
                after = pl_module.D.state_dict()
                self.d_unchanged = all(torch.equal(after[k], v) for k, v in self.before.items())
                ema = dict(pl_module.G_ema.named_parameters())
                self.ema_unchanged = all(torch.equal(ema[k], v) for k, v in self.ema_before.items())

    poison = _Poison()
    _fit(module, [poison])
    assert poison.d_unchanged and poison.ema_unchanged
    module.check_nonfinite()
    assert module.nonfinite_skipped == 1
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_projector_bf16_channels_last_on_gpu() -> None:
    """Projection of 2 images x 3 seeds in bf16 + channels_last: finite, recovers a generated image
    better than the start, no sync per step, and the final reconstruction is fp32."""
    from mammo_anogan.anomaly.losses import MseLoss
    from mammo_anogan.anomaly.projector import ProjectionSettings, Projector, w_statistics
    from mammo_anogan.models.stylegan2.generator import Generator
    from mammo_anogan.utils.profiling import OpCounter

    torch.manual_seed(0)
    G = Generator(z_dim=64, w_dim=64, img_resolution=64, channel_base=2048, channel_max=128).to(DEVICE).eval()
    with torch.no_grad():
        targets = G(torch.randn(2, 64, device=DEVICE), noise_mode="const")
    w_statistics(G, 1000)
    counts = {}
    for steps in (4, 40):
        settings = ProjectionSettings(num_seeds=3, steps=steps, w_std_samples=1000, precision="bf16")
        with OpCounter() as counter:
            result = Projector(G, MseLoss(), settings).project(targets)
        counts[steps] = counter.sync_count
    assert counts[40] == counts[4]
    assert result.projections.shape == (2, 3, 1, 64, 64) and result.projections.dtype == torch.float32
    assert bool(result.valid.all()) and torch.isfinite(result.losses).all()
    assert float(result.losses.mean()) < float(MseLoss()(torch.zeros_like(targets), targets).mean())


@pytest.mark.parametrize("init", ["encoder", "encoder+jitter"])
def test_encoder_initialised_scoring_on_gpu(init: str) -> None:
    """The demo's and the mini-MIAS study's scoring paths on CUDA (encoder start, or N restarts
    jittered around it; 10 W+ steps, lesion-sensitive map scores): finite fp32 maps and scores,
    within bf16 tolerance of the same module on the CPU."""
    from mammo_anogan.anomaly.losses import MseLoss
    from mammo_anogan.anomaly.map_scores import MapScoreSettings
    from mammo_anogan.anomaly.module import ProjectionModule
    from mammo_anogan.anomaly.projector import ProjectionSettings
    from mammo_anogan.models.encoder import encoder_for_generator
    from mammo_anogan.models.stylegan2.generator import Generator

    torch.manual_seed(0)
    G = Generator(z_dim=64, w_dim=64, img_resolution=64, channel_base=2048, channel_max=128).eval()
    encoder = encoder_for_generator(G, channel_base=1024, channel_max=64)
    with torch.no_grad():
        images = G(torch.randn(4, 64), noise_mode="const").clamp(-1, 1)
    batch = {
        "image": images,
        "mask": torch.ones_like(images),
        "image_id": [str(i) for i in range(4)],
        "label_name": ["normal"] * 4,
    }
    settings = ProjectionSettings(
        init=init, num_seeds=3, steps=10, space="w_plus", lr=0.01, latent_noise=0.0, w_std_samples=1000
    )
    results = {}
    for device in ("cpu", DEVICE):
        module = ProjectionModule(G, MseLoss(), settings, "smooth_topk", encoder=encoder,
                                  map_settings=MapScoreSettings(smooth_sigma=1.0)).to(device)  # fmt: skip
        results[device] = module.predict_step(batch, 0)
    for cpu, gpu in zip(results["cpu"], results[DEVICE]):
        assert gpu.abs_map.dtype == np.float32 and np.isfinite(gpu.abs_map).all()
        assert abs(gpu.score - cpu.score) < 0.05 + 0.1 * abs(cpu.score)
        assert np.abs(gpu.mean_projection - cpu.mean_projection).max() < 0.15


def test_export_and_reload_on_gpu(tmp_path: Path) -> None:
    from mammo_anogan.models.stylegan2.export import load_generator

    module = _module(steps=2)
    _fit(module, [])
    g_path, d_path = module.export_networks(tmp_path)
    G = load_generator(g_path).to(DEVICE).eval()  # contiguous, while the trained G_ema is channels_last
    z = torch.randn(4, 64, device=DEVICE)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # compare fp32 with fp32, not two TF32 rounding paths
    try:
        with torch.no_grad():
            expected = module.G_ema.to(DEVICE).float().eval()(z, noise_mode="const")
            reloaded = G(z, noise_mode="const")
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    torch.testing.assert_close(reloaded, expected, rtol=1e-3, atol=1e-3)
    assert d_path.is_file()


def test_sigterm_preemption_saves_and_resume_matches_within_gpu_tolerance(tmp_path: Path) -> None:
    """SIGTERM mid-run on the GPU writes last.ckpt and exits 0; the resumed run reaches the same
    kimg as an uninterrupted one, and their G_ema weights agree within the GPU tolerance (cuDNN
    autotuning and atomics make GPU runs not bit-exact; the measured figure is printed)."""
    from data_factory import make_prepared_dataset
    from reliability_helpers import run_entry, spawn_entry, wait_for

    dataset = make_prepared_dataset(tmp_path / "data", resolution=32)
    common = [
        "+experiment=tiny",
        "callbacks=none",
        "trainer=gpu",
        "data.loader.batch_size=8",
        f"data.dataset_dir={dataset}",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "logger=csv",
        "model.total_kimg=1.2",
        "checkpoint.every_n_kimg=10",
        "model.nonfinite_check_interval=1",
    ]
    reference = run_entry("train", [*common, f"hydra.run.dir={tmp_path / 'ref'}"], timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]
    run_dir = tmp_path / "run"
    log_path = tmp_path / "run.log"
    process = spawn_entry("train", [*common, f"hydra.run.dir={run_dir}"], log_path)
    metrics = run_dir / "csv" / "metrics.csv"
    try:
        wait_for(lambda: metrics.is_file() and metrics.stat().st_size > 400, process, 300, log_path)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=120)
        exit_seconds = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
    assert returncode == 0, log_path.read_text()[-3000:]
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert 0 < state["stylegan2"]["cur_nimg"] < 1200
    resumed = run_entry("train", [*common, f"hydra.run.dir={run_dir}", "ckpt_path=last"], timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / "ref" / "generator.pt", map_location="cpu", weights_only=True)
    b = torch.load(run_dir / "generator.pt", map_location="cpu", weights_only=True)
    weights_a = {k: v for k, v in a["state_dict"].items() if v.is_floating_point()}
    diff = max(float((weights_a[k] - b["state_dict"][k]).abs().max()) for k in weights_a)
    scale = max(float(v.abs().max()) for v in weights_a.values())
    print(
        f"\nGPU resume: signal-to-exit {exit_seconds:.1f} s; max |G_ema diff| {diff:.3g}, max |w| {scale:.3g}"
    )
    assert diff <= 1e-2 * scale
