"""``python -m mammo_anogan.doctor``: what a lab needs to know before a long run.

    python -m mammo_anogan.doctor                       # or: make doctor
    python -m mammo_anogan.doctor paths.data_dir=/scratch/mammo paths.output_dir=/scratch/runs

Prints, without touching the network or writing anything: the torch / CUDA / bf16 support, the
GPUs seen, which ``conf/experiment`` presets fit this machine (devices and a rough memory estimate,
with the override that makes a preset run here when it does not as it is), whether the weights of
the LPIPS projection losses and of the Inception network (FID/KID) are present, with the file names
and folders to provide them offline, the free disk space for checkpoints, and the prepared datasets
found under ``paths.data_dir/prepared`` with their image counts per split and label.

The memory figure is an estimate from the network sizes (weights, G_ema, gradients, Adam moments)
plus activations that scale with the per-device batch and the feature-map sizes, times a factor for
the regularisers' double backward; it is meant to tell 4 GiB from 40 GiB, not to replace a trial run.
"""

from __future__ import annotations

import logging
import platform
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

import mammo_anogan.utils.config  # noqa: F401  (registers the resolvers before Hydra composes)
from mammo_anogan.training.devices import Hardware, fit_trainer_to_hardware, requested_devices
from mammo_anogan.utils.config import CONFIG_DIR
from mammo_anogan.utils.errors import UserError, exit_on_user_error

GIB = 2**30
MIB = 2**20
#: Activation memory factor over one forward pass: saved tensors for backward, gradients, and the
#: R1 / path-length double backward. A rough, conservative constant (see the module docstring).
ACTIVATION_FACTOR = 4.0
#: Periodic checkpoint + last.ckpt + best.ckpt kept in a run's checkpoints/ folder.
CHECKPOINTS_PER_RUN = 3


@dataclass
class PresetReport:
    """One ``conf/experiment`` preset on this machine."""

    name: str
    resolution: int
    accelerator: str
    devices: int
    batch_size: int
    params_m: float  # generator + discriminator parameters, millions
    memory_gib: float  # rough training memory per device
    checkpoint_mib: float  # one last.ckpt
    fits: bool
    verdict: str


@dataclass
class DatasetReport:
    """One prepared dataset: image counts per split and label."""

    name: str
    path: Path
    images: int
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    fingerprint: str | None = None
    scheme: str | None = None
    note: str = ""


@dataclass
class WeightsReport:
    """A downloadable weights file the project can use."""

    used_by: str
    filename: str
    path: Path
    present: bool
    url: str


@dataclass
class Report:
    software: dict[str, str]
    gpus: list[dict[str, Any]]
    presets: list[PresetReport]
    weights: list[WeightsReport]
    disk: dict[str, Any]
    datasets: list[DatasetReport]


# --------------------------------------------------------------------------------- machine
def software_report() -> dict[str, str]:
    """Python, torch, CUDA, cuDNN, bf16 and Lightning versions / support."""
    import pytorch_lightning

    cuda = torch.cuda.is_available()
    bf16 = "yes" if cuda and torch.cuda.is_bf16_supported() else ("no" if cuda else "n/a (no CUDA GPU)")
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "cuda available": "yes" if cuda else "no",
        "cuda (torch build)": str(torch.version.cuda or "none (CPU build)"),
        "cudnn": str(torch.backends.cudnn.version() or "n/a") if cuda else "n/a",
        "bf16 (trainer.precision=auto -> bf16-mixed)": bf16,
        "cpu threads": str(torch.get_num_threads()),
    }


def gpu_report() -> list[dict[str, Any]]:
    """Name, memory (GiB) and compute capability of every visible CUDA device."""
    gpus = []
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(index)
        gpus.append(
            {
                "index": index,
                "name": props.name,
                "memory_gib": props.total_memory / GIB,
                "capability": f"{props.major}.{props.minor}",
            }
        )
    return gpus


# --------------------------------------------------------------------------------- presets
def experiment_names() -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / "experiment").glob("*.yaml"))


