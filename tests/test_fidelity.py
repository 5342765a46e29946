"""Fidelity metrics: SWD maths, FID/KID/FRD plumbing without downloads, and the degradation check.

Images are mammogram-like phantoms: a half-ellipse breast against the left edge (background -1),
thickness fall-off towards the skin line, and 1/f^3-power texture inside, as parenchyma has.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn

from mammo_anogan.evaluation import fidelity as fidelity_module
from mammo_anogan.evaluation.fidelity import (
    UNRELIABLE_AT_SMALL_N,
    FidelityMetrics,
    add_noise,
    degradation_ranking,
    gaussian_blur,
)
from mammo_anogan.evaluation.swd import (
    laplacian_pyramid,
    pyramid_descriptors,
    sliced_wasserstein,
    sliced_wasserstein_distance,
)
from mammo_anogan.utils.errors import ConfigError

CHECK_RESOLUTION = 64  # the sizes the training callback uses by default: 128 real = 64 vs 64
CHECK_COUNT = 128


def mammogram_like(count: int, resolution: int = 64, seed: int = 0) -> torch.Tensor:
    """``[count, 1, R, R]`` phantoms in [-1, 1] with 1/f^3 power-spectrum texture (batched FFT)."""
    generator = torch.Generator().manual_seed(seed)
    freq = torch.fft.fftfreq(resolution)
    radius = torch.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2).clamp_min(1.0 / resolution)
    phases = torch.exp(2j * math.pi * torch.rand(count, resolution, resolution, generator=generator))
    spectrum = torch.randn(count, resolution, resolution, generator=generator) * radius**-1.5 * phases
    texture = torch.fft.ifft2(spectrum).real
    texture = (texture - texture.mean(dim=(1, 2), keepdim=True)) / texture.std(dim=(1, 2), keepdim=True)
    coords = torch.linspace(0, 1, resolution)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    semi_x = 0.6 + 0.3 * torch.rand(count, 1, 1, generator=generator)
    semi_y = 0.35 + 0.1 * torch.rand(count, 1, 1, generator=generator)
    ellipse = (xx / semi_x) ** 2 + ((yy - 0.5) / semi_y) ** 2
    tissue = 0.2 + 0.4 * (1 - ellipse).clamp(0, 1).sqrt() + 0.15 * texture
    images = torch.where(ellipse <= 1, tissue, torch.full_like(tissue, -1.0))
    return images.clamp(-1, 1).unsqueeze(1)


def random_feature_extractor() -> nn.Module:
    """A random-init CNN (seeded) standing in for InceptionV3: images [B,3,H,W] in [0,1] -> [B, 32]."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).eval()


# ------------------------------------------------------------------------------------------ SWD


def test_laplacian_pyramid_levels_and_perfect_reconstruction() -> None:
    images = mammogram_like(3, 64)
    levels = laplacian_pyramid(images, min_resolution=16)
    assert [tuple(level.shape) for level in levels] == [(3, 1, 64, 64), (3, 1, 32, 32), (3, 1, 16, 16)]
    # Collapsing the pyramid with the same up-sampling gives the image back exactly.
    from mammo_anogan.evaluation.swd import _gaussian_kernel, _upsample

    kernel = _gaussian_kernel(1, images.device, images.dtype)
    rebuilt = levels[-1]
    for band in reversed(levels[:-1]):
        rebuilt = band + _upsample(rebuilt, kernel)
    assert torch.allclose(rebuilt, images, atol=1e-5)


def test_patch_descriptors_are_normalised_per_level() -> None:
    descriptors = pyramid_descriptors(mammogram_like(4, 32), patches_per_image=16, min_resolution=16, seed=0)
    assert [tuple(d.shape) for d in descriptors] == [(64, 49), (64, 49)]
    for level in descriptors:
        assert abs(float(level.mean())) < 1e-5
        assert float(level.std()) == pytest.approx(1.0, abs=0.02)


