"""Tolerant reads of DICOM header elements: absent, present-but-empty and malformed all read as "unknown".

Field files carry every kind of damaged element: zero-length values (``WindowCenter`` present with
no value), text where a number belongs (``RescaleSlope = "x"``), a sequence with an empty item, a
multi-valued element where one value is expected. pydicom parses such elements lazily, so the
failure surfaces as a ``TypeError`` / ``ValueError`` wherever the value is first used, which used to
end as ``unexpected error (TypeError)``. Every read of a header value in the readers goes through
these functions instead: each returns ``None`` (or an empty list / string) for anything it cannot
use, and the caller decides what an unknown value means (a fallback, or a one-line rejection).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue


def raw_value(dataset: Dataset, keyword: str) -> Any:
    """The element's value, or ``None`` when absent, empty or unparsable (never raises)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if keyword not in dataset:
                return None
            value = dataset[keyword].value
    except Exception:  # noqa: BLE001 - a malformed element is an unknown value, by design
        return None
    if value is None or (isinstance(value, str | bytes) and not value.strip()):
        return None
    return value


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [v for v in value if v is not None and str(v).strip() != ""]
    return [value]


def texts(dataset: Dataset, keyword: str) -> list[str]:
    """All values of a text element, stripped and upper-cased (empty values dropped)."""
    out = []
    for value in _as_list(raw_value(dataset, keyword)):
        if isinstance(value, bytes):
            value = value.decode("latin-1", errors="replace")
        text = str(value).strip().upper()
        if text:
            out.append(text)
    return out


def text(dataset: Dataset, keyword: str) -> str:
    """The values of a text element joined with ``\\`` (``""`` when unknown)."""
    return "\\".join(texts(dataset, keyword))


def _to_float(value: Any) -> float | None:
    try:
        if isinstance(value, bytes):
            value = value.decode("ascii", errors="strict")
        number = float(value)
    except (TypeError, ValueError, UnicodeDecodeError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def numbers(dataset: Dataset, keyword: str) -> list[float | None]:
    """Every value of a numeric element as a float; an unparsable or non-finite value is ``None``."""
    return [_to_float(v) for v in _as_list(raw_value(dataset, keyword))]


def number(dataset: Dataset, keyword: str) -> float | None:
    """The first value of a numeric element, or ``None`` when absent, empty or malformed."""
    values = numbers(dataset, keyword)
    return values[0] if values else None


def integer(dataset: Dataset, keyword: str) -> int | None:
    """The first value as an int when it is a whole number, else ``None``."""
    value = number(dataset, keyword)
    return int(value) if value is not None and float(value).is_integer() else None


def items(dataset: Dataset, keyword: str) -> list[Dataset]:
    """The items of a sequence element (none when absent, empty or unparsable)."""
    value = raw_value(dataset, keyword)
    try:
        return [item for item in (value or []) if isinstance(item, Dataset)]
    except TypeError:
        return []
