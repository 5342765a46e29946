"""StyleGAN2Module on tiny 16 px networks: the four-phase step, kimg stopping, exact resume, export."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from mammo_anogan.models.gan_module import StyleGAN2Module
from mammo_anogan.models.stylegan2 import load_discriminator, load_generator
from mammo_anogan.train import AtomicCheckpointIO, KimgCheckpoint
from mammo_anogan.utils.errors import ConfigError

RES = 16


def tiny_module(**overrides: Any) -> StyleGAN2Module:
    config: dict[str, Any] = {
        "generator": {
            "z_dim": 16,
            "w_dim": 16,
            "img_resolution": RES,
            "img_channels": 1,
            "mapping_layers": 2,
            "channel_base": 128,
            "channel_max": 16,
        },
        "discriminator": {"img_resolution": RES, "img_channels": 1, "channel_base": 128, "channel_max": 16},
        "loss": {"r1_gamma": 1.0, "r1_interval": 2, "pl_interval": 2},
        "ema": {"kimg": 0.01, "rampup": 0.05},
        "ada": {"enabled": True, "interval": 1, "kimg": 0.01, "target": 0.0},
        "total_kimg": 0.012,
        "batch_size": 4,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return StyleGAN2Module(**config)


class _Reals(Dataset):
    """Four fixed 16 px images in [-1, 1] (batches are dicts, as from MammoDataModule)."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(123)
        self.images = torch.rand(4, 1, RES, RES, generator=generator) * 2 - 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[index]}


def _loader() -> DataLoader:
    return DataLoader(_Reals(), batch_size=4, shuffle=False)


def _trainer(tmp_path: Path, callbacks: list[Any] | None = None) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=-1,
        max_steps=-1,
        logger=False,
        enable_checkpointing=bool(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks or [],
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(tmp_path),
        log_every_n_steps=1,
    )


