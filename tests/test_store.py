"""The packed store (issue 15): same batches as the in-RAM cache, resumable, rebuilt when stale, shared.

A 2,000-film dataset at 32 px is built once for the module; every test reads it, none rewrites it
(tests that change a dataset copy a small one first).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import pickle
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from data_factory import make_prepared_dataset
from omegaconf import OmegaConf

from mammo_anogan.data.datamodule import MammoDataModule
from mammo_anogan.data.dataset import CachedMammoDataset, PackedMammoDataset, to_unit_range
from mammo_anogan.data.loader import MammoDataLoader
from mammo_anogan.data.splits import read_manifest
from mammo_anogan.data.store import (
    PackedStore,
    choose_storage,
    ensure_store,
    prepare_store,
    store_path,
)
from mammo_anogan.utils.errors import ConfigError, UserError

RES = 32
BATCH = 64


@pytest.fixture(scope="module")
def films_2000(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 films: 1,000 normal + 333 abnormal patients, every second one with two films."""
    root = make_prepared_dataset(tmp_path_factory.mktemp("store2000"), 1000, 333, resolution=RES)
    assert len(read_manifest(root)) == 2000
    return root


@pytest.fixture()
def small(tmp_path: Path) -> Path:
    return make_prepared_dataset(tmp_path / "ds", 6, 3, resolution=RES)


def _module(root: Path, store: str, **kwargs: Any) -> MammoDataModule:
    torch.manual_seed(0)  # the shuffle seed is drawn from torch's RNG in setup()
    dm = MammoDataModule(root, RES, kwargs.pop("batch_size", BATCH), store=store, **kwargs)
    dm.setup("fit")
    return dm


def _epochs(loader: Any, epochs: tuple[int, ...]) -> list[dict[str, Any]]:
    batches = []
    for epoch in epochs:
        loader.sampler.set_epoch(epoch)
        batches += list(loader)
    return batches


