"""Guarantees 2b, 4, 5 and 8b for ``prepare``: hostile inputs, per-file time limits, SIGKILL + resume,
bit-identical reruns and start-up config validation.

The fuzz and kill tests run ``python -m mammo_anogan.prepare`` as a real subprocess, as users run it; the
others call :func:`prepare_dataset` in-process (the worker pool is still a real process pool).
"""

from __future__ import annotations

import csv
import os
import signal
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from dicom_fixtures import compose_prepare, phantom, write_dicom
from hostile_inputs import UID_ROOT, write_hostile_folder
from reliability_helpers import error_lines, run_entry, spawn_entry, wait_for

from mammo_anogan.data.manifest import MANIFEST_FILE, REJECTED_FILE
from mammo_anogan.data.readers import InputItem
from mammo_anogan.prepare import prepare_dataset, source_hash
from mammo_anogan.utils.hashing import SALT_FILE


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _expected_sources(out: Path, relpaths: list[str]) -> dict[str, str]:
    """``{hashed source: relpath}`` for the inputs, with the dataset's own salt."""
    salt = (out / SALT_FILE).read_text(encoding="utf-8").strip()
    return {source_hash(InputItem(relpath=relpath, path=""), salt): relpath for relpath in relpaths}


def _all_sources(out: Path) -> list[str]:
    return [row["source"] for name in (MANIFEST_FILE, REJECTED_FILE) for row in _rows(out / name)]


def _snapshot(folder: Path) -> dict[str, bytes]:
    files = sorted(path for path in folder.rglob("*") if path.is_file())
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in files}


# --------------------------------------------------------------------------------- guarantee 4: fuzz


