"""Guarantee 5: an invalid config value fails at start-up: exit code 2, one ``error:`` line naming the key
and the allowed values, no traceback, before any data or device work."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_factory import make_prepared_dataset
from hydra import compose, initialize_config_dir
from reliability_helpers import error_lines, run_entry

import mammo_anogan.utils.config  # noqa: F401  (resolvers first)
from mammo_anogan.config_schema import validate_score_config, validate_train_config
from mammo_anogan.models.stylegan2 import Generator, save_network
from mammo_anogan.utils.config import CONFIG_DIR
from mammo_anogan.utils.errors import ConfigError

#: (entry point, overrides, text the single error line must contain: the key and the allowed values)
TRAIN_CASES = {
    "resolution_not_power_of_two": (["data.resolution=48"], ["data.resolution=48", "use one of 8, 16, 32"]),
    "resolution_wrong_type": (["data.resolution=big"], ["data.resolution", "big"]),
    "generator_dataset_mismatch": (
        ["model.generator.img_resolution=64"],
        ["model.generator.img_resolution=64 does not match data.resolution=32", "allowed: 32"],
    ),
    "missing_data_path": (
        ["data=dicom", "data.resolution=32", "data.dataset_dir=/nonexistent/prepared"],
        ["no prepared dataset at data.dataset_dir=/nonexistent/prepared", "data.source is missing"],
    ),
    "val_fraction_out_of_range": (
        ["data.split.val_fraction=1.5"],
        ["data.split.val_fraction=1.5 is out of range", "0 <= data.split.val_fraction < 1"],
    ),
    "fractions_sum_to_one": (
        ["data.split.val_fraction=0.5", "data.split.test_fraction=0.5"],
        ["data.split.val_fraction + data.split.test_fraction", "a sum < 1"],
    ),
    "unknown_nan_policy": (["model.on_nonfinite=ignore"], ["model.on_nonfinite='ignore'", "stop, skip"]),
}
SCORE_CASES = {
    "num_seeds_below_one": (["projection.num_seeds=0"], ["projection.num_seeds=0 is out of range", ">= 1"]),
    "unknown_projection_loss": (
        ["projection.loss=ssim3d"],
        ["projection.loss='ssim3d'", "lpips_vgg, lpips_alex, disc_features, ms_ssim, mse"],
    ),
    "missing_generator": (["generator=/nonexistent/generator.pt"], ["generator=/nonexistent/generator.pt"]),
    "missing_dataset": (["data.dataset_dir=/nonexistent"], ["data.dataset_dir=/nonexistent"]),
    "lr_rampup_out_of_range": (["projection.lr_rampup=2"], ["projection.lr_rampup=2.0", "0 <= value <= 1"]),
}
#: Run as real subprocesses in the default tier (each costs a Python + torch start); the rest: slow.
DEFAULT_SUBPROCESS = {("train", "resolution_not_power_of_two"), ("score", "unknown_projection_loss")}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("config_errors")
    dataset = make_prepared_dataset(root / "dataset", resolution=32)
    generator = Generator(
        z_dim=8, w_dim=8, img_resolution=32, channel_base=64, channel_max=8, mapping_layers=1
    )
    save_network(generator, root / "generator.pt")
    return {"root": root, "dataset": dataset, "generator": root / "generator.pt"}


def _base(entry: str, workspace: dict[str, Path]) -> list[str]:
    common = [f"data.dataset_dir={workspace['dataset']}", "data.resolution=32", "~logger"]
    if entry == "train":
        return ["+experiment=tiny", "callbacks=none", *common]
    return [f"generator={workspace['generator']}", "projection=fast", *common]


def _cases() -> list[pytest.param]:
    params = []
    for entry, cases in (("train", TRAIN_CASES), ("score", SCORE_CASES)):
        for name, (overrides, expected) in cases.items():
            marks = () if (entry, name) in DEFAULT_SUBPROCESS else (pytest.mark.slow,)
            params.append(pytest.param(entry, overrides, expected, id=f"{entry}-{name}", marks=marks))
    return params


def _all_cases() -> list[pytest.param]:
    return [pytest.param(*p.values, id=p.id) for p in _cases()]


@pytest.mark.parametrize(("entry", "overrides", "expected"), _all_cases())
def test_validator_names_key_and_allowed_values(
    entry: str,
    overrides: list[str],
    expected: list[str],
    workspace: dict[str, Path],
    figures: dict[str, float],
) -> None:
    """The validators on the composed config (fast; every case)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=entry, overrides=_base(entry, workspace) + overrides)
    validate = validate_train_config if entry == "train" else validate_score_config
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    message = str(err.value)
    assert "\n" not in message
    for text in expected:
        assert text in message
    figures["config_errors_checked"] += 1


@pytest.mark.parametrize(("entry", "overrides", "expected"), _cases())
def test_entry_point_exits_2_with_one_error_line(
    entry: str,
    overrides: list[str],
    expected: list[str],
    workspace: dict[str, Path],
    tmp_path: Path,
    figures: dict[str, float],
) -> None:
    """The real command line: exit code 2, exactly one ``error:`` line, no traceback, no run output."""
    run_dir = tmp_path / "run"
    done = run_entry(entry, [*_base(entry, workspace), *overrides, f"hydra.run.dir={run_dir}"], timeout=180)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = error_lines(done.stderr)
    assert len(errors) == 1, done.stderr
    for text in expected:
        assert text in errors[0]
    assert "Traceback" not in done.stderr + done.stdout
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "scores.csv").exists()
    figures["config_errors_checked_subprocess"] += 1


def test_valid_configs_pass(workspace: dict[str, Path]) -> None:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        validate_train_config(compose(config_name="train", overrides=_base("train", workspace)))
        validate_score_config(compose(config_name="score", overrides=_base("score", workspace)))
