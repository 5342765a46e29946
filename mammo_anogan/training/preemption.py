"""Pre-emption: SIGTERM / SIGUSR1 (what SLURM sends before killing a job) end training with a checkpoint.

Lightning handles these signals only under its SLURM environment plugin, and its own SIGTERM handler
stops *without* saving. Shared GPU nodes pre-empt jobs under any scheduler, so this callback installs
its own handlers: the handler only sets a flag (saving from inside a signal handler could interrupt
a half-finished optimiser step); at the next minibatch boundary the callback writes ``last.ckpt``
through the run's :class:`~mammo_anogan.train.KimgCheckpoint` (atomic: temp + fsync + rename) and asks
the trainer to stop. ``train.py`` then skips the export and logs how to resume (``ckpt_path=last``).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

log = logging.getLogger(__name__)

#: Signals that announce a pre-emption (SLURM: ``--signal=USR1@120`` or SIGTERM before SIGKILL).
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionSignals(Callback):
    """The shared mechanism: a flag-only handler for the pre-emption signals, agreed across ranks.

    Subclasses install it when their loop starts and poll :meth:`_any_rank_preempted` at batch
    boundaries; ``teardown`` restores the handlers that were there before.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = PREEMPTION_SIGNALS) -> None:
        self.signals = signals
        self.received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    @property
    def preempted(self) -> bool:
        return self.received is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for sig in self.signals:
            current = signal.getsignal(sig)
            if current is not self._handle:
                self._previous.setdefault(sig, current)
                signal.signal(sig, self._handle)

    def _any_rank_preempted(self, trainer: pl.Trainer) -> bool:
        """All ranks must stop together: one small all-reduce per step under DDP only.

        A SIGTERM that arrived before our handler was installed reached Lightning's, which only
        sets ``trainer.received_sigterm``: it is honoured here too.
        """
        if self.received is None and getattr(trainer, "received_sigterm", False):
            self.received = signal.SIGTERM
        if trainer.world_size > 1:
            decision = trainer.strategy.reduce_boolean_decision(self.preempted, all=False)
            if decision and self.received is None:
                self.received = signal.SIGTERM
            return bool(decision)
        return self.preempted

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self._previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        self._previous.clear()


class PreemptionCheckpoint(PreemptionSignals):
    """Save ``last.ckpt`` and stop cleanly at the next step boundary after SIGTERM or SIGUSR1."""

    def __init__(self, signals: tuple[signal.Signals, ...] = PREEMPTION_SIGNALS) -> None:
        super().__init__(signals)
        self.saved_path: str = ""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning registers its own SIGTERM handler just before this hook (it stops without saving)
        # and restores the handlers it found after training, so installing here replaces it for the
        # training loop only. A SIGTERM during set-up reaches Lightning's handler: it is honoured below.
        self._install()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._any_rank_preempted(trainer):
            return
        checkpoint = next((c for c in trainer.checkpoint_callbacks if hasattr(c, "save_now")), None)
        if checkpoint is not None:
            checkpoint.save_now(trainer)  # type: ignore[attr-defined]
            self.saved_path = str(getattr(checkpoint, "last_model_path", "") or "")
        trainer.should_stop = True
        log.warning(
            "received %s: saved %s at kimg %.3f and stopping",
            self.received.name if self.received is not None else "a pre-emption signal on another rank",
            self.saved_path or "no checkpoint (none configured)",
            float(getattr(pl_module, "kimg", 0.0)),
        )


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
            name = self.received.name if self.received is not None else "a pre-emption signal on another rank"
            raise ScoringPreempted(f"received {name}")
