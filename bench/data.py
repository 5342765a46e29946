"""Benchmark the training data path: memory against the number of films, and images/s.

    .venv/bin/python bench/data.py                                  # N = 1k, 4k, 16k at 256 and 512 px
    .venv/bin/python bench/data.py --sizes 1000,4000 --resolutions 256 --workers 0,4 --seconds 5
    .venv/bin/python bench/data.py --ram-baseline 4000              # also the in-RAM cache up to N = 4000
    .venv/bin/python bench/data.py splits --rows 100000             # split computation at 100k rows

For every resolution R and size N a prepared dataset of N synthetic films (phantoms drawn on the fly:
a half-ellipse breast with smooth texture, a lesion disc on abnormal films; a pool of 64 distinct
films hard-linked under N names, so generation is quick; every film is still decoded when the store
is built) is written into a temp dir; its packed store is built in a child process (as ``prepare``
does: time and peak RSS), then for each DataLoader worker count a fresh child process runs
``MammoDataModule(store=packed).setup("fit")`` and iterates the shuffled, resumable train loader
(batch 32, no augmentation) for ``--seconds`` after one warm-up batch. Reported per run: RSS after
setup, steady RSS (after iterating), peak RSS (VmHWM) of the main process, the largest worker's peak
RSS, images/s, and the 1-minute load average when the run started (the machine is shared: a loaded
machine inflates every figure). The summary fits the RSS slope in MiB per film over N.

RSS counts the process's own pages: the packed store is read with ``pread`` into each batch, so its
cached pages belong to the kernel's page cache (shared by all processes, dropped under memory
pressure) and are not part of any process's RSS; the in-RAM cache is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

POOL = 64  # distinct films per resolution
BATCH = 32


# ----------------------------------------------------------------------------------- synthetic data


def _phantom(rng: np.random.Generator, resolution: int, lesion: bool) -> tuple[np.ndarray, ...]:
    """(image, breast mask 0/255, lesion mask 0/255 or None), vectorised."""
    import cv2

    yy, xx = np.mgrid[0:resolution, 0:resolution].astype(np.float32)
    semi_x, semi_y = resolution * rng.uniform(0.55, 0.8), resolution * rng.uniform(0.35, 0.47)
    center_y = resolution / 2 + rng.uniform(-0.05, 0.05) * resolution
    breast = ((xx / semi_x) ** 2 + ((yy - center_y) / semi_y) ** 2) <= 1.0
    coarse = rng.random((8, 8)).astype(np.float32)
    texture = cv2.resize(coarse, (resolution, resolution), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 6, (resolution, resolution)).astype(np.float32)
    image = np.where(breast, 80 + 120 * texture + noise, 0.0)
    lesion_mask = None
    if lesion:
        radius = resolution * rng.uniform(0.04, 0.08)
        cx, cy = semi_x * rng.uniform(0.2, 0.5), center_y
        disc = (((xx - cx) ** 2 + (yy - cy) ** 2) <= radius**2) & breast
        image = np.where(disc, 240.0, image)
        lesion_mask = disc.astype(np.uint8) * 255
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image, breast.astype(np.uint8) * 255, lesion_mask


def write_dataset(root: Path, num_films: int, resolution: int, seed: int = 0) -> Path:
    """A prepared dataset of ``num_films`` films (manifest + PNGs hard-linked from a pool)."""
    import cv2

    from mammo_anogan.data.manifest import MANIFEST_COLUMNS
    from mammo_anogan.utils.io import atomic_write_csv

    rng = np.random.default_rng(seed)
    pool = root / "pool"
    for folder in ("images", "masks", "lesions", "pool"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for k in range(POOL):
        image, mask, lesion = _phantom(rng, resolution, lesion=k % 8 == 7)
        cv2.imwrite(str(pool / f"i{k}.png"), image)
        cv2.imwrite(str(pool / f"m{k}.png"), mask)
        if lesion is not None:
            cv2.imwrite(str(pool / f"l{k}.png"), lesion)
    rows = []
    for i in range(num_films):
        k = i % POOL
        image_id = f"{i:016x}"
        abnormal = k % 8 == 7
        os.link(pool / f"i{k}.png", root / "images" / f"{image_id}.png")
        os.link(pool / f"m{k}.png", root / "masks" / f"{image_id}.png")
        lesion_path = ""
        if abnormal:
            lesion_path = f"lesions/{image_id}.png"
            os.link(pool / f"l{k}.png", root / lesion_path)
        rows.append(
            {
                "image_id": image_id,
                "patient_id": f"p{i // 2:015x}",
                "source": image_id,
                "label": "malignant" if abnormal else "normal",
                "image_path": f"images/{image_id}.png",
                "mask_path": f"masks/{image_id}.png",
                "lesion_mask_path": lesion_path,
            }
        )
    atomic_write_csv(root / "manifest.csv", rows, MANIFEST_COLUMNS)
    return root


# ------------------------------------------------------------------------------------------- memory


def _status_kib(pid: int | str = "self") -> dict[str, int]:
    values: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                values[key] = int(rest.split()[0])
    except OSError:
        pass
    return values


def _children() -> list[int]:
    path = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children")
    try:
        return [int(pid) for pid in path.read_text().split()]
    except OSError:
        return []


def _mib(kib: int) -> float:
    return kib / 1024


# ------------------------------------------------------------------------------------ child modes


def child_build(dataset: Path, resolution: int) -> dict[str, Any]:
    """Build the packed store (what ``prepare`` does at its end): seconds and peak RSS."""
    from mammo_anogan.data.splits import read_manifest
    from mammo_anogan.data.store import ensure_store

    manifest = read_manifest(dataset)
    start = time.perf_counter()
    store = ensure_store(dataset, manifest, resolution)
    seconds = time.perf_counter() - start
    return {
        "films": len(store),
        "seconds": seconds,
        "films_per_s": len(store) / seconds,
        "peak_mib": _mib(_status_kib()["VmHWM"]),
        "store_gib": store.path.stat().st_size / 2**30,
    }


def child_loader(dataset: Path, resolution: int, workers: int, seconds: float, store: str) -> dict[str, Any]:
    """Set up the data module and iterate its train loader: RSS and images/s."""
    import torch

    from mammo_anogan.data.datamodule import MammoDataModule

    torch.manual_seed(0)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    dm = MammoDataModule(
        dataset,
        resolution,
        BATCH,
        num_workers=workers,
        pin_memory=False,
        persistent_workers=True,
        store=store,
    )
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    after_setup = _status_kib()
    loader = dm.train_dataloader()
    iterator, epoch, images, worker_peak = iter(loader), 0, 0, 0
    next(iterator)  # warm-up: starts the workers
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        try:
            batch = next(iterator)
        except StopIteration:
            epoch += 1
            loader.sampler.set_epoch(epoch)
            iterator = iter(loader)
            continue
        images += len(batch["image_id"])
        for pid in _children():
            worker_peak = max(worker_peak, _status_kib(pid).get("VmHWM", 0))
    elapsed = time.perf_counter() - start
    steady = _status_kib()
    del iterator
    return {
        "train_films": len(dm.dataset("train")),
        "storage": dm.storage.kind if dm.storage else "?",
        "setup_s": setup_s,
        "rss_setup_mib": _mib(after_setup["VmRSS"]),
        "rss_steady_mib": _mib(steady["VmRSS"]),
        "rss_anon_steady_mib": _mib(steady.get("RssAnon", 0)),
        "peak_mib": _mib(steady["VmHWM"]),
        "worker_peak_mib": _mib(worker_peak),
        "images_per_s": images / elapsed,
        "load_1min": load,
    }


def _run_child(*args: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -------------------------------------------------------------------------------------------- main


def _slope(ns: list[int], values: list[float]) -> float:
    if len(set(ns)) < 2:
        return float("nan")
    return float(np.polyfit(np.asarray(ns, float), np.asarray(values, float), 1)[0])


def run_loader_bench(args: argparse.Namespace) -> list[dict[str, Any]]:
    sizes = [int(s) for s in args.sizes.split(",")]
    resolutions = [int(r) for r in args.resolutions.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    rows: list[dict[str, Any]] = []
    base = Path(args.tmp or tempfile.gettempdir())
    print(f"# bench/data.py on {os.cpu_count()} CPUs; uptime: {_uptime()}", flush=True)
    for resolution in resolutions:
        for size in sizes:
            tmp = Path(tempfile.mkdtemp(prefix="bench_data_", dir=base))
            try:
                dataset = write_dataset(tmp / "ds", size, resolution)
                build = _run_child("_build", str(dataset), str(resolution))
                print(
                    f"N={size} R={resolution}: store built in {build['seconds']:.1f} s "
                    f"({build['films_per_s']:.0f} films/s, {build['store_gib']:.2f} GiB), "
                    f"build peak RSS {build['peak_mib']:.0f} MiB; load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
                modes = [("packed", w) for w in workers]
                if size <= args.ram_baseline:
                    modes.append(("ram", 0))
                for store, w in modes:
                    result = _run_child(
                        "_loader", str(dataset), str(resolution), str(w), str(args.seconds), store
                    )
                    row = {"films": size, "resolution": resolution, "workers": w, "store": store, **result}
                    row["build_peak_mib"] = build["peak_mib"]
                    rows.append(row)
                    print(_format_row(row), flush=True)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    print(_summary(rows))
    return rows


def _format_row(row: dict[str, Any]) -> str:
    return (
        f"N={row['films']:>6} R={row['resolution']} {row['store']:>6} workers={row['workers']} "
        f"rss setup {row['rss_setup_mib']:.0f} steady {row['rss_steady_mib']:.0f} "
        f"(anon {row['rss_anon_steady_mib']:.0f}) peak {row['peak_mib']:.0f} MiB, worker peak "
        f"{row['worker_peak_mib']:.0f} MiB, {row['images_per_s']:.0f} images/s, load {row['load_1min']:.2f}"
    )


def _summary(rows: list[dict[str, Any]]) -> str:
    lines = [
        "",
        "| R | store | workers | N | RSS after setup MiB | steady RSS MiB | peak RSS MiB | worker peak MiB | "
        "images/s | load 1 min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['resolution']} | {row['store']} | {row['workers']} | {row['films']} | "
            f"{row['rss_setup_mib']:.0f} | {row['rss_steady_mib']:.0f} | {row['peak_mib']:.0f} | "
            f"{row['worker_peak_mib']:.0f} | {row['images_per_s']:.0f} | {row['load_1min']:.2f} |"
        )
    lines += [
        "",
        "| R | store | workers | slope steady RSS MiB/film | slope peak RSS MiB/film | slope worker peak |",
    ]
    lines.append("|---|---|---|---|---|---|")
    groups = sorted({(r["resolution"], r["store"], r["workers"]) for r in rows})
    for resolution, store, w in groups:
        part = [r for r in rows if (r["resolution"], r["store"], r["workers"]) == (resolution, store, w)]
        ns = [r["films"] for r in part]
        lines.append(
            f"| {resolution} | {store} | {w} | {_slope(ns, [r['rss_steady_mib'] for r in part]):.5f} | "
            f"{_slope(ns, [r['peak_mib'] for r in part]):.5f} | "
            f"{_slope(ns, [r['worker_peak_mib'] for r in part]):.5f} |"
        )
    return "\n".join(lines)


def _uptime() -> str:
    done = subprocess.run(["uptime"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


def run_splits_bench(rows: int) -> None:
    """Time what ``prepare`` does per manifest row at ``rows / 4`` and ``rows`` rows: linear or not.

    Splits (read the manifest, compute, compute + write, reuse), manifest handling (the resume's set
    of finished sources, the final sorted rewrite) and salted hashing of the sources, with the peak
    traced Python memory of the manifest handling.
    """
    import tracemalloc

    from mammo_anogan.data.manifest import MANIFEST_COLUMNS, DatasetWriter
    from mammo_anogan.data.splits import compute_splits, ensure_splits, read_manifest
    from mammo_anogan.utils.hashing import salted_hash
    from mammo_anogan.utils.io import atomic_write_csv

    print(f"# uptime: {_uptime()}")
    for n in sorted({max(1, rows // 4), rows}):
        rng = np.random.default_rng(0)
        patients = rng.integers(0, max(1, n // 3), n)
        labels = rng.choice(["normal", "malignant", "benign", "unknown"], n, p=[0.9, 0.04, 0.05, 0.01])
        records = [
            {
                "image_id": f"{i:016x}",
                "patient_id": f"p{p:015x}",
                "source": f"{(i * 7919) % n:016x}",
                "label": label,
                "image_path": f"images/{i:016x}.png",
                "mask_path": f"masks/{i:016x}.png",
                "window_center": "2047.50",
                "raw_height": "4096",
            }
            for i, (p, label) in enumerate(zip(patients, labels))
        ]
        with tempfile.TemporaryDirectory() as tmp:
            atomic_write_csv(Path(tmp) / "manifest.csv", records, MANIFEST_COLUMNS)
            t0 = time.perf_counter()
            manifest = read_manifest(tmp)
            t1 = time.perf_counter()
            compute_splits(manifest)
            t2 = time.perf_counter()
            ensure_splits(tmp)
            t3 = time.perf_counter()
            ensure_splits(tmp)
            t4 = time.perf_counter()
            tracemalloc.start()
            writer = DatasetWriter(Path(tmp))
            writer.done_sources()
            done_mb = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.reset_peak()
            t5 = time.perf_counter()
            writer.finalise()
            t6 = time.perf_counter()
            final_mb = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
            t7 = time.perf_counter()
            for i in range(n):
                salted_hash(f"source:patient-{i}/film.dcm", "0123456789abcdef")
            t8 = time.perf_counter()
        print(
            f"rows={n}: read manifest {t1 - t0:.2f} s, compute splits {t2 - t1:.2f} s, "
            f"ensure_splits (compute + write) {t3 - t2:.2f} s, (reuse) {t4 - t3:.2f} s; "
            f"resume's finished sources {done_mb:.0f} MB traced, final sorted rewrite {t6 - t5:.2f} s "
            f"({final_mb:.0f} MB traced); {n} salted hashes {t8 - t7:.2f} s; load {os.getloadavg()[0]:.2f}"
        )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_build":
        print(json.dumps(child_build(Path(sys.argv[2]), int(sys.argv[3]))))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_loader":
        _, _, dataset, resolution, workers, seconds, store = sys.argv
        print(json.dumps(child_loader(Path(dataset), int(resolution), int(workers), float(seconds), store)))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "splits":
        parser = argparse.ArgumentParser(description="time the split computation")
        parser.add_argument("--rows", type=int, default=100_000)
        run_splits_bench(parser.parse_args(sys.argv[2:]).rows)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,4000,16000", help="numbers of films N")
    parser.add_argument("--resolutions", default="256,512")
    parser.add_argument("--workers", default="0,2,4", help="DataLoader worker counts")
    parser.add_argument("--seconds", type=float, default=8.0, help="iteration time per run")
    parser.add_argument("--ram-baseline", type=int, default=0, help="also run the in-RAM cache up to this N")
    parser.add_argument("--tmp", default=None, help="folder for the temp datasets (default: the system's)")
    parser.add_argument("--json", default=None, help="also write every row to this JSON file")
    args = parser.parse_args()
    rows = run_loader_bench(args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
