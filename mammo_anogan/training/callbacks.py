"""Training monitors for the StyleGAN2 module: progress, throughput, sample grids, fidelity, best checkpoint.

GAN training is measured in images shown (kimg), never in optimizer steps: Lightning counts every
``optimizer.step()`` of manual optimisation in ``global_step`` (G, D and the lazy regularisation
steps), so every schedule here reads ``module.cur_nimg``. The callbacks rely only on the attributes
listed in docs/interfaces.md ("Training"): ``cur_nimg``, ``kimg``, ``generate``, ``z_dim``,
``augment_pipe``, ``ada``; they work with any LightningModule exposing them.

Slow monitoring work (sample grids, fidelity) is timed and excluded from the throughput figures,
so ``train/sec_per_kimg`` measures training, not evaluation.
"""

from __future__ import annotations

import io
import logging
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, RichProgressBar
from pytorch_lightning.callbacks.progress.rich_progress import CustomBarColumn
from rich.progress import ProgressColumn, Task, TextColumn
from rich.text import Text
from torch import Tensor, nn

from mammo_anogan.evaluation.fidelity import METRIC_NAMES, UNRELIABLE_AT_SMALL_N, FidelityMetrics
from mammo_anogan.training.preemption import preemption_stopping
from mammo_anogan.utils.errors import ConfigError, UserError
from mammo_anogan.utils.io import atomic_write_bytes

log = logging.getLogger(__name__)

FIDELITY_PREFIX = "fidelity/"


def current_kimg(pl_module: pl.LightningModule) -> float:
    """Thousands of real images shown so far (``module.cur_nimg / 1000``)."""
    return float(getattr(pl_module, "cur_nimg", 0)) / 1000.0


def _total_kimg_from(trainer: pl.Trainer, pl_module: pl.LightningModule) -> float | None:
    """The training length in kimg: a KimgStopping callback, else ``module.hparams.total_kimg``."""
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        if isinstance(callback, KimgStopping):
            return callback.total_kimg
    total = getattr(pl_module, "total_kimg", None)
    if total is None:
        total = getattr(getattr(pl_module, "hparams", {}), "get", lambda _key: None)("total_kimg")
    return float(total) if total is not None else None


class KimgSchedule:
    """Fires each time training crosses a multiple of ``every_kimg`` (robust to uneven batch sizes)."""

    def __init__(self, every_kimg: float) -> None:
        if every_kimg <= 0:
            raise ConfigError(f"every_kimg must be > 0, got {every_kimg}")
        self.every_kimg = float(every_kimg)
        self.last_nimg: int | None = None

    def _period(self, nimg: int) -> int:
        return int(math.floor(nimg / (self.every_kimg * 1000.0)))

    def due(self, nimg: int) -> bool:
        """True when ``nimg`` lies in a later period than the last fired one (or nothing fired yet)."""
        if self.last_nimg is None:
            return self._period(nimg) >= 1
        return self._period(nimg) > self._period(self.last_nimg)

    def mark(self, nimg: int) -> None:
        self.last_nimg = nimg


class _OverheadTimer:
    """Accumulates the wall time a monitoring callback spends, for ThroughputMonitor to subtract."""

    overhead_s: float = 0.0

    def _timed(self) -> _Timing:
        return _Timing(self)


class _Timing:
    def __init__(self, owner: _OverheadTimer) -> None:
        self.owner = owner
        self.start = 0.0

    def __enter__(self) -> _Timing:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.owner.overhead_s += time.perf_counter() - self.start


def _will_stop_after_this_batch(trainer: pl.Trainer, pl_module: pl.LightningModule, batch_idx: int) -> bool:
    """Whether this is the last training batch (kimg budget, should_stop, max_steps or last epoch)."""
    if trainer.should_stop:
        return True
    total = _total_kimg_from(trainer, pl_module)
    if total is not None and getattr(pl_module, "cur_nimg", 0) >= total * 1000:
        return True
    if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
        return True
    max_epochs = trainer.max_epochs
    if max_epochs is not None and max_epochs > 0 and trainer.current_epoch + 1 >= max_epochs:
        batches = trainer.num_training_batches
        return isinstance(batches, int) and batch_idx + 1 >= batches
    return False


# --------------------------------------------------------------------------------------------------


class KimgStopping(Callback):
    """Stop training once ``module.cur_nimg >= total_kimg * 1000`` (the length of a GAN run)."""

    def __init__(self, total_kimg: float) -> None:
        if total_kimg <= 0:
            raise ConfigError(f"total_kimg must be > 0, got {total_kimg}")
        self.total_kimg = float(total_kimg)

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if getattr(pl_module, "cur_nimg", 0) >= self.total_kimg * 1000:
            trainer.should_stop = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, pl_module)  # a resumed run that already finished stops at once

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._check(trainer, pl_module)


