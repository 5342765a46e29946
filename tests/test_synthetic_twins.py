"""Demo phantom options: conspicuous lesions, fewer views, lesion-free twins and their window."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from scipy import ndimage

from mammo_anogan.data.synthetic import TWINS_FILE, generate_dataset, make_phantom

H, W = 96, 80


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "generate.json"
    }


def test_lesion_free_twin_differs_only_at_the_lesion() -> None:
    plain = make_phantom(7, 160, 128, "CC", "R", ("round_mass",))
    paired = make_phantom(7, 160, 128, "CC", "R", ("round_mass",), with_lesion_free=True)
    np.testing.assert_array_equal(paired.image, plain.image)  # asking for the twin changes no draw
    assert plain.lesion_free is None and paired.lesion_free is not None
    changed = paired.image != paired.lesion_free
    near_lesion = ndimage.binary_dilation(paired.lesion_mask, iterations=3)  # the soft edge of the mass
    assert changed[paired.lesion_mask].all() and not (changed & ~near_lesion).any()
    assert (paired.image[paired.lesion_mask] >= paired.lesion_free[paired.lesion_mask]).all()


def test_lesion_style_scales_size_and_contrast() -> None:
    from mammo_anogan.data.synthetic import LesionStyle

    small = make_phantom(3, 320, 256, "CC", "L", ("round_mass",), with_lesion_free=True)
    large = make_phantom(
        3, 320, 256, "CC", "L", ("round_mass",), lesion_style=LesionStyle(2.0, 2.0), with_lesion_free=True
    )
    assert large.lesion_mask.sum() == pytest.approx(4 * small.lesion_mask.sum(), rel=0.2)  # radius x2
    lift = (large.image - large.lesion_free)[large.lesion_mask].max()
    assert lift > 1.5 * (small.image - small.lesion_free)[small.lesion_mask].max()


def test_default_files_unchanged_and_twins_added(tmp_path: Path) -> None:
    plain = generate_dataset(tmp_path / "plain", 2, 2, height=H, width=W, seed=1)
    twins = generate_dataset(tmp_path / "twins", 2, 2, height=H, width=W, seed=1, lesion_free_twins=True)
    before, after = _digest(plain), _digest(twins)
    assert {k: v for k, v in after.items() if k in before} == before  # the films themselves are identical
    table = pd.read_csv(twins / TWINS_FILE, dtype=str)
    labels = pd.read_csv(twins / "labels.csv", dtype=str, keep_default_na=False)
    assert sorted(table["path"]) == sorted(labels.loc[labels["lesion_mask"] != "", "path"])
    for row in table.itertuples():
        film, twin = pydicom.dcmread(twins / row.path), pydicom.dcmread(twins / row.twin_path)
        assert (film.WindowCenter, film.WindowWidth) == (twin.WindowCenter, twin.WindowWidth)
        assert film.PhotometricInterpretation == twin.PhotometricInterpretation
        assert (film.pixel_array != twin.pixel_array).any()
    assert not (plain / TWINS_FILE).exists()
    # turning twins off again removes them with the other stale files
    generate_dataset(twins, 2, 2, height=H, width=W, seed=1)
    assert not (twins / TWINS_FILE).exists() and not list(twins.glob("twins/*/*.dcm"))


def test_views_kinds_and_window_without_lesions(tmp_path: Path) -> None:
    out = generate_dataset(
        tmp_path / "raw",
        2,
        3,
        height=H,
        width=W,
        seed=2,
        views=["CC"],
        lesion_kinds=["round_mass"],
        lesion_scale=2.0,
        lesion_contrast=2.0,
        parenchyma_contrast=0.2,
        lesion_free_twins=True,
        window_excludes_lesions=True,
    )
    labels = pd.read_csv(out / "labels.csv", dtype=str, keep_default_na=False)
    assert len(labels) == 5 * 2 and labels["path"].str.endswith("_CC.dcm").all()
    twins = pd.read_csv(out / TWINS_FILE, dtype=str)
    assert len(twins) == 3  # one breast of each abnormal patient, CC only, masses only
    # the window of a film with a lesion is the tissue's: a bright lesion no longer raises it
    inclusive = generate_dataset(
        tmp_path / "inclusive", 2, 3, height=H, width=W, seed=2, views=["CC"], lesion_kinds=["round_mass"],
        lesion_scale=2.0, lesion_contrast=2.0, parenchyma_contrast=0.2,
    )  # fmt: skip
    highs = []
    for path in twins["path"]:
        tops = []
        for folder in (out, inclusive):
            ds = pydicom.dcmread(folder / path)
            center = float(ds.WindowCenter)
            center = 4095 - center if ds.PhotometricInterpretation == "MONOCHROME1" else center
            tops.append(center + float(ds.WindowWidth) / 2)
        highs.append(tops)
    assert all(excluded <= included for excluded, included in highs)
    assert any(excluded < included - 50 for excluded, included in highs)
    with pytest.raises(ValueError, match="views"):
        generate_dataset(tmp_path / "bad", 1, 1, height=H, width=W, views=["ML"])
    with pytest.raises(ValueError, match="lesion_kinds"):
        generate_dataset(tmp_path / "bad", 1, 1, height=H, width=W, lesion_kinds=["tumour"])