def _assert_same_batches(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> None:
    assert len(first) == len(second) > 0
    for a, b in zip(first, second):
        assert a["image_id"] == b["image_id"] and a["label_name"] == b["label_name"]
        for key in ("image", "mask", "lesion_mask", "label"):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def test_store_batches_equal_in_ram_batches(films_2000: Path) -> None:
    """Same seed -> the packed store gives exactly the in-RAM cache's batches (train, val, test)."""
    ram, packed = _module(films_2000, "ram"), _module(films_2000, "packed")
    assert isinstance(ram.dataset("train"), CachedMammoDataset)
    assert isinstance(packed.dataset("train"), PackedMammoDataset)
    path = store_path(films_2000, RES)
    header = np.load(path, mmap_mode="r")
    assert header.shape == (2000, 2, RES, RES) and header.dtype == np.uint8
    assert path.stat().st_size == header.offset + 2000 * 2 * RES * RES
    assert len(packed.dataset("train")) == len(ram.dataset("train")) > 800
    _assert_same_batches(_epochs(ram.train_dataloader(), (0, 1)), _epochs(packed.train_dataloader(), (0, 1)))
    for split in ("val", "test"):
        _assert_same_batches(list(ram._loader(split)), list(packed._loader(split)))
    lesions = torch.cat([b["lesion_mask"].flatten(1).amax(1) for b in packed._loader("test")])
    labels = torch.cat([b["label"] for b in packed._loader("test")])
    assert ((lesions > 0) == (labels == 1)).all() and (labels == 1).sum() > 50
    torch.testing.assert_close(packed.real_images("train", 5), ram.real_images("train", 5), rtol=0, atol=0)


def test_store_with_workers_and_augmentation_equals_in_ram(films_2000: Path) -> None:
    """Workers fill shared uint8 slots, the main process converts: same augmented batches."""
    options = {"num_workers": 2, "augment": True, "batch_size": 32}
    ram, packed = _module(films_2000, "ram", **options), _module(films_2000, "packed", **options)
    first, second = (iter(dm.train_dataloader()) for dm in (ram, packed))
    ram_batches = [next(first) for _ in range(6)]  # 3 per worker: every slot of the ring used
    packed_batches = [next(second) for _ in range(6)]
    _assert_same_batches(ram_batches, packed_batches)
    plain = _module(films_2000, "packed", batch_size=32)
    order = [plain.dataset("train").image_ids.index(i) for i in packed_batches[0]["image_id"]]
    reference = to_unit_range(plain.dataset("train").read(np.array(order))[0].unsqueeze(1))
    assert not torch.equal(packed_batches[0]["image"], reference)  # augmentation did happen
    assert set(packed_batches[0]["mask"].unique().tolist()) <= {0.0, 1.0}


def test_mid_epoch_resume_from_store(films_2000: Path) -> None:
    """A loader restored from a mid-epoch state continues with the uninterrupted run's batches."""
    loader = _module(films_2000, "packed").train_dataloader()
    loader.sampler.set_epoch(1)
    iterator = iter(loader)
    consumed = [next(iterator) for _ in range(5)]
    state = loader.state_dict()
    rest = list(iterator)
    assert state == {**state, "epoch": 1, "batches_consumed": 5} and len(rest) > 5

    resumed = _module(films_2000, "packed", num_workers=2).train_dataloader()  # fresh process state
    resumed.load_state_dict(state)
    _assert_same_batches(list(resumed), rest)
    seen = {i for b in consumed + rest for i in b["image_id"]}
    assert len(seen) == len(consumed + rest) * BATCH  # one epoch: no image twice


def test_storage_choice_is_automatic_and_logged(small: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert choose_storage(1000, 256, "auto", 256).kind == "ram"  # 197 MB
    assert choose_storage(2000, 256, "auto", 256).kind == "packed"  # 393 MB
    assert choose_storage(10**6, 512, "ram").kind == "ram" and choose_storage(1, 8, "packed").kind == "packed"
    with pytest.raises(ConfigError, match="data.loader.store"):
        choose_storage(1, 8, "mmap")
    with caplog.at_level(logging.INFO, logger="mammo_anogan.data.datamodule"):
        dm = _module(small, "auto", ram_limit_mb=0.001)
    assert dm.storage is not None and dm.storage.kind == "packed"
    assert "> data.loader.ram_limit_mb=0.001: packed store" in caplog.text
    assert isinstance(dm.dataset("val"), PackedMammoDataset)


def test_no_decode_once_the_store_exists(small: Path) -> None:
    """With the store built, neither path decodes a PNG (score reads val/test from it)."""
    _module(small, "packed")
    for folder in ("images", "masks", "lesions"):
        shutil.rmtree(small / folder)
    for store in ("packed", "ram"):
        dm = MammoDataModule(small, RES, 4, store=store)
        dm.setup("predict")
        labels = torch.cat([b["label"] for split in ("val", "test") for b in dm._loader(split)])
        assert len(labels) == len(dm.dataset("val")) + len(dm.dataset("test")) and (labels == 1).sum() == 3


def test_stale_or_damaged_store_is_rebuilt(small: Path, caplog: pytest.LogCaptureFixture) -> None:
    _module(small, "packed")
    path = store_path(small, RES)
    manifest = pd.read_csv(small / "manifest.csv", dtype=str, keep_default_na=False)
    manifest.iloc[1:].to_csv(small / "manifest.csv", index=False)  # one film fewer
    with caplog.at_level(logging.INFO, logger="mammo_anogan.data.store"):
        dm = _module(small, "packed")
    assert "is stale (data.manifest=" in caplog.text
    assert dm.store is not None and len(dm.store) == len(manifest) - 1
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size - 100)
    dm = _module(small, "packed")
    assert dm.store is not None and dm.store.path.stat().st_size == np.load(path, mmap_mode="r").nbytes + (
        dm.store.offset
    )
    path.with_suffix(".json").write_text("{not json")
    dm = _module(small, "packed")
    assert dm.store is not None and len(dm.store) == len(manifest) - 1
    assert "cannot read" in caplog.text and "rebuilding the packed store" in caplog.text
    assert json.loads(path.with_suffix(".json").read_text())["kind"] == "store"


def test_resized_store_needs_resize(small: Path) -> None:
    dm = MammoDataModule(small, 16, 2, resize=True, store="packed")
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (2, 1, 16, 16) and set(batch["mask"].unique().tolist()) == {0.0, 1.0}
    for store in ("packed", "ram"):
        with pytest.raises(UserError, match=r"data\.loader\.resize=true"):
            MammoDataModule(small, 16, 2, store=store).setup()


def test_packed_store_reads_any_rows_and_pickles(small: Path) -> None:
    _module(small, "packed")
    store = PackedStore(store_path(small, RES))
    reference = np.load(store.path)
    rows = [5, 2, 3, 4, 4, 0]
    np.testing.assert_array_equal(store.read(rows), reference[rows])
    clone = pickle.loads(pickle.dumps(store))  # spawned workers: reopened lazily
    np.testing.assert_array_equal(clone.read([1]), reference[[1]])
    with pytest.raises(IndexError):
        store.read([len(store)])


def _build_counting(args: tuple[str, Path]) -> int:
    import mammo_anogan.data.store as store_module

    counter, root = args
    original = store_module.build_store

    def counted(*a: Any, **k: Any) -> Any:
        with open(counter, "a") as handle:
            handle.write("built\n")
        return original(*a, **k)

    store_module.build_store = counted
    return len(ensure_store(root, read_manifest(root), RES))


def test_ranks_starting_together_build_the_store_once(small: Path, tmp_path: Path) -> None:
    counter = tmp_path / "builds.txt"
    context = multiprocessing.get_context("fork")
    with context.Pool(3) as pool:
        sizes = pool.map(_build_counting, [(str(counter), small)] * 3)
    assert sizes == [len(read_manifest(small))] * 3
    assert counter.read_text().count("built") == 1


def test_prepare_builds_the_store_when_it_would_be_used(small: Path) -> None:
    data = OmegaConf.create({"resolution": RES, "loader": {"store": "auto", "ram_limit_mb": 256}})
    assert prepare_store(small, data) is None and not store_path(small, RES).exists()
    data.loader.ram_limit_mb = 0
    store = prepare_store(small, data)
    assert store is not None and len(store) == len(read_manifest(small))


def test_reused_slot_is_detected() -> None:
    """The generation check: a raw batch whose slot was overwritten stops the run."""

    class Dummy(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 1

    header = torch.tensor([7])
    raw = {"index": np.array([0]), "films": torch.zeros(1, 2, 4, 4, dtype=torch.uint8), "header": header}
    dataset = CachedMammoDataset(
        np.zeros((1, 4, 4), np.uint8),
        np.zeros((1, 4, 4), np.uint8),
        np.zeros((1, 4, 4), np.uint8),
        ["normal"],
        ["a"],
    )
    loader = MammoDataLoader(Dummy())
    assert len(next(loader._finished(iter([{**raw, "generation": 7}]), dataset))["image_id"]) == 1
    with pytest.raises(RuntimeError, match="reused a shared batch buffer"):
        next(loader._finished(iter([{**raw, "generation": 6}]), dataset))


def test_score_reads_val_and_test_from_the_store(tmp_path: Path) -> None:
    """``score`` with the packed store: every val/test image scored with the PNGs gone."""
    from data_factory import make_scoring_workspace
    from hydra import compose, initialize_config_dir

    from mammo_anogan.score import run_score
    from mammo_anogan.utils.config import CONFIG_DIR

    workspace = make_scoring_workspace(tmp_path)
    overrides = [
        f"generator={workspace['generator']}",
        f"data.dataset_dir={workspace['dataset']}",
        "data.resolution=32",
        "data.loader.store=packed",
        "projection=fast",
        "projection.steps=2",
        "projection.num_seeds=1",
        "projection.w_std_samples=100",
        "score.n_bootstrap=10",
        "score.figures=false",
        "++trainer.enable_progress_bar=false",
    ]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("score", overrides=overrides)
    cfg.logger = None
    dm = MammoDataModule.from_config(cfg.data)
    dm.setup("predict")  # builds the store, as prepare would for a large set
    expected = sorted(dm.dataset("val").image_ids + dm.dataset("test").image_ids)
    for folder in ("images", "masks", "lesions"):
        shutil.rmtree(workspace["dataset"] / folder)
    run_score(cfg, tmp_path / "run")
    scores = pd.read_csv(tmp_path / "run" / "scores.csv", dtype={"image_id": str})
    assert sorted(scores["image_id"]) == expected and scores["score"].notna().all()
