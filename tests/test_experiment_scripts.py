"""The helper scripts of experiments/mias: their outputs are what the study's README reports."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from data_factory import make_scoring_workspace
from hydra import compose, initialize_config_dir

import mammo_anogan.utils.config  # noqa: F401  (resolvers first)
from mammo_anogan.utils.config import CONFIG_DIR

SCRIPTS = Path(__file__).resolve().parents[1] / "experiments" / "mias"


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _score(workspace: dict[str, Path], run_dir: Path, num_seeds: int) -> dict:
    from mammo_anogan.score import run_score

    overrides = [
        f"generator={workspace['generator']}",
        f"data.dataset_dir={workspace['dataset']}",
        "data.resolution=32",
        "projection=fast",
        "projection.loss=mse",
        "projection.steps=3",
        f"projection.num_seeds={num_seeds}",
        "projection.w_std_samples=100",
        "score.n_bootstrap=20",
        "score.smooth_sigma=0.5",  # not the default: derived runs must use the source run's settings
        "score.map_polarity=positive",
        "score.figures=false",
        "++trainer.enable_progress_bar=false",
    ]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("score", overrides=overrides)
    cfg.logger = None
    return run_score(cfg, run_dir)


def _scores(run_dir: Path, column: str = "score") -> dict[tuple[str, str], float]:
    with (run_dir / "scores.csv").open(newline="") as handle:
        return {(row["split"], row["image_id"]): float(row[column]) for row in csv.DictReader(handle)}


def test_seed_subsets_equal_a_run_with_fewer_seeds_and_summarize_reads_them(tmp_path: Path) -> None:
    """The first n of N saved projections are an n-seed projection (the study's N = 1, 9 from 16)."""
    workspace = make_scoring_workspace(tmp_path / "ws", z_dim=16, channel_base=128, channel_max=16)
    _score(workspace, tmp_path / "n2", num_seeds=2)
    _score(workspace, tmp_path / "n1", num_seeds=1)
    derived = _script("derive_seed_subsets").derive(tmp_path / "n2", tmp_path / "sweep", [1, 2])
    assert [p.name for p in derived] == ["0", "1"]
    for run_dir, reference in ((derived[0], tmp_path / "n1"), (derived[1], tmp_path / "n2")):
        got, want = _scores(run_dir), _scores(reference)
        assert got.keys() == want.keys() and len(got) > 0
        for key, value in want.items():  # projections are stored as float16
            assert got[key] == pytest.approx(value, rel=2e-2, abs=1e-3)
        # the lesion-sensitive scores with the source run's score.* settings
        got, want = _scores(run_dir, "score_smooth_max"), _scores(reference, "score_smooth_max")
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=2e-2, abs=1e-3)
    assert _scores(derived[0]) != _scores(derived[1])
    # the ordinary evaluation of a derived run dir (resume: nothing re-projected) + the summary table
    metrics = _score(workspace, derived[0], num_seeds=1)
    rows = _script("summarize").rows_of([tmp_path / "sweep"])
    assert len(rows) == 1 and rows[0]["num_seeds"] == 1 and rows[0]["auc"] == pytest.approx(metrics["auc"])
    assert "| mse | mean_map |" in _script("summarize").markdown(rows)


def test_fidelity_history_keeps_the_last_value_of_a_repeated_kimg(tmp_path: Path) -> None:
    prefix = "[2026-11-24 23:39:16,915][mammo_anogan.training.callbacks][INFO] - "
    lines = [
        "fidelity at 4.0 kimg: swd=109.3, swd_baseline=37.98, frd=6.865, frd_baseline=6.401",
        "fidelity at 6.6 kimg: swd=133.5, swd_baseline=37.98, frd=7.387, frd_baseline=6.401",
        "unrelated line",
        "fidelity at 6.6 kimg: swd=133.4, swd_baseline=37.98, frd=7.382, frd_baseline=6.401",  # resumed
        "fidelity at 8.0 kimg: swd=121.5, swd_baseline=37.98, frd=7.353, frd_baseline=6.401",
    ]
    (tmp_path / "train.log").write_text("\n".join(prefix + line for line in lines) + "\n")
    history_script = _script("fidelity_history")
    points = history_script.history(tmp_path / "train.log")
    assert sorted(points) == [4.0, 6.6, 8.0] and points[6.6]["swd"] == 133.4
    table = history_script.markdown(points, every=4).splitlines()
    assert table[0] == "| kimg | 4 | 8 |"
    assert table[2] == "| SWD (baseline 38) | 109 | 122 |"


def test_ada_history_picks_the_logged_row_nearest_each_kimg(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.csv"
    metrics.write_text(
        "fidelity/swd,train/ada_p,train/ada_rt,train/kimg\n"
        "50.0,,,\n"  # a fidelity-only row has no ADA values
        ",0.01,0.9,9.92\n"
        ",0.05,0.7,76.08\n"
    )
    assert _script("fidelity_history").ada_at(metrics, [10, 76]) == [(9.92, 0.01, 0.9), (76.08, 0.05, 0.7)]
