"""The prepared dataset's bookkeeping: manifest.csv, rejected.csv, PNG outputs and the run summary.

Images are stored as 8-bit PNG rather than one big memory-mapped array because each worker can
write its own files atomically as it goes (a killed run leaves whole files only, and a resumed run
simply skips what is listed), the files are viewable with any tool, PNG is lossless, and the number
of images need not be known in advance. Loading cost is paid once: the data module decodes them
into an in-RAM cache (small sets) or into the packed store (:mod:`mammo_anogan.data.store`).

Rows are appended with :class:`AppendOnlyCsv` as results arrive (crash-safe), and when a run
completes both CSVs are rewritten sorted by their key so that reruns are byte-identical whatever
order the parallel workers finished in.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mammo_anogan.utils.errors import UserError
from mammo_anogan.utils.io import AppendOnlyCsv, atomic_write_bytes, atomic_write_csv, csv_header

MANIFEST_FILE = "manifest.csv"
REJECTED_FILE = "rejected.csv"
MANIFEST_COLUMNS = (
    "image_id",
    "patient_id",
    "source",
    "laterality",
    "view",
    "label",
    "breast_area_px",
    "image_path",
    "mask_path",
    "lesion_mask_path",
    "lesion_x",
    "lesion_y",
    "lesion_radius",
    "window_center",
    "window_width",
    "window_source",
    "window_check",
    "flipped",
    "orientation_source",
    "orientation_check",
    "pectoral_removed",
    "abnormality",
    "tissue",
    "raw_height",
    "raw_width",
)
REJECTED_COLUMNS = ("source", "reason")
OUTPUT_FOLDERS = ("images", "masks", "lesions")


def encode_png(array: np.ndarray) -> bytes:
    """Lossless 8-bit PNG bytes (no metadata, so nothing identifying can ride along)."""
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(array, dtype=np.uint8))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buffer.tobytes()


def write_png(path: Path, array: np.ndarray) -> None:
    """Write an 8-bit PNG atomically."""
    atomic_write_bytes(path, encode_png(array))


def format_geometry(values: Iterable[float]) -> str:
    """``;``-separated numbers with one decimal (several lesions per image)."""
    return ";".join(f"{v:.1f}" for v in values)


def _check_header(path: Path, columns: tuple[str, ...]) -> None:
    """Refuse to append to a manifest written with other columns (an older version of prepare)."""
    header = csv_header(path)
    if header is not None and header != list(columns):
        raise UserError(
            f"{path.name} in prepare.out_dir has other columns (written by another version of prepare): "
            "use prepare.overwrite=true or another prepare.out_dir"
        )


class DatasetWriter:
    """Appends manifest / rejection rows and knows which sources are already done (resume)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        _check_header(out_dir / MANIFEST_FILE, MANIFEST_COLUMNS)
        self.manifest = AppendOnlyCsv(out_dir / MANIFEST_FILE, MANIFEST_COLUMNS)
        self.rejected = AppendOnlyCsv(out_dir / REJECTED_FILE, REJECTED_COLUMNS)

    def done_sources(self) -> set[str]:
        """Hashed sources already kept or rejected by an earlier (possibly killed) run.

        Streams the ``source`` column only: at 100k files the full rows as dicts took ~180 MB.
        """
        return set(_column(self.manifest.path, "source")) | set(_column(self.rejected.path, "source"))

    def add(self, row: Mapping[str, Any]) -> None:
        """Append a result row to the file it belongs in (rows with a ``reason`` are rejections)."""
        if row.get("reason"):
            self.rejected.append(row)
        else:
            self.manifest.append(row)

    def finalise(self) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """Rewrite both CSVs sorted (deterministic bytes); returns ``(manifest rows, rejected rows)``."""
        kept = sorted(self.manifest.rows(), key=lambda r: r["image_id"])
        rejected = sorted(self.rejected.rows(), key=lambda r: (r["source"], r["reason"]))
        atomic_write_csv(self.manifest.path, kept, MANIFEST_COLUMNS)
        atomic_write_csv(self.rejected.path, rejected, REJECTED_COLUMNS)
        return kept, rejected


def _column(path: Path, name: str) -> Iterator[str]:
    """The values of one column of a CSV file, streamed (rows without it give ``""``)."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        if name not in header:
            return
        position = header.index(name)
        for row in reader:
            yield row[position] if position < len(row) else ""


def summary_counts(kept: list[dict[str, str]], rejected: list[dict[str, str]]) -> dict[str, Counter[str]]:
    """Counts for the end-of-run table: rejections by reason, kept images by label and by view."""
    reasons = Counter(_reason_family(r["reason"]) for r in rejected)
    return {
        "rejected_by_reason": reasons,
        "kept_by_label": Counter(r["label"] for r in kept),
        "kept_by_view": Counter(r["view"] for r in kept),
    }


def _reason_family(reason: str) -> str:
    """Group reasons that differ only in detail (error text in parentheses)."""
    return reason.split(" (", 1)[0]


def render_summary(
    kept: list[dict[str, str]], rejected: list[dict[str, str]], processed: int, skipped: int
) -> str:
    """The rich summary table as text (also printed to the console by the entry point)."""
    from rich.console import Console
    from rich.table import Table

    counts = summary_counts(kept, rejected)
    table = Table(title="prepare summary", show_lines=False)
    table.add_column("group")
    table.add_column("value")
    table.add_column("count", justify="right")
    table.add_row("run", "processed now", str(processed))
    table.add_row("run", "already done (resumed)", str(skipped))
    table.add_row("total", "kept", str(len(kept)))
    table.add_row("total", "rejected", str(len(rejected)))
    for group, key in (
        ("kept_by_label", "label"),
        ("kept_by_view", "view"),
        ("rejected_by_reason", "reason"),
    ):
        for value, count in sorted(counts[group].items()):
            table.add_row(f"{'kept' if group.startswith('kept') else 'rejected'} by {key}", value, str(count))
    console = Console(file=io.StringIO(), width=120, force_terminal=False)
    console.print(table)
    return console.file.getvalue()  # type: ignore[attr-defined]
