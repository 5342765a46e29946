"""Name the kind of a file that is not a DICOM image, so each gets its own rejection reason.

A DICOM folder copied from a PACS export, a CD or a laptop holds more than images: index files
(DICOMDIR), operating-system litter (``.DS_Store``, ``Thumbs.db``, AppleDouble ``._*`` files),
archives not yet extracted, PDFs and spreadsheets of reports, PNG/JPEG exports. "not a DICOM file"
alone leaves the user guessing which of these it was and what to do; the reason names the kind
(from the first bytes, then the name), never the file's path or contents.
"""

from __future__ import annotations

from pathlib import Path

#: (magic bytes at offset 0, kind). Checked in order.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x00\x00\x00\x01Bud1", "macOS .DS_Store folder metadata"),
    (b"\x00\x05\x16\x07", "macOS AppleDouble resource fork"),
    (b"\x00\x05\x16\x00", "macOS AppleSingle file"),
    (b"\x89PNG\r\n\x1a\n", "PNG image: use data=folder with a labels CSV"),
    (b"\xff\xd8\xff", "JPEG image: use data=folder with a labels CSV"),
    (b"II*\x00", "TIFF image: use data=folder with a labels CSV"),
    (b"MM\x00*", "TIFF image: use data=folder with a labels CSV"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000 image file (not DICOM)"),
    (b"\xff\x4f\xff\x51", "raw JPEG 2000 codestream (not DICOM)"),
    (b"BM", "BMP image"),
    (b"GIF8", "GIF image"),
    (b"%PDF", "PDF document"),
    (b"PK\x03\x04", "ZIP archive: extract it first"),
    (b"PK\x05\x06", "ZIP archive (empty): extract it first"),
    (b"\x1f\x8b", "gzip archive: extract it first"),
    (b"BZh", "bzip2 archive: extract it first"),
    (b"\xfd7zXZ\x00", "xz archive: extract it first"),
    (b"7z\xbc\xaf\x27\x1c", "7-Zip archive: extract it first"),
    (b"Rar!\x1a\x07", "RAR archive: extract it first"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "Microsoft OLE file (Thumbs.db, old Office document)"),
    (b"\x89HDF\r\n\x1a\n", "HDF5 file"),
    (b"\x93NUMPY", "NumPy array file"),
    (b"SQLite format 3\x00", "SQLite database"),
)
_NAMES = {
    ".ds_store": "macOS .DS_Store folder metadata",
    "thumbs.db": "Windows Thumbs.db thumbnail cache",
    "desktop.ini": "Windows desktop.ini folder settings",
}
_TEXT_SUFFIXES = {
    ".csv": "CSV table",
    ".tsv": "TSV table",
    ".txt": "text file",
    ".md": "text file",
    ".json": "JSON file",
    ".xml": "XML file",
    ".html": "HTML file",
    ".log": "log file",
    ".ini": "settings file",
    ".yaml": "YAML file",
    ".yml": "YAML file",
}


def _is_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in decoded)


def non_dicom_kind(path: Path) -> str | None:
    """A short name for what ``path`` is, when it can be told; ``None`` for unrecognised bytes.

    Reads at most 512 bytes. Never returns anything taken from the file's name or contents beyond
    the fixed names above.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(512)
    except OSError:
        return None
    if size == 0:
        return "empty file, 0 bytes"
    name = path.name.lower()
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar archive: extract it first"
    if name in _NAMES:
        return _NAMES[name]
    if name.startswith("._"):
        return "macOS AppleDouble resource fork"
    if _is_text(head.split(b"\x00", 1)[0][:256]) and b"\x00" not in head[:256]:
        stripped = head.lstrip()
        if stripped.startswith(b"<?xml") or stripped.startswith(b"<"):
            return "XML/HTML text file"
        if stripped[:1] in (b"{", b"["):
            return "JSON text file"
        return _TEXT_SUFFIXES.get(path.suffix.lower(), "text file")
    return None
