"""What a scoring run writes, and how a killed run resumes.

Layout of the run directory::

    scores.csv                 one row per image (AppendOnlyCsv: a kill never leaves a partial row)
    maps/<split>/<id>.npz      compressed arrays of one image (written atomically *before* its row)
    threshold.json             the fitted threshold, with the generator's hash (reusable later)
    metrics.json, *.png        evaluation (see mammo_anogan.anomaly.evaluate_run)

An image counts as done when its row is in ``scores.csv`` *and* its ``.npz`` exists; a resumed run
skips exactly those. Only salted image ids are written, never a patient identifier.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pytorch_lightning.callbacks import BasePredictionWriter

from mammo_anogan.utils.errors import UserError
from mammo_anogan.utils.io import AppendOnlyCsv, atomic_write_bytes, atomic_write_text, csv_header

SCORES_FILE = "scores.csv"
THRESHOLD_FILE = "threshold.json"
MAPS_DIR = "maps"
EXTRA_SCORE_COLUMNS = (
    "score_mean_map",
    "score_best_map",
    "score_topk",
    "score_smooth_max",
    "score_smooth_topk",
    "score_component",
    "score_disc_features",
)
SCORE_COLUMNS = (
    "image_id",
    "split",
    "label",
    "score",
    *EXTRA_SCORE_COLUMNS,
    "seed_losses",
    "best_seed",
    "steps",
    "seconds",
    "note",
)


@dataclass
class ImageResult:
    """Everything the projection produced for one image (CPU numpy arrays, ``[C, H, W]``)."""

    image_id: str
    split: str
    label: str
    score: float
    seed_losses: np.ndarray  # [N]; NaN for a dropped seed
    best_seed: int
    steps: int
    seconds: float
    note: str
    image: np.ndarray
    mask: np.ndarray
    projections: np.ndarray  # [N, C, H, W]
    mean_projection: np.ndarray
    best_projection: np.ndarray
    abs_map: np.ndarray
    signed_map: np.ndarray
    lesion_mask: np.ndarray | None = None
    extra_scores: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """The ``scores.csv`` row; per-seed final losses are one ``;``-joined column."""
        return {
            "image_id": self.image_id,
            "split": self.split,
            "label": self.label,
            "score": _fmt(self.score),
            **{key: _fmt(self.extra_scores.get(key, float("nan"))) for key in EXTRA_SCORE_COLUMNS},
            "seed_losses": ";".join(_fmt(float(v)) for v in self.seed_losses),
            "best_seed": self.best_seed,
            "steps": self.steps,
            "seconds": f"{self.seconds:.3f}",
            "note": self.note,
        }


def _fmt(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.8g}"


def map_path(run_dir: str | os.PathLike[str], split: str, image_id: str) -> Path:
    return Path(run_dir) / MAPS_DIR / split / f"{image_id}.npz"


def save_image_arrays(path: Path, result: ImageResult, save_projections: bool = True) -> Path:
    """Write the image's arrays as one compressed ``.npz``, atomically.

    Maps stay float32 (they are the product); the ``N`` projections are stored as float16 (error
    < 1e-3 on ``[-1, 1]``) to keep a 512-px, 16-seed file small. Units: see mammo_anogan.anomaly.scoring.
    """
    arrays: dict[str, np.ndarray] = {
        "image": result.image.astype(np.float32),
        "mask": (result.mask > 0.5).astype(np.uint8),
        "mean_projection": result.mean_projection.astype(np.float32),
        "best_projection": result.best_projection.astype(np.float32),
        "abs_map": result.abs_map.astype(np.float32),
        "signed_map": result.signed_map.astype(np.float32),
        "seed_losses": result.seed_losses.astype(np.float32),
    }
    if result.lesion_mask is not None:
        arrays["lesion_mask"] = (result.lesion_mask > 0.5).astype(np.uint8)
    if save_projections:
        arrays["projections"] = result.projections.astype(np.float16)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return atomic_write_bytes(path, buffer.getvalue())


def load_image_arrays(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


class ScoreWriter(BasePredictionWriter):
    """Write each image's ``.npz`` and then its ``scores.csv`` row as soon as its batch is scored."""

    def __init__(self, run_dir: str | os.PathLike[str], save_projections: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.run_dir = Path(run_dir)
        self.save_projections = save_projections
        _check_header(self.run_dir / SCORES_FILE)
        self.csv = AppendOnlyCsv(self.run_dir / SCORES_FILE, SCORE_COLUMNS)

    def write_on_batch_end(
        self,
        trainer: Any,
        pl_module: Any,
        prediction: Sequence[ImageResult],
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        for result in prediction:
            save_image_arrays(
                map_path(self.run_dir, result.split, result.image_id), result, self.save_projections
            )
            self.csv.append(result.row())


def _check_header(path: Path) -> None:
    """A resumed run must append to a ``scores.csv`` with today's columns, not an older layout."""
    header = csv_header(path)
    if header is not None and header != list(SCORE_COLUMNS):
        raise UserError(
            f"{path} was written with other columns (an older version?): score into a new hydra.run.dir"
        )


def completed_image_ids(run_dir: str | os.PathLike[str], split: str) -> set[str]:
    """Ids of ``split`` already scored in ``run_dir``: a row in scores.csv and its ``.npz`` on disk."""
    path = Path(run_dir) / SCORES_FILE
    if not path.is_file():
        return set()
    rows = AppendOnlyCsv(path, SCORE_COLUMNS).rows()
    return {
        row["image_id"]
        for row in rows
        if row.get("split") == split and map_path(run_dir, split, row["image_id"]).is_file()
    }


def file_hash(path: str | os.PathLike[str]) -> str:
    """SHA-256 (first 16 hex) of a file, streamed: identifies the generator a threshold belongs to."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def write_threshold(run_dir: str | os.PathLike[str], record: dict[str, Any]) -> Path:
    """Save the fitted threshold (and what it was fitted with) as ``threshold.json``."""
    return atomic_write_text(
        Path(run_dir) / THRESHOLD_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n"
    )


def read_threshold(
    path: str | os.PathLike[str], generator_hash: str, score_method: str | None
) -> dict[str, Any]:
    """Read a ``threshold.json`` (or a run dir holding one) and check it fits this generator and score.

    ``score_method=None`` (``score.method=auto``) accepts the recorded method, which is then used.
    """
    path = Path(path)
    if path.is_dir():
        path = path / THRESHOLD_FILE
    if not path.is_file():
        raise UserError(f"score.threshold_from: no threshold file at {path}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        threshold = float(record["threshold"])
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"score.threshold_from: {path} is not a threshold.json ({type(err).__name__})"
        ) from err
    if not math.isfinite(threshold):
        raise UserError(f"score.threshold_from: {path} holds a non-finite threshold")
    if record.get("generator_hash") not in (None, generator_hash):
        raise UserError(
            f"score.threshold_from: {path} was fitted for another generator "
            f"(hash {record.get('generator_hash')}, this one is {generator_hash}): point it at a run scored "
            "with this generator, or drop it (score.threshold_from=null) to fit the threshold on validation"
        )
    if score_method is not None and record.get("score_method") not in (None, score_method):
        raise UserError(
            f"score.threshold_from: {path} was fitted for score.method={record.get('score_method')}, "
            f"not {score_method}: pass score.method={record.get('score_method')}, or drop "
            "score.threshold_from"
        )
    record["threshold"] = threshold
    return record
