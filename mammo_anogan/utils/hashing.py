"""Salted hashing of patient identifiers, file paths and image ids.

No patient identifier (name, ID, accession number, date, UID) is ever written by this project.
Identifiers are replaced by a keyed BLAKE2 hash whose salt is random per dataset and stored
beside it (``salt.txt``), so ids are stable within a dataset (patient-level splits work) but cannot
be reversed by hashing candidate IDs without the salt.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from mammo_anogan.utils.io import atomic_write_text

SALT_FILE = "salt.txt"


def load_or_create_salt(dataset_dir: str | os.PathLike[str], seed: int | None = None) -> str:
    """Return the dataset's salt, creating ``salt.txt`` on first use.

    ``seed`` makes the salt deterministic (bit-identical reruns in tests); ``None`` draws a random one.
    """
    path = Path(dataset_dir) / SALT_FILE
    if path.is_file():
        salt = path.read_text(encoding="utf-8").strip()
        if salt:
            return salt
    if seed is None:
        salt = secrets.token_hex(16)
    else:
        salt = hashlib.blake2b(f"mammo_anogan-salt-{seed}".encode(), digest_size=16).hexdigest()
    atomic_write_text(path, salt + "\n")
    return salt


def salted_hash(value: object, salt: str, length: int = 16) -> str:
    """Keyed hash of ``value`` (hex, ``length`` characters)."""
    digest = hashlib.blake2b(str(value).encode("utf-8"), key=salt.encode("utf-8")[:64], digest_size=32)
    return digest.hexdigest()[:length]
