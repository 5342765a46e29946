"""Typed schemas for the config groups, checked right after Hydra composes a config.

Why: a typo or an impossible value (``data.resolution=500``, ``projection.num_seeds=0``) used to
surface minutes later on a GPU node as a shape error deep inside a network. Every entry point calls
``validate_*_config`` first: the keys each step relies on are merged into dataclass schemas with
``OmegaConf.structured`` (so a value of the wrong type is rejected by OmegaConf), then value rules are
checked. Any failure is one :class:`~mammo_anogan.utils.errors.ConfigError` line that names the key
and the allowed values, raised before data is read or a device is touched.

The schemas list only the keys that are validated; the YAML groups may hold more (they are owned by
the modules that read them, which reject unknown keys of their own blocks).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mammo_anogan.utils.errors import ConfigError

MISSING_VALUE = "???"
RESOLUTIONS = tuple(2**k for k in range(3, 13))  # 8 .. 4096 px
PROJECTION_LOSSES = ("lpips_vgg", "lpips_alex", "disc_features", "ms_ssim", "mse")
PROJECTION_SPACES = ("w", "w_plus")
PROJECTION_INITS = ("seeds", "encoder", "encoder+seeds", "encoder+jitter")
PIXEL_NORMS = ("l1", "l2")
PRECISIONS = ("bf16", "fp32")
ON_NONFINITE = ("stop", "skip")
READERS = ("dicom", "mias", "folder", "synthetic")
STORE_MODES = ("auto", "ram", "packed")  # data.loader.store (mammo_anogan.data.store)
LABELS = ("normal", "benign", "malignant", "unknown")


@dataclass
class SplitSchema:
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0


@dataclass
class LoaderSchema:
    batch_size: int = 8
    num_workers: int = 0
    store: str = "auto"
    ram_limit_mb: float = 256.0


@dataclass
class DataSchema:
    name: str = MISSING_VALUE
    reader: str = MISSING_VALUE
    source: Any = None  # a path, or "???" while unset
    label: Any = None  # data.label: the label of films without one (None: leave them unknown)
    dataset_dir: str = MISSING_VALUE
    views: list[str] = field(default_factory=lambda: ["CC"])
    resolution: int = 512
    split: SplitSchema = field(default_factory=SplitSchema)
    loader: LoaderSchema = field(default_factory=LoaderSchema)


@dataclass
class NetworkSchema:
    img_resolution: int = 512
    img_channels: int = 1


@dataclass
class ModelSchema:
    generator: NetworkSchema = field(default_factory=NetworkSchema)
    discriminator: NetworkSchema = field(default_factory=NetworkSchema)
    total_kimg: float = 25_000.0
    on_nonfinite: str = "stop"


@dataclass
class ProjectionSchema:
    loss: str = "lpips_vgg"
    pixel_weight: float = 0.0
    pixel_norm: str = "l1"
    space: str = "w"
    num_seeds: int = 9
    steps: int = 1000
    init: str = "seeds"
    init_jitter: float = 0.25
    lr: float = 0.1
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.25
    latent_noise: float = 0.05
    latent_noise_ramp: float = 0.75
    w_std_samples: int = 10_000
    max_restarts: int = 1
    batch_images: int = 8
    precision: str = "bf16"


@dataclass
class PrepareSchema:
    out_dir: str = MISSING_VALUE
    workers: int = 2
    file_timeout_s: float = 120.0
    overwrite: bool = False
    salt_seed: Any = None


_ABSENT = object()


def _select_fields(cfg: DictConfig, key: str, schema: type) -> dict[str, Any]:
    """The values of ``schema``'s fields under ``cfg.<key>``, each resolved on its own.

    Selecting field by field (instead of resolving the whole block) keeps keys the schema does not
    check - e.g. ``data.labels_csv: ${data.source}/labels.csv`` while ``data.source`` is unset - out of
    the way. A field absent from the YAML keeps the schema's default.
    """
    values: dict[str, Any] = {}
    for spec in dataclasses.fields(schema):
        path = f"{key}.{spec.name}"
        try:
            value = OmegaConf.select(cfg, path, default=_ABSENT, throw_on_missing=False)
            if value is _ABSENT:
                continue
            sub = spec.default_factory  # type: ignore[misc]
            if isinstance(value, DictConfig) and dataclasses.is_dataclass(sub):
                values[spec.name] = _select_fields(cfg, path, sub)  # type: ignore[arg-type]
            elif OmegaConf.is_config(value):
                values[spec.name] = OmegaConf.to_container(value, resolve=True)
            else:
                values[spec.name] = value
        except OmegaConfBaseException as err:
            raise ConfigError(f"{path}: {_first_line(err)}") from None
    return values


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _typed(cfg: DictConfig, key: str, schema: type) -> DictConfig:
    """``cfg.<key>`` merged into ``schema``; a value of the wrong type is a one-line ConfigError."""
    if OmegaConf.select(cfg, key, default=None) is None:
        raise ConfigError(f"{key} is missing from the config (a {schema.__name__} block)")
    values = _select_fields(cfg, key, schema)
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), values)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        full_key = getattr(err, "full_key", None) or ""
        name = f"{key}.{full_key}" if full_key else key
        raise ConfigError(f"{name}: {_first_line(err)}") from None


def _choice(key: str, value: Any, allowed: tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; use one of {', '.join(map(str, allowed))}")


def _at_least(key: str, value: float, minimum: float) -> None:
    if value < minimum:
        raise ConfigError(f"{key}={value} is out of range; it must be >= {minimum:g}")


def _fraction(key: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{key}={value} is out of range; allowed: 0 <= {key} < 1")


def _is_missing(value: Any) -> bool:
    return value is None or str(value) in ("", MISSING_VALUE)


def validate_data(cfg: DictConfig) -> DictConfig:
    """``data.*``: reader, power-of-two resolution, split fractions, batch size."""
    data = _typed(cfg, "data", DataSchema)
    _choice("data.reader", data.reader, READERS)
    _choice("data.resolution", data.resolution, RESOLUTIONS)
    if data.label is not None:
        _choice("data.label", str(data.label).strip().lower(), LABELS)
    _fraction("data.split.val_fraction", data.split.val_fraction)
    _fraction("data.split.test_fraction", data.split.test_fraction)
    total = data.split.val_fraction + data.split.test_fraction
    if total >= 1.0:
        raise ConfigError(
            f"data.split.val_fraction + data.split.test_fraction = {total:g} leaves no training patients; "
            "allowed: a sum < 1"
        )
    _at_least("data.loader.batch_size", data.loader.batch_size, 1)
    _at_least("data.loader.num_workers", data.loader.num_workers, 0)
    _choice("data.loader.store", data.loader.store, STORE_MODES)
    _at_least("data.loader.ram_limit_mb", data.loader.ram_limit_mb, 0)
    return data


def validate_model(cfg: DictConfig, data: DictConfig) -> DictConfig:
    """``model.*``: networks at the dataset's resolution, positive length, NaN policy."""
    model = _typed(cfg, "model", ModelSchema)
    for net in ("generator", "discriminator"):
        resolution = model[net].img_resolution
        if resolution != data.resolution:
            raise ConfigError(
                f"model.{net}.img_resolution={resolution} does not match data.resolution={data.resolution}; "
                f"allowed: {data.resolution} (leave it at its default ${{data.resolution}})"
            )
    _choice("model.generator.img_channels", model.generator.img_channels, (1, 3))
    if model.total_kimg <= 0:
        raise ConfigError(f"model.total_kimg={model.total_kimg} is out of range; it must be > 0")
    _choice("model.on_nonfinite", model.on_nonfinite, ON_NONFINITE)
    return model


