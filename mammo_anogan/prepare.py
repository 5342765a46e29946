"""``python -m mammo_anogan.prepare``: raw mammograms -> a prepared dataset directory.

    python -m mammo_anogan.prepare data=dicom data.source=DIR data.views=[CC] data.resolution=256 \\
        prepare.out_dir=OUT

Reads a DICOM folder, mini-MIAS, a folder + labels CSV, or generated synthetic DICOMs; windows,
orients, pads, resizes and masks every film in parallel worker processes; writes PNGs and one
manifest row per kept image (``rejected.csv`` gets one row, with its reason, per input not kept);
then fixes the patient-level splits (salt-independent: patients are ranked by a keyed hash of their
raw identifier, held in memory only; see :mod:`mammo_anogan.data.splits`), writes the manifest in
pixel-content order, so the same films give the same dataset order whatever the salt, and, for a set
too large for the in-RAM cache, writes the packed store the data module reads
(:mod:`mammo_anogan.data.store`). Layout: docs/interfaces.md ("Prepared dataset directory").

Robustness: a bad file never stops the run; a killed run resumes where it stopped (inputs are
identified by their salted, hashed relative path); no raw path or header identifier is written to
the output folder or the log.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import shutil
import signal
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

import mammo_anogan.utils.config  # noqa: F401  (registers the resolvers before Hydra composes)
from mammo_anogan.config_schema import validate_prepare_config
from mammo_anogan.data.manifest import (
    MANIFEST_COLUMNS,
    MANIFEST_FILE,
    OUTPUT_FOLDERS,
    REJECTED_FILE,
    DatasetWriter,
    format_geometry,
    render_summary,
    write_png,
)
from mammo_anogan.data.orientation import ORIENTATION_CONFLICT_POLICIES
from mammo_anogan.data.preprocess import PreprocessSettings, RejectedInput, prepare_image
from mammo_anogan.data.readers import (
    InputItem,
    apply_default_label,
    list_dicom_inputs,
    list_folder_inputs,
    list_mias_inputs,
    load_item,
    raw_patient_key,
    silence_decoder_logs,
)
from mammo_anogan.data.splits import (
    describe_fingerprint,
    ensure_splits,
    image_content_hashes,
    pixel_hash,
    read_split_record,
    split_token,
)
from mammo_anogan.data.store import STORE_DIR, prepare_store
from mammo_anogan.run_state import check_prepare_resume, dataset_fingerprint
from mammo_anogan.utils.errors import ConfigError, UserError, exit_on_user_error
from mammo_anogan.utils.fingerprint import SIDECAR_NAME, write_sidecar
from mammo_anogan.utils.hashing import SALT_FILE, load_or_create_salt, salted_hash
from mammo_anogan.utils.io import atomic_write_csv, atomic_write_text, remove_stale_temp_files

log = logging.getLogger(__name__)

CONFIG_FILE = "prepare_config.yaml"
READERS = ("dicom", "mias", "folder", "synthetic")


@dataclass(frozen=True)
class JobSettings:
    """What a worker needs to process one input (picklable, no raw identifiers)."""

    out_dir: str
    salt: str
    views: tuple[str, ...] | None
    modalities: tuple[str, ...]
    max_pixels: int
    file_timeout_s: float
    preprocess: PreprocessSettings


@dataclass
class PrepareResult:
    """What a run did; returned by :func:`prepare_dataset` for scripts and tests."""

    out_dir: Path
    processed: int
    skipped: int
    kept: int
    rejected: int
    summary: str


class FileTimeout(BaseException):  # noqa: N818 - a signal, like KeyboardInterrupt
    """Raised by the per-file timer.

    A ``BaseException`` on purpose: the readers catch ``Exception`` broadly to turn any parser
    failure into a rejection reason, which would otherwise swallow the timeout (a file blocked in
    ``open()`` would be reported as corrupt and the limit would stop working for it).
    """


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise :class:`FileTimeout` after ``seconds`` (main thread only; 0 disables).

    The timer interrupts Python code between bytecodes, so a single long native call (one
    decode) can overrun it by its own duration; the next Python step then stops the file.
    """
    usable = seconds and seconds > 0 and threading.current_thread() is threading.main_thread()
    if not usable or not hasattr(signal, "setitimer"):
        yield
        return

    def _expire(signum: int, frame: Any) -> None:
        raise FileTimeout

    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def source_hash(item: InputItem, salt: str) -> str:
    """The stable, non-reversible id of an input (its relative path, salted)."""
    return salted_hash(f"source:{item.relpath}", salt)


