"""Bilateral scores: a film's anomaly compared with the contralateral film of the same woman.

A radiologist reads a mammogram beside the other breast's: a finding is what one breast has and
the other has not, while dense tissue present on both sides is normal for that woman. With films
prepared by :mod:`mammo_anogan.prepare` both breasts are oriented alike (chest wall on the left)
and, with ``data.preprocess.crop_to_breast``, placed alike, so their anomaly maps can be compared
directly. Two kinds of bilateral score, for every film whose contralateral film (same patient,
same view, other laterality) was scored in the same run:

- ``bilateral_<method>``: ``score(film) - score(contralateral)`` for each stored single-film score
  (``score_<method>`` columns of ``scores.csv``);
- ``bilateral_map``: the maximum over the film's eroded breast of
  ``G_sigma * m(film) - G_sigma * m(contralateral)``, ``m`` the polarised difference map
  (``image - reconstruction``, :mod:`mammo_anogan.anomaly.map_scores`), ``sigma`` coarse because
  left and right breasts align only roughly.

Films without a scored contralateral film get NaN and are left out (their number is reported).
The bilateral score is picked on validation like ``score.method=auto`` (highest validation AUC),
its threshold is the validation Youden point, applied unchanged to test
(:func:`mammo_anogan.evaluation.metrics.evaluate_protocol`). Patient ids are the manifest's
salted hashes; nothing identifying is read or written.

    python -m mammo_anogan.evaluation.bilateral RUN_DIR --dataset DATASET_DIR \
        [--comparison malignant_vs_normal] [--sigma 3] [--edge-margin 6] [--polarity positive]

writes ``RUN_DIR/bilateral_<comparison>.json`` and prints one line per candidate.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from mammo_anogan.anomaly.map_scores import (
    MAP_POLARITIES,
    erode_mask,
    gaussian_smooth,
    masked_max,
    polarised,
)
from mammo_anogan.anomaly.outputs import EXTRA_SCORE_COLUMNS, SCORES_FILE, load_image_arrays, map_path
from mammo_anogan.evaluation.metrics import COMPARISONS, evaluate_protocol
from mammo_anogan.evaluation.table import write_metrics_json
from mammo_anogan.utils.errors import UserError, exit_on_user_error

MAP_CANDIDATE = "bilateral_map"


def contralateral_pairs(manifest: Sequence[Mapping[str, str]], image_ids: set[str]) -> dict[str, str]:
    """``{image_id: contralateral image_id}`` among ``image_ids``: same patient and view, other side.

    A film pairs only when its patient has exactly one film of the other laterality in that view
    among ``image_ids`` (no pairing is guessed when a side is missing or doubled).
    """
    by_key: dict[tuple[str, str, str], list[str]] = {}
    for row in manifest:
        if row["image_id"] in image_ids and row.get("laterality") in ("L", "R"):
            by_key.setdefault((row["patient_id"], row.get("view", ""), row["laterality"]), []).append(
                row["image_id"]
            )
    pairs: dict[str, str] = {}
    for (patient, view, side), films in by_key.items():
        other = by_key.get((patient, view, "R" if side == "L" else "L"), [])
        if len(films) == 1 and len(other) == 1:
            pairs[films[0]] = other[0]
    return pairs


def scalar_bilateral(frame: pd.DataFrame, pairs: Mapping[str, str]) -> dict[str, np.ndarray]:
    """``bilateral_<method>`` for every stored score column, aligned with ``frame`` rows (NaN: no pair)."""
    index = {image_id: i for i, image_id in enumerate(frame["image_id"])}
    partner = np.array([index.get(pairs.get(image_id, ""), -1) for image_id in frame["image_id"]])
    has = partner >= 0
    out: dict[str, np.ndarray] = {}
    for column in EXTRA_SCORE_COLUMNS:
        if column not in frame.columns:
            continue
        values = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)
        result = np.full(values.shape, math.nan)
        result[has] = values[has] - values[partner[has]]
        out["bilateral_" + column.removeprefix("score_")] = result
    return out


def map_bilateral(
    run_dir: Path,
    frame: pd.DataFrame,
    pairs: Mapping[str, str],
    sigma: float,
    edge_margin: int,
    polarity: str,
) -> np.ndarray:
    """``bilateral_map`` per row of ``frame`` (NaN without a pair); maps read from ``run_dir/maps``.

    All films are smoothed in one batch and every film minus its partner is one indexed subtraction.
    """
    result = np.full(len(frame), math.nan)
    index = {image_id: row for row, image_id in enumerate(frame["image_id"])}
    partner = np.array([index.get(pairs.get(image_id, ""), -1) for image_id in frame["image_id"]])
    has = np.flatnonzero(partner >= 0)
    if has.size == 0:
        return result
    arrays = [
        load_image_arrays(map_path(run_dir, split, image_id))
        for split, image_id in zip(frame["split"], frame["image_id"])
    ]
    signed = torch.from_numpy(np.stack([a["signed_map"] for a in arrays]).astype(np.float32))
    masks = torch.from_numpy(np.stack([a["mask"] for a in arrays]).astype(np.float32))
    smoothed = gaussian_smooth(polarised(signed, polarity), sigma)  # [B, C, H, W]
    difference = smoothed[has] - smoothed[partner[has]]
    result[has] = masked_max(difference, erode_mask(masks[has], edge_margin)).numpy()
    return result


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    keep = np.isfinite(scores)
    y = labels[keep]
    if y.size == 0 or y.min() == y.max():
        return math.nan
    return float(roc_auc_score(y, scores[keep]))


def evaluate_bilateral(
    run_dir: str | os.PathLike[str],
    dataset_dir: str | os.PathLike[str],
    comparison: str = "malignant_vs_normal",
    sigma: float = 3.0,
    edge_margin: int = 6,
    polarity: str = "positive",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every bilateral candidate's validation AUC, the pick, and the pick's val-threshold test metrics.

    Raises:
        UserError: missing files, an unknown comparison or polarity, or no validation film of
            either class with a contralateral film.
    """
    run_dir, dataset_dir = Path(run_dir), Path(dataset_dir)
    if comparison not in COMPARISONS:
        raise UserError(f"comparison {comparison!r} is not one of {', '.join(COMPARISONS)}")
    if polarity not in MAP_POLARITIES:
        raise UserError(f"polarity {polarity!r} is not one of {', '.join(MAP_POLARITIES)}")
    for path in (run_dir / SCORES_FILE, dataset_dir / "manifest.csv"):
        if not path.is_file():
            raise UserError(f"{path} does not exist: pass a scored run dir and its prepared dataset")
    frame = pd.read_csv(run_dir / SCORES_FILE, dtype={"image_id": str, "note": str}, keep_default_na=False)
    frame = frame.drop_duplicates(subset=["split", "image_id"], keep="last").reset_index(drop=True)
    with (dataset_dir / "manifest.csv").open(newline="", encoding="utf-8") as handle:
        manifest = list(csv.DictReader(handle))
    if not set(frame["image_id"]) <= {row["image_id"] for row in manifest}:
        raise UserError(f"{run_dir} was not scored on {dataset_dir} (image ids differ): pass its dataset")
    pairs = contralateral_pairs(manifest, set(frame["image_id"]))
    candidates = scalar_bilateral(frame, pairs)
    candidates[MAP_CANDIDATE] = map_bilateral(run_dir, frame, pairs, sigma, edge_margin, polarity)
    # a score the run did not compute (all NaN, e.g. disc_features of derived seed subsets) is no candidate
    candidates = {name: values for name, values in candidates.items() if np.isfinite(values).any()}
    classes = COMPARISONS[comparison]
    labelled = frame["label"].isin(list(classes)).to_numpy()
    y = frame["label"].map(classes).fillna(-1).astype(int).to_numpy()
    val = labelled & (frame["split"] == "val").to_numpy()
    test = labelled & (frame["split"] == "test").to_numpy()
    val_aucs = {name: _auc(y[val], values[val]) for name, values in candidates.items()}
    finite = {name: auc for name, auc in val_aucs.items() if math.isfinite(auc)}
    if not finite:
        raise UserError(
            f"no validation films of both classes of {comparison} with a contralateral film in {run_dir}"
        )
    picked = max(finite, key=lambda name: finite[name])
    values = candidates[picked]
    val_rows = val & np.isfinite(values)
    test_rows = test & np.isfinite(values)
    metrics = evaluate_protocol(
        y[val_rows], values[val_rows], y[test_rows], values[test_rows], n_bootstrap=n_bootstrap, seed=seed
    )
    return {
        "comparison": comparison,
        "picked": picked,
        "validation_aucs": val_aucs,
        "test_aucs_all_candidates": {name: _auc(y[test], v[test]) for name, v in candidates.items()},
        "n_pairs": len(pairs),
        "n_without_contralateral": int(sum(image_id not in pairs for image_id in frame["image_id"])),
        "settings": {"sigma": sigma, "edge_margin": edge_margin, "polarity": polarity},
        **metrics,
    }


