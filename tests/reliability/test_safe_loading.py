"""Guarantee 7: checkpoints and networks load with ``weights_only=True``; a code-running pickle is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from data_factory import make_prepared_dataset
from hydra import compose, initialize_config_dir
from reliability_helpers import TINY_TRAIN

import mammo_anogan.utils.config  # noqa: F401  (resolvers first)
from mammo_anogan.models.stylegan2 import load_discriminator, load_generator
from mammo_anogan.train import train
from mammo_anogan.utils.config import CONFIG_DIR
from mammo_anogan.utils.errors import UserError
from mammo_anogan.utils.io import safe_torch_load


class _RunsCode:
    """Unpickling this calls ``os.system``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _crafted(path: Path, marker: Path, layout: str) -> Path:
    payload = {
        "state_dict": {"w": torch.ones(1)},
        "config": {},
        "kind": "generator",
        "hook": _RunsCode(marker),
    }
    if layout == "lightning":
        payload = {"state_dict": {}, "stylegan2": {"cur_nimg": 0}, "hyper_parameters": _RunsCode(marker)}
    torch.save(payload, path)
    return path


@pytest.mark.parametrize(
    "loader", [safe_torch_load, load_generator, load_discriminator], ids=["safe_torch_load", "G", "D"]
)
def test_code_running_pickle_is_refused(loader, tmp_path: Path, figures: dict[str, float]) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "pwned"
    path = _crafted(tmp_path / "evil.pt", marker, "network")
    with pytest.raises(
        UserError, match=r"refusing to load .*evil\.pt: it contains objects that are not plain"
    ):
        loader(path)
    assert not marker.exists()
    figures["crafted_pickles_refused"] += 1


def test_truncated_checkpoint_is_a_one_line_user_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    torch.save({"state_dict": {"w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(UserError, match="cannot read checkpoint") as err:
        safe_torch_load(path)
    assert "\n" not in str(err.value)


def test_resume_from_crafted_checkpoint_is_refused(tmp_path: Path, figures: dict[str, float]) -> None:
    dataset_dir = make_prepared_dataset(tmp_path / "data", resolution=32)
    marker = tmp_path / "pwned"
    crafted = _crafted(tmp_path / "evil.ckpt", marker, "lightning")
    overrides = [*TINY_TRAIN, f"data.dataset_dir={dataset_dir}", f"+run_dir={tmp_path / 'run'}", "~logger"]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*overrides, f"ckpt_path={crafted}"])
    with pytest.raises(UserError, match=r"refusing to load .*evil\.ckpt"):
        train(cfg)
    assert not marker.exists()
    figures["crafted_pickles_refused"] += 1
