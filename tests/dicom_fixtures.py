"""Tiny DICOM / phantom writers for the ingestion tests (no real data, deterministic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import mammo_anogan.utils.config  # noqa: F401  (resolvers)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"
MG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography X-Ray Image Storage - For Presentation


def phantom(height: int = 96, width: int = 64, right: bool = False, seed: int = 0) -> np.ndarray:
    """A half-ellipse 'breast' against one vertical edge, values ~1000-3000 on a 0 background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cx = width - 1 if right else 0
    inside = ((xx - cx) / (0.7 * width)) ** 2 + ((yy - height / 2) / (0.42 * height)) ** 2 <= 1.0
    tissue = 1000 + 2000 * rng.random((height, width)).astype(np.float32)
    return np.where(inside, tissue, 0).astype(np.uint16)


def make_dataset(pixels: np.ndarray, **attributes: object) -> Dataset:
    """An uncompressed MG dataset holding ``pixels`` (uint16), plus any header ``attributes``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = attributes.pop("SOPClassUID", MG_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = attributes.pop("TransferSyntaxUID", ExplicitVRLittleEndian)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MG"
    ds.PatientID = "SECRET-PATIENT-0042"
    ds.PatientName = "Doe^Jane^Secret"
    ds.StudyInstanceUID = generate_uid()
    ds.StudyDate = "19990101"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    for key, value in attributes.items():
        setattr(ds, key, value)
    return ds


def write_dicom(path: Path, pixels: np.ndarray, **attributes: object) -> Path:
    """Write :func:`make_dataset` to ``path`` (with the 128-byte preamble)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    make_dataset(pixels, **attributes).save_as(path, enforce_file_format=True)
    return path


def compose_prepare(overrides: list[str]) -> DictConfig:
    """The composed ``prepare`` config with ``overrides`` (progress bar off)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="prepare", overrides=["prepare.progress=false", *overrides])


def read_header(path: Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)
