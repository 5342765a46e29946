"""``python -m mammo_anogan.score generator=PATH``: AnoGAN scoring and evaluation.

Projects the validation and test images onto a trained generator with ``N`` seeds each, writes one
row per image to ``scores.csv`` (and its maps to ``maps/<split>/<id>.npz``) as it goes, then fits the
Youden threshold on validation, applies it to test, and writes ``metrics.json`` (with bootstrap CIs,
the seed paper's optimistic in-sample numbers in a labelled block, and lesion localisation where
ground truth exists), ``threshold.json`` and the figures. A killed run started again with the same
``hydra.run.dir`` resumes where it stopped. A multirun (``-m projection.num_seeds=1,9,16``) also
writes the paper's Table 1 (``table.md`` / ``table.csv``) in the sweep directory.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import hydra  # noqa: I001
import numpy as np
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Subset

import mammo_anogan.utils.config  # noqa: F401  (registers the OmegaConf resolvers first)
from mammo_anogan.anomaly.losses import build_projection_loss
from mammo_anogan.anomaly.map_scores import MAP_METHODS, MapScoreSettings, score_map, select_method
from mammo_anogan.anomaly.module import ProjectionModule
from mammo_anogan.anomaly.outputs import (
    SCORES_FILE,
    ScoreWriter,
    completed_image_ids,
    file_hash,
    load_image_arrays,
    map_path,
    read_threshold,
    write_threshold,
)
from mammo_anogan.anomaly.projector import ProjectionSettings
from mammo_anogan.anomaly.refine import RefineSettings
from mammo_anogan.anomaly.scoring import SCORE_METHODS
from mammo_anogan.config_schema import validate_score_config
from mammo_anogan.evaluation.metrics import COMPARISONS
from mammo_anogan.run_state import check_threshold_record, score_start_checks, start_score_run_dir
from mammo_anogan.training.devices import fit_trainer_to_hardware
from mammo_anogan.training.preemption import PredictionPreemption, ScoringPreempted
from mammo_anogan.utils.errors import ConfigError, UserError, exit_on_user_error
from mammo_anogan.utils.io import remove_stale_temp_files
from mammo_anogan.utils.privacy import dataset_salt, save_sanitised_config, wandb_privacy_settings
from mammo_anogan.utils.signals import PreemptionSafeLoader

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- components


def projection_settings(projection_cfg: Any) -> ProjectionSettings:
    """``ProjectionSettings`` from ``cfg.projection`` (keys that are not settings are ignored)."""
    values = OmegaConf.to_container(projection_cfg, resolve=True)
    assert isinstance(values, dict)
    names = ProjectionSettings.__dataclass_fields__.keys()
    kwargs = {key: values[key] for key in names if key in values}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(float(b) for b in kwargs["betas"])
    return ProjectionSettings(**kwargs)


def load_checked_generator(cfg: DictConfig) -> nn.Module:
    """Load the generator and refuse, before any work, one that does not fit the dataset."""
    from mammo_anogan.models.stylegan2.export import load_generator

    if cfg.generator in (None, "", "???"):
        raise UserError("generator=PATH is required (an exported generator.pt)")
    generator = load_generator(cfg.generator)
    resolution = int(cfg.data.resolution)
    channels = int(OmegaConf.select(cfg, "model.generator.img_channels", default=1))  # mammograms: 1
    if generator.img_resolution != resolution or generator.img_channels != channels:
        raise UserError(
            f"generator {cfg.generator} makes {generator.img_channels}-channel {generator.img_resolution}px "
            f"images but the dataset has {channels}-channel {resolution}px images: set "
            f"data.resolution={generator.img_resolution} (and prepare it) or pass the matching generator"
        )
    return generator


def build_loss(cfg: DictConfig, lpips_net: nn.Module | None = None) -> nn.Module:
    """The projection loss of ``cfg.projection``; fails early (one line) when weights are missing."""
    projection = cfg.projection

    def discriminator() -> nn.Module:
        from mammo_anogan.models.stylegan2.export import load_discriminator

        path = Path(str(cfg.get("discriminator") or Path(str(cfg.generator)).with_name("discriminator.pt")))
        if not path.is_file():
            raise UserError(
                f"projection.loss=disc_features needs the discriminator trained with the generator and "
                f"{path} does not exist: set discriminator=<its discriminator.pt>, or use another "
                "projection.loss (mse needs nothing else)"
            )
        return load_discriminator(path)

    return build_projection_loss(
        str(projection.loss),
        pixel_weight=float(projection.get("pixel_weight", 0.0)),
        pixel_norm=str(projection.get("pixel_norm", "l1")),
        lpips_net=lpips_net,
        lpips_weights=projection.get("lpips_weights"),
        lpips_resize=projection.get("lpips_resize", 256),
        discriminator=discriminator if str(projection.loss) == "disc_features" else None,
    )


def load_checked_encoder(cfg: DictConfig, generator: nn.Module, generator_hash: str) -> nn.Module | None:
    """The encoder of ``projection.init=encoder|encoder+seeds`` (None for ``seeds``), checked to fit."""
    from mammo_anogan.models.encoder import load_encoder

    if str(cfg.projection.get("init", "seeds")) == "seeds":
        return None
    path = cfg.get("encoder")
    if path in (None, "", "???"):
        raise UserError(
            f"projection.init={cfg.projection.init} needs encoder=PATH (an encoder.pt from "
            "python -m mammo_anogan.train_encoder)"
        )
    encoder = load_encoder(path)
    config = encoder.config
    if (config["num_ws"], config["w_dim"], config["img_resolution"]) != (
        generator.num_ws,
        generator.w_dim,
        generator.img_resolution,
    ):
        raise UserError(f"encoder {path} was built for another generator architecture than {cfg.generator}")
    if config.get("generator_hash") and config["generator_hash"] != generator_hash:
        raise UserError(
            f"encoder {path} was trained for generator {config['generator_hash']}, not this one "
            f"({generator_hash}): train an encoder for it (python -m mammo_anogan.train_encoder)"
        )
    return encoder


def feature_distance_module(cfg: DictConfig) -> nn.Module | None:
    """The discriminator-feature distance (score ``disc_features``) when ``discriminator.pt`` exists."""
    from mammo_anogan.anomaly.losses import DiscFeatureLoss
    from mammo_anogan.models.stylegan2.export import load_discriminator

    path = Path(str(cfg.get("discriminator") or Path(str(cfg.generator)).with_name("discriminator.pt")))
    if not path.is_file():
        if cfg.score.method == "disc_features":
            raise UserError(f"score.method=disc_features needs the discriminator: no file at {path}")
        return None
    return DiscFeatureLoss(load_discriminator(path))


def check_score_config(score_cfg: Any) -> None:
    if score_cfg.method not in SCORE_METHODS:
        raise ConfigError(f"score.method must be one of {', '.join(SCORE_METHODS)}, got {score_cfg.method!r}")
    if score_cfg.comparison not in COMPARISONS:
        raise ConfigError(
            f"score.comparison must be one of {', '.join(COMPARISONS)}, got {score_cfg.comparison!r}"
        )
    if score_cfg.method == "auto" and "val" not in score_cfg.splits and not score_cfg.get("threshold_from"):
        raise ConfigError("score.method=auto picks the score on validation: score.splits must include val")
    MapScoreSettings.from_config(score_cfg)  # one-line ConfigError for a bad lesion-score key
    if str(score_cfg.get("oracle", "auto")).lower() not in ("auto", "true", "false"):
        raise ConfigError(f"score.oracle must be one of auto, true, false, got {score_cfg.oracle!r}")
    unknown = [split for split in score_cfg.splits if split not in ("train", "val", "test")]
    if unknown or not score_cfg.splits:
        raise ConfigError(
            f"score.splits must be a non-empty subset of [train, val, test], got {list(score_cfg.splits)}"
        )


def fit_score_trainer(cfg: DictConfig) -> dict[str, Any]:
    """The trainer request (``trainer`` block, else ``score.accelerator/devices``) fitted to the machine.

    Returns the Trainer's ``accelerator``, ``devices`` and ``strategy``; a GPU preset on a machine
    without CUDA is one ConfigError line naming ``trainer=cpu`` (checked before any work).
    """
    trainer_cfg = cfg.get("trainer") or {}
    requested = {
        "accelerator": trainer_cfg.get("accelerator", cfg.score.accelerator),
        "devices": trainer_cfg.get("devices", cfg.score.devices),
        "strategy": trainer_cfg.get("strategy", "auto"),
        "num_nodes": trainer_cfg.get("num_nodes", 1),
    }
    fitted = {**requested, **fit_trainer_to_hardware(requested, task="score")}
    fitted.pop("num_nodes")
    return fitted


def build_trainer(cfg: DictConfig, callbacks: list[Any], fitted: dict[str, Any] | None = None) -> Any:
    """A predict-only Trainer: gradients allowed (``inference_mode=False``), no logger/checkpoints."""
    from pytorch_lightning import Trainer

    trainer_cfg = cfg.get("trainer") or {}
    fitted = fit_score_trainer(cfg) if fitted is None else fitted
    strategy = fitted["strategy"]
    if OmegaConf.is_config(strategy) and "_target_" in strategy:  # trainer=ddp's strategy block
        strategy = hydra.utils.instantiate(strategy)
    return Trainer(
        accelerator=fitted["accelerator"],
        devices=fitted["devices"],
        strategy=strategy,
        num_nodes=trainer_cfg.get("num_nodes", 1),
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=bool(trainer_cfg.get("enable_progress_bar", True)),
        inference_mode=False,
        callbacks=callbacks,
    )


# ------------------------------------------------------------------------------------- evaluation


def _labelled(frame: pd.DataFrame, comparison: str) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Rows usable for metrics (``y`` column added) and the excluded ones with their reason."""
    classes = COMPARISONS[comparison]
    excluded: list[dict[str, str]] = []
    keep = []
    for row in frame.itertuples(index=False):
        if not math.isfinite(row.score):
            reason = row.note or "no score"
        elif row.label not in classes:
            reason = f"label {row.label} not part of {comparison}"
        else:
            keep.append(True)
            continue
        keep.append(False)
        excluded.append({"image_id": row.image_id, "split": row.split, "reason": reason})
    kept = frame[np.array(keep, dtype=bool)].copy() if len(frame) else frame.copy()
    kept["y"] = kept["label"].map(classes).astype(int)
    return kept, excluded


