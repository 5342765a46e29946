"""The GPU tier (``pytest -m gpu``): the tests here need CUDA and are skipped without it."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # data_factory
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))  # reliability_helpers
