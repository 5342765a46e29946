"""Issue 14: an error message that suggests a fix suggests one that works.

Every case triggers a ``UserError`` / ``ConfigError``, checks that the message names its fix, applies
exactly that fix, and checks that the same step now gets past the error. Together with
``test_first_hour.py`` (no GPU -> ``trainer=cpu``; plain DDP -> ``trainer.devices=1`` / ``trainer=ddp``;
2 GPUs asked of 1 -> capped; unlabelled films -> ``data.label=normal``), ``test_split_salt.py``
(re-split without ``data.source``) and ``test_doctor.py``, this covers every message of the package
that names a fix. The remaining messages state what is wrong with an input and name no fix (a
corrupt checkpoint or export, a pickle refused by ``weights_only=True``, arrays of mismatched
shapes or lengths passed to the evaluation API, a metrics.json that is not one, an empty or
all-rejected source folder, a threshold.json that is not one): they were reviewed for accuracy only.
"""

from __future__ import annotations

import copy
import types
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from data_factory import make_prepared_dataset
from dicom_fixtures import compose_prepare, phantom, write_dicom
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

import mammo_anogan.utils.config  # noqa: F401  (resolvers first)
from mammo_anogan.config_schema import validate_prepare_config, validate_score_config, validate_train_config
from mammo_anogan.data.datamodule import MammoDataModule
from mammo_anogan.data.splits import compute_splits, empty_train_reason, ensure_splits
from mammo_anogan.models.stylegan2 import Discriminator, Generator
from mammo_anogan.models.stylegan2.export import save_network
from mammo_anogan.prepare import ensure_dataset_split, list_inputs, prepare_dataset, preprocess_settings
from mammo_anogan.utils.config import CONFIG_DIR
from mammo_anogan.utils.errors import ConfigError, UserError

OVERWRITE = "prepare.overwrite=true"


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def _with(cfg: DictConfig, **updates: Any) -> DictConfig:
    """A copy of ``cfg`` with dotted keys (``data__split__seed``) set."""
    out = copy.deepcopy(cfg)
    for key, value in updates.items():
        OmegaConf.update(out, key.replace("__", "."), value, force_add=True)
    return out


def _fails_then_passes(
    run: Callable[[DictConfig], Any], bad: DictConfig, named: list[str], fixed: DictConfig
) -> Any:
    with pytest.raises(UserError) as caught:
        run(bad)
    message = str(caught.value)
    assert "\n" not in message
    for spelling in named:
        assert spelling in message, (spelling, message)
    return run(fixed)