def test_fuzzed_inputs_each_end_in_manifest_or_rejected_with_a_reason(
    tmp_path: Path, figures: dict[str, float]
) -> None:
    source, out = tmp_path / "raw", tmp_path / "out"
    files = write_hostile_folder(source, count=210, seed=0)
    started = time.monotonic()
    result = run_entry(
        "prepare",
        [
            "data=folder",
            f"data.source={source}",
            "data.resolution=32",
            f"prepare.out_dir={out}",
            "prepare.workers=2",  # the worker-process path
            "prepare.file_timeout_s=20",
            "prepare.progress=false",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        timeout=180,  # no hang: the whole run is bounded
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout

    kept, rejected = _rows(out / MANIFEST_FILE), _rows(out / REJECTED_FILE)
    expected = _expected_sources(out, [f.relpath for f in files])
    sources = _all_sources(out)
    assert len(files) >= 200
    assert len(kept) + len(rejected) == len(files)  # inputs == kept + rejected
    assert Counter(sources) == Counter(expected.keys())  # each source hash exactly once
    for row in rejected:
        reason = row["reason"]
        assert reason and "\n" not in reason and str(tmp_path) not in reason
        assert not reason.startswith("unexpected error"), reason  # every failure has a known reason

    reason_of = {expected[r["source"]]: r["reason"] for r in rejected}
    kept_relpaths = {expected[r["source"]] for r in kept}
    by_mutation = {f.relpath: f for f in files}
    for relpath, item in by_mutation.items():
        if item.mutation == "huge_declared_size":  # refused from the header, before any decoding
            pixels = 65_535**2 if item.kind == "dicom" else 100_000**2
            assert reason_of[relpath].startswith(f"declares {pixels} pixels"), (relpath, reason_of[relpath])
        if item.mutation in ("intact", "monochrome1", "signed_pixels"):
            assert relpath in kept_relpaths, (relpath, reason_of.get(relpath))
        if item.mutation in ("zero_size", "wrong_magic", "non_image_sop_class", "missing_rows"):
            assert relpath in reason_of, relpath
    for row in kept:
        image = cv2.imread(str(out / row["image_path"]), cv2.IMREAD_UNCHANGED)
        assert image.shape == (32, 32) and image.dtype == np.uint8
    # Damaged headers must not leak what they hold (a broken length makes one value swallow the
    # next elements): the films' identifiers appear in no output byte, in any letter case.
    identifiers = [b"secret-patient-0042", b"doe^jane", b"19990101", UID_ROOT.encode()]
    for name, data in _snapshot(out).items():
        assert [i for i in identifiers if i in data.lower()] == [], name
    assert [i for i in identifiers if i in (result.stdout + result.stderr).lower().encode()] == []

    figures["prepare_fuzz_files"] += len(files)
    figures["prepare_fuzz_kept"] += len(kept)
    figures["prepare_fuzz_rejected"] += len(rejected)
    figures["prepare_fuzz_unaccounted"] += len(files) - len(set(sources))
    figures["prepare_fuzz_seconds"] = round(elapsed, 1)
    for family, count in Counter(r["reason"].split(" (", 1)[0] for r in rejected).items():
        figures[f"prepare_fuzz_rejected[{family}]"] += count


@pytest.mark.timeout(120)
def test_per_file_time_limit_stops_a_blocked_read_in_a_worker_process(
    tmp_path: Path, figures: dict[str, float]
) -> None:
    """A FIFO without a writer blocks ``open()`` forever (like a hung network mount): the worker's
    timer must end that file with its reason while the other file is kept."""
    source = tmp_path / "raw"
    write_dicom(source / "p1" / "good.dcm", phantom(64, 48), ViewPosition="CC")
    os.mkfifo(source / "p1" / "blocked.dcm")
    cfg = compose_prepare(
        [
            "data=dicom",
            f"data.source={source}",
            "data.resolution=32",
            f"prepare.out_dir={tmp_path / 'out'}",
            "prepare.workers=2",
            "prepare.file_timeout_s=1",
        ]
    )
    started = time.monotonic()
    result = prepare_dataset(cfg)
    elapsed = time.monotonic() - started
    assert (result.kept, result.rejected) == (1, 1)
    assert [r["reason"] for r in _rows(tmp_path / "out" / REJECTED_FILE)] == [
        "exceeded the per-file time limit of 1 s"
    ]
    assert elapsed < 60
    figures["prepare_worker_timeouts_enforced"] += 1


# ------------------------------------------------------------------------- guarantee 2b: kill + resume


@pytest.fixture(scope="module")
def many_dicoms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """160 small films in patient folders: CC views are kept, MLO views rejected (both CSVs grow)."""
    source = tmp_path_factory.mktemp("many") / "raw"
    relpaths = []
    for index in range(160):
        right = index % 4 >= 2
        view = "CC" if index % 2 == 0 else "MLO"
        relpath = f"p{index // 4:03d}/{index:03d}.dcm"
        write_dicom(
            source / relpath,
            phantom(128, 96, right=right, seed=index),
            ViewPosition=view,
            ImageLaterality="R" if right else "L",
            PatientID=f"PAT{index // 4:03d}",
        )
        relpaths.append(relpath)
    return source, relpaths


def _complete_rows(path: Path) -> int:
    if not path.is_file():
        return 0
    data = path.read_bytes()
    return max(0, data.count(b"\n") - 1)  # minus the header; a trailing partial line is not counted


def test_killed_prepare_resumes_each_input_exactly_once(
    many_dicoms: tuple[Path, list[str]], tmp_path: Path, figures: dict[str, float]
) -> None:
    source, relpaths = many_dicoms
    out = tmp_path / "out"
    common = ["data=dicom", f"data.source={source}", "data.resolution=32", f"prepare.out_dir={out}"]
    common.append("prepare.salt_seed=3")
    log_path = tmp_path / "first.log"
    first = spawn_entry(
        "prepare",
        # one file at a time: the kill lands between (or inside) files
        [*common, "prepare.workers=0", "prepare.progress=false", f"hydra.run.dir={tmp_path / 'hydra'}"],
        log_path,
    )
    try:
        wait_for(
            lambda: _complete_rows(out / MANIFEST_FILE) >= 8 and _complete_rows(out / REJECTED_FILE) >= 8,
            first,
            timeout=120,
            log_path=log_path,
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done_before = len(set(_all_sources_tolerant(out)))
    assert 16 <= done_before < len(relpaths)
    # A kill during an atomic write leaves a hidden temp file; plant one so its removal is checked.
    (out / "images" / ".deadbeef.png.kill.tmp").write_bytes(b"\x89PNG partial")

    cfg = compose_prepare([*common, "prepare.workers=2"])
    result = prepare_dataset(cfg)
    assert result.skipped == done_before
    assert result.processed == len(relpaths) - done_before

    expected = _expected_sources(out, relpaths)
    assert Counter(_all_sources(out)) == Counter(expected.keys())  # every input exactly once overall
    for name in (MANIFEST_FILE, REJECTED_FILE):
        data = (out / name).read_bytes()
        assert data.endswith(b"\n")
        widths = {len(row) for row in csv.reader(data.decode().splitlines())}
        assert len(widths) == 1  # no partial row
    kept = _rows(out / MANIFEST_FILE)
    assert len(kept) == 80 and Counter(r["reason"] for r in _rows(out / REJECTED_FILE)) == {
        "view MLO not in [CC]": 80
    }
    assert not list(out.rglob("*.tmp"))
    for folder, column in (("images", "image_path"), ("masks", "mask_path")):
        on_disk = {p.relative_to(out).as_posix() for p in (out / folder).glob("*.png")}
        assert on_disk == {r[column] for r in kept}  # manifest rows match the PNG files present
        for name in on_disk:
            array = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
            assert array is not None and array.shape == (32, 32)  # every PNG decodes
    figures["prepare_runs_killed_sigkill"] += 1
    figures["prepare_runs_resumed"] += 1
    figures["prepare_inputs_lost_after_kill"] += len(set(expected) - set(_all_sources(out)))
    figures["prepare_inputs_processed_twice"] += len(_all_sources(out)) - len(set(_all_sources(out)))


def _all_sources_tolerant(out: Path) -> list[str]:
    """Sources of the complete rows of a killed run's CSVs (a trailing partial line is ignored)."""
    sources = []
    for name in (MANIFEST_FILE, REJECTED_FILE):
        data = (out / name).read_bytes()
        complete = data[: data.rfind(b"\n") + 1].decode()
        sources += [row["source"] for row in csv.DictReader(complete.splitlines())]
    return sources


# ------------------------------------------------------------------------ guarantee 8b: determinism


def test_two_runs_with_a_fixed_salt_seed_are_bit_identical(tmp_path: Path, figures: dict[str, float]) -> None:
    """Same config, ``prepare.salt_seed`` fixed, two output folders, parallel workers: same bytes."""
    source = tmp_path / "raw"  # synthetic films with lesion masks, labels and both views
    snapshots = []
    for name in ("a", "b"):
        cfg = compose_prepare(
            [
                "data=synthetic",
                f"data.source={source}",
                "data.resolution=32",
                "data.synthetic.num_normal_patients=4",
                "data.synthetic.num_abnormal_patients=3",
                "data.synthetic.height=160",
                "data.synthetic.width=128",
                f"prepare.out_dir={tmp_path / name}",
                "prepare.workers=2",
                "prepare.salt_seed=11",
            ]
        )
        result = prepare_dataset(cfg)
        assert result.kept == 14 and result.rejected == 14  # CC kept, MLO rejected
        snapshots.append(_snapshot(tmp_path / name))
    first, second = snapshots
    assert any(name.startswith("lesions/") for name in first)
    assert {"manifest.csv", "rejected.csv", "splits.csv", "salt.txt", "prepare_config.yaml"} <= set(first)
    assert first.keys() == second.keys()
    different = [name for name in first if first[name] != second[name]]
    assert different == []
    figures["prepare_runs_compared_bit_identical"] += 2
    figures["prepare_files_compared_bytewise"] += len(first)


# ------------------------------------------------------------------------ guarantee 5: config errors


def test_bad_prepare_value_exits_2_with_one_error_line(tmp_path: Path, figures: dict[str, float]) -> None:
    source = tmp_path / "raw"
    write_dicom(source / "a.dcm", phantom(64, 48), ViewPosition="CC")
    result = run_entry(
        "prepare",
        [
            "data=dicom",
            f"data.source={source}",
            "data.resolution=32",
            f"prepare.out_dir={tmp_path / 'out'}",
            "prepare.workers=-1",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        timeout=120,
    )
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert lines == ["error: prepare.workers=-1 is out of range; it must be >= 0"]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written
    figures["config_errors_subprocess_prepare"] += 1