def _kept_row(item: InputItem, job: JobSettings, loaded: Any, prepared: Any) -> dict[str, Any]:
    """Write the image, mask and lesion PNGs atomically and return the manifest row."""
    out_dir = Path(job.out_dir)
    image_id = salted_hash(f"image:{item.relpath}", job.salt)
    image_path = f"images/{image_id}.png"
    mask_path = f"masks/{image_id}.png"
    write_png(out_dir / image_path, prepared.image)
    write_png(out_dir / mask_path, prepared.mask.astype(np.uint8) * 255)
    lesion_path = ""
    if prepared.lesion_mask is not None:
        lesion_path = f"lesions/{image_id}.png"
        write_png(out_dir / lesion_path, prepared.lesion_mask.astype(np.uint8) * 255)
    lesions = prepared.lesions or []
    window = prepared.window
    return {
        "image_id": image_id,
        "patient_id": salted_hash(f"patient:{loaded.patient_key}", job.salt),
        "source": source_hash(item, job.salt),
        "laterality": prepared.laterality,
        "view": loaded.raw.view,
        "label": item.label,
        "breast_area_px": int(prepared.mask.sum()),
        "image_path": image_path,
        "mask_path": mask_path,
        "lesion_mask_path": lesion_path,
        "lesion_x": format_geometry(x for x, _, _ in lesions),
        "lesion_y": format_geometry(y for _, y, _ in lesions),
        "lesion_radius": format_geometry(r for _, _, r in lesions),
        "window_center": "" if np.isnan(window.center) else f"{window.center:.2f}",
        "window_width": "" if np.isnan(window.width) else f"{window.width:.2f}",
        "window_source": window.source,
        "window_check": prepared.window_check,
        "flipped": str(bool(prepared.flipped)),
        "orientation_source": prepared.orientation_source,
        "orientation_check": prepared.orientation_check,
        "pectoral_removed": str(bool(prepared.pectoral_removed)),
        "abnormality": item.abnormality,
        "tissue": item.tissue,
        "raw_height": loaded.raw.pixels.shape[0],
        "raw_width": loaded.raw.pixels.shape[1],
        # In memory only (popped before the row is written): the salt-independent patient token
        # that ranks patients for the split, and the pixel hash that orders the manifest.
        "_split_token": split_token(loaded.patient_key),
        "_content_hash": pixel_hash(prepared.image),
    }


def process_item(item: InputItem, job: JobSettings) -> dict[str, Any]:
    """Prepare one input; always returns a row (manifest row, or ``source`` + ``reason``)."""
    source = source_hash(item, job.salt)
    if item.reject_reason:
        return {"source": source, "reason": item.reject_reason}
    try:
        with time_limit(job.file_timeout_s):
            loaded = load_item(
                item, list(job.modalities), job.max_pixels, list(job.views) if job.views else None
            )
            prepared = prepare_image(loaded.raw, job.preprocess, loaded.lesion_circles, loaded.lesion_mask)
            return _kept_row(item, job, loaded, prepared)
    except RejectedInput as err:
        return {"source": source, "reason": str(err)}
    except FileTimeout:
        return {"source": source, "reason": f"exceeded the per-file time limit of {job.file_timeout_s:g} s"}
    except MemoryError:
        return {"source": source, "reason": "out of memory while processing"}
    except Exception as err:  # noqa: BLE001 - one bad file must never stop the run
        log.warning("unexpected %s while preparing an input (source %s)", type(err).__name__, source)
        return {"source": source, "reason": f"unexpected error ({type(err).__name__})"}


