"""Fingerprints of run artifacts: what produced a file, recorded with it and checked before it is reused.

An artifact (``scores.csv``, ``threshold.json``, a checkpoint, ``generator.pt``, a prepared dataset, an
encoder) is only valid for the settings that produced it. Its fingerprint holds the canonical values of
exactly the config keys that determine it (flattened to dotted keys, e.g. ``projection.num_seeds``),
plus content hashes of the input files it was computed from, and a digest of those values. Every
reuse builds the fingerprint the *current* config would give and compares it with the recorded one
before doing any work; a difference is one :class:`~mammo_anogan.utils.errors.UserError` line naming
every differing key with both values, followed by advice that gets past the error.

Hooking a new artifact is one call when it is written and one when it is read::

    payload = stamp(payload, make_fingerprint("encoder", values))            # a dict saved with torch.save
    check_fingerprint(read_stamp(payload), expected, f"encoder {path}", "retrain it or pass ...")

    write_sidecar(run_dir, fingerprint)                                      # a folder or a CSV
    check_fingerprint(read_sidecar(run_dir), expected, f"{run_dir}", "...")

Comparison rules: only keys present on both sides are compared, so a key that later code adds is not
held against an artifact written before it existed (its value then was the old behaviour); numbers
compare by value (``2`` equals ``2.0``); tuples and lists are the same. Values are plain JSON, so a
fingerprint never holds a tensor, a path to raw data or a patient identifier (callers hash raw paths).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mammo_anogan.utils.errors import UserError
from mammo_anogan.utils.io import atomic_write_text

#: Key under which :func:`stamp` stores a fingerprint in a dict payload (checkpoint, network, JSON).
FINGERPRINT_KEY = "fingerprint"
#: File that :func:`write_sidecar` writes into a folder artifact (prepared dataset, score run dir).
SIDECAR_NAME = "fingerprint.json"
FORMAT_VERSION = 1
_MAX_SHOWN = 6  # differing keys listed in one error line


def canonical(value: Any) -> Any:
    """``value`` as plain JSON: containers -> dict/list, integral floats -> int, paths -> str.

    OmegaConf containers are converted (resolved); non-finite floats become strings (JSON has none).
    """
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return int(value) if value.is_integer() else float(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return canonical(value.item())
    return str(value)


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (canonical leaves; an empty mapping stays ``{}``)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        value = canonical(value)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def config_values(cfg: Any, keys: Iterable[str]) -> dict[str, Any]:
    """The values of dotted ``keys`` of an OmegaConf config (subtrees flattened); absent keys -> None."""
    from omegaconf import OmegaConf

    values: dict[str, Any] = {}
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        values.update(flatten({key: value}))
    return values


def file_digest(path: str | os.PathLike[str] | None) -> str | None:
    """SHA-256 (first 16 hex) of a file's bytes, streamed; ``None`` when there is no file."""
    if path is None or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Fingerprint:
    """What produced an artifact: its ``kind`` and the flat, canonical ``values`` that determine it."""

    kind: str
    values: Mapping[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """16 hex characters of SHA-256 over the canonical JSON of ``kind`` and ``values``."""
        text = json.dumps([self.kind, dict(self.values)], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (also ``weights_only``-safe inside a torch payload)."""
        return {
            "kind": self.kind,
            "version": FORMAT_VERSION,
            "digest": self.digest,
            "values": dict(sorted(self.values.items())),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Fingerprint | None:
        """Inverse of :meth:`to_dict`; ``None`` for anything that is not a fingerprint."""
        if isinstance(data, Fingerprint):
            return data
        if not isinstance(data, Mapping) or not isinstance(data.get("values"), Mapping):
            return None
        return cls(str(data.get("kind", "")), flatten(data["values"]))

    def replace(self, changes: Mapping[str, Any]) -> Fingerprint:
        """A copy with some values changed (e.g. a derived artifact with fewer seeds)."""
        return Fingerprint(self.kind, {**self.values, **flatten(changes)})

    def without(self, keys: Collection[str]) -> Fingerprint:
        """A copy without ``keys`` (and without keys below them)."""
        kept = {k: v for k, v in self.values.items() if not any(_under(k, key) for key in keys)}
        return Fingerprint(self.kind, kept)


def _under(name: str, key: str) -> bool:
    return name == key or name.startswith(f"{key}.")


def make_fingerprint(kind: str, values: Mapping[str, Any]) -> Fingerprint:
    """A :class:`Fingerprint` of ``values`` (nested mappings are flattened to dotted keys)."""
    return Fingerprint(kind, flatten(values))


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 48 else text[:45] + "..."


def differences(
    recorded: Fingerprint, expected: Fingerprint, ignore: Collection[str] = ()
) -> list[tuple[str, Any, Any]]:
    """``(key, recorded value, expected value)`` for each key both hold with a different value."""
    shared = sorted(set(recorded.values) & set(expected.values))
    return [
        (key, recorded.values[key], expected.values[key])
        for key in shared
        if recorded.values[key] != expected.values[key] and not any(_under(key, i) for i in ignore)
    ]


def describe_differences(diffs: list[tuple[str, Any, Any]]) -> str:
    """``a.b=1 (now 2), c=x (now y)`` for at most a few keys, then ``and N more``."""
    shown = [f"{key}={_show(old)} (now {_show(new)})" for key, old, new in diffs[:_MAX_SHOWN]]
    more = len(diffs) - _MAX_SHOWN
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def check_fingerprint(
    recorded: Fingerprint | Mapping[str, Any] | None,
    expected: Fingerprint,
    subject: str,
    advice: str,
    *,
    missing: str | None = None,
    ignore: Collection[str] = (),
) -> None:
    """Raise a one-line :class:`UserError` when ``recorded`` differs from ``expected``.

    Args:
        recorded: the artifact's fingerprint (a :class:`Fingerprint`, its dict form, or ``None``).
        expected: the fingerprint the current config gives.
        subject: what is checked, as the sentence's subject (``"run dir R holds scores that were"``
            reads badly; prefer a noun: ``"R/scores.csv"``).
        advice: what to do instead; following it must get past the error.
        missing: ``None`` accepts an artifact without a fingerprint (written before fingerprints
            existed); a string refuses it with that reason (e.g. ``"was written by an older version"``).
        ignore: keys (and keys below them) that this reuse may legitimately change.
    Raises:
        UserError: ``"<subject> was made with different settings: k=old (now new), ...; <advice>"``.
    """
    found = Fingerprint.from_dict(recorded) if recorded is not None else None
    if found is None:
        if missing is not None:
            raise UserError(
                f"{subject} has no fingerprint ({missing}), so its settings cannot be checked; {advice}"
            )
        return
    if found.kind and found.kind != expected.kind:
        raise UserError(f"{subject} holds a {found.kind} fingerprint, not a {expected.kind} one; {advice}")
    diffs = differences(found, expected, ignore)
    if diffs:
        raise UserError(
            f"{subject} was made with different settings: {describe_differences(diffs)}; {advice}"
        )


def stamp(payload: dict[str, Any], fingerprint: Fingerprint | None) -> dict[str, Any]:
    """Store ``fingerprint`` in a dict payload (in place, returned); ``None`` leaves it unstamped."""
    if fingerprint is not None:
        payload[FINGERPRINT_KEY] = fingerprint.to_dict()
    return payload


def read_stamp(payload: Any) -> Fingerprint | None:
    """The fingerprint :func:`stamp` stored in a payload, or ``None``."""
    if not isinstance(payload, Mapping):
        return None
    return Fingerprint.from_dict(payload.get(FINGERPRINT_KEY))


def write_sidecar(
    directory: str | os.PathLike[str], fingerprint: Fingerprint, name: str = SIDECAR_NAME
) -> Path:
    """Write ``<directory>/<name>`` (JSON, atomically): the fingerprint of a folder or CSV artifact."""
    text = json.dumps(fingerprint.to_dict(), indent=2, sort_keys=True) + "\n"
    return atomic_write_text(Path(directory) / name, text)


def read_sidecar(directory: str | os.PathLike[str], name: str = SIDECAR_NAME) -> Fingerprint | None:
    """The fingerprint in ``<directory>/<name>``; ``None`` when absent; a damaged file is a UserError."""
    path = Path(directory) / name
    if not path.is_file():
        return None
    try:
        found = Fingerprint.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as err:
        raise UserError(
            f"cannot read {path}: {type(err).__name__}; delete it only with the artifact it describes"
        ) from err
    if found is None:
        raise UserError(f"{path} is not a fingerprint file; delete it only with the artifact it describes")
    return found
