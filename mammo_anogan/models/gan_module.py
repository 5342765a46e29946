"""StyleGAN2 training as a LightningModule (manual optimisation, lazy regularisation, EMA, ADA).

One ``training_step`` runs the four StyleGAN2 phases on one minibatch of reals, each with its own
optimiser step, as in the paper: G main (non-saturating loss, style mixing), G path-length
regularisation every ``pl_interval`` steps, D main (logistic loss) and lazy R1 every ``r1_interval``
steps. Then ``G_ema`` is updated and ``cur_nimg`` advances by the *global* batch.

Schedules use images shown (``cur_nimg``/kimg), never ``trainer.global_step``: with manual
optimisation Lightning counts every ``optimizer.step()`` (2 to 4 per minibatch here).

Multi-GPU: run with :class:`mammo_anogan.train.GradientSyncDDPStrategy` (``trainer=ddp``), which does
*not* wrap the module in ``DistributedDataParallel``. The module averages gradients itself after every
phase with one flat all-reduce per network, which is exact for the four-backward-pass step and for the
R1 double backward (DDP's reducer supports neither cleanly). The path-length running mean and the ADA
statistics are all-reduced as well, so every rank holds identical state.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning import LightningModule
from torch import Tensor, nn

from mammo_anogan.models.ema import ema_beta, update_ema
from mammo_anogan.models.losses import (
    PathLengthPenalty,
    d_logistic_loss,
    g_nonsaturating_loss,
    lazy_regularization_adam,
    r1_loss,
    resolve_r1_gamma,
)
from mammo_anogan.models.stylegan2 import AdaController, AugmentPipe, Discriminator, Generator, save_network
from mammo_anogan.training.nonfinite import ON_NONFINITE_CHOICES, NonFiniteError
from mammo_anogan.utils.errors import ConfigError
from mammo_anogan.utils.profiling import phase
from mammo_anogan.utils.torch_compat import supports_fused_adam

OPTIMIZER_DEFAULTS: dict[str, Any] = {"g_lr": 0.0025, "d_lr": 0.0025, "betas": [0.0, 0.99], "eps": 1e-8}
LOSS_DEFAULTS: dict[str, Any] = {
    "r1_gamma": "preset",
    "r1_interval": 16,
    "pl_weight": 2.0,
    "pl_interval": 4,
    "pl_decay": 0.01,
    "pl_batch_shrink": 2,
    "style_mixing_prob": 0.9,
    "reg_precision": "fp32",
}
#: ``model.loss.reg_precision``: the lazy regularisers (R1, path length) in fp32 with autocast off, or
#: under the trainer's autocast like the main phases (the squared norms are summed in fp32 either way).
REG_PRECISIONS = ("fp32", "autocast")
EMA_DEFAULTS: dict[str, Any] = {"kimg": 10.0, "rampup": 0.05}
ADA_DEFAULTS: dict[str, Any] = {
    "enabled": "auto",
    "max_train_images": 10_000,
    "target": 0.6,
    "interval": 4,
    "kimg": 500.0,
    "initial_p": 0.0,
    "pipe": {},
}

#: Files written by :meth:`StyleGAN2Module.export_networks` (read by scoring/projection).
GENERATOR_FILE = "generator.pt"
DISCRIMINATOR_FILE = "discriminator.pt"


def _plain(value: Any) -> Any:
    """DictConfig/ListConfig -> plain containers (hparams must unpickle with ``weights_only=True``)."""
    if isinstance(value, DictConfig) or OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _with_defaults(name: str, defaults: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Merge a config block over its defaults; an unknown key (a typo) is a one-line ConfigError."""
    given = dict(_plain(given) or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(
            f"model.{name} has unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(defaults))}"
        )
    return {**copy.deepcopy(dict(defaults)), **given}


def _world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _average_gradients(grads: list[Tensor], loss: Tensor) -> Tensor:
    """Average ``grads`` over ranks (one flat all-reduce) and return a 0-d fp32 flag, 1 = non-finite.

    The flag covers the loss and every gradient and is computed on the device (``_foreach_norm``): no
    host sync. Under DDP the loss rides along in the flat buffer as ``loss * 0`` (NaN for a NaN/Inf
    loss), so after the all-reduce every rank sees the same verdict and takes the same decision. With
    one process nothing is flattened or copied. NaN/Inf are *detected* (and the step refused by the
    caller), never silently zeroed, so a diverging run is noticed.
    """
    world = _world_size()
    if world > 1:
        flat = torch.cat([g.flatten() for g in grads] + [(loss.detach().float() * 0).reshape(1)])
        torch.distributed.all_reduce(flat)
        flat /= world
        if grads:
            chunks = flat[:-1].split([g.numel() for g in grads])
            torch._foreach_copy_(grads, [chunk.view_as(g) for chunk, g in zip(chunks, grads)])
        return (~torch.isfinite(flat).all()).float()
    norms = [n.float() for n in torch._foreach_norm(grads)] if grads else []
    values = torch.stack([loss.detach().float().reshape(()), *norms])
    return (~torch.isfinite(values).all()).float()


def _requires_grad(module: nn.Module, flag: bool) -> None:
    for param in module.parameters():
        param.requires_grad_(flag)


def capture_rng_state() -> dict[str, Any]:
    """Torch (CPU + CUDA), numpy and python RNG states as tensors/plain values (``weights_only``-safe)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    np_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            int(np_state["pos"]),
            int(np_state["has_gauss"]),
            float(np_state["cached_gaussian"]),
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def _gather_objects(obj: Any) -> list[Any]:
    """``all_gather_object`` across ranks (a one-element list when not distributed)."""
    world = _world_size()
    if world == 1:
        return [obj]
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


class StyleGAN2Module(LightningModule):
    """StyleGAN2 (config-f family) on 1-channel mammograms; see the module docstring for the step.

    Args (each a plain mapping; unknown keys raise ``ConfigError``):
        generator: :class:`Generator` kwargs (``img_resolution`` must equal ``data.resolution``).
        discriminator: :class:`Discriminator` kwargs.
        optimizer: ``g_lr``, ``d_lr``, ``betas``, ``eps`` (lazy-regularisation corrections applied here).
        loss: ``r1_gamma`` (number | ``"preset"`` | ``"auto"``), ``r1_interval``, ``pl_weight``,
            ``pl_interval``, ``pl_decay``, ``pl_batch_shrink``, ``style_mixing_prob``.
        ema: ``kimg`` (half-life of ``G_ema`` in kimg), ``rampup`` (null disables the ramp-up).
        ada: ``enabled`` (true | false | ``"auto"``: on below ``max_train_images`` training images),
            ``target``, ``interval``, ``kimg``, ``initial_p``, ``pipe`` (:class:`AugmentPipe` kwargs).
        total_kimg: training length; the module asks the trainer to stop once it is reached.
        batch_size: per-device batch (for ``r1_gamma="auto"`` before the first batch is seen).
        r1_gamma: shortcut for ``loss.r1_gamma`` (so sweeps read ``-m model.r1_gamma=1,5,10``).
        num_train_images: training-set size for ``ada.enabled="auto"`` (else read from the datamodule).
        compile: ``torch.compile`` the networks for the main (non-regularisation) phases.
        on_nonfinite: a NaN/Inf loss or gradient ``"stop"``s training with :class:`NonFiniteError`
            (naming the kimg and the last good checkpoint), or ``"skip"``s the rest of that minibatch's
            updates and counts it (``train/nonfinite_skipped``). Weights are never updated with NaN.
    """

    def __init__(
        self,
        generator: Mapping[str, Any],
        discriminator: Mapping[str, Any],
        optimizer: Mapping[str, Any] | None = None,
        loss: Mapping[str, Any] | None = None,
        ema: Mapping[str, Any] | None = None,
        ada: Mapping[str, Any] | None = None,
        total_kimg: float = 25_000.0,
        batch_size: int | None = None,
        num_train_images: int | None = None,
        compile: bool = False,
        on_nonfinite: str = "stop",
        r1_gamma: float | str | None = None,
        nonfinite_check_interval: int | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        generator_cfg = dict(_plain(generator))
        discriminator_cfg = dict(_plain(discriminator))
        self.optimizer_cfg = _with_defaults("optimizer", OPTIMIZER_DEFAULTS, optimizer)
        self.loss_cfg = _with_defaults("loss", LOSS_DEFAULTS, loss)
        if r1_gamma is not None:  # top-level shortcut (`model.r1_gamma=...`) wins over loss.r1_gamma
            self.loss_cfg["r1_gamma"] = r1_gamma
        self.ema_cfg = _with_defaults("ema", EMA_DEFAULTS, ema)
        self.ada_cfg = _with_defaults("ada", ADA_DEFAULTS, ada)
        self.save_hyperparameters(
            {
                "generator": generator_cfg,
                "discriminator": discriminator_cfg,
                "optimizer": self.optimizer_cfg,
                "loss": self.loss_cfg,
                "ema": self.ema_cfg,
                "ada": self.ada_cfg,
                "total_kimg": float(total_kimg),
                "batch_size": batch_size,
                "num_train_images": num_train_images,
                "compile": bool(compile),
                "on_nonfinite": str(on_nonfinite),
                "nonfinite_check_interval": nonfinite_check_interval,
            }
        )
        self.G = Generator(**generator_cfg)
        self.D = Discriminator(**discriminator_cfg)
        if self.G.img_resolution != self.D.config["img_resolution"]:
            raise ConfigError(
                f"model.generator.img_resolution={self.G.img_resolution} differs from "
                f"model.discriminator.img_resolution={self.D.config['img_resolution']}: leave both at their "
                "default ${data.resolution}"
            )
        self.G_ema = copy.deepcopy(self.G).eval()
        _requires_grad(self.G_ema, False)
        self.path_length = PathLengthPenalty(decay=self.loss_cfg["pl_decay"])
        self.total_kimg = float(total_kimg)
        self.batch_size = batch_size
        self.num_train_images = num_train_images
        self.use_compile = bool(compile)
        self.on_nonfinite = str(on_nonfinite)
        self.nonfinite_skipped = 0  # minibatches whose updates were skipped for a NaN/Inf
        # How often (minibatches) the host reads the device-side NaN/Inf record: None = every minibatch
        # on the CPU (free there) and every 16 on a GPU (each read is a host-device sync).
        self.nonfinite_check_interval = nonfinite_check_interval
        self._nf: dict[str, Tensor] = {}  # device-side NaN/Inf record, see _record_nonfinite
        self._device_skip = False  # fused Adam skips non-finite steps on the device (found_inf)
        self._nf_base = 0
        self._last_global_batch = 1
        self.cur_nimg = 0
        self.num_iterations = 0  # minibatches processed: drives the lazy-regularisation intervals
        self.r1_gamma: float | None = None  # resolved in setup() from the global batch size
        self._compiled: dict[str, Any] = {}
        self.augment_pipe: AugmentPipe | None = None
        self.ada: AdaController | None = None
        if self.ada_cfg["enabled"] is not False and str(self.ada_cfg["enabled"]).lower() != "false":
            self._build_ada()
        self._validate()

    # ------------------------------------------------------------------ construction helpers
    def _validate(self) -> None:
        loss = self.loss_cfg
        for key in ("r1_interval", "pl_interval", "pl_batch_shrink"):
            if int(loss[key]) < 1:
                raise ConfigError(f"model.loss.{key} must be >= 1, got {loss[key]}")
        if not 0.0 <= float(loss["style_mixing_prob"]) <= 1.0:
            raise ConfigError(
                f"model.loss.style_mixing_prob must be in [0, 1], got {loss['style_mixing_prob']}"
            )
        if str(loss["reg_precision"]) not in REG_PRECISIONS:
            raise ConfigError(
                f"model.loss.reg_precision={loss['reg_precision']!r}: use one of {', '.join(REG_PRECISIONS)}"
            )
        if self.nonfinite_check_interval is not None and int(self.nonfinite_check_interval) < 1:
            raise ConfigError(
                f"model.nonfinite_check_interval must be >= 1 or null, got {self.nonfinite_check_interval}"
            )
        if float(loss["pl_weight"]) < 0:
            raise ConfigError(f"model.loss.pl_weight must be >= 0, got {loss['pl_weight']}")
        if self.total_kimg <= 0:
            raise ConfigError(f"model.total_kimg must be > 0, got {self.total_kimg}")
        if float(self.ema_cfg["kimg"]) < 0:
            raise ConfigError(f"model.ema.kimg must be >= 0, got {self.ema_cfg['kimg']}")
        if self.on_nonfinite not in ON_NONFINITE_CHOICES:
            raise ConfigError(
                f"model.on_nonfinite={self.on_nonfinite!r}: use one of {', '.join(ON_NONFINITE_CHOICES)}"
            )
        enabled = str(self.ada_cfg["enabled"]).lower()
        if enabled not in ("auto", "true", "false"):
            raise ConfigError(f"model.ada.enabled={self.ada_cfg['enabled']!r}: use true, false or auto")

    def _build_ada(self) -> None:
        cfg = self.ada_cfg
        self.augment_pipe = AugmentPipe(**dict(cfg["pipe"] or {}), p=float(cfg["initial_p"]))
        self.ada = AdaController(target=cfg["target"], interval=int(cfg["interval"]), ada_kimg=cfg["kimg"])

    def _resolve_ada(self) -> None:
        """Decide ``ada.enabled="auto"``: ADA pays off on small datasets (< ``max_train_images``)."""
        if str(self.ada_cfg["enabled"]).lower() != "auto" or self.augment_pipe is None:
            return
        count = self.num_train_images
        if count is None:
            count = self._count_train_images()
        if count is not None and count >= int(self.ada_cfg["max_train_images"]):
            self.augment_pipe = None
            self.ada = None

    def _count_train_images(self) -> int | None:
        trainer = self._trainer
        datamodule = getattr(trainer, "datamodule", None) if trainer is not None else None
        if datamodule is not None and hasattr(datamodule, "dataset"):
            return len(datamodule.dataset("train"))
        return None

    @property
    def kimg(self) -> float:
        """Thousands of real images shown so far (all ranks)."""
        return self.cur_nimg / 1000.0

    @property
    def z_dim(self) -> int:
        return self.G.z_dim

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else _world_size()

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        if self.world_size > 1:
            # seed_everything gives every rank the same seed; distinct latents/noise per rank make the
            # global batch of fakes as diverse as on one device (restored RNG states win on resume).
            torch.manual_seed((torch.initial_seed() + 7919 * _rank()) % 2**63)
        self._resolve_ada()
        local_batch = self.batch_size or getattr(
            getattr(self.trainer, "datamodule", None), "batch_size", None
        )
        global_batch = int(local_batch or 1) * self.world_size
        self.r1_gamma = resolve_r1_gamma(self.loss_cfg["r1_gamma"], self.G.img_resolution, global_batch)

    def on_fit_start(self) -> None:
        strategy_model = getattr(self.trainer.strategy, "model", None)
        if isinstance(strategy_model, nn.parallel.DistributedDataParallel):
            raise ConfigError(
                "StyleGAN2Module synchronises gradients itself and cannot run under Lightning's plain DDP: "
                "use trainer.devices=1 for one process, or trainer=ddp (mammo_anogan.train."
                "GradientSyncDDPStrategy; add trainer.accelerator=cpu on a CPU) for several"
            )
        precision = str(self.trainer.precision)
        if precision.startswith("16"):
            raise ConfigError(
                "trainer.precision=16-mixed is not supported (StyleGAN2's fp16 path needs per-layer "
                "clamping); use bf16-mixed on GPU or 32-true"
            )
        if self.device.type == "cuda":
            # G_ema too: the foreach EMA update falls off its fast path when the formats differ.
            for network in (self.G, self.G_ema, self.D):
                network.to(memory_format=torch.channels_last)
        if self.use_compile:
            # Main phases only: the regularisers need double backward, which compiled graphs lack.
            self._compiled = {"synthesis": torch.compile(self.G.synthesis), "D": torch.compile(self.D)}

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        cfg = self.optimizer_cfg
        g_lr, g_betas = lazy_regularization_adam(cfg["g_lr"], cfg["betas"], self._g_reg_interval())
        d_lr, d_betas = lazy_regularization_adam(cfg["d_lr"], cfg["betas"], self._d_reg_interval())
        # Fused Adam (one kernel per step) reads ``found_inf`` and skips a non-finite step on the device,
        # so the training step needs no host sync; without it (CPU on torch < 2.4) the host decides.
        self._device_skip = supports_fused_adam(self.device.type)
        extra = {"fused": True} if self._device_skip else {}
        eps = float(cfg["eps"])
        opt_g = torch.optim.Adam(self.G.parameters(), lr=g_lr, betas=g_betas, eps=eps, **extra)
        opt_d = torch.optim.Adam(self.D.parameters(), lr=d_lr, betas=d_betas, eps=eps, **extra)
        return [opt_g, opt_d]

    def _g_reg_interval(self) -> int:
        return int(self.loss_cfg["pl_interval"]) if float(self.loss_cfg["pl_weight"]) > 0 else 0

    def _d_reg_interval(self) -> int:
        gamma = self.loss_cfg["r1_gamma"]
        disabled = not isinstance(gamma, str) and float(gamma) == 0.0
        return 0 if disabled else int(self.loss_cfg["r1_interval"])

    # ------------------------------------------------------------------ the training step
    def _synthesis(self, ws: Tensor) -> Tensor:
        synthesis = self._compiled.get("synthesis", self.G.synthesis)
        return synthesis(ws)

    def _discriminate(self, images: Tensor) -> Tensor:
        return self._compiled.get("D", self.D)(self._augment(images))

    def _augment(self, images: Tensor) -> Tensor:
        return self.augment_pipe(images) if self.augment_pipe is not None else images

    def _latents(self, batch: int) -> tuple[Tensor, Tensor]:
        return (
            torch.randn(batch, self.G.z_dim, device=self.device),
            torch.randn(batch, self.G.z_dim, device=self.device),
        )

    def _fp32(self) -> Any:
        """Autocast off (fp32), e.g. for sampling from G_ema."""
        if self.device.type in ("cuda", "cpu"):
            return torch.autocast(self.device.type, enabled=False)
        return nullcontext()

    def _regularizer_precision(self) -> Any:
        """``loss.reg_precision``: fp32 (autocast off) or the trainer's autocast, for R1 / path length."""
        return self._fp32() if str(self.loss_cfg["reg_precision"]) == "fp32" else nullcontext()

    def _generate_for_training(self, batch: int, update_w_avg: bool = False) -> tuple[Tensor, Tensor]:
        z1, z2 = self._latents(batch)
        ws = self.G.mix_styles(z1, z2, float(self.loss_cfg["style_mixing_prob"]), update_w_avg=update_w_avg)
        return self._synthesis(ws), ws

    # Phase codes of the device-side NaN/Inf record (for the error message).
    _PHASES = {1: "G", 2: "path-length", 3: "D", 4: "R1"}

    def _phase_step(self, optimizer: Any, network: nn.Module, loss: Tensor, bad: Tensor, code: int) -> Tensor:
        """Backward, average, and step unless the minibatch met NaN/Inf; returns the updated ``bad`` flag.

        ``bad`` (0-d fp32 on the device, 1 = non-finite seen in this minibatch) makes every later phase
        of the minibatch skip its update too, as a skipped minibatch should. With fused Adam the skip
        happens on the device (``found_inf``); otherwise the host reads the flag (CPU: no real sync).
        """
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        grads = [p.grad for p in network.parameters() if p.grad is not None]
        found = _average_gradients(grads, loss)
        phase_code = self._nf["minibatch_phase"]
        phase_code.copy_(torch.where((found > 0) & (bad == 0), torch.full_like(phase_code, code), phase_code))
        bad = torch.maximum(bad, found)
        torch_optimizer = getattr(optimizer, "optimizer", optimizer)  # unwrap LightningOptimizer
        if self._device_skip:
            torch_optimizer.found_inf = bad
            optimizer.step()
        elif bool(bad):
            optimizer.zero_grad(set_to_none=True)
        else:
            optimizer.step()
        return bad

    def _last_checkpoint_path(self) -> str:
        trainer = self._trainer
        paths = [getattr(c, "last_model_path", "") for c in (trainer.checkpoint_callbacks if trainer else [])]
        paths.append(str(getattr(trainer, "ckpt_path", None) or ""))  # none saved yet: the one resumed
        return next((p for p in paths if p), "")

    def _init_nonfinite_record(self) -> None:
        if self._nf and self._nf["count"].device == self.device:
            return
        device = self.device
        self._nf = {
            "count": torch.zeros((), device=device),  # minibatches skipped so far (this segment)
            "first_nimg": torch.full((), -1, dtype=torch.int64, device=device),
            "first_phase": torch.full((), -1, dtype=torch.int64, device=device),
            "minibatch_phase": torch.full((), -1, dtype=torch.int64, device=device),
        }
        self._nf_base = self.nonfinite_skipped  # restored from a checkpoint

    def _record_nonfinite(self, bad: Tensor) -> None:
        """Add this minibatch's verdict to the device-side record (count, first kimg, first phase)."""
        nf = self._nf
        first = (bad > 0) & (nf["first_nimg"] < 0)
        nf["first_nimg"].copy_(
            torch.where(first, torch.full_like(nf["first_nimg"], self.cur_nimg), nf["first_nimg"])
        )
        nf["first_phase"].copy_(torch.where(first, nf["minibatch_phase"], nf["first_phase"]))
        nf["count"].add_(bad)

    def _check_interval(self) -> int:
        if self.nonfinite_check_interval is not None:
            return int(self.nonfinite_check_interval)
        return 1 if self.device.type == "cpu" else 16

    def check_nonfinite(self) -> None:
        """Read the device-side NaN/Inf record (one host sync): raise (``stop``) or count (``skip``).

        Called every ``nonfinite_check_interval`` minibatches and before every checkpoint, so a
        ``stop`` run never writes a checkpoint after the minibatch that met the NaN.
        """
        if not self._nf:
            return
        count = int(self._nf["count"].item())
        if count == 0:
            return
        if self.on_nonfinite == "stop":
            first_nimg = int(self._nf["first_nimg"].item())
            phase = self._PHASES.get(int(self._nf["first_phase"].item()), "?")
            batch = max(1, self._last_global_batch)
            where = f"kimg {first_nimg / 1000:.3f} (minibatch {first_nimg // batch})"
            last = self._last_checkpoint_path()
            advice = (  # advice that gets past it: the same minibatch would diverge again on resume
                f"last good checkpoint: {last} (resume with ckpt_path={last} model.on_nonfinite=skip)"
                if last
                else "no checkpoint written yet (train again with model.on_nonfinite=skip or a lower "
                "model.optimizer.g_lr)"
            )
            raise NonFiniteError(
                f"non-finite {phase} loss or gradient at {where}; training stopped, weights not updated; "
                + advice
            )
        self.nonfinite_skipped = self._nf_base + count

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        reals = batch["image"] if isinstance(batch, Mapping) else batch[0]
        if self.device.type == "cuda":
            reals = reals.contiguous(memory_format=torch.channels_last)
        self._init_nonfinite_record()
        local_batch = reals.shape[0]
        global_batch = local_batch * self.world_size
        self._last_global_batch = global_batch
        opt_g, opt_d = self.optimizers()
        iteration = self.num_iterations
        logs: dict[str, Tensor | float] = {}
        self._nf["minibatch_phase"].fill_(-1)
        bad = torch.zeros((), device=self.device)

        # Phase 1: G main.
        with phase("G_main"):
            _requires_grad(self.G, True)
            _requires_grad(self.D, False)
            fakes, _ = self._generate_for_training(local_batch, update_w_avg=True)
            fake_logits = self._discriminate(fakes)
            loss_g = g_nonsaturating_loss(fake_logits)
            bad = self._phase_step(opt_g, self.G, loss_g, bad, code=1)
            logs["train/loss_g"] = loss_g.detach()

        # Phase 2: lazy path-length regularisation (smaller batch).
        g_interval = self._g_reg_interval()
        if g_interval and iteration % g_interval == 0:
            with phase("G_path_length"):
                pl_batch = max(1, local_batch // int(self.loss_cfg["pl_batch_shrink"]))
                pl_mean_before = self.path_length.pl_mean.detach().clone()
                with self._regularizer_precision():
                    z1, z2 = self._latents(pl_batch)
                    ws = self.G.mix_styles(z1, z2, float(self.loss_cfg["style_mixing_prob"]))
                    images = self.G.synthesis(ws)
                    penalty = self.path_length(images.float(), ws)
                    loss_pl = penalty.mean() * float(self.loss_cfg["pl_weight"]) * g_interval
                bad = self._phase_step(opt_g, self.G, loss_pl, bad, code=2)
                # the running mean saw the NaN too: keep the old one for a skipped minibatch
                pl_mean = self.path_length.pl_mean
                pl_mean.copy_(torch.where(bad > 0, pl_mean_before, pl_mean))
                logs["train/loss_pl"] = loss_pl.detach()
                logs["train/pl_mean"] = pl_mean.detach().clone()

        # Phase 3: D main.
        with phase("D_main"):
            _requires_grad(self.G, False)
            _requires_grad(self.D, True)
            with torch.no_grad():
                fakes, _ = self._generate_for_training(local_batch)
            fake_logits = self._discriminate(fakes)
            real_logits = self._discriminate(reals)
            loss_d = d_logistic_loss(real_logits, fake_logits)
            bad = self._phase_step(opt_d, self.D, loss_d, bad, code=3)
            if self.ada is not None:
                self.ada.accumulate(real_logits, weight=1.0 - bad)
            logs["train/loss_d"] = loss_d.detach()
            logs["train/d_real"] = real_logits.detach().float().mean()
            logs["train/d_fake"] = fake_logits.detach().float().mean()

        # Phase 4: lazy R1 on reals (through the same augmentation as D main, as in ADA).
        d_interval = self._d_reg_interval()
        if d_interval and self.r1_gamma and iteration % d_interval == 0:
            with phase("D_r1"):
                with self._regularizer_precision():
                    reals_r1 = reals.detach().float().requires_grad_(True)
                    logits_r1 = self.D(self._augment(reals_r1))
                    loss_r1 = r1_loss(reals_r1, logits_r1, self.r1_gamma, d_interval)
                bad = self._phase_step(opt_d, self.D, loss_r1, bad, code=4)
                logs["train/loss_r1"] = loss_r1.detach()
        with phase("step_end"):
            self._end_step(global_batch, local_batch, logs, bad)

    def _end_step(
        self, global_batch: int, local_batch: int, logs: dict[str, Tensor | float], bad: Tensor
    ) -> None:
        """G_ema, image counter, ADA and logging. A skipped minibatch (``bad``) still counts as shown (kimg
        advances, so a run that keeps meeting NaN still ends) but leaves G_ema untouched; all of it
        without a host sync. Every ``nonfinite_check_interval`` minibatches the host reads the record."""
        _requires_grad(self.D, False)
        self._sync_w_avg()
        self._record_nonfinite(bad)
        beta = ema_beta(global_batch, self.cur_nimg, float(self.ema_cfg["kimg"]), self.ema_cfg["rampup"])
        update_ema(self.G_ema, self.G, beta, skip=bad)
        self.cur_nimg += global_batch
        self.num_iterations += 1
        if self.ada is not None and self.augment_pipe is not None:
            self.ada.update(self.augment_pipe, global_batch)
            logs["train/ada_p"] = self.augment_pipe.p.detach().float().clone()
            if self.ada.r_t_tensor is not None:
                logs["train/ada_rt"] = self.ada.r_t_tensor
        if self.num_iterations % self._check_interval() == 0:
            self.check_nonfinite()
        # Python floats are logged as device scalars made by a fill kernel: Lightning would turn a float
        # into torch.tensor(value, device=cuda), a synchronous host-to-device copy at every step.
        logs["train/kimg"] = self._device_scalar(self.kimg)
        if self.nonfinite_skipped:
            logs["train/nonfinite_skipped"] = self._device_scalar(self.nonfinite_skipped)
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=local_batch, sync_dist=False)
        self.log(
            "train/loss_g_bar", logs["train/loss_g"], prog_bar=True, logger=False, batch_size=local_batch
        )

    def _device_scalar(self, value: float) -> Tensor:
        return torch.full((), float(value), device=self.device)

    def _sync_w_avg(self) -> None:
        """Average G's running mean of w over ranks (after phase 1 updated it from local latents).

        The update is linear in the batch mean, so the average equals the single-device update with the
        global batch. Without it every rank drifts to its own ``w_avg`` (and ``G_ema`` copies it), and a
        resumed run, which loads rank 0's copy on every rank, would no longer match the interrupted one.
        """
        world = _world_size()
        if world > 1:
            w_avg = self.G.mapping.w_avg
            torch.distributed.all_reduce(w_avg)
            w_avg /= world

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.cur_nimg >= self.total_kimg * 1000:
            self.trainer.should_stop = True

    # ------------------------------------------------------------------ inference and export
    @torch.no_grad()
    def generate(self, z: Tensor, truncation_psi: float = 1.0, noise_mode: str = "const") -> Tensor:
        """Images from ``G_ema`` ([B, C, R, R] in about [-1, 1]), no gradients, fp32."""
        self.G_ema.eval()
        with self._fp32():
            return self.G_ema(z.to(self.device).float(), truncation_psi=truncation_psi, noise_mode=noise_mode)

    def export_networks(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``generator.pt`` (G_ema) and ``discriminator.pt`` as plain weights + config (atomic)."""
        directory = Path(directory)
        # What produced them: the run's fingerprint (set by train.py) and the image count they hold.
        run = getattr(self, "run_fingerprint", None)
        fingerprint = None if run is None else run.replace({"cur_nimg": int(self.cur_nimg)})
        g_path = save_network(self.G_ema, directory / GENERATOR_FILE, fingerprint)
        d_path = save_network(self.D, directory / DISCRIMINATOR_FILE, fingerprint)
        return g_path, d_path

    # ------------------------------------------------------------------ checkpoint state
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Everything a bit-exact resume needs beyond the state dict and optimiser states."""
        self.check_nonfinite()  # a `stop` run never writes a checkpoint after a non-finite minibatch
        checkpoint["stylegan2"] = {
            "cur_nimg": int(self.cur_nimg),
            "num_iterations": int(self.num_iterations),
            "nonfinite_skipped": int(self.nonfinite_skipped),
            "ada": self.ada.state_dict() if self.ada is not None else None,
            "rng_per_rank": _gather_objects(capture_rng_state()),
            "world_size": int(self.world_size),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("stylegan2")
        if state is None:
            return
        self.cur_nimg = int(state["cur_nimg"])
        self.num_iterations = int(state["num_iterations"])
        self.nonfinite_skipped = int(state.get("nonfinite_skipped", 0))
        if state.get("ada") is not None and self.ada is not None:
            self.ada.load_state_dict(state["ada"])
        rng_states = state.get("rng_per_rank") or []
        if rng_states:
            rank = _rank()
            restore_rng_state(rng_states[rank] if rank < len(rng_states) else rng_states[0])
