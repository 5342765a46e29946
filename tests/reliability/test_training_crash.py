"""Guarantee 1: training survives SIGKILL (resume from last.ckpt) and pre-emption signals (save, stop).

The runs are real ``python -m mammo_anogan.train`` subprocesses on a tiny prepared dataset.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from data_factory import make_prepared_dataset
from hydra import compose, initialize_config_dir
from pytorch_lightning.callbacks import Callback
from reliability_helpers import TINY_TRAIN, signal_group_and_wait, spawn_entry, wait_for

import mammo_anogan.utils.config  # noqa: F401  (resolvers first)
from mammo_anogan.train import train
from mammo_anogan.training.callbacks import FidelityCallback
from mammo_anogan.training.preemption import PreemptionCheckpoint
from mammo_anogan.utils.config import CONFIG_DIR

BATCH = 4
#: ADA target below any possible r_t: p rises by a known step every `interval` minibatches, so a
#: restarted controller (p back at 0) cannot be mistaken for a continued one.
ADA_STEP = BATCH * 4 / (0.5 * 1000)
ADA = ("model.ada.enabled=true", "model.ada.target=-1", "model.ada.kimg=0.5")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_prepared_dataset(tmp_path_factory.mktemp("prepared"), resolution=32)


def _train_overrides(dataset_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [*TINY_TRAIN, f"hydra.run.dir={run_dir}", f"data.dataset_dir={dataset_dir}", *ADA, *extra]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _logged(run_dir: Path, name: str) -> pd.DataFrame:
    frame = pd.read_csv(run_dir / name / "metrics.csv")
    return frame.dropna(subset=["train/kimg"]).sort_values("train/kimg")


def test_sigkill_at_a_random_moment_resumes_from_last_checkpoint(
    dataset_dir: Path, tmp_path: Path, figures: dict[str, float]
) -> None:
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    log_path = tmp_path / "first.log"
    first = spawn_entry(
        "train",
        _train_overrides(
            dataset_dir, run_dir, "model.total_kimg=1", "checkpoint.every_n_kimg=0.02", "logger=csv"
        ),
        log_path,
    )
    try:
        wait_for(last.is_file, first, timeout=180, log_path=log_path)
        time.sleep(random.Random(1234).uniform(0.0, 1.5))  # a random moment, possibly mid-save
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    figures["train_faults_injected_sigkill"] += 1

    # No half-written checkpoint: every checkpoint file loads; only hidden temp files can be partial.
    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    assert last in checkpoints
    states = {path.name: _load(path) for path in checkpoints}
    killed_state = states["last.ckpt"]["stylegan2"]
    killed_nimg = killed_state["cur_nimg"]
    killed_p = float(killed_state["ada"]["p"])
    assert killed_nimg >= 20 and killed_nimg % BATCH == 0
    assert killed_p > 0.0  # ADA had moved p before the kill
    logged_first = _logged(run_dir, "csv")
    assert logged_first["train/kimg"].max() * 1000 >= killed_nimg - 1e-3

    # Resume in the same run directory; log to a second CSV so the two runs can be told apart.
    target_nimg = killed_nimg + 8 * BATCH
    resumed = spawn_entry(
        "train",
        _train_overrides(
            dataset_dir,
            run_dir,
            "ckpt_path=last",
            f"model.total_kimg={target_nimg / 1000}",
            "checkpoint.every_n_kimg=0.02",
            "logger=csv",
            "logger.csv.name=csv_resumed",
        ),
        tmp_path / "resumed.log",
    )
    assert resumed.wait(timeout=300) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    figures["train_runs_resumed"] += 1

    logged = _logged(run_dir, "csv_resumed")
    kimg = (logged["train/kimg"] * 1000).round().astype(int).tolist()
    # The counter continues from the checkpoint (first step = checkpoint + one batch), no restart at 0.
    assert kimg == list(range(killed_nimg + BATCH, target_nimg + 1, BATCH))
    # ADA continues: the first resumed p is the checkpoint's p (or one adjustment above), never 0.
    first_p = float(logged["train/ada_p"].iloc[0])
    assert killed_p - 1e-6 <= first_p <= killed_p + ADA_STEP + 1e-6
    final = _load(last)["stylegan2"]
    assert final["cur_nimg"] == target_nimg
    assert final["ada"]["calls"] == final["num_iterations"] == target_nimg // BATCH
    figures["train_images_lost_after_kill"] += 0  # every minibatch after the checkpoint was redone
    assert (run_dir / "generator.pt").is_file()


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=pytest.mark.slow)], ids=["SIGTERM", "SIGUSR1"]
)
def test_preemption_signal_to_the_process_group_saves_one_checkpoint_and_stops_cleanly(
    sig: signal.Signals, dataset_dir: Path, tmp_path: Path, figures: dict[str, float]
) -> None:
    """The signal reaches the main process and its 2 DataLoader workers at once, as ``timeout`` and
    SLURM send it. The workers used to die first (``DataLoader worker ... killed by signal``) and
    no ``last.ckpt`` was written."""
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    log_path = tmp_path / "run.log"
    process = spawn_entry(
        "train",
        _train_overrides(
            dataset_dir,
            run_dir,
            "model.total_kimg=5",
            "checkpoint.every_n_kimg=1",
            "logger=csv",
            "data.loader.num_workers=2",
        ),
        log_path,
        new_process_group=True,
    )
    metrics = run_dir / "csv" / "metrics.csv"
    try:
        # Periodic checkpoints are 1 kimg apart: the first logged steps appear long before one exists.
        wait_for(lambda: metrics.is_file() and metrics.stat().st_size > 200, process, 180, log_path)
        assert not last.exists()
        returncode, seconds = signal_group_and_wait(process, sig, timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    output = log_path.read_text(errors="replace")
    assert returncode == 0, output[-3000:]
    assert "Traceback" not in output and "killed by signal" not in output
    assert f"received {sig.name}" in output and "ckpt_path=last" in output
    figures["train_faults_injected_preemption_signal"] += 1
    figures["train_preemption_signal_to_exit_s_max"] = max(
        figures["train_preemption_signal_to_exit_s_max"], seconds
    )
    # One checkpoint: last.ckpt only (no periodic file written by the pre-emption save).
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
    state = _load(last)["stylegan2"]
    assert 0 < state["cur_nimg"] < 5000  # saved mid-run, at a step boundary
    assert state["cur_nimg"] % BATCH == 0
    assert not (run_dir / "generator.pt").exists()  # a pre-empted run is not exported as finished


class _SignalAt(Callback):
    """Sends ``sig`` to this process after ``step`` minibatches (as a scheduler would)."""

    def __init__(self, sig: signal.Signals, step: int) -> None:
        self.sig, self.step = sig, step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        if pl_module.num_iterations == self.step:
            os.kill(os.getpid(), self.sig)


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A SLURM job environment with an ``scontrol`` that records its arguments.

    Also gives this test process its SIGTERM / SIGUSR1 handlers back afterwards: a pre-empted run
    leaves its flag handlers in place (it is exiting), which a test process must not keep.
    """
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls.txt"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key, value in {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "mammo-train",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
    }.items():
        monkeypatch.setenv(key, value)
    yield calls
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def test_sigusr1_under_slurm_saves_only_last_ckpt_runs_no_metrics_and_requeues(
    dataset_dir: Path,
    tmp_path: Path,
    fake_slurm: Path,
    monkeypatch: pytest.MonkeyPatch,
    figures: dict[str, float],
) -> None:
    """SLURM's ``--signal=USR1@...`` warning (Lightning's requeue signal), in-process: the checkpoint
    holds exactly the steps done so far, it is the only file written, no fidelity metric runs on
    the way out, the job is requeued with ``scontrol``, and a later signal cannot kill the exiting run.

    Before: the project's handler replaced Lightning's, so no requeue; the save wrote a periodic
    checkpoint and last.ckpt, and the fidelity metrics ran first (final batch and train end).
    """
    import mammo_anogan.train as train_module

    original = train_module.instantiate_callbacks
    monkeypatch.setattr(
        train_module,
        "instantiate_callbacks",
        lambda cfg, run_dir: [_SignalAt(signal.SIGUSR1, 1), *original(cfg, run_dir)],
    )
    evaluations: list[int] = []
    evaluate = FidelityCallback._evaluate_and_log
    monkeypatch.setattr(
        FidelityCallback,
        "_evaluate_and_log",
        lambda self, trainer, pl_module, inside_hook: (
            evaluations.append(int(pl_module.cur_nimg)) or evaluate(self, trainer, pl_module, inside_hook)
        ),
    )
    overrides = [o for o in TINY_TRAIN if not o.startswith(("callbacks", "trainer.log"))]
    overrides += [f"data.dataset_dir={dataset_dir}", f"+run_dir={tmp_path / 'run'}", "~logger"]
    overrides += ["model.total_kimg=1", "checkpoint.every_n_kimg=0.004", "callbacks.progress_bar=null"]
    overrides += [
        "callbacks.fidelity.metrics=[swd]",
        "callbacks.fidelity.num_real=8",
        "callbacks.best_fidelity=null",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    before = signal.getsignal(signal.SIGUSR1)
    train(cfg)
    figures["train_faults_injected_preemption_signal"] += 1
    checkpoints = tmp_path / "run" / "checkpoints"
    state = torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=True)["stylegan2"]
    assert state["num_iterations"] == 1 and state["cur_nimg"] == BATCH
    # Periodic checkpoints every 4 images: step 1 is a tick, and the step the signal arrived at. The
    # pre-emption writes last.ckpt alone (it used to write the periodic file too, two full saves).
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.ckpt"]
    assert evaluations == []  # no fidelity metrics on the way out (every_kimg 100: only at the end)
    assert len(list((tmp_path / "run" / "samples").glob("*.png"))) == 1  # the start grid only
    assert fake_slurm.read_text().split() == ["requeue", "4242"]
    # The process is exiting: the flag handlers stay, so the SIGTERM that SLURM sends to a requeued
    # job cannot kill it with the default action while it flushes its loggers.
    handler = signal.getsignal(signal.SIGUSR1)
    assert handler != before and isinstance(getattr(handler, "__self__", None), PreemptionCheckpoint)
    os.kill(os.getpid(), signal.SIGTERM)  # harmless now: only sets a flag on the finished run
