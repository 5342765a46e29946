"""Capabilities that differ between the torch versions the package accepts (``torch>=`` in pyproject).

Each probe answers for the installed torch and device type, once (cached); callers pick a fallback
when it says no, so the same code runs on the oldest supported torch and the newest.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


@functools.lru_cache(maxsize=8)
def supports_fused_adam(device_type: str) -> bool:
    """Whether ``torch.optim.Adam(fused=True)`` with a ``found_inf`` skip works on this device type.

    True on CUDA for every supported torch; on the CPU from torch 2.4. Probed once with a one-element
    parameter: a step with ``found_inf = 1`` must leave it unchanged, a step with 0 must move it.
    """
    if device_type == "cuda" and not torch.cuda.is_available():
        return False
    try:
        param = nn.Parameter(torch.ones(1, device=device_type))
        optimizer = torch.optim.Adam([param], lr=0.1, fused=True)
        param.grad = torch.ones_like(param)
        optimizer.found_inf = torch.ones((), device=device_type)  # type: ignore[attr-defined]
        optimizer.step()
        skipped = bool(param.detach().cpu().item() == 1.0)
        optimizer.found_inf = torch.zeros((), device=device_type)  # type: ignore[attr-defined]
        optimizer.step()
        return skipped and bool(param.detach().cpu().item() != 1.0)
    except (RuntimeError, TypeError, ValueError):
        return False