def read_scores(run_dir: Path, method: str | None = None) -> pd.DataFrame:
    """``scores.csv`` with one row per image; ``score`` = the ``method``'s score when one is named.

    Every row stores the map-based scores (mean_map, best_map, topk) beside the ``score`` of the
    method used at projection time, so a resumed run with another ``score.method`` is evaluated on
    that method's column instead of silently on the stale one (``perceptual`` has no column: it
    uses ``score``).
    """
    frame = pd.read_csv(run_dir / SCORES_FILE, dtype={"image_id": str, "note": str}, keep_default_na=False)
    column = f"score_{method}"
    if method is not None and column in frame.columns:
        frame["score"] = frame[column]
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce")
    # keep each image once: the re-scored row of a resumed run, or one copy of a DistributedSampler pad
    return frame.drop_duplicates(subset=["split", "image_id"], keep="last").reset_index(drop=True)


def display_map(arrays: dict[str, np.ndarray], cfg: DictConfig) -> np.ndarray:
    """The map a method reads, ``[C, H, W]``: ``|difference|`` for the paper's scores, the smoothed,
    polarised map inside the (eroded) breast for the lesion-sensitive ones (where they look)."""
    if str(cfg.score.method) not in MAP_METHODS:
        return arrays["abs_map"]
    signed = torch.from_numpy(arrays["signed_map"].astype(np.float32))[None]
    mask = torch.from_numpy(arrays["mask"].astype(np.float32))[None]
    return score_map(signed, mask, MapScoreSettings.from_config(cfg.score))[0].numpy()


