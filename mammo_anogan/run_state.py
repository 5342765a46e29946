"""What each run artifact's fingerprint holds, and the start-up checks of train and score that use them.

The mechanism (canonical values, digest, one-line comparison) is :mod:`mammo_anogan.utils.fingerprint`;
this module decides, per artifact, which settings determine it:

=====================  ==========================================  ===================================
artifact               fingerprint (kind: where it is stored)      checked by
=====================  ==========================================  ===================================
prepared dataset       ``dataset``: ``<dataset>/fingerprint.json``  prepare (resume), train, score
checkpoint             ``training``: ``"fingerprint"`` in the file  train (``ckpt_path``)
encoder checkpoint     ``encoder_training``: in the file           train_encoder (``ckpt_path``)
generator.pt / D.pt    ``training`` + ``cur_nimg``: in the file     score (G and D from one moment)
scores.csv + maps/     ``scores``: ``<run dir>/fingerprint.json``   score (resume)
threshold.json         ``threshold``: ``"fingerprint"`` in the JSON  score (``score.threshold_from``)
packed store           ``store``: ``<dataset>/store/<R>px.json``     data module (stale: rebuilt, not refused)
=====================  ==========================================  ===================================

Everything not listed in a fingerprint may change when the artifact is reused (docs/reliability.md,
"What a resume may change"). Every check runs before the run writes anything (its ``config.yaml``
included), so a refused run leaves the run directory as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mammo_anogan.utils.errors import UserError
from mammo_anogan.utils.fingerprint import (
    Fingerprint,
    check_fingerprint,
    config_values,
    file_digest,
    make_fingerprint,
    read_sidecar,
    read_stamp,
    write_sidecar,
)

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.csv"
PREPARE_CONFIG_FILE = "prepare_config.yaml"

# ------------------------------------------------------------------------------------ prepared dataset

#: ``data.*`` settings of ``prepare`` that determine the files of a prepared dataset.
DATASET_KEYS = ("reader", "source", "labels_csv", "resolution", "views", "preprocess")
#: Where the raw films were: part of the dataset's fingerprint (a resumed prepare must read the same
#: folder), but train and score never read them, so they may point elsewhere (or be unset) there.
RAW_LOCATION_KEYS = ("data.source", "data.labels_csv")


def dataset_fingerprint(data: Mapping[str, Any]) -> Fingerprint:
    """Fingerprint of a prepared dataset from a ``data`` block (raw paths already salted-hashed)."""
    values = {f"data.{key}": data.get(key) for key in DATASET_KEYS}
    views = values["data.views"]
    values["data.views"] = None if views is None else [str(v).upper() for v in views]
    return make_fingerprint("dataset", values)


def read_dataset_fingerprint(dataset_dir: str | os.PathLike[str]) -> Fingerprint | None:
    """The fingerprint of a prepared dataset; derived from ``prepare_config.yaml`` for older ones.

    ``None`` for a folder prepared without ``prepare`` (e.g. the test factory): nothing to check.
    """
    dataset_dir = Path(dataset_dir)
    found = read_sidecar(dataset_dir)
    if found is not None:
        return found
    config = dataset_dir / PREPARE_CONFIG_FILE
    if not config.is_file():
        return None
    data = OmegaConf.to_container(OmegaConf.load(config), resolve=False)
    if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
        return None
    return dataset_fingerprint(data["data"])


def check_prepare_resume(out_dir: Path, expected: Fingerprint) -> None:
    """``prepare`` into a folder that already holds a dataset: only with the settings that made it."""
    if not (out_dir / MANIFEST_FILE).is_file():
        return
    check_fingerprint(
        read_dataset_fingerprint(out_dir),
        expected,
        f"prepare.out_dir={out_dir}",
        "use prepare.overwrite=true (discards it) or another prepare.out_dir",
    )


def check_dataset_settings(cfg: DictConfig, dataset_dir: str | os.PathLike[str]) -> Fingerprint | None:
    """Train/score: ``cfg.data`` must describe the prepared dataset they read (else a wrong record).

    The raw folder's location is not compared (never read again); ``data.resolution`` is not compared
    when ``data.loader.resize=true`` (the loader resizes). Returns the dataset's fingerprint.
    """
    recorded = read_dataset_fingerprint(dataset_dir)
    if recorded is None:
        log.debug("%s has no fingerprint (not made by prepare): its settings are not checked", dataset_dir)
        return None
    data = {
        key: OmegaConf.select(cfg, f"data.{key}", default=None) for key in ("reader", "resolution", "views")
    }
    data["preprocess"] = OmegaConf.select(cfg, "data.preprocess", default=None)
    ignore = list(RAW_LOCATION_KEYS)
    if bool(OmegaConf.select(cfg, "data.loader.resize", default=False)):
        ignore.append("data.resolution")
    check_fingerprint(
        recorded,
        dataset_fingerprint(data),
        f"data.dataset_dir={dataset_dir}",
        f"pass the data.* settings it was prepared with (its {PREPARE_CONFIG_FILE}), or prepare another "
        "data.dataset_dir with these",
        ignore=ignore,
    )
    return recorded


def _dataset_values(cfg: DictConfig, dataset_dir: Path) -> dict[str, Any]:
    """Identity of the data a run reads: the dataset's fingerprint, its manifest's bytes, the split."""
    dataset = check_dataset_settings(cfg, dataset_dir)
    values: dict[str, Any] = {
        "data.dataset": None if dataset is None else dataset.digest,
        "data.manifest": file_digest(dataset_dir / MANIFEST_FILE),
    }
    values.update(config_values(cfg, ["data.split"]))  # which images are train / val / test
    return values


# ------------------------------------------------------------------------------------------ training

NEW_RUN = "start a new run (another hydra.run.dir, no ckpt_path)"

#: Config keys that determine a training checkpoint: the networks, the optimisation and the data.
#: Everything else may change on resume (``model.total_kimg``, ``logger``, ``callbacks``, ...).
TRAINING_KEYS = (
    "model.generator",
    "model.discriminator",
    "model.optimizer",
    "model.loss",
    "model.r1_gamma",
    "model.ema",
    "model.ada",
    "data.resolution",
    "data.views",
    "data.loader.batch_size",
    "data.loader.augment",
    "data.loader.resize",
)


@dataclass
class ResumeState:
    """What the start-up check learnt about the checkpoint a run resumes from (``path`` None: new run)."""

    path: str | None = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def check_fits(self, module: Any) -> None:
        """The network built from the config must have the checkpoint's tensors, shape for shape."""
        if self.path is None:
            return
        built = {name: tuple(t.shape) for name, t in module.state_dict().items()}
        missing = sorted(set(built) - set(self.shapes))
        extra = sorted(set(self.shapes) - set(built))
        wrong = [name for name in built if name in self.shapes and built[name] != self.shapes[name]]
        problems = [f"{n}: {list(self.shapes[n])} in the checkpoint, {list(built[n])} now" for n in wrong[:2]]
        problems += [f"{n} missing from the checkpoint" for n in missing[:2]]
        problems += [f"{n} not in this network" for n in extra[:2]]
        count = len(wrong) + len(missing) + len(extra)
        if count:
            more = f" and {count - len(problems)} more" if count > len(problems) else ""
            raise UserError(
                f"checkpoint {self.path} does not fit the network built from model.* "
                f"({'; '.join(problems)}{more}); resume with the settings and code it was trained with, "
                f"or {NEW_RUN}"
            )