def format_report(result: Mapping[str, Any]) -> str:
    """One line per candidate (validation AUC, test AUC), then the picked score's test metrics."""
    lines = [
        f"bilateral scores, {result['comparison']} ({result['n_pairs']} films with a contralateral film)"
    ]
    for name, auc in sorted(result["validation_aucs"].items(), key=lambda item: -np.nan_to_num(item[1])):
        mark = "  <- picked on validation" if name == result["picked"] else ""
        test_auc = result["test_aucs_all_candidates"].get(name, math.nan)
        lines.append(f"  {name:28s} val AUC {100 * auc:5.1f}   test AUC {100 * test_auc:5.1f}{mark}")
    lines.append(
        f"picked {result['picked']}: test AUC {100 * result['auc']:.1f} "
        f"[{100 * result['auc_ci_low']:.1f}, {100 * result['auc_ci_high']:.1f}], "
        f"sensitivity {100 * result['sensitivity']:.1f}, specificity {100 * result['specificity']:.1f} "
        f"at the validation Youden threshold {result['threshold']:.4g} "
        f"({result['n_abnormal']} abnormal / {result['n_normal']} normal test films)"
    )
    return "\n".join(lines)


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a scored run dir (scores.csv + maps/)")
    parser.add_argument("--dataset", type=Path, required=True, help="its prepared dataset (manifest.csv)")
    parser.add_argument("--comparison", default="malignant_vs_normal", choices=sorted(COMPARISONS))
    parser.add_argument(
        "--sigma", type=float, default=3.0, help="px: smoothing of the maps before subtracting"
    )
    parser.add_argument("--edge-margin", type=int, default=6, help="px eroded from the breast mask")
    parser.add_argument("--polarity", default="positive", choices=MAP_POLARITIES)
    parser.add_argument("--n-bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)
    result = evaluate_bilateral(
        args.run_dir,
        args.dataset,
        args.comparison,
        args.sigma,
        args.edge_margin,
        args.polarity,
        args.n_bootstrap,
    )
    path = args.run_dir / f"bilateral_{args.comparison}.json"
    write_metrics_json(path, result)
    print(format_report(result))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
