"""End to end: ``score`` on a small prepared dataset with a tiny random generator."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from data_factory import make_scoring_workspace
from hydra import compose, initialize_config_dir

import mammo_anogan.utils.config  # noqa: F401
from mammo_anogan.utils.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
METRIC_KEYS = ("auc", "accuracy", "sensitivity", "specificity", "ppv", "npv")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_scoring_workspace(tmp_path_factory.mktemp("score"))


def _overrides(workspace: dict[str, Path], *extra: str) -> list[str]:
    overrides = [
        f"generator={workspace['generator']}",
        f"data.dataset_dir={workspace['dataset']}",
        "data.resolution=32",
        "projection=fast",
        "projection.steps=3",
        "projection.w_std_samples=200",
        "score.n_bootstrap=20",
        "score.num_cases=1",
        "++trainer.enable_progress_bar=false",
        *extra,
    ]
    return overrides


def _compose(workspace: dict[str, Path], *extra: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("score", overrides=_overrides(workspace, *extra))
    if "logger" in cfg:
        cfg.logger = None  # no W&B run in unit tests
    return cfg


def _rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "scores.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _mask_path(dataset: Path, image_id: str) -> Path:
    return dataset / "masks" / f"{image_id}.png"


def test_score_writes_metrics_scores_maps_and_figures_and_resumes(workspace, tmp_path) -> None:
    from PIL import Image

    from mammo_anogan.score import run_score

    # one test image with an empty breast mask: reported and excluded, never silently dropped
    splits = (
        list(csv.DictReader((workspace["dataset"] / "splits.csv").open()))
        if (workspace["dataset"] / "splits.csv").exists()
        else None
    )
    cfg = _compose(workspace)
    from mammo_anogan.data.datamodule import MammoDataModule

    datamodule = MammoDataModule.from_config(cfg.data)
    datamodule.setup()
    val_ids, test_ids = datamodule.dataset("val").image_ids, datamodule.dataset("test").image_ids
    assert splits is None or splits  # splits are written by setup
    empty_id = test_ids[0]
    mask_file = _mask_path(workspace["dataset"], empty_id)
    original_mask = mask_file.read_bytes()
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(mask_file)
    try:
        run_dir = tmp_path / "run"
        metrics = run_score(cfg, run_dir)
    finally:
        mask_file.write_bytes(original_mask)

    saved = json.loads((run_dir / "metrics.json").read_text())
    for key in (*METRIC_KEYS, "threshold"):
        assert isinstance(saved[key], float), key
        if key != "threshold":
            assert f"{key}_ci_low" in saved and f"{key}_ci_high" in saved
    assert saved["num_seeds"] == 2 and saved["loss"] == "mse" and saved["steps"] == 3
    assert saved["n_images"] == len(val_ids) + len(test_ids)
    assert saved["excluded"] == 1 and "empty breast mask" in next(iter(saved["excluded_reasons"]))
    assert saved["threshold_source"] == "validation_youden"
    split_record = json.loads((workspace["dataset"] / "splits.json").read_text())
    assert saved["split_fingerprint"] == split_record["fingerprint"]["digest"]  # printed and recorded
    assert saved["optimistic_in_sample"]["optimistic"] is True
    assert 0.0 <= saved["pixel_auroc"] <= 1.0 and 0.0 <= saved["hit_rate"] <= 1.0
    assert metrics["auc"] == pytest.approx(saved["auc"])

    rows = _rows(run_dir)
    assert sorted(r["image_id"] for r in rows) == sorted(val_ids + test_ids)
    empty_row = next(r for r in rows if r["image_id"] == empty_id)
    assert empty_row["score"] == "nan" and "empty breast mask" in empty_row["note"]
    assert all(len(r["seed_losses"].split(";")) == 2 for r in rows)
    arrays = np.load(run_dir / "maps" / "test" / f"{test_ids[1]}.npz")
    assert arrays["abs_map"].shape == (1, 32, 32) and arrays["projections"].shape == (2, 1, 32, 32)
    assert float(arrays["abs_map"].min()) >= 0 and float(arrays["abs_map"].max()) <= 2
    assert {"roc.png", "histogram.png", "cases.png", "threshold.json"} <= {p.name for p in run_dir.iterdir()}
    threshold = json.loads((run_dir / "threshold.json").read_text())
    assert threshold["threshold"] == pytest.approx(saved["threshold"]) and threshold["generator_hash"]

    # resume: a killed run left one image without its .npz; only that image is scored again
    (run_dir / "maps" / "test" / f"{test_ids[2]}.npz").unlink()
    before = {r["image_id"]: r["score"] for r in rows}
    run_score(cfg, run_dir)
    again = _rows(run_dir)
    assert len(again) == len(rows) + 1 and again[-1]["image_id"] == test_ids[2]
    assert float(again[-1]["score"]) == pytest.approx(float(before[test_ids[2]]), rel=1e-5)  # deterministic

    # a later run reuses the fitted threshold instead of refitting it
    reuse = run_score(
        _compose(workspace, f"score.threshold_from={run_dir}", "score.figures=false"), tmp_path / "b"
    )
    assert reuse["threshold"] == pytest.approx(saved["threshold"])
    assert reuse["threshold_source"] == "threshold_from"


def test_generator_that_does_not_match_the_dataset_is_refused(workspace, tmp_path) -> None:
    from mammo_anogan.score import run_score

    with pytest.raises(UserError, match="32px"):
        run_score(_compose(workspace, "data.resolution=64"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


# A Hydra multirun subprocess (~15-20 s): kept in the default tier, it is the Table-1-over-N contract.
def test_multirun_over_seed_counts_writes_table(workspace, tmp_path) -> None:
    sweep = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "1"}
    extra = ["logger=none"] if (CONFIG_DIR / "logger" / "none.yaml").is_file() else []
    command = [
        sys.executable,
        "-m",
        "mammo_anogan.score",
        "-m",
        "projection.num_seeds=1,2",
        *_overrides(workspace, "score.figures=false", "score.splits=[test]", *extra),
        f"hydra.sweep.dir={sweep}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((sweep / "table.csv").open()))
    assert [row["num_seeds"] for row in rows] == ["1", "2"]
    assert (sweep / "table.md").read_text().count("| 1 |") >= 1


def test_single_split_run_localises_on_that_split(workspace, tmp_path) -> None:
    """``score.splits=[val]`` reads the maps it wrote under val/ (localisation once read test/ only)."""
    from mammo_anogan.score import run_score

    run_dir = tmp_path / "val_only"
    metrics = run_score(_compose(workspace, "score.splits=[val]", "score.figures=false"), run_dir)
    rows = _rows(run_dir)
    assert rows and {row["split"] for row in rows} == {"val"}
    assert 0.0 <= metrics["pixel_auroc"] <= 1.0
    assert 0.0 <= metrics["hit_rate"] <= 1.0


def test_resumed_run_with_another_method_is_evaluated_on_that_methods_scores(workspace, tmp_path) -> None:
    """Re-evaluating saved projections with another ``score.method`` must not reuse the old score."""
    from sklearn.metrics import roc_auc_score

    from mammo_anogan.score import run_score

    run_dir = tmp_path / "methods"
    first = run_score(_compose(workspace, "score.figures=false"), run_dir)
    scored = len(_rows(run_dir))
    rows = [row for row in _rows(run_dir) if row["split"] == "test"]
    y = [int(row["label"] != "normal") for row in rows]
    aucs = {m: roc_auc_score(y, [float(row[f"score_{m}"]) for row in rows]) for m in ("mean_map", "topk")}
    assert aucs["mean_map"] != pytest.approx(aucs["topk"])  # the fixture tells the methods apart
    for method, metrics in (
        ("mean_map", first),
        ("best_map", run_score(_compose(workspace, "score.figures=false", "score.method=best_map"), run_dir)),
        ("topk", run_score(_compose(workspace, "score.figures=false", "score.method=topk"), run_dir)),
    ):
        expected = roc_auc_score(y, [float(row[f"score_{method}"]) for row in rows])
        assert metrics["score_method"] == method
        assert metrics["auc"] == pytest.approx(expected)
    assert len(_rows(run_dir)) == scored  # nothing was projected again


def test_a_run_scored_with_auto_is_re_evaluated_with_an_explicit_method(workspace, tmp_path) -> None:
    """auto picks among the stored columns: its run dir resumes with any map-based method (and back).

    Runs written before auto counted as map-based recorded ``score.method=auto``; they resume too.
    """
    import json

    from mammo_anogan.score import run_score

    run_dir = tmp_path / "auto"
    auto = run_score(_compose(workspace, "score.figures=false", "score.method=auto"), run_dir)
    scored = len(_rows(run_dir))
    explicit = run_score(_compose(workspace, "score.figures=false", "score.method=topk"), run_dir)
    assert explicit["score_method"] == "topk" and len(_rows(run_dir)) == scored
    sidecar = run_dir / "fingerprint.json"
    record = json.loads(sidecar.read_text())
    record["values"]["score.method"] = "auto"  # as an older version wrote it
    sidecar.write_text(json.dumps(record))
    again = run_score(_compose(workspace, "score.figures=false", "score.method=auto"), run_dir)
    assert again["auc"] == pytest.approx(auto["auc"]) and len(_rows(run_dir)) == scored