def training_fingerprint(cfg: DictConfig, dataset_dir: str | os.PathLike[str], precision: str) -> Fingerprint:
    """Fingerprint of a training run's checkpoints (``precision``: the resolved trainer precision)."""
    values = config_values(cfg, TRAINING_KEYS)
    values["trainer.precision"] = precision
    values.update(_dataset_values(cfg, Path(dataset_dir)))
    return make_fingerprint("training", values)


#: ``encoder_train.*`` keys that may change when an encoder run resumes (its length, where LPIPS lies).
ENCODER_RESUMABLE_KEYS = ("total_kimg", "lpips_weights")


def encoder_training_fingerprint(
    cfg: DictConfig, settings: Mapping[str, Any], dataset_dir: str | os.PathLike[str], precision: str
) -> Fingerprint:
    """Fingerprint of ``train_encoder`` checkpoints: the frozen G (and D), ``encoder_train.*``, the data."""
    values: dict[str, Any] = {
        f"encoder_train.{key}": value for key, value in settings.items() if key not in ENCODER_RESUMABLE_KEYS
    }
    values["generator"] = file_digest(str(cfg.generator))
    uses_d = float(settings.get("feature_weight", 0.0)) > 0
    values["discriminator"] = file_digest(discriminator_path(cfg)) if uses_d else None
    values.update(config_values(cfg, ["data.resolution", "data.loader.batch_size", "data.loader.augment"]))
    values["trainer.precision"] = precision
    values.update(_dataset_values(cfg, Path(dataset_dir)))
    return make_fingerprint("encoder_training", values)


