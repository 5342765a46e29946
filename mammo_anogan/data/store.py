"""Packed store of a prepared dataset: every film's pixels in one file, read with random access.

Why: the in-RAM cache (:class:`~mammo_anogan.data.dataset.CachedMammoDataset`) costs about
``3 * R * R`` bytes per film in *every* process (about 0.75 MiB per film at 512 px, so ~80 GB for the
seed paper's 105,948 films, per DDP rank). The packed store is written once (by ``prepare``, or by
the data module the first time it is needed) and then only read: each batch is a few ``pread`` calls
into the batch buffer, the file's pages stay in the kernel's page cache, which every DDP rank and
DataLoader worker on the machine shares, and a process's own memory does not grow with the number of
films (``bench/data.py`` measures it).

Layout (``<dataset_dir>/store/``):

* ``<R>px.npy``: a standard ``.npy`` array (``numpy.load(path, mmap_mode="r")`` opens it), ``uint8
  [N, 2, R, R]`` with one row per manifest row in manifest order. Plane 0 is the image (0..255),
  plane 1 holds the masks as bits: bit 0 the breast mask, bit 1 the lesion mask. Two bytes per pixel
  instead of three, and one contiguous read per film.
* ``<R>px.json``: the store's fingerprint (:mod:`mammo_anogan.utils.fingerprint`, kind ``store``):
  the format version, ``data.resolution``, the digest of ``manifest.csv`` and of the dataset's own
  fingerprint (the preparation settings), and whether films were resized to ``R``. A store whose
  fingerprint does not match the dataset it sits in is stale: it is rebuilt, never read.

Writes are atomic (temporary file, fsync, rename; the fingerprint last) and serialised by an
exclusive lock on ``<R>px.lock``, so DDP ranks that start together build it once and a killed build
leaves no store that looks valid. Building streams the films in chunks: its memory is bounded too.

Which source the data module uses (``data.loader.store``): ``ram`` (the in-RAM cache), ``packed``
(this store), or ``auto`` (the default): the in-RAM cache when it would hold at most
``data.loader.ram_limit_mb`` (256 MB by default), else the packed store. :func:`choose_storage`
makes that decision and says why in one log line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mammo_anogan.utils.errors import ConfigError, UserError
from mammo_anogan.utils.fingerprint import (
    Fingerprint,
    describe_differences,
    differences,
    file_digest,
    make_fingerprint,
    read_sidecar,
    write_sidecar,
)

if TYPE_CHECKING:  # torch and pandas load lazily: ``prepare`` imports this module and needs neither
    import pandas as pd
    import torch

log = logging.getLogger(__name__)

STORE_DIR = "store"
FORMAT_VERSION = 1
PLANES = 2  # image, mask bits
MASK_BIT = 1
LESION_BIT = 2
STORE_MODES = ("auto", "ram", "packed")
DEFAULT_RAM_LIMIT_MB = 256.0
RAM_BYTES_PER_PIXEL = 3  # the in-RAM cache holds the image, the breast mask and the lesion mask
BUILD_CHUNK_BYTES = 64 << 20  # decoded pixels held at once while building (bounds the build's memory)
MANIFEST_FILE = "manifest.csv"


def store_path(dataset_dir: str | os.PathLike[str], resolution: int) -> Path:
    """``<dataset_dir>/store/<R>px.npy``."""
    return Path(dataset_dir) / STORE_DIR / f"{int(resolution)}px.npy"


def _sidecar_name(resolution: int) -> str:
    return f"{int(resolution)}px.json"


# ---------------------------------------------------------------------------------------- decision


@dataclass(frozen=True)
class StorageChoice:
    """Where the data module keeps the pixels: ``"ram"`` or ``"packed"``, and why (one log line)."""

    kind: str
    reason: str


def ram_cache_bytes(num_images: int, resolution: int) -> int:
    """Bytes the in-RAM cache of ``num_images`` films at ``resolution`` px holds (per process)."""
    return int(num_images) * int(resolution) ** 2 * RAM_BYTES_PER_PIXEL


def choose_storage(
    num_images: int, resolution: int, mode: str = "auto", ram_limit_mb: float = DEFAULT_RAM_LIMIT_MB
) -> StorageChoice:
    """The pixel source for ``num_images`` films at ``resolution`` px (``mode``: ``data.loader.store``).

    ``auto`` picks the in-RAM cache when it would hold at most ``ram_limit_mb`` MB (10^6 bytes) per
    process, else the packed store. Raises ConfigError for an unknown ``mode`` or a negative limit.
    """
    if mode not in STORE_MODES:
        raise ConfigError(f"data.loader.store={mode} is not one of {', '.join(STORE_MODES)}")
    if float(ram_limit_mb) < 0:
        raise ConfigError(f"data.loader.ram_limit_mb must be >= 0, got {ram_limit_mb}")
    needed_mb = ram_cache_bytes(num_images, resolution) / 1e6
    what = f"{num_images} films at {resolution} px need {needed_mb:,.0f} MB as an in-RAM cache per process"
    if mode == "ram":
        return StorageChoice("ram", f"{what}; data.loader.store=ram: in-RAM cache")
    if mode == "packed":
        return StorageChoice("packed", f"{what}; data.loader.store=packed: packed store")
    if needed_mb <= float(ram_limit_mb):
        return StorageChoice("ram", f"{what} <= data.loader.ram_limit_mb={ram_limit_mb:g}: in-RAM cache")
    return StorageChoice(
        "packed",
        f"{what} > data.loader.ram_limit_mb={ram_limit_mb:g}: packed store (page cache, shared by processes)",
    )


# -------------------------------------------------------------------------------------------- read


class PackedStore:
    """Read side of ``<R>px.npy``: ``read(rows)`` -> ``uint8 [B, 2, R, R]``.

    Reads use ``os.preadv`` straight into the output array (no intermediate copy, no memory map: the
    process's resident memory stays the batch being built, the cached pages belong to the kernel).
    Consecutive rows are read with one call. The file descriptor is opened lazily per process, so the
    object can be pickled into spawned DataLoader workers; forked workers share it (``pread`` has no
    file position to race on).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        shape, offset = _read_header(self.path)
        if len(shape) != 4 or shape[1] != PLANES or shape[2] != shape[3]:
            raise UserError(f"{self.path} is not a packed store (shape {shape}); delete it to rebuild it")
        self.num_images, self.resolution = int(shape[0]), int(shape[2])
        self.film_shape = (PLANES, self.resolution, self.resolution)
        self.film_bytes = PLANES * self.resolution**2
        self.offset = offset
        expected = offset + self.num_images * self.film_bytes
        size = self.path.stat().st_size
        if size != expected:
            raise UserError(f"{self.path} is truncated ({size} of {expected} bytes); delete it to rebuild it")
        self._fd: int | None = None
        self._pid = -1

    def __len__(self) -> int:
        return self.num_images

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fd"], state["_pid"] = None, -1
        return state

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Close this process's file descriptor (reopened by the next read)."""
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None and getattr(self, "_pid", -1) == os.getpid():
            with contextlib.suppress(OSError):
                os.close(fd)

    def _descriptor(self) -> int:
        if self._fd is None:
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, rows: np.ndarray | list[int], out: np.ndarray | None = None) -> np.ndarray:
        """The films of ``rows`` (store rows, any order, repeats allowed) as ``uint8 [B, 2, R, R]``.

        ``out``: a C-contiguous ``uint8 [B, 2, R, R]`` array to read into (e.g. shared memory).
        Raises IndexError for a row outside the store, UserError when the file shrank under us.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        shape = (len(rows), *self.film_shape)
        if out is None:
            out = np.empty(shape, dtype=np.uint8)
        elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous uint8 array of shape {shape}")
        if len(rows) == 0:
            return out
        if rows.min() < 0 or rows.max() >= self.num_images:
            raise IndexError(f"store rows must be in [0, {self.num_images}), got {rows.min()}..{rows.max()}")
        fd = self._descriptor()
        flat = out.reshape(len(rows), self.film_bytes)
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1  # runs of consecutive rows: one read each
        starts = np.concatenate(([0], breaks)).tolist()
        ends = np.concatenate((breaks, [len(rows)])).tolist()
        for start, end in zip(starts, ends):
            position = self.offset + int(rows[start]) * self.film_bytes
            self._read_into(fd, memoryview(flat[start:end]).cast("B"), position)
        return out

    def _read_into(self, fd: int, buffer: memoryview, position: int) -> None:
        done = 0
        while done < len(buffer):
            if hasattr(os, "preadv"):
                count = os.preadv(fd, [buffer[done:]], position + done)
            else:  # pragma: no cover - platforms without preadv (macOS before 11, Windows)
                chunk = os.pread(fd, len(buffer) - done, position + done)
                buffer[done : done + len(chunk)] = chunk
                count = len(chunk)
            if count == 0:
                raise UserError(f"{self.path} ended early (changed while reading?); delete it to rebuild it")
            done += count

    def read_films(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 ``[B, R, R]`` images, breast masks (0/1) and lesion masks (0/1) of store ``rows``."""
        import torch

        films = self.read(rows)
        bits = films[:, 1]
        return (
            torch.from_numpy(films[:, 0]),
            torch.from_numpy(bits & MASK_BIT),
            torch.from_numpy((bits & LESION_BIT) >> 1),
        )


