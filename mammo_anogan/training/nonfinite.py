"""Detection of NaN/Inf in training: the error raised, and the check run before any weights are saved.

A GAN that diverges produces NaN within a few steps, and a NaN checkpoint silently overwrites the last
good ``last.ckpt``. The module checks every phase's loss and gradients (one host sync per phase) and
either stops with :class:`NonFiniteError` or skips the step (``model.on_nonfinite``); the checkpoint
writer and the network export refuse weights that are not finite, whatever their origin.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from mammo_anogan.utils.errors import UserError

#: Values of ``model.on_nonfinite``.
ON_NONFINITE_CHOICES = ("stop", "skip")


class NonFiniteError(UserError):
    """Training produced a NaN/Inf loss, gradient or weight; the message names the kimg and checkpoint."""


def nonfinite_tensor_names(state: Mapping[str, object]) -> list[str]:
    """Names of the floating-point tensors of ``state`` holding a NaN or Inf (one host sync in total)."""
    names = [k for k, v in state.items() if isinstance(v, Tensor) and v.is_floating_point() and v.numel()]
    if not names:
        return []
    flags = torch.stack([torch.isfinite(state[k]).all().cpu() for k in names])  # type: ignore[union-attr]
    if bool(flags.all()):
        return []
    return [name for name, ok in zip(names, flags.tolist()) if not ok]


def _shown(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_finite_weights(state: Mapping[str, object], what: str) -> None:
    """Raise :class:`NonFiniteError` when ``state`` (a state dict) holds a non-finite tensor."""
    bad = nonfinite_tensor_names(state)
    if bad:
        raise NonFiniteError(f"refusing to write {what}: non-finite weights in {_shown(bad)}")


def check_finite_loaded(state: Mapping[str, object], what: str, advice: str) -> None:
    """At load time: raise :class:`NonFiniteError` naming the non-finite tensors of ``state``.

    Every loaded network goes through this before it is used, so a damaged or diverged file is named
    as the cause at start-up instead of surfacing later as dropped seeds or a skipped training step.
    """
    bad = nonfinite_tensor_names(state)
    if bad:
        raise NonFiniteError(f"{what} holds non-finite weights (NaN/Inf) in {_shown(bad)}; {advice}")
