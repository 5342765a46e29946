"""Custom autograd operations, kept together (each has gradcheck / gradgradcheck tests in tests/test_ops.py).

:func:`grid_sample_2x` — bilinear ``grid_sample`` that can be differentiated twice on every supported
torch version.

Why it exists: lazy R1 (Mescheder et al. 2018) differentiates ``D(augment(x))`` with respect to the
real images with ``create_graph=True`` and then back-propagates the squared gradient norm into D, so
the ADA warp (Karras et al. 2020, "Training GANs with Limited Data") must have a *differentiable
backward*. ``aten::grid_sampler_2d_backward`` has no derivative before torch 2.14 (``RuntimeError:
derivative for aten::grid_sampler_2d_backward is not implemented``), which stopped every ADA + R1
training run in its first iteration on those versions.

The fix uses linearity: for a fixed sampling grid, ``y = grid_sample(x, grid)`` is a linear map
``y = A x``. Its input gradient is ``A^T g`` (``aten::grid_sampler_2d_backward``) and the derivative of
``A^T g`` with respect to ``g`` is ``A`` again, i.e. ``grid_sample`` itself. Two small functions that call
each other in their backward passes are therefore differentiable to any order with respect to the
image. The grid receives a first-order gradient only (ADA's grid is built from random numbers and
never requires one; a second derivative through the grid raises, rather than being silently wrong).

Precision: both directions run in fp32 (or fp64 when given fp64) with autocast disabled, whatever the
caller's autocast state; gradients come back in the dtype of the tensor they belong to. Sampling
positions in bf16 would be off by whole pixels (bf16 has 8 significant bits: at 512 px a coordinate
near the border is resolved to 2-4 px).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: aten enums of ``grid_sampler_2d``: interpolation (bilinear, nearest, bicubic), padding mode.
_INTERPOLATION = {"bilinear": 0}
_PADDING = {"zeros": 0, "border": 1, "reflection": 2}


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """fp64 if any input is fp64 (gradcheck), else fp32 (never bf16/fp16)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _no_autocast(device: torch.device) -> Any:
    return torch.autocast(device_type=device.type, enabled=False)


class _GridSample(torch.autograd.Function):
    """``y = A x`` (bilinear ``grid_sample``); backward is :class:`_GridSampleAdjoint` (``A^T g``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, grid: Tensor, padding_mode: str, align_corners: bool) -> Tensor:
        dtype = _compute_dtype(x, grid)
        with _no_autocast(x.device):
            xc, gridc = x.to(dtype), grid.to(dtype)
            y = F.grid_sample(
                xc, gridc, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners
            )
        ctx.save_for_backward(xc, gridc)
        ctx.padding_mode = padding_mode
        ctx.align_corners = align_corners
        ctx.x_dtype = x.dtype
        ctx.grid_dtype = grid.dtype
        return y

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        xc, gridc = ctx.saved_tensors
        grad_x = grad_grid = None
        if ctx.needs_input_grad[0]:
            grad_x = _GridSampleAdjoint.apply(grad_y, xc, gridc, ctx.padding_mode, ctx.align_corners)
            grad_x = grad_x.to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            grad_grid = _grid_gradient(grad_y, xc, gridc, ctx.padding_mode, ctx.align_corners)
            grad_grid = grad_grid.to(ctx.grid_dtype)
        return grad_x, grad_grid, None, None


class _GridSampleAdjoint(torch.autograd.Function):
    """``A^T g`` (the input gradient of bilinear ``grid_sample``); its derivative in ``g`` is ``A``."""

    @staticmethod
    def forward(
        ctx: Any, grad_y: Tensor, x: Tensor, grid: Tensor, padding_mode: str, align_corners: bool
    ) -> Tensor:
        dtype = x.dtype
        with _no_autocast(grad_y.device):
            grad_x, _ = torch.ops.aten.grid_sampler_2d_backward(
                grad_y.to(dtype),
                x,
                grid,
                _INTERPOLATION["bilinear"],
                _PADDING[padding_mode],
                align_corners,
                [True, False],
            )
        ctx.save_for_backward(grid)
        ctx.padding_mode = padding_mode
        ctx.align_corners = align_corners
        ctx.grad_dtype = grad_y.dtype
        return grad_x

    @staticmethod
    def backward(ctx: Any, grad_grad_x: Tensor) -> tuple[Tensor | None, None, None, None, None]:
        (grid,) = ctx.saved_tensors
        if ctx.needs_input_grad[2]:
            raise NotImplementedError(
                "grid_sample_2x: second derivative with respect to the sampling grid is not implemented"
            )
        grad_grad_y = None
        if ctx.needs_input_grad[0]:
            grad_grad_y = _GridSample.apply(grad_grad_x, grid, ctx.padding_mode, ctx.align_corners)
            grad_grad_y = grad_grad_y.to(ctx.grad_dtype)
        return grad_grad_y, None, None, None, None


def _grid_gradient(grad_y: Tensor, x: Tensor, grid: Tensor, padding_mode: str, align_corners: bool) -> Tensor:
    """First-order gradient with respect to the grid (no further derivative)."""
    with torch.no_grad(), _no_autocast(grad_y.device):
        _, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
            grad_y.to(x.dtype),
            x,
            grid,
            _INTERPOLATION["bilinear"],
            _PADDING[padding_mode],
            align_corners,
            [False, True],
        )
    return grad_grid


def grid_sample_2x(
    x: Tensor, grid: Tensor, padding_mode: str = "reflection", align_corners: bool = False
) -> Tensor:
    """Bilinear ``F.grid_sample`` that is twice (indeed arbitrarily often) differentiable in ``x``.

    Args:
        x: images ``[B, C, H_in, W_in]`` (any float dtype; computed in fp32, fp64 stays fp64).
        grid: normalised sampling positions ``[B, H_out, W_out, 2]`` in ``[-1, 1]`` (x, y order).
        padding_mode: ``"zeros" | "border" | "reflection"`` (as ``F.grid_sample``).
        align_corners: as ``F.grid_sample``.

    Returns:
        ``[B, C, H_out, W_out]`` in the compute dtype (fp32, or fp64 for fp64 inputs); equal to
        ``F.grid_sample(x.float(), grid.float(), mode="bilinear", ...)``.

    Raises:
        ValueError: for an unknown ``padding_mode`` or wrongly shaped inputs.
        NotImplementedError: when a second derivative with respect to ``grid`` is requested.
    """
    if padding_mode not in _PADDING:
        raise ValueError(f"padding_mode must be one of {sorted(_PADDING)}, got {padding_mode!r}")
    if x.ndim != 4 or grid.ndim != 4 or grid.shape[-1] != 2 or grid.shape[0] != x.shape[0]:
        raise ValueError(
            f"grid_sample_2x expects x [B, C, H, W] and grid [B, H_out, W_out, 2], got "
            f"{tuple(x.shape)} and {tuple(grid.shape)}"
        )
    return _GridSample.apply(x, grid, padding_mode, bool(align_corners))