def test_swd_identical_sets_zero_and_degraded_sets_larger() -> None:
    real = mammogram_like(16, 32, seed=1)
    other = mammogram_like(16, 32, seed=2)
    kwargs = {"patches_per_image": 32, "num_projections": 128, "seed": 0}
    same = sliced_wasserstein_distance(real, real, **kwargs)["swd"]
    real_vs_real = sliced_wasserstein_distance(real, other, **kwargs)["swd"]
    blurred = sliced_wasserstein_distance(real, gaussian_blur(other, 1.5), **kwargs)["swd"]
    noisy = sliced_wasserstein_distance(real, add_noise(other, 0.1), **kwargs)["swd"]
    assert same == pytest.approx(0.0, abs=1e-6)
    assert real_vs_real > 0
    assert blurred > real_vs_real
    assert noisy > real_vs_real


def test_swd_is_deterministic_and_reports_each_level() -> None:
    a, b = mammogram_like(8, 32, seed=3), mammogram_like(8, 32, seed=4)
    first = sliced_wasserstein_distance(a, b, patches_per_image=16, num_projections=64, seed=7)
    second = sliced_wasserstein_distance(a, b, patches_per_image=16, num_projections=64, seed=7)
    assert first == second
    assert set(first) == {"swd", "swd_level0", "swd_level1"}
    assert first["swd"] == pytest.approx((first["swd_level0"] + first["swd_level1"]) / 2)


def test_sliced_wasserstein_of_shifted_gaussians_matches_theory() -> None:
    # Two 1-D point sets shifted by 0.5: every projection on a unit direction u shifts by 0.5 * u_0,
    # so the distance is 0.5 * E|u_0| with u uniform on the sphere (dimension 2: 2/pi).
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(1000, 2, generator=generator)
    b = a + torch.tensor([0.5, 0.0])
    distance = float(sliced_wasserstein(a, b, num_projections=2048, seed=0))
    assert distance == pytest.approx(0.5 * 2 / math.pi, rel=0.03)


# ------------------------------------------------------------------------------------ FID / KID / FRD


