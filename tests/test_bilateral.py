"""Bilateral scores: contralateral pairing, score and map differences, the validation pick."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from mammo_anogan.anomaly.outputs import SCORE_COLUMNS, SCORES_FILE, ImageResult, map_path, save_image_arrays
from mammo_anogan.evaluation.bilateral import (
    contralateral_pairs,
    evaluate_bilateral,
    format_report,
    main,
)
from mammo_anogan.utils.errors import UserError

SIZE = 32


def _manifest_row(image_id: str, patient: str, side: str, label: str) -> dict[str, str]:
    return {"image_id": image_id, "patient_id": patient, "laterality": side, "view": "MLO", "label": label}


def test_pairs_need_exactly_one_film_on_the_other_side() -> None:
    manifest = [
        _manifest_row("a", "p1", "L", "normal"),
        _manifest_row("b", "p1", "R", "malignant"),
        _manifest_row("c", "p2", "L", "normal"),  # no right film
        _manifest_row("d", "p3", "L", "normal"),
        _manifest_row("e", "p3", "R", "normal"),
        _manifest_row("f", "p3", "R", "normal"),  # two right films: ambiguous
        _manifest_row("g", "p4", "L", "normal"),
        _manifest_row("h", "p4", "R", "normal"),
    ]
    pairs = contralateral_pairs(manifest, {"a", "b", "c", "d", "e", "f", "g"})  # h not scored
    assert pairs == {"a": "b", "b": "a"}


def _write_run(tmp_path: Path, films: list[tuple[str, str, str, str, str, float]]) -> tuple[Path, Path]:
    """films: (image_id, patient, side, split, label, blob height); the map holds one blob."""
    run_dir, dataset = tmp_path / "run", tmp_path / "data"
    dataset.mkdir(parents=True)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    rows = []
    with (dataset / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["image_id", "patient_id", "laterality", "view", "label"])
        writer.writeheader()
        for image_id, patient, side, _, label, _ in films:
            writer.writerow(_manifest_row(image_id, patient, side, label))
    for image_id, _, _, split, label, height in films:
        blob = height * np.exp(-((xx - 12) ** 2 + (yy - 16) ** 2) / 8.0)
        background = 0.1 * np.ones((SIZE, SIZE))  # the same dense tissue on both sides
        signed = (blob + background)[None].astype(np.float32)
        mask = np.zeros((1, SIZE, SIZE), np.float32)
        mask[:, 2:30, 0:26] = 1
        result = ImageResult(
            image_id,
            split,
            label,
            float(signed.mean()),
            np.zeros(1),
            0,
            1,
            0.0,
            "",
            image=signed,
            mask=mask,
            projections=np.zeros((1, 1, SIZE, SIZE)),
            mean_projection=np.zeros_like(signed),
            best_projection=np.zeros_like(signed),
            abs_map=np.abs(signed),
            signed_map=signed,
            extra_scores={"score_mean_map": float(signed.mean()), "score_smooth_max": float(signed.max())},
        )
        save_image_arrays(map_path(run_dir, split, image_id), result)
        rows.append(result.row())
    with (run_dir / SCORES_FILE).open("w", newline="") as handle:
        writer = csv.DictWriter(handle, SCORE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return run_dir, dataset


def _study(tmp_path: Path) -> tuple[Path, Path]:
    films = []
    for split in ("val", "test"):
        for k in range(4):  # malignant film (blob 1.0 + k) beside a normal contralateral film (blob 0.2 k)
            films.append((f"{split}m{k}", f"{split}P{k}", "L", split, "malignant", 1.0 + k))
            films.append((f"{split}c{k}", f"{split}P{k}", "R", split, "normal", 0.2 * k))
        for k in range(4):  # normal women: dense on both sides (large but equal blobs)
            films.append((f"{split}n{k}L", f"{split}N{k}", "L", split, "normal", 2.0 + k))
            films.append((f"{split}n{k}R", f"{split}N{k}", "R", split, "normal", 2.0 + k))
    return _write_run(tmp_path, films)


def test_bilateral_scores_separate_asymmetry_from_symmetric_density(tmp_path: Path) -> None:
    run_dir, dataset = _study(tmp_path)
    result = evaluate_bilateral(
        run_dir, dataset, "malignant_vs_normal", sigma=1.0, edge_margin=0, n_bootstrap=50
    )
    assert result["n_pairs"] == 32 and result["n_without_contralateral"] == 0
    # single-film smooth_max ranks the dense normal women above the malignant films: AUC well below 1;
    # the bilateral difference removes what both sides share
    from sklearn.metrics import roc_auc_score

    rows = list(csv.DictReader((run_dir / SCORES_FILE).open()))
    val = [row for row in rows if row["split"] == "val"]
    single = roc_auc_score(
        [row["label"] == "malignant" for row in val], [float(row["score_smooth_max"]) for row in val]
    )
    assert single < 0.8
    assert result["validation_aucs"]["bilateral_smooth_max"] == pytest.approx(1.0)
    assert result["validation_aucs"]["bilateral_map"] == pytest.approx(1.0)
    assert result["picked"] in ("bilateral_smooth_max", "bilateral_map", "bilateral_mean_map")
    assert result["auc"] == pytest.approx(1.0)
    assert result["threshold_source"] == "validation_youden"
    assert result["n_abnormal"] == 4 and result["n_normal"] == 12
    # bilateral_map = max over the breast of the smoothed map difference: 1.0 + k - 0.2 k at the blob
    assert "picked" in format_report(result)
    assert math.isnan(result["test_aucs_all_candidates"].get("bilateral_best_map", math.nan))


def test_bilateral_map_value_is_the_smoothed_difference_maximum(tmp_path: Path) -> None:
    import pandas as pd

    from mammo_anogan.evaluation.bilateral import map_bilateral

    films = [("a", "p", "L", "val", "malignant", 1.5), ("b", "p", "R", "val", "normal", 0.5)]
    run_dir, _ = _write_run(tmp_path, films)
    frame = pd.read_csv(run_dir / SCORES_FILE, dtype={"image_id": str})
    values = map_bilateral(
        run_dir, frame, {"a": "b", "b": "a"}, sigma=0.0, edge_margin=0, polarity="positive"
    )
    assert values == pytest.approx([1.0, 0.0], abs=1e-5)  # b's maximum difference is 0 far from the blob


def test_cli_writes_json_and_refuses_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir, dataset = _study(tmp_path)
    main(
        [str(run_dir), "--dataset", str(dataset), "--sigma", "1", "--edge-margin", "0", "--n-bootstrap", "20"]
    )
    assert (run_dir / "bilateral_malignant_vs_normal.json").is_file()
    assert "picked on validation" in capsys.readouterr().out
    with pytest.raises(UserError, match="does not exist"):
        evaluate_bilateral(tmp_path / "nowhere", dataset)
    with pytest.raises(UserError, match="image ids differ"):
        other = tmp_path / "other"
        other.mkdir()
        (other / "manifest.csv").write_text("image_id,patient_id,laterality,view,label\nz,p,L,MLO,normal\n")
        evaluate_bilateral(run_dir, other)
    with pytest.raises(SystemExit):
        main([str(run_dir), "--dataset", str(tmp_path / "missing")])
