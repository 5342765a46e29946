"""Guarantee 6: no DICOM patient identifier reaches any output, end to end.

Unique marker strings are planted in every identifying DICOM tag, in the patient folder names, the file
names and the raw folder's own name; then prepare (and, in the slow tier, train with offline W&B and
score) run as real subprocesses with ``data.source`` on the command line, as users run them. Every byte
of every file they write (dataset, run dirs incl. W&B and Hydra's log files) is searched for every
marker.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from dicom_fixtures import make_dataset, phantom
from omegaconf import OmegaConf
from reliability_helpers import TINY_TRAIN, run_entry

from mammo_anogan.data.splits import _rank_key, split_token

N_NORMAL, N_ABNORMAL = 6, 4


def _date(year: int, index: int) -> str:
    """A valid DA value, unique per (year, index) for index < 336."""
    return f"{year}{1 + index % 12:02d}{1 + index // 12:02d}"


def write_marked_source(root: Path) -> tuple[Path, Path, set[str]]:
    """CC films of 10 patients (L + R each) whose identifiers are all unique markers.

    Returns ``(source folder, labels CSV, markers)``; the source folder's own name is a marker too
    (a site or ward name in the path is as identifying as a patient folder).
    """
    source = root / "SITEMRKQ7Z"
    markers = {source.name}
    rows = ["path,label"]
    index = 0
    for patient in range(N_NORMAL + N_ABNORMAL):
        folder = f"PATMRK{patient:03d}Q"
        patient_tags = {
            "PatientName": f"MRKPN{patient:03d}^Zed",
            "PatientID": f"MRKPID{patient:03d}",
            "OtherPatientIDs": f"MRKOPID{patient:03d}",
            "PatientBirthDate": _date(1931, patient),
        }
        for side in ("L", "R"):
            stem = f"IMGMRK{index:03d}Q"
            file_tags = {
                "AccessionNumber": f"MRKACC{index:03d}",
                "InstitutionName": f"MRKINST{index:03d} Hospital",
                "ReferringPhysicianName": f"MRKREF{index:03d}^Doc",
                "StudyID": f"MRKSID{index:03d}",
                "StudyDate": _date(1962, index),
                "SeriesDate": _date(1963, index),
                "AcquisitionDate": _date(1964, index),
                "ContentDate": _date(1965, index),
                "StudyInstanceUID": f"1.2.826.0.1.3680043.9.7771.{index}.11",
                "SeriesInstanceUID": f"1.2.826.0.1.3680043.9.7772.{index}.22",
                "SOPInstanceUID": f"1.2.826.0.1.3680043.9.7773.{index}.33",
            }
            tags = {**patient_tags, **file_tags}
            film = phantom(64, 48, right=side == "R", seed=index)
            dataset = make_dataset(film, ViewPosition="CC", ImageLaterality=side, **tags)
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            path = source / folder / f"{stem}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            dataset.save_as(path, enforce_file_format=True)
            label = "normal" if patient < N_NORMAL else "malignant"
            rows.append(f"{folder}/{stem}.dcm,{label}")
            markers |= {folder, stem}
            markers |= {value.split("^")[0].split(" ")[0] for value in tags.values()}
            index += 1
    labels_csv = source / "labels.csv"
    labels_csv.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return source, labels_csv, markers


def find_markers(folders: Iterable[Path], markers: set[str]) -> dict[str, list[str]]:
    """``{file: [markers found]}`` over every byte of every file (and every name) under ``folders``."""
    encoded = {marker: marker.encode() for marker in markers}
    hits: dict[str, list[str]] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            name = path.relative_to(folder).as_posix()
            data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
            found = [m for m, raw in encoded.items() if raw in data or m in name]
            if found:
                hits[f"{folder.name}/{name}"] = sorted(found)
    return hits


def _files_in(folders: Iterable[Path]) -> int:
    return sum(1 for folder in folders for path in folder.rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def marked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The marked raw folder, prepared once by a real ``prepare`` subprocess (workers=2)."""
    root = tmp_path_factory.mktemp("privacy")
    source, labels_csv, markers = write_marked_source(root)
    dataset = root / "dataset"
    data_overrides = [f"data.source={source}", f"data.labels_csv={labels_csv}", "data.resolution=32"]
    result = run_entry(
        "prepare",
        [
            "data=dicom",
            *data_overrides,
            f"prepare.out_dir={dataset}",
            "prepare.workers=2",
            "prepare.progress=false",
            f"hydra.run.dir={root / 'prepare_run'}",
        ],
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {
        "root": root,
        "source": source,
        "markers": markers,
        "dataset": dataset,
        "data_overrides": data_overrides,
        "prepare_output": result.stdout + result.stderr,
    }


def test_prepare_outputs_hold_no_identifier(marked: dict[str, object], figures: dict[str, float]) -> None:
    root, dataset, markers = Path(marked["root"]), Path(marked["dataset"]), set(marked["markers"])
    # per patient: 4 tags + folder name; per film: 11 tags + file name; the raw folder's name
    assert len(markers) == 10 * (4 + 1) + 20 * (11 + 1) + 1
    assert (root / "prepare_run" / "prepare.log").is_file()  # Hydra's job log is searched too
    assert len(list((dataset / "images").glob("*.png"))) == 2 * (N_NORMAL + N_ABNORMAL)  # all kept
    folders = [dataset, root / "prepare_run"]
    assert find_markers(folders, markers) == {}
    console = str(marked["prepare_output"])
    assert [m for m in markers if m in console] == []
    # The salt-independent split ranks patients by unsalted hashes of their raw ids: in memory only.
    unsalted = set()
    for patient in range(N_NORMAL + N_ABNORMAL):
        token = split_token(f"MRKPID{patient:03d}")
        rank = _rank_key(token, 0)
        unsalted |= {token, token[:16], rank, rank[:16]}
    assert find_markers(folders, unsalted) == {}
    assert [h for h in unsalted if h in console] == []
    figures["privacy_markers_planted"] = len(markers)
    figures["privacy_files_searched_prepare"] += _files_in(folders)
    figures["privacy_marker_hits"] += 0


@pytest.mark.slow
def test_train_and_score_outputs_hold_no_identifier(
    marked: dict[str, object], figures: dict[str, float]
) -> None:
    root, dataset, markers = Path(marked["root"]), Path(marked["dataset"]), set(marked["markers"])
    data_overrides = [*marked["data_overrides"], f"data.dataset_dir={dataset}"]  # type: ignore[misc]
    train_dir, score_dir = root / "train_run", root / "score_run"
    # Temp files a kill left in folders a run resumes in: removed at start-up.
    for stale in (train_dir / "checkpoints" / ".last.ckpt.k1ll.tmp", score_dir / "maps" / ".x.npz.k1ll.tmp"):
        stale.parent.mkdir(parents=True, exist_ok=True)
        stale.write_bytes(b"partial")

    train = run_entry(
        "train",
        [
            *TINY_TRAIN,
            *data_overrides,
            "logger=wandb",  # offline (entry_env sets WANDB_MODE=offline): writes <run>/wandb/
            "model.total_kimg=0.012",
            f"hydra.run.dir={train_dir}",
        ],
        timeout=400,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    assert (train_dir / "generator.pt").is_file() and list((train_dir / "wandb").rglob("*"))
    score = run_entry(
        "score",
        [
            "+experiment=tiny",
            *data_overrides,
            f"generator={train_dir / 'generator.pt'}",
            "projection.steps=2",
            "projection.num_seeds=2",
            "projection.w_std_samples=100",
            "score.n_bootstrap=10",
            "++trainer.enable_progress_bar=false",
            f"hydra.run.dir={score_dir}",
        ],
        timeout=400,
    )
    assert score.returncode == 0, score.stderr[-3000:]
    assert (score_dir / "scores.csv").is_file() and list((score_dir / "wandb").rglob("*"))
    assert not list(train_dir.rglob("*.k1ll.tmp")) and not list(score_dir.rglob("*.k1ll.tmp"))
    for run_dir in (train_dir, score_dir):
        assert not (run_dir / ".hydra").exists()  # Hydra's raw copy is off; a sanitised one is saved
        saved = OmegaConf.load(run_dir / "config.yaml")
        assert str(saved.data.source).startswith("hash:") and str(saved.data.labels_csv).startswith("hash:")

    folders = [dataset, root / "prepare_run", train_dir, score_dir]
    assert find_markers(folders, markers) == {}
    console = train.stdout + train.stderr + score.stdout + score.stderr
    assert [m for m in markers if m in console] == []
    figures["privacy_files_searched_prepare_train_score"] += _files_in(folders)
    figures["stale_temp_files_removed_train_score"] += 2