def _legacy_training_fingerprint(checkpoint: Mapping[str, Any]) -> Fingerprint | None:
    """For checkpoints written before fingerprints: the network and optimisation settings it stores."""
    hparams = checkpoint.get("hyper_parameters")
    if not isinstance(hparams, Mapping) or "encoder" in hparams:  # an encoder's: nothing to compare
        return None
    loss = dict(hparams.get("loss") or {})
    values = {
        f"model.{name}": hparams.get(name)
        for name in ("generator", "discriminator", "optimizer", "ema", "ada")
        if hparams.get(name) is not None
    }
    if "r1_gamma" in loss:
        values["model.r1_gamma"] = loss.pop("r1_gamma")
    values["model.loss"] = loss
    return make_fingerprint("training", values)


def _finite_checkpoint(path: Path) -> bool:
    from mammo_anogan.training.nonfinite import nonfinite_tensor_names
    from mammo_anogan.utils.io import safe_torch_load

    try:
        state = safe_torch_load(path, mmap=True).get("state_dict", {})
    except (UserError, AttributeError):
        return False
    return bool(state) and not nonfinite_tensor_names(state)


def _earlier_finite_checkpoint(path: Path, limit: int = 3) -> Path | None:
    """The newest other checkpoint beside ``path`` whose weights are finite (at most ``limit`` tried)."""
    others = [p for p in path.parent.glob("*.ckpt") if p.resolve() != path.resolve()]
    others.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return next((p for p in others[:limit] if _finite_checkpoint(p)), None)


def check_resume(ckpt_path: str | None, expected: Fingerprint) -> ResumeState:
    """Before any work: the checkpoint to resume must come from these settings and hold finite weights.

    Raises one-line :class:`UserError`s: settings that differ (naming each key), non-finite weights
    (naming the tensors and an earlier finite checkpoint to resume from, when there is one).
    """
    if ckpt_path is None:
        return ResumeState()
    from mammo_anogan.training.nonfinite import check_finite_loaded
    from mammo_anogan.utils.io import safe_torch_load

    checkpoint = safe_torch_load(ckpt_path, mmap=True)  # weights_only=True; tensors are only mapped
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, Mapping):
        raise UserError(
            f"{ckpt_path} is not a training checkpoint (no state_dict); pass a .ckpt of this project"
        )
    recorded = read_stamp(checkpoint) or _legacy_training_fingerprint(checkpoint)
    check_fingerprint(
        recorded,
        expected,
        f"checkpoint {ckpt_path}",
        f"resume with the settings it was trained with, or {NEW_RUN}",
    )
    earlier = None
    from mammo_anogan.training.nonfinite import nonfinite_tensor_names

    if nonfinite_tensor_names(state):
        earlier = _earlier_finite_checkpoint(Path(ckpt_path))
    advice = (
        f"resume from an earlier checkpoint with ckpt_path={earlier}"
        if earlier is not None
        else f"no other checkpoint beside it has finite weights: {NEW_RUN}"
    )
    check_finite_loaded(state, f"checkpoint {ckpt_path}", f"it cannot be resumed; {advice}")
    shapes = {name: tuple(t.shape) for name, t in state.items() if hasattr(t, "shape")}
    return ResumeState(path=str(ckpt_path), shapes=shapes)


def warn_if_new_run_overwrites(run_dir: Path, checkpoint_dir: str, ckpt_path: str | None) -> None:
    """A new run (no ``ckpt_path``) in a folder holding checkpoints: say they are not resumed."""
    last = run_dir / checkpoint_dir / "last.ckpt"
    if ckpt_path is None and last.is_file():
        log.warning(
            "%s holds checkpoints of an earlier run: this new run does not resume them and overwrites "
            "last.ckpt (resume with ckpt_path=last, or train into another hydra.run.dir)",
            run_dir,
        )


