"""Training monitors under a real ``pl.Trainer`` with a tiny stand-in GAN module (CPU, seconds).

The stand-in exposes exactly the attributes docs/interfaces.md ("Training") promises, so these tests
do not depend on the real StyleGAN2 module; one integration test at the end uses the real one.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mammo_anogan.training.callbacks import (
    FidelityCallback,
    FidelityCheckpoint,
    KimgProgressBar,
    KimgSchedule,
    KimgStopping,
    SampleGridCallback,
    ThroughputMonitor,
)
from mammo_anogan.utils.errors import ConfigError

RESOLUTION = 16
BATCH = 4


class _Images(Dataset):
    def __init__(self, count: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.rand(count, 1, RESOLUTION, RESOLUTION, generator=generator) * 2 - 1

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index]}


class TrainOnlyData(pl.LightningDataModule):
    """Training batches as the real data module gives them, but no ``real_images``."""

    def __init__(self, count: int = 32) -> None:
        super().__init__()
        self.data = _Images(count)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data, batch_size=BATCH, shuffle=True, drop_last=True)


class StandInData(TrainOnlyData):
    """Adds ``real_images(split, max_images)`` as in MammoDataModule."""

    def real_images(self, split: str = "train", max_images: int | None = None) -> torch.Tensor:
        return self.data.images[:max_images]


class _Augment(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("p", torch.tensor(0.25))


class _Ada:
    r_t = 0.55


class StandInGAN(pl.LightningModule):
    """G, D, G_ema, augment_pipe, ada, cur_nimg, kimg, generate(z, ...), z_dim; manual optimisation."""

    def __init__(self, z_dim: int = 8, log_kimg: bool = False) -> None:
        super().__init__()
        self.automatic_optimization = False
        self._z_dim = z_dim
        self.G = nn.Sequential(nn.Linear(z_dim, RESOLUTION * RESOLUTION), nn.Tanh())
        self.D = nn.Sequential(nn.Flatten(), nn.Linear(RESOLUTION * RESOLUTION, 1))
        self.G_ema = nn.Sequential(nn.Linear(z_dim, RESOLUTION * RESOLUTION), nn.Tanh()).eval()
        self.G_ema.load_state_dict(self.G.state_dict())
        self.augment_pipe = _Augment()
        self.ada = _Ada()
        self.cur_nimg = 0
        self.log_kimg = log_kimg

    @property
    def z_dim(self) -> int:
        return self._z_dim

    @property
    def kimg(self) -> float:
        return self.cur_nimg / 1000.0

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            torch.optim.Adam(self.G.parameters(), lr=2e-3),
            torch.optim.Adam(self.D.parameters(), lr=1e-3),
        ]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()  # type: ignore[misc]
        reals = batch["image"]
        fakes = self.G(torch.randn(reals.shape[0], self.z_dim)).view_as(reals)
        loss_d = (
            nn.functional.softplus(self.D(fakes.detach())).mean()
            + nn.functional.softplus(-self.D(reals)).mean()
        )
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()
        loss_g = nn.functional.softplus(-self.D(fakes)).mean()
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        self.G_ema.load_state_dict(self.G.state_dict())
        self.cur_nimg += reals.shape[0]
        self.log("train/loss_g", loss_g.detach(), prog_bar=True)
        if self.log_kimg:
            self.log("train/kimg", float(self.kimg))

    @torch.no_grad()
    def generate(
        self, z: torch.Tensor, truncation_psi: float = 1.0, noise_mode: str = "const"
    ) -> torch.Tensor:
        return self.G_ema(z).view(z.shape[0], 1, RESOLUTION, RESOLUTION)


def tiny_extractor() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def fit(
    tmp_path: Path,
    callbacks: list[pl.Callback],
    module: StandInGAN | None = None,
    data: Any = None,
    **kwargs: Any,
) -> tuple[pl.Trainer, StandInGAN]:
    module = module or StandInGAN()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=kwargs.pop("max_epochs", 100),
        logger=CSVLogger(tmp_path, name="csv", version=""),
        callbacks=callbacks,
        default_root_dir=tmp_path,
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
        enable_progress_bar=any(isinstance(c, KimgProgressBar) for c in callbacks),
        enable_model_summary=False,
        log_every_n_steps=1,
        **kwargs,
    )
    trainer.fit(module, datamodule=data or StandInData())
    return trainer, module


def logged_rows(tmp_path: Path) -> list[dict[str, str]]:
    with (tmp_path / "csv" / "metrics.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def column(rows: list[dict[str, str]], name: str) -> list[float]:
    return [float(row[name]) for row in rows if row.get(name)]


# --------------------------------------------------------------------------------------------------


def test_kimg_schedule_fires_once_per_period() -> None:
    schedule = KimgSchedule(0.01)  # every 10 images
    fired = []
    for nimg in range(4, 41, 4):
        if schedule.due(nimg):
            schedule.mark(nimg)
            fired.append(nimg)
    assert fired == [12, 20, 32, 40]


def test_kimg_stopping_stops_at_the_image_budget(tmp_path: Path) -> None:
    trainer, module = fit(tmp_path, [KimgStopping(total_kimg=0.02)])  # 20 images = 5 batches of 4
    assert module.cur_nimg == 20
    # 8 batches per epoch: stopped after the 5th batch (2 optimizer steps each), not at max_epochs.
    assert trainer.global_step == 10


def test_full_monitoring_run(tmp_path: Path) -> None:
    grids = SampleGridCallback(every_kimg=0.016, num_samples=6, nrow=3, dirpath=tmp_path / "samples")
    fidelity = FidelityCallback(
        every_kimg=0.016, metrics=("swd", "fid"), num_real=16, feature_extractor=tiny_extractor()
    )
    best = FidelityCheckpoint(
        monitor="fidelity/swd", mode="min", filename="best", auto_insert_metric_name=False
    )
    bar = KimgProgressBar()
    callbacks = [KimgStopping(total_kimg=0.04), ThroughputMonitor(), grids, fidelity, best, bar]
    trainer, module = fit(tmp_path, callbacks)
    assert module.cur_nimg == 40

    # Sample grids: start, 16, 32 images, end (40): 3x2 grid of 16 px tiles with 2 px padding.
    names = sorted(p.name for p in (tmp_path / "samples").glob("*.png"))
    assert names == ["kimg000000.000.png", "kimg000000.016.png", "kimg000000.032.png", "kimg000000.040.png"]
    with Image.open(tmp_path / "samples" / names[-1]) as grid:
        assert grid.size == (3 * (RESOLUTION + 2) + 2, 2 * (RESOLUTION + 2) + 2)
        assert grid.mode == "L"
    assert not list((tmp_path / "samples").glob(".*.tmp"))  # atomic writes leave no temporaries

    rows = logged_rows(tmp_path)
    # Throughput, learning rates, ADA state, kimg.
    assert all(v > 0 for v in column(rows, "train/images_per_sec"))
    assert len(column(rows, "train/images_per_sec")) >= 8
    per_sec, sec_per_kimg = column(rows, "train/images_per_sec")[-1], column(rows, "train/sec_per_kimg")[-1]
    assert per_sec * sec_per_kimg == pytest.approx(1000.0, rel=1e-6)
    assert column(rows, "train/lr_G")[-1] == pytest.approx(2e-3)
    assert column(rows, "train/lr_D")[-1] == pytest.approx(1e-3)
    assert column(rows, "train/ada_p")[-1] == pytest.approx(0.25)
    assert column(rows, "train/ada_rt")[-1] == pytest.approx(0.55)
    assert column(rows, "train/kimg")[-1] == pytest.approx(0.04)

    # Fidelity at 16 and 32 images and at the end, each beside its baseline.
    assert [h["kimg"] for h in fidelity.history] == [0.016, 0.032, 0.04]
    for name in ("fidelity/swd", "fidelity/swd_baseline", "fidelity/fid", "fidelity/fid_baseline"):
        values = column(rows, name)
        assert len(values) == 3 and all(math.isfinite(v) for v in values), name
    assert len(set(column(rows, "fidelity/swd_baseline"))) == 1  # the baseline is computed once
    assert float(trainer.callback_metrics["fidelity/swd"]) == pytest.approx(
        fidelity.history[-1]["fidelity/swd"]
    )

    # The best checkpoint holds the lowest SWD seen.
    assert Path(best.best_model_path) == tmp_path / "checkpoints" / "best.ckpt"
    assert float(best.best_model_score) == pytest.approx(min(h["fidelity/swd"] for h in fidelity.history))
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()

    # Progress bar in kimg.
    task = bar.progress.tasks[bar.train_progress_bar_id]  # type: ignore[union-attr,index]
    assert task.total == pytest.approx(0.04) and task.completed == pytest.approx(0.04)
    assert task.fields["eta_s"] == pytest.approx(0.0)


def test_throughput_does_not_duplicate_what_the_module_logs(tmp_path: Path) -> None:
    monitor = ThroughputMonitor()
    fit(tmp_path, [KimgStopping(total_kimg=0.012), monitor], module=StandInGAN(log_kimg=True))
    assert monitor._logs_kimg is False
    assert column(logged_rows(tmp_path), "train/kimg")[-1] == pytest.approx(0.012)


def test_fidelity_without_real_images_warns_and_training_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fidelity = FidelityCallback(every_kimg=0.008, metrics=("swd",), num_real=8)
    with caplog.at_level(logging.WARNING, logger="mammo_anogan.training.callbacks"):
        _, module = fit(tmp_path, [KimgStopping(total_kimg=0.016), fidelity], data=TrainOnlyData())
    assert module.cur_nimg == 16
    disabled = [r.getMessage() for r in caplog.records if "fidelity metrics disabled" in r.getMessage()]
    assert len(disabled) == 1 and "real_images" in disabled[0]
    assert fidelity.history == []


def test_unreliable_metric_is_refused_as_checkpoint_monitor() -> None:
    with pytest.raises(ConfigError, match="unreliable at small sample sizes"):
        FidelityCheckpoint(monitor="fidelity/frd", mode="min")


def test_monitor_of_an_uncomputed_metric_is_a_config_error(tmp_path: Path) -> None:
    fidelity = FidelityCallback(
        every_kimg=0.008, metrics=("fid",), num_real=8, feature_extractor=tiny_extractor()
    )
    best = FidelityCheckpoint(monitor="fidelity/swd", mode="min")
    with pytest.raises(ConfigError, match="fidelity/swd is not computed"):
        fit(tmp_path, [KimgStopping(total_kimg=0.008), fidelity, best])


def test_default_callback_and_logger_configs_instantiate(tmp_path: Path) -> None:
    import hydra
    from omegaconf import OmegaConf

    import mammo_anogan.utils.config as project_config

    callbacks_cfg = OmegaConf.load(project_config.CONFIG_DIR / "callbacks" / "default.yaml")
    root = OmegaConf.create({"model": {"total_kimg": 12.5}, "callbacks": callbacks_cfg})
    built = {name: hydra.utils.instantiate(block) for name, block in root.callbacks.items()}
    assert built["kimg_stopping"].total_kimg == 12.5
    assert built["best_fidelity"].monitor == "fidelity/swd" and built["best_fidelity"].mode == "min"
    assert built["fidelity"].metric_names == ("swd", "frd", "fid", "kid")
    assert OmegaConf.load(project_config.CONFIG_DIR / "callbacks" / "none.yaml") == {}
    for name in ("wandb", "tensorboard", "csv"):
        logger_cfg = OmegaConf.load(project_config.CONFIG_DIR / "logger" / f"{name}.yaml")
        assert list(logger_cfg) == [name] and "_target_" in logger_cfg[name]
    wandb_cfg = OmegaConf.load(project_config.CONFIG_DIR / "logger" / "wandb.yaml").wandb
    assert wandb_cfg.offline is True and wandb_cfg.project == "mammo_anogan"
    csv_cfg = OmegaConf.load(project_config.CONFIG_DIR / "logger" / "csv.yaml").csv
    csv_cfg.save_dir = str(tmp_path)
    assert type(hydra.utils.instantiate(csv_cfg)).__name__ == "ResumableCSVLogger"
    assert not OmegaConf.load(project_config.CONFIG_DIR / "logger" / "none.yaml")


def test_integration_with_the_real_module_and_data_module(tmp_path: Path) -> None:
    """The monitors on the real StyleGAN2Module (16 px) and MammoDataModule, with atomic checkpoints."""
    from data_factory import make_prepared_dataset

    from mammo_anogan.data.datamodule import MammoDataModule
    from mammo_anogan.models.gan_module import StyleGAN2Module
    from mammo_anogan.train import AtomicCheckpointIO

    dataset_dir = make_prepared_dataset(tmp_path / "data", n_normal_patients=8, resolution=RESOLUTION)
    data = MammoDataModule(dataset_dir, resolution=RESOLUTION, batch_size=BATCH, pin_memory=False)
    tiny = {"img_resolution": RESOLUTION, "img_channels": 1, "channel_base": 128, "channel_max": 16}
    module = StyleGAN2Module(
        generator={**tiny, "z_dim": 16, "w_dim": 16, "mapping_layers": 2},
        discriminator=tiny,
        loss={"r1_gamma": 1.0, "r1_interval": 2, "pl_interval": 2},
        ada={"enabled": True, "interval": 1, "kimg": 0.01},
        total_kimg=0.016,
        batch_size=BATCH,
    )
    fidelity = FidelityCallback(every_kimg=0.008, metrics=("swd",), num_real=8)
    best = FidelityCheckpoint(
        monitor="fidelity/swd", mode="min", filename="best", auto_insert_metric_name=False
    )
    grids = SampleGridCallback(every_kimg=0.008, num_samples=4)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=-1,
        logger=CSVLogger(tmp_path, name="csv", version=""),
        callbacks=[KimgStopping(0.016), ThroughputMonitor(), grids, fidelity, best, KimgProgressBar()],
        default_root_dir=tmp_path,
        enable_model_summary=False,
        log_every_n_steps=1,
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(module, datamodule=data)
    assert module.cur_nimg == 16
    assert [h["kimg"] for h in fidelity.history] == [0.008, 0.016]
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    assert len(list((tmp_path / "samples").glob("kimg*.png"))) == 3  # start, 8 and 16 images
    rows = logged_rows(tmp_path)
    assert column(rows, "train/ada_p")  # logged by the module itself, not duplicated by the monitor
    assert column(rows, "train/sec_per_kimg") and column(rows, "fidelity/swd_baseline")


def test_best_network_export_follows_every_new_best_even_under_the_same_file_name(tmp_path: Path) -> None:
    """``best.ckpt`` is overwritten in place: a new best changes its score, not its path."""
    from types import SimpleNamespace

    from mammo_anogan.train import BestNetworkExport

    exports: list[Path] = []
    module = SimpleNamespace(export_networks=exports.append)
    best = SimpleNamespace(monitor="fidelity/swd", best_model_path="", best_model_score=None)
    trainer = SimpleNamespace(checkpoint_callbacks=[best], is_global_zero=True)
    callback = BestNetworkExport(tmp_path / "best")
    callback.on_train_batch_end(trainer, module)
    assert exports == []  # nothing ranked yet
    best.best_model_path, best.best_model_score = "ckpts/best.ckpt", torch.tensor(54.1)
    for _ in range(3):
        callback.on_train_batch_end(trainer, module)
    assert exports == [tmp_path / "best"]  # once per new best, not once per batch
    best.best_model_score = torch.tensor(38.6)  # a better checkpoint, same file name
    callback.on_train_batch_end(trainer, module)
    callback.on_train_end(trainer, module)
    assert len(exports) == 2