_WORKER_JOB: JobSettings | None = None


def _init_worker(job: JobSettings) -> None:
    """Pool initializer: one OpenCV thread per process (the processes are the parallelism)."""
    global _WORKER_JOB
    import cv2

    cv2.setNumThreads(1)
    silence_decoder_logs()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER_JOB = job


def _process_in_worker(item: InputItem) -> dict[str, Any]:
    assert _WORKER_JOB is not None
    return process_item(item, _WORKER_JOB)


def preprocess_settings(data_cfg: DictConfig) -> PreprocessSettings:
    """Build :class:`PreprocessSettings` from ``data`` (``resolution`` + the ``preprocess`` block)."""
    block = OmegaConf.to_container(data_cfg.preprocess, resolve=True)
    assert isinstance(block, dict)
    names = {f.name for f in fields(PreprocessSettings)}
    values = {k: v for k, v in block.items() if k in names}
    if "window_percentiles" in values:
        low, high = (float(p) for p in values["window_percentiles"])
        if not 0 <= low < high <= 100:
            raise ConfigError(
                "data.preprocess.window_percentiles must be [low, high] with 0 <= low < high <= 100"
            )
        values["window_percentiles"] = (low, high)
    if values.get("window_fallback", "breast_percentile") not in ("breast_percentile", "minmax"):
        raise ConfigError("data.preprocess.window_fallback must be breast_percentile or minmax")
    if values.get("orientation_conflict", "pixels") not in ORIENTATION_CONFLICT_POLICIES:
        raise ConfigError(
            "data.preprocess.orientation_conflict must be one of " + ", ".join(ORIENTATION_CONFLICT_POLICIES)
        )
    if not 0.0 <= float(values.get("crop_margin", 0.02)) <= 0.5:
        raise ConfigError("data.preprocess.crop_margin must be between 0 and 0.5 (of the breast box side)")
    resolution = int(data_cfg.resolution)
    if resolution < 8:
        raise ConfigError(f"data.resolution must be at least 8 (got {resolution})")
    return PreprocessSettings(resolution=resolution, **values)


def list_inputs(data_cfg: DictConfig) -> Iterator[InputItem]:
    """The reader named by ``data.reader`` over ``data.source`` (synthetic data generated first)."""
    reader = str(data_cfg.reader)
    if reader not in READERS:
        raise ConfigError(f"data.reader must be one of {', '.join(READERS)} (got {reader})")
    if data_cfg.get("source") in (None, ""):
        raise UserError("data.source is not set: give the folder of raw images (data.source=DIR)")
    source = Path(str(data_cfg.source)).expanduser()
    labels_csv = data_cfg.get("labels_csv")
    return apply_default_label(_reader_items(reader, source, labels_csv, data_cfg), data_cfg.get("label"))


def _reader_items(reader: str, source: Path, labels_csv: Any, data_cfg: DictConfig) -> Iterator[InputItem]:
    if reader == "synthetic":
        from mammo_anogan.data.synthetic import generate_dataset

        # idempotent: a no-op when the folder holds these phantoms, regenerated when the settings changed
        generate_dataset(source, **OmegaConf.to_container(data_cfg.synthetic, resolve=True))
        return list_folder_inputs(source, source / "labels.csv")
    if reader == "mias":
        return list_mias_inputs(source)
    if reader == "folder":
        return list_folder_inputs(source, Path(str(labels_csv)) if labels_csv else source / "labels.csv")
    return list_dicom_inputs(source, Path(str(labels_csv)) if labels_csv else None)


