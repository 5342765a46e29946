"""Which side of the stored film the chest wall is on: every header that says it, checked against the pixels.

Prepared films have the chest wall on the LEFT. Three things can say where it is in a stored film:

* PatientOrientation (0020,0020), value 1 = the patient direction of the rows (first to last
  column): ``A`` (towards anterior, i.e. the nipple) means the chest wall is on the left, ``P`` on
  the right. This is the one header that describes the *pixels* rather than the breast, so it
  also covers films stored mirrored (a left breast with ``P``).
* The breast side (ImageLaterality, Laterality, combined codes such as ``RCC``), read with the
  standard display convention: a right breast has its chest wall on the right.
* The pixels: a breast lies against one vertical film edge (the chest wall) and tapers towards
  the other, so the window-independent rough tissue mask tells the side by where its mass is and
  which edge it touches.

When the pixels are clear they decide (by default; ``data.preprocess.orientation_conflict``), and any
header that disagrees is reported in the manifest's ``orientation_check`` column; when they are
not (a breast touching both edges, a nearly empty film), the headers decide in the order above.
PatientOrientation value 2 (the column direction) flags MLO-type films stored upside down (head
towards the bottom, ``H``); they are flipped vertically at load time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mammo_anogan.data.rejections import RejectedInput

LEFT, RIGHT = "L", "R"
#: Views whose top edge is the patient's head side (column direction F when stored upright).
_HEAD_UP_VIEWS = frozenset({"MLO", "ML", "LM", "LMO", "SIO", "ISO", "AT"})
ORIENTATION_CONFLICT_POLICIES = ("pixels", "header", "reject")


@dataclass(frozen=True)
class HeaderOrientation:
    """What the headers say about the stored pixels (no patient data; picklable).

    ``chest_wall``: ``L``/``R`` image side of the chest wall, ``None`` when no header says it.
    ``source``: ``patient_orientation`` or ``laterality`` (the header ``chest_wall`` came from).
    ``flip_vertical``: an upside-down MLO-type film (PatientOrientation column direction ``H``).
    ``note``: disagreements between headers (e.g. ImageLaterality L but ViewPosition RCC).
    """

    chest_wall: str | None = None
    source: str = "none"
    flip_vertical: bool = False
    note: str = ""


@dataclass(frozen=True)
class Orientation:
    """The decision: chest-wall side of the stored film, where it came from, and any contradiction."""

    chest_wall: str
    source: str  # patient_orientation | laterality | pixels | signal
    note: str = ""


def patient_orientation_directions(values: list[str]) -> tuple[str, str] | None:
    """``(row direction, column direction)`` when PatientOrientation holds two direction codes."""
    if len(values) != 2:
        return None
    if not all(value and set(value) <= set("APLRHF") for value in values):
        return None  # e.g. CBIS-DDSM stores the view ('CC') here
    return values[0], values[1]


def header_orientation(
    patient_orientation: list[str], laterality: str | None, view: str | None, laterality_note: str = ""
) -> HeaderOrientation:
    """Combine PatientOrientation and the breast side into the header's statement about the pixels."""
    directions = patient_orientation_directions(patient_orientation)
    notes = [laterality_note] if laterality_note else []
    flip_vertical = False
    chest_wall, source = None, "none"
    if directions is not None:
        rows, columns = directions
        if "A" in rows and "P" not in rows:
            chest_wall, source = LEFT, "patient_orientation"
        elif "P" in rows and "A" not in rows:
            chest_wall, source = RIGHT, "patient_orientation"
        if view in _HEAD_UP_VIEWS and "H" in columns and "F" not in columns:
            flip_vertical = True
            notes.append(
                f"PatientOrientation column direction {columns}: stored upside down, flipped vertically"
            )
        standard = {"L": LEFT, "R": RIGHT}.get(laterality or "")
        if chest_wall is not None and standard is not None and chest_wall != standard:
            notes.append(f"PatientOrientation {rows}\\{columns} for laterality {laterality}: stored mirrored")
    if chest_wall is None and laterality in ("L", "R"):
        chest_wall, source = (LEFT if laterality == "L" else RIGHT), "laterality"
    return HeaderOrientation(chest_wall, source, flip_vertical, "; ".join(notes))


def breast_like(mask: np.ndarray) -> bool:
    """Whether a tissue mask has the extent of a breast: 3-95 % of the film, at least a fifth of its
    width and of its height, and at least 35 % of its bounding box filled (a bright film edge, an
    L-shaped border or a label strip is not)."""
    if mask.ndim != 2 or not mask.any():
        return False
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    box_height, box_width = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    area = float(mask.sum())
    return (
        0.03 <= area / mask.size <= 0.95
        and box_width >= 0.2 * width
        and box_height >= 0.2 * height
        and area >= 0.35 * box_width * box_height
    )


def chest_wall_from_mask(mask: np.ndarray, edge_fraction: float = 0.05) -> str | None:
    """``L``/``R`` when the tissue mask clearly lies against one vertical edge, else ``None``.

    Clear means: the mask has a breast's extent (:func:`breast_like`), its centre of mass is in that
    half (outside the middle fifth), it touches that edge over at least 10 % of the rows, and over
    at least twice as many rows as the other edge.
    """
    if not breast_like(mask):
        return None
    height, width = mask.shape
    band = max(1, int(round(edge_fraction * width)))
    left_rows = float(mask[:, :band].any(axis=1).mean())
    right_rows = float(mask[:, width - band :].any(axis=1).mean())
    centre = float(np.nonzero(mask)[1].mean()) / max(width - 1, 1)
    if centre < 0.4 and left_rows >= 0.1 and left_rows >= 2 * right_rows:
        return LEFT
    if centre > 0.6 and right_rows >= 0.1 and right_rows >= 2 * left_rows:
        return RIGHT
    return None


def _side_name(side: str) -> str:
    return "left" if side == LEFT else "right"


def resolve_orientation(
    header: HeaderOrientation, pixel_side: str | None, policy: str = "pixels"
) -> Orientation:
    """The chest-wall side to use; a header/pixel contradiction is reported (or rejected, by policy).

    ``policy``: ``pixels`` (follow the pixels, report), ``header`` (follow the header, report),
    ``reject`` (a contradiction is a rejection).
    """
    if policy not in ORIENTATION_CONFLICT_POLICIES:
        raise ValueError(f"orientation_conflict must be one of {ORIENTATION_CONFLICT_POLICIES}")
    notes = [header.note] if header.note else []
    if header.chest_wall is None:
        if pixel_side is None:
            return Orientation(LEFT, "none", "; ".join(notes))  # caller falls back to the signal
        return Orientation(pixel_side, "pixels", "; ".join(notes))
    if pixel_side is None or pixel_side == header.chest_wall:
        return Orientation(header.chest_wall, header.source, "; ".join(notes))
    conflict = (
        f"{header.source} says chest wall {_side_name(header.chest_wall)}, "
        f"pixels say {_side_name(pixel_side)}"
    )
    if policy == "reject":
        raise RejectedInput(f"orientation contradiction ({conflict})")
    if policy == "header":
        return Orientation(
            header.chest_wall, header.source, "; ".join([*notes, f"{conflict}: followed the header"])
        )
    return Orientation(pixel_side, "pixels", "; ".join([*notes, f"{conflict}: followed the pixels"]))
