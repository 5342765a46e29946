"""Seeded generator of hostile and broken mammogram files (DICOM, PGM, PNG, TIFF) for the fuzz tests.

Each file is a small valid film (64 x 48) put through one named mutation, so a failing invariant can be
traced to the kind of damage that caused it. Structured mutations (huge declared size, wrong bit depth,
missing tags, ...) come first, one or more per kind; the rest of the budget is random truncations and
random byte flips drawn from a seeded RNG, so the same seed always writes the same bytes.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from dicom_fixtures import make_dataset, phantom
from pydicom.filebase import DicomBytesIO

HEIGHT, WIDTH = 64, 48
HUGE_SIDE = 100_000  # PNG / PGM / TIFF headers: 10^10 pixels, must be refused before decoding
DICOM_HUGE_SIDE = 65_535  # Rows/Columns are US (16-bit) in DICOM: the largest declarable film
SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR: not an image
UID_ROOT = "1.2.826.0.1.3680043.9.4242"


@dataclass(frozen=True)
class HostileFile:
    """One generated input: where it is (relative to the source folder) and what was done to it."""

    relpath: str
    kind: str  # dicom | pgm | png | tiff
    mutation: str


def _dicom_bytes(seed: int, **attributes: object) -> bytes:
    """A valid little MG DICOM (CC view, left breast) with ``attributes`` applied; ``None`` deletes."""
    deletions = [key for key, value in attributes.items() if value is None]
    kept = {key: value for key, value in attributes.items() if value is not None}
    pixel_bytes = kept.pop("PixelDataBytes", None)
    uids = {  # fixed UIDs (make_dataset draws random ones): same seed, same bytes
        "StudyInstanceUID": f"{UID_ROOT}.1.{seed}",
        "SOPInstanceUID": f"{UID_ROOT}.2.{seed}",
    }
    dataset = make_dataset(
        phantom(HEIGHT, WIDTH, seed=seed), ViewPosition="CC", ImageLaterality="L", **{**uids, **kept}
    )
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    if pixel_bytes is not None:
        dataset.PixelData = pixel_bytes
    dataset["PixelData"].VR = "OW"  # explicit, so the file can be written without BitsAllocated
    for key in deletions:
        delattr(dataset, key)
    buffer = DicomBytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _film8(seed: int) -> np.ndarray:
    return (phantom(HEIGHT, WIDTH, seed=seed) // 16).astype(np.uint8)


def _encode(extension: str, pixels: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(extension, pixels)
    assert ok
    return buffer.tobytes()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png() -> bytes:
    """A well-formed PNG whose header declares 100000 x 100000 8-bit gray pixels (tiny IDAT)."""
    header = struct.pack(">IIBBBBB", HUGE_SIDE, HUGE_SIDE, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def huge_pgm() -> bytes:
    return f"P5\n{HUGE_SIDE} {HUGE_SIDE}\n255\n".encode() + b"\x00" * 64


def huge_tiff() -> bytes:
    """A baseline little-endian TIFF whose IFD declares 100000 x 100000 pixels (64 bytes of data)."""
    entries = [  # tag, type (3 SHORT, 4 LONG), value
        (256, 4, HUGE_SIDE),
        (257, 4, HUGE_SIDE),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 0),  # strip offset, patched below
        (277, 3, 1),
        (278, 4, HUGE_SIDE),
        (279, 4, 64),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x00" * 64


def _truncate(data: bytes, rng: np.random.Generator) -> bytes:
    return data[: int(rng.integers(1, len(data)))]


def _flip_bytes(data: bytes, rng: np.random.Generator) -> bytes:
    """XOR 1-16 random bytes with random non-zero values (header and pixels alike)."""
    array = bytearray(data)
    count = int(rng.integers(1, 17))
    positions = rng.integers(0, len(array), size=count)
    values = rng.integers(1, 256, size=count)
    for position, value in zip(positions.tolist(), values.tolist(), strict=True):
        array[position] ^= value
    return bytes(array)


def _wrong_magic(data: bytes, kind: str) -> bytes:
    if kind == "dicom":
        return data[:128] + b"DICX" + data[132:]
    return b"JUNK" + data[4:]


def _structured_dicom(seed: int) -> dict[str, bytes]:
    """DICOM mutations that each break one header fact."""
    film16 = phantom(HEIGHT, WIDTH, seed=seed).tobytes()
    return {
        "huge_declared_size": _dicom_bytes(seed, Rows=DICOM_HUGE_SIDE, Columns=DICOM_HUGE_SIDE),
        "bits_allocated_8_with_16bit_data": _dicom_bytes(seed, BitsAllocated=8, BitsStored=8, HighBit=7),
        "bits_stored_over_allocated": _dicom_bytes(seed, BitsStored=20, HighBit=19),
        "pixel_data_too_short": _dicom_bytes(seed, PixelDataBytes=film16[: len(film16) // 2]),
        "pixel_data_too_long": _dicom_bytes(seed, PixelDataBytes=film16 + film16),
        "non_image_sop_class": _dicom_bytes(seed, SOPClassUID=SR_SOP_CLASS),
        # a real MONOCHROME1 film: stored values inverted (background brightest), labelled as such
        "monochrome1": _dicom_bytes(
            seed,
            PhotometricInterpretation="MONOCHROME1",
            PixelDataBytes=(4095 - phantom(HEIGHT, WIDTH, seed=seed)).tobytes(),
        ),
        "signed_pixels": _dicom_bytes(seed, PixelRepresentation=1),
        "missing_rows": _dicom_bytes(seed, Rows=None),
        "missing_columns": _dicom_bytes(seed, Columns=None),
        "missing_photometric": _dicom_bytes(seed, PhotometricInterpretation=None),
        "missing_bits_allocated": _dicom_bytes(seed, BitsAllocated=None),
        "missing_pixel_data": _dicom_bytes(seed, PixelData=None),
    }


def _base(kind: str, seed: int) -> bytes:
    if kind == "dicom":
        return _dicom_bytes(seed)
    if kind == "pgm":
        return _encode(".pgm", _film8(seed))
    if kind == "png":
        return _encode(".png", _film8(seed))
    return _encode(".tiff", _film8(seed))


_SUFFIX = {"dicom": ".dcm", "pgm": ".pgm", "png": ".png", "tiff": ".tif"}
_HUGE: dict[str, Callable[[], bytes]] = {"png": huge_png, "pgm": huge_pgm, "tiff": huge_tiff}


def write_hostile_folder(source: Path, count: int = 210, seed: int = 0) -> list[HostileFile]:
    """Write ``count`` files (+ ``labels.csv`` for the folder reader) under ``source``; list them.

    About one file in twenty is left intact so the run also keeps images (and a kept file proves the
    mutation, not the generator, is what a rejection is about).
    """
    rng = np.random.default_rng(seed)
    files: list[tuple[str, str, bytes]] = []  # kind, mutation, bytes
    for kind in ("dicom", "pgm", "png", "tiff"):
        files.append((kind, "zero_size", b""))
        files.append((kind, "wrong_magic", _wrong_magic(_base(kind, 1), kind)))
        files.append((kind, "intact", _base(kind, 2)))
        if kind in _HUGE:
            files.append((kind, "huge_declared_size", _HUGE[kind]()))
    files.extend(("dicom", name, data) for name, data in _structured_dicom(3).items())
    kinds = ("dicom", "dicom", "pgm", "png", "tiff")  # DICOM is the format that matters most
    while len(files) < count:
        kind = kinds[int(rng.integers(len(kinds)))]
        data = _base(kind, int(rng.integers(1000)))
        choice = float(rng.random())
        if choice < 0.05:
            files.append((kind, "intact", data))
        elif choice < 0.5:
            files.append((kind, "truncated", _truncate(data, rng)))
        else:
            files.append((kind, "byte_flips", _flip_bytes(data, rng)))
    listed: list[HostileFile] = []
    rows = ["path,label,laterality,view"]
    for index, (kind, mutation, data) in enumerate(files):
        relpath = f"{kind}/{index:03d}_{mutation}{_SUFFIX[kind]}"
        target = source / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        listed.append(HostileFile(relpath, kind, mutation))
        rows.append(f"{relpath},normal,L,CC")
    (source / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return listed