# ------------------------------------------------------------------------------------------- scoring

#: ProjectionSettings fields that change speed or memory only, never a number: free to change.
PROJECTION_SPEED_ONLY = ("channels_last", "compile")
#: ``projection.*`` keys of the loss (not ProjectionSettings fields).
PROJECTION_LOSS_KEYS = ("loss", "pixel_weight", "pixel_norm", "lpips_resize")
#: ``score.*`` keys of the lesion-sensitive scores (anomaly.map_scores.MapScoreSettings).
MAP_SCORE_KEYS = ("smooth_sigma", "component_threshold", "edge_margin", "map_polarity")
SCORES_ADVICE = (
    "score into another hydra.run.dir, or add score.resume=false to discard the scores in it and score again"
)


def discriminator_path(cfg: DictConfig) -> Path:
    """The discriminator of ``projection.loss=disc_features``: ``discriminator`` or the one beside G."""
    return Path(str(cfg.get("discriminator") or Path(str(cfg.generator)).with_name("discriminator.pt")))


def _projection_values(cfg: DictConfig, settings: Any) -> dict[str, Any]:
    """Inputs and settings that determine every number of a projection (and so of a score)."""
    values = {
        f"projection.{key}": value
        for key, value in dataclasses.asdict(settings).items()
        if key not in PROJECTION_SPEED_ONLY
    }
    values.update(config_values(cfg, [f"projection.{key}" for key in PROJECTION_LOSS_KEYS]))
    values["generator"] = file_digest(str(cfg.generator))
    uses_d = str(cfg.projection.loss) == "disc_features"
    values["discriminator"] = file_digest(discriminator_path(cfg)) if uses_d else None
    values["data.resolution"] = int(cfg.data.resolution)
    values["score.topk_percent"] = float(cfg.score.get("topk_percent", 1.0))
    uses_encoder = str(getattr(settings, "init", "seeds")) != "seeds"
    values["encoder"] = file_digest(str(cfg.encoder)) if uses_encoder and cfg.get("encoder") else None
    if OmegaConf.select(cfg, "projection.refine.enabled", default=False):  # off: no refinement at all
        values.update(config_values(cfg, ["projection.refine"]))
    else:  # recorded either way: only keys on both sides are compared, so an absent key never refuses
        values["projection.refine.enabled"] = False
    # The lesion-sensitive scores' settings (smoothing, component threshold, ...): every row stores them.
    values.update(config_values(cfg, [f"score.{key}" for key in MAP_SCORE_KEYS]))
    return values


def threshold_fingerprint(
    cfg: DictConfig, settings: Any, projection: dict[str, Any] | None = None
) -> Fingerprint:
    """A threshold is on one score's scale: same generator, projection and ``score.method``.

    The dataset is not part of it: reusing a validation threshold on another test set is its purpose.
    ``projection``: :func:`_projection_values` when already computed (file hashes are not free).
    """
    values = dict(projection or _projection_values(cfg, settings))
    values["score.method"] = str(cfg.score.method)
    return make_fingerprint("threshold", values)


#: ``score.method`` in a scores fingerprint for every method whose score is a stored column
MAP_BASED = "any map-based"


def _map_based(method: str) -> bool:
    """Methods evaluated from the stored ``score_<method>`` columns; ``auto`` picks among them."""
    from mammo_anogan.anomaly.outputs import EXTRA_SCORE_COLUMNS

    return method == "auto" or f"score_{method}" in EXTRA_SCORE_COLUMNS


def scores_fingerprint(
    cfg: DictConfig, settings: Any, projection: dict[str, Any] | None = None
) -> Fingerprint:
    """``scores.csv`` + ``maps/``: the projection, the images (dataset, manifest, split) and the score.

    Every row stores all map-based scores (``score_<method>`` columns), so ``score.method`` may change
    between them (and ``auto``, which picks among them) on resume; a method without a column
    (``perceptual``) may not.
    """
    values = dict(projection or _projection_values(cfg, settings))
    method = str(cfg.score.method)
    values["score.method"] = MAP_BASED if _map_based(method) else method
    values.update(_dataset_values(cfg, Path(str(cfg.data.dataset_dir))))
    return make_fingerprint("scores", values)