def _localization(run_dir: Path, test: pd.DataFrame, cfg: DictConfig) -> dict[str, float]:
    from mammo_anogan.evaluation.localization import hit_rate, pixel_auroc

    maps, lesions, masks = [], [], []
    for split, image_id in zip(test["split"], test["image_id"]):  # the evaluated split, not always test
        arrays = load_image_arrays(map_path(run_dir, split, image_id))
        if "lesion_mask" in arrays and arrays["lesion_mask"].any():
            maps.append(display_map(arrays, cfg)[0])
            lesions.append(arrays["lesion_mask"][0])
            masks.append(arrays["mask"][0])
    if not maps:
        return {}
    return {
        "pixel_auroc": pixel_auroc(np.stack(maps), np.stack(lesions), np.stack(masks)),
        "hit_rate": hit_rate(np.stack(maps), np.stack(lesions), np.stack(masks)),
        "n_localization": len(maps),
    }


def evaluate_run(
    run_dir: Path, cfg: DictConfig, generator_hash: str, threshold_record: dict[str, Any] | None
) -> dict[str, Any]:
    """Metrics of a scored run: validation threshold applied to test, plus the optimistic block."""
    from mammo_anogan.evaluation.metrics import evaluate_protocol, evaluate_scores

    score_cfg = cfg.score
    frame = read_scores(run_dir, str(cfg.score.method))
    kept, excluded = _labelled(frame, score_cfg.comparison)
    eval_split = "test" if "test" in score_cfg.splits else list(score_cfg.splits)[-1]
    test, val = kept[kept.split == eval_split], kept[kept.split == "val"]
    boot = {"n_bootstrap": int(score_cfg.n_bootstrap), "seed": int(cfg.seed), "ci": float(score_cfg.ci)}
    if threshold_record is not None:
        metrics = evaluate_scores(test.y, test.score, threshold=threshold_record["threshold"], **boot)
        metrics["threshold_source"] = "threshold_from"
        metrics["optimistic_in_sample"] = {
            **evaluate_scores(test.y, test.score, threshold=None, **boot),
            "optimistic": True,
            "note": "threshold chosen on the test scores themselves (seed paper protocol); optimistic",
        }
    elif eval_split != "val" and len(val) and val.y.nunique() == 2:
        metrics = evaluate_protocol(val.y, val.score, test.y, test.score, **boot)
    else:
        log.warning(
            "no validation split with both classes: the threshold is fitted on %s (optimistic)", eval_split
        )
        metrics = evaluate_scores(test.y, test.score, threshold=None, **boot)
        metrics["optimistic"] = True
        metrics["optimistic_in_sample"] = {**metrics, "note": "in-sample Youden threshold; optimistic"}
    metrics.update(_localization(run_dir, test, cfg))
    reasons = Counter(item["reason"] for item in excluded)
    metrics.update(
        num_seeds=int(cfg.projection.num_seeds),
        init=str(cfg.projection.get("init", "seeds")),
        refine=bool(OmegaConf.select(cfg, "projection.refine.enabled", default=False)),
        loss=str(cfg.projection.loss),
        steps=int(cfg.projection.steps),
        space=str(cfg.projection.space),
        score_method=str(score_cfg.method),
        comparison=str(score_cfg.comparison),
        evaluated_split=eval_split,
        n_images=int(len(frame)),
        excluded=int(len(excluded)),
        excluded_reasons=dict(reasons),
        generator_hash=generator_hash,
    )
    return metrics


