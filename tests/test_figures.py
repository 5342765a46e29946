"""Figures: valid PNGs of the expected pixel size, written atomically; case selection by type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mammo_anogan.evaluation.figures import plot_case_panels, plot_roc, plot_score_histogram, select_cases
from mammo_anogan.utils.errors import UserError

LABELS = np.array([1, 1, 1, 0, 0, 0, 1, 0])
SCORES = np.array([0.9, 0.7, 0.2, 0.8, 0.3, 0.1, 0.6, 0.4])


def _png_size(path: Path) -> tuple[int, int]:
    assert path.stat().st_size > 1000
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_roc_and_histogram_pngs(tmp_path: Path) -> None:
    roc = plot_roc(LABELS, SCORES, tmp_path / "fig" / "roc.png", figsize=(4, 4), dpi=50)
    assert roc == tmp_path / "fig" / "roc.png"
    assert _png_size(roc) == (200, 200)
    hist = plot_score_histogram(LABELS, SCORES, tmp_path / "hist.png", threshold=0.5, figsize=(6, 3), dpi=40)
    assert _png_size(hist) == (240, 120)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["fig", "hist.png", "roc.png"]  # no temp files left


def test_histogram_of_one_class_has_no_threshold_but_roc_refuses(tmp_path: Path) -> None:
    assert _png_size(plot_score_histogram([0, 0, 0], [0.1, 0.2, 0.3], tmp_path / "h.png", dpi=30)) == (
        180,
        120,
    )
    with pytest.raises(UserError, match="both normal and abnormal"):
        plot_roc([0, 0, 0], [0.1, 0.2, 0.3], tmp_path / "r.png")


def test_select_cases_picks_most_confident_of_each_type() -> None:
    # threshold 0.5: TP 0.9, 0.7, 0.6 | FN 0.2 | FP 0.8 | TN 0.3, 0.1, 0.4
    selected = select_cases(LABELS, SCORES, threshold=0.5, k=2)
    assert selected == {"TP": [0, 1], "FN": [2], "FP": [3], "TN": [5, 4]}


def test_case_panels_png(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 32, 32, generator=generator) * 2 - 1
    mask = torch.zeros(1, 32, 32)
    mask[:, :, :20] = 1
    lesion = torch.zeros(32, 32)
    lesion[10:14, 5:9] = 1
    cases = [
        {
            "image": image,
            "projection": image * 0.5,
            "difference": (image * 0.5).abs() * mask,
            "mask": mask,
            "lesion_mask": lesion,
            "case_type": "TP",
            "score": 0.123,
        },
        {
            "image": image[0].numpy(),
            "projection": image[0].numpy(),
            "difference": np.zeros((32, 32)),
            "title": "TN",
        },
    ]
    path = plot_case_panels(cases, tmp_path / "cases.png", title="Examples", panel_inches=1.0, dpi=40)
    assert _png_size(path) == (120, 96)  # 3 x 1.0 in wide; 2 x 1.0 in + 0.4 in title band high, at 40 dpi


def test_case_panels_reject_incomplete_cases(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing projection"):
        plot_case_panels([{"image": np.zeros((8, 8)), "difference": np.zeros((8, 8))}], tmp_path / "x.png")
    with pytest.raises(UserError, match="no cases"):
        plot_case_panels([], tmp_path / "x.png")
    assert not any(tmp_path.iterdir())
