"""The Hydra training entry on a tiny prepared dataset: train, checkpoint, resume exactly, export."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from data_factory import make_prepared_dataset
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from test_configs import missing_group_overrides

import mammo_anogan.utils.config  # noqa: F401  (resolvers first)
from mammo_anogan.models.stylegan2 import load_generator
from mammo_anogan.train import train
from mammo_anogan.utils.config import CONFIG_DIR, PROJECT_ROOT
from mammo_anogan.utils.errors import UserError

FAST = [
    "+experiment=tiny",
    "~callbacks",
    "~logger",
    "data.resolution=32",
    "data.loader.batch_size=4",
    "model.total_kimg=0.012",  # 3 minibatches of 4
    "checkpoint.every_n_kimg=0.008",
    "checkpoint.save_top_k=-1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_prepared_dataset(tmp_path_factory.mktemp("prepared"), resolution=32)


def _cfg(dataset_dir: Path, run_dir: Path, *extra: str) -> DictConfig:
    overrides = [o for o in missing_group_overrides() if o not in FAST] + FAST
    overrides += [f"data.dataset_dir={dataset_dir}", f"+run_dir={run_dir}", *extra]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _g_ema_output(generator: torch.nn.Module) -> torch.Tensor:
    z = torch.randn(2, generator.z_dim, generator=torch.Generator().manual_seed(3))
    return generator(z, noise_mode="const")


def test_train_resume_and_export(dataset_dir: Path, tmp_path: Path) -> None:
    run_a = tmp_path / "a"
    assert train(_cfg(dataset_dir, run_a)) is None  # no optimized_metric set
    ckpts = run_a / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.ckpt")) == [
        "kimg000000.008.ckpt",
        "kimg000000.012.ckpt",
        "last.ckpt",
    ]
    last = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert last["stylegan2"]["cur_nimg"] == 12
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    # Export: plain weights, loadable with weights_only=True, identical to the checkpoint's G_ema.
    exported = torch.load(run_a / "generator.pt", weights_only=True)
    g_ema_state = {k[len("G_ema.") :]: v for k, v in last["state_dict"].items() if k.startswith("G_ema.")}
    assert exported["state_dict"].keys() == g_ema_state.keys()
    for key, value in g_ema_state.items():
        torch.testing.assert_close(exported["state_dict"][key], value, rtol=0, atol=0)
    assert (run_a / "discriminator.pt").is_file()
    output_a = _g_ema_output(load_generator(run_a / "generator.pt"))
    assert output_a.shape == (2, 1, 32, 32) and torch.isfinite(output_a).all()

    # Resume from the 8-image checkpoint in a fresh run: the last step reproduces run A's exactly.
    run_b = tmp_path / "b"
    train(_cfg(dataset_dir, run_b, f"ckpt_path={ckpts / 'kimg000000.008.ckpt'}", "seed=5"))
    torch.testing.assert_close(_g_ema_output(load_generator(run_b / "generator.pt")), output_a)
    last_b = torch.load(run_b / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in last["state_dict"].items():
        torch.testing.assert_close(last_b["state_dict"][key], value, msg=key)

    # ckpt_path=last continues the same run directory for one more minibatch.
    train(_cfg(dataset_dir, run_a, "ckpt_path=last", "model.total_kimg=0.016"))
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["stylegan2"]["cur_nimg"] == 16


def test_missing_inputs_are_user_errors(dataset_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no checkpoint at"):
        train(_cfg(dataset_dir, tmp_path / "c", "ckpt_path=last"))
    with pytest.raises(UserError, match="no prepared dataset"):
        train(_cfg(tmp_path / "nothing", tmp_path / "d", "data=dicom", "data.source=/nonexistent"))


@pytest.mark.slow
def test_cli_demo_and_one_line_error(dataset_dir: Path, tmp_path: Path) -> None:
    """``python -m mammo_anogan.train`` end to end (with the default callbacks), and exit code 2 errors."""
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(PROJECT_ROOT)}
    base = [sys.executable, "-m", "mammo_anogan.train", f"hydra.run.dir={tmp_path / 'run'}"]
    done = subprocess.run(
        base
        + [
            "+experiment=tiny",
            f"data.dataset_dir={dataset_dir}",
            "data.resolution=32",
            "data.loader.batch_size=4",
            "model.total_kimg=0.04",
            "~logger",
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "generator.pt").is_file()
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
    failed = subprocess.run(
        base + ["data=dicom", "data.source=/nonexistent", f"paths.data_dir={tmp_path / 'none'}", "~logger"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert failed.returncode == 2
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no prepared dataset" in errors[0]
    assert "Traceback" not in failed.stderr
