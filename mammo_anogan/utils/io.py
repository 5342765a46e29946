"""Atomic file writes and safe checkpoint loading.

Every file the project writes goes through these helpers: data is written to a temporary file in
the target directory, flushed and fsync'ed, then renamed over the target. A crash therefore leaves
either the old file or the new one, never a half-written file.
"""

from __future__ import annotations

import csv
import io
import os
import pickle
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mammo_anogan.utils.errors import UserError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the file ordinary permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def remove_stale_temp_files(directory: str | os.PathLike[str], recursive: bool = True) -> int:
    """Delete ``.<name>.<random>.tmp`` files that a killed atomic write left behind; returns the count.

    Why: :func:`atomic_write_bytes` removes its temp file on any Python exception, but a SIGKILL or a
    power cut between ``mkstemp`` and ``os.replace`` leaves it. Such a file is never read (the target
    is either the old or the new complete file), it only wastes space, and checkpoints make it large;
    runs call this at start-up when they resume in the same folder. Only files matching the exact
    temp-name pattern are touched. Call it before the run starts writing: a concurrent writer's live
    temp file would look stale too.
    """
    root = Path(directory)
    if not root.is_dir():
        return 0
    candidates = root.rglob(".*.tmp") if recursive else root.glob(".*.tmp")
    removed = 0
    for path in candidates:
        if path.is_file() and not path.is_symlink():
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_csv(
    path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str]
) -> Path:
    """Write a whole CSV file atomically (header + rows)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fieldnames), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return atomic_write_text(path, buffer.getvalue())


def csv_header(path: str | os.PathLike[str]) -> list[str] | None:
    """The column names of an existing CSV file; ``None`` when there is no file or it is empty.

    For append-only files (``AppendOnlyCsv``) a resumed run checks this before it appends rows.
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    with path.open(encoding="utf-8") as handle:
        return handle.readline().strip().split(",")


class AppendOnlyCsv:
    """A CSV file that grows one complete row at a time and survives being killed mid-write.

    Each row is written with a single ``write`` of the whole line followed by ``fsync``. When the
    file is opened again, a trailing line without its newline (the only damage a kill can cause)
    is cut off, so readers never see a partial row and a resumed run re-does only that item.
    """

    def __init__(self, path: str | os.PathLike[str], fieldnames: Sequence[str]) -> None:
        self.path = Path(path)
        self.fieldnames = list(fieldnames)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._repair()
        if not self.path.exists() or self.path.stat().st_size == 0:
            header = ",".join(self.fieldnames) + "\n"
            atomic_write_text(self.path, header)

    def _repair(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            atomic_write_bytes(self.path, data[:cut])

    def rows(self) -> list[dict[str, str]]:
        """All complete rows written so far."""
        with self.path.open(newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    def append(self, row: Mapping[str, Any]) -> None:
        buffer = io.StringIO()
        csv.DictWriter(
            buffer, fieldnames=self.fieldnames, extrasaction="ignore", lineterminator="\n"
        ).writerow(row)
        line = buffer.getvalue().encode("utf-8")
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` atomically: serialise to memory, then write temp + fsync + rename."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def safe_torch_load(path: str | os.PathLike[str], map_location: Any = "cpu", mmap: bool = False) -> Any:
    """Load a checkpoint with ``weights_only=True``; refuse pickles that would run code.

    ``mmap=True`` maps the tensors instead of reading them (cheap look at metadata of a large file).
    Raises :class:`UserError` with a one-line message when the file is missing, truncated, or
    contains objects other than tensors and plain containers (e.g. a crafted pickle).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(
            f"refusing to load {path}: it contains objects that are not plain weights "
            f"(weights_only=True rejected it: {first})"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        message = f"cannot read checkpoint {path}: {type(err).__name__}: {err}"
        raise UserError(message.splitlines()[0]) from err
