"""Fidelity of generated mammograms: SWD, FRD, FID and KID, each beside a real-vs-real baseline.

Why a baseline: at the sample sizes a training-time check can afford (64-128 images), every
distribution distance is dominated by sampling noise and bias. On real mini-MIAS normals (256 px,
80 vs 80) FRD between two halves of the *real* set was 42.4, while FRD between real and real plus
Gaussian noise was 10.1: a bare figure misleads. So :class:`FidelityMetrics` splits the real set into
two disjoint halves A and B, compares the fakes with A, and reports ``metric(A, B)`` at the same
sample size as ``<metric>_baseline``. A generator is as good as real data when the two meet.

Metrics that fail the degradation check (a clearly blurred or noised copy of real data must score
worse than the real baseline) at those sizes are listed in :data:`UNRELIABLE_AT_SMALL_N`; they are
still reported, with a warning, but never used to select checkpoints. The table is measured, not
assumed: ``tests/test_fidelity.py`` re-runs :func:`degradation_ranking` and checks it.

Backends: SWD is :mod:`mammo_anogan.evaluation.swd`; FID/KID are torchmetrics'
``FrechetInceptionDistance``/``KernelInceptionDistance`` (InceptionV3 from ``torch-fidelity`` or an
injected feature extractor); FRD is the ``frd-score`` package (v1 radiomics features through
``pyradiomics``) applied to in-memory arrays.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mammo_anogan.evaluation.swd import (
    pyramid_descriptors,
    random_directions,
    sorted_projections,
    swd_from_sorted,
)
from mammo_anogan.utils.errors import ConfigError, UserError
from mammo_anogan.utils.io import atomic_write_bytes, safe_torch_load

log = logging.getLogger(__name__)

METRIC_NAMES = ("swd", "frd", "fid", "kid")

#: Metrics that did NOT rank a blurred and a noised copy of real images worse than the real-vs-real
#: baseline at training-check sizes, with the measurement. SWD, FID and KID (random-init features)
#: pass on mammogram-like phantoms at 64 vs 64 images, 64 px, for every seed tried; ``tests/
#: test_fidelity.py`` re-measures them and asserts this table agrees. FRD passes on phantoms but
#: failed on real mammograms, which is what counts.
UNRELIABLE_AT_SMALL_N: dict[str, str] = {
    "frd": (
        "on real mini-MIAS normals, 256 px, 80 vs 80: FRD(real A, real B) = 42.4 but "
        "FRD(B, A + Gaussian noise) = 10.1"
    ),
}

INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
INCEPTION_FILENAME = "weights-inception-2015-12-05-6726825d.pth"


class MetricUnavailable(RuntimeError):
    """A metric cannot run here (weights or package missing); the message says what to provide."""


def default_inception_path() -> Path:
    """Where the InceptionV3 weights are cached (torch hub's checkpoint folder)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILENAME


def resolve_inception_weights(
    inception_weights: str | os.PathLike[str] | None, download: bool = True
) -> Path:
    """A validated local path to the InceptionV3 weights, downloading them once when allowed.

    The file is checked with ``safe_torch_load`` (``weights_only=True``) before torch-fidelity reads
    it, so a crafted pickle is refused even though torch-fidelity itself loads without that guard.
    """
    if inception_weights is not None:
        path = Path(inception_weights).expanduser()
        if not path.is_file():
            raise MetricUnavailable(
                f"Inception weights not found at {path}; download {INCEPTION_URL} there "
                f"(or set fidelity.inception_weights to the file)"
            )
    else:
        path = default_inception_path()
        if not path.is_file():
            if not download:
                raise MetricUnavailable(f"Inception weights missing: provide {path} (from {INCEPTION_URL})")
            try:
                with urllib.request.urlopen(INCEPTION_URL, timeout=60) as response:  # noqa: S310
                    atomic_write_bytes(path, response.read())
            except OSError as err:
                raise MetricUnavailable(
                    f"cannot download the Inception weights ({type(err).__name__}); offline? "
                    f"provide {path} (from {INCEPTION_URL}) or set fidelity.inception_weights"
                ) from err
    from mammo_anogan.training.nonfinite import check_finite_loaded  # (training imports this module)

    try:
        state = safe_torch_load(path)
        if isinstance(state, dict):
            check_finite_loaded(
                state, f"Inception weights {path}", f"provide an intact copy (from {INCEPTION_URL})"
            )
    except UserError as err:
        raise MetricUnavailable(str(err)) from err
    return path


def to_uint8_rgb(images: Tensor) -> Tensor:
    """``[-1, 1]`` grayscale ``[N, 1, H, W]`` -> ``uint8`` ``[N, 3, H, W]`` (what InceptionV3 expects)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).expand(-1, 3, -1, -1)


def to_unit_rgb(images: Tensor) -> Tensor:
    """``[-1, 1]`` grayscale -> float ``[0, 1]`` with 3 channels (what an injected extractor receives)."""
    return ((images.clamp(-1, 1) + 1) / 2).expand(-1, 3, -1, -1).contiguous()


# --------------------------------------------------------------------------------------------------
# Per-metric backends. Each caches the features of the real reference halves once (``prepare``) and
# then compares any image set with them; ``distance(ref_count, fake)``.
# --------------------------------------------------------------------------------------------------


class _SwdFeatures:
    """Per-level SWD descriptors of one image set, with their sorted projections computed lazily once."""

    def __init__(self, descriptors: list[Tensor], directions: list[Tensor]) -> None:
        self.descriptors = descriptors
        self.directions = directions
        self._sorted: list[Tensor] | None = None

    def sorted(self) -> list[Tensor]:
        if self._sorted is None:
            self._sorted = [sorted_projections(d, p) for d, p in zip(self.descriptors, self.directions)]
        return self._sorted


class _SwdBackend:
    def __init__(self, seed: int, patches_per_image: int, num_projections: int, min_resolution: int) -> None:
        self.seed = seed
        self.patches_per_image = patches_per_image
        self.num_projections = num_projections
        self.min_resolution = min_resolution

    def features(self, images: Tensor) -> _SwdFeatures:
        # Same seed for every set: the same patch positions and projection directions everywhere.
        descriptors = pyramid_descriptors(
            images,
            patches_per_image=self.patches_per_image,
            min_resolution=self.min_resolution,
            seed=self.seed,
        )
        directions = [
            random_directions(d.shape[1], self.num_projections, self.seed + level)
            for level, d in enumerate(descriptors)
        ]
        return _SwdFeatures(descriptors, directions)

    def subset(self, features: _SwdFeatures, count: int) -> _SwdFeatures:
        # Descriptors are stored image-major: the first `count` images own the first rows.
        rows = count * self.patches_per_image
        return _SwdFeatures([level[:rows] for level in features.descriptors], features.directions)

    def distance(self, reference: _SwdFeatures, candidate: _SwdFeatures) -> dict[str, float]:
        return {"swd": swd_from_sorted(reference.sorted(), candidate.sorted())["swd"]}


class _TorchmetricsBackend:
    """FID or KID through torchmetrics, with the feature network shared and features cached."""

    def __init__(
        self, name: str, network: nn.Module, custom: bool, device: torch.device, batch_size: int
    ) -> None:
        self.name = name
        self.network = network
        self.custom = custom
        self.device = device
        self.batch_size = batch_size

    def features(self, images: Tensor) -> Tensor:
        outputs = []
        with torch.no_grad():
            for start in range(0, images.shape[0], self.batch_size):
                batch = images[start : start + self.batch_size].to(self.device)
                batch = to_unit_rgb(batch) if self.custom else to_uint8_rgb(batch)
                outputs.append(self.network(batch).reshape(batch.shape[0], -1).double())
        return torch.cat(outputs)

    def subset(self, features: Tensor, count: int) -> Tensor:
        return features[:count]

    def distance(self, reference: Tensor, candidate: Tensor) -> dict[str, float]:
        count = min(reference.shape[0], candidate.shape[0])
        metric = self._metric(reference.shape[1], count)
        # Features are fed through an identity "network" so torchmetrics does the statistics.
        metric.update(reference[:count], real=True)
        metric.update(candidate[:count], real=False)
        with torch.random.fork_rng(devices=[]):
            # KID's subset sampling uses the global CPU generator: seed it (and only it) for
            # reproducibility. torch.manual_seed would also reseed every CUDA generator, outside the
            # fork, so each evaluation would replay training's latents, noise and ADA draws.
            torch.default_generator.manual_seed(0)
            value = metric.compute()
        if self.name == "kid":
            return {"kid": float(value[0])}
        return {"fid": float(value)}

    def _metric(self, num_features: int, count: int) -> Any:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance

        identity = _FeatureIdentity(num_features)
        if self.name == "fid":
            return FrechetInceptionDistance(feature=identity, normalize=True).to(self.device)
        # As in StyleGAN2-ADA: subsets of at most 1000; below that one subset is the whole set.
        subset_size = min(1000, count)
        subsets = 100 if count > subset_size else 1
        return KernelInceptionDistance(
            feature=identity, normalize=True, subsets=subsets, subset_size=subset_size
        ).to(self.device)


class _FeatureIdentity(nn.Module):
    """Lets torchmetrics compute FID/KID statistics on features we already extracted (and cached)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features  # read by torchmetrics to size its FID state

    def forward(self, features: Tensor) -> Tensor:
        return features


class _FrdBackend:
    """Fréchet Radiomics Distance with the ``frd-score`` package (v1 settings) on in-memory images."""

    def __init__(self, image_types: Sequence[str] | None) -> None:
        try:
            import SimpleITK  # noqa: F401
            from frd_score import frd
        except ImportError as err:
            raise MetricUnavailable(
                f"FRD needs the packages frd-score and pyradiomics-bhklab ({err}); "
                f"pip install pyradiomics-bhklab SimpleITK && pip install --no-deps frd-score"
            ) from err
        try:
            frd._ensure_radiomics()
            frd.setVerbosity(60)
            self.extractor = frd.get_feature_extractor(
                frd_version="v1", image_types=list(image_types) if image_types else None
            )
        except ImportError as err:
            raise MetricUnavailable(
                f"FRD needs a working pyradiomics (pip install pyradiomics-bhklab): {err}"
            ) from err
        logging.getLogger("radiomics").setLevel(logging.ERROR)
        self.frd = frd

    def features(self, images: Tensor) -> np.ndarray:
        import SimpleITK as sitk

        arrays = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).cpu().numpy()[:, 0]  # [N, H, W]
        mask = np.ones((1, *arrays.shape[1:]), dtype=np.uint8)
        mask[0, 0, 0] = 0  # FRD v1's full-image mask (pyradiomics rejects a mask without background)
        sitk_mask = sitk.GetImageFromArray(mask)
        rows = []
        # pyradiomics works one image at a time; this is the only per-image loop and it runs only
        # on the (small, cached) fidelity sets, never in the training step.
        for array in arrays:
            output = self.extractor.execute(sitk.GetImageFromArray(array[None].astype(np.float32)), sitk_mask)
            rows.append([_as_float(value) for key, value in output.items() if _is_feature(key, value)])
        return np.asarray(rows, dtype=np.float64)

    def subset(self, features: np.ndarray, count: int) -> np.ndarray:
        return features[:count]

    def distance(self, reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
        # FRD v1: z-score w.r.t. the reference set, drop features that became NaN/inf, log(Fréchet^2).
        mean = np.nanmean(reference, axis=0)
        std = np.nanstd(reference, axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            normalised = [(features - mean) / std for features in (reference, candidate)]
        keep = np.all([np.isfinite(n).all(axis=0) for n in normalised], axis=0)
        ref, cand = (n[:, keep] for n in normalised)
        distance = self.frd.calculate_frechet_distance(
            ref.mean(0), np.cov(ref, rowvar=False), cand.mean(0), np.cov(cand, rowvar=False)
        )
        return {"frd": float(np.log(distance)) if distance > 0 else float("-inf")}


def _is_feature(key: str, value: Any) -> bool:
    if not key.startswith("diagnostics"):
        return True
    # v1 also keeps the numeric diagnostics (image/mask statistics), as in the FRD paper.
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _as_float(value: Any) -> float:
    return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])


