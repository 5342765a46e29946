"""Issue 18: the patient split is a function of the films and ``data.split.*``, never of the salt.

The synthetic set is prepared twice with different privacy salts; every image, matched by its pixel
content, must land in the same split, the dataset order and the split fingerprint must agree, while
the written ids (salted) differ. The legacy scheme, run on the same two manifests, does not agree:
that is the bug this fixes.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
from dicom_fixtures import compose_prepare
from omegaconf import DictConfig

from mammo_anogan.data.splits import (
    LEGACY_SCHEME,
    SPLIT_SCHEME,
    compute_splits,
    ensure_splits,
    image_content_hashes,
    read_manifest,
    read_split_record,
)
from mammo_anogan.prepare import ensure_dataset_split, prepare_dataset
from mammo_anogan.utils.errors import UserError

SALTS = (1, 2)


def _prepare_cfg(raw: Path, out: Path, salt: int, *extra: str) -> DictConfig:
    return compose_prepare(
        [
            "data=synthetic",
            f"data.source={raw}",
            "data.resolution=32",
            "data.synthetic.num_normal_patients=12",
            "data.synthetic.num_abnormal_patients=6",
            f"prepare.out_dir={out}",
            "prepare.workers=0",
            f"prepare.salt_seed={salt}",
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def two_salts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("salts")
    paths = {"raw": root / "raw"}
    for salt in SALTS:
        paths[f"ds{salt}"] = root / f"ds{salt}"
        prepare_dataset(_prepare_cfg(paths["raw"], paths[f"ds{salt}"], salt))
    return paths


def _by_content(dataset: Path) -> pd.DataFrame:
    """Manifest rows (in file order) with their split and the pixel hash of their image."""
    manifest = read_manifest(dataset)
    splits = pd.read_csv(dataset / "splits.csv", dtype=str)
    frame = manifest.merge(splits, on="image_id", how="left")
    frame["content"] = image_content_hashes(dataset, frame["image_path"])
    return frame


def _copy(dataset: Path, tmp_path: Path, name: str) -> Path:
    return Path(shutil.copytree(dataset, tmp_path / name))


def test_two_salts_put_every_image_in_the_same_split(two_salts: dict[str, Path]) -> None:
    first, second = (_by_content(two_salts[f"ds{salt}"]) for salt in SALTS)
    assert len(first) == len(second) == 36  # 18 patients x CC of both breasts
    assert first["content"].is_unique
    assert not set(first["image_id"]) & set(second["image_id"])  # the salts differ: so do all ids
    assert not set(first["patient_id"]) & set(second["patient_id"])
    # Same image -> same split, and the manifest (= dataset) order is the same content order.
    assert first["content"].tolist() == second["content"].tolist()
    assert first["split"].tolist() == second["split"].tolist()
    assert set(first["split"]) == {"train", "val", "test"}
    assert set(first.loc[first["split"] == "train", "label"]) == {"normal"}
    records = [read_split_record(two_salts[f"ds{salt}"]) for salt in SALTS]
    assert all(r is not None and r["scheme"] == SPLIT_SCHEME for r in records)
    assert records[0]["fingerprint"] == records[1]["fingerprint"]  # type: ignore[index]
    counts = records[0]["fingerprint"]["counts"]  # type: ignore[index]
    assert sum(n for per_label in counts.values() for n in per_label.values()) == 36
    assert counts["train"] == {"normal": int((first["split"] == "train").sum())}
    # The legacy scheme (a permutation of the salted ids) disagrees on these very manifests.
    legacy = [compute_splits(frame, 0.2, 0.2, 0) for frame in (first, second)]
    assert legacy[0]["split"].tolist() != legacy[1]["split"].tolist()


def test_train_time_resplit_reads_the_raw_folder_and_stays_salt_independent(
    two_salts: dict[str, Path], tmp_path: Path
) -> None:
    datasets = [_copy(two_salts[f"ds{salt}"], tmp_path, f"ds{salt}") for salt in SALTS]
    cfg = _prepare_cfg(two_salts["raw"], datasets[0], 1, "data.split.seed=7", "data.split.val_fraction=0.3")
    records = [ensure_dataset_split(cfg.data, dataset) for dataset in datasets]
    assert all(r["scheme"] == SPLIT_SCHEME and r["parameters"]["seed"] == 7 for r in records)
    assert records[0]["fingerprint"] == records[1]["fingerprint"]
    first, second = (_by_content(dataset) for dataset in datasets)
    assert first["split"].tolist() == second["split"].tolist()
    before = _by_content(two_salts["ds1"])
    assert first["split"].tolist() != before["split"].tolist()  # seed 7 is another split


def test_resplit_without_the_raw_folder_names_both_ways_out(
    two_salts: dict[str, Path], tmp_path: Path
) -> None:
    dataset = _copy(two_salts["ds1"], tmp_path, "ds")
    cfg = _prepare_cfg(tmp_path / "gone", dataset, 1, "data.split.seed=7")
    with pytest.raises(UserError) as caught:
        ensure_dataset_split(cfg.data, dataset)
    message = str(caught.value)
    assert "data.source=" in message and "data.split.seed=0" in message
    # Way out 1: keep the recorded split.
    kept = _prepare_cfg(tmp_path / "gone", dataset, 1, "data.split.seed=0")
    assert ensure_dataset_split(kept.data, dataset)["parameters"]["seed"] == 0
    # Way out 2: give the raw folder back.
    restored = _prepare_cfg(two_salts["raw"], dataset, 1, "data.split.seed=7")
    assert ensure_dataset_split(restored.data, dataset)["parameters"]["seed"] == 7


def test_a_legacy_split_is_kept_with_a_one_line_note(
    two_salts: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dataset = _copy(two_salts["ds1"], tmp_path, "old")
    manifest = read_manifest(dataset)
    legacy = compute_splits(manifest, 0.2, 0.2, 0)  # what the earlier code wrote
    legacy[["image_id", "split"]].to_csv(dataset / "splits.csv", index=False)
    record = read_split_record(dataset)
    assert record is not None
    old = {"parameters": record["parameters"], "summary": record["summary"]}  # no scheme, no fingerprint
    (dataset / "splits.json").write_text(json.dumps(old))
    with caplog.at_level(logging.INFO, logger="mammo_anogan.data.splits"):
        kept = ensure_splits(dataset)
        ensure_splits(dataset)
    assert kept["split"].tolist() == legacy["split"].tolist()
    notes = [r.getMessage() for r in caplog.records if "earlier salt-dependent scheme" in r.getMessage()]
    assert len(notes) == 1 and "prepare.overwrite=true" in notes[0] and "\n" not in notes[0]
    updated = read_split_record(dataset)
    assert updated is not None and updated["scheme"] == LEGACY_SCHEME and "digest" in updated["fingerprint"]
    # Re-preparing with overwrite switches to the salt-independent scheme: the same split as salt 2.
    prepare_dataset(_prepare_cfg(two_salts["raw"], dataset, 1, "prepare.overwrite=true"))
    assert _by_content(dataset)["split"].tolist() == _by_content(two_salts["ds2"])["split"].tolist()


def test_prepare_prints_the_fingerprint_and_a_resume_keeps_it(
    two_salts: dict[str, Path], tmp_path: Path
) -> None:
    dataset = _copy(two_salts["ds2"], tmp_path, "ds")
    before = (dataset / "splits.csv").read_bytes(), (dataset / "manifest.csv").read_bytes()
    result = prepare_dataset(_prepare_cfg(two_salts["raw"], dataset, 2))
    assert (result.processed, result.skipped) == (0, 72)
    digest = read_split_record(dataset)["fingerprint"]["digest"]  # type: ignore[index]
    assert f"split fingerprint {digest}" in result.summary
    assert ((dataset / "splits.csv").read_bytes(), (dataset / "manifest.csv").read_bytes()) == before


@pytest.mark.slow
def test_a_tiny_demo_on_two_salts_gives_identical_figures(two_salts: dict[str, Path], tmp_path: Path) -> None:
    """The acceptance of `make demo` run twice, in small: train + score on each salt, same numbers."""
    import torch
    from hydra import compose, initialize_config_dir

    from mammo_anogan.score import run_score
    from mammo_anogan.train import train
    from mammo_anogan.utils.config import CONFIG_DIR

    def composed(config_name: str, overrides: list[str]) -> DictConfig:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=["+experiment=tiny", "logger=none", *overrides])

    results = []
    for salt in SALTS:
        dataset = two_salts[f"ds{salt}"]
        run = tmp_path / f"train{salt}"
        train(
            composed(
                "train",
                [f"data.dataset_dir={dataset}", f"+run_dir={run}", "callbacks=none", "model.total_kimg=0.012",
                 "data.loader.batch_size=4", "trainer.enable_progress_bar=false"],
            )
        )  # fmt: skip
        metrics = run_score(
            composed(
                "score",
                [f"data.dataset_dir={dataset}", f"generator={run / 'generator.pt'}", "projection.steps=4",
                 "projection.num_seeds=2", "projection.w_std_samples=200", "score.figures=false",
                 "score.n_bootstrap=50", "trainer.enable_progress_bar=false"],
            ),
            tmp_path / f"score{salt}",
        )  # fmt: skip
        frame = _by_content(dataset)[["image_id", "content"]]
        scores = pd.read_csv(tmp_path / f"score{salt}" / "scores.csv", dtype={"image_id": str})
        by_content = scores.merge(frame, on="image_id")[["content", "split", "score"]]
        results.append((torch.load(run / "generator.pt", weights_only=True), metrics, by_content))
    (g1, m1, s1), (g2, m2, s2) = results
    for key, value in g1["state_dict"].items():
        assert torch.equal(value, g2["state_dict"][key]), key
    assert (
        s1.sort_values("content")
        .reset_index(drop=True)
        .equals(s2.sort_values("content").reset_index(drop=True))
    )
    assert len(s1) > 10
    figures = ("auc", "accuracy", "sensitivity", "specificity", "threshold", "auc_ci_low", "auc_ci_high")
    assert {k: m1[k] for k in figures} == {k: m2[k] for k in figures}
    assert m1["split_fingerprint"] == m2["split_fingerprint"] and m1["generator_hash"] == m2["generator_hash"]
