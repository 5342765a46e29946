"""Patient-level, stratified, seeded train/val/test splits of a prepared dataset.

Why patient-level: two films of one woman (left/right breast, CC/MLO) look alike, so an image in
train and its sibling in test would leak. Why train holds normals only: the GAN must learn the
distribution of *normal* mammograms; any abnormal patient (a benign or malignant image) therefore
goes to val or test with *all* of her images, including her normal breast. Patients are stratified
(any abnormal image vs. all normal) so val and test both get a share of each group.

Rules, in order:

1. Patients of ``test_ids`` (image ids; a list or a file with one id per line) go to test. Given
   ``test_ids``, the test set is fixed: ``test_fraction`` is not used and every other abnormal
   patient goes to val.
2. Patients with any image labelled ``unknown`` go to test: with no label they cannot train a model
   of normals nor tune a threshold, but they can still be scored.
3. Abnormal patients are shared between val and test in the ratio ``val_fraction : test_fraction``.
4. All-normal patients: ``round(val_fraction * n)`` to val, ``round(test_fraction * n)`` to test
   (at least one each when the fraction is positive and there are 3 or more such patients), the
   rest to train.

The result is written to ``splits.csv`` (``image_id,split``) with the parameters in ``splits.json``;
it is recomputed only when the parameters or the manifest's images/labels change.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from mammo_anogan.utils.errors import UserError
from mammo_anogan.utils.io import atomic_write_csv, atomic_write_text

SPLITS_CSV = "splits.csv"
SPLITS_JSON = "splits.json"
MANIFEST_CSV = "manifest.csv"
SPLIT_NAMES = ("train", "val", "test")
ABNORMAL_LABELS = frozenset({"benign", "malignant"})
KNOWN_LABELS = frozenset({"normal", "unknown"}) | ABNORMAL_LABELS

TestIds = str | os.PathLike[str] | Sequence[str] | None


def read_manifest(dataset_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Read ``manifest.csv`` as strings (ids stay ids), with a one-line error when it is missing."""
    path = Path(dataset_dir) / MANIFEST_CSV
    if not path.is_file():
        raise UserError(
            f"no prepared dataset at {Path(dataset_dir)} ({MANIFEST_CSV} missing): "
            "run `python -m mammo_anogan.prepare data=...` first"
        )
    manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("image_id", "patient_id", "label") if c not in manifest.columns]
    if missing:
        raise UserError(f"{path} lacks the column(s) {', '.join(missing)}: re-run prepare")
    manifest["label"] = manifest["label"].str.strip().str.lower()
    unexpected = sorted(set(manifest["label"]) - KNOWN_LABELS)
    if unexpected:
        raise UserError(f"{path} has unexpected label(s) {unexpected}; allowed: {sorted(KNOWN_LABELS)}")
    if manifest["image_id"].duplicated().any():
        raise UserError(f"{path} lists an image_id more than once: re-run prepare")
    return manifest


def _validate_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(value) < 1.0:
            raise UserError(f"split.{name} must be in [0, 1), got {value}")
    if float(val_fraction) + float(test_fraction) >= 1.0:
        raise UserError(
            f"split.val_fraction + split.test_fraction must be < 1 (train needs images), "
            f"got {val_fraction} + {test_fraction}"
        )


def _read_test_ids(test_ids: TestIds) -> list[str] | None:
    """Normalise ``test_ids`` (None, a file path, or a list of ids) to a sorted list of unique ids."""
    if test_ids is None:
        return None
    if isinstance(test_ids, (str, os.PathLike)):
        path = Path(test_ids)
        if not path.is_file():
            raise UserError(f"split.test_ids file not found: {path}")
        lines: Iterable[str] = path.read_text(encoding="utf-8").splitlines()
    else:
        lines = (str(item) for item in test_ids)
    ids = {line.strip() for line in lines}
    return sorted(i for i in ids if i and not i.startswith("#"))


def _manifest_fingerprint(manifest: pd.DataFrame) -> str:
    """Hash of the (image, patient, label) triples, so a changed manifest triggers a new split."""
    triples = sorted(zip(manifest["image_id"], manifest["patient_id"], manifest["label"]))
    return hashlib.blake2b(json.dumps(triples).encode(), digest_size=16).hexdigest()


def _count(fraction: float, n: int) -> int:
    """Number of patients for a fraction; at least one when positive and the group is not tiny."""
    count = int(round(fraction * n))
    if fraction > 0 and count == 0 and n >= 3:
        count = 1
    return count