# --------------------------------------------------------------------------------------------------


class FidelityMetrics:
    """SWD / FRD / FID / KID of generated images against a real set, each with its real baseline.

    ``set_real(real)`` splits ``real`` (seeded shuffle) into disjoint halves A and B and caches each
    metric's features of both. ``compute(fake)`` uses ``k = min(len(fake), len(A), len(B))`` images
    of each set: ``<metric> = d(A[:k], fake[:k])`` and ``<metric>_baseline = d(A[:k], B[:k])``.
    A metric that cannot run here is dropped with one warning naming what to provide.
    """

    def __init__(
        self,
        metrics: Iterable[str] = METRIC_NAMES,
        feature_extractor: nn.Module | None = None,
        inception_weights: str | os.PathLike[str] | None = None,
        device: str | torch.device = "cpu",
        seed: int = 0,
        batch_size: int = 64,
        download_inception: bool = True,
        swd_patches_per_image: int = 128,
        swd_num_projections: int = 512,
        swd_min_resolution: int = 16,
        frd_image_types: Sequence[str] | None = None,
    ) -> None:
        self.metrics = tuple(dict.fromkeys(str(m).lower() for m in metrics))
        unknown = [m for m in self.metrics if m not in METRIC_NAMES]
        if unknown:
            raise ConfigError(f"unknown fidelity metric(s) {unknown}; choose from {list(METRIC_NAMES)}")
        self.device = torch.device(device)
        self.seed = seed
        self.skipped: dict[str, str] = {}
        self._backends: dict[str, Any] = {}
        self._reference: dict[str, Any] = {}
        self._holdout: dict[str, Any] = {}
        self._baselines: dict[tuple[str, int], dict[str, float]] = {}
        self._reference_subsets: dict[tuple[str, int], Any] = {}
        self._half_size = 0
        self._resolution: tuple[int, ...] | None = None
        self._build_backends(
            feature_extractor,
            inception_weights,
            batch_size,
            download_inception,
            swd=(swd_patches_per_image, swd_num_projections, swd_min_resolution),
            frd_image_types=frd_image_types,
        )
        for name in self.available:
            if name in UNRELIABLE_AT_SMALL_N:
                log.warning(
                    "fidelity metric %s is unreliable at small sample sizes (%s); read it beside %s_baseline",
                    name,
                    UNRELIABLE_AT_SMALL_N[name],
                    name,
                )

    @property
    def available(self) -> tuple[str, ...]:
        """The requested metrics that can run here, in request order."""
        return tuple(m for m in self.metrics if m in self._backends)

    def _skip(self, name: str, reason: str) -> None:
        self.skipped[name] = reason
        log.warning("fidelity metric %s skipped: %s", name, reason)

    def _build_backends(
        self,
        feature_extractor: nn.Module | None,
        inception_weights: str | os.PathLike[str] | None,
        batch_size: int,
        download_inception: bool,
        swd: tuple[int, int, int],
        frd_image_types: Sequence[str] | None,
    ) -> None:
        if "swd" in self.metrics:
            self._backends["swd"] = _SwdBackend(self.seed, *swd)
        if "frd" in self.metrics:
            try:
                self._backends["frd"] = _FrdBackend(frd_image_types)
            except MetricUnavailable as err:
                self._skip("frd", str(err))
        inception_metrics = [m for m in ("fid", "kid") if m in self.metrics]
        if not inception_metrics:
            return
        try:
            network, custom = self._feature_network(feature_extractor, inception_weights, download_inception)
        except MetricUnavailable as err:
            for name in inception_metrics:
                self._skip(name, str(err))
            return
        network = network.to(self.device).eval()
        for name in inception_metrics:
            self._backends[name] = _TorchmetricsBackend(name, network, custom, self.device, batch_size)

    @staticmethod
    def _feature_network(
        feature_extractor: nn.Module | None,
        inception_weights: str | os.PathLike[str] | None,
        download: bool,
    ) -> tuple[nn.Module, bool]:
        if feature_extractor is not None:
            return feature_extractor, True
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
            from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE
        except ImportError as err:  # pragma: no cover - torchmetrics is a hard dependency
            raise MetricUnavailable(f"torchmetrics image metrics unavailable: {err}") from err
        if not _TORCH_FIDELITY_AVAILABLE:
            raise MetricUnavailable("FID/KID need the package torch-fidelity (pip install torch-fidelity)")
        path = resolve_inception_weights(inception_weights, download=download)
        network = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(path)
        )
        return network, False

    # ----------------------------------------------------------------------------------------------

    def set_real(self, real: Tensor) -> None:
        """Cache the features of two disjoint halves of ``real`` ([N,1,H,W] in [-1,1], N >= 4)."""
        if real.ndim != 4 or real.shape[0] < 4:
            raise UserError(
                f"fidelity needs at least 4 real images [N, C, H, W]; got shape {tuple(real.shape)}"
            )
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(real.shape[0], generator=generator)
        half = real.shape[0] // 2
        set_a, set_b = real[order[:half]], real[order[half : 2 * half]]
        self._half_size = half
        self._resolution = tuple(real.shape[1:])
        self._baselines.clear()
        self._reference_subsets.clear()
        for name in list(self.available):
            try:
                self._reference[name] = self._backends[name].features(set_a)
                self._holdout[name] = self._backends[name].features(set_b)
            except Exception as err:  # a backend failure must not stop training
                self._drop(name, err)

    def compute(self, fake: Tensor) -> dict[str, float]:
        """``{metric: value, metric_baseline: value}`` for every metric that could run."""
        if not self._half_size:
            raise RuntimeError("FidelityMetrics.compute() called before set_real()")
        if tuple(fake.shape[1:]) != self._resolution:
            raise UserError(
                f"fake images {tuple(fake.shape[1:])} do not match the real ones {self._resolution}"
            )
        count = min(fake.shape[0], self._half_size)
        if count < 2:
            raise UserError("fidelity needs at least 2 generated images")
        out: dict[str, float] = {}
        for name in list(self.available):
            backend = self._backends[name]
            try:
                reference = self._reference_subset(name, count)
                out.update(backend.distance(reference, backend.features(fake[:count])))
                out.update(self._baseline(name, count, reference))
            except Exception as err:
                self._drop(name, err)
        return out

    def _reference_subset(self, name: str, count: int) -> Any:
        # Kept across calls so cached work on the reference (e.g. SWD's sorted projections) is reused.
        key = (name, count)
        if key not in self._reference_subsets:
            self._reference_subsets[key] = self._backends[name].subset(self._reference[name], count)
        return self._reference_subsets[key]

    def _baseline(self, name: str, count: int, reference: Any) -> dict[str, float]:
        key = (name, count)
        if key not in self._baselines:
            backend = self._backends[name]
            values = backend.distance(reference, backend.subset(self._holdout[name], count))
            self._baselines[key] = {f"{metric}_baseline": value for metric, value in values.items()}
        return self._baselines[key]

    def _drop(self, name: str, err: Exception) -> None:
        self._backends.pop(name, None)
        first_line = (str(err).strip().splitlines() or [""])[0]
        self._skip(name, f"{type(err).__name__}: {first_line}")