def write_figures(run_dir: Path, metrics: dict[str, Any], cfg: DictConfig) -> list[Path]:
    """ROC, score histogram and TP/FN/FP/TN panels of the evaluated split (skipped if impossible)."""
    from mammo_anogan.evaluation.figures import plot_case_panels, plot_roc, plot_score_histogram, select_cases

    kept, _ = _labelled(read_scores(run_dir, str(cfg.score.method)), cfg.score.comparison)
    test = kept[kept.split == metrics["evaluated_split"]].reset_index(drop=True)
    threshold = float(metrics["threshold"])
    paths: list[Path] = []
    try:
        paths.append(plot_roc(test.y, test.score, run_dir / "roc.png", threshold=threshold))
        paths.append(plot_score_histogram(test.y, test.score, run_dir / "histogram.png", threshold=threshold))
        cases = []
        for case_type, indices in select_cases(
            test.y, test.score, threshold, k=int(cfg.score.num_cases)
        ).items():
            for index in indices:
                row = test.iloc[index]
                arrays = load_image_arrays(map_path(run_dir, row.split, row.image_id))
                cases.append(
                    {
                        "image": arrays["image"],
                        "projection": arrays["mean_projection"],
                        "difference": display_map(arrays, cfg),
                        "mask": arrays["mask"],
                        "lesion_mask": arrays.get("lesion_mask"),
                        "case_type": case_type,
                        "score": float(row.score),
                    }
                )
        if cases:
            shown = "|difference|" if str(cfg.score.method) not in MAP_METHODS else "smoothed difference"
            paths.append(
                plot_case_panels(cases, run_dir / "cases.png", title=f"image | mean projection | {shown}")
            )
    except UserError as err:
        log.warning("figures skipped: %s", err)
    return paths


