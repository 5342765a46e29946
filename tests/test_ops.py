"""Custom autograd ops (mammo_anogan.models.ops): gradcheck, gradgradcheck, equality, R1 through ADA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mammo_anogan.models.losses import r1_squared_grad_norm
from mammo_anogan.models.ops import grid_sample_2x
from mammo_anogan.models.stylegan2 import AugmentPipe, Discriminator


def _grid(batch: int, height: int, width: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(batch, generator=g) * 6.28
    theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = angle.cos() * 1.1
    theta[:, 0, 1] = -angle.sin()
    theta[:, 1, 0] = angle.sin()
    theta[:, 1, 1] = angle.cos() * 0.9
    theta[:, :, 2] = torch.rand(batch, 2, generator=g, dtype=torch.float64) * 0.4 - 0.2
    return F.affine_grid(theta, [batch, 1, height, width], align_corners=False).to(dtype)


@pytest.mark.parametrize("padding_mode", ["reflection", "zeros", "border"])
def test_equals_grid_sample(padding_mode: str) -> None:
    x = torch.randn(3, 2, 9, 11)
    grid = _grid(3, 7, 8, torch.float32)
    expected = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    assert torch.equal(grid_sample_2x(x, grid, padding_mode), expected)


@pytest.mark.parametrize("padding_mode", ["reflection", "zeros"])
def test_gradcheck_and_gradgradcheck_float64(padding_mode: str) -> None:
    x = torch.randn(2, 1, 5, 6, dtype=torch.float64, requires_grad=True)
    grid = _grid(2, 4, 5, torch.float64)
    assert torch.autograd.gradcheck(lambda t: grid_sample_2x(t, grid, padding_mode), (x,))
    assert torch.autograd.gradgradcheck(lambda t: grid_sample_2x(t, grid, padding_mode), (x,))
    # first-order gradient with respect to the grid too
    grid_req = grid.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda g: grid_sample_2x(x.detach(), g, padding_mode), (grid_req,))


def test_second_derivative_through_grid_raises() -> None:
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    grid = _grid(1, 4, 4, torch.float64).requires_grad_(True)
    (gx,) = torch.autograd.grad(grid_sample_2x(x, grid).square().sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="sampling grid"):
        torch.autograd.grad(gx.sum(), grid)


def test_bf16_inputs_under_autocast_compute_in_fp32() -> None:
    x = torch.randn(2, 1, 16, 16).requires_grad_(True)
    grid = _grid(2, 16, 16, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = grid_sample_2x(x.to(torch.bfloat16), grid.to(torch.bfloat16))
        assert y.dtype == torch.float32
        (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
        assert gx.dtype == torch.float32
        gx.square().sum().backward()  # the second backward under autocast must not raise
    assert x.grad is not None and x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


def _graph_node_names(tensor: torch.Tensor) -> set[str]:
    names, stack, seen = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        names.add(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    return names


def test_r1_through_ada_has_no_aten_grid_sampler_double_backward() -> None:
    """Regression (issue 10/17): on torch < 2.14 the R1 graph held aten's un-implemented double backward.

    Whatever torch is installed, the R1 gradient's graph must not contain the double backward of
    ``aten::grid_sampler_2d_backward`` (``GridSampler2DBackwardBackward0`` where implemented,
    ``NotImplemented`` where not), and the R1 penalty must back-propagate into D.
    """
    torch.manual_seed(0)
    D = Discriminator(img_resolution=16, channel_base=64, channel_max=16)
    aug = AugmentPipe(p=1.0)
    reals = torch.randn(4, 1, 16, 16).requires_grad_(True)
    logits = D(aug(reals))
    (grads,) = torch.autograd.grad(logits.sum(), reals, create_graph=True)
    names = _graph_node_names(grads)
    forbidden = {n for n in names if n.startswith("GridSampler2DBackwardBackward") or n == "NotImplemented"}
    assert not forbidden, f"R1 graph uses aten's grid_sample double backward: {forbidden}"
    assert any("GridSample" in n for n in names)  # the warp is in the graph (p = 1)
    penalty = r1_squared_grad_norm(reals, D(aug(reals))).mean()
    penalty.backward()
    weights = {name: p for name, p in D.named_parameters() if name.endswith("weight")}
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in weights.values())
    assert weights["blocks.0.fromrgb.weight"].grad.abs().sum() > 0
