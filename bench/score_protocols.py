"""Encoder-initialised scoring versus the seed protocol: time per image and validation AUC, side by side.

    .venv/bin/python bench/score_protocols.py --generator outputs/demo/train/generator.pt \\
        --encoder outputs/demo/encoder/encoder.pt --abnormal 12 --normal 12 --json OUT.json

Both protocols score the same validation images of a prepared dataset (a stratified random subset,
``--abnormal`` + ``--normal`` images drawn with ``--subset-seed``; ``0`` = all of them), with the
same generator, loss and score settings, through the module ``score`` uses
(:class:`mammo_anogan.anomaly.module.ProjectionModule`):

- ``encoder``: the configuration given (``+experiment=demo`` by default: one start at ``E(x)``, a short
  W+ projection);
- ``seeds``: the paper's protocol, ``projection.init=seeds`` in W with ``--seeds`` seeded starts and
  ``--steps`` steps (9 x 1000 by default), every other ``projection.*`` key from
  ``conf/projection/default.yaml`` except the loss, which stays the configuration's.

For each it prints seconds per image (warm, the whole predict step: projection, maps, scores) and the
validation AUC of every candidate score (the ones ``score.method=auto`` chooses from), then the
speed ratio. Extra Hydra overrides for the score config go after ``--``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir

import mammo_anogan.utils.config  # noqa: F401  (resolvers first)
from mammo_anogan.anomaly.map_scores import select_method
from mammo_anogan.anomaly.module import ProjectionModule
from mammo_anogan.anomaly.outputs import file_hash
from mammo_anogan.anomaly.refine import RefineSettings
from mammo_anogan.data.datamodule import MammoDataModule
from mammo_anogan.score import (
    MapScoreSettings,
    build_loss,
    feature_distance_module,
    load_checked_encoder,
    load_checked_generator,
    projection_settings,
)
from mammo_anogan.utils.config import CONFIG_DIR

SEED_PROTOCOL_KEYS = (
    "lr",
    "latent_noise",
    "latent_noise_ramp",
    "lr_rampup",
    "lr_rampdown",
    "noise_reg_weight",
)


def compose_score(overrides: list[str]) -> Any:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="score", overrides=overrides)


def subset(labels: list[str], n_abnormal: int, n_normal: int, seed: int) -> np.ndarray:
    """Indices of a stratified random subset (all images of a class when its count is 0)."""
    rng = np.random.default_rng(seed)
    y = np.array([label != "normal" for label in labels])
    picked = []
    for flag, count in ((True, n_abnormal), (False, n_normal)):
        pool = np.flatnonzero(y == flag)
        picked.append(pool if count <= 0 or count >= pool.size else rng.choice(pool, count, replace=False))
    return np.sort(np.concatenate(picked))


def run_protocol(module: ProjectionModule, dataset: Any, indices: np.ndarray, batch: int) -> dict[str, Any]:
    """Score ``indices`` of ``dataset`` in batches; seconds per image excluding the first (warm-up) batch."""
    rows, timed_images, timed_seconds = [], 0, 0.0
    for position, start in enumerate(range(0, len(indices), batch)):
        chunk = indices[start : start + batch]
        items = dataset.__getitems__([int(i) for i in chunk])
        begin = time.perf_counter()
        rows += module.predict_step(items, position)
        elapsed = time.perf_counter() - begin
        if position > 0 or len(indices) <= batch:
            timed_images, timed_seconds = timed_images + len(chunk), timed_seconds + elapsed
    labels = [int(row.label != "normal") for row in rows]
    columns = {key: [row.extra_scores.get(key, np.nan) for row in rows] for key in rows[0].extra_scores}
    columns = {key.removeprefix("score_"): value for key, value in columns.items()}
    chosen, aucs = select_method(labels, columns)
    return {
        "images": len(rows),
        "seconds_per_image": timed_seconds / max(timed_images, 1),
        "val_auc": aucs,
        "best": chosen,
        "best_auc": aucs[chosen],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generator", required=True)
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--experiment", default="demo")
    parser.add_argument("--seeds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--abnormal", type=int, default=0, help="abnormal validation images (0: all)")
    parser.add_argument("--normal", type=int, default=0, help="normal validation images (0: all)")
    parser.add_argument("--subset-seed", type=int, default=0)
    parser.add_argument("--batch-images", type=int, default=32)
    parser.add_argument("--only", choices=("encoder", "seeds"), default=None)
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the score config")
    args = parser.parse_args()
    torch.manual_seed(0)

    base = [f"+experiment={args.experiment}", f"generator={args.generator}", f"encoder={args.encoder}"]
    cfg = compose_score([*base, *args.overrides])
    defaults = compose_score([f"generator={args.generator}"]).projection
    seed_overrides = [
        "projection.init=seeds",
        "projection.space=w",
        f"projection.num_seeds={args.seeds}",
        f"projection.steps={args.steps}",
        *(f"projection.{key}={defaults[key]}" for key in SEED_PROTOCOL_KEYS),
    ]
    protocols = {"encoder": cfg, "seeds": compose_score([*base, *args.overrides, *seed_overrides])}

    datamodule = MammoDataModule.from_config(cfg.data)
    datamodule.setup("predict")
    dataset = datamodule.dataset("val")
    labels = list(dataset.label_names)
    indices = subset(labels, args.abnormal, args.normal, args.subset_seed)
    n_abnormal = sum(labels[i] != "normal" for i in indices)
    print(f"validation subset: {len(indices)} images ({n_abnormal} abnormal) of {len(dataset)}")

    generator = load_checked_generator(cfg)
    generator_hash = file_hash(cfg.generator)
    results: dict[str, Any] = {}
    for name, pcfg in protocols.items():
        if args.only not in (None, name):
            continue
        settings = projection_settings(pcfg.projection)
        module = ProjectionModule(
            generator,
            build_loss(pcfg),
            settings,
            "mean_map",
            float(pcfg.score.topk_percent),
            encoder=load_checked_encoder(pcfg, generator, generator_hash),
            map_settings=MapScoreSettings.from_config(pcfg.score),
            refine=RefineSettings.from_config(pcfg.projection.get("refine")),
            feature_distance=feature_distance_module(pcfg),
        )
        result = run_protocol(module, dataset, indices, args.batch_images)
        result.update(
            init=settings.init, starts=settings.num_seeds, steps=settings.steps, space=settings.space
        )
        results[name] = result
        aucs = ", ".join(f"{key} {100 * value:.1f}" for key, value in result["val_auc"].items())
        print(
            f"{name:8s} init={settings.init} starts={settings.num_seeds if settings.init == 'seeds' else 1} "
            f"steps={settings.steps}: {result['seconds_per_image']:.3f} s/image; val AUC % {aucs}"
        )
    if len(results) == 2:
        ratio = results["seeds"]["seconds_per_image"] / results["encoder"]["seconds_per_image"]
        results["speedup"] = ratio
        print(
            f"encoder-initialised scoring is {ratio:.0f}x faster; best val AUC encoder "
            f"{100 * results['encoder']['best_auc']:.1f} ({results['encoder']['best']}) vs seeds "
            f"{100 * results['seeds']['best_auc']:.1f} ({results['seeds']['best']})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
