"""Pre-emption with DataLoader workers: the workers outlive SIGTERM/SIGUSR1 sent to the whole job.

The process-group runs of ``train`` and ``score`` with 2 workers are in test_training_crash.py and
test_scoring_crash.py; here the worker side on its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import torch
from torch.utils.data import Dataset

from mammo_anogan.utils.signals import PreemptionSafeLoader


class _SlowItems(Dataset):
    """Each item takes 50 ms and reports which worker made it."""

    def __len__(self) -> int:
        return 40

    def __getitem__(self, index: int) -> torch.Tensor:
        time.sleep(0.05)
        return torch.tensor([index, os.getpid()])


def _kill_from_another_process(pid: int, sig: signal.Signals) -> None:
    """Like a scheduler: the sender is not the worker's parent (this test process)."""
    subprocess.run(["kill", f"-{sig.name.removeprefix('SIG')}", str(pid)], check=True)


def test_workers_ignore_preemption_signals_from_outside_and_stop_when_the_parent_asks() -> None:
    loader = PreemptionSafeLoader(_SlowItems(), batch_size=2, num_workers=2)
    iterator = iter(loader)
    first = next(iterator)
    workers = [w.pid for w in iterator._workers]  # type: ignore[attr-defined]
    assert int(first[0, 1]) in workers
    for pid in workers:
        _kill_from_another_process(pid, signal.SIGTERM)
        _kill_from_another_process(pid, signal.SIGUSR1)
    items = [first] + list(iterator)  # every batch still arrives: no "worker killed by signal"
    assert sorted(int(i) for batch in items for i in batch[:, 0]) == list(range(40))

    iterator = iter(loader)
    next(iterator)
    worker = iterator._workers[0]  # type: ignore[attr-defined]
    os.kill(worker.pid, signal.SIGTERM)  # from the parent: how PyTorch and multiprocessing stop workers
    worker.join(timeout=10)
    assert worker.exitcode == 0
    del iterator
