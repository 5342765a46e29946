"""Pre-emption: SIGTERM / SIGUSR1 (what SLURM sends before killing a job) end training with a checkpoint.

The handler only sets a flag: saving from inside a signal handler (as Lightning's SLURM handler
does) could capture a half-finished optimiser step. At the next minibatch boundary
:class:`PreemptionCheckpoint` writes ``last.ckpt`` and nothing else (no periodic checkpoint, no
fidelity metrics, no sample grid: every other callback skips its work once
:func:`preemption_stopping` is true), asks the trainer to stop, and, under SLURM with Lightning's
auto-requeue on (the default of its ``SLURMEnvironment``), requeues the job when the signal is the
requeue signal (SIGUSR1), as Lightning itself would. ``train.py`` then skips the export and logs how
to resume (``ckpt_path=last``); docs/slurm.md has a job script that resumes automatically.

Lightning's own handlers: its SIGTERM handler stops without saving, and its SLURM SIGUSR1 handler
saves an extra ``hpc_ckpt_*.ckpt`` from inside the handler. The flag handler is installed at the
``setup`` hook, before Lightning registers its handlers (Lightning then keeps it: it composes
SIGTERM with the handler it finds and leaves an existing SIGUSR1 handler alone, so a signal during
set-up or checkpoint restore is not lost), and again when the loop starts, replacing Lightning's
composed SIGTERM handler (which on rank 0 of a DDP job would broadcast from inside the handler).

DataLoader workers survive the same signals sent to the whole job (see
:mod:`mammo_anogan.utils.signals`), so the main process is the one that decides, saves and then
stops them.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
import time
from types import FrameType
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.callbacks import Callback

from mammo_anogan.utils.signals import PREEMPTION_SIGNALS

log = logging.getLogger(__name__)

__all__ = [
    "PREEMPTION_SIGNALS",
    "PredictionPreemption",
    "PreemptionCheckpoint",
    "PreemptionSignals",
    "ScoringPreempted",
    "preemption_stopping",
    "requeue_slurm_job",
]


class PreemptionSignals(Callback):
    """The shared mechanism: a flag-only handler for the pre-emption signals, agreed across ranks.

    Subclasses poll :meth:`_any_rank_preempted` at batch boundaries; once it is true, ``stopping``
    is set (the same on every rank) and other callbacks see it through :func:`preemption_stopping`.
    ``teardown`` (and :meth:`restore`) give back the handlers that were there before.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = PREEMPTION_SIGNALS) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self.received_at: float | None = None  # time.monotonic() when the first signal arrived
        self.stopping = False
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def preempted(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received, self.received_at = signal.Signals(signum), time.monotonic()

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in self.signals:
            current = signal.getsignal(sig)
            if current != self._handle:  # bound methods are new objects: compare, not identity
                self._previous.setdefault(sig, current)
                signal.signal(sig, self._handle)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._install()  # before Lightning's handlers: a signal during set-up or restore is kept

    def _any_rank_preempted(self, trainer: pl.Trainer) -> bool:
        """All ranks must stop together: one small all-reduce per step under DDP only.

        A SIGTERM that reached Lightning's handler only (it sets ``trainer.received_sigterm``) is
        honoured too.
        """
        if self.received is None and getattr(trainer, "received_sigterm", False):
            self.received, self.received_at = signal.SIGTERM, time.monotonic()
        decision = self.preempted
        if trainer.world_size > 1:
            decision = bool(trainer.strategy.reduce_boolean_decision(self.preempted, all=False))
            if decision and self.received is None:
                self.received, self.received_at = signal.SIGTERM, time.monotonic()
        self.stopping = self.stopping or decision
        return decision

    def signal_name(self) -> str:
        return self.received.name if self.received is not None else "a pre-emption signal on another rank"

    def seconds_since_signal(self) -> float:
        return time.monotonic() - self.received_at if self.received_at is not None else 0.0

    def restore(self) -> None:
        """Give back the signal handlers found before :meth:`_install` (main thread only).

        Not after a pre-emption stop: the process is on its way out, and a second signal (SLURM
        sends SIGTERM to a job that ``scontrol requeue`` just requeued; a scheduler may repeat
        itself) must not kill it with the default action while loggers flush and workers stop.
        """
        if threading.current_thread() is not threading.main_thread() or self.stopping:
            return
        for sig, handler in self._previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        self._previous.clear()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.restore()


def preemption_stopping(trainer: pl.Trainer) -> bool:
    """Whether a pre-emption stop has been decided (all ranks agree): skip anything slow."""
    return any(isinstance(c, PreemptionSignals) and c.stopping for c in trainer.callbacks)


def _requeue_signal(trainer: pl.Trainer) -> signal.Signals | None:
    """The signal Lightning's SLURM environment requeues on, when auto-requeue is on."""
    connector = getattr(trainer, "_accelerator_connector", None)
    environment = getattr(connector, "cluster_environment", None)
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
        return environment.requeue_signal
    return None


def requeue_slurm_job(timeout_s: float = 30.0) -> bool:
    """``scontrol requeue <this job>`` (array jobs: ``<array job>_<task>``); True when it succeeded."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job_id = f"{array_job}_{task}" if array_job and task else os.environ.get("SLURM_JOB_ID", "")
    if not re.fullmatch(r"[0-9]+(?:_[0-9]+)?", job_id):
        log.warning("not requeued: no valid SLURM job id in the environment")
        return False
    try:
        result = subprocess.run(
            ["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("requeueing SLURM job %s failed: %s", job_id, type(err).__name__)
        return False
    if result.returncode != 0:
        log.warning("requeueing SLURM job %s failed (scontrol exit %d)", job_id, result.returncode)
        return False
    log.warning("requeued SLURM job %s: it resumes from last.ckpt when it starts again", job_id)
    return True


class PreemptionCheckpoint(PreemptionSignals):
    """Save ``last.ckpt`` (one file) and stop at the next step boundary after SIGTERM or SIGUSR1.

    Put it first in the trainer's callback list, so that at the boundary where it stops the other
    callbacks already see :func:`preemption_stopping` and skip their work.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = PREEMPTION_SIGNALS) -> None:
        super().__init__(signals)
        self.saved_path: str = ""
        self.requeued = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning composed its SIGTERM handler with ours just before this hook; ours alone from now
        # on (Lightning restores what it found after training, then teardown restores the rest).
        self._install()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.saved_path or not self._any_rank_preempted(trainer):
            return
        checkpoint = next((c for c in trainer.checkpoint_callbacks if hasattr(c, "save_last_only")), None)
        if checkpoint is not None:
            checkpoint.save_last_only(trainer)  # type: ignore[attr-defined]
            self.saved_path = str(getattr(checkpoint, "last_model_path", "") or "")
        trainer.should_stop = True
        log.warning(
            "received %s: saved %s at kimg %.3f, %.1f s after the signal; stopping",
            self.signal_name(),
            self.saved_path or "no checkpoint (none configured)",
            float(getattr(pl_module, "kimg", 0.0)),
            self.seconds_since_signal(),
        )
        if self.received is not None and self.received == _requeue_signal(trainer) and trainer.is_global_zero:
            self.requeued = requeue_slurm_job()