def log_to_wandb(run_dir: Path, cfg: DictConfig, metrics: dict[str, Any], figures: list[Path]) -> None:
    """Log metrics, figures and the scores table to W&B (offline unless configured otherwise)."""
    loggers = cfg.get("logger") or {}
    candidates = [loggers, *(value for value in loggers.values() if isinstance(value, DictConfig))]
    logger_cfg = next((c for c in candidates if "wandb" in str(c.get("_target_", "")).lower()), None)
    if logger_cfg is None:
        return
    import wandb

    os.environ.setdefault("WANDB_MODE", "offline" if logger_cfg.get("offline", True) else "online")
    run = wandb.init(
        settings=wandb.Settings(**wandb_privacy_settings()),  # no command line (data.source) or host
        project=str(logger_cfg.get("project", "mammo_anogan")),
        dir=str(run_dir),
        job_type="score",
        group=str(logger_cfg.get("group") or "") or None,
        config={"projection": OmegaConf.to_container(cfg.projection, resolve=True), "score": dict(cfg.score)},
        reinit=True,
    )
    scalars = {key: value for key, value in metrics.items() if isinstance(value, (int, float))}
    run.log({f"score/{key}": value for key, value in scalars.items()})
    run.log({f"figures/{path.stem}": wandb.Image(str(path)) for path in figures})
    run.log({"score/table": wandb.Table(dataframe=read_scores(run_dir, str(cfg.score.method)))})
    run.finish()


# ------------------------------------------------------------------------------------------ run


