"""Train StyleGAN2 on normal mammograms: ``python -m mammo_anogan.train +experiment=demo``.

Hydra composes ``conf/train.yaml`` (data, model, trainer, logger, callbacks); this module builds the
objects, trains for ``model.total_kimg`` thousand images, and exports ``generator.pt`` (G_ema) and
``discriminator.pt`` to the run directory (``hydra.run.dir``) for scoring. Resume with
``hydra.run.dir=<old run> ckpt_path=last``.

Also here: the trainer plumbing the module needs - atomic checkpoint files loaded with
``weights_only=True``, checkpoints scheduled in kimg rather than optimiser steps, and a DDP strategy
that leaves gradient averaging to :class:`~mammo_anogan.models.gan_module.StyleGAN2Module`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.overrides.distributed import _sync_module_states
from pytorch_lightning.strategies import DDPStrategy

import mammo_anogan.utils.config  # noqa: F401  (registers the resolvers before Hydra composes)
from mammo_anogan.config_schema import validate_train_config
from mammo_anogan.data.splits import describe_fingerprint
from mammo_anogan.run_state import check_resume, training_fingerprint, warn_if_new_run_overwrites
from mammo_anogan.training.devices import Hardware, fit_trainer_to_hardware
from mammo_anogan.training.nonfinite import check_finite_weights
from mammo_anogan.training.preemption import PreemptionCheckpoint, preemption_stopping, stopped_by_preemption
from mammo_anogan.training.sweep_metric import check_optimized_metric
from mammo_anogan.training.sweep_metric import optimized_metric_value as sweep_metric_value
from mammo_anogan.utils.errors import ConfigError, UserError, exit_on_user_error
from mammo_anogan.utils.fingerprint import Fingerprint, stamp
from mammo_anogan.utils.io import atomic_torch_save, remove_stale_temp_files, safe_torch_load
from mammo_anogan.utils.privacy import dataset_salt, save_sanitised_config

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
BEST_EXPORT_DIR = "best"


# ---------------------------------------------------------------------------------------------------
# Trainer plumbing
# ---------------------------------------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written atomically (temp + fsync + rename) and read with ``weights_only=True``.

    A run killed while saving keeps the previous ``last.ckpt`` intact. Loading refuses pickled code;
    this works because everything the module, the optimisers, the loops and ModelCheckpoint store is
    tensors and plain containers (hyper-parameters are saved as plain dicts, RNG states as tensors).
    Weights holding NaN/Inf are refused, so a diverged step can never overwrite the last good file.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        check_finite_weights(checkpoint.get("state_dict", {}), f"checkpoint {Path(path).name}")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: Any = None) -> Any:
        return safe_torch_load(path, map_location="cpu")


class GradientSyncDDPStrategy(DDPStrategy):
    """DDP processes without the ``DistributedDataParallel`` wrapper (``trainer=ddp``).

    A StyleGAN2 step has four backward passes (two with double backward) and toggles which network
    has gradients; DDP's reducer expects one backward per forward over a fixed parameter set. The
    module therefore averages gradients itself (one flat all-reduce per phase); this strategy only
    starts the processes, broadcasts rank 0's initial weights, and shards the data.
    """

    def configure_ddp(self) -> None:
        assert isinstance(self.model, pl.LightningModule)
        _sync_module_states(self.model)


class KimgCheckpoint(ModelCheckpoint):
    """Checkpoint every ``every_n_kimg`` thousand images and at the end of training, plus ``last.ckpt``.

    Lightning's step-based triggers count optimiser steps (2-4 per minibatch with manual
    optimisation), so they are disabled. Ranking by a metric is left to the fidelity checkpoint.
    """

    def __init__(self, every_n_kimg: float = 50.0, **kwargs: Any) -> None:
        if every_n_kimg <= 0:
            raise ConfigError(f"checkpoint.every_n_kimg must be > 0, got {every_n_kimg}")
        kwargs.setdefault("save_last", True)
        kwargs.setdefault("filename", "kimg{kimg:010.3f}")
        kwargs.setdefault("auto_insert_metric_name", False)
        kwargs.setdefault("enable_version_counter", False)
        super().__init__(every_n_epochs=0, every_n_train_steps=0, **kwargs)
        self.every_n_kimg = float(every_n_kimg)
        self._last_tick = 0

    def _tick(self, pl_module: pl.LightningModule) -> int:
        return int(getattr(pl_module, "cur_nimg", 0) // (self.every_n_kimg * 1000))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_tick = self._tick(pl_module)  # after a resume: do not re-save the restored tick

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        tick = self._tick(pl_module)
        if tick > self._last_tick and not preemption_stopping(trainer):
            self._last_tick = tick
            self.save_now(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not preemption_stopping(trainer):  # a pre-emption wrote last.ckpt already: exit fast
            self.save_now(trainer)

    def save_last_only(self, trainer: pl.Trainer) -> None:
        """Only ``last.ckpt`` for the current state (the pre-emption save: one file, fast)."""
        if self._should_skip_saving_checkpoint(trainer):
            return  # already saved at this step
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Nothing: saving is scheduled in kimg. Lightning < 2.6 wrote ``last.ckpt`` at every epoch end
        (with ``save_last=True``), i.e. every few minibatches on a small dataset, outside the schedule
        and after a minibatch whose NaN had not yet been reported (found by ``make test-oldest``)."""

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Nothing: there is no validation loop; fidelity is measured in kimg by its callback."""

    def save_now(self, trainer: pl.Trainer) -> None:
        """Top-k (or periodic) checkpoint and ``last.ckpt`` for the current state, once per step."""
        if self._should_skip_saving_checkpoint(trainer):
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def _monitor_candidates(self, trainer: pl.Trainer) -> dict[str, torch.Tensor]:
        candidates = super()._monitor_candidates(trainer)
        candidates["kimg"] = torch.tensor(float(getattr(trainer.lightning_module, "kimg", 0.0)))
        return candidates


class BestNetworkExport(Callback):
    """Export G_ema/D to ``<run dir>/best`` whenever a monitoring ModelCheckpoint records a new best.

    Works with any ``ModelCheckpoint`` that has a ``monitor`` (e.g. the fidelity checkpoint), so the
    best networks are usable for scoring without Lightning, like the final export.
    """

    def __init__(self, export_dir: str | os.PathLike[str]) -> None:
        self.export_dir = Path(export_dir)
        self._exported: tuple[str, float | None] | None = None

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A new best keeps the same file name (``best.ckpt`` is overwritten), so the best is
        # identified by path *and* score: keyed on the path alone, only the first best was exported.
        best = [
            (c.best_model_path, None if c.best_model_score is None else float(c.best_model_score))
            for c in trainer.checkpoint_callbacks
            if getattr(c, "monitor", None) and getattr(c, "best_model_path", "")
        ]
        if not best or best[0] == self._exported:
            return
        self._exported = best[0]
        if trainer.is_global_zero and hasattr(pl_module, "export_networks"):
            pl_module.export_networks(self.export_dir)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._check(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check(trainer, pl_module)


class RunFingerprint(Callback):
    """Stamp every checkpoint (and, through the module, every export) with the run's fingerprint.

    ``ckpt_path=...`` is checked against it at start-up (:func:`mammo_anogan.run_state.check_resume`).
    """

    def __init__(self, fingerprint: Fingerprint) -> None:
        self.fingerprint = fingerprint

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pl_module.run_fingerprint = self.fingerprint  # read by StyleGAN2Module.export_networks

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        stamp(checkpoint, self.fingerprint)


# ---------------------------------------------------------------------------------------------------
# Building the run from the config
# ---------------------------------------------------------------------------------------------------
def run_dir_of(cfg: DictConfig) -> Path:
    """Hydra's output directory (``hydra.run.dir``), or ``cfg.run_dir`` / the cwd outside Hydra."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.get("run_dir") or os.getcwd())


