"""Fit the ``trainer`` config to the machine at hand, before Lightning sees it.

Why: a preset written for two GPUs used to fail on a laptop with Lightning's ``No supported gpu
backend found!`` traceback, and ``trainer=cpu`` after a DDP preset used to start Lightning's plain
DDP on two CPU processes, which StyleGAN2 training cannot use. Here every mismatch either becomes a
capped run with a warning that says what changed (more GPUs asked for than are visible) or one
:class:`~mammo_anogan.utils.errors.ConfigError` line that names the override that works.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from mammo_anogan.utils.errors import ConfigError

log = logging.getLogger(__name__)

#: The DDP strategy StyleGAN2Module needs (it averages gradients itself); ``trainer=ddp`` selects it.
GRADIENT_SYNC_STRATEGY = "mammo_anogan.train.GradientSyncDDPStrategy"
_GPU_ACCELERATORS = ("gpu", "cuda")


@dataclass(frozen=True)
class Hardware:
    """What this process can use: the number of visible CUDA devices (0 on a CPU-only machine)."""

    cuda_devices: int

    @classmethod
    def detect(cls) -> Hardware:
        return cls(torch.cuda.device_count() if torch.cuda.is_available() else 0)


def strategy_name(strategy: Any) -> str:
    """``auto``/``ddp``/... for a string, the ``_target_`` for a config block, else the class path."""
    if strategy is None:
        return "auto"
    if isinstance(strategy, str):
        return strategy
    if isinstance(strategy, Mapping) or hasattr(strategy, "get"):
        target = strategy.get("_target_")
        if target:
            return str(target)
    kind = type(strategy)
    return f"{kind.__module__}.{kind.__qualname__}"


def requested_devices(devices: Any, on_gpu: bool, hardware: Hardware) -> int:
    """How many devices Lightning would start for ``trainer.devices`` (int, ``auto``, ``-1``, a list)."""
    if isinstance(devices, str) and devices.strip().lower() == "auto":
        return hardware.cuda_devices if on_gpu else 1
    if isinstance(devices, (list, tuple)) or (hasattr(devices, "__len__") and not isinstance(devices, str)):
        return len(devices)
    try:
        count = int(devices)
    except (TypeError, ValueError):
        raise ConfigError(
            f"trainer.devices={devices!r} is not allowed; use a number of devices, -1 (all) or auto"
        ) from None
    if count == -1:
        return hardware.cuda_devices if on_gpu else 1
    if count < 1:
        raise ConfigError(f"trainer.devices={count} is out of range; it must be >= 1 (or -1: all)")
    return count


def fit_trainer_to_hardware(
    trainer_cfg: Mapping[str, Any] | Any,
    hardware: Hardware | None = None,
    batch_size: int | None = None,
    task: str = "train",
) -> dict[str, Any]:
    """Overrides (``devices``, ``strategy``) that make ``trainer_cfg`` run on ``hardware``.

    ``trainer_cfg`` is the composed ``trainer`` block (``accelerator``, ``devices``, ``strategy``,
    ``num_nodes``); ``batch_size`` the per-device batch (for the warning's global batch); ``task``
    ``train`` (plain DDP is refused: StyleGAN2Module synchronises gradients itself) or ``score``.
    Returns ``{}`` when the config fits as it is.

    Raises :class:`ConfigError`: a GPU accelerator on a machine without CUDA (the fix is
    ``trainer=cpu``), or several training processes under a strategy other than ``trainer=ddp``.
    """
    hardware = hardware or Hardware.detect()
    accelerator = str(trainer_cfg.get("accelerator", "auto") or "auto").lower()
    strategy = strategy_name(trainer_cfg.get("strategy", "auto"))
    nodes = int(trainer_cfg.get("num_nodes", 1) or 1)
    if accelerator in _GPU_ACCELERATORS and hardware.cuda_devices == 0:
        raise ConfigError(
            f"trainer.accelerator={accelerator} but this machine has no usable CUDA GPU "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False): add trainer=cpu to {task} "
            "on the CPU"
        )
    on_gpu = accelerator in _GPU_ACCELERATORS or (accelerator == "auto" and hardware.cuda_devices > 0)
    devices = requested_devices(trainer_cfg.get("devices", 1), on_gpu, hardware)
    overrides: dict[str, Any] = {}
    if on_gpu and devices > hardware.cuda_devices:
        capped = hardware.cuda_devices
        batch = ""
        if batch_size:
            batch = (
                f" (data.loader.batch_size={batch_size} is per device: the global batch becomes "
                f"{batch_size * capped} instead of {batch_size * devices}; pass trainer.devices={capped} "
                f"data.loader.batch_size={batch_size * devices // capped} to keep it)"
            )
        log.warning(
            "trainer.devices=%d but %d CUDA GPU(s) are visible: %s on %d%s",
            devices,
            capped,
            "training" if task == "train" else "scoring",
            capped,
            batch,
        )
        overrides["devices"] = devices = capped
    processes = devices * nodes
    if processes == 1 and strategy == GRADIENT_SYNC_STRATEGY:
        overrides["strategy"] = strategy = "auto"  # one process: no process group at all
    if task == "train" and processes > 1 and strategy != GRADIENT_SYNC_STRATEGY:
        where = "" if on_gpu else " trainer.accelerator=cpu"
        raise ConfigError(
            f"trainer.devices={devices} with trainer.strategy={strategy} would start Lightning's plain DDP, "
            "which StyleGAN2 training cannot use (it synchronises gradients itself): pass trainer.devices=1 "
            f"for one {'GPU' if on_gpu else 'process'}, or trainer=ddp trainer.devices={devices}{where} "
            f"for {devices} processes"
        )
    return overrides
