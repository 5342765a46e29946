"""Export / import of trained networks as plain weights: ``{"kind", "config", "state_dict"}``.

Only tensors and plain containers are stored, so files load with ``weights_only=True`` (a crafted
pickle cannot run code) and the architecture is rebuilt from ``config`` with the current code. An
export made by training also carries ``"fingerprint"``: the training run's fingerprint plus the
image count it was taken at (:mod:`mammo_anogan.utils.fingerprint`). Loading refuses NaN/Inf weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from mammo_anogan.models.stylegan2.discriminator import Discriminator
from mammo_anogan.models.stylegan2.generator import Generator
from mammo_anogan.training.nonfinite import check_finite_loaded, check_finite_weights
from mammo_anogan.utils.errors import UserError
from mammo_anogan.utils.fingerprint import Fingerprint, read_stamp, stamp
from mammo_anogan.utils.io import atomic_torch_save, safe_torch_load

KIND_GENERATOR = "generator"
KIND_DISCRIMINATOR = "discriminator"


def _kind_of(net: nn.Module) -> str:
    if isinstance(net, Generator):
        return KIND_GENERATOR
    if isinstance(net, Discriminator):
        return KIND_DISCRIMINATOR
    raise TypeError(f"save_network expects a Generator or Discriminator, got {type(net).__name__}")


def save_network(
    net: Generator | Discriminator, path: str | os.PathLike[str], fingerprint: Fingerprint | None = None
) -> Path:
    """Write ``{"kind", "config", "state_dict"[, "fingerprint"]}`` atomically (tensors on CPU).

    Refuses NaN/Inf weights. ``fingerprint``: what produced the network (the training run's settings
    and image count), read back by :func:`read_network_fingerprint`.
    """
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    check_finite_weights(state, f"{_kind_of(net)} export {Path(path).name}")
    payload = {"kind": _kind_of(net), "config": dict(net.config), "state_dict": state}
    return atomic_torch_save(stamp(payload, fingerprint), path)


def read_network_fingerprint(path: str | os.PathLike[str]) -> Fingerprint | None:
    """The fingerprint stored in an exported network (memory-mapped read); ``None`` for older files."""
    return read_stamp(safe_torch_load(path, mmap=True))


def _load(path: str | os.PathLike[str], kind: str, cls: type[nn.Module], map_location: Any) -> Any:
    payload = safe_torch_load(path, map_location=map_location)
    if not isinstance(payload, dict) or "config" not in payload or "state_dict" not in payload:
        raise UserError(f"{path} is not an exported {kind} (expected keys 'config' and 'state_dict')")
    found = payload.get("kind", kind)
    if found != kind:
        raise UserError(f"{path} holds a {found}, not a {kind}")
    check_finite_loaded(
        payload["state_dict"] if isinstance(payload["state_dict"], dict) else {},
        f"{kind} {path}",
        f"it comes from a diverged or damaged run: pass the {kind}.pt of an earlier or another run",
    )
    config = payload["config"]
    if not isinstance(config, dict):
        raise UserError(f"{path}: 'config' must be a dict of constructor arguments")
    try:
        net = cls(**config)
    except TypeError as err:
        raise UserError(f"{path}: config does not match this {kind}: {err}") from err
    try:
        net.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"{path}: weights do not match the stored {kind} config: {first}") from err
    return net.eval()


def load_generator(path: str | os.PathLike[str], map_location: Any = "cpu") -> Generator:
    """Read a ``generator.pt`` written by :func:`save_network`; returns the Generator in eval mode."""
    return _load(path, KIND_GENERATOR, Generator, map_location)


def load_discriminator(path: str | os.PathLike[str], map_location: Any = "cpu") -> Discriminator:
    """Read a ``discriminator.pt`` written by :func:`save_network`; returns the Discriminator in eval mode."""
    return _load(path, KIND_DISCRIMINATOR, Discriminator, map_location)