def ensure_prepared_dataset(cfg: DictConfig) -> Path:
    """Return the prepared dataset dir; prepare synthetic data automatically when it is missing."""
    dataset_dir = Path(cfg.data.dataset_dir)
    if (dataset_dir / "manifest.csv").is_file():
        return dataset_dir
    command = f"python -m mammo_anogan.prepare data={cfg.data.get('name', '...')}"
    if cfg.data.get("reader") != "synthetic":
        raise UserError(
            f"no prepared dataset at {dataset_dir}: run `{command}` with the same data.* settings"
        )
    try:
        from mammo_anogan.prepare import prepare_dataset
    except ImportError:
        raise UserError(f"no prepared dataset at {dataset_dir}: run `{command}` first") from None
    log.info("preparing the synthetic dataset in %s (first run only)", dataset_dir)
    prepare_cfg = OmegaConf.create(
        {
            "data": OmegaConf.to_container(cfg.data, resolve=True),
            "prepare": {"out_dir": str(dataset_dir), "workers": 0, "file_timeout_s": 120, "progress": False},
        }
    )
    prepare_dataset(prepare_cfg)
    if not (dataset_dir / "manifest.csv").is_file():
        raise UserError(f"preparing the synthetic dataset did not create {dataset_dir / 'manifest.csv'}")
    return dataset_dir


