"""Patient-level splits: no leakage, normals-only train, fractions, determinism, fixed test set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from data_factory import make_prepared_dataset

from mammo_anogan.data.splits import ensure_splits
from mammo_anogan.utils.errors import UserError


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_prepared_dataset(tmp_path_factory.mktemp("template"), 20, 10, resolution=16)


@pytest.fixture()
def dataset(template: Path, tmp_path: Path) -> Path:
    """A private copy per test (tests rewrite splits and the manifest); cheaper than fsync'ed writes."""
    return Path(shutil.copytree(template, tmp_path / "ds"))


def test_no_patient_crosses_splits_and_train_is_normal_only(dataset: Path) -> None:
    splits = ensure_splits(dataset)
    assert list(splits.columns) == ["image_id", "patient_id", "label", "split"]
    assert splits.groupby("patient_id")["split"].nunique().max() == 1
    train = splits[splits["split"] == "train"]
    assert len(train) > 0
    assert set(train["label"]) == {"normal"}
    # Abnormal patients' normal breasts follow them out of train.
    abnormal_patients = set(splits.loc[splits["label"] != "normal", "patient_id"])
    assert not abnormal_patients & set(train["patient_id"])
    for name in ("val", "test"):
        labels = set(splits.loc[splits["split"] == name, "label"])
        assert "normal" in labels and labels & {"benign", "malignant"}


def test_fractions_roughly_honoured(dataset: Path) -> None:
    splits = ensure_splits(dataset, val_fraction=0.2, test_fraction=0.3)
    patients = splits.groupby("patient_id").agg(split=("split", "first"), label=("label", lambda s: set(s)))
    normal = patients[patients["label"].apply(lambda s: s == {"normal"})]
    abnormal = patients[patients["label"].apply(lambda s: s != {"normal"})]
    counts = normal["split"].value_counts()
    assert counts["val"] == 4 and counts["test"] == 6 and counts["train"] == 10  # 20 normal patients
    abnormal_counts = abnormal["split"].value_counts()
    assert abnormal_counts["val"] == 4 and abnormal_counts["test"] == 6  # 10 abnormal, ratio 2:3


def test_deterministic_and_seed_dependent(dataset: Path, tmp_path: Path) -> None:
    first = ensure_splits(dataset, seed=3)
    other = make_prepared_dataset(tmp_path / "copy", 20, 10, resolution=16)
    second = ensure_splits(other, seed=3)
    pd.testing.assert_frame_equal(first, second)
    different = ensure_splits(other, seed=4)
    assert not different["split"].equals(first["split"])


def test_files_written_and_reused(dataset: Path) -> None:
    splits = ensure_splits(dataset)
    stored = pd.read_csv(dataset / "splits.csv", dtype=str)
    assert list(stored.columns) == ["image_id", "split"]
    assert stored["split"].tolist() == splits["split"].tolist()
    record = json.loads((dataset / "splits.json").read_text())
    assert record["parameters"]["val_fraction"] == 0.2
    assert sum(v["images"] for v in record["summary"].values()) == len(splits)
    mtime = (dataset / "splits.csv").stat().st_mtime_ns
    ensure_splits(dataset)
    assert (dataset / "splits.csv").stat().st_mtime_ns == mtime  # same parameters: not rewritten


def test_recompute_on_parameter_change(dataset: Path) -> None:
    ensure_splits(dataset, val_fraction=0.2)
    changed = ensure_splits(dataset, val_fraction=0.4)
    assert json.loads((dataset / "splits.json").read_text())["parameters"]["val_fraction"] == 0.4
    stored = pd.read_csv(dataset / "splits.csv", dtype=str)
    assert stored["split"].tolist() == changed["split"].tolist()
    normal_val_patients = changed[(changed["split"] == "val")].groupby("patient_id")["label"].apply(set)
    assert sum(labels == {"normal"} for labels in normal_val_patients) == 8  # 0.4 * 20


def test_fixed_test_ids_honoured(dataset: Path, tmp_path: Path) -> None:
    manifest = pd.read_csv(dataset / "manifest.csv", dtype=str)
    chosen = manifest["image_id"].iloc[[0, 5, len(manifest) - 1]].tolist()
    ids_file = tmp_path / "test_ids.txt"
    ids_file.write_text("\n".join(chosen) + "\n")
    splits = ensure_splits(dataset, test_ids=ids_file)
    chosen_patients = set(manifest.loc[manifest["image_id"].isin(chosen), "patient_id"])
    assert set(splits.loc[splits["split"] == "test", "patient_id"]) == chosen_patients
    assert ensure_splits(dataset, test_ids=list(reversed(chosen)))["split"].equals(splits["split"])
    with pytest.raises(UserError, match="not in the manifest"):
        ensure_splits(dataset, test_ids=["nope"])


def test_unknown_labels_go_to_test(dataset: Path) -> None:
    manifest = pd.read_csv(dataset / "manifest.csv", dtype=str, keep_default_na=False)
    manifest.loc[:3, "label"] = "unknown"
    manifest.to_csv(dataset / "manifest.csv", index=False)
    splits = ensure_splits(dataset)
    assert set(splits.loc[splits["label"] == "unknown", "split"]) == {"test"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"test_fraction": -0.1}, "test_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "must be < 1"),
    ],
)
def test_bad_fractions(dataset: Path, kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(UserError, match=message):
        ensure_splits(dataset, **kwargs)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="mammo_anogan.prepare"):
        ensure_splits(tmp_path)
