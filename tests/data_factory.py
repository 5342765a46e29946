"""Write a small, valid *prepared* dataset directly (no DICOM, no prepare run).

Tests of splits, the data module, training and evaluation need a prepared dataset with the exact
layout of docs/interfaces.md ("Prepared dataset directory"), but running the real DICOM pipeline in
every test would be slow. This factory draws cheap phantoms (a half-ellipse breast against the left
edge with smooth low-frequency texture; abnormal images get a bright disc lesion and its mask) and
writes them quickly (images plainly, manifest and salt atomically). Deterministic for a given ``seed``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mammo_anogan.data.manifest import MANIFEST_COLUMNS
from mammo_anogan.utils.hashing import load_or_create_salt, salted_hash
from mammo_anogan.utils.io import atomic_write_csv


def _write_png(path: Path, array: np.ndarray) -> None:
    """Plain (non-fsync'ed) write: these are throw-away test folders and fsync per file made the
    factory several times slower on a busy machine; the manifest and salt still go through the
    project's atomic writers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


def _smooth_texture(rng: np.random.Generator, resolution: int) -> np.ndarray:
    """Low-frequency texture in [0, 1]: a 4x4 random grid upsampled bilinearly."""
    coarse = rng.random((4, 4)).astype(np.float32)
    image = Image.fromarray(coarse).resize((resolution, resolution), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def _phantom(
    rng: np.random.Generator, resolution: int, lesion: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, tuple[int, int, int] | None]:
    """One phantom: (image uint8, breast mask uint8 {0,255}, lesion mask or None, lesion geometry)."""
    yy, xx = np.mgrid[0:resolution, 0:resolution].astype(np.float32)
    semi_x = resolution * rng.uniform(0.55, 0.8)
    semi_y = resolution * rng.uniform(0.35, 0.47)
    center_y = resolution / 2 + rng.uniform(-0.05, 0.05) * resolution
    breast = ((xx / semi_x) ** 2 + ((yy - center_y) / semi_y) ** 2) <= 1.0
    density = rng.uniform(0.3, 0.6)
    tissue = 70 + 90 * density + 50 * _smooth_texture(rng, resolution)
    image = np.where(breast, tissue, 0.0)
    lesion_mask = None
    geometry = None
    if lesion:
        radius = max(2, int(round(resolution * rng.uniform(0.06, 0.1))))
        # A centre well inside the breast: along the mid-line, between 20% and 50% of the depth.
        cx = int(round(semi_x * rng.uniform(0.2, 0.5)))
        cy = int(round(center_y + semi_y * rng.uniform(-0.3, 0.3)))
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2) <= radius**2
        disc &= breast
        image = np.where(disc, 245.0, image)
        lesion_mask = (disc * 255).astype(np.uint8)
        geometry = (cx, cy, radius)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image, (breast * 255).astype(np.uint8), lesion_mask, geometry


def make_prepared_dataset(
    root: Path,
    n_normal_patients: int = 6,
    n_abnormal_patients: int = 4,
    resolution: int = 32,
    views: Sequence[str] = ("CC",),
    seed: int = 0,
) -> Path:
    """Write a prepared dataset under ``root`` and return its directory (``root`` itself).

    Every patient has a left breast image per view; every second patient also a right one, so
    patients hold one or two images per view. An abnormal patient has a lesion (label malignant or
    benign, alternating) in its left breast only; its right breast is labelled normal, which
    exercises "normal images of abnormal patients follow their patient into val/test".
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    salt = load_or_create_salt(root, seed=seed)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    total = n_normal_patients + n_abnormal_patients
    for patient_index in range(total):
        abnormal_patient = patient_index >= n_normal_patients
        patient_id = salted_hash(f"patient-{patient_index}", salt)
        lateralities = ("L", "R") if patient_index % 2 == 0 else ("L",)
        for view in views:
            for laterality in lateralities:
                has_lesion = abnormal_patient and laterality == "L"
                label = ("malignant" if patient_index % 2 == 0 else "benign") if has_lesion else "normal"
                source = f"patient-{patient_index}/{laterality}_{view}.dcm"
                image_id = salted_hash(source, salt)
                image, mask, lesion_mask, geometry = _phantom(rng, resolution, has_lesion)
                image_path = f"images/{image_id}.png"
                mask_path = f"masks/{image_id}.png"
                _write_png(root / image_path, image)
                _write_png(root / mask_path, mask)
                lesion_path = ""
                if lesion_mask is not None:
                    lesion_path = f"lesions/{image_id}.png"
                    _write_png(root / lesion_path, lesion_mask)
                rows.append(
                    {
                        "image_id": image_id,
                        "patient_id": patient_id,
                        "source": salted_hash(f"source:{source}", salt),
                        "laterality": laterality,
                        "view": view,
                        "label": label,
                        "breast_area_px": int((mask > 0).sum()),
                        "image_path": image_path,
                        "mask_path": mask_path,
                        "lesion_mask_path": lesion_path,
                        "lesion_x": "" if geometry is None else geometry[0],
                        "lesion_y": "" if geometry is None else geometry[1],
                        "lesion_radius": "" if geometry is None else geometry[2],
                        "window_center": 2048,
                        "window_width": 4096,
                        "window_source": "header",
                        "flipped": laterality == "R",
                    }
                )
    atomic_write_csv(root / "manifest.csv", rows, MANIFEST_COLUMNS)
    return root


def make_scoring_workspace(
    root: Path, *, z_dim: int = 32, channel_base: int = 256, channel_max: int = 32, mapping_layers: int = 2
) -> dict[str, Path]:
    """A 32 px prepared dataset (8 normal + 8 abnormal patients) and a seeded random tiny generator.

    What every scoring test needs: ``{"root", "dataset", "generator"}`` with ``generator.pt`` exported
    through ``save_network`` exactly as training exports it.
    """
    import torch

    from mammo_anogan.models.stylegan2 import Generator, save_network

    dataset = make_prepared_dataset(
        root / "dataset", n_normal_patients=8, n_abnormal_patients=8, resolution=32
    )
    torch.manual_seed(0)
    generator = Generator(
        z_dim=z_dim,
        w_dim=z_dim,
        img_resolution=32,
        channel_base=channel_base,
        channel_max=channel_max,
        mapping_layers=mapping_layers,
    )
    save_network(generator, root / "generator.pt")
    return {"root": root, "dataset": dataset, "generator": root / "generator.pt"}