def run_score(
    cfg: DictConfig, run_dir: str | os.PathLike[str], lpips_net: nn.Module | None = None
) -> dict[str, Any]:
    """Score ``cfg.score.splits`` into ``run_dir`` and evaluate; returns the metrics."""
    from pytorch_lightning import seed_everything

    from mammo_anogan.data.datamodule import MammoDataModule
    from mammo_anogan.data.splits import describe_fingerprint
    from mammo_anogan.evaluation.table import write_metrics_json
    from mammo_anogan.prepare import ensure_dataset_split

    run_dir = Path(run_dir)
    validate_score_config(cfg)  # one-line ConfigError naming the key, before any file or device work
    check_score_config(cfg.score)
    fitted = fit_score_trainer(cfg)  # e.g. a GPU preset on a CPU machine: one line naming trainer=cpu
    settings = projection_settings(cfg.projection)
    generator = load_checked_generator(cfg)  # every check that can fail runs before any projection
    generator_hash = file_hash(cfg.generator)
    encoder = load_checked_encoder(cfg, generator, generator_hash)
    refine = RefineSettings.from_config(OmegaConf.select(cfg, "projection.refine", default=None))
    fingerprints = score_start_checks(cfg, run_dir, settings)  # never resume into other settings' scores
    threshold_record = None
    if cfg.score.threshold_from:
        requested = None if cfg.score.method == "auto" else str(cfg.score.method)  # auto: the recorded pick
        threshold_record = read_threshold(cfg.score.threshold_from, generator_hash, requested)
        # the threshold is on the scale of the method it was fitted for: auto reuses the recorded one
        method = requested or str(threshold_record.get("score_method") or cfg.score.method)
        check_threshold_record(
            threshold_record,
            fingerprints.threshold.replace({"score.method": method}),
            str(cfg.score.threshold_from),
        )
    loss_fn = build_loss(cfg, lpips_net)
    feature_distance = feature_distance_module(cfg)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # all checks passed; no row or map yet
        remove_stale_temp_files(run_dir)  # left by a kill during an atomic write of a resumed run
        start_score_run_dir(run_dir, fingerprints.scores, bool(cfg.score.resume))  # fingerprint.json
        save_sanitised_config(cfg, run_dir, dataset_salt(cfg.data.dataset_dir))
    seed_everything(int(cfg.seed), verbose=False)
    split_record = ensure_dataset_split(cfg.data, cfg.data.dataset_dir)  # salt-independent split
    fingerprint = split_record.get("fingerprint") or {}
    if fingerprint:
        log.info("%s", describe_fingerprint(fingerprint, split_record.get("scheme")))
    datamodule = MammoDataModule.from_config(cfg.data)
    datamodule.setup("predict")  # val + test only; read from the packed store when there is one

    module = ProjectionModule(
        generator,
        loss_fn,
        settings,
        str(cfg.score.method),
        float(cfg.score.topk_percent),
        encoder=encoder,
        map_settings=MapScoreSettings.from_config(cfg.score),
        refine=refine,
        feature_distance=feature_distance,
    )
    writer = ScoreWriter(run_dir, save_projections=bool(cfg.score.save_projections))
    preemption = PredictionPreemption()
    trainer = build_trainer(cfg, [writer, preemption], fitted)
    for split in cfg.score.splits:
        dataset = datamodule.dataset(split)
        done = completed_image_ids(run_dir, split) if cfg.score.resume else set()
        todo = [index for index, image_id in enumerate(dataset.image_ids) if image_id not in done]
        log.info("%s: %d images to score, %d already done", split, len(todo), len(dataset) - len(todo))
        if not todo:
            continue
        module.split = split
        loader = PreemptionSafeLoader(  # data.loader.num_workers; workers outlive SIGTERM/SIGUSR1
            Subset(dataset, todo),
            batch_size=int(cfg.projection.batch_images),
            shuffle=False,
            **datamodule.loader_options(),
        )
        try:
            trainer.predict(module, loader, return_predictions=False)
        finally:
            preemption.restore()  # Lightning skips the teardown hook when predict raises
    if not trainer.is_global_zero:
        return {}

    cfg, selection = resolve_score_method(run_dir, cfg, threshold_record)
    metrics = evaluate_run(run_dir, cfg, generator_hash, threshold_record)
    metrics["split_fingerprint"] = fingerprint.get("digest")  # compare with another lab's run
    metrics.update(selection)
    metrics.update(oracle_metrics(cfg, threshold_record))
    write_metrics_json(run_dir / "metrics.json", metrics)
    if threshold_record is None:
        write_threshold(
            run_dir,
            {
                "threshold": metrics["threshold"],
                "threshold_source": metrics["threshold_source"],
                "generator_hash": generator_hash,
                "score_method": str(cfg.score.method),
                **({"score_method_requested": "auto"} if selection else {}),
                "init": settings.init,
                "num_seeds": settings.num_seeds,
                "loss": str(cfg.projection.loss),
                "steps": settings.steps,
                "comparison": str(cfg.score.comparison),
                # the picked method (auto): a threshold is on that method's scale
                "fingerprint": fingerprints.threshold.replace(
                    {"score.method": str(cfg.score.method)}
                ).to_dict(),
            },
        )
    figures = write_figures(run_dir, metrics, cfg) if cfg.score.figures else []
    log_to_wandb(run_dir, cfg, metrics, figures)
    log.info(
        "AUC %.3f, accuracy %.3f, sensitivity %.3f, specificity %.3f (threshold %s) -> %s",
        metrics["auc"], metrics["accuracy"], metrics["sensitivity"], metrics["specificity"],
        metrics["threshold_source"], run_dir,
    )  # fmt: skip
    return metrics


