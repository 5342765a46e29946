"""Sliced Wasserstein distance on Laplacian pyramids (the SWD of Karras et al., ProGAN, ICLR 2018).

Why SWD for mammograms: it compares the distributions of small local patches at every scale of a
Laplacian pyramid, so it sees texture (parenchyma, noise, blur) directly in pixel space, needs no
network trained on natural images, and stays informative with the 64-128 images a training-time
check can afford. Method (implemented from the paper's description):

1. Build a Laplacian pyramid of each image (5-tap binomial filter), down to ``min_resolution``.
2. At every level, take ``patches_per_image`` random 7x7 neighbourhoods per image as descriptors.
3. Normalise each set's descriptors per level and channel (zero mean, unit std over the set), so the
   distance measures the *shape* of the patch distribution, not global brightness.
4. Project both descriptor sets on random unit directions, sort the projections and average their
   absolute differences (the 1-D Wasserstein-1 distance along each direction). ProGAN draws 4 x 128
   directions; we draw the same 512 at once.
5. Report the mean over levels, multiplied by 1e3 as ProGAN does.

Everything is batched: one convolution per pyramid level for all images, one gather for all
patches, one matrix product and one sort per level; a reference set's sorted projections can be
cached (:func:`sorted_projections`). Randomness comes from a seeded
``torch.Generator``: the same inputs and seed give the same number.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SWD_SCALE = 1e3
_BINOMIAL_5 = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _gaussian_kernel(channels: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    kernel_2d = torch.outer(_BINOMIAL_5, _BINOMIAL_5).to(device=device, dtype=dtype)
    return kernel_2d.expand(channels, 1, 5, 5).contiguous()


def _blur(images: Tensor, kernel: Tensor) -> Tensor:
    padded = F.pad(images, (2, 2, 2, 2), mode="reflect")
    return F.conv2d(padded, kernel, groups=images.shape[1])


def _downsample(images: Tensor, kernel: Tensor) -> Tensor:
    return _blur(images, kernel)[:, :, ::2, ::2]


def _upsample(images: Tensor, kernel: Tensor) -> Tensor:
    batch, channels, height, width = images.shape
    zeros = images.new_zeros(batch, channels, height * 2, width * 2)
    zeros[:, :, ::2, ::2] = images * 4.0  # zero-insertion keeps 1/4 of the energy: restore it
    return _blur(zeros, kernel)


def laplacian_pyramid(images: Tensor, min_resolution: int = 16) -> list[Tensor]:
    """Laplacian pyramid ``[finest band-pass, ..., coarsest low-pass]`` of ``[N, C, H, W]`` images.

    Levels halve the resolution until it would drop below ``min_resolution``; the last level is the
    low-pass residual at that resolution (ProGAN stops at 16 px).
    """
    if images.ndim != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {tuple(images.shape)}")
    kernel = _gaussian_kernel(images.shape[1], images.device, images.dtype)
    levels: list[Tensor] = []
    current = images
    while min(current.shape[-2:]) // 2 >= min_resolution and min(current.shape[-2:]) % 2 == 0:
        coarser = _downsample(current, kernel)
        levels.append(current - _upsample(coarser, kernel))
        current = coarser
    levels.append(current)
    return levels


def sample_patch_descriptors(
    level: Tensor, patches_per_image: int, patch_size: int, generator: torch.Generator
) -> Tensor:
    """Random ``patch_size`` x ``patch_size`` neighbourhoods: ``[N * patches_per_image, C, k, k]``.

    All patches of all images are gathered with one index operation (no loop over images).
    """
    num_images, channels, height, width = level.shape
    k = min(patch_size, height, width)
    offsets = torch.arange(k, device=level.device)
    top = torch.randint(0, height - k + 1, (num_images, patches_per_image), generator=generator)
    left = torch.randint(0, width - k + 1, (num_images, patches_per_image), generator=generator)
    rows = top.to(level.device)[..., None, None] + offsets[:, None]  # [N, P, k, 1]
    cols = left.to(level.device)[..., None, None] + offsets[None, :]  # [N, P, 1, k]
    image_index = torch.arange(num_images, device=level.device)[:, None, None, None]
    patches = level.permute(0, 2, 3, 1)[image_index, rows, cols]  # [N, P, k, k, C]
    return patches.reshape(num_images * patches_per_image, k, k, channels).permute(0, 3, 1, 2)


def normalize_descriptors(descriptors: Tensor) -> Tensor:
    """Zero-mean, unit-std per channel over the whole set, flattened to ``[M, C * k * k]``."""
    mean = descriptors.mean(dim=(0, 2, 3), keepdim=True)
    std = descriptors.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-8)
    return ((descriptors - mean) / std).flatten(1)


def pyramid_descriptors(
    images: Tensor,
    patches_per_image: int = 128,
    patch_size: int = 7,
    min_resolution: int = 16,
    seed: int = 0,
) -> list[Tensor]:
    """Normalised patch descriptors per pyramid level (finest first); cacheable for a reference set."""
    generator = torch.Generator().manual_seed(seed)
    levels = laplacian_pyramid(images.float(), min_resolution=min_resolution)
    return [
        normalize_descriptors(sample_patch_descriptors(level, patches_per_image, patch_size, generator))
        for level in levels
    ]


def random_directions(dim: int, num_projections: int, seed: int) -> Tensor:
    """``[dim, num_projections]`` random unit vectors (seeded: the same seed gives the same directions)."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(dim, num_projections, generator=generator)
    return directions / directions.norm(dim=0, keepdim=True)


