"""Exponential moving average of the generator (``G_ema``), the network used for samples and export.

StyleGAN2 expresses the EMA horizon as a *half-life in images* (``ema_kimg``) rather than a fixed
decay, so it does not change with the batch size: ``beta = 0.5 ** (batch / ema_nimg)``. Early in
training the half-life is capped at ``cur_nimg * rampup`` (StyleGAN2-ADA), otherwise ``G_ema`` would
be dominated by the random initialisation for the first tens of kimg.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def ema_beta(batch_size: int, cur_nimg: int, ema_kimg: float, ema_rampup: float | None = None) -> float:
    """Decay applied to ``G_ema`` for one step of ``batch_size`` images (global batch).

    ``ema_nimg = ema_kimg * 1000``, capped at ``cur_nimg * ema_rampup`` when a ramp-up is set;
    ``beta = 0.5 ** (batch_size / ema_nimg)`` (0 at the very first step: ``G_ema`` copies ``G``).
    """
    ema_nimg = float(ema_kimg) * 1000.0
    if ema_rampup is not None and ema_rampup > 0:
        ema_nimg = min(ema_nimg, float(cur_nimg) * float(ema_rampup))
    return 0.5 ** (float(batch_size) / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(ema_model: nn.Module, model: nn.Module, beta: float, skip: Tensor | None = None) -> None:
    """``ema = beta * ema + (1 - beta) * model`` for parameters; buffers (``w_avg``, noise) are copied.

    One fused ``_foreach`` call per kind, not a Python loop of small kernels per tensor; both models
    should share a memory format (channels_last on GPU), or the foreach kernels fall off their fast
    path. ``skip`` (a 0-d device tensor, 1 = skip) leaves the parameters unchanged without a host
    sync: the step is computed with the weight ``(1 - beta) * (1 - skip)``.
    """
    ema_params = list(ema_model.parameters())
    params = [p.detach() for p in model.parameters()]
    if len(ema_params) != len(params):
        raise ValueError("EMA model and model have different parameter lists")
    if ema_params and skip is None:
        torch._foreach_lerp_(ema_params, params, 1.0 - float(beta))
    elif ema_params:
        assert skip is not None
        weight = (1.0 - skip.float()) * (1.0 - float(beta))
        deltas = torch._foreach_sub(params, ema_params)
        torch._foreach_mul_(deltas, weight)
        torch._foreach_add_(ema_params, deltas)
    ema_buffers = list(ema_model.buffers())
    buffers = list(model.buffers())
    if len(ema_buffers) != len(buffers):
        raise ValueError("EMA model and model have different buffer lists")
    if ema_buffers:
        torch._foreach_copy_(ema_buffers, buffers)
