"""Helpers of the reliability suite: entry points run as real subprocesses, as users run them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from mammo_anogan.utils.config import PROJECT_ROOT

#: Tiny StyleGAN2 training (32 px, batch 4, no monitors): fast on a busy CPU.
TINY_TRAIN = (
    "+experiment=tiny",
    "callbacks=none",
    "data.loader.batch_size=4",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
)


def entry_env() -> dict[str, str]:
    """The environment of a user's shell: offline W&B, one thread, no HYDRA_FULL_ERROR."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    # the project first; keep what was there (e.g. packages installed with --target on a GPU node)
    python_path = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.update(
        PYTHONPATH=python_path,
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    return env


def entry_command(module: str, overrides: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", f"mammo_anogan.{module}", *overrides]


def run_entry(
    module: str, overrides: Sequence[str], timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """``python -m mammo_anogan.<module> <overrides>`` to completion (stdout/stderr captured)."""
    return subprocess.run(
        entry_command(module, overrides),
        cwd=PROJECT_ROOT,
        env=entry_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def spawn_entry(
    module: str, overrides: Sequence[str], log_path: Path, new_process_group: bool = False
) -> subprocess.Popen[bytes]:
    """Start the entry point in the background; its output goes to ``log_path``.

    ``new_process_group``: the entry point leads a process group of its own (its pid is the group
    id), so a test can signal it and its DataLoader workers together, as ``timeout`` and SLURM do.
    """
    handle = log_path.open("wb")
    return subprocess.Popen(
        entry_command(module, overrides),
        cwd=PROJECT_ROOT,
        env=entry_env(),
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=new_process_group,
    )


def signal_group_and_wait(process: subprocess.Popen[bytes], sig: int, timeout: float) -> tuple[int, float]:
    """Send ``sig`` to the process group of ``process``; ``(exit status, seconds from signal to exit)``.

    Then waits (up to 30 s) until no process of the group is left: the workers must not outlive it.
    """
    started = time.monotonic()
    os.killpg(process.pid, sig)
    try:
        returncode = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
    elapsed = time.monotonic() - started
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return returncode, elapsed
        time.sleep(0.1)
    os.killpg(process.pid, 9)
    raise AssertionError("processes of the group (DataLoader workers) outlived the main process by 30 s")


def wait_for(predicate, process: subprocess.Popen[bytes], timeout: float, log_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true; fail with the process log if it exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if process.poll() is not None:
            output = log_path.read_text(errors="replace")[-3000:]
            raise AssertionError(f"process exited ({process.returncode}) first:\n{output}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"timed out after {timeout}s:\n{log_path.read_text(errors='replace')[-3000:]}")


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]
