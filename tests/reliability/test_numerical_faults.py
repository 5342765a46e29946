"""Guarantee 3: a NaN/Inf loss or gradient is caught in the step it appears; no NaN checkpoint is written."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from data_factory import make_prepared_dataset
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from reliability_helpers import TINY_TRAIN

import mammo_anogan.models.gan_module as gan_module
import mammo_anogan.utils.config  # noqa: F401  (resolvers first)
from mammo_anogan.models.stylegan2 import Generator, save_network
from mammo_anogan.train import AtomicCheckpointIO, train
from mammo_anogan.training.nonfinite import NonFiniteError
from mammo_anogan.utils.config import CONFIG_DIR
from mammo_anogan.utils.errors import exit_on_user_error

BATCH = 4


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_prepared_dataset(tmp_path_factory.mktemp("prepared"), resolution=32)


def _cfg(dataset_dir: Path, run_dir: Path, *extra: str) -> DictConfig:
    overrides = [*TINY_TRAIN, f"data.dataset_dir={dataset_dir}", f"+run_dir={run_dir}", *extra]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_nan_loss_stops_with_one_line_naming_kimg_and_last_checkpoint(
    dataset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, figures: dict[str, float]
) -> None:
    calls = {"n": 0}
    real_loss = gan_module.d_logistic_loss

    def poisoned_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = real_loss(real_logits, fake_logits)
        return loss * float("nan") if calls["n"] == 6 else loss  # the 6th minibatch's D loss

    monkeypatch.setattr(gan_module, "d_logistic_loss", poisoned_loss)
    cfg = _cfg(dataset_dir, tmp_path, "~logger", "model.total_kimg=0.04", "checkpoint.every_n_kimg=0.016")
    with pytest.raises(SystemExit) as exited:
        exit_on_user_error(train)(cfg)
    figures["train_faults_injected_nan"] += 1
    assert exited.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    last = tmp_path / "checkpoints" / "last.ckpt"
    # Detected in the step it appeared (5 minibatches done = 20 images), naming the last good file.
    assert "non-finite D loss or gradient at kimg 0.020 (minibatch 5)" in errors[0]
    assert f"last good checkpoint: {last}" in errors[0]
    state = torch.load(last, weights_only=True)
    assert state["stylegan2"]["cur_nimg"] == 16  # the 4-minibatch checkpoint, not overwritten
    assert _finite(state["state_dict"])
    assert not (tmp_path / "generator.pt").exists()


def test_nan_batch_is_skipped_counted_and_logged(
    dataset_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, figures: dict[str, float]
) -> None:
    """A corrupt real batch (NaN pixels) poisons D's loss and gradients: with ``skip`` it is left out."""
    poisoned_iterations = {2, 5}
    real_step = gan_module.StyleGAN2Module.training_step

    def step_with_corrupt_batches(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        if self.num_iterations in poisoned_iterations:
            batch = {**batch, "image": batch["image"].clone()}
            batch["image"][0, 0, 3, 3] = float("nan")
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(gan_module.StyleGAN2Module, "training_step", step_with_corrupt_batches)
    cfg = _cfg(
        dataset_dir,
        tmp_path,
        "logger=csv",
        f"logger.csv.save_dir={tmp_path}",
        "model.on_nonfinite=skip",
        "model.total_kimg=0.032",
        "checkpoint.every_n_kimg=0.016",
    )
    train(cfg)
    figures["train_faults_injected_nan"] += len(poisoned_iterations)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["stylegan2"]["nonfinite_skipped"] == 2
    assert state["stylegan2"]["cur_nimg"] == 32  # training went on to the end
    assert _finite(state["state_dict"])
    logged = pd.read_csv(tmp_path / "csv" / "metrics.csv")
    skipped = logged.dropna(subset=["train/nonfinite_skipped"])
    assert skipped["train/nonfinite_skipped"].max() == 2
    # Logged from the first skipped minibatch (iteration 2 -> kimg 0.012) onwards.
    assert skipped["train/kimg"].min() == pytest.approx(0.012)
    assert (tmp_path / "generator.pt").is_file()


def test_checkpoint_writer_and_export_refuse_nan_weights(tmp_path: Path, figures: dict[str, float]) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    good = path.read_bytes()
    with pytest.raises(
        NonFiniteError, match=r"refusing to write checkpoint last.ckpt: non-finite weights in w"
    ):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("inf"), 0.0])}}, path)
    assert path.read_bytes() == good  # the last good checkpoint is untouched
    generator = Generator(
        z_dim=8, w_dim=8, img_resolution=8, channel_base=64, channel_max=8, mapping_layers=1
    )
    with torch.no_grad():
        next(generator.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(NonFiniteError, match="refusing to write generator export"):
        save_network(generator, tmp_path / "generator.pt")
    assert not (tmp_path / "generator.pt").exists()
    figures["train_faults_injected_nan"] += 2
