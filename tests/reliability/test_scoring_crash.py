"""Guarantees 2 and 8 for scoring: a killed ``score`` resumes, scores every image exactly once, leaves no
partial row or truncated file, and gives the numbers of an uninterrupted run; two runs agree bit for bit."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from data_factory import make_scoring_workspace
from hydra import compose, initialize_config_dir
from reliability_helpers import signal_group_and_wait, spawn_entry, wait_for

import mammo_anogan.utils.config  # noqa: F401  (resolvers first)
from mammo_anogan.anomaly.outputs import SCORES_FILE, load_image_arrays, map_path
from mammo_anogan.score import run_score
from mammo_anogan.utils.config import CONFIG_DIR

SCORE_COLUMNS_COMPARED = ["split", "image_id", "label", "score", "score_mean_map", "seed_losses", "best_seed"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_scoring_workspace(
        tmp_path_factory.mktemp("score_crash"), z_dim=16, channel_base=128, channel_max=16, mapping_layers=1
    )


def _overrides(workspace: dict[str, Path], steps: int) -> list[str]:
    return [
        f"generator={workspace['generator']}",
        f"data.dataset_dir={workspace['dataset']}",
        "data.resolution=32",
        "projection=fast",
        f"projection.steps={steps}",
        "projection.w_std_samples=100",
        "projection.batch_images=1",  # one row per batch: the kill lands between rows
        "score.n_bootstrap=10",
        "score.figures=false",
        "~logger",
        "++trainer.enable_progress_bar=false",
    ]


def _score_in_process(workspace: dict[str, Path], run_dir: Path, steps: int) -> pd.DataFrame:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="score", overrides=_overrides(workspace, steps))
    run_score(cfg, run_dir)
    return _raw_scores(run_dir)


def _raw_scores(run_dir: Path) -> pd.DataFrame:
    """Every row as written (no de-duplication), every field as text: exact comparisons."""
    with (run_dir / SCORES_FILE).open(newline="", encoding="utf-8") as handle:
        return pd.DataFrame(list(csv.DictReader(handle)))


def _expected_ids(workspace: dict[str, Path]) -> set[tuple[str, str]]:
    splits = pd.read_csv(workspace["dataset"] / "splits.csv", dtype=str)
    return {(row.split, row.image_id) for row in splits.itertuples() if row.split in ("val", "test")}


def _key(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[SCORE_COLUMNS_COMPARED].sort_values(["split", "image_id"]).reset_index(drop=True)


def test_two_cpu_runs_give_identical_scores(
    workspace: dict[str, Path], tmp_path: Path, figures: dict[str, float]
) -> None:
    first = _score_in_process(workspace, tmp_path / "a", steps=6)
    second = _score_in_process(workspace, tmp_path / "b", steps=6)
    assert len(first) == len(_expected_ids(workspace)) > 0
    pd.testing.assert_frame_equal(_key(first), _key(second))
    assert np.isfinite(first["score"].astype(float)).all()
    maps_a = load_image_arrays(map_path(tmp_path / "a", first.split[0], first.image_id[0]))["abs_map"]
    maps_b = load_image_arrays(map_path(tmp_path / "b", first.split[0], first.image_id[0]))["abs_map"]
    assert np.array_equal(maps_a, maps_b)
    figures["score_determinism_runs_compared"] += 2


def test_killed_score_run_resumes_each_image_exactly_once(
    workspace: dict[str, Path], tmp_path: Path, figures: dict[str, float]
) -> None:
    steps = 20
    run_dir = tmp_path / "run"
    scores = run_dir / SCORES_FILE
    overrides = [*_overrides(workspace, steps), f"hydra.run.dir={run_dir}"]

    def rows_written() -> int:
        return scores.is_file() and scores.read_bytes().count(b"\n") - 1 >= 2  # type: ignore[return-value]

    log_path = tmp_path / "first.log"
    first = spawn_entry("score", overrides, log_path)
    try:
        wait_for(rows_written, first, timeout=180, log_path=log_path)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, "scoring finished before it could be killed"
    expected = _expected_ids(workspace)
    done_before = len(_raw_scores(run_dir))
    assert 2 <= done_before < len(expected)
    figures["score_faults_injected_sigkill"] += 1

    second = spawn_entry("score", overrides, tmp_path / "second.log")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    figures["score_runs_resumed"] += 1

    rows = _raw_scores(run_dir)
    written = list(zip(rows["split"], rows["image_id"]))
    assert len(written) == len(set(written))  # exactly once: nothing scored twice
    assert set(written) == expected  # nothing lost
    figures["score_items_lost"] += len(expected - set(written))
    figures["score_items_duplicated"] += len(written) - len(set(written))
    for split, image_id in written:  # every file parses completely
        arrays = load_image_arrays(map_path(run_dir, split, image_id))
        assert arrays["abs_map"].shape == (1, 32, 32)
    assert scores.read_bytes().endswith(b"\n")
    assert json.loads((run_dir / "metrics.json").read_text())["n_images"] == len(expected)
    # The resumed run's numbers equal an uninterrupted run's (projection randomness is per image);
    # same thread count as the subprocesses, since CPU reductions are ordered by thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        reference = _score_in_process(workspace, tmp_path / "reference", steps=steps)
    finally:
        torch.set_num_threads(threads)
    pd.testing.assert_frame_equal(_key(rows), _key(reference))


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=pytest.mark.slow)], ids=["SIGTERM", "SIGUSR1"]
)
def test_preemption_signal_to_the_process_group_stops_scoring_between_batches_and_the_rerun_finishes(
    sig: signal.Signals, workspace: dict[str, Path], tmp_path: Path, figures: dict[str, float]
) -> None:
    """SIGTERM / SIGUSR1 to the whole process group (``timeout``, SLURM), 2 DataLoader workers:
    projection stops at the next batch, exit 143, resumable; the workers do not die first.

    Lightning's predict loop ignored SIGTERM, so a terminated run carried on to the end.
    """
    run_dir = tmp_path / "run"
    scores = run_dir / SCORES_FILE
    overrides = [*_overrides(workspace, 20), f"hydra.run.dir={run_dir}", "data.loader.num_workers=2"]
    log_path = tmp_path / "first.log"
    first = spawn_entry("score", overrides, log_path, new_process_group=True)
    try:
        wait_for(lambda: scores.is_file() and scores.read_bytes().count(b"\n") >= 2, first, 180, log_path)
        returncode, seconds = signal_group_and_wait(first, sig, timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    output = log_path.read_text()
    assert returncode == 143, output[-3000:]
    assert f"received {sig.name}: stopped between batches" in output
    assert "Traceback" not in output and "killed by signal" not in output
    figures["score_preemption_signal_to_exit_s_max"] = max(
        figures["score_preemption_signal_to_exit_s_max"], seconds
    )
    expected = _expected_ids(workspace)
    done = len(_raw_scores(run_dir))
    assert 1 <= done < len(expected)  # it stopped early, with whole rows only
    assert not (run_dir / "metrics.json").exists()  # a half-scored run is never evaluated
    second = spawn_entry("score", overrides, tmp_path / "second.log")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    written = list(zip(*(_raw_scores(run_dir)[key] for key in ("split", "image_id"))))
    assert len(written) == len(set(written)) and set(written) == expected
