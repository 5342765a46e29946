"""Guarantee 10: run state you can trust (issue 16).

Every artifact a run reads carries a fingerprint of what produced it and every reuse checks it before
doing work; every loaded network is checked for NaN/Inf at load; a resume either continues the same
computation or says in one line why not; the advice of each error, followed, gets past it. One test
per situation of the issue (tiny 32 px networks, in-process), plus the fingerprint of every artifact.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import torch
from data_factory import make_prepared_dataset, make_scoring_workspace
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from reliability_helpers import TINY_TRAIN

import mammo_anogan.utils.config  # noqa: F401  (resolvers first)
from mammo_anogan.anomaly.outputs import SCORES_FILE, THRESHOLD_FILE
from mammo_anogan.models.stylegan2 import load_discriminator, load_generator
from mammo_anogan.models.stylegan2.export import read_network_fingerprint
from mammo_anogan.run_state import ResumeState, check_dataset_settings, read_dataset_fingerprint
from mammo_anogan.score import run_score
from mammo_anogan.train import train
from mammo_anogan.training.sweep_metric import optimized_metric_value
from mammo_anogan.utils.config import CONFIG_DIR
from mammo_anogan.utils.errors import UserError, exit_on_user_error
from mammo_anogan.utils.fingerprint import SIDECAR_NAME, read_sidecar, read_stamp

# ------------------------------------------------------------------------------------------ helpers


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, errors
    return errors[0]


def _train_cfg(dataset: Path, run_dir: Path, *extra: str) -> DictConfig:
    return _compose(
        "train",
        [
            *TINY_TRAIN,
            "~logger",
            f"data.dataset_dir={dataset}",
            f"+run_dir={run_dir}",
            "model.total_kimg=0.012",  # 3 minibatches of 4
            "checkpoint.every_n_kimg=0.008",
            "checkpoint.save_top_k=-1",
            *extra,
        ],
    )


def _score_cfg(workspace: dict[str, Path], *extra: str) -> DictConfig:
    return _compose(
        "score",
        [
            f"generator={workspace['generator']}",
            f"data.dataset_dir={workspace['dataset']}",
            "data.resolution=32",
            "projection=fast",
            "projection.steps=3",
            "projection.w_std_samples=100",
            "projection.batch_images=64",
            "score.n_bootstrap=10",
            "score.figures=false",
            "~logger",
            "++trainer.enable_progress_bar=false",
            *extra,
        ],
    )


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny training run: checkpoints at 8 and 12 images + last.ckpt, generator.pt, discriminator.pt."""
    root = tmp_path_factory.mktemp("run_state_train")
    dataset = make_prepared_dataset(root / "dataset", resolution=32)
    run_dir = root / "run"
    train(_train_cfg(dataset, run_dir))
    return {"dataset": dataset, "run": run_dir}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_scoring_workspace(
        tmp_path_factory.mktemp("run_state_score"),
        z_dim=16,
        channel_base=128,
        channel_max=16,
        mapping_layers=1,
    )


# -------------------------------------------------------------------- row 1: scores are never relabelled


