"""The oracle: how well the score pipeline would do with a perfect model of normal anatomy.

A reconstruction-based score compares an image with what the generator makes of it. For synthetic
phantoms the ideal answer is known: the same film without its lesion (same anatomy, same noise;
``generate_dataset(..., lesion_free_twins=True)`` writes it as ``twins/<patient>/<file>.dcm`` with
the film's own window and header). Feeding ``image - twin`` (zero for a normal film) to the very
same scoring - the method, threshold fitted on validation, bootstrap CIs, hit rate, pixel AUROC -
gives the ceiling of everything downstream of the generator: lesions that do not survive the
preparation (down-sampling, windowing) or the score's own blind spots show up here, and the gap
between this figure and the real one is what the generator and the projection lose.

The twins go through the dataset's own preparation (``load_item`` + ``prepare_image`` with the
``data.preprocess`` settings) and are matched to prepared images by their salted ids, so nothing
but the lesion differs. Methods that are not map-based (``perceptual``, ``disc_features``) are
evaluated as ``smooth_max`` here (recorded as ``oracle.method``).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from mammo_anogan.utils.errors import UserError

log = logging.getLogger(__name__)

MAP_BASED = ("mean_map", "best_map", "topk", "smooth_max", "smooth_topk", "component")


def _twins_file(data_cfg: Any) -> Path | None:
    if str(data_cfg.get("reader", "")) != "synthetic" or not data_cfg.get("source"):
        return None
    from mammo_anogan.data.synthetic import TWINS_FILE

    path = Path(str(data_cfg.source)) / TWINS_FILE
    return path if path.is_file() else None


def has_twins(data_cfg: Any) -> bool:
    """Whether ``data`` is synthetic and its raw folder holds lesion-free twins (``twins.csv``)."""
    return _twins_file(data_cfg) is not None


def prepared_twins(data_cfg: Any, image_ids: set[str]) -> dict[str, np.ndarray]:
    """``{image_id: prepared twin uint8 [H, W]}`` for the films of ``image_ids`` that have a twin."""
    from mammo_anogan.data.preprocess import prepare_image
    from mammo_anogan.data.readers import InputItem, load_item
    from mammo_anogan.prepare import preprocess_settings
    from mammo_anogan.utils.hashing import load_or_create_salt, salted_hash

    twins_csv = _twins_file(data_cfg)
    if twins_csv is None:
        raise UserError("the oracle needs synthetic data generated with lesion_free_twins=true")
    source = twins_csv.parent
    salt = load_or_create_salt(Path(str(data_cfg.dataset_dir)))
    settings = preprocess_settings(data_cfg)
    views = [str(v).upper() for v in data_cfg.views] if data_cfg.get("views") else None
    modalities = [str(m).upper() for m in data_cfg.preprocess.get("modalities") or []]
    out: dict[str, np.ndarray] = {}
    with twins_csv.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            image_id = salted_hash(f"image:{Path(row['path']).as_posix()}", salt)
            if image_id not in image_ids:
                continue
            item = InputItem(relpath=row["twin_path"], path=str(source / row["twin_path"]))
            loaded = load_item(item, modalities, int(data_cfg.preprocess.max_pixels), views)
            out[image_id] = prepare_image(loaded.raw, settings).image
    return out


def oracle_scores(
    images: torch.Tensor, twins: torch.Tensor, masks: torch.Tensor, method: str, score_cfg: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores [B], maps [B, 1, H, W])`` of ``images - twins`` (both ``[B, 1, H, W]`` in [-1, 1])."""
    from mammo_anogan.anomaly.map_scores import MAP_METHODS, MapScoreSettings, score_map
    from mammo_anogan.anomaly.scoring import DifferenceMaps, score_images

    signed = images - twins
    maps = DifferenceMaps(
        mean_projection=twins,
        best_projection=twins,
        signed_map=signed,
        abs_map=signed.abs(),
        best_abs_map=signed.abs(),
        best_seed=torch.zeros(images.shape[0], dtype=torch.long),
    )
    settings = MapScoreSettings.from_config(score_cfg)
    scores = score_images(
        maps, masks, method, float(score_cfg.get("topk_percent", 1.0)), map_settings=settings
    )
    shown = score_map(signed, masks, settings) if method in MAP_METHODS else signed.abs()
    return scores, shown


def evaluate_oracle(cfg: DictConfig) -> dict[str, Any]:
    """Oracle metrics of the evaluated split (threshold from validation, as for the real run)."""
    from mammo_anogan.data.datamodule import MammoDataModule
    from mammo_anogan.data.dataset import to_unit_range
    from mammo_anogan.evaluation.localization import hit_rate, pixel_auroc
    from mammo_anogan.evaluation.metrics import COMPARISONS, evaluate_protocol, evaluate_scores

    method = str(cfg.score.method)
    method = method if method in MAP_BASED else "smooth_max"
    classes = COMPARISONS[str(cfg.score.comparison)]
    datamodule = MammoDataModule.from_config(cfg.data)
    datamodule.setup()
    results: dict[str, dict[str, np.ndarray]] = {}
    for split in cfg.score.splits:
        dataset = datamodule.dataset(split)
        batch = dataset.__getitems__(list(range(len(dataset))))
        keep = np.array([name in classes for name in batch["label_name"]], dtype=bool)
        twins = prepared_twins(cfg.data, {i for i, k in zip(batch["image_id"], keep) if k})
        images = batch["image"][torch.from_numpy(keep)]
        twin_images = images.clone()
        ids = [i for i, k in zip(batch["image_id"], keep) if k]
        for index, image_id in enumerate(ids):
            if image_id in twins:
                twin_images[index, 0] = to_unit_range(torch.from_numpy(twins[image_id]))
        masks = batch["mask"][torch.from_numpy(keep)]
        scores, shown = oracle_scores(images, twin_images, masks, method, cfg.score)
        labels = np.array([classes[name] for name, k in zip(batch["label_name"], keep) if k])
        finite = np.isfinite(scores.numpy())
        results[split] = {
            "y": labels[finite],
            "score": scores.numpy()[finite],
            "map": shown[torch.from_numpy(finite)].numpy(),
            "lesion": batch["lesion_mask"][torch.from_numpy(keep)][torch.from_numpy(finite)].numpy(),
            "mask": masks[torch.from_numpy(finite)].numpy(),
        }
    eval_split = "test" if "test" in results else list(results)[-1]
    test, val = results[eval_split], results.get("val")
    boot = {"n_bootstrap": int(cfg.score.n_bootstrap), "seed": int(cfg.seed), "ci": float(cfg.score.ci)}
    if eval_split != "val" and val is not None and len(np.unique(val["y"])) == 2:
        metrics = evaluate_protocol(val["y"], val["score"], test["y"], test["score"], **boot)
    else:
        metrics = evaluate_scores(test["y"], test["score"], threshold=None, **boot)
        metrics["optimistic"] = True
    metrics.pop("optimistic_in_sample", None)
    abnormal = test["y"] == 1
    if abnormal.any():
        metrics["hit_rate"] = hit_rate(
            test["map"][abnormal], test["lesion"][abnormal], test["mask"][abnormal]
        )
        metrics["pixel_auroc"] = pixel_auroc(
            test["map"][abnormal], test["lesion"][abnormal], test["mask"][abnormal]
        )
    metrics["method"] = method
    metrics["note"] = "score of |image - lesion-free twin|: the pipeline's ceiling with a perfect generator"
    return metrics