def test_fid_kid_with_injected_extractor_no_download(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("must not download anything when a feature extractor is injected")

    monkeypatch.setattr(fidelity_module.urllib.request, "urlopen", no_network)
    real = mammogram_like(32, 32, seed=0)
    fm = FidelityMetrics(metrics=("fid", "kid"), feature_extractor=random_feature_extractor())
    fm.set_real(real)
    out = fm.compute(add_noise(mammogram_like(16, 32, seed=5), 0.2))
    assert set(out) == {"fid", "fid_baseline", "kid", "kid_baseline"}
    assert all(math.isfinite(v) for v in out.values())
    assert out["fid"] > out["fid_baseline"] > 0
    # The fakes are compared at the same sample size as the baseline (16 vs 16): identical to a
    # direct torchmetrics computation on those features.
    from torchmetrics.image.fid import FrechetInceptionDistance

    extractor = random_feature_extractor()
    direct = FrechetInceptionDistance(feature=extractor, normalize=True, input_img_size=(3, 32, 32))
    order = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    direct.update(((real[order[:16]] + 1) / 2).expand(-1, 3, -1, -1), real=True)
    direct.update(
        ((add_noise(mammogram_like(16, 32, seed=5), 0.2) + 1) / 2).expand(-1, 3, -1, -1), real=False
    )
    assert out["fid"] == pytest.approx(float(direct.compute()), rel=1e-4)


def test_missing_inception_weights_skip_fid_kid_with_one_warning(
    tmp_path: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    missing = tmp_path / "nowhere" / "inception.pth"  # type: ignore[operator]
    with caplog.at_level(logging.WARNING, logger="mammo_anogan.evaluation.fidelity"):
        fm = FidelityMetrics(metrics=("swd", "fid", "kid"), inception_weights=missing)
    assert fm.available == ("swd",)
    assert set(fm.skipped) == {"fid", "kid"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all(str(missing) in w and "\n" not in w for w in warnings)
    fm.set_real(mammogram_like(8, 32))
    out = fm.compute(mammogram_like(4, 32, seed=1))
    assert set(out) == {"swd", "swd_baseline"}


def test_crafted_inception_file_is_refused(tmp_path: pytest.TempPathFactory) -> None:
    import pickle

    bad = tmp_path / "inception.pth"  # type: ignore[operator]

    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("pwned",))

    bad.write_bytes(pickle.dumps(Evil()))
    fm = FidelityMetrics(metrics=("fid",), inception_weights=bad)
    assert fm.available == ()
    assert "refusing to load" in fm.skipped["fid"]


def test_unknown_metric_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown fidelity metric"):
        FidelityMetrics(metrics=("swd", "is"))


def test_frd_on_arrays_with_baseline() -> None:
    pytest.importorskip("frd_score")
    pytest.importorskip("radiomics")
    real = mammogram_like(12, 32, seed=0)
    fm = FidelityMetrics(metrics=("frd",), frd_image_types=("Original",))
    fm.set_real(real)
    out = fm.compute(gaussian_blur(mammogram_like(6, 32, seed=9), 2.0))
    assert set(out) == {"frd", "frd_baseline"}
    assert math.isfinite(out["frd"]) and math.isfinite(out["frd_baseline"])
    assert out["frd"] > out["frd_baseline"]


def test_compute_uses_the_smaller_sample_size_for_both_figures() -> None:
    fm = FidelityMetrics(metrics=("swd",), swd_patches_per_image=8, swd_num_projections=32)
    fm.set_real(mammogram_like(20, 32))  # halves of 10
    first = fm.compute(mammogram_like(6, 32, seed=1))
    second = fm.compute(mammogram_like(6, 32, seed=1))
    assert first == second  # cached reference work does not change the result
    full = fm.compute(mammogram_like(30, 32, seed=1))  # capped at 10
    assert full["swd_baseline"] != first["swd_baseline"]  # baseline at 10 vs 10, not 6 vs 6


# ------------------------------------------------------------------------------- degradation check


def _ranking(metrics: tuple[str, ...], seed: int, **kwargs: object) -> dict:
    real = mammogram_like(CHECK_COUNT, CHECK_RESOLUTION, seed=seed)
    return degradation_ranking(real, lambda: FidelityMetrics(metrics=metrics, seed=seed, **kwargs))


def test_swd_ranks_degraded_sets_worse_at_callback_sizes() -> None:
    report = _ranking(("swd",), seed=0)
    swd = report["swd"]
    assert swd["passes"] is True
    assert swd["blur"] > 2 * swd["baseline"] and swd["noise"] > 2 * swd["baseline"]
    assert "swd" not in UNRELIABLE_AT_SMALL_N  # the default checkpoint monitor must be reliable


@pytest.mark.parametrize("metric", ["fid", "kid"])
def test_inception_metric_reliability_table_matches_measurement(metric: str) -> None:
    passes = [
        _ranking((metric,), seed=seed, feature_extractor=random_feature_extractor())[metric]["passes"]
        for seed in range(4)
    ]
    assert all(passes) == (metric not in UNRELIABLE_AT_SMALL_N), passes


@pytest.mark.slow
def test_frd_degradation_ranking_on_phantoms() -> None:
    pytest.importorskip("frd_score")
    passes = [_ranking(("frd",), seed=seed)["frd"]["passes"] for seed in range(2)]
    # Phantoms pass; the table marks FRD from the real mini-MIAS measurement (see its entry).
    assert all(passes)


def test_kid_seeds_only_the_cpu_generator_and_restores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (issue 10): torch.manual_seed(0) inside KID also reseeded every CUDA generator, so
    on a GPU each evaluation replayed training's random stream (and gave DDP ranks equal streams)."""
    reseeded: list[int] = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda seed: reseeded.append(seed))
    fm = FidelityMetrics(metrics=("kid",), feature_extractor=random_feature_extractor())
    fm.set_real(mammogram_like(32, 32, seed=0))
    torch.manual_seed(7)
    reseeded.clear()
    expected_next = torch.rand(3, generator=torch.Generator().manual_seed(7))
    first = fm.compute(add_noise(mammogram_like(16, 32, seed=5), 0.2))
    second = fm.compute(add_noise(mammogram_like(16, 32, seed=5), 0.2))
    assert reseeded == []  # no CUDA generator touched
    assert first["kid"] == second["kid"]  # still reproducible
    assert torch.equal(torch.rand(3), expected_next)  # the caller's CPU stream is untouched