def validate_projection(cfg: DictConfig) -> DictConfig:
    """``projection.*``: known loss/space, at least one seed and step, fractions in [0, 1]."""
    projection = _typed(cfg, "projection", ProjectionSchema)
    _choice("projection.loss", projection.loss, PROJECTION_LOSSES)
    _choice("projection.space", projection.space, PROJECTION_SPACES)
    _choice("projection.pixel_norm", projection.pixel_norm, PIXEL_NORMS)
    _choice("projection.precision", projection.precision, PRECISIONS)
    _choice("projection.init", projection.init, PROJECTION_INITS)
    for key in ("num_seeds", "batch_images", "w_std_samples"):
        _at_least(f"projection.{key}", projection[key], 1)
    if projection.init == "seeds" and projection.steps == 0:
        raise ConfigError(
            "projection.steps=0 is out of range; it must be >= 1 (steps=0, f-AnoGAN's one pass G(E(x)), "
            "needs an encoder start: projection.init=encoder projection.space=w_plus encoder=PATH)"
        )
    _at_least("projection.steps", projection.steps, 1 if projection.init == "seeds" else 0)
    _at_least("projection.max_restarts", projection.max_restarts, 0)
    _at_least("projection.init_jitter", projection.init_jitter, 0)
    _at_least("projection.pixel_weight", projection.pixel_weight, 0)
    if projection.lr <= 0:
        raise ConfigError(f"projection.lr={projection.lr} is out of range; it must be > 0")
    for key in ("lr_rampup", "lr_rampdown", "latent_noise_ramp"):
        if not 0.0 <= projection[key] <= 1.0:
            raise ConfigError(f"projection.{key}={projection[key]} is out of range; allowed: 0 <= value <= 1")
    return projection