def compose_config(config_name: str, overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def _feature_floats(resolution: int, channel_base: int, channel_max: int, z_dim: int) -> float:
    """Floats of one sample's feature maps through G and D (plus G's per-sample conv weights)."""
    from mammo_anogan.models.stylegan2.synthesis import channels_at

    total = 0.0
    res = 4
    while res <= resolution:
        channels = channels_at(res, channel_base, channel_max)
        below = channels_at(max(4, res // 2), channel_base, channel_max)
        total += 3 * channels * res * res  # G: two modulated convs + toRGB/upsampling
        total += 2 * channels * below * 9  # G: the fused per-sample weights of both convs
        total += 3 * channels * res * res  # D: two convs + skip at this resolution
        res *= 2
    return total + 8 * z_dim


def estimate_memory(cfg: DictConfig) -> tuple[float, float, float]:
    """``(parameters in millions, training GiB per device, last.ckpt MiB)`` of a composed config."""
    from mammo_anogan.models.stylegan2 import Discriminator, Generator

    generator = OmegaConf.to_container(cfg.model.generator, resolve=True)
    discriminator = OmegaConf.to_container(cfg.model.discriminator, resolve=True)
    assert isinstance(generator, dict) and isinstance(discriminator, dict)
    with torch.device("meta"):  # sizes only: no memory, no time
        params_g = sum(p.numel() for p in Generator(**generator).parameters())
        params_d = sum(p.numel() for p in Discriminator(**discriminator).parameters())
    # fp32 G, G_ema, D + gradients of G and D + two Adam moments each.
    weights = 4.0 * (2 * params_g + params_d + params_g + params_d + 2 * (params_g + params_d))
    batch = int(cfg.data.loader.batch_size)
    floats = _feature_floats(
        int(cfg.data.resolution),
        int(generator.get("channel_base", 16384)),
        int(generator.get("channel_max", 512)),
        int(generator.get("z_dim", 512)),
    )
    activations = 4.0 * batch * floats * ACTIVATION_FACTOR
    checkpoint = 4.0 * (2 * params_g + params_d + 2 * (params_g + params_d))  # + Adam, no grads
    return (params_g + params_d) / 1e6, (weights + activations) / GIB, checkpoint / MIB


def _memory_limit_gib(on_gpu: bool, gpus: list[dict[str, Any]]) -> float | None:
    if on_gpu:
        return min((g["memory_gib"] for g in gpus), default=None)
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    except (ValueError, OSError, AttributeError):
        return None


def preset_report(
    name: str, hardware: Hardware, gpus: list[dict[str, Any]], overrides: Sequence[str] = ()
) -> PresetReport:
    """Does ``+experiment=name`` fit this machine, and if not, what makes it run here."""
    cfg = compose_config("train", [f"+experiment={name}", "data.source=/unused", *overrides])
    trainer = cfg.trainer
    batch = int(cfg.data.loader.batch_size)
    params, memory, checkpoint = estimate_memory(cfg)
    accelerator = str(trainer.get("accelerator", "auto"))
    fits, verdict = True, ""
    try:
        devices_log = logging.getLogger("mammo_anogan.training.devices")
        level = devices_log.level
        devices_log.setLevel(logging.ERROR)  # the capping warning is the verdict here
        try:
            fitted = fit_trainer_to_hardware(trainer, hardware, task="train")
        finally:
            devices_log.setLevel(level)
    except UserError as err:
        fits, verdict = False, str(err)
        on_gpu = accelerator in ("gpu", "cuda")
        devices = requested_devices(
            trainer.get("devices", 1), on_gpu, Hardware(max(1, hardware.cuda_devices))
        )
    else:
        on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and hardware.cuda_devices > 0)
        devices = int(fitted.get("devices", requested_devices(trainer.get("devices", 1), on_gpu, hardware)))
        wanted = requested_devices(trainer.get("devices", 1), on_gpu, hardware)
        where = f"{devices} GPU(s)" if on_gpu else ("the CPU" if devices == 1 else f"{devices} CPU processes")
        verdict = f"runs on {where}"
        if devices < wanted:
            verdict += (
                f" (asks for {wanted}: capped, global batch {batch * devices} instead of {batch * wanted})"
            )
        limit = _memory_limit_gib(on_gpu, gpus)
        if limit is not None and memory > limit:
            fits = False
            verdict = (
                f"needs ~{memory:.1f} GiB per {'GPU' if on_gpu else 'machine'} but has {limit:.1f} GiB: "
                "lower data.loader.batch_size (and raise trainer.devices to keep the global batch)"
            )
        elif not on_gpu and name != "demo" and int(cfg.data.resolution) >= 256:
            verdict += f" (slow: {cfg.data.resolution} px on a CPU; a GPU preset is meant for this)"
    return PresetReport(
        name=name,
        resolution=int(cfg.data.resolution),
        accelerator=accelerator,
        devices=devices,
        batch_size=batch,
        params_m=params,
        memory_gib=memory,
        checkpoint_mib=checkpoint,
        fits=fits,
        verdict=verdict,
    )


# --------------------------------------------------------------------------------- files
def weights_report() -> list[WeightsReport]:
    """LPIPS trunks (projection.loss=lpips_vgg / lpips_alex) and Inception (FID/KID): present or not."""
    from mammo_anogan.anomaly.losses import _TRUNK_WEIGHTS
    from mammo_anogan.evaluation.fidelity import INCEPTION_FILENAME, INCEPTION_URL, default_inception_path

    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    reports = [
        WeightsReport(
            f"projection.loss=lpips_{trunk} (or projection.lpips_weights=PATH)",
            filename,
            checkpoints / filename,
            (checkpoints / filename).is_file(),
            url,
        )
        for trunk, (filename, url) in _TRUNK_WEIGHTS.items()
    ]
    inception = default_inception_path()
    reports.append(
        WeightsReport(
            "FID/KID fidelity metrics (or callbacks.fidelity.inception_weights=PATH)",
            INCEPTION_FILENAME,
            inception,
            inception.is_file(),
            INCEPTION_URL,
        )
    )
    return reports


def disk_report(output_dir: Path, presets: list[PresetReport]) -> dict[str, Any]:
    """Free space where runs are written, against the checkpoints the presets keep."""
    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    usage = shutil.disk_usage(existing)
    largest = max((p.checkpoint_mib for p in presets), default=0.0)
    return {
        "output_dir": output_dir,
        "free_gib": usage.free / GIB,
        "total_gib": usage.total / GIB,
        "largest_checkpoint_mib": largest,
        "per_run_gib": CHECKPOINTS_PER_RUN * largest / 1024,
    }


def dataset_reports(prepared_dir: Path) -> list[DatasetReport]:
    """Every ``<prepared_dir>/*/manifest.csv``: images per split and label, split fingerprint."""
    from mammo_anogan.data.splits import SPLITS_CSV, read_split_record

    reports = []
    for manifest_path in sorted(prepared_dir.glob("*/manifest.csv")):
        folder = manifest_path.parent
        try:
            manifest = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError):
            reports.append(DatasetReport(folder.name, folder, 0, note="manifest.csv unreadable"))
            continue
        report = DatasetReport(folder.name, folder, len(manifest))
        splits_path = folder / SPLITS_CSV
        if splits_path.is_file() and {"image_id", "label"} <= set(manifest.columns):
            splits = pd.read_csv(splits_path, dtype=str, keep_default_na=False)
            merged = manifest[["image_id", "label"]].merge(splits, on="image_id", how="left")
            merged["split"] = merged["split"].replace("", pd.NA).fillna("unsplit")
            for (split, label), count in merged.groupby(["split", "label"]).size().items():
                report.counts.setdefault(str(split), {})[str(label)] = int(count)
        else:
            report.note = "not split yet (train/score split it on first use)"
        record = read_split_record(folder) or {}
        fingerprint = record.get("fingerprint")
        if isinstance(fingerprint, dict):
            report.fingerprint = str(fingerprint.get("digest"))
        report.scheme = str(record.get("scheme", "salted-id-v0")) if record else None
        reports.append(report)
    return reports


# --------------------------------------------------------------------------------- report
def collect_report(cfg: DictConfig, hardware: Hardware | None = None) -> Report:
    """Everything :func:`render_report` prints (``cfg`` is the composed ``doctor`` config)."""
    hardware = hardware or Hardware.detect()
    gpus = gpu_report() if hardware.cuda_devices else []
    presets = [preset_report(name, hardware, gpus) for name in experiment_names()]
    return Report(
        software=software_report(),
        gpus=gpus,
        presets=presets,
        weights=weights_report(),
        disk=disk_report(Path(str(cfg.doctor.output_dir)), presets),
        datasets=dataset_reports(Path(str(cfg.doctor.prepared_dir))),
    )


def render_report(report: Report) -> str:
    """The report as plain text, one section per question."""
    lines = ["== software"]
    lines += [f"  {key}: {value}" for key, value in report.software.items()]
    lines.append("== GPUs")
    if not report.gpus:
        lines.append("  none visible: GPU presets need trainer=cpu here (slow beyond small resolutions)")
    for gpu in report.gpus:
        lines.append(
            f"  cuda:{gpu['index']} {gpu['name']}, {gpu['memory_gib']:.1f} GiB, "
            f"capability {gpu['capability']}"
        )
    lines.append("== presets (+experiment=NAME; memory is a rough estimate per device)")
    for preset in report.presets:
        mark = "fits" if preset.fits else "DOES NOT FIT"
        lines.append(
            f"  {preset.name}: {mark} - {preset.verdict}; {preset.resolution} px, "
            f"batch {preset.batch_size} per device, {preset.params_m:.1f} M parameters, "
            f"~{preset.memory_gib:.1f} GiB, last.ckpt ~{preset.checkpoint_mib:.0f} MiB"
        )
    lines.append("== weights for offline use (torch hub checkpoints folder)")
    for weights in report.weights:
        state = (
            "present" if weights.present else f"MISSING: put {weights.filename} (from {weights.url}) there"
        )
        lines.append(f"  {weights.used_by}: {weights.path} - {state}")
    lines.append("  projection.loss=disc_features, mse and ms_ssim and the SWD/FRD metrics need no download")
    disk = report.disk
    lines.append("== disk")
    lines.append(
        f"  {disk['output_dir']}: {disk['free_gib']:.1f} GiB free of {disk['total_gib']:.1f} GiB; "
        f"the largest preset writes ~{disk['largest_checkpoint_mib']:.0f} MiB per checkpoint, "
        f"~{disk['per_run_gib']:.1f} GiB per run ({CHECKPOINTS_PER_RUN} kept)"
    )
    lines.append("== prepared datasets")
    if not report.datasets:
        lines.append("  none found: python -m mammo_anogan.prepare data=... (see the README's quick start)")
    for dataset in report.datasets:
        head = f"  {dataset.name}: {dataset.images} image(s)"
        if dataset.fingerprint:
            head += f", split fingerprint {dataset.fingerprint} ({dataset.scheme})"
        lines.append(head + (f" - {dataset.note}" if dataset.note else ""))
        for split in ("train", "val", "test", "unsplit"):
            if split in dataset.counts:
                per_label = ", ".join(f"{n} {label}" for label, n in sorted(dataset.counts[split].items()))
                lines.append(f"    {split}: {per_label}")
        if dataset.counts and "train" not in dataset.counts:
            lines.append("    train is empty: label normal films (data.label=normal or data.labels_csv)")
    return "\n".join(lines) + "\n"


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> str:
    """Compose ``conf/doctor.yaml`` with the Hydra-style overrides in ``argv`` and print the report."""
    overrides = list(sys.argv[1:] if argv is None else argv)
    cfg = compose_config("doctor", overrides)
    text = render_report(collect_report(cfg))
    print(text, end="")
    return text


if __name__ == "__main__":
    main()