# ----------------------------------------------------------------------------- a tiny raw folder
def write_png_folder(root: Path, n_patients: int = 4) -> Path:
    """PNG films (one per breast) of ``n_patients`` patients + labels.csv with patient ids."""
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:64, 0:48]
    rows = ["path,label,patient_id,laterality,view"]
    for patient in range(n_patients):
        for side in ("L", "R"):
            cx = 0 if side == "L" else 47
            breast = ((xx - cx) / 32.0) ** 2 + ((yy - 32) / 24.0) ** 2 <= 1
            film = np.where(breast, 120 + 20 * patient + (yy % 7) * 5, 0).astype(np.uint8)
            name = f"p{patient}{side}.png"
            cv2.imwrite(str(root / name), film)
            label = "malignant" if patient == n_patients - 1 and side == "R" else "normal"
            rows.append(f"{name},{label},p{patient},{side},CC")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def folder_prepare(source: Path, out: Path, *extra: str) -> DictConfig:
    return compose_prepare(
        [
            "data=folder",
            f"data.source={source}",
            "data.resolution=32",
            f"prepare.out_dir={out}",
            "prepare.workers=0",
            "prepare.salt_seed=0",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_png_folder(tmp_path_factory.mktemp("raw") / "films")


@pytest.fixture(scope="module")
def dataset32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_prepared_dataset(tmp_path_factory.mktemp("ds32"), 6, 2, resolution=32)


@pytest.fixture(scope="module")
def generator_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nets")
    torch.manual_seed(0)
    kwargs = {"img_resolution": 32, "channel_base": 128, "channel_max": 8}
    save_network(Generator(z_dim=8, w_dim=8, mapping_layers=1, **kwargs), root / "generator.pt")
    save_network(Discriminator(**kwargs), root / "discriminator.pt")
    return root / "generator.pt"


# ----------------------------------------------------------------------------- config validators
VALIDATOR_CASES = [
    # (entry, key, bad value, spellings the message must name, the value it asks for)
    ("train", "data.reader", "xray", ["use one of dicom, mias, folder, synthetic"], "folder"),
    ("train", "data.resolution", 48, ["use one of 8, 16, 32, 64"], 32),
    ("train", "data.label", "healthy", ["use one of normal, benign"], "normal"),
    ("train", "data.split.val_fraction", 1.5, ["0 <= data.split.val_fraction < 1"], 0.1),
    ("train", "data.split.test_fraction", -0.1, ["0 <= data.split.test_fraction < 1"], 0.1),
    ("train", "data.loader.batch_size", 0, ["data.loader.batch_size=0", "must be >= 1"], 1),
    ("train", "data.loader.num_workers", -1, ["must be >= 0"], 0),
    ("train", "model.generator.img_resolution", 64, ["leave it at its default ${data.resolution}"], None),
    ("train", "model.generator.img_channels", 2, ["use one of 1, 3"], 1),
    ("train", "model.total_kimg", 0, ["model.total_kimg=0.0", "must be > 0"], 1),
    ("train", "model.on_nonfinite", "ignore", ["use one of stop, skip"], "skip"),
    (
        "score",
        "projection.loss",
        "l2",
        ["use one of lpips_vgg, lpips_alex, disc_features, ms_ssim, mse"],
        "mse",
    ),
    ("score", "projection.space", "z", ["use one of w, w_plus"], "w_plus"),
    ("score", "projection.pixel_norm", "l3", ["use one of l1, l2"], "l2"),
    ("score", "projection.precision", "fp16", ["use one of bf16, fp32"], "fp32"),
    ("score", "projection.num_seeds", 0, ["must be >= 1"], 1),
    ("score", "projection.steps", 0, ["must be >= 1", "needs an encoder start: projection.init=encoder"], 1),
    ("score", "projection.batch_images", 0, ["must be >= 1"], 1),
    ("score", "projection.w_std_samples", 0, ["must be >= 1"], 1),
    ("score", "projection.max_restarts", -1, ["must be >= 0"], 0),
    ("score", "projection.pixel_weight", -1, ["must be >= 0"], 0.5),
    ("score", "projection.lr", 0, ["must be > 0"], 0.05),
    ("score", "projection.lr_rampup", 2, ["allowed: 0 <= value <= 1"], 0.1),
    ("score", "projection.lr_rampdown", -1, ["allowed: 0 <= value <= 1"], 0.1),
    ("score", "projection.latent_noise_ramp", 1.5, ["allowed: 0 <= value <= 1"], 0.5),
    ("prepare", "prepare.workers", -1, ["must be >= 0"], 0),
    ("prepare", "prepare.file_timeout_s", -1, ["must be >= 0"], 0),
]


@pytest.fixture(scope="module")
def base_configs(dataset32: Path, generator_file: Path, raw: Path) -> dict[str, DictConfig]:
    common = [f"data.dataset_dir={dataset32}", "data.resolution=32"]
    return {
        "train": _compose("train", ["+experiment=tiny", *common]),
        "score": _compose("score", ["+experiment=tiny", *common, f"generator={generator_file}"]),
        "prepare": folder_prepare(raw, dataset32.parent / "unused"),
    }


VALIDATORS = {
    "train": validate_train_config,
    "score": validate_score_config,
    "prepare": validate_prepare_config,
}


@pytest.mark.parametrize(("entry", "key", "bad", "named", "good"), VALIDATOR_CASES, ids=lambda v: str(v))
def test_config_value_errors_name_values_that_pass(
    base_configs: dict[str, DictConfig], entry: str, key: str, bad: Any, named: list[str], good: Any
) -> None:
    base = base_configs[entry]
    fixed = _with(base, **{key.replace(".", "__"): good}) if good is not None else copy.deepcopy(base)
    _fails_then_passes(VALIDATORS[entry], _with(base, **{key.replace(".", "__"): bad}), [key, *named], fixed)


def test_split_fractions_summing_to_one(base_configs: dict[str, DictConfig]) -> None:
    bad = _with(base_configs["train"], data__split__val_fraction=0.5, data__split__test_fraction=0.5)
    fixed = _with(bad, data__split__val_fraction=0.3)
    _fails_then_passes(validate_train_config, bad, ["a sum < 1"], fixed)
    with pytest.raises(UserError, match="data.split.val_fraction \\+ data.split.test_fraction must be < 1"):
        compute_splits(pd.DataFrame(columns=["image_id", "patient_id", "label"]), 0.5, 0.5)
    with pytest.raises(UserError, match="data.split.val_fraction must be in"):
        compute_splits(pd.DataFrame(columns=["image_id", "patient_id", "label"]), 1.0, 0.0)


def test_missing_or_wrong_data_source(base_configs: dict[str, DictConfig], tmp_path: Path) -> None:
    unprepared = _with(base_configs["train"], data__reader="dicom", data__dataset_dir=str(tmp_path / "none"))
    _fails_then_passes(
        validate_train_config,
        _with(unprepared, data__source="???"),
        ["set data.source=<folder of dicom images>"],
        _with(unprepared, data__source=str(tmp_path)),
    )
    _fails_then_passes(
        validate_train_config,
        _with(unprepared, data__source=str(tmp_path / "nope")),
        ["does not exist; allowed: an existing folder"],
        _with(unprepared, data__source=str(tmp_path)),
    )
    # A file where a folder is expected passes the existence check; the reader names the fix.
    a_file = tmp_path / "film.dcm"
    a_file.write_bytes(b"x")
    dicom = _compose("prepare", ["data=dicom", f"data.source={a_file}"])
    _fails_then_passes(
        lambda cfg: next(list_inputs(cfg.data), None),
        dicom,
        ["data.source is not an existing folder (set data.source=DIR)"],
        _with(dicom, data__source=str(tmp_path)),
    )
    synthetic = _with(base_configs["prepare"], data__reader="synthetic", data__source="")
    _fails_then_passes(
        lambda cfg: list_inputs(cfg.data),
        synthetic,
        ["(data.source=DIR)"],
        _with(synthetic, data__reader="folder", data__source=str(base_configs["prepare"].data.source)),
    )


def test_score_needs_a_generator(base_configs: dict[str, DictConfig], generator_file: Path) -> None:
    score = base_configs["score"]
    _fails_then_passes(
        validate_score_config,
        _with(score, generator="???"),
        ["set generator=<path to an exported generator.pt>"],
        score,
    )
    _fails_then_passes(
        validate_score_config,
        _with(score, generator=str(generator_file.with_name("nope.pt"))),
        ["does not exist; allowed: an exported generator.pt file"],
        score,
    )


# ----------------------------------------------------------------------------- prepare and readers
def test_preprocess_values(base_configs: dict[str, DictConfig]) -> None:
    data = base_configs["prepare"]
    _fails_then_passes(
        lambda cfg: preprocess_settings(cfg.data),
        _with(data, data__preprocess__window_percentiles=[60, 10]),
        ["[low, high] with 0 <= low < high <= 100"],
        _with(data, data__preprocess__window_percentiles=[1, 99]),
    )
    _fails_then_passes(
        lambda cfg: preprocess_settings(cfg.data),
        _with(data, data__preprocess__window_fallback="max"),
        ["breast_percentile or minmax"],
        _with(data, data__preprocess__window_fallback="minmax"),
    )


def test_labels_csv_missing_or_without_columns(raw: Path, tmp_path: Path) -> None:
    source = Path(tmp_path / "films")
    source.mkdir()
    for png in raw.glob("*.png"):
        (source / png.name).write_bytes(png.read_bytes())
    cfg = folder_prepare(source, tmp_path / "out")
    _fails_then_passes(
        lambda c: next(list_inputs(c.data)),
        cfg,
        ["labels CSV not found", "set data.labels_csv=<CSV with columns path,label>"],
        _with(cfg, data__labels_csv=str(raw / "labels.csv")),
    )
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("file,diagnosis\np0L.png,normal\n")
    good_csv = tmp_path / "good.csv"
    good_csv.write_text("path,label\np0L.png,normal\n")
    _fails_then_passes(
        lambda c: next(list_inputs(c.data)),
        _with(cfg, data__labels_csv=str(bad_csv)),
        ["lacks column(s) label, path", "must name path and label"],
        _with(cfg, data__labels_csv=str(good_csv)),
    )


def test_a_mias_folder_without_info_txt(raw: Path, tmp_path: Path) -> None:
    from mammo_anogan.data.readers import list_mias_inputs

    folder = tmp_path / "mias"
    folder.mkdir()
    cv2.imwrite(str(folder / "mdb001.pgm"), np.zeros((8, 8), np.uint8))
    with pytest.raises(UserError, match=re_escape("expected a mini-MIAS folder: mdbNNN.pgm + Info.txt")):
        next(list_mias_inputs(folder))
    (folder / "Info.txt").write_text("mdb001 G NORM\n")
    assert next(list_mias_inputs(folder)).label == "normal"


def test_a_resumed_prepare_with_other_settings(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare_dataset(folder_prepare(raw, out))
    bad = folder_prepare(raw, out, "data.preprocess.mask_method=otsu")
    message = "use prepare.overwrite=true (discards it) or another prepare.out_dir"
    _fails_then_passes(
        prepare_dataset,
        bad,
        [message],
        folder_prepare(raw, out, "data.preprocess.mask_method=otsu", OVERWRITE),
    )
    other = folder_prepare(raw, tmp_path / "other", "data.preprocess.mask_method=triangle")
    _fails_then_passes(
        prepare_dataset, folder_prepare(raw, out, "data.preprocess.mask_method=triangle"), [message], other
    )


def test_no_prepared_dataset_yet(raw: Path, tmp_path: Path) -> None:
    from mammo_anogan.train import ensure_prepared_dataset

    out = tmp_path / "data" / "prepared"
    data = ["data=folder", f"data.source={raw}", "data.resolution=32", f"paths.data_dir={tmp_path / 'data'}"]
    train_cfg = _compose("train", ["+experiment=tiny", *data])
    dataset = Path(str(train_cfg.data.dataset_dir))
    assert dataset.parent == out
    with pytest.raises(
        UserError, match=r"run `python -m mammo_anogan.prepare data=folder` with the same data"
    ):
        ensure_prepared_dataset(train_cfg)
    with pytest.raises(UserError, match=r"run `python -m mammo_anogan.prepare data=\.\.\.` first"):
        ensure_splits(dataset)
    with pytest.raises(UserError, match=r"run `python -m mammo_anogan.prepare data=\.\.\.` first"):
        MammoDataModule.from_config(train_cfg.data).setup()
    score_cfg = _compose("score", ["+experiment=tiny", *data, f"generator={raw / 'labels.csv'}"])
    with pytest.raises(ConfigError, match="run python -m mammo_anogan.prepare with the same data"):
        validate_score_config(score_cfg)
    # The fix: prepare with the same data.* settings (prepare.out_dir defaults to data.dataset_dir).
    prepare_dataset(_compose("prepare", [*data, "prepare.workers=0", "prepare.progress=false"]))
    assert ensure_prepared_dataset(train_cfg) == dataset
    assert len(ensure_splits(dataset)) == 8
    datamodule = MammoDataModule.from_config(train_cfg.data)
    datamodule.setup()
    validate_score_config(score_cfg)
    with pytest.raises(UserError, match="unknown split 'holdout'; choose one of train, val, test"):
        datamodule.dataset("holdout")
    assert len(datamodule.dataset("test")) > 0


@pytest.fixture()
def prepared(raw: Path, tmp_path: Path) -> Path:
    out = tmp_path / "prepared"
    prepare_dataset(folder_prepare(raw, out))
    return out


def _edit_manifest(dataset: Path, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    manifest = pd.read_csv(dataset / "manifest.csv", dtype=str, keep_default_na=False)
    edit(manifest).to_csv(dataset / "manifest.csv", index=False)


@pytest.mark.parametrize(
    ("damage", "named"),
    [
        (lambda m: m.drop(columns=["patient_id"]), "lacks the column(s) patient_id"),
        (lambda m: m.assign(label=["healthy"] + list(m["label"][1:])), "unexpected label(s) ['healthy']"),
        (lambda m: pd.concat([m, m.iloc[:1]]), "lists an image_id more than once"),
    ],
    ids=["column", "label", "duplicate"],
)
def test_a_damaged_manifest_is_repaired_by_overwrite(
    raw: Path, prepared: Path, damage: Callable[[pd.DataFrame], pd.DataFrame], named: str
) -> None:
    _edit_manifest(prepared, damage)
    with pytest.raises(UserError) as caught:
        ensure_splits(prepared)
    assert named in str(caught.value) and f"prepare again with {OVERWRITE}" in str(caught.value)
    prepare_dataset(folder_prepare(raw, prepared, OVERWRITE))
    assert len(ensure_splits(prepared)) == 8


def test_a_manifest_without_image_or_mask_paths_is_repaired_by_overwrite(raw: Path, prepared: Path) -> None:
    _edit_manifest(prepared, lambda m: m.drop(columns=["mask_path"]))
    with pytest.raises(UserError, match=f"lacks the column mask_path: prepare again with {OVERWRITE}"):
        MammoDataModule(prepared, 32, 2).setup()
    prepare_dataset(folder_prepare(raw, prepared, OVERWRITE))
    MammoDataModule(prepared, 32, 2).setup()


def test_a_hand_edited_label_can_be_corrected(prepared: Path) -> None:
    _edit_manifest(prepared, lambda m: m.assign(label=["healthy"] + list(m["label"][1:])))
    with pytest.raises(UserError, match="correct them"):
        ensure_splits(prepared)
    _edit_manifest(prepared, lambda m: m.assign(label=["normal"] + list(m["label"][1:])))
    ensure_splits(prepared)


def test_missing_or_resized_pngs_are_repaired_by_overwrite(raw: Path, prepared: Path) -> None:
    manifest = pd.read_csv(prepared / "manifest.csv", dtype=str, keep_default_na=False)
    (prepared / manifest["image_path"][0]).unlink()
    with pytest.raises(UserError, match=f"prepared file missing or unreadable: .*{OVERWRITE}"):
        MammoDataModule(prepared, 32, 2).setup()
    prepare_dataset(folder_prepare(raw, prepared, OVERWRITE))
    MammoDataModule(prepared, 32, 2).setup()
    cv2.imwrite(str(prepared / manifest["mask_path"][1]), np.zeros((16, 16), np.uint8))
    with pytest.raises(
        UserError, match=f"mask size differs from image size .*: prepare again with {OVERWRITE}"
    ):
        MammoDataModule(prepared, 32, 2).setup()
    prepare_dataset(folder_prepare(raw, prepared, OVERWRITE))
    MammoDataModule(prepared, 32, 2).setup()


def test_images_at_another_resolution(raw: Path, prepared: Path, tmp_path: Path) -> None:
    message = "prepare again with data.resolution=64 (into another folder, or with prepare.overwrite=true)"
    with pytest.raises(UserError, match=re_escape(message)):
        MammoDataModule(prepared, 64, 2).setup()
    MammoDataModule(prepared, 64, 2, resize=True).setup()  # fix 1: data.loader.resize=true
    other = tmp_path / "at64"  # fix 2: prepare at 64 px into another folder
    prepare_dataset(folder_prepare(raw, other, "data.resolution=64"))
    MammoDataModule(other, 64, 2).setup()
    same_folder = re_escape("different settings: data.resolution=32 (now 64)")  # needs overwrite
    with pytest.raises(UserError, match=same_folder):
        prepare_dataset(folder_prepare(raw, prepared, "data.resolution=64"))
    prepare_dataset(folder_prepare(raw, prepared, "data.resolution=64", OVERWRITE))
    MammoDataModule(prepared, 64, 2).setup()


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_test_ids_file_and_values(raw: Path, prepared: Path, tmp_path: Path) -> None:
    ids_file = tmp_path / "test_ids.txt"
    with pytest.raises(UserError, match="data.split.test_ids file not found"):
        ensure_splits(prepared, test_ids=ids_file)
    ids_file.write_text("not-an-id\n")
    with pytest.raises(UserError, match="list image_id values of manifest.csv"):
        ensure_splits(prepared, test_ids=ids_file)
    manifest = pd.read_csv(prepared / "manifest.csv", dtype=str)
    ids_file.write_text(manifest["image_id"][0] + "\n")
    ensure_dataset_split(folder_prepare(raw, prepared, f"data.split.test_ids={ids_file}").data, prepared)
    splits = ensure_splits(prepared, test_ids=ids_file)
    assert splits.set_index("image_id").loc[manifest["image_id"][0], "split"] == "test"


def test_films_removed_from_the_source_after_preparing(raw: Path, tmp_path: Path) -> None:
    source = tmp_path / "films"
    source.mkdir()
    for path in raw.iterdir():
        (source / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    prepare_dataset(folder_prepare(source, out))
    rows = (source / "labels.csv").read_text().splitlines()
    (source / "labels.csv").write_text("\n".join(r for r in rows if not r.startswith("p0")) + "\n")
    _fails_then_passes(
        prepare_dataset,
        folder_prepare(source, out, "data.split.seed=3"),
        ["the raw identifiers of 1 patient(s)", OVERWRITE],
        folder_prepare(source, out, "data.split.seed=3", OVERWRITE),
    )


@pytest.fixture()
def dicom_source(tmp_path: Path) -> Path:
    source = tmp_path / "dicoms"
    for index in range(4):
        write_dicom(
            source / f"f{index}.dcm",
            phantom(64, 48, right=index % 2 == 1, seed=index),
            PatientID=f"P{index // 2}",
            ViewPosition="CC",
            ImageLaterality="R" if index % 2 else "L",
        )
    return source


def _dicom_prepare(source: Path, out: Path, *extra: str) -> DictConfig:
    return compose_prepare(
        ["data=dicom", f"data.source={source}", "data.resolution=32", "data.label=normal",
         f"prepare.out_dir={out}", "prepare.workers=0", *extra]
    )  # fmt: skip


def test_a_film_that_became_unreadable_or_changed_patient(dicom_source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert prepare_dataset(_dicom_prepare(dicom_source, out)).kept == 4
    originals = {name: (dicom_source / name).read_bytes() for name in ("f0.dcm", "f1.dcm")}
    for name, data in originals.items():  # both films of patient P0 truncated after preparing
        (dicom_source / name).write_bytes(data[:100])
    _fails_then_passes(
        prepare_dataset,
        _dicom_prepare(dicom_source, out, "data.split.seed=3"),
        ["can no longer be read for its patient identifier", OVERWRITE],
        _dicom_prepare(dicom_source, out, "data.split.seed=3", OVERWRITE),
    )
    for name, data in originals.items():
        (dicom_source / name).write_bytes(data)
    assert prepare_dataset(_dicom_prepare(dicom_source, out, OVERWRITE)).kept == 4
    write_dicom(dicom_source / "f0.dcm", phantom(64, 48, seed=0), PatientID="P9", ViewPosition="CC")
    _fails_then_passes(
        prepare_dataset,
        _dicom_prepare(dicom_source, out, "data.split.seed=4"),
        ["point data.source at the original folder or prepare again with prepare.overwrite=true"],
        _dicom_prepare(dicom_source, out, "data.split.seed=4", OVERWRITE),
    )


# ----------------------------------------------------------------------------- training
def test_an_empty_train_split_of_mixed_patients_is_fixed_by_all_normal_exams() -> None:
    manifest = pd.DataFrame(
        {"image_id": ["a", "b", "c", "d"], "patient_id": ["p1", "p1", "p2", "p2"],
         "label": ["normal", "malignant", "normal", "benign"]}
    )  # fmt: skip
    splits = compute_splits(manifest)
    assert not (splits["split"] == "train").any()
    assert "add such exams" in empty_train_reason(splits, Path("ds"))
    more = pd.concat([manifest, pd.DataFrame({"image_id": ["e"], "patient_id": ["p3"], "label": ["normal"]})])
    assert (compute_splits(more)["split"] == "train").any()


def test_train_split_smaller_than_the_devices(dataset32: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mammo_anogan.data.datamodule as datamodule_module

    module = MammoDataModule(dataset32, 32, 2)
    module.setup()
    monkeypatch.setattr(
        datamodule_module, "_distributed_world", lambda: (len(module.dataset("train")) + 1, 0)
    )
    with pytest.raises(UserError, match=r"use fewer devices \(trainer.devices=1\)"):
        module.train_dataloader()
    monkeypatch.setattr(datamodule_module, "_distributed_world", lambda: (1, 0))  # trainer.devices=1
    assert len(module.train_dataloader()) > 0


def test_resume_from_a_run_dir_without_checkpoint(tmp_path: Path) -> None:
    from mammo_anogan.train import resolve_ckpt_path

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
    cfg = OmegaConf.create({"ckpt_path": "last"})
    with pytest.raises(
        UserError, match=r"resume with hydra.run.dir=<the earlier run's directory> ckpt_path=last"
    ):
        resolve_ckpt_path(cfg, tmp_path / "elsewhere")
    assert resolve_ckpt_path(cfg, run) == str(run / "checkpoints" / "last.ckpt")


@pytest.fixture(scope="module")
def demo_train(dataset32: Path) -> DictConfig:
    return _compose("train", ["+experiment=tiny", f"data.dataset_dir={dataset32}", "logger=none"])


CALLBACK_CASES = [
    ("sample_grid", "every_kimg", 0, "callbacks.sample_grid: every_kimg must be > 0", 1),
    ("sample_grid", "num_samples", 0, "callbacks.sample_grid: num_samples must be >= 1", 4),
    ("kimg_stopping", "total_kimg", 0, "callbacks.kimg_stopping: total_kimg must be > 0", 1),
    ("fidelity", "metrics", ["fidx"], "choose from ['swd', 'frd', 'fid', 'kid']", ["swd"]),
    ("fidelity", "num_real", 2, "fidelity.num_real must be >= 4", 4),
    ("best_fidelity", "monitor", "fidelity/frd", "monitor fidelity/swd instead", "fidelity/swd"),
]


@pytest.mark.parametrize(("block", "key", "bad", "named", "good"), CALLBACK_CASES, ids=lambda v: str(v))
def test_callback_values(
    demo_train: DictConfig, block: str, key: str, bad: Any, named: str, good: Any
) -> None:
    from mammo_anogan.train import instantiate_callbacks

    def build(cfg: DictConfig) -> Any:
        return instantiate_callbacks(cfg, Path("run"))

    path = f"callbacks__{block}__{key}"
    _fails_then_passes(build, _with(demo_train, **{path: bad}), [named], _with(demo_train, **{path: good}))


def test_checkpoint_values(demo_train: DictConfig) -> None:
    from mammo_anogan.train import instantiate_callbacks

    def build(cfg: DictConfig) -> Any:
        return instantiate_callbacks(cfg, Path("run"))

    _fails_then_passes(
        build,
        _with(demo_train, checkpoint__every_n_kimg=0),
        ["checkpoint.every_n_kimg must be > 0"],
        demo_train,
    )


def test_invalid_trainer_values_are_one_line(demo_train: DictConfig, tmp_path: Path) -> None:
    from mammo_anogan.train import build_trainer

    quiet = _with(demo_train, callbacks={})
    for key, bad in (("trainer__num_nodes", 0), ("trainer__foo", 1)):
        with pytest.raises(ConfigError, match=r"^trainer: ") as caught:
            build_trainer(_with(quiet, **{key: bad}), tmp_path, {})
        assert "\n" not in str(caught.value)
    assert build_trainer(quiet, tmp_path, {}).num_nodes == 1


def test_a_monitored_metric_that_is_not_computed(demo_train: DictConfig) -> None:
    from mammo_anogan.training.callbacks import FidelityCallback

    trainer = types.SimpleNamespace(checkpoint_callbacks=[types.SimpleNamespace(monitor="fidelity/fid")])
    with pytest.raises(ConfigError, match="add 'fid' to callbacks.fidelity.metrics"):
        FidelityCallback(metrics=["swd"]).setup(trainer, None, "fit")  # type: ignore[arg-type]
    FidelityCallback(metrics=["swd", "fid"]).setup(trainer, None, "fit")  # type: ignore[arg-type]


MODEL_CASES = [
    ("model__loss__r1_interval", 0, "model.loss.r1_interval must be >= 1", 16),
    ("model__loss__style_mixing_prob", 2, "model.loss.style_mixing_prob must be in [0, 1]", 0.5),
    ("model__loss__pl_weight", -1, "model.loss.pl_weight must be >= 0", 0),
    ("model__ema__kimg", -1, "model.ema.kimg must be >= 0", 0.5),
    ("model__ada__enabled", "maybe", "use true, false or auto", "auto"),
    ("model__loss__r1_intervall", 4, "allowed: pl_batch_shrink", None),
    ("model__generator__z_dim", 0, "z_dim must be > 0", 64),
    ("model__generator__w_avg_beta", 2, "w_avg_beta must be in [0, 1]", 0.99),
    ("model__discriminator__mbstd_group_size", 0, "mbstd_group_size must be >= 1", 4),
    ("model__discriminator__img_resolution", 16, "leave both at their default ${data.resolution}", None),
]


@pytest.mark.parametrize(("key", "bad", "named", "good"), MODEL_CASES, ids=lambda v: str(v))
def test_model_values(demo_train: DictConfig, key: str, bad: Any, named: str, good: Any) -> None:
    from mammo_anogan.train import instantiate_block

    def build(cfg: DictConfig) -> Any:
        return instantiate_block(cfg.model, "model", _convert_="all")

    bad_cfg = _with(demo_train, **{key: bad})
    fixed = _with(demo_train, **{key: good}) if good is not None else demo_train
    _fails_then_passes(build, bad_cfg, [named], fixed)


def test_r1_gamma_and_precision() -> None:
    from mammo_anogan.models.gan_module import StyleGAN2Module
    from mammo_anogan.models.losses import resolve_r1_gamma

    for bad, named in (("strong", "use a number >= 0, 'preset' or 'auto'"), (-1, "finite number >= 0")):
        with pytest.raises(ConfigError, match=re_escape(f"model.r1_gamma={bad!r}: ")) as caught:
            resolve_r1_gamma(bad, 32, 8)
        assert named in str(caught.value)
    assert resolve_r1_gamma("preset", 32, 8) > 0 and resolve_r1_gamma(1, 32, 8) == 1.0

    sizes = {"img_resolution": 16, "channel_base": 64, "channel_max": 8}
    module = StyleGAN2Module(
        generator={"z_dim": 8, "w_dim": 8, "mapping_layers": 1, **sizes}, discriminator=sizes, total_kimg=1
    )

    def fit_start(precision: str, wrapped: Any = None) -> None:
        module._trainer = types.SimpleNamespace(
            strategy=types.SimpleNamespace(model=wrapped), precision=precision
        )
        module.on_fit_start()

    with pytest.raises(ConfigError, match="use bf16-mixed on GPU or 32-true"):
        fit_start("16-mixed")
    fit_start("32-true")
    ddp_wrapped = torch.nn.parallel.DistributedDataParallel.__new__(torch.nn.parallel.DistributedDataParallel)
    with pytest.raises(ConfigError, match="use trainer.devices=1 for one process, or trainer=ddp"):
        fit_start("32-true", ddp_wrapped)
    fit_start("32-true", None)  # what trainer.devices=1 and trainer=ddp (unwrapped module) give


def test_trainer_devices_values() -> None:
    from mammo_anogan.training.devices import Hardware, fit_trainer_to_hardware

    base = {"accelerator": "cpu", "strategy": "auto"}
    for bad, named in (("two", "use a number of devices, -1 (all) or auto"), (0, "it must be >= 1")):
        with pytest.raises(ConfigError, match=re_escape(named)):
            fit_trainer_to_hardware({**base, "devices": bad}, Hardware(0))
    for good in (1, -1, "auto"):
        assert fit_trainer_to_hardware({**base, "devices": good}, Hardware(0)) == {}


# ----------------------------------------------------------------------------- scoring
def test_generator_at_another_resolution(generator_file: Path, tmp_path: Path) -> None:
    from mammo_anogan.score import load_checked_generator

    cfg = OmegaConf.create({"generator": str(generator_file), "data": {"resolution": 64}})
    _fails_then_passes(
        load_checked_generator,
        cfg,
        ["set data.resolution=32 (and prepare it) or pass the matching generator"],
        _with(cfg, data__resolution=32),
    )


@pytest.mark.parametrize(
    ("key", "bad", "named", "good"),
    [
        ("method", "median", "score.method must be one of mean_map", "best_map"),
        ("comparison", "all", "score.comparison must be one of abnormal_vs_normal", "malignant_vs_normal"),
        ("splits", ["holdout"], "a non-empty subset of [train, val, test]", ["train", "test"]),
        ("oracle", "maybe", "score.oracle must be one of auto, true, false", False),
    ],
)
def test_score_values(base_configs: dict[str, DictConfig], key: str, bad: Any, named: str, good: Any) -> None:
    from mammo_anogan.score import check_score_config

    score = base_configs["score"]
    _fails_then_passes(
        lambda cfg: check_score_config(cfg.score),
        _with(score, **{f"score__{key}": bad}),
        [named],
        _with(score, **{f"score__{key}": good}),
    )


def test_threshold_from(tmp_path: Path) -> None:
    from mammo_anogan.anomaly.outputs import read_threshold, write_threshold

    run = tmp_path / "run"
    run.mkdir()
    write_threshold(run, {"threshold": 0.5, "generator_hash": "aaa", "score_method": "mean_map"})
    with pytest.raises(UserError, match="no threshold file at"):
        read_threshold(tmp_path / "other", "aaa", "mean_map")
    assert read_threshold(run, "aaa", "mean_map")["threshold"] == 0.5  # the run dir (or its file)
    with pytest.raises(
        UserError, match=re_escape("point it at a run scored with this generator, or drop it")
    ):
        read_threshold(run, "bbb", "mean_map")
    write_threshold(run, {"threshold": 0.5, "generator_hash": "bbb", "score_method": "mean_map"})
    assert read_threshold(run, "bbb", "mean_map")["threshold"] == 0.5
    with pytest.raises(
        UserError, match=re_escape("pass score.method=mean_map, or drop score.threshold_from")
    ):
        read_threshold(run, "bbb", "topk")
    assert read_threshold(run / "threshold.json", "bbb", "mean_map")["score_method"] == "mean_map"


def test_projection_settings_and_losses(generator_file: Path, tmp_path: Path) -> None:
    from mammo_anogan.anomaly.losses import build_projection_loss
    from mammo_anogan.anomaly.projector import ProjectionSettings
    from mammo_anogan.models.stylegan2.export import load_discriminator

    for kwargs, named, fixed in (
        ({"space": "z"}, "projection.space must be w or w_plus", {"space": "w"}),
        ({"num_seeds": 0}, "projection.num_seeds must be >= 1 and projection.steps >= 1", {"num_seeds": 1}),
        ({"precision": "fp16"}, "projection.precision must be bf16 or fp32", {"precision": "fp32"}),
    ):
        with pytest.raises(ConfigError, match=re_escape(named)):
            ProjectionSettings(**kwargs)
        ProjectionSettings(**fixed)
    with pytest.raises(ConfigError, match="projection.pixel_norm must be l1 or l2"):
        build_projection_loss("mse", pixel_weight=1.0, pixel_norm="l3")
    build_projection_loss("mse", pixel_weight=1.0, pixel_norm="l2")
    with pytest.raises(ConfigError, match="projection.loss must be one of"):
        build_projection_loss("l2")
    with pytest.raises(UserError, match="set discriminator=PATH"):
        build_projection_loss("disc_features")
    build_projection_loss(
        "disc_features", discriminator=load_discriminator(generator_file.with_name("discriminator.pt"))
    )


def test_score_without_discriminator_file(
    base_configs: dict[str, DictConfig], generator_file: Path, tmp_path: Path
) -> None:
    from mammo_anogan.score import build_loss

    lonely = tmp_path / "generator.pt"
    lonely.write_bytes(generator_file.read_bytes())
    cfg = _with(base_configs["score"], generator=str(lonely), projection__loss="disc_features")
    named = ["does not exist: set discriminator=<its discriminator.pt>, or use another projection.loss"]
    fixed = _with(cfg, discriminator=str(generator_file.with_name("discriminator.pt")))
    _fails_then_passes(build_loss, cfg, named, fixed)
    build_loss(_with(cfg, projection__loss="mse"))  # the other way out


def test_lpips_weights_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from torchvision.models import alexnet

    from mammo_anogan.anomaly.losses import build_lpips_network, build_projection_loss

    pytest.importorskip("lpips")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args: Any, **kwargs: Any) -> Any:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError) as caught:
        build_lpips_network("alex")
    message = str(caught.value)
    assert f"put the file in {tmp_path / 'hub' / 'checkpoints'}/" in message  # where torch.hub looks
    assert "set projection.lpips_weights=/path/to/alexnet-owt-7be5be79.pth" in message
    assert "or use projection.loss=disc_features" in message
    weights = tmp_path / "alexnet-owt-7be5be79.pth"
    features = {f"features.{k}": v for k, v in alexnet(weights=None).features.state_dict().items()}
    torch.save(features, weights)
    assert build_lpips_network("alex", str(weights)) is not None  # fix: projection.lpips_weights=PATH
    with pytest.raises(UserError, match="projection.lpips_weights: file not found"):
        build_lpips_network("alex", str(tmp_path / "none.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"classifier.1.weight": torch.zeros(1)}, wrong)
    with pytest.raises(UserError, match="must be torchvision's alexnet-owt-7be5be79.pth"):
        build_lpips_network("alex", str(wrong))
    assert build_projection_loss("mse") is not None  # fix: a loss that needs no download


# ----------------------------------------------------------------------------- evaluation API
def test_evaluation_inputs() -> None:
    from mammo_anogan.evaluation.fidelity import FidelityMetrics
    from mammo_anogan.evaluation.metrics import evaluate_scores

    labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, np.nan, 0.8])
    with pytest.raises(UserError, match="fix or drop those images first"):
        evaluate_scores(labels, scores, n_bootstrap=5)
    keep = np.isfinite(scores)
    evaluate_scores(labels[keep], scores[keep], n_bootstrap=5)
    finite = np.array([0.1, 0.4, 0.6, 0.8])
    with pytest.raises(UserError, match=re_escape("ci must be between 0 and 1 (e.g. 0.95)")):
        evaluate_scores(labels, finite, n_bootstrap=5, ci=95)
    evaluate_scores(labels, finite, n_bootstrap=5, ci=0.95)
    with pytest.raises(UserError, match="n_bootstrap must be at least 1"):
        evaluate_scores(labels, finite, n_bootstrap=0)
    with pytest.raises(ConfigError, match="choose from"):
        FidelityMetrics(metrics=("fidx",))
    fidelity = FidelityMetrics(metrics=("swd",), swd_min_resolution=8)
    real = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with pytest.raises(UserError, match="at least 4 real images"):
        fidelity.set_real(real[:3])
    fidelity.set_real(real)
    with pytest.raises(UserError, match="at least 2 generated images"):
        fidelity.compute(real[:1])
    assert "swd" in fidelity.compute(real[:2])