def assign_patients(
    patient_ids: Sequence[str],
    abnormal: Sequence[bool],
    forced_test: Sequence[bool],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    fixed_test: bool,
) -> dict[str, str]:
    """Map each patient to a split following the module's rules (pure function, no IO)."""
    rng = np.random.default_rng(seed)
    order = np.argsort(np.asarray(patient_ids, dtype=object), kind="stable")  # input-order independent
    ids = np.asarray(patient_ids, dtype=object)[order]
    is_abnormal = np.asarray(abnormal, dtype=bool)[order]
    is_forced = np.asarray(forced_test, dtype=bool)[order]
    split = np.full(len(ids), "train", dtype=object)
    split[is_forced] = "test"

    abnormal_free = rng.permutation(np.flatnonzero(is_abnormal & ~is_forced))
    if fixed_test or test_fraction == 0:
        n_abnormal_test = 0 if val_fraction > 0 or fixed_test else len(abnormal_free)
    elif val_fraction == 0:
        n_abnormal_test = len(abnormal_free)
    else:
        n_abnormal_test = int(round(len(abnormal_free) * test_fraction / (val_fraction + test_fraction)))
    split[abnormal_free[:n_abnormal_test]] = "test"
    split[abnormal_free[n_abnormal_test:]] = "val"

    normal_free = rng.permutation(np.flatnonzero(~is_abnormal & ~is_forced))
    n = len(normal_free)
    n_test = 0 if fixed_test else _count(test_fraction, n)
    n_val = _count(val_fraction, n)
    if n_test + n_val >= n and n > 0:  # keep at least one normal patient for training
        n_val = max(0, n - 1 - n_test)
    split[normal_free[:n_test]] = "test"
    split[normal_free[n_test : n_test + n_val]] = "val"
    return dict(zip(ids.tolist(), split.tolist()))


def compute_splits(
    manifest: pd.DataFrame,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    test_ids: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Split a manifest (no IO): returns ``image_id, patient_id, label, split`` in manifest order."""
    _validate_fractions(val_fraction, test_fraction)
    frame = manifest[["image_id", "patient_id", "label"]].copy()
    fixed = set(test_ids or ())
    unknown_ids = fixed - set(frame["image_id"])
    if unknown_ids:
        example = sorted(unknown_ids)[0]
        raise UserError(
            f"{len(unknown_ids)} of the split.test_ids are not in the manifest (e.g. {example!r})"
        )
    frame["_abnormal"] = frame["label"].isin(ABNORMAL_LABELS)
    frame["_forced"] = frame["image_id"].isin(fixed) | (frame["label"] == "unknown")
    per_patient = frame.groupby("patient_id", sort=True)[["_abnormal", "_forced"]].any()
    mapping = assign_patients(
        per_patient.index.tolist(),
        per_patient["_abnormal"].tolist(),
        per_patient["_forced"].tolist(),
        float(val_fraction),
        float(test_fraction),
        int(seed),
        fixed_test=test_ids is not None,
    )
    frame["split"] = frame["patient_id"].map(mapping)
    return frame[["image_id", "patient_id", "label", "split"]].reset_index(drop=True)


def ensure_splits(
    dataset_dir: str | os.PathLike[str],
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    test_ids: TestIds = None,
) -> pd.DataFrame:
    """Return the dataset's splits, (re)writing ``splits.csv``/``splits.json`` when needed.

    Returns ``image_id, patient_id, label, split`` in manifest order. The stored split is reused
    when ``splits.json`` records the same parameters and manifest fingerprint, so a split is stable
    across runs and only changes when the user asks for another one.
    """
    dataset_dir = Path(dataset_dir)
    _validate_fractions(val_fraction, test_fraction)
    manifest = read_manifest(dataset_dir)
    fixed_ids = _read_test_ids(test_ids)
    params = {
        "val_fraction": float(val_fraction),
        "test_fraction": float(test_fraction),
        "seed": int(seed),
        "test_ids": fixed_ids,
        "manifest": _manifest_fingerprint(manifest),
    }
    stored = _load_stored(dataset_dir, params, manifest)
    if stored is not None:
        return stored
    splits = compute_splits(manifest, val_fraction, test_fraction, seed, fixed_ids)
    atomic_write_csv(dataset_dir / SPLITS_CSV, splits.to_dict("records"), ("image_id", "split"))
    summary = {
        name: {
            "images": int((splits["split"] == name).sum()),
            "patients": int(splits.loc[splits["split"] == name, "patient_id"].nunique()),
            "abnormal_images": int(((splits["split"] == name) & splits["label"].isin(ABNORMAL_LABELS)).sum()),
        }
        for name in SPLIT_NAMES
    }
    record = {"parameters": params, "summary": summary}
    atomic_write_text(dataset_dir / SPLITS_JSON, json.dumps(record, indent=2) + "\n")
    return splits


def _load_stored(dataset_dir: Path, params: dict[str, object], manifest: pd.DataFrame) -> pd.DataFrame | None:
    """The stored split if it was made with ``params`` and covers exactly the manifest, else None."""
    csv_path, json_path = dataset_dir / SPLITS_CSV, dataset_dir / SPLITS_JSON
    if not (csv_path.is_file() and json_path.is_file()):
        return None
    try:
        record = json.loads(json_path.read_text(encoding="utf-8"))
        stored = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (json.JSONDecodeError, pd.errors.ParserError, UnicodeDecodeError):
        return None
    if record.get("parameters") != params or list(stored.columns[:2]) != ["image_id", "split"]:
        return None
    if set(stored["split"]) - set(SPLIT_NAMES) or len(stored) != len(manifest):
        return None
    merged = manifest[["image_id", "patient_id", "label"]].merge(
        stored[["image_id", "split"]], on="image_id", how="left"
    )
    if merged["split"].isna().any():
        return None
    return merged.reset_index(drop=True)