def test_scoring_again_with_other_projection_settings_is_refused_then_rescored(
    workspace: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], figures: dict[str, float]
) -> None:
    run_dir = tmp_path / "R"
    run_score(_score_cfg(workspace, "projection.num_seeds=2"), run_dir)
    first = _snapshot(run_dir)
    rows = pd.read_csv(run_dir / SCORES_FILE, keep_default_na=False)
    assert len(rows) > 0 and rows["seed_losses"].str.count(";").eq(1).all()  # 2 seed losses per row

    # The second command (here: more seeds and steps): refused before any work, run dir untouched.
    other = _score_cfg(workspace, "projection.num_seeds=3", "projection.steps=4")
    with pytest.raises(SystemExit) as exited:
        exit_on_user_error(run_score)(other, run_dir)
    assert exited.value.code == 2
    error = _one_error_line(capsys)
    assert f"{run_dir / SCORES_FILE} was made with different settings" in error
    assert "projection.num_seeds=2 (now 3)" in error and "projection.steps=3 (now 4)" in error
    assert "score.resume=false" in error
    assert _snapshot(run_dir) == first  # scores.csv, config.yaml, threshold.json, maps: all as they were
    figures["fingerprint_mismatches_refused"] += 1

    # Its advice, followed, gets past it: every image scored again with 3 seeds, each exactly once.
    metrics = run_score(
        _score_cfg(workspace, "projection.num_seeds=3", "projection.steps=4", "score.resume=false"), run_dir
    )
    again = pd.read_csv(run_dir / SCORES_FILE, keep_default_na=False)
    assert len(again) == len(rows) and not again.duplicated(["split", "image_id"]).any()
    assert again["seed_losses"].str.count(";").eq(2).all()  # 3 seed losses per row
    threshold = json.loads((run_dir / THRESHOLD_FILE).read_text())
    assert threshold["num_seeds"] == 3 and threshold["fingerprint"]["values"]["projection.num_seeds"] == 3
    assert metrics["num_seeds"] == 3 and metrics["n_images"] == len(rows)
    assert read_sidecar(run_dir).values["projection.num_seeds"] == 3  # what produced scores.csv now

    # The same settings again resume (nothing re-projected) and evaluate to the same numbers.
    before = (run_dir / SCORES_FILE).read_bytes()
    assert (
        run_score(_score_cfg(workspace, "projection.num_seeds=3", "projection.steps=4"), run_dir)["auc"]
        == metrics["auc"]
    )
    assert (run_dir / SCORES_FILE).read_bytes() == before
    (run_dir / SIDECAR_NAME).rename(run_dir / "saved.json")  # scores as written before fingerprints existed
    with pytest.raises(UserError, match="has no fingerprint .* score.resume=false"):
        run_score(_score_cfg(workspace, "projection.num_seeds=3", "projection.steps=4"), run_dir)
    (run_dir / "saved.json").rename(run_dir / SIDECAR_NAME)

    # threshold.json is checked the same way when reused (score.threshold_from): other seeds -> refused.
    with pytest.raises(
        UserError, match=r"threshold_from=.* different settings: projection\.num_seeds=3 \(now 2\)"
    ):
        run_score(
            _score_cfg(workspace, "projection.num_seeds=2", f"score.threshold_from={run_dir}"), tmp_path / "T"
        )
    assert not (tmp_path / "T" / SCORES_FILE).exists()
    record = json.loads((run_dir / THRESHOLD_FILE).read_text())
    del record["fingerprint"]  # a threshold.json of an older version: its named fields are still compared
    (run_dir / THRESHOLD_FILE).write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"projection\.num_seeds=3 \(now 2\)"):
        run_score(
            _score_cfg(workspace, "projection.num_seeds=2", f"score.threshold_from={run_dir}"), tmp_path / "T"
        )
    figures["fingerprint_mismatches_refused"] += 2


# ------------------------------------------------------------- row 2: a NaN generator is refused at load


def test_generator_with_a_nan_weight_is_refused_before_any_projection(
    workspace: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], figures: dict[str, float]
) -> None:
    payload = torch.load(workspace["generator"], weights_only=True)
    name = next(k for k in payload["state_dict"] if k.endswith("conv1.conv.weight"))
    payload["state_dict"][name].view(-1)[3] = float("nan")
    poisoned = tmp_path / "generator.pt"
    torch.save(payload, poisoned)
    run_dir = tmp_path / "R"
    with pytest.raises(SystemExit) as exited:
        exit_on_user_error(run_score)(_score_cfg(workspace, f"generator={poisoned}"), run_dir)
    assert exited.value.code == 2
    error = _one_error_line(capsys)
    assert f"generator {poisoned} holds non-finite weights (NaN/Inf) in {name}" in error
    assert not run_dir.exists() or not any(run_dir.iterdir())  # nothing projected, nothing written
    payload["kind"] = "discriminator"  # the same check guards every exported network
    torch.save(payload, poisoned)
    with pytest.raises(UserError, match="non-finite"):
        load_discriminator(poisoned)
    figures["nonfinite_networks_refused_at_load"] += 2