def _has_rows(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return len(handle.readlines(1 << 16)) > 1


def check_score_run_dir(run_dir: Path, expected: Fingerprint, resume: bool) -> None:
    """A resumed score run dir must hold scores of exactly these settings (never relabel results)."""
    from mammo_anogan.anomaly.outputs import SCORES_FILE

    scores = run_dir / SCORES_FILE
    if resume and _has_rows(scores):
        recorded = read_sidecar(run_dir)
        if recorded is not None and recorded.values.get("score.method") == "auto":
            recorded = recorded.replace({"score.method": MAP_BASED})  # written before auto was map-based
        check_fingerprint(
            recorded,
            expected,
            str(scores),
            SCORES_ADVICE,
            missing="it was written by an older version",
        )


def start_score_run_dir(run_dir: Path, expected: Fingerprint, resume: bool) -> None:
    """Rank 0, after every check: ``score.resume=false`` discards earlier results; record the fingerprint."""
    from mammo_anogan.anomaly.outputs import MAPS_DIR, SCORES_FILE, THRESHOLD_FILE

    if not resume and (run_dir / SCORES_FILE).is_file():
        log.warning("score.resume=false: discarding the earlier scores and maps in %s", run_dir)
        for name in (SCORES_FILE, THRESHOLD_FILE, "metrics.json"):
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / MAPS_DIR, ignore_errors=True)
    write_sidecar(run_dir, expected)


def check_threshold_record(record: Mapping[str, Any], expected: Fingerprint, source: str) -> None:
    """``score.threshold_from``: the threshold must be on this run's score scale."""
    recorded = record.get("fingerprint")
    if recorded is None:  # written before fingerprints: compare what the record names
        legacy = {
            "generator": record.get("generator_hash"),
            "score.method": record.get("score_method"),
            "projection.num_seeds": record.get("num_seeds"),
            "projection.loss": record.get("loss"),
            "projection.steps": record.get("steps"),
        }
        recorded = make_fingerprint("threshold", {k: v for k, v in legacy.items() if v is not None})
    found = Fingerprint.from_dict(recorded)
    if found is not None and found.values.get("score.method") == "auto" and record.get("score_method"):
        # written by score.method=auto before its pick was recorded in the fingerprint
        recorded = found.replace({"score.method": record["score_method"]})
    check_fingerprint(
        recorded,
        expected,
        f"score.threshold_from={source}",
        "pass the threshold of a run scored with these settings, or drop score.threshold_from to fit one",
    )


def check_network_pair(generator: str | os.PathLike[str], discriminator: str | os.PathLike[str]) -> None:
    """Warn when G and D (``disc_features`` loss) were not exported together by one training run."""
    from mammo_anogan.models.stylegan2.export import read_network_fingerprint

    if not Path(discriminator).is_file():
        return  # the loss reports the missing file with its own one-line error
    g_print, d_print = read_network_fingerprint(generator), read_network_fingerprint(discriminator)
    if g_print is not None and d_print is not None and g_print.digest != d_print.digest:
        log.warning(
            "the discriminator %s was not exported with the generator (different run or image count: "
            "%s vs %s kimg); the disc_features loss uses its features as they are",
            discriminator,
            d_print.values.get("cur_nimg", 0) / 1000,
            g_print.values.get("cur_nimg", 0) / 1000,
        )


@dataclass
class ScoreState:
    """Fingerprints of a scoring run's outputs (computed and checked at start-up)."""

    scores: Fingerprint
    threshold: Fingerprint


def score_start_checks(cfg: DictConfig, run_dir: Path, settings: Any) -> ScoreState:
    """Every fingerprint check of ``score`` (dataset, networks, run dir), before any output is written."""
    if str(cfg.projection.loss) == "disc_features":
        check_network_pair(str(cfg.generator), discriminator_path(cfg))
    projection = _projection_values(cfg, settings)
    state = ScoreState(
        scores_fingerprint(cfg, settings, projection), threshold_fingerprint(cfg, settings, projection)
    )
    check_score_run_dir(run_dir, state.scores, bool(cfg.score.resume))
    return state
