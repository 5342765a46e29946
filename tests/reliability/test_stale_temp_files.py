"""Temp files that a kill left mid atomic write are removed when a run starts again in the same folder."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from reliability_helpers import entry_env

from mammo_anogan.utils.config import PROJECT_ROOT
from mammo_anogan.utils.io import remove_stale_temp_files

#: Writes a file atomically but is SIGKILLed between the temp file's fsync and the rename.
KILLED_WRITER = """
import os, signal, sys
from mammo_anogan.utils import io
io.os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
io.atomic_write_bytes(sys.argv[1], b"x" * 4096)
"""


def test_a_kill_mid_write_leaves_a_temp_file_that_start_up_removes(
    tmp_path: Path, figures: dict[str, float]
) -> None:
    target = tmp_path / "checkpoints" / "last.ckpt"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(target)], env=entry_env(), cwd=PROJECT_ROOT, timeout=60
    )
    assert killed.returncode == -signal.SIGKILL
    leftovers = list(target.parent.glob(".last.ckpt.*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size == 4096 and not target.exists()

    assert remove_stale_temp_files(tmp_path) == 1
    assert list(target.parent.iterdir()) == []
    figures["stale_temp_files_removed"] += 1


def test_only_hidden_temp_files_are_removed_recursively(tmp_path: Path) -> None:
    keep = [tmp_path / "last.ckpt", tmp_path / "notes.tmp", tmp_path / ".hidden", tmp_path / "maps" / "a.npz"]
    stale = [tmp_path / ".scores.csv.abc.tmp", tmp_path / "maps" / "test" / ".img.npz.x1.tmp"]
    for path in keep + stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"data")
    (tmp_path / ".dir.tmp").mkdir()  # a folder with the pattern is not a temp file: left alone

    assert remove_stale_temp_files(tmp_path, recursive=False) == 1
    assert remove_stale_temp_files(tmp_path) == 1
    assert all(path.exists() for path in keep) and not any(path.exists() for path in stale)
    assert (tmp_path / ".dir.tmp").is_dir()
    assert remove_stale_temp_files(tmp_path / "missing") == 0


def test_atomic_writes_get_ordinary_permissions(tmp_path) -> None:
    """mkstemp makes 0600 files; outputs shared on a cluster must follow the umask like open() does."""
    import os

    from mammo_anogan.utils.io import atomic_write_text

    path = atomic_write_text(tmp_path / "shared.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
