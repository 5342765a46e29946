"""Fixtures of the reliability suite: a figures recorder whose numbers go into docs/reliability.md."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import pytest

FIGURES: dict[str, float] = defaultdict(float)


@pytest.fixture
def figures() -> dict[str, float]:
    """Counters a test adds to (files fuzzed, faults injected, runs resumed, items lost, ...)."""
    return FIGURES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print the counters (and write them as JSON to $RELIABILITY_FIGURES when set)."""
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for key in sorted(FIGURES):
        terminalreporter.write_line(f"{key}: {FIGURES[key]:g}")
    target = os.environ.get("RELIABILITY_FIGURES")
    if target:
        Path(target).write_text(json.dumps(dict(sorted(FIGURES.items())), indent=2) + "\n", encoding="utf-8")