def stopped_by_preemption(trainer: pl.Trainer, kimg: float, run_dir: Any) -> bool:
    """After ``trainer.fit``: whether a :class:`PreemptionCheckpoint` stopped the run; if so, log how
    to resume it (``hydra.run.dir=<run_dir> ckpt_path=last``). Nothing may be exported then."""
    preemption = next((c for c in trainer.callbacks if isinstance(c, PreemptionCheckpoint)), None)
    if preemption is None or not preemption.preempted:
        return False
    log.warning(
        "pre-empted at kimg %.3f: resume with the same command plus hydra.run.dir=%s ckpt_path=last",
        kimg,
        run_dir,
    )
    return True


class ScoringPreempted(Exception):
    """Raised at a batch boundary of a projection run after SIGTERM / SIGUSR1."""


class PredictionPreemption(PreemptionSignals):
    """Stop a projection run (``trainer.predict``) at the next batch boundary after SIGTERM / SIGUSR1.

    Lightning's own SIGTERM handler only sets ``trainer.received_sigterm`` and its predict loop
    never reads it, so a terminated scoring run used to carry on to the end (seen with ``timeout``).
    Every finished batch is already in ``scores.csv`` (append-only) and its maps are atomic files,
    so stopping between batches loses nothing: rerunning the command in the same run dir resumes.
    """

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._install()

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._any_rank_preempted(trainer):
            raise ScoringPreempted(f"received {self.signal_name()}")