# ----------------------------------------------------- row 3: a NaN checkpoint is named as the cause at load


def test_resume_from_a_nan_checkpoint_names_it_and_an_earlier_checkpoint_resumes(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], figures: dict[str, float]
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained["run"], run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    name = next(k for k in checkpoint["state_dict"] if k.startswith("G.") and k.endswith("weight"))
    checkpoint["state_dict"][name].fill_(float("nan"))
    torch.save(checkpoint, last)  # not through the checkpoint writer, which refuses NaN
    config_before = (run_dir / "config.yaml").read_bytes()

    with pytest.raises(SystemExit) as exited:
        exit_on_user_error(train)(_train_cfg(trained["dataset"], run_dir, "ckpt_path=last"))
    assert exited.value.code == 2
    error = _one_error_line(capsys)
    earlier = run_dir / "checkpoints" / "kimg000000.012.ckpt"
    assert f"checkpoint {last} holds non-finite weights (NaN/Inf) in {name}" in error
    assert f"resume from an earlier checkpoint with ckpt_path={earlier}" in error
    assert (run_dir / "config.yaml").read_bytes() == config_before  # refused before writing anything
    figures["nonfinite_checkpoints_refused_at_load"] += 1

    # The advice, followed: training continues from the earlier checkpoint and finishes with finite weights.
    train(_train_cfg(trained["dataset"], run_dir, f"ckpt_path={earlier}", "model.total_kimg=0.016"))
    resumed = torch.load(last, weights_only=True)
    assert resumed["stylegan2"]["cur_nimg"] == 16
    assert all(torch.isfinite(v).all() for v in resumed["state_dict"].values() if v.is_floating_point())


# -------------------------------------------------- row 4: another architecture is one line naming the keys


def test_resume_with_a_changed_architecture_is_one_line_naming_the_keys(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], figures: dict[str, float]
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(trained["run"], run_dir)
    before = _snapshot(run_dir)
    cfg = _train_cfg(trained["dataset"], run_dir, "ckpt_path=last", "model.generator.channel_max=32")
    with pytest.raises(SystemExit) as exited:
        exit_on_user_error(train)(cfg)
    assert exited.value.code == 2
    error = _one_error_line(capsys)
    assert f"checkpoint {run_dir / 'checkpoints' / 'last.ckpt'} was made with different settings" in error
    assert "model.generator.channel_max=64 (now 32)" in error
    assert "model.discriminator.channel_max=64 (now 32)" in error  # interpolated from the generator's
    assert "size mismatch" not in error and _snapshot(run_dir) == before
    figures["fingerprint_mismatches_refused"] += 1

    # A checkpoint written before fingerprints: its stored hyper-parameters name the same keys.
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    del checkpoint["fingerprint"]
    torch.save(checkpoint, last)
    with pytest.raises(UserError, match=r"model\.generator\.channel_max=64 \(now 32\)"):
        train(cfg)
    # What a fingerprint cannot see (e.g. code that builds another network): a shape check, one line.
    from mammo_anogan.models.gan_module import StyleGAN2Module

    state = ResumeState(str(last), {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()})
    smaller = StyleGAN2Module(
        generator={
            "z_dim": 64,
            "w_dim": 64,
            "img_resolution": 32,
            "mapping_layers": 2,
            "channel_base": 1024,
            "channel_max": 32,
        },
        discriminator={"img_resolution": 32, "channel_base": 1024, "channel_max": 32},
        ada={"enabled": False},
    )
    with pytest.raises(
        UserError, match=r"does not fit the network built from model\.\* \(.*in the checkpoint.* more\)"
    ):
        state.check_fits(smaller)