# --------------------------------------------------------------------------------------------------


class ThroughputMonitor(Callback):
    """Logs ``train/kimg``, ``train/sec_per_kimg``, ``train/images_per_sec``, learning rates, ADA state
    and peak GPU memory every ``log_every_n_steps`` training batches.

    Time spent by the other monitoring callbacks (fidelity, sample grids) is subtracted, and ADA
    figures are logged only when the module does not log them itself.
    """

    def __init__(self, log_every_n_steps: int | None = None) -> None:
        self.log_every_n_steps = log_every_n_steps
        self._window_start = 0.0
        self._window_nimg = 0
        self._window_overhead = 0.0
        self._batches = 0
        self._logs_kimg = False

    def _overhead(self, trainer: pl.Trainer) -> float:
        return sum(cb.overhead_s for cb in trainer.callbacks if isinstance(cb, _OverheadTimer))  # type: ignore[attr-defined]

    def _reset_window(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._window_start = time.perf_counter()
        self._window_nimg = int(getattr(pl_module, "cur_nimg", 0))
        self._window_overhead = self._overhead(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._reset_window(trainer, pl_module)
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batches += 1
        every = self.log_every_n_steps or trainer.log_every_n_steps or 1
        if self._batches % every:
            return
        metrics = self.measure(trainer, pl_module)
        self._reset_window(trainer, pl_module)
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=True, on_epoch=False, prog_bar=name == "train/kimg")

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """The figures for the current window (also usable outside the Lightning hooks)."""
        nimg = int(getattr(pl_module, "cur_nimg", 0))
        seconds = time.perf_counter() - self._window_start - (self._overhead(trainer) - self._window_overhead)
        images = nimg - self._window_nimg
        metrics: dict[str, float] = {}
        if "train/kimg" not in trainer.callback_metrics or self._logs_kimg:
            self._logs_kimg = True  # the module does not log it: we do, every time
            metrics["train/kimg"] = nimg / 1000.0
        if images > 0 and seconds > 0:
            metrics["train/images_per_sec"] = images / seconds
            metrics["train/sec_per_kimg"] = seconds / images * 1000.0
        metrics.update(self._learning_rates(trainer, pl_module))
        metrics.update(self._ada_state(trainer, pl_module))
        if pl_module.device.type == "cuda":
            metrics["train/peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        return metrics

    @staticmethod
    def _learning_rates(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        optimizers = trainer.optimizers
        names: Sequence[str] = getattr(pl_module, "optimizer_names", None) or (
            ("G", "D") if len(optimizers) == 2 else tuple(f"opt{i}" for i in range(len(optimizers)))
        )
        rates = {}
        for name, optimizer in zip(names, optimizers):
            for group_index, group in enumerate(optimizer.param_groups):
                suffix = "" if len(optimizer.param_groups) == 1 else f"_group{group_index}"
                rates[f"train/lr_{name}{suffix}"] = float(group["lr"])
        return rates

    @staticmethod
    def _ada_state(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        state: dict[str, float] = {}
        logged = trainer.callback_metrics
        augment_pipe = getattr(pl_module, "augment_pipe", None)
        if augment_pipe is not None and "train/ada_p" not in logged and hasattr(augment_pipe, "p"):
            state["train/ada_p"] = float(augment_pipe.p)
        ada = getattr(pl_module, "ada", None)
        r_t = getattr(ada, "r_t", None)
        if r_t is not None and "train/ada_rt" not in logged and math.isfinite(float(r_t)):
            state["train/ada_rt"] = float(r_t)
        return state


# --------------------------------------------------------------------------------------------------


def _fixed_latents(count: int, z_dim: int, seed: int) -> Tensor:
    return torch.randn(count, z_dim, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def generate_images(
    pl_module: pl.LightningModule, count: int, seed: int, batch_size: int, truncation_psi: float = 1.0
) -> Tensor:
    """``count`` images from ``module.generate`` (G_ema) for fixed, seeded latents; on the CPU."""
    latents = _fixed_latents(count, int(pl_module.z_dim), seed)
    chunks = [
        pl_module.generate(chunk.to(pl_module.device), truncation_psi=truncation_psi, noise_mode="const")
        .detach()
        .float()
        .cpu()
        for chunk in latents.split(batch_size)
    ]
    return torch.cat(chunks)


def image_grid(images: Tensor, nrow: int | None = None) -> Tensor:
    """``[-1, 1]`` images -> one ``uint8`` grid ``[3, H, W]`` (torchvision ``make_grid``, 2 px padding)."""
    from torchvision.utils import make_grid

    nrow = nrow or max(1, int(math.ceil(math.sqrt(images.shape[0]))))
    grid = make_grid(images.clamp(-1, 1), nrow=nrow, padding=2, normalize=True, value_range=(-1, 1))
    return (grid * 255).round().to(torch.uint8)


def png_bytes(grid: Tensor) -> bytes:
    """Encode a ``uint8`` ``[C, H, W]`` grid as PNG (grayscale when the channels are equal)."""
    array = grid.permute(1, 2, 0).cpu().numpy()
    image = Image.fromarray(array[..., 0]) if bool((grid[0] == grid[1:]).all()) else Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def log_image_to_loggers(trainer: pl.Trainer, key: str, grid: Tensor, step: int) -> None:
    """Send an image to the W&B and TensorBoard loggers present (CSV has no images)."""
    for logger in trainer.loggers:
        kind = type(logger).__name__
        try:
            if kind == "WandbLogger":
                logger.log_image(key=key, images=[grid.permute(1, 2, 0).cpu().numpy()], step=step)  # type: ignore[attr-defined]
            elif kind == "TensorBoardLogger":
                logger.experiment.add_image(key, grid, global_step=step)
        except Exception as err:  # an image upload must never stop training
            log.warning("could not log %s to %s: %s", key, kind, err)


class SampleGridCallback(_OverheadTimer, Callback):
    """A grid of G_ema samples for fixed latents every ``every_kimg`` kimg (and at the start and end).

    The latents never change during a run, so successive grids show how the *same* images evolve.
    Each grid is written atomically to ``<dirpath>/kimg<kimg>.png`` and sent to W&B/TensorBoard.
    """

    def __init__(
        self,
        every_kimg: float = 50.0,
        num_samples: int = 16,
        nrow: int | None = None,
        seed: int = 0,
        truncation_psi: float = 1.0,
        dirpath: str | os.PathLike[str] | None = None,
        batch_size: int = 16,
    ) -> None:
        if num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
        self.schedule = KimgSchedule(every_kimg)
        self.num_samples = num_samples
        self.nrow = nrow
        self.seed = seed
        self.truncation_psi = truncation_psi
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.batch_size = batch_size
        self.written: list[Path] = []

    def _directory(self, trainer: pl.Trainer) -> Path:
        return self.dirpath if self.dirpath is not None else Path(trainer.default_root_dir) / "samples"

    def save_grid(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Path | None:
        if not trainer.is_global_zero:
            return None
        with self._timed():
            images = generate_images(
                pl_module, self.num_samples, self.seed, self.batch_size, self.truncation_psi
            )
            grid = image_grid(images, self.nrow)
            path = self._directory(trainer) / f"kimg{current_kimg(pl_module):010.3f}.png"
            atomic_write_bytes(path, png_bytes(grid))
            log_image_to_loggers(trainer, "samples", grid, trainer.global_step)
        self.schedule.mark(int(pl_module.cur_nimg))
        self.written.append(path)
        return path

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.save_grid(trainer, pl_module)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.schedule.due(int(pl_module.cur_nimg)) and not preemption_stopping(trainer):
            self.save_grid(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule.last_nimg != int(pl_module.cur_nimg) and not preemption_stopping(trainer):
            self.save_grid(trainer, pl_module)


# --------------------------------------------------------------------------------------------------


class FidelityCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that ranks checkpoints only at the moment a fidelity figure is computed.

    A plain ModelCheckpoint compares the monitored value at epoch ends, when it may be stale (the
    weights have moved since the last fidelity evaluation). Here top-k saving happens right after
    :class:`FidelityCallback` logs, so the "best" file holds exactly the weights that were scored;
    ``last.ckpt`` is still written at epoch ends as usual. Metrics listed in
    :data:`~mammo_anogan.evaluation.fidelity.UNRELIABLE_AT_SMALL_N` are refused as the monitor.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scoring_now = False
        if self.monitor and self.monitor.startswith(FIDELITY_PREFIX):
            metric = self.monitor[len(FIDELITY_PREFIX) :]
            if metric in UNRELIABLE_AT_SMALL_N:
                raise ConfigError(
                    f"cannot select checkpoints by {self.monitor}: it is unreliable at small sample sizes "
                    f"({UNRELIABLE_AT_SMALL_N[metric]}); monitor fidelity/swd instead"
                )

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.dirpath is None:  # the run directory (train.py sets default_root_dir to Hydra's run dir)
            self.dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        super().setup(trainer, pl_module, stage)

    def save_after_fidelity(self, trainer: pl.Trainer) -> None:
        """Rank and save the current weights by the fidelity value just logged."""
        if self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        if self.monitor is not None and self.monitor not in candidates:
            return
        self._scoring_now = True
        try:
            self._save_topk_checkpoint(trainer, candidates)
        finally:
            self._scoring_now = False

    def _save_topk_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Tensor]) -> None:
        if self.monitor is not None and not self._scoring_now:
            return  # between fidelity evaluations the monitored value is stale
        super()._save_topk_checkpoint(trainer, monitor_candidates)


class FidelityCallback(_OverheadTimer, Callback):
    """SWD/FRD/FID/KID of G_ema samples vs the real training set, every ``every_kimg`` kimg and at the end.

    Logs ``fidelity/<metric>`` and ``fidelity/<metric>_baseline`` (two disjoint halves of the real
    set, same sample size as the fakes). Real images come from
    ``trainer.datamodule.real_images("train", max_images=num_real)``; the fakes from fixed latents.
    A metric that cannot run is reported once and skipped; training always goes on.
    """

    def __init__(
        self,
        every_kimg: float = 100.0,
        metrics: Iterable[str] = ("swd", "frd", "fid", "kid"),
        num_real: int = 128,
        num_fake: int | None = None,
        seed: int = 123,
        truncation_psi: float = 1.0,
        batch_size: int = 32,
        inception_weights: str | None = None,
        feature_extractor: nn.Module | None = None,
        frd_image_types: Sequence[str] | None = None,
        split: str = "train",
    ) -> None:
        self.schedule = KimgSchedule(every_kimg)
        self.metric_names = tuple(metrics)
        unknown = [m for m in self.metric_names if m not in METRIC_NAMES]
        if unknown:
            raise ConfigError(f"unknown fidelity metric(s) {unknown}; choose from {list(METRIC_NAMES)}")
        if num_real < 4:
            raise ConfigError(f"fidelity.num_real must be >= 4 (two halves of >= 2), got {num_real}")
        self.num_real = num_real
        self.num_fake = num_fake or num_real // 2
        self.seed = seed
        self.truncation_psi = truncation_psi
        self.batch_size = batch_size
        self.inception_weights = inception_weights
        self.feature_extractor = feature_extractor
        self.frd_image_types = frd_image_types
        self.split = split
        self.fidelity: FidelityMetrics | None = None
        self.history: list[dict[str, float]] = []
        self._disabled_reason: str | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for callback in trainer.checkpoint_callbacks:
            monitor = getattr(callback, "monitor", None)
            if monitor and monitor.startswith(FIDELITY_PREFIX):
                metric = monitor[len(FIDELITY_PREFIX) :].removesuffix("_baseline")
                if metric not in self.metric_names:
                    raise ConfigError(
                        f"checkpoint monitor {monitor} is not computed: add {metric!r} to "
                        f"callbacks.fidelity.metrics (now {list(self.metric_names)})"
                    )

    def _prepare(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> FidelityMetrics | None:
        if self.fidelity is not None or self._disabled_reason is not None:
            return self.fidelity
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "real_images"):
            self._disable("the datamodule has no real_images(split, max_images)")
            return None
        try:
            real = datamodule.real_images(self.split, max_images=self.num_real)
            fidelity = FidelityMetrics(
                metrics=self.metric_names,
                feature_extractor=self.feature_extractor,
                inception_weights=self.inception_weights,
                device=pl_module.device,
                seed=self.seed,
                frd_image_types=self.frd_image_types,
            )
            fidelity.set_real(real.float())
        except UserError as err:
            self._disable(str(err))
            return None
        if not fidelity.available:
            self._disable("no fidelity metric can run here (see the warnings above)")
            return None
        self.fidelity = fidelity
        return fidelity

    def _disable(self, reason: str) -> None:
        self._disabled_reason = reason
        log.warning("fidelity metrics disabled: %s; training goes on", reason)

    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        """Compute the metrics for the current G_ema; ``{"fidelity/<name>": value}``."""
        self.schedule.mark(int(pl_module.cur_nimg))
        with self._timed():
            fidelity = self._prepare(trainer, pl_module)
            if fidelity is None:
                return {}
            fake = generate_images(pl_module, self.num_fake, self.seed, self.batch_size, self.truncation_psi)
            try:
                values = fidelity.compute(fake)
            except UserError as err:
                log.warning("fidelity evaluation skipped at %.1f kimg: %s", current_kimg(pl_module), err)
                return {}
        metrics = {f"{FIDELITY_PREFIX}{name}": float(value) for name, value in values.items()}
        self.history.append({"kimg": current_kimg(pl_module), **metrics})
        summary = ", ".join(f"{k[len(FIDELITY_PREFIX) :]}={v:.4g}" for k, v in metrics.items())
        log.info("fidelity at %.1f kimg: %s", current_kimg(pl_module), summary)
        return metrics

    def _evaluate_and_log(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, inside_hook: bool
    ) -> None:
        metrics = self.evaluate(trainer, pl_module)
        if not metrics:
            return
        # Straight to the loggers and callback_metrics rather than pl_module.log: a value logged from
        # a callback hook would be re-sent to the loggers at every later step, and on_train_end
        # forbids self.log. ModelCheckpoint and the sweeper read trainer.callback_metrics.
        trainer.callback_metrics.update({name: torch.tensor(value) for name, value in metrics.items()})
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
                if not inside_hook:
                    logger.save()
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, FidelityCheckpoint):
                callback.save_after_fidelity(trainer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if preemption_stopping(trainer):
            return  # a pre-empted run saves and exits: no metrics (they can outlast the kill wait)
        nimg = int(pl_module.cur_nimg)
        final = _will_stop_after_this_batch(trainer, pl_module, batch_idx)
        if self.schedule.due(nimg) or (final and self.schedule.last_nimg != nimg):
            self._evaluate_and_log(trainer, pl_module, inside_hook=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule.last_nimg != int(pl_module.cur_nimg) and not preemption_stopping(trainer):
            self._evaluate_and_log(trainer, pl_module, inside_hook=False)


# --------------------------------------------------------------------------------------------------


class _KimgColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        decimals = 1 if task.total is None or task.total >= 10 else 3
        total = f"{task.total:g}" if task.total is not None else "?"
        return Text(f"{task.completed:.{decimals}f}/{total} kimg", style="progress.download")


class _EtaColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        eta = task.fields.get("eta_s")
        if eta is None or not math.isfinite(eta):
            return Text("ETA --:--:--", style="progress.remaining")
        hours, rest = divmod(int(eta), 3600)
        return Text(f"ETA {hours:d}:{rest // 60:02d}:{rest % 60:02d}", style="progress.remaining")


class KimgProgressBar(RichProgressBar):
    """A Rich progress bar in kimg: ``12.3/500 kimg``, ETA from the measured kimg rate, and losses.

    Epochs mean little for a GAN (the bar would restart every pass over a small data set), so one
    task spans the whole run. ``total_kimg`` defaults to the KimgStopping callback's budget.
    """

    def __init__(self, total_kimg: float | None = None, refresh_rate: int = 1, leave: bool = True) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave)
        self.total_kimg = total_kimg
        self._rate_start: tuple[float, float] | None = None

    def configure_columns(self, trainer: pl.Trainer) -> list:
        return [
            TextColumn("[progress.description]{task.description}"),
            CustomBarColumn(
                complete_style=self.theme.progress_bar,
                finished_style=self.theme.progress_bar_finished,
                pulse_style=self.theme.progress_bar_pulse,
            ),
            _KimgColumn(),
            _EtaColumn(),
        ]

    def eta_seconds(self, kimg: float, total: float | None) -> float | None:
        """Seconds left at the average kimg rate since the first batch (warm-up excluded)."""
        now = time.perf_counter()
        if self._rate_start is None:
            self._rate_start = (now, kimg)
            return None
        elapsed, done = now - self._rate_start[0], kimg - self._rate_start[1]
        if total is None or done <= 0 or elapsed <= 0:
            return None
        return max(0.0, total - kimg) * elapsed / done

    def _ensure_task(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.progress is None or self.train_progress_bar_id is not None:
            return
        if self.total_kimg is None:
            self.total_kimg = _total_kimg_from(trainer, pl_module)
        self.train_progress_bar_id = self.progress.add_task(
            "training", total=self.total_kimg, completed=current_kimg(pl_module), eta_s=None
        )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.is_disabled:
            return
        self._ensure_task(trainer, pl_module)
        self.refresh()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.is_disabled or self.progress is None:
            return
        self._ensure_task(trainer, pl_module)
        kimg = current_kimg(pl_module)
        assert self.train_progress_bar_id is not None
        self.progress.update(
            self.train_progress_bar_id, completed=kimg, eta_s=self.eta_seconds(kimg, self.total_kimg)
        )
        self._update_metrics(trainer, pl_module)
        self.refresh()

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        metrics.pop("train/kimg", None)  # already shown by the bar
        return metrics