def _read_header(path: Path) -> tuple[tuple[int, ...], int]:
    """Shape and data offset of a ``uint8`` C-order ``.npy`` file; UserError when it is not one."""
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            offset = handle.tell()
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path} ({type(err).__name__}); delete it to rebuild it") from err
    if fortran or dtype != np.uint8:
        raise UserError(f"{path} is not a uint8 C-order array; delete it to rebuild it")
    return tuple(int(s) for s in shape), offset


# ------------------------------------------------------------------------------------- fingerprint


def store_fingerprint(dataset_dir: str | os.PathLike[str], resolution: int, resized: bool) -> Fingerprint:
    """What a store's bytes depend on: format, resolution, manifest, preparation settings, resizing."""
    from mammo_anogan.run_state import read_dataset_fingerprint

    dataset = read_dataset_fingerprint(dataset_dir)
    return make_fingerprint(
        "store",
        {
            "store.format": FORMAT_VERSION,
            "store.resized": bool(resized),
            "data.resolution": int(resolution),
            "data.manifest": file_digest(Path(dataset_dir) / MANIFEST_FILE),
            "data.dataset": None if dataset is None else dataset.digest,
        },
    )


def open_store(
    dataset_dir: str | os.PathLike[str], resolution: int, num_images: int, resize: bool = False
) -> PackedStore | None:
    """The dataset's store at ``resolution`` px if it exists and is up to date, else ``None``.

    Raises the same UserError as decoding would when the store holds resized films and ``resize`` is
    false (``data.loader.resize=true`` is needed to train on films prepared at another resolution).
    """
    path = store_path(dataset_dir, resolution)
    try:
        recorded = read_sidecar(path.parent, _sidecar_name(resolution)) if path.is_file() else None
    except UserError as err:  # a damaged fingerprint file: the store is a cache, rebuild it
        log.warning("%s: rebuilding the packed store", err)
        return None
    if recorded is None:
        return None
    resized = bool(recorded.values.get("store.resized", False))
    diffs = differences(recorded, store_fingerprint(dataset_dir, resolution, resized))
    if diffs:
        log.info("the packed store %s is stale (%s): rebuilding it", path, describe_differences(diffs))
        return None
    if resized and not resize:
        raise UserError(
            f"prepared images in {dataset_dir} are not {resolution}x{resolution} but data.resolution="
            f"{resolution}: prepare again with data.resolution={resolution} (into another folder, or with "
            "prepare.overwrite=true), or set data.loader.resize=true"
        )
    try:
        store = PackedStore(path)
    except UserError as err:
        log.warning("%s: rebuilding the packed store", err)
        return None
    return store if store.num_images == num_images and store.resolution == resolution else None


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``lock_path`` (no-op where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: the atomic rename alone keeps the store valid
        yield
        return
    with lock_path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def ensure_store(
    dataset_dir: str | os.PathLike[str], manifest: pd.DataFrame, resolution: int, resize: bool = False
) -> PackedStore:
    """The up-to-date store of ``manifest`` (the dataset's, in its order), built if needed.

    Processes that call this together (DDP ranks) wait for the one that builds. Raises UserError for
    unreadable films, a resolution mismatch without ``resize``, or a dataset folder that cannot be
    written (with the advice to use ``data.loader.store=ram``).
    """
    dataset_dir = Path(dataset_dir)
    store = open_store(dataset_dir, resolution, len(manifest), resize)
    if store is not None:
        return store
    path = store_path(dataset_dir, resolution)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _exclusive(path.with_suffix(".lock")):
            store = open_store(dataset_dir, resolution, len(manifest), resize)  # built while we waited?
            return store if store is not None else build_store(dataset_dir, manifest, resolution, resize)
    except OSError as err:  # read-only dataset folder, disk full, ...
        raise UserError(
            f"cannot write the packed store into {path.parent} ({err.strerror or type(err).__name__}): "
            "prepare the dataset where it can be written (and has room for it), or set data.loader.store=ram"
        ) from err


def build_store(
    dataset_dir: str | os.PathLike[str], manifest: pd.DataFrame, resolution: int, resize: bool = False
) -> PackedStore:
    """Decode every film of ``manifest`` once into ``<R>px.npy`` (streamed in chunks, atomic).

    Call through :func:`ensure_store` (which holds the lock). Memory: one chunk of decoded films
    (about :data:`BUILD_CHUNK_BYTES`), whatever the number of films.
    """
    from mammo_anogan.data.dataset import decode_films

    dataset_dir = Path(dataset_dir)
    path = store_path(dataset_dir, resolution)
    (path.parent / _sidecar_name(resolution)).unlink(missing_ok=True)  # no valid-looking half store
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # a killed build's leftovers (we hold the lock)
        stale.unlink(missing_ok=True)
    num_images = len(manifest)
    film_bytes = PLANES * resolution**2
    chunk = max(1, BUILD_CHUNK_BYTES // (RAM_BYTES_PER_PIXEL * resolution**2 * 2))
    size_gb = num_images * film_bytes / 1e9
    log.info(
        "building the packed store %s: %d films at %d px (%.2f GB)", path, num_images, resolution, size_gb
    )
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    resized = False
    try:
        with os.fdopen(fd, "wb") as handle:
            header = {
                "descr": "|u1",
                "fortran_order": False,
                "shape": (num_images, PLANES, resolution, resolution),
            }
            np.lib.format.write_array_header_1_0(handle, header)
            for start in range(0, num_images, chunk):
                rows = manifest.iloc[start : start + chunk]
                decoded = decode_films(dataset_dir, rows, resolution, resize)
                resized |= decoded.resized
                films = np.empty((len(rows), PLANES, resolution, resolution), dtype=np.uint8)
                films[:, 0] = decoded.images
                np.bitwise_or(decoded.masks, decoded.lesions << 1, out=films[:, 1])
                handle.write(films.data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    write_sidecar(path.parent, store_fingerprint(dataset_dir, resolution, resized), _sidecar_name(resolution))
    return PackedStore(path)


def prepare_store(dataset_dir: str | os.PathLike[str], data_cfg: Any) -> PackedStore | None:
    """``prepare``'s last step: build the packed store when ``data.loader.store`` would use it.

    Returns the store, or ``None`` when the data module will use the in-RAM cache instead.
    """
    from mammo_anogan.data.splits import read_manifest

    loader = data_cfg.get("loader") or {}
    manifest = read_manifest(dataset_dir)
    resolution = int(data_cfg.resolution)
    choice = choose_storage(
        len(manifest),
        resolution,
        str(loader.get("store", "auto")),
        float(loader.get("ram_limit_mb", DEFAULT_RAM_LIMIT_MB)),
    )
    log.info("data: %s", choice.reason)
    if choice.kind != "packed":
        return None
    return ensure_store(dataset_dir, manifest, resolution, resize=False)