def sanitised_config(cfg: DictConfig, salt: str) -> dict[str, Any]:
    """The resolved config without raw paths (they could name a patient or an institution)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(container, dict)
    container.pop("paths", None)
    container.pop("hydra", None)
    data = container["data"]
    for key in ("source", "labels_csv"):
        if data.get(key):
            data[key] = "hash:" + salted_hash(f"path:{Path(str(data[key])).expanduser().resolve()}", salt)
    data.pop("dataset_dir", None)
    container.get("prepare", {}).pop("out_dir", None)
    return container


def _clear_outputs(out_dir: Path) -> None:
    """``prepare.overwrite=true``: remove only what prepare writes (never the folder itself)."""
    for name in (
        MANIFEST_FILE,
        REJECTED_FILE,
        CONFIG_FILE,
        SALT_FILE,
        SIDECAR_NAME,
        "splits.csv",
        "splits.json",
    ):
        (out_dir / name).unlink(missing_ok=True)
    for folder in (*OUTPUT_FOLDERS, STORE_DIR):
        shutil.rmtree(out_dir / folder, ignore_errors=True)


def _pool_context() -> multiprocessing.context.BaseContext:
    """A start method that is safe in threaded parents (pytest, Lightning, rich) and still fast.

    Plain ``fork`` can deadlock when the parent holds a lock in another thread (seen with torch
    imported); ``forkserver`` forks workers from a clean single-threaded server that has the
    readers (cv2, pydicom, scipy) pre-imported, so workers start in milliseconds.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["mammo_anogan.data.readers", "mammo_anogan.data.manifest"])
        return context
    return multiprocessing.get_context("spawn")