# --------------------------------------------------------------------------------------------------
# Degradation check: does a metric rank clearly degraded real images worse than real ones?
# --------------------------------------------------------------------------------------------------


def metric_unavailable_reason(
    name: str,
    inception_weights: str | os.PathLike[str] | None = None,
    frd_image_types: Sequence[str] | None = None,
) -> str | None:
    """Why the metric ``name`` cannot run here (the warning :class:`FidelityMetrics` would give), or None.

    Cheap enough for a start-up check: FID/KID resolve the Inception weights (downloading them once
    when online, as the first evaluation would), FRD builds its radiomics extractor, SWD needs nothing.
    """
    try:
        if name in ("fid", "kid"):
            from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

            if not _TORCH_FIDELITY_AVAILABLE:
                return "FID/KID need the package torch-fidelity (pip install torch-fidelity)"
            resolve_inception_weights(inception_weights, download=True)
        elif name == "frd":
            _FrdBackend(frd_image_types)
    except MetricUnavailable as err:
        return str(err)
    return None


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur (reflect padding), batched over images."""
    radius = max(1, int(round(3 * sigma)))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    horizontal = kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    vertical = kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    padded = nn.functional.pad(images, (radius, radius, radius, radius), mode="reflect")
    blurred = nn.functional.conv2d(padded, horizontal, groups=channels)
    return nn.functional.conv2d(blurred, vertical, groups=channels)


def add_noise(images: Tensor, std: float, seed: int = 0) -> Tensor:
    """Additive Gaussian noise (seeded), clamped back to [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=generator).to(images)
    return (images + std * noise).clamp(-1, 1)


DEGRADATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "blur": lambda images: gaussian_blur(images, sigma=1.5),
    "noise": lambda images: add_noise(images, std=0.1),
}


def degradation_ranking(
    real: Tensor, make_metrics: Callable[[], FidelityMetrics], degradations: dict[str, Callable] | None = None
) -> dict[str, dict[str, Any]]:
    """For each metric: its baseline, its value on each degraded copy, and whether all rank worse.

    ``real`` is split as in :meth:`FidelityMetrics.set_real`; the degraded sets are made from the
    *holdout* half, so "degraded" differs from the baseline only by the degradation.
    """
    degradations = degradations or DEGRADATIONS
    metrics = make_metrics()
    metrics.set_real(real)
    order = torch.randperm(real.shape[0], generator=torch.Generator().manual_seed(metrics.seed))
    half = real.shape[0] // 2
    holdout = real[order[half : 2 * half]]
    report: dict[str, dict[str, Any]] = {name: {} for name in metrics.available}
    for degradation_name, degrade in degradations.items():
        values = metrics.compute(degrade(holdout))
        for name in list(report):
            if name not in values:
                report.pop(name)
                continue
            report[name]["baseline"] = values[f"{name}_baseline"]
            report[name][degradation_name] = values[name]
    for entry in report.values():
        entry["passes"] = all(entry[d] > entry["baseline"] for d in degradations)
    return report