def _check_raw_source(data: DictConfig, context: str = "") -> None:
    """``data.source`` must name an existing folder (``context`` says why it is needed)."""
    if _is_missing(data.source):
        raise ConfigError(
            f"{context}data.source is missing: set data.source=<folder of {data.reader} images>"
        )
    if not Path(str(data.source)).exists():
        raise ConfigError(f"{context}data.source={data.source} does not exist; allowed: an existing folder")


def validate_train_config(cfg: DictConfig) -> None:
    """Everything ``python -m mammo_anogan.train`` needs to be valid before it starts."""
    data = validate_data(cfg)
    validate_model(cfg, data)
    prepared = (Path(str(data.dataset_dir)) / "manifest.csv").is_file()
    if not prepared and data.reader != "synthetic":
        _check_raw_source(data, f"no prepared dataset at data.dataset_dir={data.dataset_dir}, and ")


def validate_score_config(cfg: DictConfig) -> None:
    """Everything ``python -m mammo_anogan.score`` needs to be valid before it loads a generator."""
    data = validate_data(cfg)
    validate_projection(cfg)
    if OmegaConf.select(cfg, "model", default=None) is not None:
        validate_model(cfg, data)
    generator = OmegaConf.select(cfg, "generator", default=None, throw_on_missing=False)
    if _is_missing(generator):
        raise ConfigError("generator is missing: set generator=<path to an exported generator.pt>")
    if not Path(str(generator)).is_file():
        raise ConfigError(f"generator={generator} does not exist; allowed: an exported generator.pt file")
    if not (Path(str(data.dataset_dir)) / "manifest.csv").is_file():
        raise ConfigError(
            f"data.dataset_dir={data.dataset_dir} holds no prepared dataset (manifest.csv); "
            "run python -m mammo_anogan.prepare with the same data.* settings"
        )


def validate_prepare_config(cfg: DictConfig) -> None:
    """Everything ``python -m mammo_anogan.prepare`` needs to be valid before it reads a file."""
    data = validate_data(cfg)
    prepare = _typed(cfg, "prepare", PrepareSchema)
    _at_least("prepare.workers", prepare.workers, 0)
    _at_least("prepare.file_timeout_s", prepare.file_timeout_s, 0)
    if data.reader != "synthetic":
        _check_raw_source(data)