def _flat_state(module: StyleGAN2Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_training_step_runs_all_phases_and_stops_by_kimg(tmp_path: Path) -> None:
    pl.seed_everything(0)
    module = tiny_module()
    initial = _flat_state(module)
    trainer = _trainer(tmp_path)
    trainer.fit(module, train_dataloaders=_loader())

    # 3 minibatches of 4 = 12 images = total_kimg 0.012: stopped by images shown, not steps.
    assert module.cur_nimg == 12 and module.num_iterations == 3
    assert module.kimg == pytest.approx(0.012)
    # global_step counts optimiser steps: 3 G + 3 D + path length (it 0, 2) + R1 (it 0, 2) = 10.
    assert trainer.global_step == 10
    metrics = trainer.callback_metrics
    for name in ("train/loss_g", "train/loss_d", "train/loss_pl", "train/loss_r1"):
        assert torch.isfinite(metrics[name]), name
    assert metrics["train/kimg"].item() == pytest.approx(0.012)
    assert module.path_length.pl_mean.item() > 0
    # ADA with target 0 and a tiny ada_kimg moves p away from 0 after the first update.
    assert module.augment_pipe is not None and 0 < module.augment_pipe.p.item() <= 1
    assert metrics["train/ada_p"].item() == pytest.approx(module.augment_pipe.p.item())
    state = _flat_state(module)
    for prefix in ("G.", "D.", "G_ema."):
        changed = [k for k in state if k.startswith(prefix) and not torch.equal(state[k], initial[k])]
        assert changed, f"no {prefix} tensor changed"
    # G_ema lags G (beta > 0 after the first step) but tracks it.
    g = torch.cat([p.flatten() for p in module.G.parameters()])
    g_ema = torch.cat([p.flatten() for p in module.G_ema.parameters()])
    assert not torch.equal(g, g_ema)
    assert not any(p.requires_grad for p in module.G_ema.parameters())


def test_optimizers_apply_lazy_regularization_corrections() -> None:
    module = tiny_module(optimizer={"g_lr": 0.002, "d_lr": 0.001}, loss={"r1_interval": 16, "pl_interval": 4})
    opt_g, opt_d = module.configure_optimizers()
    assert opt_g.param_groups[0]["lr"] == pytest.approx(0.002 * 4 / 5)
    assert opt_g.param_groups[0]["betas"] == pytest.approx((0.0, 0.99**0.8))
    assert opt_d.param_groups[0]["lr"] == pytest.approx(0.001 * 16 / 17)
    assert opt_d.param_groups[0]["betas"] == pytest.approx((0.0, 0.99 ** (16 / 17)))
    assert opt_g.param_groups[0]["eps"] == 1e-8
    # Regularisation off -> no correction.
    module = tiny_module(optimizer={"g_lr": 0.002}, loss={"pl_weight": 0.0})
    assert module.configure_optimizers()[0].param_groups[0]["lr"] == pytest.approx(0.002)


def test_resume_continues_exactly(tmp_path: Path) -> None:
    """k=2 steps, checkpoint, 1 more step (A) == reload the checkpoint in a fresh trainer, 1 step (B)."""
    pl.seed_everything(0)
    module_a = tiny_module()
    checkpoint = KimgCheckpoint(every_n_kimg=0.008, dirpath=str(tmp_path / "ckpt"), save_top_k=-1)
    _trainer(tmp_path / "a", [checkpoint]).fit(module_a, train_dataloaders=_loader())
    saved = sorted((tmp_path / "ckpt").glob("kimg*.ckpt"))
    assert [p.name for p in saved] == ["kimg000000.008.ckpt", "kimg000000.012.ckpt"]
    assert (tmp_path / "ckpt" / "last.ckpt").is_file()
    # Checkpoints hold only weights-only-loadable content and the training state.
    payload = torch.load(saved[0], weights_only=True)
    state = payload["stylegan2"]
    assert state["cur_nimg"] == 8 and state["num_iterations"] == 2 and state["ada"]["calls"] == 2

    pl.seed_everything(1)  # a different seed: everything must come from the checkpoint
    module_b = tiny_module()
    trainer_b = _trainer(tmp_path / "b")
    trainer_b.fit(module_b, train_dataloaders=_loader(), ckpt_path=str(saved[0]))
    assert module_b.cur_nimg == module_a.cur_nimg == 12
    state_a, state_b = _flat_state(module_a), _flat_state(module_b)
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        torch.testing.assert_close(state_b[key], state_a[key], rtol=1e-6, atol=1e-7, msg=key)
    assert module_b.ada is not None and module_a.ada is not None
    assert module_b.ada.state_dict()["calls"] == module_a.ada.state_dict()["calls"] == 3


def test_export_reloads_without_lightning(tmp_path: Path) -> None:
    pl.seed_everything(0)
    module = tiny_module()
    g_path, d_path = module.export_networks(tmp_path)
    assert g_path.name == "generator.pt" and d_path.name == "discriminator.pt"
    payload = torch.load(g_path, weights_only=True)
    assert payload["config"]["img_resolution"] == RES
    generator = load_generator(g_path)
    z = torch.randn(3, module.z_dim, generator=torch.Generator().manual_seed(7))
    expected = module.generate(z, noise_mode="const")
    assert expected.shape == (3, 1, RES, RES)
    torch.testing.assert_close(generator(z, noise_mode="const"), expected, rtol=0, atol=0)
    discriminator = load_discriminator(d_path)
    torch.testing.assert_close(discriminator(expected), module.D(expected), rtol=0, atol=0)


def test_ada_auto_follows_dataset_size() -> None:
    small = tiny_module(ada={"enabled": "auto"}, num_train_images=500)
    small._resolve_ada()
    assert small.augment_pipe is not None and small.ada is not None
    large = tiny_module(ada={"enabled": "auto"}, num_train_images=20_000)
    large._resolve_ada()
    assert large.augment_pipe is None and large.ada is None
    off = tiny_module(ada={"enabled": False})
    assert off.augment_pipe is None and off.ada is None


def test_bad_config_is_one_line_config_error() -> None:
    with pytest.raises(ConfigError, match="model.loss has unknown key"):
        tiny_module(loss={"r1_gama": 1.0})
    with pytest.raises(ConfigError, match="style_mixing_prob"):
        tiny_module(loss={"style_mixing_prob": 1.5})
    with pytest.raises(ConfigError, match="ada.enabled"):
        tiny_module(ada={"enabled": "sometimes"})
