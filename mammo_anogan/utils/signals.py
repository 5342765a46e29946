"""Pre-emption signals and DataLoader workers: the workers outlive the signal, the main process decides.

Schedulers pre-empt a job by signalling every process of it: ``timeout`` and a shell's job control
signal the process group, SLURM signals every process of the job step (``--signal=USR1@120``,
then SIGTERM, then SIGKILL after ``KillWait``). A DataLoader worker used to die on the spot
(PyTorch's worker SIGTERM handler re-raises any SIGTERM that does not come from its parent, and
SIGUSR1's default action is to terminate), so the main process failed with ``DataLoader worker
(pid N) is killed by signal: Terminated`` before it could save anything.

Here a worker ignores SIGUSR1 and ignores SIGTERM *unless its parent sends it*: a helper thread
takes SIGTERM with ``sigwaitinfo`` and exits the worker only when the sender is the main process
(which is how PyTorch and :mod:`multiprocessing` stop workers), so the main process saves first
and then shuts its workers down as usual. Workers are created with both signals blocked, so a
signal that arrives while they start stays pending until the worker's own handling is in place
(a worker never dies in that window). Where ``sigwaitinfo`` does not exist (macOS), workers
ignore SIGTERM outright.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader

#: Signals that announce a pre-emption (SLURM: ``--signal=USR1@120`` or SIGTERM before SIGKILL).
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@contextlib.contextmanager
def blocked_signals(signals: tuple[signal.Signals, ...] = PREEMPTION_SIGNALS) -> Iterator[None]:
    """Hold ``signals`` pending in the calling thread (and in processes it forks) inside the block."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(signals))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _exit_on_sigterm_from(parent: int) -> None:
    while True:
        info = signal.sigwaitinfo({signal.SIGTERM})
        if info.si_pid == parent:
            os._exit(0)  # the main process stops its workers this way, like PyTorch's own handler


def shield_worker_from_preemption_signals() -> None:
    """In a worker process: SIGUSR1 ignored, SIGTERM ignored unless the parent process sends it."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(
            target=_exit_on_sigterm_from, args=(os.getppid(),), name="sigterm-from-parent", daemon=True
        ).start()
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})


class _ShieldedWorkerInit:
    """``worker_init_fn`` that shields the worker first, then runs the loader's own init (picklable)."""

    def __init__(self, init_fn: Callable[[int], Any] | None) -> None:
        self.init_fn = init_fn

    def __call__(self, worker_id: int) -> None:
        shield_worker_from_preemption_signals()
        if self.init_fn is not None:
            self.init_fn(worker_id)


class PreemptionSafeLoader(DataLoader):
    """A DataLoader whose workers survive pre-emption signals sent to the whole job (see module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        init_fn = kwargs.get("worker_init_fn")
        if kwargs.get("num_workers", 0) > 0 and not isinstance(init_fn, _ShieldedWorkerInit):
            kwargs["worker_init_fn"] = _ShieldedWorkerInit(init_fn)  # (Lightning may rebuild a loader)
        super().__init__(*args, **kwargs)

    def _get_iterator(self) -> Any:
        if self.num_workers == 0:
            return super()._get_iterator()
        with blocked_signals():  # the workers are forked with the signals pending, not delivered
            return super()._get_iterator()