# --------------------------------------------------- row 5: an optimized metric that is never logged


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["optimized_metric=fidelity/fid"], "cannot download the Inception weights"),  # offline, no weights
        (
            ["optimized_metric=fidelity/kid", "callbacks.fidelity.metrics=[swd]"],
            "add 'kid' to callbacks.fidelity.metrics",
        ),
        (["optimized_metric=fidelity/swd", "callbacks=none"], "the fidelity callback is off"),
    ],
    ids=["fid-without-weights", "metric-not-computed", "callback-off"],
)
def test_optimized_metric_that_cannot_be_logged_is_refused_before_training(
    overrides: list[str],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    figures: dict[str, float],
) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no cached weights
    dataset = make_prepared_dataset(tmp_path / "dataset", n_normal_patients=3, n_abnormal_patients=1)
    cfg = _compose(
        "train",
        [
            "+experiment=tiny",
            "~logger",
            f"data.dataset_dir={dataset}",
            f"+run_dir={tmp_path / 'run'}",
            *overrides,
        ],
    )
    with pytest.raises(UserError, match=f"optimized_metric=.*{expected}"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # refused before any data, device or file work
    figures["sweep_metrics_refused_at_start"] += 1


def test_a_metric_never_logged_stops_the_sweep_with_one_line() -> None:
    cfg = DictConfig({"optimized_metric": "train/loss_gg"})
    with pytest.raises(UserError, match=r"train/loss_gg was never logged \(logged: train/loss_g\)"):
        optimized_metric_value(cfg, {"train/loss_g": torch.tensor(1.0)})
    assert optimized_metric_value(cfg, {"train/loss_gg": torch.tensor(2.5)}) == 2.5
    assert optimized_metric_value(DictConfig({"optimized_metric": None}), {}) is None


# ------------------------------------------------------------------ checkpoints and networks carry theirs


def test_checkpoints_and_exports_carry_the_run_fingerprint(trained: dict[str, Path]) -> None:
    run_dir = trained["run"]
    last = read_stamp(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True))
    assert last is not None and last.kind == "training"
    assert last.values["model.generator.channel_max"] == 64 and last.values["data.loader.batch_size"] == 4
    assert last.values["trainer.precision"] == "32-true" and "model.total_kimg" not in last.values
    generator, discriminator = (
        read_network_fingerprint(run_dir / f) for f in ("generator.pt", "discriminator.pt")
    )
    assert generator == discriminator == last.replace({"cur_nimg": 12})  # one run, one moment
    assert load_generator(run_dir / "generator.pt").img_resolution == 32


# -------------------------------------------------------------------------------- prepared datasets