def resolve_score_method(
    run_dir: Path, cfg: DictConfig, threshold_record: dict[str, Any] | None
) -> tuple[DictConfig, dict[str, Any]]:
    """``score.method=auto``: the method with the best *validation* AUC (test is never looked at).

    Returns the config with ``score.method`` set to the pick and the record of the choice
    (``score_method_requested``, ``auto_validation_auc`` per candidate) for metrics.json; a reused
    threshold (``score.threshold_from``) brings its own method. Other methods pass through unchanged.
    """
    if str(cfg.score.method) != "auto":
        return cfg, {}
    cfg = cfg.copy()
    if threshold_record is not None and threshold_record.get("score_method") not in (None, "auto"):
        cfg.score.method = str(threshold_record["score_method"])
        return cfg, {"score_method_requested": "auto", "auto_choice_from": "threshold_from"}
    frame = read_scores(run_dir)
    kept, _ = _labelled(frame, str(cfg.score.comparison))
    val = kept[kept.split == "val"]
    columns = {
        name[len("score_") :]: pd.to_numeric(val[name], errors="coerce").to_numpy()
        for name in val.columns
        if name.startswith("score_")
    }
    chosen, aucs = select_method(val.y.to_numpy(), columns)
    cfg.score.method = chosen
    log.info("score.method=auto picked %s on validation (AUC %s)", chosen, aucs)
    return cfg, {"score_method_requested": "auto", "auto_validation_auc": aucs}


def oracle_metrics(cfg: DictConfig, threshold_record: dict[str, Any] | None) -> dict[str, Any]:
    """``metrics["oracle"]``: the same evaluation on ``|image - lesion-free twin|`` (synthetic data).

    The ceiling of the score pipeline with a perfect reconstruction of the normal anatomy; only
    phantoms generated with ``lesion_free_twins`` have it (``score.oracle=auto``), skipped otherwise.
    """
    mode = str(cfg.score.get("oracle", "auto")).lower()
    if mode == "false":
        return {}
    from mammo_anogan.evaluation.oracle import evaluate_oracle, has_twins

    if not has_twins(cfg.data):
        if mode == "true":
            raise UserError("score.oracle=true needs synthetic data generated with lesion_free_twins=true")
        return {}
    return {"oracle": evaluate_oracle(cfg)}


class AggregateTableCallback(Callback):
    """At the end of a multirun, write Table 1 (``table.md``/``table.csv``) into the sweep directory."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mammo_anogan.evaluation.table import aggregate_table

        sweep_dir = Path(config.hydra.sweep.dir)
        run_dirs = sorted({path.parent for path in sweep_dir.glob("*/metrics.json")})
        if not run_dirs:
            log.warning("no metrics.json under %s: no table written", sweep_dir)
            return
        markdown, _ = aggregate_table(run_dirs, sweep_dir)
        log.info("Table 1 of %d runs: %s", len(run_dirs), markdown)


#: Exit status of a scoring run stopped by SIGTERM / SIGUSR1 (the shell's code for SIGTERM): not 0,
#: so a script does not go on to evaluate a half-scored run.
PREEMPTED_EXIT_CODE = 143


@hydra.main(config_path="../conf", config_name="score", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    try:
        run_score(cfg, run_dir)
    except ScoringPreempted as stop:
        log.warning(
            "%s: stopped between batches, every finished image is saved; resume with the same command "
            "and hydra.run.dir=%s",
            stop,
            run_dir,
        )
        sys.exit(PREEMPTED_EXIT_CODE)


if __name__ == "__main__":
    main()
