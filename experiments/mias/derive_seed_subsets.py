"""Build the N = 1 and N = 9 score runs from the saved projections of one N = 16 run (CPU pilot).

Why: seed i of every image starts from the same latent whatever N is (projector: z of seed i =
hash(base_seed, i)), and each seed is optimised independently, so the first n of 16 projections are
an n-seed projection. On a 2-core CPU the pilot can afford one 16-seed projection per loss, not
1 + 9 + 16 = 26 seeds; this script writes ``<sweep>/<job>/`` run dirs (``scores.csv`` + ``maps/``)
in the format of mammo_anogan.anomaly.outputs, after which the ordinary multirun with
``score.resume=true`` re-projects nothing and only evaluates (threshold on val, Table 1, figures):

    python experiments/mias/derive_seed_subsets.py SRC_RUN SWEEP_DIR --seeds 1 9 16
    python -m mammo_anogan.score -m +experiment=mias64_cpu generator=... projection.num_seeds=1,9,16 \
        hydra.sweep.dir=SWEEP_DIR

Job numbers follow the order of ``--seeds`` (as Hydra numbers ``projection.num_seeds=1,9,16``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from mammo_anogan.anomaly.map_scores import MapScoreSettings
from mammo_anogan.anomaly.outputs import (
    SCORE_COLUMNS,
    SCORES_FILE,
    ImageResult,
    load_image_arrays,
    map_path,
    save_image_arrays,
)
from mammo_anogan.anomaly.scoring import all_map_scores, difference_maps, score_images
from mammo_anogan.score import read_scores
from mammo_anogan.utils.errors import UserError
from mammo_anogan.utils.fingerprint import read_sidecar, write_sidecar
from mammo_anogan.utils.io import AppendOnlyCsv


def subset_result(
    row: dict,
    arrays: dict[str, np.ndarray],
    num_seeds: int,
    map_settings: MapScoreSettings | None = None,
) -> ImageResult:
    """The ImageResult an ``num_seeds``-seed projection gives: the first ``num_seeds`` saved seeds.

    ``map_settings``: the source run's ``score.*`` settings of the lesion-sensitive scores (smoothing,
    edge margin, polarity, ...), so the subsets' scores are those the source run computed. The
    ``disc_features`` score needs the discriminator and is left out (NaN) of the subsets.
    """
    if "projections" not in arrays:
        raise UserError("the source run kept no projections (score.save_projections=false)")
    projections = torch.from_numpy(arrays["projections"][:num_seeds].astype(np.float32))[None]
    losses = torch.from_numpy(arrays["seed_losses"][:num_seeds].astype(np.float32))[None]
    valid = torch.isfinite(losses)
    image = torch.from_numpy(arrays["image"])[None]
    mask = torch.from_numpy(arrays["mask"].astype(np.float32))[None]
    maps = difference_maps(image, projections, losses, valid)
    topk = map_settings.topk_percent if map_settings is not None else 1.0
    extra = all_map_scores(maps, mask, topk, map_settings)
    return ImageResult(
        image_id=row["image_id"],
        split=row["split"],
        label=row["label"],
        score=float(score_images(maps, mask, "mean_map")[0]),
        extra_scores={key: float(value[0]) for key, value in extra.items()},
        seed_losses=losses[0].numpy(),
        best_seed=int(maps.best_seed[0]),
        steps=int(row["steps"]),
        seconds=float(row["seconds"]) * num_seeds / len(arrays["seed_losses"]),
        note=str(row["note"]),
        image=arrays["image"],
        mask=arrays["mask"],
        lesion_mask=arrays.get("lesion_mask"),
        projections=projections[0].numpy(),
        mean_projection=maps.mean_projection[0].numpy(),
        best_projection=maps.best_projection[0].numpy(),
        abs_map=maps.abs_map[0].numpy(),
        signed_map=maps.signed_map[0].numpy(),
    )


def derive(source: Path, sweep_dir: Path, seed_counts: list[int]) -> list[Path]:
    """Write one run dir per seed count under ``sweep_dir`` (job numbers 0, 1, ...)."""
    frame = read_scores(source)
    map_settings = None
    if (source / "config.yaml").is_file():  # the source run's score.* settings
        score_cfg = OmegaConf.load(source / "config.yaml").get("score")
        if score_cfg is not None:
            map_settings = MapScoreSettings.from_config(OmegaConf.to_container(score_cfg, resolve=False))
    fingerprint = read_sidecar(source)  # what produced the source scores (mammo_anogan.run_state)
    run_dirs = []
    for job, num_seeds in enumerate(seed_counts):
        run_dir = sweep_dir / str(job)
        if run_dir.exists():
            raise UserError(f"{run_dir} exists: remove it or pick another sweep dir")
        csv = AppendOnlyCsv(run_dir / SCORES_FILE, SCORE_COLUMNS)
        for row in frame.to_dict("records"):
            arrays = load_image_arrays(map_path(source, row["split"], row["image_id"]))
            result = subset_result(row, arrays, num_seeds, map_settings)
            save_image_arrays(map_path(run_dir, result.split, result.image_id), result)
            csv.append(result.row())
        for name in ("config.yaml",):
            if (source / name).is_file():
                shutil.copyfile(source / name, run_dir / name)
        if fingerprint is not None:  # the same projection with fewer seeds: the score run resumes it
            write_sidecar(run_dir, fingerprint.replace({"projection.num_seeds": num_seeds}))
        run_dirs.append(run_dir)
    return run_dirs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="scored run dir with N >= max(--seeds) projections")
    parser.add_argument("sweep_dir", type=Path, help="new multirun dir to fill with one job per seed count")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 9, 16])
    args = parser.parse_args()
    for run_dir in derive(args.source, args.sweep_dir, args.seeds):
        print(run_dir)


if __name__ == "__main__":
    main()