def test_train_and_score_refuse_a_dataset_prepared_with_other_settings(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from mammo_anogan.prepare import prepare_dataset

    source = tmp_path / "raw"
    source.mkdir()
    yy, xx = np.mgrid[0:64, 0:64]
    film = np.where((xx / 40.0) ** 2 + ((yy - 32) / 24.0) ** 2 <= 1, 180, 0).astype(np.uint8)
    for index in range(2):
        Image.fromarray(film).save(source / f"{index}.png")
    (source / "labels.csv").write_text("path,label,patient_id,view\n0.png,normal,p0,CC\n1.png,normal,p1,CC\n")
    out = tmp_path / "prepared"
    common = ["data=folder", f"data.source={source}", "data.resolution=32", f"data.dataset_dir={out}"]
    prepare_dataset(_compose("prepare", [*common, "prepare.workers=0", "prepare.progress=false"]))
    recorded = read_sidecar(out)
    assert recorded is not None and recorded.values["data.resolution"] == 32
    (out / SIDECAR_NAME).unlink()  # a dataset prepared before fingerprints: derived from its config
    assert read_dataset_fingerprint(out) == recorded

    cfg = _compose("train", [*common, "data.preprocess.mask_threshold=25"])
    with pytest.raises(
        UserError, match=r"dataset_dir=.* data\.preprocess\.mask_threshold=null \(now 25\); pass"
    ):
        check_dataset_settings(cfg, out)
    assert check_dataset_settings(_compose("train", common), out) == recorded  # the advice, followed
    moved = _compose("train", [*common[:1], f"data.source={tmp_path / 'moved'}", *common[2:]])
    assert check_dataset_settings(moved, out) == recorded  # where the raw films were is not compared
    resized = _compose("train", [*common[:2], "data.resolution=64", common[3], "data.loader.resize=true"])
    assert check_dataset_settings(resized, out) == recorded  # the loader resizes: resolution may differ


@pytest.mark.slow  # a real Optuna sweep subprocess (Python, torch, Hydra start); in-process: above
def test_optuna_sweep_on_a_metric_that_cannot_be_logged_stops_at_its_first_trial(
    tmp_path: Path, figures: dict[str, float]
) -> None:
    """The issue's command as a user runs it: exit 2, one line, no traceback, no trial trained."""
    from reliability_helpers import error_lines, run_entry

    dataset = make_prepared_dataset(tmp_path / "dataset", n_normal_patients=3, n_abnormal_patients=1)
    sweep_dir = tmp_path / "sweep"
    done = run_entry(
        "train",
        [
            "+experiment=tiny",
            "hparams_search=optuna",
            "optimized_metric=fidelity/fid",
            f"callbacks.fidelity.inception_weights={tmp_path / 'offline' / 'inception.pth'}",
            "logger=none",
            f"data.dataset_dir={dataset}",
            "hydra.sweeper.n_trials=3",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        timeout=180,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    errors = error_lines(done.stderr)
    assert len(errors) == 1 and "optimized_metric=fidelity/fid cannot be computed here" in errors[0]
    assert "Inception weights not found" in errors[0]
    assert "Traceback" not in done.stderr + done.stdout and "No trials are completed" not in done.stderr
    assert not list(sweep_dir.rglob("*.ckpt")) and not list(sweep_dir.rglob("config.yaml"))
    figures["sweep_metrics_refused_at_start"] += 1


# ------------------------------------------------------------------------------- the mechanism itself


def test_fingerprints_compare_canonical_values_and_name_every_difference_in_one_line(tmp_path: Path) -> None:
    from mammo_anogan.utils.fingerprint import (
        Fingerprint,
        check_fingerprint,
        make_fingerprint,
        stamp,
        write_sidecar,
    )

    a = make_fingerprint("scores", {"projection": {"steps": 2, "betas": (0.9, 0.999)}, "lr": 0.1})
    same = make_fingerprint("scores", {"projection": {"steps": 2.0, "betas": [0.9, 0.999]}, "lr": 0.1})
    assert a.values == {"projection.steps": 2, "projection.betas": [0.9, 0.999], "lr": 0.1}
    assert a.digest == same.digest and len(a.digest) == 16
    check_fingerprint(a, same, "x", "advice")  # 2 == 2.0, tuple == list
    check_fingerprint(a, a.replace({"new.key": 1}), "x", "advice")  # a key added later is not held against a
    many = a.replace({f"k{i}": i for i in range(8)})
    with pytest.raises(UserError) as err:
        check_fingerprint(
            many, many.replace({f"k{i}": -i for i in range(1, 8)} | {"lr": 0.2}), "R/x.csv", "do y"
        )
    message = str(err.value)
    assert message.startswith("R/x.csv was made with different settings: k1=1 (now -1), k2=2 (now -2)")
    assert message.endswith("and 2 more; do y") and "\n" not in message
    with pytest.raises(UserError, match="holds a training fingerprint, not a scores one"):
        check_fingerprint(Fingerprint("training", a.values), a, "x", "advice")
    check_fingerprint(None, a, "x", "advice")  # no fingerprint: accepted unless the caller refuses it
    with pytest.raises(
        UserError, match="x has no fingerprint \\(old\\), so its settings cannot be checked; advice"
    ):
        check_fingerprint(None, a, "x", "advice", missing="old")
    assert read_stamp(stamp({"w": 1}, a)) == a and read_stamp({"w": 1}) is None
    write_sidecar(tmp_path, a)
    assert read_sidecar(tmp_path) == a
    (tmp_path / SIDECAR_NAME).write_text("{not json")
    with pytest.raises(UserError, match="cannot read .*fingerprint.json"):
        read_sidecar(tmp_path)
