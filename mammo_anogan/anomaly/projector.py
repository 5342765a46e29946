"""Batched multi-seed latent projection (AnoGAN with the StyleGAN2 projector's recipe).

For every target image and each of ``N`` seeds, a latent ``w`` (one for all layers in W space, one
per layer in W+) and the per-layer noise maps are optimised with Adam so that the generator
reproduces the image. The recipe follows the StyleGAN2 projector (Karras et al. 2020, appendix D):
learning-rate ramp-up over the first 5% of the steps and cosine ramp-down over the last 25%;
Gaussian noise of ``0.05 * w_std`` added to ``w`` and decaying quadratically to zero at 75% of the
steps; noise maps regularised (squared auto-correlation at every scale of a pyramid, weight 1e5) and
renormalised to zero mean and unit variance after each step. As in the seed paper, and unlike the
official projector (which always starts at ``w_avg``), each seed starts from the mapping of its own
seeded ``z``, so the ``N`` starts are genuinely different.

Speed: the ``B`` images x ``N`` seeds of a batch are ``B*N`` independent samples optimised in one
forward/backward per step. The loss is a *sum* over samples and Adam is element-wise, so every
sample follows exactly the trajectory it would follow alone; all randomness is keyed by (base seed,
seed index, attempt) through a stateless counter-based generator, so results do not depend on the
batch composition either.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mammo_anogan.anomaly.losses import loss_against
from mammo_anogan.utils.errors import ConfigError
from mammo_anogan.utils.torch_compat import supports_fused_adam

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
PROJECTION_INITS = ("seeds", "encoder", "encoder+seeds", "encoder+jitter")


@dataclass(frozen=True)
class ProjectionSettings:
    """Hyper-parameters of the projection (``conf/projection/*.yaml``); defaults are the paper's."""

    num_seeds: int = 9
    steps: int = 1000
    space: str = "w"  # "w": one w broadcast to all layers; "w_plus": one w per layer
    lr: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.25
    latent_noise: float = 0.05  # initial std of the noise added to w, in units of w_std
    latent_noise_ramp: float = 0.75  # fraction of the steps after which the latent noise is zero
    noise_reg_weight: float = 1e5
    w_std_samples: int = 10_000
    base_seed: int = 0
    max_restarts: int = 1  # restarts of a seed whose loss became non-finite
    precision: str = "bf16"  # generator forward on CUDA: "bf16" autocast or "fp32"
    channels_last: bool = True  # CUDA only
    compile: bool = False  # torch.compile the synthesis network
    init: str = "seeds"  # starts: "seeds" (N seeded z) | "encoder" (E(x)) | "encoder+seeds" (E(x) + N seeds)
    # | "encoder+jitter" (N starts around E(x): start 0 = E(x), start i = E(x) + a seeded offset)
    init_jitter: float = 0.25  # encoder+jitter: offset length per layer (starts 1..N-1), units of w_std

    def __post_init__(self) -> None:
        if self.space not in ("w", "w_plus"):
            raise ConfigError(f"projection.space must be w or w_plus, got {self.space!r}")
        if self.init not in PROJECTION_INITS:
            raise ConfigError(
                f"projection.init must be one of {', '.join(PROJECTION_INITS)}, got {self.init!r}"
            )
        if self.init != "seeds" and self.space != "w_plus":
            raise ConfigError(
                f"projection.init={self.init} starts from W+ codes: set projection.space=w_plus"
            )
        if self.num_seeds < 1 or self.steps < (1 if self.init == "seeds" else 0):
            raise ConfigError(
                "projection.num_seeds must be >= 1 and projection.steps >= 1 (>= 0 with an encoder start)"
            )
        if self.precision not in ("bf16", "fp32"):
            raise ConfigError(f"projection.precision must be bf16 or fp32, got {self.precision!r}")


@dataclass
class ProjectionResult:
    """Projections of ``B`` images with ``N`` seeds each (index ``[b, n]``)."""

    projections: torch.Tensor  # [B, N, C, H, W] float32, raw generator output
    losses: torch.Tensor  # [B, N] final projection loss (without the noise regulariser); nan if dropped
    valid: torch.Tensor  # [B, N] bool: False where the seed failed after its restarts
    restarted: torch.Tensor  # [B, N] bool: the seed's first attempt had a non-finite loss
    latents: torch.Tensor  # [B, N, 1 or num_ws, w_dim] the optimised w
    notes: list[str] = field(default_factory=list)  # one per image ("" when nothing happened)


# ----------------------------------------------------------------------------------------- schedule


def learning_rate(
    step: int, steps: int, base_lr: float, rampup: float = 0.05, rampdown: float = 0.25
) -> float:
    """The projector's learning rate at ``step``: linear ramp-up, cosine ramp-down at the end."""
    t = step / steps
    ramp = min(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    if rampup > 0:
        ramp *= min(1.0, t / rampup)
    return base_lr * ramp


def latent_noise_std(
    step: int, steps: int, w_std: float, strength: float = 0.05, ramp: float = 0.75
) -> float:
    """Std of the Gaussian added to ``w``: ``strength * w_std``, decaying quadratically to 0 at ``ramp``."""
    t = step / steps
    return w_std * strength * max(0.0, 1.0 - t / ramp) ** 2


# ------------------------------------------------------------------------------------- randomness

_MASK64 = (1 << 64) - 1


def _as_int64(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN = _as_int64(0x9E3779B97F4A7C15)
_MIX1 = _as_int64(0xBF58476D1CE4E5B9)
_MIX2 = _as_int64(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 finaliser on int64 tensors (wrap-around multiplication)."""
    x = x ^ _shift_right(x, 30)
    x = x * _MIX1
    x = x ^ _shift_right(x, 27)
    x = x * _MIX2
    return x ^ _shift_right(x, 31)


def _mix64_int(value: int) -> int:
    """:func:`_mix64` on a Python int (same bits), so a per-step stream key needs no device tensor."""
    mask = _MASK64
    x = value & mask
    x ^= x >> 30
    x = (x * (_MIX1 & mask)) & mask
    x ^= x >> 27
    x = (x * (_MIX2 & mask)) & mask
    x ^= x >> 31
    return _as_int64(x)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (base seed, seed index, attempt, ...), stable across runs."""
    x = torch.tensor(0, dtype=torch.int64)
    for part in parts:
        x = _mix64(x + _GOLDEN + _as_int64(int(part)))
    return int(x.item()) & ((1 << 63) - 1)


def counter_normal(keys: torch.Tensor, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normals ``[M, *shape]`` where row ``m`` depends only on ``(keys[m], stream)``.

    A stateless counter-based generator (SplitMix64 + Box-Muller), vectorised over all rows: each
    sample gets its own reproducible noise stream without a Python loop and independently of which
    other samples share its batch, identically on CPU and GPU.
    """
    count = math.prod(shape)
    half = (count + 1) // 2
    # the stream's mix is computed on the host: a device scalar made from host data would be a
    # synchronous host-to-device copy at every projection step
    base = _mix64(keys.to(torch.int64) ^ _mix64_int(_as_int64(stream)))
    counters = torch.arange(2 * half, device=keys.device, dtype=torch.int64)
    bits = _mix64(base[:, None] + (counters[None, :] + 1) * _GOLDEN)
    uniform = (_shift_right(bits, 11).to(torch.float64) + 0.5) / float(1 << 53)  # in (0, 1)
    u1, u2 = uniform[:, :half], uniform[:, half:]
    radius = torch.sqrt(-2.0 * torch.log(u1))
    normals = torch.cat([radius * torch.cos(2 * math.pi * u2), radius * torch.sin(2 * math.pi * u2)], dim=1)
    return normals[:, :count].to(torch.float32).reshape(keys.shape[0], *shape)


def seeded_z(z_dim: int, seed_indices: torch.Tensor, attempts: torch.Tensor, base_seed: int) -> torch.Tensor:
    """The starting ``z`` of each sample, from a ``torch.Generator`` seeded by (base, index, attempt).

    Only the distinct (index, attempt) pairs are drawn (at most ``N`` per attempt), outside the
    optimisation loop.
    """
    pairs = torch.stack([seed_indices, attempts], dim=1)
    unique, inverse = torch.unique(pairs, dim=0, return_inverse=True)
    draws = []
    for index, attempt in unique.tolist():
        generator = torch.Generator().manual_seed(derive_seed(base_seed, index, attempt))
        draws.append(torch.randn(z_dim, generator=generator))
    return torch.stack(draws)[inverse]


# ------------------------------------------------------------------------------------ w statistics

_W_STATS: weakref.WeakKeyDictionary[nn.Module, dict[int, tuple[torch.Tensor, float]]] = (
    weakref.WeakKeyDictionary()
)


@torch.no_grad()
def w_statistics(
    generator: nn.Module, num_samples: int = 10_000, seed: int = 123
) -> tuple[torch.Tensor, float]:
    """``(w_avg [w_dim], w_std)`` of the mapping over ``num_samples`` z's, cached per generator.

    ``w_std`` is the root of the mean squared distance to ``w_avg`` (summed over dimensions), the
    scale the projector's latent noise is expressed in.
    """
    cache = _W_STATS.setdefault(generator, {})
    if num_samples not in cache:
        device = next(generator.parameters()).device
        z = torch.randn(num_samples, generator.z_dim, generator=torch.Generator().manual_seed(seed))
        w = generator.mapping(z.to(device))[:, 0].float()
        w_avg = w.mean(dim=0)
        w_std = float((w - w_avg).square().sum(dim=1).mean().sqrt())
        cache[num_samples] = (w_avg, w_std)
    return cache[num_samples]


# ---------------------------------------------------------------------------------- noise handling


def noise_regularization(noises: list[torch.Tensor]) -> torch.Tensor:
    """Per-sample ``[M]`` sum of squared one-pixel auto-correlations over a pyramid of each noise map.

    Penalising correlation between neighbours at every scale (down to 8 px) stops the optimiser from
    hiding image content in the noise inputs.
    """
    total = noises[0].new_zeros(noises[0].shape[0])
    for noise in noises:
        while True:
            total = total + (noise * noise.roll(1, dims=3)).mean(dim=(1, 2, 3)).square()
            total = total + (noise * noise.roll(1, dims=2)).mean(dim=(1, 2, 3)).square()
            if noise.shape[2] <= 8:
                break
            noise = F.avg_pool2d(noise, kernel_size=2)
    return total


@torch.no_grad()
def normalize_noise_(noises: list[torch.Tensor]) -> None:
    """Renormalise each sample's noise map to zero mean and unit variance, in place."""
    for noise in noises:
        noise.sub_(noise.mean(dim=(1, 2, 3), keepdim=True))
        noise.mul_(noise.square().mean(dim=(1, 2, 3), keepdim=True).rsqrt())


# ------------------------------------------------------------------------------------ start points


def start_indices(settings: ProjectionSettings) -> torch.Tensor:
    """The starts of every image: seed indices ``0..N-1``, ``-1`` for the encoder's code first."""
    seeds = torch.arange(settings.num_seeds)
    if settings.init == "seeds":
        return seeds
    if settings.init == "encoder":
        return torch.tensor([-1])
    if settings.init == "encoder+jitter":
        return seeds  # every start is the encoder's code; start i > 0 jittered with seed i
    return torch.cat([torch.tensor([-1]), seeds])


def encoder_starts(
    generator: nn.Module,
    from_encoder: torch.Tensor,
    w_init: torch.Tensor,
    w_start: torch.Tensor,
    noises: list[torch.Tensor],
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Replace the seeded start of the ``from_encoder [M]`` rows by the encoder's code and the stored
    noise maps (what the encoder was trained with, so ``steps=0`` reproduces ``G(E(x))`` exactly)."""
    rows = from_encoder.to(w_start.device)
    w_start = torch.where(rows[:, None, None], w_init.to(w_start), w_start)
    stored = generator.synthesis.const_noise()
    noises = [
        torch.where(rows[:, None, None, None], const.to(noise).expand_as(noise), noise)
        for noise, const in zip(noises, stored)
    ]
    return w_start, noises


def jittered_offsets(
    keys: torch.Tensor, seed_index: torch.Tensor, w_start: torch.Tensor, std: torch.Tensor | float
) -> torch.Tensor:
    """``projection.init=encoder+jitter``: seeded W+ offsets ``[M, num_ws, w_dim]``, zero for start 0.

    Start ``i`` of every image is ``E(x) + std * eps_i / sqrt(w_dim)`` (per layer an offset of length
    about ``std``) with ``eps_i`` drawn from the counter-based stream of seed ``i`` (independent of N,
    so the first ``n`` of ``N`` starts are an ``n``-start projection). ``std`` is
    ``projection.init_jitter * w_std``. Restarts near the encoder's code, unlike seeded ``z``
    restarts, still reconstruct the image in a few steps, and their mean averages out what each one
    fits by chance (the paper's N-seed mean, around E(x)).
    """
    eps = counter_normal(keys, stream=-(1 << 20), shape=tuple(w_start.shape[1:])).to(w_start)
    active = (seed_index > 0).to(w_start.device, w_start.dtype)[:, None, None]
    # w_std is a length (root of the summed variance): per element std / sqrt(w_dim), so each
    # layer's offset has a length of about std
    return eps * (std / math.sqrt(w_start.shape[-1])) * active


# --------------------------------------------------------------------------------------- projector


class Projector:
    """Project batches of images onto a frozen generator's latent space with ``N`` seeds each."""

    def __init__(self, generator: nn.Module, loss_fn: LossFn, settings: ProjectionSettings) -> None:
        self.generator = generator.eval().requires_grad_(False)
        self.loss_fn = loss_fn
        self.settings = settings
        self.device = next(generator.parameters()).device
        on_cuda = self.device.type == "cuda"
        if on_cuda and settings.channels_last:
            self.generator.to(memory_format=torch.channels_last)
        self._synthesis = torch.compile(generator.synthesis) if settings.compile else generator.synthesis
        self._autocast = on_cuda and settings.precision == "bf16"

    def _synthesize(self, ws: torch.Tensor, noises: list[torch.Tensor], fp32: bool = False) -> torch.Tensor:
        bf16 = self._autocast and not fp32
        context = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with context:
            # Input-scaling modulation (not grouped convolutions): with B*N samples per batch one
            # shared-weight convolution is much faster than B*N groups (2.5x measured on CPU).
            images = self._synthesis(ws, noise=noises, fused_modconv=False)
        return images.float()

    def _broadcast(self, w: torch.Tensor) -> torch.Tensor:
        return w.expand(-1, self.generator.num_ws, -1) if self.settings.space == "w" else w

    def project(self, targets: torch.Tensor, start_ws: torch.Tensor | None = None) -> ProjectionResult:
        """Project ``targets [B, C, H, W]`` in ``[-1, 1]``; returns all ``N`` starts of every image.

        ``start_ws [B, num_ws, w_dim]`` (the encoder's W+ codes) is required by ``init=encoder`` /
        ``encoder+seeds``: start 0 of each image is then its encoder code, the others seeds 0..N-1;
        ``encoder+jitter``: all N starts are the encoder code, start i > 0 offset by seed i's jitter.
        """
        s = self.settings
        starts = start_indices(s)
        batch, n = targets.shape[0], len(starts)
        targets = targets.to(self.device, torch.float32)
        repeated = targets.repeat_interleave(n, dim=0)  # sample m = image m // N, start m % N
        seed_index = starts.repeat(batch)  # -1: the encoder's start
        attempts = torch.zeros_like(seed_index)
        w_init = None
        if s.init != "seeds":
            if start_ws is None:
                raise ValueError(f"projection.init={s.init} needs the encoder's codes (start_ws)")
            w_init = start_ws.to(self.device, torch.float32).repeat_interleave(n, dim=0)
        w, images, losses, finite = self._optimise(repeated, seed_index, attempts, w_init)
        restarted = ~finite
        for attempt in range(1, s.max_restarts + 1):
            failed = torch.nonzero(~finite).flatten()
            if failed.numel() == 0:
                break
            failed_cpu = failed.cpu()
            retry = self._optimise(
                repeated[failed],
                seed_index[failed_cpu],
                torch.full_like(failed_cpu, attempt),
                None if w_init is None else w_init[failed],
            )
            w[failed], images[failed], losses[failed] = retry[0], retry[1], retry[2]
            finite[failed] = retry[3]
        losses = torch.where(finite, losses, torch.full_like(losses, float("nan")))
        result = ProjectionResult(
            projections=images.reshape(batch, n, *images.shape[1:]),
            losses=losses.reshape(batch, n),
            valid=finite.reshape(batch, n),
            restarted=restarted.reshape(batch, n),
            latents=w.reshape(batch, n, *w.shape[1:]),
        )
        result.notes = [_image_note(result.restarted[b], result.valid[b]) for b in range(batch)]
        return result

    def _optimise(
        self,
        targets: torch.Tensor,
        seed_index: torch.Tensor,
        attempts: torch.Tensor,
        w_init: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Optimise one batch of samples; returns ``(w, images, final_losses, finite)``.

        Samples with ``seed_index < 0`` start from ``w_init`` (encoder codes, ``[M, num_ws, w_dim]``)
        and the generator's stored noise maps instead of a seeded ``z`` and random noise.
        """
        s, G = self.settings, self.generator
        num_samples = targets.shape[0]
        keys = torch.tensor(
            [derive_seed(s.base_seed, i, a) for i, a in zip(seed_index.tolist(), attempts.tolist())],
            dtype=torch.int64,
            device=self.device,
        )
        _, w_std = w_statistics(G, s.w_std_samples)
        with torch.no_grad():
            z = seeded_z(G.z_dim, seed_index, attempts, s.base_seed).to(self.device)
            w_start = G.mapping(z).float()
            noises = [
                counter_normal(keys, stream=-(i + 1), shape=tuple(shape[1:])).to(self.device)
                for i, shape in enumerate(G.synthesis.noise_shapes)
            ]
            if w_init is not None:  # the init hook: encoder starts (projection.init)
                jitter = s.init == "encoder+jitter"
                from_encoder = torch.ones_like(seed_index, dtype=torch.bool) if jitter else seed_index < 0
                w_start, noises = encoder_starts(G, from_encoder, w_init, w_start, noises)
                if jitter:
                    w_start = w_start + jittered_offsets(keys, seed_index, w_start, s.init_jitter * w_std)
        w = (w_start[:, :1] if s.space == "w" else w_start).clone().requires_grad_(True)
        noises = [noise.requires_grad_(True) for noise in noises]
        if self.device.type == "cuda" and s.channels_last:
            noises = [n.detach().to(memory_format=torch.channels_last).requires_grad_(True) for n in noises]
        # fused Adam: one kernel per step and its step counters stay on the device (the for-loop
        # implementation reads one counter per tensor with .item()); not available on old CPU torch
        fused = {"fused": True} if supports_fused_adam(self.device.type) else {}
        optimizer = torch.optim.Adam([w, *noises], lr=s.lr, betas=s.betas, **fused)
        loss_to_targets = loss_against(self.loss_fn, targets)  # target features computed once
        finite = torch.ones(num_samples, dtype=torch.bool, device=self.device)
        with torch.enable_grad():
            for step in range(s.steps):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(step, s.steps, s.lr, s.lr_rampup, s.lr_rampdown)
                noise_std = latent_noise_std(step, s.steps, w_std, s.latent_noise, s.latent_noise_ramp)
                w_noisy = w + counter_normal(keys, stream=step, shape=tuple(w.shape[1:])) * noise_std
                synth = self._synthesize(self._broadcast(w_noisy), noises)
                per_sample = loss_to_targets(synth) + s.noise_reg_weight * noise_regularization(noises)
                step_finite = torch.isfinite(per_sample)
                finite &= step_finite
                # Sum, not mean: each sample's gradient is independent of the batch size. A failed
                # sample is masked out so it cannot poison the sum (its own state is discarded).
                total = torch.where(step_finite, per_sample, torch.zeros_like(per_sample)).sum()
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                normalize_noise_(noises)
        with torch.no_grad():
            # the reconstruction the anomaly map is built from: fp32, whatever the optimisation used
            images = self._synthesize(self._broadcast(w), noises, fp32=True)
            final = loss_to_targets(images).float()
        finite &= torch.isfinite(final) & torch.isfinite(w).flatten(1).all(dim=1)
        return w.detach(), images.detach(), final.detach(), finite


def _image_note(restarted: torch.Tensor, valid: torch.Tensor) -> str:
    parts = []
    restarted_ids = torch.nonzero(restarted & valid).flatten().tolist()
    dropped_ids = torch.nonzero(~valid).flatten().tolist()
    if restarted_ids:
        parts.append("non-finite loss, restarted seed " + "/".join(map(str, restarted_ids)))
    if dropped_ids:
        parts.append("non-finite loss after restart, dropped seed " + "/".join(map(str, dropped_ids)))
    return "; ".join(parts)
