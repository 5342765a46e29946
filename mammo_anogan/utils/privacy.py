"""The run config saved beside train/score outputs, with raw input paths replaced by salted hashes.

Why: ``data.source`` and ``data.labels_csv`` point at the raw films, and hospitals name those folders
after patients, accession numbers or wards. Hydra's own ``.hydra/`` copy (and W&B's command-line
record) would store them verbatim in every run folder, so the entry points turn those off
(``hydra.output_subdir: null``, W&B metadata disabled) and save this sanitised copy instead. The hash
uses the dataset's salt, so two runs on the same raw folder still show the same value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from mammo_anogan.utils.hashing import SALT_FILE, salted_hash
from mammo_anogan.utils.io import atomic_write_text

RUN_CONFIG_FILE = "config.yaml"
#: Keys that name raw input files (patient folders); replaced by ``hash:<salted hash>``.
RAW_PATH_KEYS = (("data", "source"), ("data", "labels_csv"))


def dataset_salt(dataset_dir: str | os.PathLike[str]) -> str | None:
    """The prepared dataset's salt (``salt.txt``), read only; ``None`` when it has none."""
    path = Path(dataset_dir) / SALT_FILE
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def hash_raw_path(value: object, salt: str | None) -> str:
    """``hash:<16 hex>`` of the absolute path (same folder, same salt -> same value).

    Without a salt the value is only ``redacted``: an unsalted hash of a path could be reversed by
    hashing guessed paths.
    """
    if not salt:
        return "redacted"
    return "hash:" + salted_hash(f"path:{Path(str(value)).expanduser().resolve()}", salt)


def sanitised_run_config(cfg: DictConfig, salt: str | None) -> dict[str, Any]:
    """``cfg`` as plain containers (resolved where possible) without raw paths or the hydra node."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException:  # e.g. ${hydra:...} outside a Hydra app: keep it unresolved
        container = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(container, dict)
    container.pop("hydra", None)
    for group, key in RAW_PATH_KEYS:
        block = container.get(group)
        if isinstance(block, dict) and block.get(key) not in (None, "", "???"):
            block[key] = hash_raw_path(block[key], salt)
    return container


def save_sanitised_config(
    cfg: DictConfig, run_dir: str | os.PathLike[str], salt: str | None, name: str = RUN_CONFIG_FILE
) -> Path:
    """Write :func:`sanitised_run_config` as YAML into ``run_dir`` (atomically)."""
    text = OmegaConf.to_yaml(OmegaConf.create(sanitised_run_config(cfg, salt)))
    return atomic_write_text(Path(run_dir) / name, text)


def wandb_privacy_settings() -> dict[str, bool]:
    """W&B settings that keep the command line, host, user and code out of a run's files."""
    return {"x_disable_meta": True, "disable_git": True, "save_code": False}
