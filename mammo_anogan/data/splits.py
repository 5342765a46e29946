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

Which patients come first in rules 3 and 4 (scheme ``patient-key-v1``): patients are ranked by a
keyed hash of their *raw* identifier (DICOM PatientID, the labels CSV's ``patient_id``, ...) with
``seed``, so the split is a function of the films and the ``data.split.*`` settings only: the same
films and seed give the same patients in train / val / test on any machine, whatever the dataset's
privacy salt. The raw identifier is read by ``prepare`` (or again from ``data.source`` when train /
score ask for other split settings) and is only held in memory as a :func:`split_token`; nothing
derived from it without the salt is written. Datasets split by the earlier scheme (``salted-id-v0``:
a seeded permutation of the *salted* ids, hence salt-dependent) keep their recorded split.

The result is written to ``splits.csv`` (``image_id,split``) with the parameters, the scheme and a
fingerprint in ``splits.json``; it is recomputed only when the parameters or the manifest's
images/labels change. The fingerprint (image counts per split and label, plus a hash over the sorted
pixel-content hashes of each split's images) is comparable across machines: two labs that prepared
the same films with the same settings see the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import cv2
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

SPLIT_SCHEME = "patient-key-v1"  # ranked by a keyed hash of the raw patient identifier + seed
LEGACY_SCHEME = "salted-id-v0"  # seeded permutation of the salted patient ids (salt-dependent)

TestIds = str | os.PathLike[str] | Sequence[str] | None
#: salted ``patient_id`` -> :func:`split_token` of the raw identifier (in memory only, never written)
PatientTokens = Mapping[str, str]
TokenSource = PatientTokens | Callable[[], PatientTokens | None] | None

log = logging.getLogger(__name__)
_NOTED: set[str] = set()  # datasets whose legacy-scheme note was already logged in this process


def split_token(raw_patient_key: str) -> str:
    """A salt-independent stand-in for a raw patient identifier, for ranking only.

    Keyed BLAKE2b of the raw identifier (hex, 64 characters). It is an *unsalted* hash of an
    identifier, so it must never be written or logged: it lives in memory between reading the films
    and :func:`compute_splits`.
    """
    digest = hashlib.blake2b(raw_patient_key.encode("utf-8"), key=b"mammo_anogan-split-token", digest_size=32)
    return digest.hexdigest()


def _rank_key(token: str, seed: int) -> str:
    """The patient's rank under ``seed``: a keyed hash of its token (never written)."""
    key = f"mammo_anogan-split-seed-{int(seed)}".encode()
    return hashlib.blake2b(token.encode(), key=key, digest_size=16).hexdigest()


def pixel_hash(image: np.ndarray) -> str:
    """Hash of an image's pixel content (shape, dtype and values), independent of the PNG encoder."""
    array = np.ascontiguousarray(image)
    digest = hashlib.blake2b(f"{array.shape}|{array.dtype.str}|".encode(), digest_size=16)
    digest.update(array.tobytes())
    return digest.hexdigest()


def image_content_hashes(dataset_dir: str | os.PathLike[str], image_paths: Iterable[str]) -> list[str]:
    """:func:`pixel_hash` of each prepared PNG (paths relative to ``dataset_dir``), decoded as stored."""
    hashes = []
    for relpath in image_paths:
        path = Path(dataset_dir) / relpath
        data = np.fromfile(path, dtype=np.uint8) if path.is_file() else np.empty(0, np.uint8)
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
        if image is None:
            raise UserError(
                f"prepared file missing or unreadable: {path}; re-run `python -m mammo_anogan.prepare "
                "data=... prepare.overwrite=true`"
            )
        hashes.append(pixel_hash(image))
    return hashes


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
        raise UserError(
            f"{path} lacks the column(s) {', '.join(missing)}: prepare again with prepare.overwrite=true"
        )
    manifest["label"] = manifest["label"].str.strip().str.lower()
    unexpected = sorted(set(manifest["label"]) - KNOWN_LABELS)
    if unexpected:
        raise UserError(
            f"{path} has unexpected label(s) {unexpected}; allowed: {sorted(KNOWN_LABELS)} (correct them, or "
            "prepare again with prepare.overwrite=true)"
        )
    if manifest["image_id"].duplicated().any():
        raise UserError(f"{path} lists an image_id more than once: prepare again with prepare.overwrite=true")
    return manifest


def _validate_fractions(val_fraction: float, test_fraction: float) -> None:
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(value) < 1.0:
            raise UserError(f"data.split.{name} must be in [0, 1), got {value}")
    if float(val_fraction) + float(test_fraction) >= 1.0:
        raise UserError(
            f"data.split.val_fraction + data.split.test_fraction must be < 1 (train needs images), "
            f"got {val_fraction} + {test_fraction}"
        )


def _read_test_ids(test_ids: TestIds) -> list[str] | None:
    """Normalise ``test_ids`` (None, a file path, or a list of ids) to a sorted list of unique ids."""
    if test_ids is None:
        return None
    if isinstance(test_ids, (str, os.PathLike)):
        path = Path(test_ids)
        if not path.is_file():
            raise UserError(f"data.split.test_ids file not found: {path}")
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
    rank_keys: Sequence[str] | None = None,
) -> dict[str, str]:
    """Map each patient to a split following the module's rules (pure function, no IO).

    ``rank_keys`` (one per patient, e.g. :func:`_rank_key` of its token) order the patients within
    each group; ``None`` is the legacy scheme, a permutation drawn from ``seed`` over the sorted ids.
    """
    rng = np.random.default_rng(seed)
    order = np.argsort(np.asarray(patient_ids, dtype=object), kind="stable")  # input-order independent
    ids = np.asarray(patient_ids, dtype=object)[order]
    is_abnormal = np.asarray(abnormal, dtype=bool)[order]
    is_forced = np.asarray(forced_test, dtype=bool)[order]
    ranks = None if rank_keys is None else np.asarray(rank_keys, dtype=object)[order]
    split = np.full(len(ids), "train", dtype=object)
    split[is_forced] = "test"

    def shuffled(candidates: np.ndarray) -> np.ndarray:
        if ranks is None:
            return rng.permutation(candidates)
        return candidates[np.argsort(ranks[candidates], kind="stable")]

    abnormal_free = shuffled(np.flatnonzero(is_abnormal & ~is_forced))
    if fixed_test or test_fraction == 0:
        n_abnormal_test = 0 if val_fraction > 0 or fixed_test else len(abnormal_free)
    elif val_fraction == 0:
        n_abnormal_test = len(abnormal_free)
    else:
        n_abnormal_test = int(round(len(abnormal_free) * test_fraction / (val_fraction + test_fraction)))
    split[abnormal_free[:n_abnormal_test]] = "test"
    split[abnormal_free[n_abnormal_test:]] = "val"

    normal_free = shuffled(np.flatnonzero(~is_abnormal & ~is_forced))
    n = len(normal_free)
    n_test = 0 if fixed_test else _count(test_fraction, n)
    n_val = _count(val_fraction, n)
    if n_test + n_val >= n and n > 0:  # keep at least one normal patient for training
        n_val = max(0, n - 1 - n_test)
    split[normal_free[:n_test]] = "test"
    split[normal_free[n_test : n_test + n_val]] = "val"
    return dict(zip(ids.tolist(), split.tolist()))


def _check_test_ids(test_ids: set[str], manifest: pd.DataFrame) -> None:
    unknown_ids = test_ids - set(manifest["image_id"])
    if unknown_ids:
        example = sorted(unknown_ids)[0]
        raise UserError(
            f"{len(unknown_ids)} of the data.split.test_ids are not in the manifest (e.g. {example!r}): "
            "list image_id values of manifest.csv"
        )


def compute_splits(
    manifest: pd.DataFrame,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    test_ids: Sequence[str] | None = None,
    patient_tokens: PatientTokens | None = None,
) -> pd.DataFrame:
    """Split a manifest (no IO): returns ``image_id, patient_id, label, split`` in manifest order.

    With ``patient_tokens`` (every patient's :func:`split_token`) the split follows the
    salt-independent scheme; without, the legacy salted-id permutation.
    """
    _validate_fractions(val_fraction, test_fraction)
    frame = manifest[["image_id", "patient_id", "label"]].copy()
    fixed = set(test_ids or ())
    _check_test_ids(fixed, frame)
    frame["_abnormal"] = frame["label"].isin(ABNORMAL_LABELS)
    frame["_forced"] = frame["image_id"].isin(fixed) | (frame["label"] == "unknown")
    per_patient = frame.groupby("patient_id", sort=True)[["_abnormal", "_forced"]].any()
    rank_keys = None
    if patient_tokens is not None:
        missing = [p for p in per_patient.index if p not in patient_tokens]
        if missing:
            raise UserError(
                f"the raw identifiers of {len(missing)} patient(s) of the manifest were not found (films "
                "removed from data.source?); point data.source at the folder the dataset was prepared from, "
                "or prepare again with prepare.overwrite=true"
            )
        rank_keys = [_rank_key(patient_tokens[p], int(seed)) for p in per_patient.index]
    mapping = assign_patients(
        per_patient.index.tolist(),
        per_patient["_abnormal"].tolist(),
        per_patient["_forced"].tolist(),
        float(val_fraction),
        float(test_fraction),
        int(seed),
        fixed_test=test_ids is not None,
        rank_keys=rank_keys,
    )
    frame["split"] = frame["patient_id"].map(mapping)
    return frame[["image_id", "patient_id", "label", "split"]].reset_index(drop=True)


def split_fingerprint(splits: pd.DataFrame, content_hashes: Sequence[str]) -> dict[str, object]:
    """A fingerprint of an assignment that two machines can compare.

    ``splits`` has ``label`` and ``split`` columns, ``content_hashes`` the :func:`pixel_hash` of each
    row's image. Returns ``{"digest", "counts", "content"}``: image counts per split and label, a
    hash over the sorted content hashes of each split's images, and a short digest of both. It holds
    no id (salted or not), so it is the same for the same films and split whatever the salt.
    """
    frame = pd.DataFrame({"split": splits["split"].to_numpy(), "label": splits["label"].to_numpy()})
    frame["content"] = list(content_hashes)
    counts: dict[str, dict[str, int]] = {}
    content: dict[str, str] = {}
    for name in SPLIT_NAMES:
        part = frame[frame["split"] == name]
        counts[name] = {label: int(n) for label, n in sorted(part["label"].value_counts().items())}
        joined = "\n".join(sorted(part["content"])).encode()
        content[name] = hashlib.blake2b(joined, digest_size=16).hexdigest()
    payload = json.dumps({"counts": counts, "content": content}, sort_keys=True).encode()
    digest = hashlib.blake2b(payload, digest_size=8).hexdigest()
    return {"digest": digest, "counts": counts, "content": content}


def describe_fingerprint(fingerprint: Mapping[str, object], scheme: str | None = None) -> str:
    """One line for logs: ``split fingerprint <digest>: train 40 normal | val ... | test ...``."""
    counts = fingerprint.get("counts", {})
    assert isinstance(counts, Mapping)
    parts = []
    for name in SPLIT_NAMES:
        per_label = counts.get(name) or {}
        text = ", ".join(f"{n} {label}" for label, n in per_label.items()) or "empty"
        parts.append(f"{name} {text}")
    suffix = f" (scheme {scheme})" if scheme else ""
    return f"split fingerprint {fingerprint.get('digest')}: {' | '.join(parts)}{suffix}"


def read_split_record(dataset_dir: str | os.PathLike[str]) -> dict[str, object] | None:
    """``splits.json`` as a dict, or None when it is missing or unreadable."""
    path = Path(dataset_dir) / SPLITS_JSON
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def ensure_splits(
    dataset_dir: str | os.PathLike[str],
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    test_ids: TestIds = None,
    patient_tokens: TokenSource = None,
    content_hashes: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Return the dataset's splits, (re)writing ``splits.csv``/``splits.json`` when needed.

    Returns ``image_id, patient_id, label, split`` in manifest order. The stored split is reused
    when ``splits.json`` records the same parameters and manifest fingerprint, so a split is stable
    across runs and only changes when the user asks for another one (a split of the legacy scheme is
    kept too, with a one-line note). A new split uses ``patient_tokens`` (a mapping, or a callable
    returning one, called only when a split must be computed) for the salt-independent scheme; it
    falls back to the legacy scheme only for datasets that never had a salt-independent split.
    ``content_hashes`` (image_id -> :func:`pixel_hash`) saves decoding the PNGs for the fingerprint.

    Raises :class:`UserError` when a salt-independent split must be recomputed without the raw
    identifiers (``patient_tokens`` None), naming the two ways out.
    """
    dataset_dir = Path(dataset_dir)
    _validate_fractions(val_fraction, test_fraction)
    manifest = read_manifest(dataset_dir)
    fixed_ids = _read_test_ids(test_ids)
    _check_test_ids(set(fixed_ids or ()), manifest)
    params = {
        "val_fraction": float(val_fraction),
        "test_fraction": float(test_fraction),
        "seed": int(seed),
        "test_ids": fixed_ids,
        "manifest": _manifest_fingerprint(manifest),
    }
    record = read_split_record(dataset_dir)
    stored = _load_stored(dataset_dir, params, manifest, record)
    if stored is not None:
        assert record is not None
        _complete_legacy_record(dataset_dir, record, stored, content_hashes)
        return stored
    tokens = patient_tokens() if callable(patient_tokens) else patient_tokens
    if tokens is None and record is not None and record.get("scheme") == SPLIT_SCHEME:
        raise UserError(_resplit_needs_source(dataset_dir, record, params))
    scheme = LEGACY_SCHEME if tokens is None else SPLIT_SCHEME
    if tokens is None:
        log.info(
            "splitting %s by its salted patient ids (no raw identifiers given): the split depends on "
            "the dataset's salt",
            dataset_dir.name,
        )
    splits = compute_splits(manifest, val_fraction, test_fraction, seed, fixed_ids, tokens)
    atomic_write_csv(dataset_dir / SPLITS_CSV, splits.to_dict("records"), ("image_id", "split"))
    hashes = _content_hashes_of(dataset_dir, manifest, content_hashes)
    record = {
        "parameters": params,
        "scheme": scheme,
        "fingerprint": split_fingerprint(splits, hashes),
        "summary": _summary(splits),
    }
    atomic_write_text(dataset_dir / SPLITS_JSON, json.dumps(record, indent=2) + "\n")
    return splits


def _resplit_needs_source(
    dataset_dir: Path, record: Mapping[str, object], params: Mapping[str, object]
) -> str:
    """The error text when a salt-independent split must be recomputed without ``data.source``."""
    recorded = record.get("parameters") or {}
    assert isinstance(recorded, Mapping)
    source = (
        "set data.source=<the raw folder the dataset was prepared from> (read for patient identifiers only)"
    )
    if recorded.get("manifest") != params["manifest"]:
        return (
            f"the images or labels of {dataset_dir} changed since they were split; to split again, {source}"
        )
    keep = [
        f"data.split.{key}={recorded.get(key)}"
        for key in ("seed", "val_fraction", "test_fraction")
        if recorded.get(key) != params[key]
    ]
    if recorded.get("test_ids") != params["test_ids"]:
        keep.append(
            "data.split.test_ids=<the recorded ids>"
            if recorded.get("test_ids")
            else "data.split.test_ids=null"
        )
    return (
        f"the split of {dataset_dir} was made from the films' raw patient identifiers with other "
        f"data.split settings; another split needs them again: {source}, or keep the recorded split "
        f"with {' '.join(keep)}"
    )


def _summary(splits: pd.DataFrame) -> dict[str, dict[str, int]]:
    return {
        name: {
            "images": int((splits["split"] == name).sum()),
            "patients": int(splits.loc[splits["split"] == name, "patient_id"].nunique()),
            "abnormal_images": int(((splits["split"] == name) & splits["label"].isin(ABNORMAL_LABELS)).sum()),
        }
        for name in SPLIT_NAMES
    }


def _content_hashes_of(
    dataset_dir: Path, manifest: pd.DataFrame, known: Mapping[str, str] | None
) -> list[str]:
    """Content hashes in manifest order: from ``known`` where given, else by decoding the PNGs."""
    known = known or {}
    if "image_path" not in manifest.columns:  # a hand-made manifest: fall back to the ids
        return [known.get(i, f"id:{i}") for i in manifest["image_id"]]
    todo = [(i, p) for i, p in zip(manifest["image_id"], manifest["image_path"]) if i not in known]
    decoded = dict(zip((i for i, _ in todo), image_content_hashes(dataset_dir, (p for _, p in todo))))
    return [known.get(i) or decoded[i] for i in manifest["image_id"]]


def _complete_legacy_record(
    dataset_dir: Path,
    record: dict[str, object],
    stored: pd.DataFrame,
    content_hashes: Mapping[str, str] | None,
) -> None:
    """A reused split of the earlier scheme: note it once, and record its scheme and fingerprint."""
    scheme = record.get("scheme", LEGACY_SCHEME)
    if scheme == LEGACY_SCHEME and str(dataset_dir) not in _NOTED:
        _NOTED.add(str(dataset_dir))
        log.info(
            "note: %s keeps its recorded split, made by the earlier salt-dependent scheme; preparing it "
            "again (prepare.overwrite=true) splits by patient identifier, independent of the salt",
            dataset_dir.name,
        )
    if "fingerprint" in record and "scheme" in record:
        return
    manifest = read_manifest(dataset_dir)
    hashes = _content_hashes_of(dataset_dir, manifest, content_hashes)
    ordered = manifest[["image_id"]].merge(stored[["image_id", "label", "split"]], on="image_id", how="left")
    record["scheme"] = scheme
    record["fingerprint"] = split_fingerprint(ordered, hashes)
    atomic_write_text(dataset_dir / SPLITS_JSON, json.dumps(record, indent=2) + "\n")


def _load_stored(
    dataset_dir: Path,
    params: dict[str, object],
    manifest: pd.DataFrame,
    record: dict[str, object] | None,
) -> pd.DataFrame | None:
    """The stored split if it was made with ``params`` and covers exactly the manifest, else None."""
    csv_path = dataset_dir / SPLITS_CSV
    if record is None or not csv_path.is_file():
        return None
    try:
        stored = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
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


def empty_train_reason(splits: pd.DataFrame, dataset_dir: str | os.PathLike[str]) -> str:
    """Why the train split holds no image, and what to do about it (one line, for a UserError)."""
    labels = splits["label"].value_counts()
    counts = ", ".join(f"{int(n)} {label}" for label, n in sorted(labels.items()))
    n_normal, n_unknown = int(labels.get("normal", 0)), int(labels.get("unknown", 0))
    where = f"the train split of {Path(dataset_dir)} is empty"
    relabel = (
        "label the films and prepare again: data.label=normal when every unlabelled film of data.source "
        "is a normal exam, or data.labels_csv=<CSV with columns path,label>"
    )
    if n_normal == 0 and n_unknown:
        return (
            f"{where}: no film is labelled normal ({counts}), so the {n_unknown} unlabelled film(s) went to "
            f"test as 'unknown' and none is left to learn normal anatomy from; {relabel}"
        )
    if n_normal == 0:
        return f"{where}: no film is labelled normal ({counts}); training needs normal exams: add some"
    patients = splits.groupby("patient_id")["label"].agg(lambda s: set(s) == {"normal"})
    return (
        f"{where}: the {n_normal} normal film(s) belong to patients who also have abnormal, unlabelled or "
        f"fixed-test films ({int(patients.sum())} all-normal patient(s)), so they went to val/test with "
        f"them; training needs patients whose films are all normal: add such exams or {relabel}"
    )