def log_split(record: dict[str, Any]) -> None:
    """Log the split's fingerprint (comparable across machines and labs) from ``splits.json``."""
    fingerprint = record.get("fingerprint")
    if isinstance(fingerprint, dict):
        log.info("%s", describe_fingerprint(fingerprint, record.get("scheme")))


def resolve_precision(trainer_cfg: DictConfig) -> str:
    """``auto`` -> ``bf16-mixed`` on a bf16-capable GPU, else ``32-true``; fp32 always on CPU."""
    precision = str(trainer_cfg.get("precision", "auto"))
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if not on_gpu:
        return "32-true"
    if precision == "auto":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
    return precision


#: What third-party constructors (Lightning's Trainer, the loggers) raise for a bad config value.
THIRD_PARTY_CONFIG_ERRORS = (MisconfigurationException, ValueError, TypeError)


def instantiate_block(
    block: Any, key: str, user_errors: tuple[type[BaseException], ...] = (UserError,), **kwargs: Any
) -> Any:
    """``hydra.utils.instantiate`` whose user errors stay one line naming the config key.

    Hydra wraps whatever a constructor raises in a multi-line ``InstantiationException``; a
    :class:`UserError` from our classes (``every_kimg must be > 0``), and for third-party blocks
    ``user_errors`` such as Lightning's ``MisconfigurationException`` / ``ValueError`` (an invalid
    ``trainer.*`` value), become a one-line :class:`ConfigError` prefixed with ``key``
    (e.g. ``callbacks.sample_grid``) instead. Anything else keeps its traceback (a bug).
    """
    try:
        return hydra.utils.instantiate(block, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if not isinstance(cause, (UserError, *user_errors)):
            raise
        message = " ".join(str(cause).split())
        if not message.startswith(key.split(".")[0] + "."):  # messages naming their key keep it
            message = f"{key}: {message}"
        raise ConfigError(message) from None


def instantiate_callbacks(cfg: DictConfig, run_dir: Path) -> list[Callback]:
    """Callbacks from ``cfg.callbacks`` (a dict of ``_target_`` blocks, may be empty) + the checkpointer."""
    callbacks: list[Callback] = [PreemptionCheckpoint()]  # first: others see its decision at once
    for name, block in (cfg.get("callbacks") or {}).items():
        if isinstance(block, DictConfig) and "_target_" in block:
            callbacks.append(instantiate_block(block, f"callbacks.{name}"))
        elif block is not None:
            log.debug("callbacks.%s has no _target_; skipped", name)
    checkpoint_cfg = OmegaConf.to_container(cfg.get("checkpoint") or {}, resolve=True)
    assert isinstance(checkpoint_cfg, dict)
    callbacks.append(KimgCheckpoint(dirpath=str(run_dir / CHECKPOINT_DIR), **checkpoint_cfg))
    callbacks.append(BestNetworkExport(run_dir / BEST_EXPORT_DIR))
    return callbacks


def instantiate_loggers(cfg: DictConfig) -> list[Any] | bool:
    """Loggers from ``cfg.logger``: one ``_target_`` block or a dict of them; none -> ``False``."""
    logger_cfg = cfg.get("logger")
    if not logger_cfg:
        return False
    if "_target_" in logger_cfg:
        return [instantiate_block(logger_cfg, "logger", THIRD_PARTY_CONFIG_ERRORS)]
    loggers = [
        instantiate_block(b, f"logger.{name}", THIRD_PARTY_CONFIG_ERRORS)
        for name, b in logger_cfg.items()
        if isinstance(b, DictConfig) and "_target_" in b
    ]
    return loggers or False


def resolve_ckpt_path(cfg: DictConfig, run_dir: Path) -> str | None:
    """``ckpt_path=last`` -> ``<run dir>/checkpoints/last.ckpt``; a path must exist."""
    value = cfg.get("ckpt_path")
    if value in (None, "", "null"):
        return None
    path = run_dir / CHECKPOINT_DIR / LAST_CHECKPOINT if str(value) == "last" else Path(str(value))
    if not path.is_file():
        raise UserError(
            f"ckpt_path={value}: no checkpoint at {path} "
            "(resume with hydra.run.dir=<the earlier run's directory> ckpt_path=last)"
        )
    return str(path)


def fit_trainer(cfg: DictConfig, hardware: Hardware | None = None) -> dict[str, Any]:
    """:func:`fit_trainer_to_hardware` for ``cfg.trainer`` (errors before any data work)."""
    batch_size = OmegaConf.select(cfg, "data.loader.batch_size", default=None)
    return fit_trainer_to_hardware(cfg.trainer, hardware, batch_size=batch_size, task="train")


def build_trainer(cfg: DictConfig, run_dir: Path, fitted: dict[str, Any] | None = None) -> pl.Trainer:
    """The Lightning Trainer: kimg-scheduled, atomic checkpoints, epochs/steps unbounded.

    The ``trainer`` block is first fitted to the machine (:func:`fit_trainer_to_hardware`): a GPU
    preset on a CPU machine is one line naming ``trainer=cpu``, more GPUs than visible are capped
    with a warning, and plain DDP is refused with the spelling that works.
    """
    trainer_cfg = cfg.trainer
    overrides = {
        **(fit_trainer(cfg) if fitted is None else fitted),
        "precision": resolve_precision(trainer_cfg),
        "max_epochs": -1,
        "max_steps": -1,  # training length is model.total_kimg (checked by the module every step)
        "default_root_dir": str(run_dir),
        "callbacks": instantiate_callbacks(cfg, run_dir),
        "logger": instantiate_loggers(cfg),
        "plugins": [AtomicCheckpointIO()],
    }
    # _convert_="partial": plain lists for callbacks/plugins (Lightning < 2.6 wraps a ListConfig in a list)
    return instantiate_block(
        trainer_cfg, "trainer", THIRD_PARTY_CONFIG_ERRORS, _convert_="partial", **overrides
    )


def optimized_metric_value(cfg: DictConfig, trainer: pl.Trainer) -> float | None:
    """The value of ``optimized_metric`` for the sweeper (``None`` when none is set).

    A metric never logged is a one-line UserError (see ``training.sweep_metric.optimized_metric_value``).
    """
    return sweep_metric_value(cfg, dict(trainer.callback_metrics))


def train(cfg: DictConfig) -> float | None:
    """Train from a composed config; returns the ``optimized_metric`` value when one is set."""
    from mammo_anogan.data.datamodule import MammoDataModule
    from mammo_anogan.data.splits import empty_train_reason
    from mammo_anogan.prepare import ensure_dataset_split

    validate_train_config(cfg)  # one-line ConfigError before any data or device work
    check_optimized_metric(cfg)  # a sweep's metric must be producible (before any trial trains)
    fitted = fit_trainer(cfg)  # the preset on this machine: capped devices, or one line naming the fix
    run_dir = run_dir_of(cfg)
    pl.seed_everything(int(cfg.get("seed", 0)), workers=True)
    dataset_dir = ensure_prepared_dataset(cfg)
    log_split(ensure_dataset_split(cfg.data, dataset_dir))  # salt-independent; fingerprint printed
    # Fingerprint checks (dataset settings; the resumed checkpoint's settings and weights) before the
    # run writes anything, config.yaml included: a refused resume leaves the run dir as it was.
    fingerprint = training_fingerprint(cfg, dataset_dir, resolve_precision(cfg.trainer))
    resume = check_resume(resolve_ckpt_path(cfg, run_dir), fingerprint)
    warn_if_new_run_overwrites(run_dir, CHECKPOINT_DIR, resume.path)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # before any rank writes a checkpoint
        remove_stale_temp_files(run_dir / CHECKPOINT_DIR)  # left by a kill during an atomic save
        save_sanitised_config(cfg, run_dir, dataset_salt(dataset_dir))  # no raw data.source
    datamodule = MammoDataModule.from_config(cfg.data)
    datamodule.setup("fit")
    num_train_images = len(datamodule.dataset("train"))
    if num_train_images == 0:
        assert datamodule.splits is not None
        raise UserError(empty_train_reason(datamodule.splits, dataset_dir))
    model = instantiate_block(cfg.model, "model", num_train_images=num_train_images, _convert_="all")
    resume.check_fits(model)  # one line instead of Lightning's size-mismatch traceback
    trainer = build_trainer(cfg, run_dir, fitted)
    trainer.callbacks.append(RunFingerprint(fingerprint))
    ckpt_path = resume.path
    log.info(
        "training on %d normal images at %dpx for %.1f kimg (ADA %s)",
        num_train_images,
        int(cfg.data.resolution),
        float(cfg.model.total_kimg),
        "on" if model.augment_pipe is not None else "off",
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    if stopped_by_preemption(trainer, model.kimg, run_dir):
        return None
    if trainer.is_global_zero and cfg.get("export", True):
        g_path, _ = model.export_networks(run_dir)
        log.info("exported G_ema to %s", g_path)
    return optimized_metric_value(cfg, trainer)


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return exit_on_user_error(train)(cfg)


if __name__ == "__main__":
    main()