def _results(pending: list[InputItem], job: JobSettings, workers: int) -> Iterator[dict[str, Any]]:
    """Rows as they are produced: a process pool, or in-process when ``workers`` is 0 or 1 item."""
    if workers <= 0 or len(pending) <= 1:
        for item in pending:
            yield process_item(item, job)
        return
    context = _pool_context()
    processes = min(workers, len(pending))
    chunksize = max(1, min(8, len(pending) // (processes * 8)))
    with context.Pool(processes, initializer=_init_worker, initargs=(job,), maxtasksperchild=256) as pool:
        yield from pool.imap_unordered(_process_in_worker, pending, chunksize=chunksize)


def _progress(enabled: bool, total: int) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("preparing"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled or total == 0,
        transient=False,
    )


def prepare_dataset(cfg: DictConfig) -> PrepareResult:
    """Run the whole preparation described by ``cfg`` (the composed ``prepare`` config)."""
    validate_prepare_config(cfg)  # one-line ConfigError naming the key, before any file is read
    out_dir = Path(str(cfg.prepare.out_dir)).expanduser()
    if bool(cfg.prepare.get("overwrite", False)):
        _clear_outputs(out_dir)
    items = list_inputs(cfg.data)  # validates the source before anything is written
    first = next(items, None)
    if first is None:
        raise UserError("data.source holds no input to prepare")
    out_dir.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temp_files(out_dir)  # temp files of atomic writes cut short by a kill
    if stale:
        log.info("removed %d stale temporary file(s) left by an interrupted run", stale)
    salt = load_or_create_salt(out_dir, seed=cfg.prepare.get("salt_seed"))
    config = sanitised_config(cfg, salt)
    fingerprint = dataset_fingerprint(config["data"])  # what determines every file written here
    check_prepare_resume(out_dir, fingerprint)  # a resume only with the settings that made the folder
    write_sidecar(out_dir, fingerprint)
    atomic_write_text(out_dir / CONFIG_FILE, OmegaConf.to_yaml(OmegaConf.create(config)))

    views = [str(v).upper() for v in cfg.data.views] if cfg.data.get("views") else None
    job = JobSettings(
        out_dir=str(out_dir),
        salt=salt,
        views=tuple(views) if views else None,
        modalities=tuple(str(m).upper() for m in cfg.data.preprocess.get("modalities") or []),
        max_pixels=int(cfg.data.preprocess.max_pixels),
        file_timeout_s=float(cfg.prepare.get("file_timeout_s") or 0),
        preprocess=preprocess_settings(cfg.data),
    )
    writer = DatasetWriter(out_dir)
    done = writer.done_sources()
    pending: list[InputItem] = []
    finished: dict[str, InputItem] = {}  # inputs done by an earlier run, by hashed source
    skipped = 0
    seen: set[str] = set()
    for item in _chain(first, items):
        key = source_hash(item, salt)
        if key in done or key in seen:
            if key in done and item.reject_reason is None:
                finished[key] = item
            skipped += key in done
            continue
        seen.add(key)
        pending.append(item)

    tokens: dict[str, str] = {}  # salted patient id -> split token (in memory only)
    content: dict[str, str] = {}  # image id -> pixel hash
    with _progress(bool(cfg.prepare.get("progress", True)), len(pending)) as progress:
        task = progress.add_task("prepare", total=len(pending))
        for row in _results(pending, job, int(cfg.prepare.get("workers", 0))):
            token, pixels = row.pop("_split_token", None), row.pop("_content_hash", None)
            if token is not None:
                tokens[row["patient_id"]] = token
                content[row["image_id"]] = pixels
            writer.add(row)
            progress.advance(task)

    kept, rejected = writer.finalise()
    kept = _relabel_and_order(out_dir, kept, finished, content)
    summary = render_summary(kept, rejected, processed=len(pending), skipped=skipped)
    log.info(
        "prepared dataset: %d kept, %d rejected, %d processed now, %d resumed",
        len(kept),
        len(rejected),
        len(pending),
        skipped,
    )
    if not kept:
        raise UserError(f"no input was kept ({len(rejected)} rejected; reasons in {REJECTED_FILE})")

    def all_tokens() -> dict[str, str]:  # only called when a split must be computed
        return patient_tokens(finished.values(), kept, salt, known=tokens)

    split = cfg.data.get("split") or {}
    ensure_splits(
        out_dir,
        val_fraction=float(split.get("val_fraction", 0.2)),
        test_fraction=float(split.get("test_fraction", 0.2)),
        seed=int(split.get("seed", 0)),
        test_ids=split.get("test_ids"),
        patient_tokens=all_tokens,
        content_hashes=content,
    )
    prepare_store(out_dir, cfg.data)  # the packed store, when data.loader.store would use it
    record = read_split_record(out_dir) or {}
    if isinstance(record.get("fingerprint"), dict):
        summary += describe_fingerprint(record["fingerprint"], str(record.get("scheme"))) + "\n"
    return PrepareResult(out_dir, len(pending), skipped, len(kept), len(rejected), summary)


def _relabel_and_order(
    out_dir: Path, kept: list[dict[str, str]], finished: dict[str, InputItem], content: dict[str, str]
) -> list[dict[str, str]]:
    """Give films done by an earlier run their current label; order the manifest by pixel content.

    Labels come from the listing (labels CSV, ``data.label``, Info.txt), not from the pixels, so a
    resumed run with a new ``data.label`` or labels CSV relabels the films it skips instead of keeping
    stale labels. The manifest order (which the data module keeps) is the pixel hash, so the same
    films give the same order whatever the salt. ``content`` is completed in place.
    """
    relabelled = 0
    for row in kept:
        item = finished.get(row["source"])
        if item is not None and item.label != row["label"]:
            row["label"] = item.label
            relabelled += 1
    if relabelled:
        log.info("%d film(s) prepared earlier relabelled from the current labels", relabelled)
    missing = [row for row in kept if row["image_id"] not in content]
    for row, digest in zip(missing, image_content_hashes(out_dir, (r["image_path"] for r in missing))):
        content[row["image_id"]] = digest
    ordered = sorted(kept, key=lambda r: (content[r["image_id"]], r["image_id"]))
    if relabelled or ordered != kept:
        atomic_write_csv(out_dir / MANIFEST_FILE, ordered, MANIFEST_COLUMNS)
    return ordered


def patient_tokens(
    items: Iterable[InputItem], kept: list[dict[str, str]], salt: str, known: dict[str, str] | None = None
) -> dict[str, str]:
    """Split tokens of the kept films' patients, re-deriving raw keys from ``items`` where needed.

    ``known`` (patient id -> token, from this run's workers) is reused; for the other patients one
    listed film each is read (the DICOM header only). A film whose key no longer hashes to the
    manifest's patient id means ``data.source`` is not the folder the dataset was prepared from.
    """
    tokens = dict(known or {})
    patient_of = {row["image_id"]: row["patient_id"] for row in kept}
    needed = set(patient_of.values()) - set(tokens)
    unreadable: str | None = None
    for item in items:
        if not needed:
            break
        patient = patient_of.get(salted_hash(f"image:{item.relpath}", salt))
        if patient is None or patient not in needed or item.reject_reason is not None:
            continue
        try:
            key = raw_patient_key(item)
        except RejectedInput as err:  # another film of the same patient may still tell
            unreadable = str(err)
            continue
        if salted_hash(f"patient:{key}", salt) != patient:
            raise UserError(
                "data.source holds other films than the ones this dataset was prepared from (a patient "
                "identifier changed); point data.source at the original folder or prepare again with "
                "prepare.overwrite=true"
            )
        tokens[patient] = split_token(key)
        needed.discard(patient)
    if needed and unreadable is not None:
        raise UserError(
            f"a prepared film can no longer be read for its patient identifier ({unreadable}); "
            "prepare again with prepare.overwrite=true"
        )
    return tokens


def split_tokens_from_source(data_cfg: DictConfig, dataset_dir: Path) -> dict[str, str] | None:
    """Split tokens for a prepared dataset from its raw folder (``data.source``), or None without one.

    Lets ``train`` / ``score`` re-split a dataset with other ``data.split.*`` settings in the same
    salt-independent way as ``prepare`` (only DICOM headers are read).
    """
    source = data_cfg.get("source")
    if source in (None, "", "???") or not Path(str(source)).expanduser().exists():
        return None
    from mammo_anogan.data.splits import read_manifest
    from mammo_anogan.utils.hashing import SALT_FILE

    if not (dataset_dir / SALT_FILE).is_file():
        return None
    salt = load_or_create_salt(dataset_dir)
    kept = read_manifest(dataset_dir).to_dict("records")
    try:
        items = list(list_inputs(data_cfg))
    except UserError:  # not a folder this reader can list: the caller names the recorded split
        log.warning("data.source cannot be listed to re-split the dataset")  # no raw path in the log
        return None
    tokens = patient_tokens(items, kept, salt)
    return tokens if set(tokens) >= {row["patient_id"] for row in kept} else None  # another folder


def ensure_dataset_split(data_cfg: DictConfig, dataset_dir: str | Path) -> dict[str, Any]:
    """``ensure_splits`` with ``data.split.*`` for train / score; returns ``splits.json``'s record.

    The raw folder is read (headers only) only when the split must be computed again.
    """
    dataset_dir = Path(dataset_dir)
    split = data_cfg.get("split") or {}
    test_ids = split.get("test_ids")
    if test_ids is not None and not isinstance(test_ids, str):
        test_ids = [str(item) for item in test_ids]  # as MammoDataModule.from_config
    ensure_splits(
        dataset_dir,
        val_fraction=float(split.get("val_fraction", 0.2)),
        test_fraction=float(split.get("test_fraction", 0.2)),
        seed=int(split.get("seed", 0)),
        test_ids=test_ids,
        patient_tokens=lambda: split_tokens_from_source(data_cfg, dataset_dir),
    )
    return read_split_record(dataset_dir) or {}


def _chain(first: InputItem, rest: Iterator[InputItem]) -> Iterator[InputItem]:
    yield first
    yield from rest


@exit_on_user_error
def run(cfg: DictConfig) -> PrepareResult:
    """The task body: :func:`prepare_dataset` with user errors turned into one line + exit 2."""
    silence_decoder_logs()
    result = prepare_dataset(cfg)
    print(result.summary)
    return result


@hydra.main(config_path="../conf", config_name="prepare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Hydra entry point (see the module docstring for the command line)."""
    run(cfg)


if __name__ == "__main__":
    main()