def sorted_projections(descriptors: Tensor, directions: Tensor) -> Tensor:
    """Projections of ``[M, D]`` descriptors on ``[D, P]`` directions, sorted: ``[P, M]``.

    Sorted projections are all a set contributes to the distance, so a fixed reference set's can be
    computed once and reused against every new candidate set.
    """
    projected = directions.to(descriptors).t() @ descriptors.t()  # [P, M], rows contiguous for the sort
    return torch.sort(projected, dim=1).values


def wasserstein_from_sorted(sorted_a: Tensor, sorted_b: Tensor) -> Tensor:
    """Mean over directions of the 1-D Wasserstein-1 distance (sets of equal size, matched by rank)."""
    if sorted_a.shape != sorted_b.shape:
        shapes = f"{tuple(sorted_a.shape)} vs {tuple(sorted_b.shape)}"
        raise ValueError(f"sorted projections differ in shape: {shapes}")
    return (sorted_a - sorted_b).abs().mean()


def sliced_wasserstein(
    descriptors_a: Tensor, descriptors_b: Tensor, num_projections: int = 512, seed: int = 0
) -> Tensor:
    """Sliced Wasserstein distance between two descriptor sets ``[M, D]`` along random unit directions.

    Sets of different sizes are compared on the same number of descriptors (a seeded random subset
    of the larger one), because sorted projections are matched rank by rank.
    """
    count = min(descriptors_a.shape[0], descriptors_b.shape[0])
    if count < 2:
        raise ValueError("sliced Wasserstein distance needs at least 2 descriptors per set")
    generator = torch.Generator().manual_seed(seed)
    a = _subsample(descriptors_a, count, generator)
    b = _subsample(descriptors_b, count, generator)
    directions = random_directions(a.shape[1], num_projections, seed)
    return wasserstein_from_sorted(sorted_projections(a, directions), sorted_projections(b, directions))


def _subsample(descriptors: Tensor, count: int, generator: torch.Generator) -> Tensor:
    if descriptors.shape[0] == count:
        return descriptors
    index = torch.randperm(descriptors.shape[0], generator=generator)[:count]
    return descriptors[index.to(descriptors.device)]


def swd_from_descriptors(
    descriptors_a: list[Tensor], descriptors_b: list[Tensor], num_projections: int = 512, seed: int = 0
) -> dict[str, float]:
    """SWD per level (``swd_level<i>``, finest = 0) and their mean (``swd``), all scaled by 1e3."""
    _check_depths(len(descriptors_a), len(descriptors_b))
    per_level = [
        float(sliced_wasserstein(a, b, num_projections=num_projections, seed=seed + index)) * SWD_SCALE
        for index, (a, b) in enumerate(zip(descriptors_a, descriptors_b))
    ]
    return _summarise(per_level)


def swd_from_sorted(sorted_a: list[Tensor], sorted_b: list[Tensor]) -> dict[str, float]:
    """As :func:`swd_from_descriptors`, from per-level :func:`sorted_projections` (same directions)."""
    _check_depths(len(sorted_a), len(sorted_b))
    return _summarise([float(wasserstein_from_sorted(a, b)) * SWD_SCALE for a, b in zip(sorted_a, sorted_b)])


def _check_depths(depth_a: int, depth_b: int) -> None:
    if depth_a != depth_b:
        raise ValueError(
            f"the two image sets give different pyramid depths ({depth_a} vs {depth_b} levels): "
            f"they must have the same resolution"
        )


def _summarise(per_level: list[float]) -> dict[str, float]:
    result = {f"swd_level{index}": value for index, value in enumerate(per_level)}
    result["swd"] = sum(per_level) / len(per_level)
    return result


def sliced_wasserstein_distance(
    images_a: Tensor,
    images_b: Tensor,
    patches_per_image: int = 128,
    patch_size: int = 7,
    min_resolution: int = 16,
    num_projections: int = 512,
    seed: int = 0,
) -> dict[str, float]:
    """ProGAN's SWD between two image sets ``[N, C, H, W]`` (any value range: descriptors are normalised)."""
    if images_a.shape[1:] != images_b.shape[1:]:
        raise ValueError(
            f"image sets differ in shape: {tuple(images_a.shape[1:])} vs {tuple(images_b.shape[1:])}"
        )
    kwargs = {
        "patches_per_image": patches_per_image,
        "patch_size": patch_size,
        "min_resolution": min_resolution,
    }
    descriptors_a = pyramid_descriptors(images_a, seed=seed, **kwargs)
    descriptors_b = pyramid_descriptors(images_b, seed=seed, **kwargs)  # same patch positions for both
    return swd_from_descriptors(descriptors_a, descriptors_b, num_projections=num_projections, seed=seed)
