"""Pluggable projection losses: how far a synthesised image is from the target, per sample.

Every loss maps ``(synth [M,1,H,W], target [M,1,H,W])`` in ``[-1, 1]`` to a per-sample loss ``[M]``.
The projector sums it over samples (never averages), so the gradient that reaches one sample's latent
does not depend on how many other images and seeds share the batch: batched projection equals
projecting each image and seed alone.

``lpips_vgg`` is the seed paper's loss (the StyleGAN2 projector's perceptual loss); ``disc_features``
is the original AnoGAN feature-matching loss on the trained discriminator and needs no downloaded
weights; ``ms_ssim`` and ``mse`` are cheap alternatives. Any of them can be combined with a weighted
pixel term (L1 or L2).
"""

from __future__ import annotations

import urllib.error
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mammo_anogan.utils.errors import ConfigError, UserError
from mammo_anogan.utils.io import safe_torch_load

LOSS_NAMES = ("lpips_vgg", "lpips_alex", "disc_features", "ms_ssim", "mse")

# torchvision's ImageNet trunks that LPIPS builds on (file names as torch.hub caches them).
_TRUNK_WEIGHTS = {
    "vgg": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth"),
    "alex": ("alexnet-owt-7be5be79.pth", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"),
}


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


TargetLoss = Callable[[torch.Tensor], torch.Tensor]


def loss_against(loss_fn: Callable[..., torch.Tensor], target: torch.Tensor) -> TargetLoss:
    """``synth -> loss_fn(synth, target)`` with the target's features computed once.

    The projector evaluates the loss against the same targets at every step; losses with a
    ``with_target`` method (LPIPS, discriminator features) precompute the target side there instead
    of re-running the network on the targets at each of the 1000 steps.
    """
    with_target = getattr(loss_fn, "with_target", None)
    if with_target is not None:
        return with_target(target)
    return lambda synth: loss_fn(synth, target)


class MseLoss(nn.Module):
    """Mean squared pixel error per sample."""

    def forward(self, synth: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _per_sample_mean((synth - target).square())


class PixelLoss(nn.Module):
    """Mean L1 or L2 pixel error per sample (the optional extra term beside a perceptual loss)."""

    def __init__(self, norm: str = "l1") -> None:
        super().__init__()
        if norm not in ("l1", "l2"):
            raise ConfigError(f"projection.pixel_norm must be l1 or l2, got {norm!r}")
        self.norm = norm

    def forward(self, synth: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        diff = synth - target
        return _per_sample_mean(diff.abs() if self.norm == "l1" else diff.square())


_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


class MsSsimLoss(nn.Module):
    """``1 - MS-SSIM`` per sample (torchmetrics), on images shifted to ``[0, 1]``.

    MS-SSIM downsamples four times with an 11-px window, so small images (tests, 64-px demos) use a
    smaller window and fewer scales (the first ``k`` of the standard weights, renormalised), where
    the full five-scale version would be undefined.
    """

    def __init__(self) -> None:
        super().__init__()
        from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

        self._ms_ssim = multiscale_structural_similarity_index_measure

    def forward(self, synth: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        size = min(synth.shape[-2:])
        kernel = 11 if size >= 176 else 7 if size >= 56 else 3
        # torchmetrics needs the coarsest scale wider than the window and size > (kernel-1)*(scales-1)^2
        scales = max(
            s
            for s in range(1, 6)
            if s == 1 or (size // 2 ** (s - 1) > kernel and size > (kernel - 1) * (s - 1) ** 2)
        )
        weights = _MS_SSIM_WEIGHTS[:scales]
        betas = tuple(w / sum(weights) for w in weights)
        value = self._ms_ssim(
            (synth.float() + 1) / 2,
            (target.float() + 1) / 2,
            kernel_size=kernel,
            sigma=1.5 * kernel / 11,  # torchmetrics sizes the Gaussian window from sigma
            betas=betas,
            data_range=1.0,
            reduction="none",
        )
        return 1.0 - value


class LpipsLoss(nn.Module):
    """LPIPS distance per sample, as the StyleGAN2 projector uses it.

    Both images are downsampled (area) to at most ``resize`` px, as in the official projector, and the
    single mammography channel is repeated to the three channels the ImageNet trunk expects.
    """

    def __init__(self, net: nn.Module, resize: int | None = 256) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.resize = resize

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.resize is not None and x.shape[-1] > self.resize:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="area")
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    def forward(self, synth: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.net(self._prepare(synth), self._prepare(target)).flatten()

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The unit-normalised trunk features LPIPS compares (its ``forward`` without the distance)."""
        import lpips

        net = self.net
        x = self._prepare(x)
        if getattr(net, "version", "0.1") == "0.1":
            x = net.scaling_layer(x)
        return [lpips.normalize_tensor(f) for f in net.net.forward(x)]

    def with_target(self, target: torch.Tensor) -> TargetLoss:
        """LPIPS against a fixed target, its trunk features computed once (equals ``forward``)."""
        import lpips

        net = self.net
        if getattr(net, "spatial", False) or not getattr(net, "lpips", True):
            return lambda synth: self(synth, target)
        with torch.no_grad():
            target_features = [f.detach() for f in self._features(target)]

        def distance(synth: torch.Tensor) -> torch.Tensor:
            total = None
            for layer, (a, b) in enumerate(zip(self._features(synth), target_features)):
                value = lpips.spatial_average(net.lins[layer]((a - b) ** 2), keepdim=True)
                total = value if total is None else total + value
            assert total is not None
            return total.flatten()

        return distance


class DiscFeatureLoss(nn.Module):
    """AnoGAN feature matching: mean squared distance between the discriminator's block features.

    Only the block outputs (``D(img, return_features=True)``) are compared, not the logit, so the
    minibatch-std layer of the epilogue, which mixes samples, never couples the seeds of a batch.
    """

    def __init__(self, discriminator: nn.Module) -> None:
        super().__init__()
        self.discriminator = discriminator.eval().requires_grad_(False)

    def forward(self, synth: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.with_target(target)(synth)

    def with_target(self, target: torch.Tensor) -> TargetLoss:
        """Feature matching against a fixed target, its features computed once."""
        with torch.no_grad():
            _, target_feats = self.discriminator(target, return_features=True)
        target_feats = [f.detach() for f in target_feats]

        def distance(synth: torch.Tensor) -> torch.Tensor:
            _, synth_feats = self.discriminator(synth, return_features=True)
            total = synth.new_zeros(synth.shape[0], dtype=torch.float32)
            for a, b in zip(synth_feats, target_feats):
                total = total + _per_sample_mean((a.float() - b.float()).square())
            return total / max(1, len(synth_feats))

        return distance


class CombinedLoss(nn.Module):
    """A main loss plus ``pixel_weight`` times a pixel term, per sample."""

    def __init__(self, main: nn.Module, pixel: nn.Module, pixel_weight: float) -> None:
        super().__init__()
        self.main = main
        self.pixel = pixel
        self.pixel_weight = float(pixel_weight)

    def forward(self, synth: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.main(synth, target) + self.pixel_weight * self.pixel(synth, target)

    def with_target(self, target: torch.Tensor) -> TargetLoss:
        main, pixel = loss_against(self.main, target), loss_against(self.pixel, target)
        return lambda synth: main(synth) + self.pixel_weight * pixel(synth)


def _offline_error(trunk: str) -> UserError:
    filename, _ = _TRUNK_WEIGHTS[trunk]
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return UserError(
        f"projection.loss=lpips_{trunk} needs torchvision's ImageNet weights {filename}, which could not "
        f"be downloaded (offline?): put the file in {checkpoints}/ (or $TORCH_HOME/hub/checkpoints/), or "
        f"set projection.lpips_weights=/path/to/{filename}, or use projection.loss=disc_features"
    )


def _load_trunk_state(trunk: str, weights_path: str | None) -> dict[str, torch.Tensor]:
    """The torchvision trunk's state dict, from a local file or torch.hub's cache/download.

    A failed download (no network) becomes a one-line :class:`UserError` naming the file to provide.
    """
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise UserError(f"projection.lpips_weights: file not found: {path}")
        state = safe_torch_load(path)
        from mammo_anogan.training.nonfinite import check_finite_loaded

        check_finite_loaded(state, f"projection.lpips_weights {path}", "provide an intact copy of the file")
        return state
    _, url = _TRUNK_WEIGHTS[trunk]
    try:
        return torch.hub.load_state_dict_from_url(url, progress=False, check_hash=True, weights_only=True)
    except (OSError, urllib.error.URLError, TimeoutError, ConnectionError) as err:
        raise _offline_error(trunk) from err


def build_lpips_network(trunk: str, weights_path: str | None = None) -> nn.Module:
    """An ``lpips.LPIPS`` network with the calibrated linear layers and ImageNet trunk weights.

    The linear layers ship inside the ``lpips`` package; the trunk weights come from ``weights_path``
    or torch.hub (cache first, then download). The trunk is built random-initialised and then filled
    from the state dict, so a missing download fails here with a clear message instead of deep inside
    torchvision.
    """
    import lpips

    state = _load_trunk_state(trunk, weights_path)
    net = lpips.LPIPS(net=trunk, pretrained=True, pnet_rand=True, verbose=False)
    # lpips keeps torchvision's layer indices as child names inside its slices: features.<i> -> slice.<i>.
    for slice_module in net.net.children():
        for index, layer in slice_module.named_children():
            for param_name, param in layer.named_parameters(recurse=False):
                key = f"features.{index}.{param_name}"
                if key not in state:
                    raise UserError(
                        f"LPIPS trunk weights do not match torchvision's {trunk}: missing {key} "
                        f"(projection.lpips_weights must be torchvision's {_TRUNK_WEIGHTS[trunk][0]})"
                    )
                with torch.no_grad():
                    param.copy_(state[key])
    return net.eval().requires_grad_(False)


def build_projection_loss(
    name: str,
    *,
    pixel_weight: float = 0.0,
    pixel_norm: str = "l1",
    lpips_net: nn.Module | None = None,
    lpips_weights: str | None = None,
    lpips_resize: int | None = 256,
    discriminator: nn.Module | Callable[[], nn.Module] | None = None,
) -> nn.Module:
    """Build the per-sample projection loss ``name`` (see :data:`LOSS_NAMES`).

    ``lpips_net`` injects a ready LPIPS network (tests use a random-weight one, no download);
    ``discriminator`` is the trained D (or a callable loading it) for ``disc_features``.
    """
    if name in ("lpips_vgg", "lpips_alex"):
        net = lpips_net if lpips_net is not None else build_lpips_network(name.split("_")[1], lpips_weights)
        main: nn.Module = LpipsLoss(net, resize=lpips_resize)
    elif name == "disc_features":
        if discriminator is None:
            raise UserError("projection.loss=disc_features needs a discriminator: set discriminator=PATH")
        main = DiscFeatureLoss(
            discriminator()
            if callable(discriminator) and not isinstance(discriminator, nn.Module)
            else discriminator
        )
    elif name == "ms_ssim":
        main = MsSsimLoss()
    elif name == "mse":
        main = MseLoss()
    else:
        raise ConfigError(f"projection.loss must be one of {', '.join(LOSS_NAMES)}, got {name!r}")
    if pixel_weight:
        return CombinedLoss(main, PixelLoss(pixel_norm), pixel_weight)
    return main
